"""A real SMTP client on our tokens: the daemon's CredentialServer hands an
Office365 SMTP token to msmtp through `cms-oauth` (`passwordeval`), and msmtp
logs in to the emulated SMTP server with XOAUTH2."""

import os
import shutil
import socket
import subprocess
import time

import pytest

from conftest import assert_no_tokens, binary

pytestmark = pytest.mark.skipif(
    not os.environ.get("CI") and shutil.which("msmtp") is None,
    reason="needs msmtp (CI installs it and never skips)",
)

USER = "smtp@contoso.example"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_msmtp_sends_with_a_brokered_token(cms, fakecloud_factory, tmp_path):
    smtp_port = free_port()
    cloud = fakecloud_factory("--smtp-listen", f"127.0.0.1:{smtp_port}",
                              "--populate-o365", f"{USER}:Inbox:2")
    cms.use_cloud(cloud)
    sock = cms.home / "creds.sock"
    cms.write_cfg(
        'MailDir("~/mail/inbox")\n'
        f'acct = Office365_Account(user="{USER}")\n'
        'Office365("inbox", acct)\n'
        'CredentialServer("~/creds.sock", [acct], protocols=["SMTP"], umask=0o600)\n'
    )
    log = open(tmp_path / "daemon.log", "w")
    daemon = subprocess.Popen([str(binary("cloud-mdir-sync"))], cwd=cms.home, env=cms.env,
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 60
        inbox = cms.home / "mail" / "inbox"

        def synced():
            # Logged in and synced: both messages are in the maildir.
            return sum(len(os.listdir(inbox / d)) for d in ("cur", "new")
                       if (inbox / d).exists()) == 2

        while not (sock.exists() and synced()):
            assert daemon.poll() is None, (tmp_path / "daemon.log").read_text()
            assert time.time() < deadline, (tmp_path / "daemon.log").read_text()
            time.sleep(0.1)
        assert oct(sock.stat().st_mode & 0o777) == oct(0o600)
        rc = tmp_path / "msmtprc"
        rc.write_text(
            "account work\n"
            f"host 127.0.0.1\nport {smtp_port}\n"
            "tls off\nauth xoauth2\n"
            f"user {USER}\nfrom {USER}\n"
            f"passwordeval {binary('cms-oauth')} --cms_sock {sock} --user {USER} --output token\n"
            "account default : work\n"
        )
        rc.chmod(0o600)
        message = f"From: {USER}\nTo: bob@example.org\nSubject: hello\n\nsent with a brokered token\n"
        sent = subprocess.run(["msmtp", "-C", str(rc), "-t"], input=message, text=True,
                              capture_output=True, timeout=60)
        assert sent.returncode == 0, sent.stderr + (tmp_path / "daemon.log").read_text()
        # A user the broker does not serve gets no token, and msmtp fails.
        rc.write_text(rc.read_text().replace(f"--user {USER}", "--user nobody@example.org"))
        refused = subprocess.run(["msmtp", "-C", str(rc), "-t"], input=message, text=True,
                                 capture_output=True, timeout=60)
        assert refused.returncode != 0
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        log.close()
    text = (tmp_path / "daemon.log").read_text()
    assert_no_tokens(text)
    assert not sock.exists(), "the socket is removed on shutdown"
