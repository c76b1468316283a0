"""A folder that cannot sync holds back only itself, through the binary: with
one Office365 folder misnamed in cms.cfg, the good folder syncs and polls as
usual, the bad one is looked up once and then only rarely (no hot loop),
and with --offline the good folder leaves the offline rule after its own
first cycle, so a file removed afterwards is archived in the cloud rather
than restored."""

import os
import time

from conftest import maildir_files, wait_for

USER = "good@contoso.example"

CONFIG = f'''
inbox = MailDir("~/mail/inbox")
acct = Office365_Account(user="{USER}")
good = Office365("inbox", acct)
good.poll_interval = 1
bad = Office365("Inbox/No Such Folder", acct)
bad.poll_interval = 1
'''


def requests(cloud, pred):
    return sum(v["requests"] for r, v in cloud.stats()["routes"].items() if pred(r))


def inbox_messages(cloud):
    mb = cloud.mailbox(USER)["o365"]
    inbox = next(f["id"] for f in mb["folders"] if f.get("wellKnownName") == "inbox")
    return [m for m in mb["messages"] if m["folderId"] == inbox]


def test_a_misnamed_folder_holds_back_only_itself(cms, fakecloud_factory):
    cloud = fakecloud_factory("--populate-o365", f"{USER}:Inbox:6")
    cms.use_cloud(cloud)
    cms.write_cfg(CONFIG)
    # A first run: the good folder syncs, the bad one is reported (exit 1).
    first = cms.run("--once", check=False)
    assert first.returncode == 1, first.stderr[-3000:]
    assert "No Such Folder" in first.stderr
    assert len(maildir_files(cms.home)) == 6

    # While stopped, a file is removed: the --offline first cycle restores it.
    os.unlink(maildir_files(cms.home)[0])
    cloud.control("stats", method="DELETE")
    with cms.daemon("--offline") as proc:
        wait_for("the restore of the removed file", lambda: len(maildir_files(cms.home)) == 6, 30)
        assert len(inbox_messages(cloud)) == 6
        # Polls go on for the good folder (1 s), while the bad one is looked
        # up once and then waits its rare retry.
        time.sleep(8)
        polls = requests(cloud, lambda r: r.endswith("/messages/delta"))
        lookups = requests(cloud, lambda r: "mailFolders" in r and not r.endswith("/messages/delta"))
        assert polls >= 4, cloud.stats()["routes"]
        assert lookups <= 4, cloud.stats()["routes"]

        # After the good folder's first cycle a removal is a deletion there,
        # though the bad folder never had a successful cycle.
        os.unlink(maildir_files(cms.home)[0])
        wait_for("the archive in the cloud", lambda: len(inbox_messages(cloud)) == 5, 30)
        time.sleep(2)
        assert len(maildir_files(cms.home)) == 5
    err = proc.stderr_text
    assert proc.returncode == 0, err[-3000:]
    assert "trying again every 10 min" in err, err[-3000:]
    # Reported once (the failed listing and what the daemon does about it),
    # not once per poll.
    missing = [line for line in err.splitlines() if "No Such Folder" in line and "not found" in line]
    assert len(missing) <= 2, err[-3000:]


GMAIL = "waiting@gmail.example"

CONFIG_WITH_GMAIL = CONFIG + f'''
other = MailDir("~/mail/gmail")
gm = GMail("INBOX", GMail_Account(user="{GMAIL}"))
gm.poll_interval = 1
def direct_message(msg):
    return other if msg.mailbox is gm else inbox
cfg.direct_message = direct_message
'''


def test_offline_ends_per_folder_with_another_account_waiting_for_a_login(cms, fakecloud_factory):
    """--offline with one folder misnamed and one account never logged in:
    the good folder's deletion made while stopped reaches the cloud after
    its own first cycle; the misnamed folder is retried rarely; the account
    waiting for its login sends nothing; nothing hot-loops."""
    cloud = fakecloud_factory("--populate-o365", f"{USER}:Inbox:6",
                              "--populate-gmail", f"{GMAIL}:INBOX:3")
    cms.use_cloud(cloud)
    cms.write_cfg(CONFIG)
    first = cms.run("--once", check=False)
    assert first.returncode == 1, first.stderr[-3000:]
    assert len(maildir_files(cms.home)) == 6

    # A "browser" that logs in to Microsoft and never to Google.
    browser = cms.home / "browser.py"
    browser.write_text(
        "#!/usr/bin/python3\n"
        "import sys, urllib.request\n"
        "class NoGoogle(urllib.request.HTTPRedirectHandler):\n"
        "    def redirect_request(self, req, fp, code, msg, hdrs, newurl):\n"
        "        if 'google' in newurl:\n"
        "            return None\n"
        "        return super().redirect_request(req, fp, code, msg, hdrs, newurl)\n"
        "try:\n"
        "    urllib.request.build_opener(NoGoogle).open(sys.argv[1], timeout=30).read()\n"
        "except Exception:\n"
        "    pass\n"
    )
    cms.write_cfg(CONFIG_WITH_GMAIL)
    os.unlink(maildir_files(cms.home)[0])
    cloud.control("stats", method="DELETE")
    with cms.daemon("--offline") as proc:
        wait_for("the restore of the removed file", lambda: len(maildir_files(cms.home)) == 6, 30)
        # After the good folder's first cycle, a removal is a deletion in
        # the cloud, though another folder and another account never synced.
        os.unlink(maildir_files(cms.home)[0])
        wait_for("the archive in the cloud", lambda: len(inbox_messages(cloud)) == 5, 30)
        cloud.control("stats", method="DELETE")
        time.sleep(10)
        routes = cloud.stats()["routes"]
        polls = requests(cloud, lambda r: r.endswith("/messages/delta"))
        lookups = requests(cloud, lambda r: "mailFolders" in r and not r.endswith("/messages/delta"))
        gmail = requests(cloud, lambda r: r.startswith("gmail"))
        assert polls >= 5, routes
        assert lookups <= 1, routes
        assert gmail == 0, routes
        assert len(maildir_files(cms.home)) == 5
    err = proc.stderr_text
    assert proc.returncode == 0, err[-3000:]
    assert GMAIL in err and "login" in err, err[-3000:]
