//! `cms.cfg` loading through `--check`: every example of the original
//! README, error locations, and the promise that a failing config touches
//! nothing.

use serde_json::{Value, json};

use crate::util::{Home, stderr, stdout};

fn check(home: &Home, cfg: &str) -> Value {
    home.write("cms.cfg", cfg);
    let out = home.run(&["--check"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    serde_json::from_str(&stdout(&out)).expect("--check prints JSON")
}

fn check_err(home: &Home, cfg: &str) -> String {
    home.write("cms.cfg", cfg);
    let out = home.run(&["--check"]);
    assert_eq!(out.status.code(), Some(2), "stdout: {}", stdout(&out));
    assert!(stdout(&out).is_empty());
    stderr(&out)
}

const DEFAULT_TENANT: &str = "common";
const DEFAULT_CLIENT: &str = "122f4826-adf9-465d-8e84-e9d00bc9f234";

#[test]
fn readme_office365() {
    let home = Home::new();
    let v = check(
        &home,
        "MailDir(\"~/mail/INBOX\")\nOffice365(\"inbox\", Office365_Account(user=\"user@example.com\"))\n",
    );
    let h = home.path().display().to_string();
    assert_eq!(
        v,
        json!({
            "message_db_dir": format!("{h}/mail/.cms"),
            "maildirs": [{"path": format!("{h}/mail/INBOX")}],
            "cloud_mailboxes": [{"kind": "office365", "name": "inbox", "user": "user@example.com",
                "tenant": DEFAULT_TENANT, "client_id": DEFAULT_CLIENT, "delete_action": "archive"}],
            "credential_servers": [],
        })
    );
}

#[test]
fn readme_own_tenant() {
    let home = Home::new();
    let v = check(
        &home,
        "MailDir(\"~/mail/INBOX\")\nOffice365(\"inbox\", Office365_Account(user=\"user@corp.example\", tenant=\"corp.onmicrosoft.com\", client_id=\"0000-1111\"))\n",
    );
    let b = &v["cloud_mailboxes"][0];
    assert_eq!(b["tenant"], "corp.onmicrosoft.com");
    assert_eq!(b["client_id"], "0000-1111");
}

#[test]
fn readme_default_registration() {
    let home = Home::new();
    let v = check(
        &home,
        "MailDir(\"~/mail/INBOX\")\nOffice365(\"inbox\", Office365_Account(user=\"someone@nvidia.com\", use_default_registration=True))\n",
    );
    assert_eq!(v["cloud_mailboxes"][0]["tenant"], DEFAULT_TENANT);
    assert_eq!(v["cloud_mailboxes"][0]["client_id"], DEFAULT_CLIENT);
    // Without the flag the domain's own registration applies.
    let v = check(
        &home,
        "MailDir(\"~/mail/INBOX\")\nOffice365(\"inbox\", Office365_Account(user=\"someone@nvidia.com\"))\n",
    );
    assert_eq!(
        v["cloud_mailboxes"][0]["tenant"],
        "43083d15-7273-40c1-b7db-39efd9ccc17a"
    );
    assert_eq!(
        v["cloud_mailboxes"][0]["client_id"],
        "472bb794-a546-4311-96f9-76bc79989214"
    );
}

#[test]
fn readme_gmail() {
    let home = Home::new();
    let v = check(
        &home,
        "MailDir(\"~/mail/INBOX\")\nGMail(\"INBOX\", GMail_Account(user=\"user@gmail.com\"))\n",
    );
    assert_eq!(
        v["cloud_mailboxes"],
        json!([{"kind": "gmail", "name": "INBOX", "user": "user@gmail.com", "delete_action": "archive"}])
    );
}

#[test]
fn readme_two_accounts_with_filter() {
    let home = Home::new();
    let v = check(
        &home,
        r#"gmail_md = MailDir("~/mail/gmail")
gmail_cloud = GMail("INBOX", GMail_Account(user="user@gmail.com"))

o365_md = MailDir("~/mail/o365")
o365_cloud = Office365("inbox", Office365_Account(user="user@example.com"))

def direct_message(msg):
    if msg.mailbox is gmail_cloud:
        return gmail_md
    else:
        return o365_md
cfg.direct_message = direct_message
"#,
    );
    let h = home.path().display().to_string();
    assert_eq!(
        v["maildirs"],
        json!([{"path": format!("{h}/mail/gmail")}, {"path": format!("{h}/mail/o365")}])
    );
    assert_eq!(v["cloud_mailboxes"][0]["kind"], "gmail");
    assert_eq!(v["cloud_mailboxes"][1]["kind"], "office365");
}

#[test]
fn readme_list_id_example_is_not_valid_python() {
    // The README's List-ID example lacks a colon after the first `if`.
    let home = Home::new();
    let err = check_err(
        &home,
        r#"default_md = MailDir("~/mail/INBOX")
foo_md = MailDir("~/mail/foo")
bar_md = MailDir("~/mail/bar")
GMail("INBOX", GMail_Account(user="user@gmail.com"))

def direct_message(msg):
    list_id = msg.get_header("List-ID")
    if list_id == "<foo-list>"
        return foo_md
    if list_id == "<bar-list>"
        return bar_md
    return default_md
cfg.direct_message = direct_message
"#,
    );
    let cfg = home.path().join("cms.cfg");
    assert!(
        err.starts_with(&format!("{}:8: SyntaxError", cfg.display())),
        "got: {err}"
    );
    assert_eq!(
        home.tree(),
        vec!["cms.cfg".to_string()],
        "a failing config creates nothing"
    );
}

#[test]
fn unknown_keyword_names_file_and_line() {
    let home = Home::new();
    let err = check_err(
        &home,
        "import os\nMailDir(\"~/mail/INBOX\")\nacct = Office365_Account(user=\"u@example.com\",\n    tennant=\"x\")\n",
    );
    let cfg = home.path().join("cms.cfg");
    assert!(
        err.starts_with(&format!("{}:3: TypeError", cfg.display())),
        "got: {err}"
    );
    assert!(err.contains("tennant"), "got: {err}");
    assert!(!err.contains("Traceback"), "traceback only under -v: {err}");
}

#[test]
fn exception_traceback_under_verbose() {
    let home = Home::new();
    home.write(
        "cms.cfg",
        "MailDir(\"~/mail\")\ndef f():\n    raise RuntimeError(\"boom\")\nf()\n",
    );
    let out = home.run(&["--check", "-v"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    let cfg = home.path().join("cms.cfg");
    // The innermost line of the config file is reported.
    assert!(
        err.starts_with(&format!("{}:3: RuntimeError: boom", cfg.display())),
        "{err}"
    );
    assert!(err.contains("line 4, in <module>"), "{err}");
    assert!(
        !err.contains("cms_runtime"),
        "runtime frames are hidden: {err}"
    );
    assert!(err.contains("Traceback"), "{err}");
    assert!(err.contains("line 3, in f"), "{err}");
}

#[test]
fn bad_delete_action() {
    let home = Home::new();
    let err = check_err(
        &home,
        "MailDir(\"~/m\")\nb = GMail(\"INBOX\", GMail_Account(\"u@gmail.com\"))\nb.delete_action = \"trash\"\n",
    );
    assert!(err.contains("cms.cfg:2: delete_action must be"), "{err}");
    let v = check(
        &home,
        "MailDir(\"~/m\")\nb = Office365(\"inbox\", Office365_Account(\"u@x.com\"))\nb.delete_action = \"delete\"\n",
    );
    assert_eq!(v["cloud_mailboxes"][0]["delete_action"], "delete");
}

#[test]
fn credential_server_and_options() {
    let home = Home::new();
    let v = check(
        &home,
        r#"import os
cfg.message_db_dir = "~/state/cms"
acct = Office365_Account(user="u@example.com")
gm = GMail_Account(user="g@gmail.com")
CredentialServer("~/cms.sock", accounts=[acct, gm], protocols=["SMTP", "IMAP"], umask=0o660)
"#,
    );
    let h = home.path().display().to_string();
    assert_eq!(
        v,
        json!({
            "message_db_dir": format!("{h}/state/cms"),
            "maildirs": [],
            "cloud_mailboxes": [],
            "credential_servers": [{"path": format!("{h}/cms.sock"),
                "accounts": ["u@example.com", "g@gmail.com"], "protocols": ["SMTP", "IMAP"],
                "umask": 0o660}],
        })
    );
}

#[test]
fn bad_values_are_located() {
    let home = Home::new();
    let cases = [
        (
            "MailDir(42)\n",
            "1: TypeError: MailDir directory must be a string",
        ),
        (
            "GMail(\"INBOX\", Office365_Account(\"u@x.com\"))\n",
            "1: TypeError: GMail(): account",
        ),
        (
            "MailDir(\"~/m\")\nCredentialServer(\"/tmp/s\", [GMail_Account(\"g@gmail.com\")],\n protocols=[\"POP\"])\n",
            "2: protocols must be among",
        ),
        (
            "Office365(\"inbox\", Office365_Account(\"u@x.com\"))\n",
            "1: cloud mailboxes are declared but no MailDir",
        ),
        ("MailDir(\"~/m\")\nMailDir(\"~/m/\")\n", "2: MailDir"),
        (
            "MailDir(\"~/m\")\nb = GMail(\"INBOX\", GMail_Account(\"u@gmail.com\"))\nb.poll_interval = \"often\"\n",
            "2: poll_interval must be a number",
        ),
        (
            "import os\ncfg.rescan_interval = 10\n",
            "2: cfg.rescan_interval must be between 60 and 604800 seconds, not 10",
        ),
        (
            "cfg.rescan_interval = 'hourly'\n",
            "1: cfg.rescan_interval must be a number of seconds",
        ),
        ("raise SystemExit(3)\n", "1: config called exit(3)"),
        ("import no_such_module_here\n", "1: ModuleNotFoundError"),
    ];
    for (cfg, want) in cases {
        let err = check_err(&home, cfg);
        assert!(
            err.contains(&format!("cms.cfg:{want}")),
            "config {cfg:?}: got {err}"
        );
    }
}

#[test]
fn missing_config_file() {
    let home = Home::new();
    let out = home.run(&["-c", "nope.cfg", "--check"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("nope.cfg:0: cannot read config"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn user_python_keeps_working() {
    let home = Home::new();
    let v = check(
        &home,
        r#"import os, re
os.environ["CMS_TEST_VAR"] = "1"
def md(name):
    return MailDir(os.path.join("~/mail", name))
boxes = {n: md(n) for n in ["a", "b"]}
cfg.message_db_dir = os.path.expanduser("~/db")
assert cfg.direct_message is not None
"#,
    );
    assert_eq!(v["maildirs"].as_array().map(Vec::len), Some(2));
}

#[test]
fn embedded_python_is_one_consistent_install() {
    // The interpreter must be Debian's: its libpython and its stdlib, the
    // same release as /usr/bin/python3, whatever `python3` is on PATH.
    let want = std::process::Command::new("/usr/bin/python3")
        .args(["-c", "import sys; print(sys.version)"])
        .output()
        .expect("run /usr/bin/python3");
    let want = String::from_utf8_lossy(&want.stdout).trim().to_string();
    let home = Home::new();
    let cfg = format!(
        "import sys, os, email\nMailDir('~/m')\nassert sys.version == {want:?}, sys.version\nassert os.__file__.startswith('/usr/lib/python3'), os.__file__\nassert email.__file__.startswith('/usr/lib/python3'), email.__file__\n"
    );
    check(&home, &cfg);
}

#[test]
fn rescan_interval_defaults_to_an_hour_and_can_be_set() {
    use cloud_mdir_sync::config::{self, PathContext, PyActor};
    use std::time::Duration;
    let home = Home::new();
    let paths = PathContext {
        home: home.path().to_path_buf(),
        cwd: home.path().to_path_buf(),
    };
    let actor = PyActor::spawn();
    let file = home.write("cms.cfg", "MailDir(\"~/m\")\n");
    let loaded = config::load(&actor, &file, &paths).expect("config");
    assert_eq!(loaded.config.rescan_interval, Duration::from_secs(3600));
    let file = home.write("cms.cfg", "MailDir(\"~/m\")\ncfg.rescan_interval = 600\n");
    let loaded = config::load(&actor, &file, &paths).expect("config");
    assert_eq!(loaded.config.rescan_interval, Duration::from_secs(600));
}
