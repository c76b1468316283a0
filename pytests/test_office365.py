"""Office365 end to end through the binary against the emulator: nested
folders routed by direct_message, restarts that download nothing and cost one
request per folder, a second client's changes arriving within one poll, and
faults (429 storms, 503, resets, truncated downloads, delta resets) that
converge without losing or half-writing anything."""

import base64
import json
import os
import subprocess
import time
import urllib.request

import pytest

from conftest import assert_no_tokens, binary

USER = "e2e@contoso.example"

CONFIG = f'''
work = MailDir("~/mail/work")
rust = MailDir("~/mail/rust")
acct = Office365_Account(user="{USER}")
inbox = Office365("inbox", acct)
lists = Office365("Inbox/Lists/Rust", acct)
{{extra}}
def direct_message(msg):
    # The filter sees the stored (LF) size; a failed assert would misroute.
    assert msg.size > 50, msg.size
    if msg.mailbox is lists:
        return rust
    return work
cfg.direct_message = direct_message
'''


def graph_requests(stats):
    """Requests per Graph route, outside $batch parts."""
    return {r: v["requests"] for r, v in stats["routes"].items()
            if r.startswith("graph ") and "(in $batch)" not in r}


def header(text, name):
    """The first value of a (single-line) header in raw bytes."""
    prefix = name.lower().encode() + b":"
    for line in text.split(b"\n"):
        if not line.strip():
            break
        if line.lower().startswith(prefix):
            return line.split(b":", 1)[1].strip().decode(errors="replace")
    return ""


def local_messages(home):
    """(maildir, Message-ID) -> [(flag letters, content)] for every file."""
    out = {}
    for md in ("work", "rust"):
        for sub in ("cur", "new"):
            d = home / "mail" / md / sub
            if not d.exists():
                continue
            for name in os.listdir(d):
                text = (d / name).read_bytes()
                flags = name.split(":2,")[1] if ":2," in name else ""
                out.setdefault((md, header(text, "Message-ID")), []).append((flags, text))
    return out


def second_client(cloud, method, path, body=None):
    token = cloud.control("token", {"user": USER, "audience": "graph",
                                    "scopes": ["https://graph.microsoft.com/Mail.ReadWrite"]})
    req = urllib.request.Request(
        f"{cloud.url}/graph.microsoft.com/v1.0{path}",
        data=None if body is None else json.dumps(body).encode(), method=method,
        headers={"Authorization": "Bearer " + token["access_token"],
                 "Content-Type": "application/json", "Prefer": 'IdType="ImmutableId"'})
    with urllib.request.urlopen(req, timeout=30) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else None


def cloud_messages(cloud, raw=False):
    q = f"mailbox?user={USER}" + ("&raw=1" if raw else "")
    return cloud.control(q)["o365"]["messages"]


def test_nested_folders_routed_and_restart_is_cheap(cms, fakecloud_factory):
    cloud = fakecloud_factory("--populate-o365", f"{USER}:Inbox:40",
                              "--populate-o365", f"{USER}:Inbox/Lists/Rust:25")
    cms.use_cloud(cloud)
    cms.write_cfg(CONFIG.format(extra=""))
    cms.run("--once")
    local = local_messages(cms.home)
    assert sum(len(v) for (md, _), v in local.items() if md == "work") == 40
    assert sum(len(v) for (md, _), v in local.items() if md == "rust") == 25
    # One file per message, with LF line ends.
    for (md, mid), copies in local.items():
        assert len(copies) == 1, mid
        assert b"\r\n" not in copies[0][1]
    stats = cloud.stats()
    assert stats["throttled"] == 0
    for mb in stats["mailboxes"].values():
        assert mb["peak_concurrency"] <= 4

    # A restart: nothing downloaded again, one request per folder.
    cloud.control("stats", method="DELETE")
    cms.run("--once")
    reqs = graph_requests(cloud.stats())
    assert sum(reqs.values()) == 2, reqs
    assert all("delta" in r for r in reqs), reqs
    assert not any("$value" in r for r in reqs), reqs
    assert local_messages(cms.home).keys() == local.keys()

    # An idle poll in the same process is one request per folder too.
    cloud.control("stats", method="DELETE")
    cms.run("--once")
    assert sum(graph_requests(cloud.stats()).values()) == 2


def test_second_client_changes_arrive_within_one_poll(cms, fakecloud_factory, tmp_path):
    cloud = fakecloud_factory("--populate-o365", f"{USER}:Inbox:1",
                              "--populate-o365", f"{USER}:Inbox/Lists/Rust:1")
    for n in range(1, 6):
        cloud.control("deliver", {"user": USER, "service": "o365", "folder": "inbox",
                                  "raw": f"Subject: t{n}\r\nMessage-ID: <t{n}@x>\r\n\r\nbody\r\n"})
    cms.use_cloud(cloud)
    cms.write_cfg(CONFIG.format(extra="inbox.poll_interval = 1\nlists.poll_interval = 1"))
    log = open(tmp_path / "daemon.log", "w")
    daemon = subprocess.Popen([str(binary("cloud-mdir-sync"))], cwd=cms.home, env=cms.env,
                              stdout=log, stderr=subprocess.STDOUT)

    def wait_for(what, pred):
        deadline = time.time() + 30
        while not pred():
            assert daemon.poll() is None, (tmp_path / "daemon.log").read_text()
            assert time.time() < deadline, f"{what}\n" + (tmp_path / "daemon.log").read_text()
            time.sleep(0.2)

    try:
        wait_for("initial sync", lambda: sum(
            len(v) for (md, _), v in local_messages(cms.home).items() if md == "work") == 6)
        by = {m["internetMessageId"]: m for m in cloud_messages(cloud)}
        read, flag, reply, move, delete = (f"<t{n}@x>" for n in range(1, 6))
        second_client(cloud, "PATCH", f"/me/messages/{by[read]['id']}", {"isRead": True})
        second_client(cloud, "PATCH", f"/me/messages/{by[flag]['id']}",
                      {"flag": {"flagStatus": "flagged"}})
        second_client(cloud, "PATCH", f"/me/messages/{by[reply]['id']}", {
            "singleValueExtendedProperties": [
                {"id": "Integer 0x1081", "value": "102"},
                {"id": "Integer 0x1080", "value": "261"}]})
        second_client(cloud, "POST", f"/me/messages/{by[move]['id']}/move",
                      {"destinationId": "archive"})
        second_client(cloud, "DELETE", f"/me/messages/{by[delete]['id']}")
        cloud.control("deliver", {"user": USER, "service": "o365", "folder": "inbox",
                                  "raw": "Subject: fresh delivery\r\nMessage-ID: <fresh@x>\r\n\r\nhi\r\n"})

        def converged():
            local = local_messages(cms.home)
            work = {s: v for (md, s), v in local.items() if md == "work"}
            return ("<fresh@x>" in work and move not in work and delete not in work
                    and "S" in work.get(read, [("", b"")])[0][0]
                    and "F" in work.get(flag, [("", b"")])[0][0]
                    and "R" in work.get(reply, [("", b"")])[0][0])

        wait_for("second client's changes", converged)
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        log.close()
    assert_no_tokens((tmp_path / "daemon.log").read_text())


@pytest.mark.parametrize("faults", [
    [{"route": "*/$value", "kind": "truncate", "count": 5}],
    [{"route": "*/$value", "kind": "reset", "count": 5}],
    [{"route": "*/messages/delta", "kind": "status", "status": 503, "count": 3}],
    [{"route": "*graph.microsoft.com*", "kind": "status", "status": 429, "retry_after": "0.2",
      "count": 30}],
    [{"route": "*graph.microsoft.com*", "kind": "status", "status": 503, "probability": 0.3}],
])
def test_faults_converge_without_loss(cms, fakecloud_factory, faults):
    cloud = fakecloud_factory("--populate-o365", f"{USER}:Inbox:30",
                              "--populate-o365", f"{USER}:Inbox/Lists/Rust:5")
    cms.use_cloud(cloud)
    cms.write_cfg(CONFIG.format(extra=""))
    cloud.control("faults", faults)
    for _ in range(4):
        if cms.run("--once", check=False).returncode == 0:
            break
    cloud.control("faults", method="DELETE")
    cms.run("--once")
    local = local_messages(cms.home)
    assert sum(len(v) for v in local.values()) == 35
    raws = {m["internetMessageId"]: m for m in cloud_messages(cloud, raw=True)}
    for (md, mid), copies in local.items():
        assert len(copies) == 1, mid
        want = base64.b64decode(raws[mid]["raw"]).replace(b"\r\n", b"\n")
        assert copies[0][1] == want, f"{mid} is complete"
    # Nothing half-written anywhere in the maildirs.
    for md in ("work", "rust"):
        assert os.listdir(cms.home / "mail" / md / "tmp") == []


def test_delta_reset_relists_without_losing_local_changes(cms, fakecloud_factory):
    cloud = fakecloud_factory("--populate-o365", f"{USER}:Inbox:10",
                              "--populate-o365", f"{USER}:Inbox/Lists/Rust:2")
    cms.use_cloud(cloud)
    cms.write_cfg(CONFIG.format(extra=""))
    cms.run("--once")
    # A local flag change, then the service forgets every delta token.
    d = cms.home / "mail" / "work" / "cur"
    name = sorted(n for n in os.listdir(d) if ":2," in n and "F" not in n.split(":2,")[1])[0]
    base, letters = name.split(":2,")
    os.rename(d / name, d / f"{base}:2,{''.join(sorted(letters + 'F'))}")
    cloud.control("expire-delta", {"user": USER})
    cms.run("--once")
    flagged = [m for m in cloud_messages(cloud) if m["flag"]["flagStatus"] == "flagged"]
    assert len(flagged) >= 1
    assert sum(len(v) for v in local_messages(cms.home).values()) == 12
