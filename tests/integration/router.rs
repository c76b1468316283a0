//! Routing through `cfg.direct_message`: object identity, the message API,
//! failing filters (the message stays put, the daemon goes on) and memoising.

use std::path::{Path, PathBuf};

use cloud_mdir_sync::config::router::{RouteError, RouteRequest};
use cloud_mdir_sync::types::{ContentHash, Flags};

use crate::util::Home;

fn message(dir: &Path, name: &str, text: &str) -> (ContentHash, PathBuf) {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write message");
    (ContentHash(*blake3::hash(text.as_bytes()).as_bytes()), p)
}

fn request(mailbox: usize, id: &str, msg: &(ContentHash, PathBuf)) -> RouteRequest {
    RouteRequest {
        mailbox,
        content_hash: msg.0,
        storage_id: id.to_string(),
        email_id: None,
        flags: Flags::READ | Flags::FLAGGED,
        received_time: Some(1_714_558_830),
        size: 1234,
        content_path: msg.1.clone(),
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

const TWO_ACCOUNTS: &str = r#"
gmail_md = MailDir("~/mail/gmail")
gmail_cloud = GMail("INBOX", GMail_Account(user="user@gmail.com"))
o365_md = MailDir("~/mail/o365")
lists_md = MailDir("~/mail/lists")
o365_cloud = Office365("inbox", Office365_Account(user="user@example.com"))

def direct_message(msg):
    if msg.get_header("List-ID") is not None:
        return lists_md
    if msg.mailbox is gmail_cloud:
        return gmail_md
    assert msg.mailbox is o365_cloud
    return o365_md
cfg.direct_message = direct_message
"#;

#[test]
fn routes_by_mailbox_identity_and_header() {
    let home = Home::new();
    let loaded = home.config(TWO_ACCOUNTS);
    let plain = message(home.path(), "plain", "Subject: hi\n\nbody\n");
    let list = message(
        home.path(),
        "list",
        "Subject: [PATCH] x\nList-Id: Linux kernel\n <linux-kernel.vger.kernel.org>\n\nbody\n",
    );
    let out = rt().block_on(loaded.router.route(vec![
        request(0, "g1", &plain),
        request(1, "o1", &plain),
        request(0, "g2", &list),
        request(1, "o2", &list),
    ]));
    assert_eq!(out, vec![Ok(0), Ok(1), Ok(2), Ok(2)]);
}

#[test]
fn message_object_api() {
    let home = Home::new();
    let loaded = home.config(r#"
import datetime
md = MailDir("~/mail/a")
other = MailDir("~/mail/b")
box = GMail("INBOX", GMail_Account(user="user@gmail.com"))
seen = []
def direct_message(msg):
    assert msg.FLAG_REPLIED == 1 and msg.FLAG_READ == 2
    assert msg.FLAG_FLAGGED == 4 and msg.FLAG_DELETED == 8
    assert msg.flags == msg.FLAG_READ | msg.FLAG_FLAGGED, msg.flags
    assert msg.storage_id == "id-1"
    assert msg.size == 1234
    assert msg.received_time == datetime.datetime(2024, 5, 1, 10, 20, 30), msg.received_time
    assert len(msg.content_hash) == 64
    assert msg.email_id == "<abc@example.com>", msg.email_id
    # First call answers (the Python program once returned None here), and
    # raw 8-bit bytes come back as Python's parser gives them (U+FFFD each).
    assert msg.get_header("subject") == "Gr\ufffd\ufffd\ufffd\ufffde aus K\ufffd\ufffdln", msg.get_header("subject")
    assert msg.get_header("X-Missing") is None
    assert msg.get_header("to") == "a@example.com, b@example.com"
    return other
cfg.direct_message = direct_message
"#,
    );
    let m = message(
        home.path(),
        "m",
        "Message-ID: <abc@example.com>\nSubject: Grüße aus Köln\nTo: a@example.com,\n\tb@example.com\n\nx\n",
    );
    let out = rt().block_on(loaded.router.route(vec![request(0, "id-1", &m)]));
    assert_eq!(out, vec![Ok(1)]);
}

#[test]
fn failing_filters_leave_message_in_place() {
    let home = Home::new();
    let loaded = home.config(
        r#"
md = MailDir("~/mail/a")
box = GMail("INBOX", GMail_Account(user="user@gmail.com"))
def direct_message(msg):
    sid = msg.storage_id
    if sid == "raise":
        raise ValueError("bad message " + sid)
    if sid == "none":
        return None
    if sid == "str":
        return "~/mail/a"
    return md
cfg.direct_message = direct_message
"#,
    );
    let m = message(home.path(), "m", "Subject: x\n\n");
    let batch = vec![
        request(0, "raise", &m),
        request(0, "none", &m),
        request(0, "str", &m),
        request(0, "ok", &m),
    ];
    let rt = rt();
    let out = rt.block_on(loaded.router.route(batch.clone()));
    assert!(
        matches!(&out[0], Err(RouteError::Filter(e)) if e.contains("ValueError: bad message raise"))
    );
    assert!(matches!(&out[1], Err(RouteError::Filter(e)) if e.contains("returned None")));
    assert!(matches!(&out[2], Err(RouteError::Filter(e)) if e.contains("not a MailDir")));
    assert_eq!(out[3], Ok(0));
    assert_eq!(loaded.router.python_calls(), 4);
    // A second pass over unchanged messages calls no Python at all.
    let again = rt.block_on(loaded.router.route(batch));
    assert_eq!(again, out);
    assert_eq!(loaded.router.python_calls(), 4);
    // A changed flag is a new question.
    let mut changed = request(0, "ok", &m);
    changed.flags = Flags::NONE;
    assert_eq!(rt.block_on(loaded.router.route(vec![changed])), vec![Ok(0)]);
    assert_eq!(loaded.router.python_calls(), 5);
}

#[test]
fn non_callable_filter() {
    let home = Home::new();
    let loaded = home.config("MailDir(\"~/m\")\nGMail(\"INBOX\", GMail_Account(\"u@gmail.com\"))\ncfg.direct_message = 42\n",
    );
    let m = message(home.path(), "m", "Subject: x\n\n");
    let out = rt().block_on(loaded.router.route(vec![request(0, "a", &m)]));
    assert!(matches!(&out[0], Err(RouteError::Filter(e)) if e.contains("not callable")));
}

#[test]
fn default_router_calls_no_python() {
    let home = Home::new();
    let loaded = home.config(
        "MailDir(\"~/m\")\nMailDir(\"~/n\")\nGMail(\"INBOX\", GMail_Account(\"u@gmail.com\"))\n",
    );
    let m = message(home.path(), "m", "Subject: x\n\n");
    let out = rt().block_on(loaded.router.route(vec![request(0, "a", &m)]));
    assert_eq!(out, vec![Ok(0)]);
    assert!(!loaded.router.is_custom());
    assert_eq!(loaded.router.python_calls(), 0);
}

#[test]
fn unreadable_content_is_a_filter_error() {
    let home = Home::new();
    let loaded = home.config(TWO_ACCOUNTS);
    let gone = (ContentHash([7; 32]), home.path().join("does-not-exist"));
    let out = rt().block_on(loaded.router.route(vec![request(0, "x", &gone)]));
    assert!(matches!(&out[0], Err(RouteError::Filter(e)) if e.contains("does-not-exist")));
}

#[test]
fn the_memo_forgets_messages_no_longer_asked_about() {
    let home = Home::new();
    let loaded = home.config(
        r#"
md = MailDir("~/mail/a")
box = GMail("INBOX", GMail_Account(user="user@gmail.com"))
def direct_message(msg):
    msg.get_header("List-ID")
    return md
cfg.direct_message = direct_message
"#,
    );
    let m = message(home.path(), "m", "List-ID: <l.example.org>\n\nbody\n");
    let (a, b) = (request(0, "a", &m), request(0, "b", &m));
    let rt = rt();
    rt.block_on(loaded.router.route(vec![a.clone(), b.clone()]));
    assert_eq!(
        (loaded.router.python_calls(), loaded.router.memo_len()),
        (2, 2)
    );
    // "a" left the cloud: two passes later it is forgotten, "b" is not.
    rt.block_on(loaded.router.route(vec![b.clone()]));
    assert_eq!(loaded.router.memo_len(), 2);
    rt.block_on(loaded.router.route(vec![b.clone()]));
    assert_eq!(loaded.router.memo_len(), 1);
    assert_eq!(loaded.router.python_calls(), 2);
    // Asked again, it is a new question.
    rt.block_on(loaded.router.route(vec![a, b]));
    assert_eq!(
        (loaded.router.python_calls(), loaded.router.memo_len()),
        (3, 2)
    );
}
