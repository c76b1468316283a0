//! The `cms.cfg` runtime: runs the user's Python config on the embedded
//! interpreter, collects the objects it created ([`raw`]), and checks them into
//! a plain Rust [`Config`] ([`validate`]). Loading has no side effects: nothing
//! is created on disk until the caller acts on a validated config.

pub mod headers;
pub mod python;
pub mod raw;
pub mod registration;
pub mod router;
pub mod validate;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use python::PyActor;
pub use router::Router;

// The shared value types the config produces (their home is `types`).
use crate::types::{CloudKind, DeleteAction, Protocol};

/// A local maildir declared with `MailDir(...)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaildirConfig {
    /// Absolute path, `~` expanded.
    pub path: PathBuf,
}

/// An OAuth account declared with `Office365_Account(...)` or `GMail_Account(...)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountConfig {
    /// Service of the account.
    pub kind: CloudKind,
    /// The user's address; `None` lets the login page ask (Office365 only).
    pub user: Option<String>,
    /// Azure tenant (Office365 only), resolved through the registration table.
    pub tenant: Option<String>,
    /// OAuth client id (Office365 only), resolved through the registration table.
    pub client_id: Option<String>,
    /// Log in with the device code flow instead of a browser redirect.
    pub device_code: bool,
}

/// A cloud folder or label to mirror.
#[derive(Clone, Debug, PartialEq)]
pub struct MailboxConfig {
    /// Service of the mailbox.
    pub kind: CloudKind,
    /// Folder display name (`"A/B"` for nested) or Gmail label name.
    pub name: String,
    /// Index into [`Config::accounts`].
    pub account: usize,
    /// What deleting a message locally does in the cloud.
    pub delete_action: DeleteAction,
    /// How often to poll for cloud changes when nothing else wakes us.
    pub poll_interval: Duration,
}

/// A token broker declared with `CredentialServer(...)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialServerConfig {
    /// Absolute path of the UNIX socket.
    pub path: PathBuf,
    /// Indexes into [`Config::accounts`].
    pub accounts: Vec<usize>,
    /// Mode bits kept on the socket file (the config calls it `umask`).
    pub umask: u32,
    /// Protocols tokens are handed out for.
    pub protocols: Vec<Protocol>,
}

/// The validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The config file it came from.
    pub file: PathBuf,
    /// The state directory (`cfg.message_db_dir`), absolute.
    pub message_db_dir: PathBuf,
    /// Local maildirs; the first is the default destination.
    pub maildirs: Vec<MaildirConfig>,
    /// OAuth accounts, in declaration order.
    pub accounts: Vec<AccountConfig>,
    /// Cloud mailboxes, in declaration order.
    pub mailboxes: Vec<MailboxConfig>,
    /// Token brokers.
    pub credential_servers: Vec<CredentialServerConfig>,
    /// True when the config replaced `cfg.direct_message`.
    pub custom_router: bool,
    /// How often every maildir is scanned in full even without a watcher
    /// event (`cfg.rescan_interval`): the watcher is a hint, never the only
    /// truth.
    pub rescan_interval: Duration,
}

/// Default poll interval of a cloud mailbox.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(15);

/// A config that cannot be used, located at a line of the file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    /// The config file.
    pub file: PathBuf,
    /// 1-based line, 0 when no line applies.
    pub line: u32,
    /// What is wrong.
    pub message: String,
    /// The Python traceback, when Python raised (shown under `-v`).
    pub traceback: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
    }
}

impl ConfigError {
    /// An error at `line` of `file`.
    pub fn at(file: &Path, line: u32, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: file.to_path_buf(),
            line,
            message: message.into(),
            traceback: None,
        }
    }
}

/// Where `~` points and what relative paths are relative to; injected so
/// loading reads no environment.
#[derive(Clone, Debug)]
pub struct PathContext {
    /// The user's home directory.
    pub home: PathBuf,
    /// The working directory for relative paths.
    pub cwd: PathBuf,
}

impl PathContext {
    /// Expand a leading `~` and make the path absolute.
    pub fn resolve(&self, p: &str) -> PathBuf {
        let expanded = if p == "~" {
            self.home.clone()
        } else if let Some(rest) = p.strip_prefix("~/") {
            self.home.join(rest)
        } else {
            PathBuf::from(p)
        };
        let abs = if expanded.is_absolute() {
            expanded
        } else {
            self.cwd.join(expanded)
        };
        normalize(&abs)
    }
}

/// Remove `.` and `..` components lexically (like Python's `os.path.normpath`).
fn normalize(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// A loaded config: the checked form plus the live Python objects routing needs.
pub struct Loaded {
    /// The validated configuration.
    pub config: Config,
    /// Routes messages through `cfg.direct_message`.
    pub router: Router,
}

/// Run `file` on the Python thread of `actor`, collect and validate it.
pub fn load(actor: &PyActor, file: &Path, paths: &PathContext) -> Result<Loaded, ConfigError> {
    let file = paths.resolve(&file.to_string_lossy());
    let (raw, objects) = raw::collect(actor, &file)?;
    let config = validate::validate(&raw, paths)?;
    let router = Router::new(actor.clone(), objects, config.custom_router);
    Ok(Loaded { config, router })
}

/// The `--check` summary: one JSON object describing the topology.
pub fn check_summary(cfg: &Config) -> serde_json::Value {
    use serde_json::json;
    let user_of = |i: usize| cfg.accounts[i].user.clone();
    let boxes: Vec<_> = cfg
        .mailboxes
        .iter()
        .map(|m| {
            let acct = &cfg.accounts[m.account];
            let mut v = json!({
                "kind": m.kind,
                "name": m.name,
                "user": acct.user,
                "delete_action": m.delete_action,
            });
            if m.kind == CloudKind::Office365 {
                v["tenant"] = json!(acct.tenant);
                v["client_id"] = json!(acct.client_id);
            }
            v
        })
        .collect();
    let servers: Vec<_> = cfg
        .credential_servers
        .iter()
        .map(|s| {
            json!({
                "path": s.path,
                "accounts": s.accounts.iter().map(|&i| user_of(i)).collect::<Vec<_>>(),
                "protocols": s.protocols,
                "umask": s.umask,
            })
        })
        .collect();
    json!({
        "message_db_dir": cfg.message_db_dir,
        "maildirs": cfg.maildirs.iter().map(|m| json!({"path": m.path})).collect::<Vec<_>>(),
        "cloud_mailboxes": boxes,
        "credential_servers": servers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_paths() {
        let p = PathContext {
            home: "/home/u".into(),
            cwd: "/work".into(),
        };
        assert_eq!(
            p.resolve("~/mail/INBOX"),
            PathBuf::from("/home/u/mail/INBOX")
        );
        assert_eq!(p.resolve("~"), PathBuf::from("/home/u"));
        assert_eq!(p.resolve("mail/../x/./y"), PathBuf::from("/work/x/y"));
        assert_eq!(p.resolve("/abs/dir/"), PathBuf::from("/abs/dir"));
        assert_eq!(p.resolve("~other/x"), PathBuf::from("/work/~other/x"));
    }
}
