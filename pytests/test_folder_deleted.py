"""A folder (Office365) or label (Gmail) deleted in the cloud while the
daemon runs, through the binary: the deletion is reported, the folder is
retried only rarely (no hot loop), the other folders keep syncing new mail,
and the deleted folder's local files stay where they are."""

import json
import time
import urllib.parse
import urllib.request

import pytest

from conftest import maildir_files, wait_for

O365 = "me@contoso.example"
GMAIL = "me@gmail.example"

ACCOUNT = {"o365": f'Office365_Account(user="{O365}")', "gmail": f'GMail_Account(user="{GMAIL}")'}
FOLDER = {"o365": ("Office365", "inbox"), "gmail": ("GMail", "INBOX")}


def config(service):
    kind, inbox = FOLDER[service]
    return f'''
inbox = MailDir("~/mail/inbox")
projects = MailDir("~/mail/projects")
acct = {ACCOUNT[service]}
i = {kind}("{inbox}", acct)
i.poll_interval = 1
p = {kind}("Projects", acct)
p.poll_interval = 1
def direct_message(msg):
    return projects if msg.mailbox is p else inbox
cfg.direct_message = direct_message
'''


def call(cloud, service, method, path):
    user, aud, base = {
        "o365": (O365, "graph", "/graph.microsoft.com/v1.0/me"),
        "gmail": (GMAIL, "gmail", "/www.googleapis.com/gmail/v1/users/me"),
    }[service]
    token = cloud.control("token", {"user": user, "audience": aud})
    req = urllib.request.Request(f"{cloud.url}{base}{path}", method=method,
                                 headers={"Authorization": "Bearer " + token["access_token"]})
    with urllib.request.urlopen(req, timeout=30) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else None


def delete_projects(cloud, service):
    if service == "o365":
        q = urllib.parse.quote("displayName eq 'Projects'")
        fid = call(cloud, service, "GET", f"/mailFolders?$filter={q}")["value"][0]["id"]
        # Into Deleted Items, then out of it for good.
        call(cloud, service, "DELETE", f"/mailFolders/{fid}")
        call(cloud, service, "DELETE", f"/mailFolders/{fid}")
    else:
        labels = call(cloud, service, "GET", "/labels")["labels"]
        lid = next(label["id"] for label in labels if label["name"] == "Projects")
        call(cloud, service, "DELETE", f"/labels/{lid}")


def failed_requests(cloud):
    """Requests answered 404 (the deleted folder's or label's listings)."""
    return sum(v["statuses"].get("404", 0) for v in cloud.stats()["routes"].values())


def lookups(cloud, service):
    """Folder or label lookups (the deleted one is looked for again)."""
    routes = cloud.stats()["routes"]
    if service == "o365":
        return sum(v["requests"] for r, v in routes.items()
                   if "mailFolders" in r and not r.endswith("/messages/delta"))
    return sum(v["requests"] for r, v in routes.items() if "labels" in r)


@pytest.mark.parametrize("service", ["o365", "gmail"])
def test_a_folder_deleted_in_the_cloud_is_reported_and_nothing_is_lost(
        cms, fakecloud_factory, service):
    user = O365 if service == "o365" else GMAIL
    flag = "--populate-o365" if service == "o365" else "--populate-gmail"
    inbox = "Inbox" if service == "o365" else "INBOX"
    cloud = fakecloud_factory(flag, f"{user}:{inbox}:4", flag, f"{user}:Projects:3")
    cms.use_cloud(cloud)
    cms.write_cfg(config(service))
    with cms.daemon() as proc:
        wait_for("the first sync", lambda: len(maildir_files(cms.home, "projects")) == 3
                 and len(maildir_files(cms.home, "inbox")) >= 4, 60)
        kept = sorted(maildir_files(cms.home, "projects"))
        delete_projects(cloud, service)
        time.sleep(4)
        cloud.control("stats", method="DELETE")
        # New mail still arrives in the folders that exist.
        raw = (f"From: a@example.org\r\nTo: {user}\r\nSubject: after\r\n"
               f"Message-ID: <after@example.org>\r\n\r\nhello\r\n")
        cloud.control("deliver", {"user": user, "service": service, "folder": inbox, "raw": raw})
        wait_for("new mail in the inbox",
                 lambda: any(b"<after@example.org>" in open(f, "rb").read()
                             for f in maildir_files(cms.home, "inbox")), 30)
        time.sleep(6)
        # The deleted folder is not asked about every poll.
        assert failed_requests(cloud) <= 1, cloud.stats()["routes"]
        assert lookups(cloud, service) <= 2, cloud.stats()["routes"]
        assert sorted(maildir_files(cms.home, "projects")) == kept
    err = proc.stderr_text
    assert proc.returncode == 0, err[-3000:]
    assert "Projects" in err and "not found" in err, err[-3000:]
    assert "trying again every 10 min" in err, err[-3000:]
    assert sorted(maildir_files(cms.home, "projects")) == kept
