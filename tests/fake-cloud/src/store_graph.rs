//! Office365 mailbox model: nested folders with well-known names, messages stored
//! once with their MIME, flags and MAPI properties, REST ids that change on move next
//! to immutable ids that do not, and a change log that Graph delta reads.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use base64::Engine;
use serde_json::{Value, json};

use crate::mime;
use crate::state::Rng;

/// Well-known folders created for every mailbox: (name, display name, parent, hidden).
pub const WELL_KNOWN: &[(&str, &str, &str, bool)] = &[
    ("inbox", "Inbox", "msgfolderroot", false),
    ("drafts", "Drafts", "msgfolderroot", false),
    ("sentitems", "Sent Items", "msgfolderroot", false),
    ("deleteditems", "Deleted Items", "msgfolderroot", false),
    ("junkemail", "Junk Email", "msgfolderroot", false),
    ("archive", "Archive", "msgfolderroot", false),
    ("outbox", "Outbox", "msgfolderroot", false),
    (
        "conversationhistory",
        "Conversation History",
        "msgfolderroot",
        false,
    ),
    ("syncissues", "Sync Issues", "msgfolderroot", true),
    ("conflicts", "Conflicts", "syncissues", true),
    ("localfailures", "Local Failures", "syncissues", true),
    ("serverfailures", "Server Failures", "syncissues", true),
    ("recoverableitemsdeletions", "Deletions", "", true),
];

/// One mail folder.
#[derive(Clone, Debug)]
pub struct Folder {
    /// Opaque id (never changes).
    pub id: String,
    /// Display name.
    pub display_name: String,
    /// Parent id ("" for the root and for folders outside the IPM subtree).
    pub parent_id: String,
    /// Well-known name, if any.
    pub well_known: Option<String>,
    /// Hidden from listings without `includeHiddenFolders=true`.
    pub hidden: bool,
}

/// One message.
#[derive(Clone, Debug)]
pub struct Message {
    /// Immutable id (stable across moves).
    pub imm_id: String,
    /// REST id (new on every move).
    pub rest_id: String,
    /// Folder holding it.
    pub folder_id: String,
    /// Content with CRLF line ends.
    pub mime: Arc<Vec<u8>>,
    /// Receive time, epoch ms.
    pub received_ms: i64,
    /// Creation time, epoch ms.
    pub created_ms: i64,
    /// Last modification, epoch ms.
    pub modified_ms: i64,
    /// `isRead`.
    pub is_read: bool,
    /// `isDraft`.
    pub is_draft: bool,
    /// `flag` (followupFlag JSON).
    pub flag: Value,
    /// `categories`.
    pub categories: Vec<String>,
    /// `importance`.
    pub importance: String,
    /// `inferenceClassification`.
    pub inference: String,
    /// Single-value extended properties by canonical id (`Integer 0x1080`).
    pub props: BTreeMap<String, String>,
    /// Bumped on every change (etag / changeKey).
    pub version: u64,
    /// Change sequence at which it entered its current folder.
    pub entered_seq: u64,
}

/// One entry of the change log.
#[derive(Clone, Debug)]
pub struct Change {
    /// Sequence number (strictly increasing).
    pub seq: u64,
    /// Folder affected.
    pub folder_id: String,
    /// Immutable id of the message.
    pub imm_id: String,
    /// REST id the message had in that folder.
    pub rest_id: String,
    /// True when the message left the folder (move out or delete).
    pub removed: bool,
}

/// Server-side state behind a `$skiptoken` or `$deltatoken`.
#[derive(Clone, Debug)]
pub struct DeltaState {
    /// Folder tracked.
    pub folder_id: String,
    /// Entries of the round in progress (skiptoken) or None (deltatoken).
    pub entries: Option<Arc<Vec<DeltaEntry>>>,
    /// Offset into `entries`.
    pub offset: usize,
    /// Sequence the round covers up to (a deltatoken resumes after it).
    pub seq: u64,
    /// Options of the first request, replayed.
    pub select: Option<String>,
    /// `$expand` of the first request.
    pub expand: Option<String>,
    /// `changeType` of the first request.
    pub change_type: Option<String>,
    /// `$top` of the first request.
    pub top: Option<usize>,
}

/// One row of a delta round.
#[derive(Clone, Debug)]
pub enum DeltaEntry {
    /// A message present in the folder (created or updated).
    Item(String),
    /// A message that left the folder: (immutable id, REST id it had there).
    Removed(String, String),
}

/// How expired delta tokens are answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpiryMode {
    /// `410 Gone` + `SyncStateNotFound` + `Location` (Outlook, observed).
    Gone410,
    /// `400` + `syncStateNotFound` (the directory-style form).
    Bad400,
}

/// A user's Office365 mailbox.
pub struct GraphMailbox {
    /// Lower-cased user.
    pub user: String,
    /// Folders by id.
    pub folders: BTreeMap<String, Folder>,
    /// Messages by immutable id.
    pub messages: HashMap<String, Message>,
    /// REST id or immutable id -> immutable id.
    pub by_id: HashMap<String, String>,
    /// Change log (bounded by the delta token cache in practice).
    pub changes: Vec<Change>,
    /// Last change sequence.
    pub seq: u64,
    /// Delta tokens by value.
    pub delta_tokens: HashMap<String, DeltaState>,
    /// Insertion order of delta tokens, for eviction.
    pub delta_order: VecDeque<String>,
    /// How an unknown/expired token is answered.
    pub expiry_mode: ExpiryMode,
    /// Counter for the display of user-created folders.
    pub user_id_guid: String,
}

fn b64(rng: &mut Rng, n: usize) -> String {
    base64::engine::general_purpose::URL_SAFE.encode(rng.bytes(n))
}

impl GraphMailbox {
    /// A new mailbox with the well-known folders.
    pub fn new(user: &str, rng: &mut Rng) -> GraphMailbox {
        let mut mb = GraphMailbox {
            user: user.to_string(),
            folders: BTreeMap::new(),
            messages: HashMap::new(),
            by_id: HashMap::new(),
            changes: Vec::new(),
            seq: 0,
            delta_tokens: HashMap::new(),
            delta_order: VecDeque::new(),
            expiry_mode: ExpiryMode::Gone410,
            user_id_guid: crate::state::guid(),
        };
        let root = format!("AQMkA{}", b64(rng, 33));
        mb.folders.insert(
            root.clone(),
            Folder {
                id: root.clone(),
                display_name: "Top of Information Store".into(),
                parent_id: String::new(),
                well_known: Some("msgfolderroot".into()),
                hidden: false,
            },
        );
        for (wk, name, parent, hidden) in WELL_KNOWN {
            let parent_id = if parent.is_empty() {
                String::new()
            } else {
                mb.resolve_folder(parent).unwrap_or_default()
            };
            let id = format!("AQMkA{}", b64(rng, 45));
            mb.folders.insert(
                id.clone(),
                Folder {
                    id,
                    display_name: name.to_string(),
                    parent_id,
                    well_known: Some(wk.to_string()),
                    hidden: *hidden,
                },
            );
        }
        mb
    }

    /// Folder id for an id or a well-known name (names are case-insensitive, ids are not).
    pub fn resolve_folder(&self, key: &str) -> Option<String> {
        if self.folders.contains_key(key) {
            return Some(key.to_string());
        }
        self.folders
            .values()
            .find(|f| {
                f.well_known
                    .as_deref()
                    .is_some_and(|w| w.eq_ignore_ascii_case(key))
            })
            .map(|f| f.id.clone())
    }

    /// Immutable id of a message given either id form.
    pub fn resolve_msg(&self, id: &str) -> Option<String> {
        self.by_id.get(id).cloned()
    }

    /// Creates a child folder; None when the name is taken under that parent.
    pub fn create_folder(&mut self, rng: &mut Rng, parent: &str, name: &str) -> Option<String> {
        if self
            .folders
            .values()
            .any(|f| f.parent_id == parent && f.display_name.eq_ignore_ascii_case(name))
        {
            return None;
        }
        let id = format!("AAMkA{}", b64(rng, 45));
        self.folders.insert(
            id.clone(),
            Folder {
                id: id.clone(),
                display_name: name.to_string(),
                parent_id: parent.to_string(),
                well_known: None,
                hidden: false,
            },
        );
        Some(id)
    }

    /// Folder by `/`-separated display-name path from the root ("Inbox/Lists").
    pub fn folder_by_path(&self, path: &str) -> Option<String> {
        let mut cur = self.resolve_folder("msgfolderroot")?;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            cur = self
                .folders
                .values()
                .find(|f| f.parent_id == cur && f.display_name.eq_ignore_ascii_case(part))
                .map(|f| f.id.clone())
                .or_else(|| {
                    self.resolve_folder(part)
                        .filter(|id| self.folders.get(id).is_some_and(|f| f.parent_id == cur))
                })?;
        }
        Some(cur)
    }

    fn log(&mut self, folder_id: &str, imm_id: &str, rest_id: &str, removed: bool) -> u64 {
        self.seq += 1;
        self.changes.push(Change {
            seq: self.seq,
            folder_id: folder_id.to_string(),
            imm_id: imm_id.to_string(),
            rest_id: rest_id.to_string(),
            removed,
        });
        self.seq
    }

    /// Stores a new message in a folder and logs it; returns the immutable id.
    pub fn insert(
        &mut self,
        rng: &mut Rng,
        folder_id: &str,
        raw: &[u8],
        received_ms: i64,
        now_ms: i64,
    ) -> String {
        let imm_id = format!("AAkALg{}", b64(rng, 66));
        let rest_id = format!("AAMkA{}", b64(rng, 105));
        let seq = self.log(folder_id, &imm_id, &rest_id, false);
        self.by_id.insert(imm_id.clone(), imm_id.clone());
        self.by_id.insert(rest_id.clone(), imm_id.clone());
        self.messages.insert(
            imm_id.clone(),
            Message {
                imm_id: imm_id.clone(),
                rest_id,
                folder_id: folder_id.to_string(),
                mime: Arc::new(mime::to_crlf(raw)),
                received_ms: received_ms / 1000 * 1000,
                created_ms: now_ms,
                modified_ms: now_ms,
                is_read: false,
                is_draft: false,
                flag: json!({"flagStatus": "notFlagged"}),
                categories: Vec::new(),
                importance: "normal".into(),
                inference: "focused".into(),
                props: BTreeMap::new(),
                version: 1,
                entered_seq: seq,
            },
        );
        imm_id
    }

    /// Records an in-place change (flags, properties) of a message.
    pub fn touch(&mut self, imm_id: &str, now_ms: i64) {
        let Some(m) = self.messages.get_mut(imm_id) else {
            return;
        };
        m.version += 1;
        m.modified_ms = now_ms;
        let (f, r) = (m.folder_id.clone(), m.rest_id.clone());
        self.log(&f, imm_id, &r, false);
    }

    /// Moves a message (new REST id, old one stops resolving).
    pub fn move_to(&mut self, rng: &mut Rng, imm_id: &str, dest: &str, now_ms: i64) {
        let Some(m) = self.messages.get(imm_id) else {
            return;
        };
        let (old_folder, old_rest) = (m.folder_id.clone(), m.rest_id.clone());
        let new_rest = format!("AAMkA{}", b64(rng, 105));
        self.log(&old_folder, imm_id, &old_rest, true);
        let seq = self.log(dest, imm_id, &new_rest, false);
        self.by_id.remove(&old_rest);
        self.by_id.insert(new_rest.clone(), imm_id.to_string());
        if let Some(m) = self.messages.get_mut(imm_id) {
            m.rest_id = new_rest;
            m.folder_id = dest.to_string();
            m.version += 1;
            m.modified_ms = now_ms;
            m.entered_seq = seq;
        }
    }

    /// Copies a message into a folder (a new item with new ids).
    pub fn copy_to(
        &mut self,
        rng: &mut Rng,
        imm_id: &str,
        dest: &str,
        now_ms: i64,
    ) -> Option<String> {
        let src = self.messages.get(imm_id)?.clone();
        let id = self.insert(rng, dest, &src.mime, src.received_ms, now_ms);
        if let Some(m) = self.messages.get_mut(&id) {
            m.is_read = src.is_read;
            m.flag = src.flag;
            m.props = src.props;
            m.categories = src.categories;
        }
        Some(id)
    }

    /// Removes a message for good.
    pub fn remove(&mut self, imm_id: &str) {
        if let Some(m) = self.messages.remove(imm_id) {
            self.log(&m.folder_id, imm_id, &m.rest_id, true);
            self.by_id.remove(&m.rest_id);
            self.by_id.remove(&m.imm_id);
        }
    }

    /// Stores a delta token, evicting the oldest beyond `cap`.
    pub fn put_token(&mut self, rng: &mut Rng, st: DeltaState, cap: usize) -> String {
        let tok = format!(
            "{}{}",
            if st.entries.is_some() { "Gw" } else { "Mw" },
            rng.token(48)
        );
        self.delta_tokens.insert(tok.clone(), st);
        self.delta_order.push_back(tok.clone());
        while self.delta_order.len() > cap.max(1) {
            if let Some(old) = self.delta_order.pop_front() {
                self.delta_tokens.remove(&old);
            }
        }
        tok
    }

    /// Forgets every delta and skip token (a forced resync).
    pub fn expire_tokens(&mut self) {
        self.delta_tokens.clear();
        self.delta_order.clear();
    }

    /// Messages currently in a folder.
    pub fn in_folder(&self, folder_id: &str) -> Vec<&Message> {
        self.messages
            .values()
            .filter(|m| m.folder_id == folder_id)
            .collect()
    }

    /// Deletes a folder as Outlook does: a folder outside Deleted Items
    /// moves into it with everything in it (its id stays valid); one already
    /// inside Deleted Items goes for good, with its sub-folders and
    /// messages. Well-known folders cannot be deleted.
    pub fn delete_folder(&mut self, id: &str) -> Result<(), &'static str> {
        if self.folders.get(id).is_some_and(|f| f.well_known.is_some()) {
            return Err("distinguished");
        }
        let trash = self.resolve_folder("deleteditems").unwrap_or_default();
        let mut up = self.folders.get(id).map(|f| f.parent_id.clone());
        let mut in_trash = false;
        while let Some(p) = up.filter(|p| !p.is_empty()) {
            if p == trash {
                in_trash = true;
                break;
            }
            up = self.folders.get(&p).map(|f| f.parent_id.clone());
        }
        if !in_trash {
            if let Some(f) = self.folders.get_mut(id) {
                f.parent_id = trash;
            }
            return Ok(());
        }
        let mut doomed = vec![id.to_string()];
        let mut i = 0;
        while i < doomed.len() {
            let kids: Vec<String> = self
                .children(&doomed[i])
                .iter()
                .map(|f| f.id.clone())
                .collect();
            doomed.extend(kids);
            i += 1;
        }
        let msgs: Vec<String> = self
            .messages
            .values()
            .filter(|m| doomed.contains(&m.folder_id))
            .map(|m| m.imm_id.clone())
            .collect();
        for m in msgs {
            self.remove(&m);
        }
        for f in doomed {
            self.folders.remove(&f);
        }
        Ok(())
    }

    /// Child folder ids of a folder.
    pub fn children(&self, folder_id: &str) -> Vec<&Folder> {
        self.folders
            .values()
            .filter(|f| f.parent_id == folder_id)
            .collect()
    }
}

/// Canonical extended-property id: type name as Graph spells it, tag in lower-case hex.
pub fn canon_prop(id: &str) -> Option<String> {
    let (ty, tag) = id.trim().split_once(' ')?;
    const TYPES: &[&str] = &[
        "Integer",
        "String",
        "SystemTime",
        "Boolean",
        "Long",
        "Short",
        "Double",
        "Binary",
        "Float",
        "Currency",
        "CLSID",
        "ApplicationTime",
        "Object",
    ];
    let ty = TYPES.iter().find(|t| t.eq_ignore_ascii_case(ty))?;
    let tag = tag.trim();
    let Some(hex) = tag.strip_prefix("0x").or_else(|| tag.strip_prefix("0X")) else {
        // Named properties (`String {guid} Name X`) keep their spelling.
        return tag.starts_with('{').then(|| format!("{ty} {tag}"));
    };
    let v = u32::from_str_radix(hex, 16).ok()?;
    Some(format!("{ty} 0x{v:x}"))
}
