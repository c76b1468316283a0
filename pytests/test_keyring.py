"""Refresh tokens kept across restarts with a real Secret Service
(gnome-keyring in a private D-Bus session, unlocked): the second run needs no
login, the key lives in the keyring, and no refresh token is stored in clear."""

import os
import shutil
import subprocess
import textwrap

import pytest

from conftest import assert_no_tokens, binary

pytestmark = pytest.mark.skipif(
    not os.environ.get("CI") and any(shutil.which(t) is None for t in ("dbus-run-session", "gnome-keyring-daemon", "secret-tool")),
    reason="needs dbus, gnome-keyring and libsecret-tools",
)

USER = "keyring@contoso.example"


def test_login_survives_restart_with_secret_service(cms, fakecloud_factory, tmp_path):
    cloud = fakecloud_factory("--populate-o365", f"{USER}:Inbox:3")
    cms.use_cloud(cloud)
    cms.write_cfg(f'MailDir("~/mail/inbox")\nOffice365("inbox", Office365_Account(user="{USER}"))\n')
    no_browser = tmp_path / "no-browser"
    no_browser.write_text(f"#!/bin/sh\necho \"$1\" >> {tmp_path / 'asked'}\nexit 1\n")
    no_browser.chmod(0o755)
    token_file = cms.home / "mail" / ".cms" / "state" / "tokens.enc"
    script = tmp_path / "session.sh"
    script.write_text(textwrap.dedent(f"""\
        set -e
        # A login keyring, unlocked, as a desktop session has.
        eval "$(printf 'test-password' | gnome-keyring-daemon --unlock --components=secrets)"
        eval "$(gnome-keyring-daemon --start --components=secrets)"
        cd {cms.home}
        {binary('cloud-mdir-sync')} --once 2> {tmp_path / 'first.log'}
        # The second run may not ask for a login: its browser always fails.
        BROWSER={no_browser} timeout 60 {binary('cloud-mdir-sync')} --once 2> {tmp_path / 'second.log'}
        secret-tool lookup service cloud-mdir-sync username "token-store-key:{token_file}" > {tmp_path / 'key'}
        """))
    proc = subprocess.run(["dbus-run-session", "--", "sh", str(script)], env=cms.env,
                          capture_output=True, text=True, timeout=300)
    first = (tmp_path / "first.log").read_text() if (tmp_path / "first.log").exists() else ""
    second = (tmp_path / "second.log").read_text() if (tmp_path / "second.log").exists() else ""
    assert proc.returncode == 0, f"{proc.stderr}\nfirst:\n{first}\nsecond:\n{second}"
    assert "Secret Service" in first, first
    assert "sync: 3 downloaded" in first, first
    assert not (tmp_path / "asked").exists(), second
    assert "logged in" not in second and "login needed" not in second, second
    key = (tmp_path / "key").read_text().strip()
    assert len(key) >= 32
    stored = token_file.read_bytes()
    # Refresh tokens from the emulated Microsoft start with "0.AXoA".
    assert b"0.AXoA" not in stored and key.encode() not in stored
    assert not key.startswith("0.AXoA")
    # And no token reached the logs.
    for log in (first, second):
        assert_no_tokens(log)
