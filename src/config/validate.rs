//! Checking a [`RawConfig`] into a [`Config`]: types, allowed values,
//! registrations, path expansion. Pure: no IO, no Python.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::raw::{At, Loose, RawAccount, RawConfig, RawCredentialServer};
use super::registration::office365_for;
use super::{
    AccountConfig, CloudKind, Config, ConfigError, CredentialServerConfig, DEFAULT_POLL_INTERVAL,
    DeleteAction, MailboxConfig, MaildirConfig, PathContext, Protocol,
};

/// Check `raw` and resolve it against `paths`.
pub fn validate(raw: &RawConfig, paths: &PathContext) -> Result<Config, ConfigError> {
    let file = raw.file.as_path();
    let message_db_dir = message_db_dir(raw, paths)?;
    let rescan_interval = rescan_interval(raw)?;
    let maildirs = maildirs(raw, paths, &message_db_dir)?;
    let accounts = raw
        .accounts
        .iter()
        .map(|a| account(file, a))
        .collect::<Result<Vec<_>, _>>()?;
    let mailboxes = mailboxes(raw)?;
    if !mailboxes.is_empty() && maildirs.is_empty() {
        let line = raw.mailboxes[0].line;
        return Err(ConfigError::at(
            file,
            line,
            "cloud mailboxes are declared but no MailDir to hold them",
        ));
    }
    let credential_servers = raw
        .credential_servers
        .iter()
        .map(|s| credential_server(file, s, &accounts, paths))
        .collect::<Result<Vec<_>, _>>()?;

    Ok(Config {
        file: raw.file.clone(),
        message_db_dir,
        maildirs,
        accounts,
        mailboxes,
        credential_servers,
        custom_router: raw.custom_router,
        rescan_interval,
    })
}

/// Check `cfg.message_db_dir` and resolve it against `paths`.
fn message_db_dir(raw: &RawConfig, paths: &PathContext) -> Result<PathBuf, ConfigError> {
    let err = |msg: String| ConfigError::at(&raw.file, 0, msg);
    match &raw.message_db_dir {
        Loose::Ok(s) if !s.is_empty() => Ok(paths.resolve(s)),
        Loose::Ok(_) => Err(err("cfg.message_db_dir is empty".into())),
        Loose::Other(r) => Err(err(format!("cfg.message_db_dir must be a path, not {r}"))),
    }
}

/// Check `cfg.rescan_interval` is a number of seconds in range.
fn rescan_interval(raw: &RawConfig) -> Result<Duration, ConfigError> {
    let err = |msg: String| ConfigError::at(&raw.file, raw.rescan_interval.line, msg);
    match raw.rescan_interval.value {
        Loose::Ok(s) if s.is_finite() && (60.0..=7.0 * 86_400.0).contains(&s) => {
            Ok(Duration::from_secs_f64(s))
        }
        Loose::Ok(s) => Err(err(format!(
            "cfg.rescan_interval must be between 60 and 604800 seconds, not {s}"
        ))),
        Loose::Other(ref r) => Err(err(format!(
            "cfg.rescan_interval must be a number of seconds, not {r}"
        ))),
    }
}

/// Resolve the maildirs, refusing empty, duplicate and nested-in-the-db ones.
fn maildirs(
    raw: &RawConfig,
    paths: &PathContext,
    message_db_dir: &Path,
) -> Result<Vec<MaildirConfig>, ConfigError> {
    let err = |line: u32, msg: String| ConfigError::at(&raw.file, line, msg);
    let mut maildirs = Vec::new();
    let mut seen = HashSet::new();
    for m in &raw.maildirs {
        if m.value.directory.is_empty() {
            return Err(err(m.line, "MailDir directory is empty".into()));
        }
        let path = paths.resolve(&m.value.directory);
        if !seen.insert(path.clone()) {
            return Err(err(
                m.line,
                format!("MailDir {} is declared twice", path.display()),
            ));
        }
        if path.starts_with(message_db_dir) {
            return Err(err(
                m.line,
                format!(
                    "MailDir {} is inside cfg.message_db_dir {}",
                    path.display(),
                    message_db_dir.display()
                ),
            ));
        }
        maildirs.push(MaildirConfig { path });
    }
    Ok(maildirs)
}

/// Check one account, filling in the default Office365 registration.
fn account(file: &Path, a: &At<RawAccount>) -> Result<AccountConfig, ConfigError> {
    let r = &a.value;
    Ok(match r.kind {
        CloudKind::Office365 => {
            let reg = office365_for(r.user.as_deref(), r.use_default_registration);
            AccountConfig {
                kind: CloudKind::Office365,
                user: r.user.clone(),
                tenant: Some(r.tenant.clone().unwrap_or_else(|| reg.tenant.into())),
                client_id: Some(r.client_id.clone().unwrap_or_else(|| reg.client_id.into())),
                device_code: r.device_code,
            }
        }
        CloudKind::Gmail => {
            let user = r.user.clone().filter(|u| u.contains('@')).ok_or_else(|| {
                ConfigError::at(
                    file,
                    a.line,
                    "GMail_Account needs user= with a full address",
                )
            })?;
            AccountConfig {
                kind: CloudKind::Gmail,
                user: Some(user),
                tenant: None,
                client_id: None,
                device_code: false,
            }
        }
    })
}

/// Check the cloud mailboxes, refusing bad names and duplicates per account.
fn mailboxes(raw: &RawConfig) -> Result<Vec<MailboxConfig>, ConfigError> {
    let err = |line: u32, msg: String| ConfigError::at(&raw.file, line, msg);
    let mut mailboxes = Vec::new();
    let mut seen = HashSet::new();
    for b in &raw.mailboxes {
        let r = &b.value;
        let kind_name = match r.kind {
            CloudKind::Office365 => "Office365",
            CloudKind::Gmail => "GMail",
        };
        if r.name.is_empty()
            || r.name.split('/').any(str::is_empty) && r.kind == CloudKind::Office365
        {
            return Err(err(
                b.line,
                format!("{kind_name} mailbox name {:?} is not valid", r.name),
            ));
        }
        if !seen.insert((r.account, r.name.clone())) {
            return Err(err(
                b.line,
                format!(
                    "{kind_name}({:?}) is declared twice for the same account",
                    r.name
                ),
            ));
        }
        mailboxes.push(MailboxConfig {
            kind: r.kind,
            name: r.name.clone(),
            account: r.account,
            delete_action: delete_action(&raw.file, b.line, &r.delete_action)?,
            poll_interval: poll_interval(&raw.file, b.line, r.poll_interval.as_ref())?,
        });
    }
    Ok(mailboxes)
}

/// Check a mailbox's `delete_action` is "archive" or "delete".
fn delete_action(file: &Path, line: u32, v: &Loose<String>) -> Result<DeleteAction, ConfigError> {
    let err = |msg: String| ConfigError::at(file, line, msg);
    match v {
        Loose::Ok(s) if s == "archive" => Ok(DeleteAction::Archive),
        Loose::Ok(s) if s == "delete" => Ok(DeleteAction::Delete),
        Loose::Ok(s) => Err(err(format!(
            "delete_action must be \"archive\" or \"delete\", not {s:?}"
        ))),
        Loose::Other(r) => Err(err(format!(
            "delete_action must be \"archive\" or \"delete\", not {r}"
        ))),
    }
}

/// Check a mailbox's `poll_interval`, the default when unset.
fn poll_interval(file: &Path, line: u32, v: Option<&Loose<f64>>) -> Result<Duration, ConfigError> {
    let err = |msg: String| ConfigError::at(file, line, msg);
    match v {
        None => Ok(DEFAULT_POLL_INTERVAL),
        Some(Loose::Ok(s)) if s.is_finite() && *s >= 1.0 && *s <= 86_400.0 => {
            Ok(Duration::from_secs_f64(*s))
        }
        Some(Loose::Ok(s)) => Err(err(format!(
            "poll_interval must be between 1 and 86400 seconds, not {s}"
        ))),
        Some(Loose::Other(r)) => Err(err(format!(
            "poll_interval must be a number of seconds, not {r}"
        ))),
    }
}

/// Check one credential server against the already checked `accounts`.
fn credential_server(
    file: &Path,
    s: &At<RawCredentialServer>,
    accounts: &[AccountConfig],
    paths: &PathContext,
) -> Result<CredentialServerConfig, ConfigError> {
    let err = |msg: &str| ConfigError::at(file, s.line, msg);
    let r = &s.value;
    let umask = umask(file, s.line, &r.umask)?;
    let protocols = protocols(file, s.line, &r.protocols)?;
    if r.accounts.is_empty() {
        return Err(err("CredentialServer needs at least one account"));
    }
    for &i in &r.accounts {
        if accounts[i].user.is_none() {
            return Err(err(
                "CredentialServer accounts need user= (clients ask for a token by address)",
            ));
        }
    }
    Ok(CredentialServerConfig {
        path: paths.resolve(&r.path),
        accounts: r.accounts.clone(),
        umask,
        protocols,
    })
}

/// Check a credential server's `umask` is a permission mask.
fn umask(file: &Path, line: u32, v: &Loose<i64>) -> Result<u32, ConfigError> {
    match *v {
        Loose::Ok(u) if (0..=0o777).contains(&u) => Ok(u as u32),
        Loose::Ok(u) => Err(ConfigError::at(
            file,
            line,
            format!("umask must be between 0 and 0o777, not {u:#o}"),
        )),
        Loose::Other(ref r) => Err(ConfigError::at(
            file,
            line,
            format!("umask must be an integer, not {r}"),
        )),
    }
}

/// Parse a credential server's protocol names, dropping repeats.
fn protocols(file: &Path, line: u32, names: &[String]) -> Result<Vec<Protocol>, ConfigError> {
    let mut protocols = Vec::new();
    for p in names {
        let proto = match p.to_ascii_uppercase().as_str() {
            "SMTP" => Protocol::Smtp,
            "IMAP" => Protocol::Imap,
            _ => {
                return Err(ConfigError::at(
                    file,
                    line,
                    format!("protocols must be among \"SMTP\" and \"IMAP\", not {p:?}"),
                ));
            }
        };
        if !protocols.contains(&proto) {
            protocols.push(proto);
        }
    }
    Ok(protocols)
}
