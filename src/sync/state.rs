//! The persisted last-synced state: the planner's [`LastState`] written to
//! `state/sync.json` under the state directory, with maildirs and cloud
//! folders named by stable keys (path, `kind:user/name`) instead of config
//! indexes, so editing the config (reordering, adding, removing) maps the
//! old agreement onto the new indexes and drops what no longer applies.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::plan::{LastEntry, LastState};
use crate::store::StoreError;
use crate::store::statefile::{StateFile, to_body};

/// On-disk form.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Persisted {
    /// Key of each maildir index used in `state`.
    maildirs: Vec<String>,
    /// Key of each cloud folder index used in `state`.
    mailboxes: Vec<String>,
    /// The agreement, by the indexes above.
    state: LastState,
    /// Opaque per-folder cursors of the backends (delta links, history ids).
    #[serde(default)]
    cursors: BTreeMap<String, serde_json::Value>,
}

/// The sync state file and the keys that give its indexes meaning.
pub struct SyncState {
    file: StateFile,
    maildirs: Vec<String>,
    mailboxes: Vec<String>,
}

impl SyncState {
    /// The state file in `state_dir` for the given maildir and folder keys
    /// (in config order).
    pub fn new(state_dir: &Path, maildirs: Vec<String>, mailboxes: Vec<String>) -> SyncState {
        SyncState {
            file: StateFile::new(state_dir, "sync.json", "sync"),
            maildirs,
            mailboxes,
        }
    }

    /// Load the last agreement, re-indexed to the current config, and the
    /// backends' cursors by folder key. Blocking.
    pub fn load(&mut self) -> (LastState, BTreeMap<String, serde_json::Value>) {
        let p: Persisted = self.file.load();
        let md_map = remap(&p.maildirs, &self.maildirs);
        let mb_map = remap(&p.mailboxes, &self.mailboxes);
        let mut entries = BTreeMap::new();
        for (hash, e) in p.state.entries {
            let Some(&maildir) = md_map.get(&e.maildir) else {
                continue;
            };
            let cloud = e
                .cloud
                .into_iter()
                .filter_map(|mut c| {
                    mb_map.get(&c.mailbox).map(|&i| {
                        c.mailbox = i;
                        c
                    })
                })
                .collect();
            entries.insert(
                hash,
                LastEntry {
                    maildir,
                    cloud,
                    ..e
                },
            );
        }
        let mut counts = vec![0; self.maildirs.len()];
        for (old, n) in p.state.maildir_counts.iter().enumerate() {
            if let Some(&new) = md_map.get(&old) {
                counts[new] = *n;
            }
        }
        let cursors = p
            .cursors
            .into_iter()
            .filter(|(k, _)| self.mailboxes.contains(k))
            .collect();
        (
            LastState {
                entries,
                maildir_counts: counts,
            },
            cursors,
        )
    }

    /// Persist `state` and the cursors atomically. Blocking.
    pub fn save(
        &mut self,
        state: &LastState,
        cursors: &BTreeMap<String, serde_json::Value>,
    ) -> Result<(), StoreError> {
        let p = Persisted {
            maildirs: self.maildirs.clone(),
            mailboxes: self.mailboxes.clone(),
            state: state.clone(),
            cursors: cursors.clone(),
        };
        let body = to_body(self.file.path(), &p)?;
        self.file.save_body(&body)
    }
}

/// Old index → new index for keys present in both lists.
fn remap(old: &[String], new: &[String]) -> HashMap<usize, usize> {
    let pos: HashMap<&str, usize> = new
        .iter()
        .enumerate()
        .map(|(i, k)| (k.as_str(), i))
        .collect();
    old.iter()
        .enumerate()
        .filter_map(|(i, k)| pos.get(k.as_str()).map(|&j| (i, j)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::plan::CloudBase;
    use crate::types::{ContentHash, Flags};

    #[test]
    fn reindexes_after_config_edit() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = SyncState::new(
            dir.path(),
            vec!["/m/a".into(), "/m/b".into()],
            vec!["gmail:u/INBOX".into(), "office365:u/inbox".into()],
        );
        let mut last = LastState::default();
        let entry = |maildir, mailbox: usize| LastEntry {
            flags: Flags::READ,
            maildir,
            local: Flags::READ,
            cloud: vec![CloudBase {
                mailbox,
                id: "x".into(),
                flags: Flags::READ,
            }],
        };
        last.entries.insert(ContentHash([1; 32]), entry(0, 0));
        last.entries.insert(ContentHash([2; 32]), entry(1, 1));
        last.maildir_counts = vec![1, 1];
        let mut cursors = BTreeMap::new();
        cursors.insert("gmail:u/INBOX".to_string(), serde_json::json!("h1"));
        st.save(&last, &cursors).unwrap();

        // Maildir b first now, maildir a gone; the Gmail folder removed.
        let mut st2 = SyncState::new(
            dir.path(),
            vec!["/m/b".into(), "/m/c".into()],
            vec!["office365:u/inbox".into()],
        );
        let (got, cursors) = st2.load();
        assert_eq!(got.entries.len(), 1);
        let e = &got.entries[&ContentHash([2; 32])];
        assert_eq!(e.maildir, 0);
        assert_eq!(e.cloud[0].mailbox, 0);
        assert_eq!(got.maildir_counts, vec![1, 0]);
        assert!(cursors.is_empty());
    }
}
