"""Logging in with a real browser: headless Chromium (Debian's, driven by
chromedriver over the W3C WebDriver protocol) opens our login page, is sent
to the emulator's login pages, clicks Approve, and comes back; two accounts
log in from one open page without a second window."""

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request

import pytest

from conftest import assert_no_tokens, binary

pytestmark = pytest.mark.skipif(
    not os.environ.get("CI")
    and (shutil.which("chromedriver") is None or shutil.which("chromium") is None),
    reason="needs Debian's chromium and chromium-driver",
)

O365 = "browser@contoso.example"
GMAIL = "browser@gmail.example"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WebDriver:
    """The few WebDriver commands the test needs, over plain HTTP."""

    def __init__(self, tmp_path):
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["chromedriver", f"--port={self.port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.time() + 30
        while True:
            try:
                self.call("GET", "/status")
                break
            except OSError:
                assert time.time() < deadline, "chromedriver did not start"
                time.sleep(0.2)
        caps = {"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": shutil.which("chromium"),
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                         "--no-first-run", "--disable-background-networking",
                         "--disable-component-update", "--disable-sync",
                         f"--user-data-dir={tmp_path / 'chromium-profile'}"],
            },
        }}}
        self.session = self.call("POST", "/session", caps)["sessionId"]

    def call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.loads(resp.read())["value"]

    def s(self, method, path, body=None):
        return self.call(method, f"/session/{self.session}{path}", body)

    def go(self, url):
        self.s("POST", "/url", {"url": url})

    def url(self):
        return self.s("GET", "/url")

    def click_if_present(self, css):
        found = self.s("POST", "/elements", {"using": "css selector", "value": css})
        if not found:
            return False
        element = next(iter(found[0].values()))
        try:
            self.s("POST", f"/element/{element}/click", {})
        except urllib.error.HTTPError:
            return False  # the page navigated away meanwhile
        return True

    def close(self):
        try:
            self.call("DELETE", f"/session/{self.session}")
        finally:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def test_one_page_logs_in_two_accounts(cms, tmp_path):
    # An emulator that shows its login pages (no auto-approve).
    cloud_proc = subprocess.Popen(
        [str(binary("cms-fakecloud")), "--populate-o365", f"{O365}:Inbox:5",
         "--populate-gmail", f"{GMAIL}:INBOX:5"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    url = cloud_proc.stdout.readline().split()[-1]
    port = free_port()
    opened = tmp_path / "browser-opened.txt"
    recorder = tmp_path / "record-browser"
    recorder.write_text(f"#!/bin/sh\necho \"$1\" >> {opened}\n")
    recorder.chmod(0o755)
    env = dict(cms.env, CMS_CLOUD_BASE_URL=url, CMS_OAUTH_LISTEN=f"127.0.0.1:{port}",
               BROWSER=str(recorder))
    cms.write_cfg(
        'MailDir("~/mail/work")\n'
        f'Office365("inbox", Office365_Account(user="{O365}"))\n'
        f'GMail("INBOX", GMail_Account(user="{GMAIL}"))\n'
    )
    log = open(tmp_path / "daemon.log", "w")
    daemon = subprocess.Popen([str(binary("cloud-mdir-sync"))], cwd=cms.home, env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    driver = None
    try:
        page = f"http://127.0.0.1:{port}/"
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(page, timeout=5).read()
                break
            except OSError:
                assert time.time() < deadline, "login page did not come up"
                time.sleep(0.2)
        # No page was open at start: the first pending login asked BROWSER once.
        deadline = time.time() + 10
        while not opened.exists():
            assert time.time() < deadline, "BROWSER was not asked"
            time.sleep(0.1)
        launched_before_page = opened.read_text().splitlines()
        assert len(launched_before_page) == 1

        driver = WebDriver(tmp_path)
        driver.go(page)
        # The page follows the pending logins; click Approve wherever the
        # emulator's login page shows, until both maildirs fill.
        deadline = time.time() + 90
        work = cms.home / "mail" / "work"

        def synced():
            # Both accounts' five messages (default routing: the first MailDir).
            return all((work / d).exists() for d in ("cur", "new")) and \
                len(os.listdir(work / "cur")) + len(os.listdir(work / "new")) == 10

        while not synced():
            assert time.time() < deadline, (tmp_path / "daemon.log").read_text()
            assert daemon.poll() is None, (tmp_path / "daemon.log").read_text()
            driver.click_if_present("#approve")
            time.sleep(0.3)
        # Back on our page at the end.
        deadline = time.time() + 30
        while not driver.url().startswith(page):
            assert time.time() < deadline, driver.url()
            time.sleep(0.2)
        assert opened.read_text().splitlines() == launched_before_page, \
            "no second window while the page was open"
    finally:
        if driver:
            driver.close()
        daemon.terminate()
        daemon.wait(timeout=30)
        cloud_proc.terminate()
        cloud_proc.wait(timeout=10)
        log.close()
    text = (tmp_path / "daemon.log").read_text()
    assert text.count("INFO\x1b[0m logged in") + text.count("INFO logged in") >= 2, text
    assert_no_tokens(text)
