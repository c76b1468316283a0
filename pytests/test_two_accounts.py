"""Independent mailboxes through the binary: one Office365 account must wait
(its mailbox holds more messages than its request window allows, or its
listing is answered 429 with Retry-After: 300) while another account's
initial sync and new mail arrive within one poll, the waiting mailbox's
downloaded messages are already in its maildir, and SIGTERM during the wait
exits 0 within 2 s; the next start resumes without downloading anything
twice."""

import os
import signal
import subprocess
import time

from conftest import assert_no_tokens, binary, wait_for

BIG = "big@contoso.example"
SMALL = "small@contoso.example"
POLL = 2

CONFIG = f'''
big = MailDir("~/mail/big")
small = MailDir("~/mail/small")
b = Office365("inbox", Office365_Account(user="{BIG}"))
b.poll_interval = {POLL}
s = Office365("inbox", Office365_Account(user="{SMALL}"))
s.poll_interval = {POLL}
def direct_message(msg):
    return big if msg.mailbox is b else small
cfg.direct_message = direct_message
'''


def files(home, md):
    out = []
    for sub in ("cur", "new"):
        d = home / "mail" / md / sub
        if d.exists():
            out.extend(os.listdir(d))
    return out


def value_requests(cloud, user):
    stats = cloud.stats()
    return stats["mailboxes"].get(f"graph {user}", {}).get("charged", 0)


def deliver(cloud, user, n):
    raw = (f"From: a@example.org\r\nTo: {user}\r\nSubject: new {n}\r\n"
           f"Message-ID: <new-{n}@example.org>\r\n\r\nhello\r\n")
    cloud.control("deliver", {"user": user, "folder": "Inbox", "raw": raw})


def start(cms):
    return subprocess.Popen([str(binary("cloud-mdir-sync"))], cwd=cms.home, env=cms.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop_within_2s(proc):
    t = time.time()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    took = time.time() - t
    assert_no_tokens(err)
    assert proc.returncode == 0, err[-3000:]
    assert took < 2, f"SIGTERM took {took:.1f} s"
    return err


def check_other_account_goes_on(cms, cloud, still_waiting):
    """The small account's initial sync, then its new mail, arrive while the
    big mailbox is still waiting (`still_waiting()` holds after each)."""
    wait_for("the small account's initial sync", lambda: len(files(cms.home, "small")) == 10, 60)
    assert still_waiting(), "the big mailbox stopped waiting before the small account synced"
    deliver(cloud, SMALL, 1)
    wait_for("new mail in the small account", lambda: len(files(cms.home, "small")) == 11, 60)
    assert still_waiting(), "the small account's new mail waited for the big mailbox"


def test_a_mailbox_over_its_request_window_holds_up_no_other(cms, fakecloud_factory):
    # --quota x100: Graph's window is 100 requests per 6 s per mailbox, so
    # 400 messages need several windows.
    cloud = fakecloud_factory("--quota", "x100", "--populate-o365", f"{BIG}:Inbox:400",
                              "--populate-o365", f"{SMALL}:Inbox:10")
    cms.use_cloud(cloud)
    cms.env["CMS_QUOTA_SCALE"] = "100"
    cms.write_cfg(CONFIG)
    proc = start(cms)
    try:
        # The big mailbox spends its first window; the other account goes on.
        wait_for("the big mailbox's first window", lambda: value_requests(cloud, BIG) >= 90, 60)
        check_other_account_goes_on(cms, cloud, lambda: len(files(cms.home, "big")) < 400)
        # What the big mailbox downloaded so far is delivered already.
        wait_for("delivery of the big mailbox's first messages", lambda: len(files(cms.home, "big")) >= 50, 30)
        stop_within_2s(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    # The next start resumes: every message once, nothing downloaded twice.
    cloud.control("stats", method="DELETE")
    delivered = len(files(cms.home, "big"))
    cms.run("--once", timeout=600)
    assert len(files(cms.home, "big")) == 400
    assert len(files(cms.home, "small")) == 11
    downloads = sum(v["requests"] for r, v in cloud.stats()["routes"].items() if "$value" in r)
    assert downloads <= 400 - delivered + 8, (downloads, delivered)


def test_a_long_retry_after_on_one_listing_holds_up_no_other(cms, fakecloud_factory):
    cloud = fakecloud_factory("--populate-o365", f"{BIG}:Inbox:20",
                              "--populate-o365", f"{SMALL}:Inbox:10")
    cms.use_cloud(cloud)
    cms.write_cfg(CONFIG)
    # Every listing of the big mailbox's inbox: 429, come back in 300 s.
    inbox = next(f["id"] for f in cloud.mailbox(BIG)["o365"]["folders"]
                 if f.get("wellKnownName") == "inbox")
    cloud.control("faults", [{"route": f"*{inbox}/messages/delta*", "kind": "status", "status": 429,
                              "retry_after": "300", "count": 1000000}])
    proc = start(cms)
    try:
        check_other_account_goes_on(cms, cloud, lambda: files(cms.home, "big") == [])
        stop_within_2s(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
