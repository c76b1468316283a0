//! Checking a [`RawConfig`] into a [`Config`]: types, allowed values,
//! registrations, path expansion. Pure: no IO, no Python.

use std::collections::HashSet;
use std::time::Duration;

use super::raw::{Loose, RawConfig};
use super::registration::office365_for;
use super::{
    AccountConfig, CloudKind, Config, ConfigError, CredentialServerConfig, DEFAULT_POLL_INTERVAL,
    DeleteAction, MailboxConfig, MaildirConfig, PathContext, Protocol,
};

/// Check `raw` and resolve it against `paths`.
pub fn validate(raw: &RawConfig, paths: &PathContext) -> Result<Config, ConfigError> {
    let file = raw.file.as_path();
    let err = |line: u32, msg: String| ConfigError::at(file, line, msg);

    let message_db_dir = match &raw.message_db_dir {
        Loose::Ok(s) if !s.is_empty() => paths.resolve(s),
        Loose::Ok(_) => return Err(err(0, "cfg.message_db_dir is empty".into())),
        Loose::Other(r) => {
            return Err(err(
                0,
                format!("cfg.message_db_dir must be a path, not {r}"),
            ));
        }
    };

    let line = raw.rescan_interval.line;
    let rescan_interval = match raw.rescan_interval.value {
        Loose::Ok(s) if s.is_finite() && (60.0..=7.0 * 86_400.0).contains(&s) => {
            Duration::from_secs_f64(s)
        }
        Loose::Ok(s) => {
            return Err(err(
                line,
                format!("cfg.rescan_interval must be between 60 and 604800 seconds, not {s}"),
            ));
        }
        Loose::Other(ref r) => {
            return Err(err(
                line,
                format!("cfg.rescan_interval must be a number of seconds, not {r}"),
            ));
        }
    };

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
        if path.starts_with(&message_db_dir) {
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

    let mut accounts = Vec::new();
    for a in &raw.accounts {
        let r = &a.value;
        let acct = match r.kind {
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
                    err(
                        a.line,
                        "GMail_Account needs user= with a full address".into(),
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
        };
        accounts.push(acct);
    }

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
        let delete_action = match &r.delete_action {
            Loose::Ok(s) if s == "archive" => DeleteAction::Archive,
            Loose::Ok(s) if s == "delete" => DeleteAction::Delete,
            Loose::Ok(s) => {
                return Err(err(
                    b.line,
                    format!("delete_action must be \"archive\" or \"delete\", not {s:?}"),
                ));
            }
            Loose::Other(r) => {
                return Err(err(
                    b.line,
                    format!("delete_action must be \"archive\" or \"delete\", not {r}"),
                ));
            }
        };
        let poll_interval = match &r.poll_interval {
            None => DEFAULT_POLL_INTERVAL,
            Some(Loose::Ok(s)) if s.is_finite() && *s >= 1.0 && *s <= 86_400.0 => {
                Duration::from_secs_f64(*s)
            }
            Some(Loose::Ok(s)) => {
                return Err(err(
                    b.line,
                    format!("poll_interval must be between 1 and 86400 seconds, not {s}"),
                ));
            }
            Some(Loose::Other(r)) => {
                return Err(err(
                    b.line,
                    format!("poll_interval must be a number of seconds, not {r}"),
                ));
            }
        };
        mailboxes.push(MailboxConfig {
            kind: r.kind,
            name: r.name.clone(),
            account: r.account,
            delete_action,
            poll_interval,
        });
    }
    if !mailboxes.is_empty() && maildirs.is_empty() {
        let line = raw.mailboxes[0].line;
        return Err(err(
            line,
            "cloud mailboxes are declared but no MailDir to hold them".into(),
        ));
    }

    let mut credential_servers = Vec::new();
    for s in &raw.credential_servers {
        let r = &s.value;
        let umask = match r.umask {
            Loose::Ok(u) if (0..=0o777).contains(&u) => u as u32,
            Loose::Ok(u) => {
                return Err(err(
                    s.line,
                    format!("umask must be between 0 and 0o777, not {u:#o}"),
                ));
            }
            Loose::Other(ref r) => {
                return Err(err(s.line, format!("umask must be an integer, not {r}")));
            }
        };
        let mut protocols = Vec::new();
        for p in &r.protocols {
            let proto = match p.to_ascii_uppercase().as_str() {
                "SMTP" => Protocol::Smtp,
                "IMAP" => Protocol::Imap,
                _ => {
                    return Err(err(
                        s.line,
                        format!("protocols must be among \"SMTP\" and \"IMAP\", not {p:?}"),
                    ));
                }
            };
            if !protocols.contains(&proto) {
                protocols.push(proto);
            }
        }
        if r.accounts.is_empty() {
            return Err(err(
                s.line,
                "CredentialServer needs at least one account".into(),
            ));
        }
        for &i in &r.accounts {
            if accounts[i].user.is_none() {
                return Err(err(
                    s.line,
                    "CredentialServer accounts need user= (clients ask for a token by address)"
                        .into(),
                ));
            }
        }
        credential_servers.push(CredentialServerConfig {
            path: paths.resolve(&r.path),
            accounts: r.accounts.clone(),
            umask,
            protocols,
        });
    }

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
