"""Crash durability and progressive delivery through the binary: a
3,000-message Office365 initial sync killed with SIGKILL at random moments
converges with every message exactly once, re-downloads no more than the
daemon can have in flight at each kill, and leaves a state database that
always opens and passes `PRAGMA integrity_check`; and files appear in the
maildir while the initial sync is still downloading.

CMS_CRASH_KILLS (default 20) and CMS_CRASH_SEED set the number of kills and
the seed of their moments; CMS_CRASH_MESSAGES (default 3000) the size."""

import os
import random
import signal
import sqlite3
import subprocess
import time

from conftest import assert_no_tokens, binary, maildir_files

USER = "crash@contoso.example"
MESSAGES = int(os.environ.get("CMS_CRASH_MESSAGES", "3000"))
KILLS = int(os.environ.get("CMS_CRASH_KILLS", "20"))
SEED = int(os.environ.get("CMS_CRASH_SEED", "1"))

# The daemon's download workers per folder: at most this many messages can
# be in flight (requested, or received and not yet committed) at a kill.
IN_FLIGHT_MAX = 8

CONFIG = f'''
inbox = MailDir("~/mail/inbox")
Office365("inbox", Office365_Account(user="{USER}"))
'''


def value_requests(cloud):
    return sum(v["requests"] for r, v in cloud.stats()["routes"].items()
               if r.startswith("graph ") and "$value" in r and "(in $batch)" not in r)


def message_ids(files):
    ids = []
    for f in files:
        for line in f.read_bytes().split(b"\n"):
            if not line.strip():
                break
            if line.lower().startswith(b"message-id:"):
                ids.append(line.split(b":", 1)[1].strip().decode())
                break
    return ids


def check_database(home):
    db = home / "mail" / ".cms" / "state" / "state.db"
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return conn.execute("SELECT count(*) FROM ids").fetchone()[0]
    finally:
        conn.close()


def start(cms):
    return subprocess.Popen(
        [str(binary("cloud-mdir-sync")), "--once"], cwd=cms.home, env=cms.env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_kill9_during_initial_sync_converges_without_double_downloads(cms, fakecloud_factory):
    # 50 ms per request, 4 at a time: the download takes about 40 s, long
    # enough for every kill to land inside it.
    cloud = fakecloud_factory("--latency-ms", "50", "--populate-o365", f"{USER}:Inbox:{MESSAGES}")
    cms.use_cloud(cloud)
    cms.write_cfg(CONFIG)
    rng = random.Random(SEED)
    kills = 0
    in_flight_seen = 0
    for _ in range(KILLS):
        proc = start(cms)
        time.sleep(rng.uniform(0.2, 1.8))
        if proc.poll() is not None:
            out, err = proc.communicate()
            assert proc.returncode == 0, err[-3000:]
            break
        in_flight_seen += sum(b["in_flight"] for b in cloud.stats()["mailboxes"].values())
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate()
        assert_no_tokens(err)
        kills += 1
        check_database(cms.home)
    # Finish the sync (a new login is not needed: the token survived too).
    cms.run("--once", timeout=600)
    files = maildir_files(cms.home)
    ids = message_ids(files)
    cloud_ids = {m["internetMessageId"] for m in
                 cloud.control(f"mailbox?user={USER}")["o365"]["messages"]}
    assert len(files) == MESSAGES
    assert len(set(ids)) == MESSAGES, "a message was delivered twice"
    assert set(ids) == cloud_ids
    assert check_database(cms.home) == MESSAGES
    redownloads = value_requests(cloud) - MESSAGES
    print(f"kills {kills}, re-downloads {redownloads}, in flight seen by the emulator {in_flight_seen}")
    assert kills == KILLS, f"the sync finished after {kills} of {KILLS} kills"
    assert 0 <= redownloads <= kills * IN_FLIGHT_MAX, (redownloads, kills)
    # Nothing half-written anywhere.
    assert not list((cms.home / "mail" / "inbox" / "tmp").iterdir())


def test_files_appear_while_the_initial_sync_downloads(cms, fakecloud_factory):
    cloud = fakecloud_factory("--latency-ms", "20", "--populate-o365", f"{USER}:Inbox:{MESSAGES}")
    cms.use_cloud(cloud)
    cms.write_cfg(CONFIG)
    proc = start(cms)
    try:
        seen = None
        deadline = time.time() + 600
        while time.time() < deadline and proc.poll() is None:
            downloaded = value_requests(cloud)
            if downloaded >= MESSAGES // 3:
                seen = (downloaded, len(maildir_files(cms.home)))
                break
            time.sleep(0.05)
        assert seen is not None, "the sync ended before a third was downloaded"
        downloaded, files = seen
        print(f"{files} files delivered when {downloaded} of {MESSAGES} were downloaded")
        assert files >= MESSAGES // 6, seen
    finally:
        out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert len(maildir_files(cms.home)) == MESSAGES
