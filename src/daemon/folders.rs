//! The backends for the config's cloud folders: one client per account
//! (so all folders of an account share its throttle), one backend per
//! configured folder, each with the stable key its state is stored under.

use std::collections::HashMap;
use std::sync::Arc;

use crate::auth::TokenSource;
use crate::cloud::{CloudError, CloudMailbox, ErrorKind, gmail, graph};
use crate::config::Config;
use crate::endpoints::Endpoints;
use crate::sync::engine::Folder;
use crate::types::CloudKind;

/// The backends for the config's cloud mailboxes, in config order: one
/// client per account (so all folders of an account share its throttle), one
/// folder per mailbox. `tokens[i]` serves `config.accounts[i]`.
pub(super) fn folders_for(
    config: &Config,
    endpoints: &Endpoints,
    tokens: &[Arc<dyn TokenSource>],
    quota_scale: u32,
) -> Result<Vec<Folder>, CloudError> {
    let mut graph: HashMap<usize, graph::Account> = HashMap::new();
    let mut gmail: HashMap<usize, Arc<gmail::Account>> = HashMap::new();
    let mut out = Vec::with_capacity(config.mailboxes.len());
    for m in &config.mailboxes {
        let acct = &config.accounts[m.account];
        let user = acct.user.clone().unwrap_or_default();
        let source = tokens.get(m.account).cloned().ok_or_else(|| {
            CloudError::new(&m.name, ErrorKind::Bug, "no token source for the account")
        })?;
        let key = format!(
            "{}:{}/{}",
            match m.kind {
                CloudKind::Office365 => "office365",
                CloudKind::Gmail => "gmail",
            },
            user,
            m.name
        );
        let cloud: Arc<dyn CloudMailbox> = match m.kind {
            CloudKind::Office365 => {
                let account = match graph.get(&m.account) {
                    Some(a) => a.clone(),
                    None => {
                        let a = graph::Account::with_throttle(
                            &user,
                            source,
                            endpoints.clone(),
                            graph::ThrottleConfig::default().scaled(quota_scale),
                        )?;
                        graph.insert(m.account, a.clone());
                        a
                    }
                };
                Arc::new(graph::Mailbox::new(account, &m.name, &key))
            }
            CloudKind::Gmail => {
                let account = match gmail.get(&m.account) {
                    Some(a) => a.clone(),
                    None => {
                        let a = gmail::Account::new(
                            &user,
                            endpoints.clone(),
                            source,
                            gmail::Options {
                                limits: gmail::Limits::default().scaled(quota_scale),
                                ..gmail::Options::default()
                            },
                        )?;
                        gmail.insert(m.account, a.clone());
                        a
                    }
                };
                Arc::new(gmail::Mailbox::new(account, &m.name, &key))
            }
        };
        out.push(Folder {
            cloud,
            key,
            delete_action: m.delete_action,
        });
    }
    Ok(out)
}
