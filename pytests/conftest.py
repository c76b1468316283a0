"""Shared fixtures for the end-to-end tests: paths of the built binaries and
a private HOME per test, so nothing touches the real user's mail."""

import contextlib
import json
import os
import time
import pathlib
import subprocess
import urllib.parse
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug"


# Shapes of the emulator's tokens: Microsoft refresh tokens, Google refresh
# and access tokens, Microsoft access tokens (JWTs).
TOKEN_MARKERS = ("0.AXoA", "1//0", "ya29.", "eyJ")


def assert_no_tokens(text):
    """No access or refresh token may ever reach the logs."""
    for marker in TOKEN_MARKERS:
        assert marker not in text, f"a token ({marker}...) leaked into the log"


def binary(name):
    path = TARGET / name
    if not path.exists():
        pytest.fail(f"{path} is missing: run `cargo build --workspace --bins` first")
    return path


def maildir_files(home, md="inbox"):
    """Paths of the messages in maildir `~/mail/<md>` (cur/ and new/)."""
    out = []
    for sub in ("cur", "new"):
        d = home / "mail" / md / sub
        if d.exists():
            out.extend(d / n for n in os.listdir(d))
    return out


def wait_for(what, pred, timeout):
    """Polls `pred` every 50 ms; fails naming `what` after `timeout` s."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Env:
    """A private HOME with helpers to write a config and run the daemon."""

    def __init__(self, home):
        self.home = home
        self.env = dict(os.environ, HOME=str(home))
        self.env.pop("RUST_LOG", None)
        # A "browser" that follows the login redirects, as a person would.
        browser = home / "browser.py"
        browser.write_text(
            "#!/usr/bin/python3\n"
            "import sys, urllib.request\n"
            "urllib.request.urlopen(sys.argv[1], timeout=30).read()\n"
        )
        browser.chmod(0o755)
        # Like Python's webbrowser, BROWSER names a command (no arguments).
        self.env["BROWSER"] = str(browser)
        self.env["CMS_OAUTH_LISTEN"] = "127.0.0.1:0"

    def use_cloud(self, cloud):
        """Send every cloud request to the emulator `cloud`."""
        self.env["CMS_CLOUD_BASE_URL"] = cloud.url

    def write_cfg(self, text, name="cms.cfg"):
        path = self.home / name
        path.write_text(text)
        return path

    def run(self, *args, check=True, timeout=120):
        proc = subprocess.run(
            [str(binary("cloud-mdir-sync")), *args],
            cwd=self.home,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert_no_tokens(proc.stderr)
        assert_no_tokens(proc.stdout)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"cloud-mdir-sync {' '.join(args)} exited {proc.returncode}\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        return proc

    def check(self):
        return json.loads(self.run("--check").stdout)

    @contextlib.contextmanager
    def daemon(self, *args):
        """The daemon running in the background for the `with` block, then
        stopped with SIGTERM; its stderr is then in `.stderr_text`, checked
        for tokens."""
        proc = subprocess.Popen([str(binary("cloud-mdir-sync")), *args], cwd=self.home,
                                env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        try:
            yield proc
        finally:
            proc.terminate()
            _, proc.stderr_text = proc.communicate(timeout=30)
        assert_no_tokens(proc.stderr_text)


class FakeCloud:
    """A running cms-fakecloud and helpers for its /_control/ API."""

    def __init__(self, proc, url):
        self.proc = proc
        self.url = url

    def control(self, path, body=None, method=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.url + "/_control/" + path,
            data=data,
            method=method or ("POST" if data is not None else "GET"),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def mailbox(self, user):
        return self.control("mailbox?user=" + urllib.parse.quote(user))

    def stats(self):
        return self.control("stats")


@pytest.fixture
def fakecloud_factory():
    """Start emulators with the given extra arguments; all stopped at the end."""
    procs = []

    def start(*args):
        proc = subprocess.Popen(
            [str(binary("cms-fakecloud")), "--auto-approve", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        procs.append(proc)
        line = proc.stdout.readline()
        assert line.startswith("listening on "), line
        return FakeCloud(proc, line.split()[-1])

    yield start
    for p in procs:
        p.terminate()
        p.wait(timeout=10)


@pytest.fixture
def cms(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    return Env(home)
