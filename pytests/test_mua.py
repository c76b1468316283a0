"""Real maildir clients on our maildirs, against the emulated Office365:
mblaze (mlist/mflag), notmuch with flag synchronisation, and neomutt driven
in tmux. What they change must reach the cloud exactly; what the cloud
changes must reach them."""

import json
import os
import shutil
import subprocess
import time
import urllib.request

import pytest

USER = "pytest@contoso.example"
SUBJECTS = ["pytest-delete", "pytest-flag", "pytest-read", "pytest-reply"]


def message(subject, n):
    return (
        f"From: Alice <alice@example.org>\r\nTo: {USER}\r\n"
        f"Subject: {subject}\r\nMessage-ID: <{subject}.{n}@example.org>\r\n"
        f"Date: Mon, 0{n} Sep 2026 10:00:00 +0000\r\n\r\nbody of {subject}\r\n"
    )


@pytest.fixture
def synced(cms, fakecloud_factory):
    """An emulated inbox with four known messages, synced once into ~/mail/inbox."""
    cloud = fakecloud_factory()
    for n, s in enumerate(SUBJECTS, 1):
        cloud.control("deliver", {"user": USER, "service": "o365", "folder": "inbox",
                                  "raw": message(s, n)})
    cms.use_cloud(cloud)
    cms.write_cfg(
        'MailDir("~/mail/inbox")\n'
        f'Office365("inbox", Office365_Account(user="{USER}"))\n'
    )
    cms.run("--once")
    return cms, cloud


def maildir_files(home):
    out = {}
    for sub in ("cur", "new"):
        d = home / "mail" / "inbox" / sub
        for name in os.listdir(d):
            text = (d / name).read_text()
            subject = next(line.split(": ", 1)[1] for line in text.splitlines()
                           if line.startswith("Subject: "))
            out[subject] = d / name
    return out


def cloud_state(cloud):
    """subject -> (folder, isRead, flagStatus, replied?) from the emulator."""
    box = cloud.mailbox(USER)["o365"]
    out = {}
    for m in box["messages"]:
        props = m.get("singleValueExtendedProperties") or {}
        icon = str(props.get("Integer 0x1080", ""))
        verb = str(props.get("Integer 0x1081", ""))
        replied = icon in ("261", "262") or verb in ("102", "103", "104")
        out[m["subject"]] = (m["folder"].lower(), m["isRead"], m["flag"]["flagStatus"], replied)
    return out


def test_mblaze_sees_and_sets_flags(synced):
    cms, cloud = synced
    inbox = str(cms.home / "mail" / "inbox")
    listed = subprocess.run(["mlist", inbox], capture_output=True, text=True,
                            check=True).stdout.split()
    assert len(listed) == 4
    # As an mblaze user does: incorporate new mail into cur/ first (mflag
    # leaves messages in new/ alone); our scanner sees the move as no change.
    subprocess.run(["minc", inbox], check=True, capture_output=True)
    cms.run("--once")
    assert cloud_state(cloud)["pytest-read"][1] is False
    files = maildir_files(cms.home)
    subprocess.run(["mflag", "-S", str(files["pytest-read"])], check=True)
    subprocess.run(["mflag", "-F", str(files["pytest-flag"])], check=True)
    subprocess.run(["mflag", "-R", str(files["pytest-reply"])], check=True)
    subprocess.run(["mflag", "-T", str(files["pytest-delete"])], check=True)
    cms.run("--once")
    state = cloud_state(cloud)
    assert state["pytest-read"][1] is True
    assert state["pytest-flag"][2] == "flagged"
    assert state["pytest-reply"][3] is True
    assert state["pytest-delete"][0] == "archive"
    assert state["pytest-flag"][1] is False, "nothing else changed"
    # The trashed message left the synced folder, so its file goes too.
    cms.run("--once")
    assert sorted(maildir_files(cms.home)) == ["pytest-flag", "pytest-read", "pytest-reply"]
    seen = subprocess.run(["mlist", "-S", str(cms.home / "mail" / "inbox")],
                          capture_output=True, text=True, check=True).stdout.split()
    assert len(seen) == 1


def second_client_patch(cloud, subject, body):
    token = cloud.control("token", {"user": USER, "audience": "graph",
                                    "scopes": ["https://graph.microsoft.com/Mail.ReadWrite"]})
    mid = next(m["id"] for m in cloud.mailbox(USER)["o365"]["messages"] if m["subject"] == subject)
    req = urllib.request.Request(
        f"{cloud.url}/graph.microsoft.com/v1.0/me/messages/{mid}",
        data=json.dumps(body).encode(), method="PATCH",
        headers={"Authorization": "Bearer " + token["access_token"],
                 "Content-Type": "application/json",
                 "Prefer": 'IdType="ImmutableId"'})
    urllib.request.urlopen(req, timeout=30).read()


def test_notmuch_flag_sync_both_ways(synced):
    cms, cloud = synced
    cfg = cms.home / ".notmuch-config"
    cfg.write_text(
        f"[database]\npath={cms.home / 'mail'}\n[maildir]\nsynchronize_flags=true\n"
        "[new]\ntags=unread;inbox;\n"
    )
    env = dict(cms.env, NOTMUCH_CONFIG=str(cfg))

    def notmuch(*args):
        return subprocess.run(["notmuch", *args], env=env, check=True,
                              capture_output=True, text=True).stdout

    notmuch("new")
    assert notmuch("count", "folder:inbox").strip() == "4"
    notmuch("tag", "-unread", "subject:pytest-read")
    notmuch("tag", "+flagged", "subject:pytest-flag")
    cms.run("--once")
    state = cloud_state(cloud)
    assert state["pytest-read"][1] is True
    assert state["pytest-flag"][2] == "flagged"
    # A second client marks another message read; notmuch sees it after a sync.
    second_client_patch(cloud, "pytest-reply", {"isRead": True})
    cms.run("--once")
    notmuch("new")
    assert notmuch("count", "tag:unread").strip() == "2"


@pytest.mark.skipif(
    not os.environ.get("CI") and (shutil.which("tmux") is None or shutil.which("neomutt") is None),
    reason="needs tmux and neomutt (CI installs them and never skips)",
)
def test_neomutt_in_tmux(synced, tmp_path):
    cms, cloud = synced
    rc = cms.home / "muttrc"
    rc.write_text(
        f"set folder={cms.home / 'mail'}\nset spoolfile={cms.home / 'mail' / 'inbox'}\n"
        "set mbox_type=Maildir\nset maildir_trash=yes\nset mark_old=no\n"
        "set sort=subject\nset quit=yes\nset delete=yes\nset wait_key=no\n"
        "set confirmappend=no\nset header_cache=''\nset message_cachedir=''\n"
    )
    sock = str(tmp_path / "tmux.sock")

    def tmux(*args):
        return subprocess.run(["tmux", "-S", sock, *args], check=True,
                              capture_output=True, text=True).stdout

    tmux("new-session", "-d", "-x", "160", "-y", "40", "-e", f"HOME={cms.home}",
         f"neomutt -n -F {rc} -f {cms.home / 'mail' / 'inbox'}")
    try:
        deadline = time.time() + 30
        while "pytest-read" not in tmux("capture-pane", "-p"):
            assert time.time() < deadline, tmux("capture-pane", "-p")
            time.sleep(0.2)
        # Sorted by subject: delete, flag, read, reply.
        for keys in (["="], ["d"], ["=", "j"], ["F"], ["=", "j", "j"], ["N"], ["$"]):
            tmux("send-keys", *keys)
            time.sleep(0.3)
        tmux("send-keys", "q")
        deadline = time.time() + 15
        while tmux("list-sessions").strip():
            assert time.time() < deadline
            time.sleep(0.2)
    except subprocess.CalledProcessError:
        pass  # the session ended: neomutt quit
    finally:
        subprocess.run(["tmux", "-S", sock, "kill-server"], capture_output=True)
    cms.run("--once")
    state = cloud_state(cloud)
    assert state["pytest-delete"][0] == "archive", state
    assert state["pytest-flag"][2] == "flagged", state
    assert state["pytest-read"][1] is True, state
    assert state["pytest-reply"][1:] == (False, "notFlagged", False), state
