//! One Gmail label as a [`CloudMailbox`]. The first listing is full
//! (`messages.list` plus batched `messages.get?format=metadata` for what is
//! not known yet); later listings check the profile's `historyId` (one
//! request when nothing changed) and apply `history.list` records, falling
//! back to a full listing when the history id is too old. The listing and
//! the history id it is current as of are persisted through the cursor, so
//! a restart resumes with one request.
//!
//! Flags: read is the absence of `UNREAD`, flagged is `STARRED`; replied
//! cannot be stored. A message is in the mailbox while it carries the label
//! and is not in Trash or Spam (unless the label is `TRASH` or `SPAM`), the
//! same rule `messages.list` applies.

use arcstr::ArcStr;
use futures_util::future::BoxFuture;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};

use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use futures_util::stream::{self, StreamExt};
use serde::{Deserialize, Serialize};

use super::client::{Account, ApiError, parse_history_id};
use super::throttle::Method;
use super::wire::{self, HistoryId};
use crate::cloud::cursor::{Changed, record};
use crate::cloud::transport::path_segment;
use crate::cloud::{
    CloudEntry, CloudError, CloudMailbox, CursorDelta, ErrorKind, FlagChange, Listed, Sink,
};
use crate::config::headers::HeaderBlock;
use crate::lf::crlf_to_lf;
use crate::types::DeleteAction;
use crate::types::{Flags, StorageKind};

/// Most ids in one `batchModify` call.
const MODIFY_CHUNK: usize = 1000;
/// Page size of `messages.list` and `history.list` (their maximum).
const PAGE: &str = "500";
/// What a metadata request asks for: labels, `internalDate`, Message-ID.
const METADATA_QUERY: &str = "format=metadata&metadataHeaders=message-id";
/// Version of the persisted cursor.
const CURSOR_VERSION: u32 = 1;

bitflags::bitflags! {
    /// The labels of a message that matter for one synced label (stored in
    /// cursors as their `u8` bits).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    struct Bits: u8 {
        /// The message carries the synced label.
        const IN = 1;
        /// The message carries `UNREAD`.
        const UNREAD = 2;
        /// The message carries `STARRED`.
        const STARRED = 4;
        /// The message carries `TRASH`.
        const TRASH = 8;
        /// The message carries `SPAM`.
        const SPAM = 16;
    }
}

/// The labels that matter for one synced label, as bits.
struct LabelBits<'a> {
    label: &'a str,
}

impl LabelBits<'_> {
    fn mask(&self, l: &str) -> Bits {
        let mut m = if l == self.label {
            Bits::IN
        } else {
            Bits::empty()
        };
        m |= match l {
            "UNREAD" => Bits::UNREAD,
            "STARRED" => Bits::STARRED,
            "TRASH" => Bits::TRASH,
            "SPAM" => Bits::SPAM,
            _ => Bits::empty(),
        };
        m
    }

    fn of(&self, labels: &[String]) -> Bits {
        labels.iter().fold(Bits::empty(), |b, l| b | self.mask(l))
    }

    /// True when a message with these bits is listed in the mailbox.
    fn contains(&self, bits: Bits) -> bool {
        bits.contains(Bits::IN)
            && (!bits.contains(Bits::TRASH) || self.label == "TRASH")
            && (!bits.contains(Bits::SPAM) || self.label == "SPAM")
    }
}

fn flags_of(bits: Bits) -> Flags {
    let mut f = Flags::NONE;
    if !bits.contains(Bits::UNREAD) {
        f |= Flags::READ;
    }
    if bits.contains(Bits::STARRED) {
        f |= Flags::FLAGGED;
    }
    f
}

/// What history records say about each message they name: its label bits
/// after them, or `None` when a metadata request must tell.
struct Touched<'a> {
    /// The listing the records apply to.
    base: &'a Listing,
    lb: &'a LabelBits<'a>,
    bits: HashMap<String, Option<Bits>>,
}

impl Touched<'_> {
    /// The bits of `id` as the records so far leave them.
    fn current(&self, id: &str) -> Option<Bits> {
        match self.bits.get(id) {
            Some(s) => *s,
            None => self.base.messages.get(id).map(|k| k.bits),
        }
    }

    /// Apply one history record.
    fn record(&mut self, rec: wire::History) {
        let lb = self.lb;
        for m in rec.messages_added {
            let bits = m.message.label_ids.as_deref().map(|l| lb.of(l));
            self.bits.insert(m.message.id, bits);
        }
        for c in rec.labels_added {
            let bits = match c.message.label_ids.as_deref() {
                Some(full) => Some(lb.of(full)),
                None => self.current(&c.message.id).map(|b| b | lb.of(&c.label_ids)),
            };
            self.bits.insert(c.message.id, bits);
        }
        for c in rec.labels_removed {
            let bits = match c.message.label_ids.as_deref() {
                Some(full) => Some(lb.of(full)),
                None => self
                    .current(&c.message.id)
                    .map(|b| b & !lb.of(&c.label_ids)),
            };
            self.bits.insert(c.message.id, bits);
        }
        for m in rec.messages_deleted {
            self.bits.insert(m.message.id, Some(Bits::empty()));
        }
    }
}

/// What is remembered of a listed message.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Known {
    bits: Bits,
    received_ms: Option<i64>,
    email_id: Option<String>,
}

/// The committed listing.
#[derive(Clone, Debug, Default)]
struct Listing {
    label_id: Option<String>,
    /// Set when `messages` is complete as of this history id.
    history_id: Option<HistoryId>,
    messages: BTreeMap<String, Known>,
}

/// Persisted form of a [`Listing`]: the head, with `messages` stored as
/// records (only a cursor stored whole holds them here).
#[derive(Serialize, Deserialize)]
struct Cursor {
    v: u32,
    user: String,
    label_name: String,
    label_id: String,
    history_id: String,
    /// `(id, label bits, internalDate ms, Message-ID)`.
    messages: Vec<(String, u8, Option<i64>, Option<String>)>,
}

/// A Gmail label mirrored as a cloud mailbox.
pub struct Mailbox {
    account: Arc<Account>,
    label_name: String,
    name: String,
    state: Mutex<Listing>,
    /// One listing at a time per mailbox.
    list_lock: tokio::sync::Mutex<()>,
    /// The last shared profile answer this mailbox used.
    profile_seen: AtomicU64,
    /// Date and Message-ID of messages whose metadata arrived during a
    /// listing that has not been committed yet (it failed, or is running):
    /// a listing that fails after 90% of a large mailbox does not pay for
    /// that 90% again.
    meta: Mutex<HashMap<String, Meta>>,
    /// What the next cursor delta holds (locked after `state`).
    saving: Mutex<Saving>,
}

/// The listed messages changed since the last cursor delta, and the
/// history id it handed out.
#[derive(Default)]
struct Saving {
    changed: Changed,
    handed: Option<HistoryId>,
}

/// What never changes about a message: `internalDate` and Message-ID.
type Meta = (Option<i64>, Option<String>);

impl Mailbox {
    /// The label named `label_name` (a user label's name, or a system label
    /// such as `INBOX`) of `account`. The label is looked up on first use (a
    /// restored cursor already knows it); a missing label makes that call
    /// fail with [`ErrorKind::NotFound`].
    pub fn new(account: Arc<Account>, label_name: &str, name_for_logs: &str) -> Mailbox {
        Mailbox {
            account,
            label_name: label_name.to_string(),
            name: name_for_logs.to_string(),
            state: Mutex::new(Listing::default()),
            list_lock: tokio::sync::Mutex::new(()),
            profile_seen: AtomicU64::new(0),
            meta: Mutex::new(HashMap::new()),
            saving: Mutex::new(Saving::default()),
        }
    }

    /// The label's name as configured.
    pub fn label_name(&self) -> &str {
        &self.label_name
    }

    /// Look the label up by name (`labels.list`) and return its id.
    pub async fn resolve_label(&self) -> Result<String, CloudError> {
        self.lookup_label().await.map_err(|e| self.err(e))
    }

    fn lock(&self) -> MutexGuard<'_, Listing> {
        crate::lock::lock(&self.state)
    }

    fn saving(&self) -> MutexGuard<'_, Saving> {
        crate::lock::lock(&self.saving)
    }

    fn meta(&self) -> MutexGuard<'_, HashMap<String, Meta>> {
        crate::lock::lock(&self.meta)
    }

    fn err(&self, e: ApiError) -> CloudError {
        e.into_cloud(&self.name)
    }

    async fn lookup_label(&self) -> Result<String, ApiError> {
        let labels: wire::LabelList = self.account.get(Method::LabelsList, "/labels", &[]).await?;
        let by_name = labels.labels.iter().find(|l| l.name == self.label_name);
        // System labels have id == name; accept an id as well.
        let by_id = || labels.labels.iter().find(|l| l.id == self.label_name);
        match by_name.or_else(by_id) {
            Some(l) => Ok(l.id.clone()),
            None => Err(ApiError {
                kind: ErrorKind::NotFound,
                status: None,
                reason: String::new(),
                retry_after: None,
                message: format!(
                    "Gmail label {:?} not found for {}",
                    self.label_name,
                    self.account.user()
                ),
            }),
        }
    }

    /// The label id, looking it up if no listing has yet.
    async fn label_id(&self) -> Result<String, ApiError> {
        if let Some(l) = self.lock().label_id.clone() {
            return Ok(l);
        }
        let l = self.lookup_label().await?;
        self.lock().label_id.get_or_insert(l.clone());
        Ok(l)
    }

    /// The label's entries, or `None` when the history shows no change
    /// since the last listing.
    async fn list_inner(&self) -> Result<Option<Vec<CloudEntry>>, ApiError> {
        let _one = self.list_lock.lock().await;
        let base = self.lock().clone();
        let next = match (&base.label_id, base.history_id) {
            (Some(label), Some(since)) => {
                if self.account.history_id(&self.profile_seen).await? == since {
                    return Ok(None);
                }
                match self.incremental(&base, label, since).await {
                    Ok(l) => l,
                    // 404: the history id is too old; 400: it (or the label
                    // id) is no longer valid. Both mean: list everything.
                    Err(e) if e.kind == ErrorKind::NotFound || e.status == Some(400) => {
                        tracing::info!(
                            mailbox = %self.name,
                            "history from {since} unavailable ({}); listing everything",
                            e.message
                        );
                        self.full(&base).await?
                    }
                    Err(e) => return Err(e),
                }
            }
            _ => self.full(&base).await?,
        };
        let mut next = next;
        let mut st = self.lock();
        // Downloads finished while this listing ran filled in the date and
        // Message-ID of messages it lists without them: keep those.
        for (id, k) in next.messages.iter_mut() {
            if k.received_ms.is_none()
                && k.email_id.is_none()
                && let Some(cur) = st.messages.get(id)
            {
                k.received_ms = cur.received_ms;
                k.email_id.clone_from(&cur.email_id);
            }
        }
        let mut saving = self.saving();
        let mut changed = touch_differences(&st.messages, &next.messages, &mut saving.changed);
        if st.history_id.is_none() {
            // The database may hold records of a cursor not loaded.
            saving.changed.all();
            changed = true;
        }
        drop(saving);
        let out = entries(&next.messages);
        *st = next;
        drop(st);
        self.meta().clear();
        Ok(changed.then_some(out))
    }

    /// Every id carrying all of `labels` (`messages.list`, all pages).
    async fn list_ids(&self, labels: &[&str]) -> Result<Vec<String>, ApiError> {
        let mut ids = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut q: Vec<(&str, String)> =
                labels.iter().map(|l| ("labelIds", l.to_string())).collect();
            q.push(("maxResults", PAGE.to_string()));
            if let Some(t) = &token {
                q.push(("pageToken", t.clone()));
            }
            let page: wire::MessageList = self
                .account
                .get(Method::MessagesList, "/messages", &q)
                .await?;
            ids.extend(page.messages.into_iter().map(|m| m.id));
            match page.next_page_token {
                Some(t) if Some(&t) != token.as_ref() => token = Some(t),
                Some(_) => {
                    return Err(ApiError {
                        kind: ErrorKind::Retry,
                        status: None,
                        reason: String::new(),
                        retry_after: None,
                        message: "messages.list repeated its page token".into(),
                    });
                }
                None => return Ok(ids),
            }
        }
    }

    /// A full listing: ids of the label and flags from two more listings
    /// (label+UNREAD, label+STARRED), 15 units per 500 messages. The date
    /// and Message-ID come from the last listing when it knew the message;
    /// for a new one they come with its content (`format=raw` carries
    /// `internalDate`, the content the Message-ID), so new mail costs the 5
    /// units of its download and no metadata call. Current as of the
    /// profile's history id read first.
    async fn full(&self, base: &Listing) -> Result<Listing, ApiError> {
        let label = self.lookup_label().await?;
        let lb = LabelBits { label: &label };
        let since = self.account.history_id(&self.profile_seen).await?;
        let ids: BTreeSet<String> = self.list_ids(&[&label]).await?.into_iter().collect();
        // Date and Message-ID from the last listing, or from an earlier
        // attempt at this one.
        let mut meta: HashMap<String, Meta> = {
            let cache = self.meta();
            ids.iter()
                .filter_map(|id| {
                    let m = match base.messages.get(id) {
                        Some(k) => (k.received_ms, k.email_id.clone()),
                        None => cache.get(id)?.clone(),
                    };
                    Some((id.clone(), m))
                })
                .collect()
        };
        let known = meta.len();
        let unread: BTreeSet<String> = self
            .list_ids(&[&label, "UNREAD"])
            .await?
            .into_iter()
            .collect();
        let starred: BTreeSet<String> = self
            .list_ids(&[&label, "STARRED"])
            .await?
            .into_iter()
            .collect();
        let mut messages = BTreeMap::new();
        for id in ids {
            let (received_ms, email_id) = meta.remove(&id).unwrap_or_default();
            let mut bits = lb.mask(&label);
            if unread.contains(&id) {
                bits |= Bits::UNREAD;
            }
            if starred.contains(&id) {
                bits |= Bits::STARRED;
            }
            let k = Known {
                bits,
                received_ms,
                email_id,
            };
            messages.insert(id, k);
        }
        tracing::info!(
            mailbox = %self.name,
            listed = messages.len(),
            new = messages.len() - known,
            "gmail: full listing"
        );
        Ok(Listing {
            label_id: Some(label),
            history_id: Some(since),
            messages,
        })
    }

    /// Apply history records since `since` to `base`.
    async fn incremental(
        &self,
        base: &Listing,
        label: &str,
        since: HistoryId,
    ) -> Result<Listing, ApiError> {
        let lb = LabelBits { label };
        let mut touched = Touched {
            base,
            lb: &lb,
            bits: HashMap::new(),
        };
        let (now, records) = self.history(label, since, &mut touched).await?;
        let (mut messages, to_fetch) = self.apply(base, &lb, touched.bits);
        tracing::debug!(
            mailbox = %self.name,
            %since,
            %now,
            records,
            fetch = to_fetch.len(),
            "gmail: history applied"
        );
        self.fill_metadata(&lb, &mut messages, to_fetch).await?;
        Ok(Listing {
            label_id: Some(label.to_string()),
            history_id: Some(now.max(since)),
            messages,
        })
    }

    /// Read the history of `label` since `since`, page by page, into
    /// `touched`; the history id it is complete as of, and the records read.
    async fn history(
        &self,
        label: &str,
        since: HistoryId,
        touched: &mut Touched<'_>,
    ) -> Result<(HistoryId, usize), ApiError> {
        let mut token: Option<String> = None;
        let mut records = 0usize;
        loop {
            let mut q = vec![
                ("startHistoryId", since.to_string()),
                ("labelId", label.to_string()),
                ("maxResults", PAGE.to_string()),
            ];
            if let Some(t) = &token {
                q.push(("pageToken", t.clone()));
            }
            let page: wire::HistoryList = self
                .account
                .get(Method::HistoryList, "/history", &q)
                .await?;
            records += page.history.len();
            for rec in page.history {
                touched.record(rec);
            }
            match page.next_page_token {
                Some(t) if Some(&t) != token.as_ref() => token = Some(t),
                Some(_) => {
                    return Err(ApiError {
                        kind: ErrorKind::Retry,
                        status: None,
                        reason: String::new(),
                        retry_after: None,
                        message: "history.list repeated its page token".into(),
                    });
                }
                None => return Ok((parse_history_id(&page.history_id)?, records)),
            }
        }
    }

    /// `base` with the `touched` label bits applied; the ids whose labels
    /// only a metadata request can tell come back apart, sorted.
    fn apply(
        &self,
        base: &Listing,
        lb: &LabelBits<'_>,
        touched: HashMap<String, Option<Bits>>,
    ) -> (BTreeMap<String, Known>, Vec<String>) {
        let mut messages = base.messages.clone();
        let mut to_fetch = Vec::new();
        for (id, bits) in touched {
            match bits {
                Some(b) if lb.contains(b) => match messages.get_mut(&id) {
                    Some(k) => k.bits = b,
                    None => {
                        // A new message with known labels: its date and
                        // Message-ID come with its content.
                        let (received_ms, email_id) =
                            self.meta().get(&id).cloned().unwrap_or_default();
                        let k = Known {
                            bits: b,
                            received_ms,
                            email_id,
                        };
                        messages.insert(id, k);
                    }
                },
                Some(_) => {
                    messages.remove(&id);
                }
                None => to_fetch.push(id),
            }
        }
        to_fetch.sort();
        (messages, to_fetch)
    }

    /// Ask for the metadata of `ids` (batched) and put the ones in the
    /// mailbox into `messages`. A message that no longer exists is left
    /// out; any other failure fails the listing (nothing may be skipped).
    async fn fill_metadata(
        &self,
        lb: &LabelBits<'_>,
        messages: &mut BTreeMap<String, Known>,
        ids: Vec<String>,
    ) -> Result<(), ApiError> {
        if ids.is_empty() {
            return Ok(());
        }
        let size = self.account.options().batch_size.clamp(1, 100);
        let parallel = self.account.options().limits.max_concurrency.max(1);
        let chunks: Vec<Vec<String>> = ids.chunks(size).map(<[String]>::to_vec).collect();
        let mut answers = stream::iter(chunks)
            .map(|chunk| async move {
                let r = self
                    .account
                    .batch_get_messages(&chunk, METADATA_QUERY)
                    .await;
                (chunk, r)
            })
            .buffer_unordered(parallel);
        let mut failed = None;
        while let Some((chunk, results)) = answers.next().await {
            for (id, r) in chunk.into_iter().zip(results) {
                match r {
                    Ok(m) => {
                        let bits = lb.of(&m.label_ids);
                        let received_ms = m.internal_date.as_deref().and_then(|d| d.parse().ok());
                        let email_id = message_id(&m);
                        self.meta()
                            .insert(id.clone(), (received_ms, email_id.clone()));
                        if lb.contains(bits) {
                            let k = Known {
                                bits,
                                received_ms,
                                email_id,
                            };
                            messages.insert(id, k);
                        } else {
                            messages.remove(&id);
                        }
                    }
                    Err(e) if e.kind == ErrorKind::NotFound => {
                        messages.remove(&id);
                    }
                    Err(e) => {
                        failed.get_or_insert(e);
                    }
                }
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Add and remove labels on `ids`: `batchModify` in chunks; when a
    /// chunk is refused as a whole (an id that no longer exists), each
    /// message is changed on its own so the others still go through.
    async fn modify(
        &self,
        ids: &[String],
        add: &[String],
        remove: &[String],
    ) -> Vec<Result<(), ApiError>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(MODIFY_CHUNK) {
            let body = wire::BatchModify {
                ids: chunk,
                add_label_ids: add,
                remove_label_ids: remove,
            };
            let r = self
                .account
                .post(Method::BatchModify, "/messages/batchModify", &body, true)
                .await;
            match r {
                Ok(()) => out.extend(chunk.iter().map(|_| Ok(()))),
                Err(e)
                    if chunk.len() > 1
                        && (e.kind == ErrorKind::NotFound || e.status == Some(400)) =>
                {
                    tracing::warn!(
                        mailbox = %self.name,
                        "batchModify refused ({}); changing {} messages one by one",
                        e.message,
                        chunk.len()
                    );
                    let mut general: Option<ApiError> = None;
                    for id in chunk {
                        if let Some(g) = &general {
                            out.push(Err(g.clone()));
                            continue;
                        }
                        let body = wire::Modify {
                            add_label_ids: add,
                            remove_label_ids: remove,
                        };
                        let path = format!("/messages/{}/modify", path_segment(id));
                        let r = self
                            .account
                            .post(Method::MessagesModify, &path, &body, false)
                            .await;
                        // The same refusal for a single message: the request
                        // itself is wrong, not one id; stop trying.
                        if let Err(e) = &r
                            && e.kind != ErrorKind::NotFound
                        {
                            general = Some(e.clone());
                        }
                        out.push(r);
                    }
                }
                Err(e) => out.extend(chunk.iter().map(|_| Err(e.clone()))),
            }
        }
        out
    }
}

/// Label edits for a flag change (replied has no Gmail label).
fn label_edits(set: Flags, clear: Flags) -> (Vec<String>, Vec<String>) {
    let mut add = Vec::new();
    let mut remove = Vec::new();
    if set.contains(Flags::READ) {
        remove.push("UNREAD".to_string());
    } else if clear.contains(Flags::READ) {
        add.push("UNREAD".to_string());
    }
    if set.contains(Flags::FLAGGED) {
        add.push("STARRED".to_string());
    } else if clear.contains(Flags::FLAGGED) {
        remove.push("STARRED".to_string());
    }
    (add, remove)
}

fn message_id(m: &wire::Message) -> Option<String> {
    m.payload
        .as_ref()?
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("message-id"))
        .map(|h| h.value.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// One listed message as a cursor record.
fn cursor_record<'a>(id: &'a str, k: &'a Known) -> (&'a str, u8, Option<i64>, &'a Option<String>) {
    (id, k.bits.bits(), k.received_ms, &k.email_id)
}

/// Records in `changed` every id whose entry differs between `old` and
/// `new`; true when any does.
fn touch_differences(
    old: &BTreeMap<String, Known>,
    new: &BTreeMap<String, Known>,
    changed: &mut Changed,
) -> bool {
    let mut any = false;
    let differs = old
        .iter()
        .filter(|(id, k)| new.get(*id) != Some(k))
        .chain(new.iter().filter(|(id, _)| !old.contains_key(*id)));
    for (id, _) in differs {
        changed.touch(id);
        any = true;
    }
    any
}

fn entries(messages: &BTreeMap<String, Known>) -> Vec<CloudEntry> {
    messages.iter().map(|(id, k)| entry(id, k)).collect()
}

fn entry(id: &str, k: &Known) -> CloudEntry {
    CloudEntry {
        id: id.into(),
        email_id: k.email_id.as_deref().map(ArcStr::from),
        flags: flags_of(k.bits),
        received_time: k.received_ms.map(|ms| ms.div_euclid(1000)),
        size: None,
    }
}

/// Decode Gmail's base64url `raw` (padded or not) and turn CRLF into LF.
fn decode_raw(raw: &str) -> Result<Vec<u8>, String> {
    const URL: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let clean: Vec<u8> = raw.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let bytes = URL
        .decode(&clean)
        .map_err(|e| format!("raw content is not base64url: {e}"))?;
    if bytes.is_empty() {
        return Err("raw content is empty".into());
    }
    Ok(crlf_to_lf(&bytes))
}

impl CloudMailbox for Mailbox {
    fn name(&self) -> &str {
        &self.name
    }

    fn storage_kind(&self) -> StorageKind {
        StorageKind::Gmail
    }

    fn supported_flags(&self) -> Flags {
        Flags::READ | Flags::FLAGGED
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<CloudEntry>, CloudError>> {
        Box::pin(async move {
            match self.list_inner().await.map_err(|e| self.err(e))? {
                Some(entries) => Ok(entries),
                None => Ok(entries(&self.lock().messages)),
            }
        })
    }

    fn list_changes(&self) -> BoxFuture<'_, Result<Listed, CloudError>> {
        Box::pin(async move {
            // Flag changes and deletions done here update the listing in
            // place, so a difference against it would not show them: a
            // changed label is answered in full.
            Ok(match self.list_inner().await.map_err(|e| self.err(e))? {
                Some(entries) => Listed::Full(entries),
                None => Listed::Changes {
                    upsert: Vec::new(),
                    gone: Vec::new(),
                },
            })
        })
    }

    fn fetch<'a>(
        &'a self,
        id: &'a str,
        out: &'a mut Sink,
    ) -> BoxFuture<'a, Result<(), CloudError>> {
        Box::pin(async move {
            let path = format!("/messages/{}", path_segment(id));
            let q = [("format", "raw".to_string())];
            let m: wire::Message = self
                .account
                .get(Method::MessagesGet, &path, &q)
                .await
                .map_err(|e| self.err(e))?;
            let bad = |msg: String| CloudError::new(&self.name, ErrorKind::Retry, msg);
            if m.id != id {
                return Err(bad(format!("asked for message {id}, got {}", m.id)));
            }
            let raw = m
                .raw
                .as_deref()
                .ok_or_else(|| bad(format!("message {id}: answer has no raw content")))?;
            let content = decode_raw(raw).map_err(|e| bad(format!("message {id}: {e}")))?;
            out.write_all(&content)
                .map_err(|e| bad(format!("writing message {id}: {e}")))?;
            // The answer also tells what a metadata call would have.
            let received_ms = m.internal_date.as_deref().and_then(|d| d.parse().ok());
            let email_id = HeaderBlock::parse(&content).message_id();
            let mut st = self.lock();
            if let Some(k) = st.messages.get_mut(id)
                && k.received_ms.is_none()
                && k.email_id.is_none()
            {
                k.received_ms = received_ms;
                k.email_id.clone_from(&email_id);
                self.saving().changed.touch(id);
            }
            drop(st);
            self.meta().insert(id.to_string(), (received_ms, email_id));
            Ok(())
        })
    }

    fn fetched_entry(&self, id: &str) -> Option<CloudEntry> {
        let st = self.lock();
        let k = st.messages.get(id)?;
        Some(entry(id, k))
    }

    fn set_flags(&self, changes: Vec<FlagChange>) -> BoxFuture<'_, Vec<Result<(), CloudError>>> {
        Box::pin(async move {
            let mut results: Vec<Option<Result<(), CloudError>>> = vec![None; changes.len()];
            let mut groups: BTreeMap<(Vec<String>, Vec<String>), Vec<usize>> = BTreeMap::new();
            for (i, c) in changes.iter().enumerate() {
                let edits = label_edits(c.set, c.clear);
                if edits.0.is_empty() && edits.1.is_empty() {
                    results[i] = Some(Ok(()));
                } else {
                    groups.entry(edits).or_default().push(i);
                }
            }
            for ((add, remove), idx) in groups {
                let ids: Vec<String> = idx.iter().map(|&i| changes[i].id.clone()).collect();
                let done = self.modify(&ids, &add, &remove).await;
                let mut st = self.lock();
                let label = st.label_id.clone().unwrap_or_default();
                let lb = LabelBits { label: &label };
                for (&i, r) in idx.iter().zip(done) {
                    if r.is_ok()
                        && let Some(k) = st.messages.get_mut(&changes[i].id)
                    {
                        k.bits = (k.bits | lb.of(&add)) & !lb.of(&remove);
                        self.saving().changed.touch(&changes[i].id);
                    }
                    results[i] = Some(r.map_err(|e| self.err(e)));
                }
            }
            results.into_iter().map(|r| r.unwrap_or(Ok(()))).collect()
        })
    }

    fn cursor_records_field(&self) -> Option<&'static str> {
        Some("messages")
    }

    fn cursor_delta(&self) -> Option<CursorDelta> {
        let st = self.lock();
        let (Some(label_id), Some(history_id)) = (st.label_id.clone(), st.history_id) else {
            return None;
        };
        let mut saving = self.saving();
        if saving.changed.is_empty() && saving.handed == Some(history_id) {
            return None;
        }
        let head = serde_json::to_value(Cursor {
            v: CURSOR_VERSION,
            user: self.account.user().to_string(),
            label_name: self.label_name.clone(),
            label_id,
            history_id: history_id.to_string(),
            messages: Vec::new(),
        })
        .ok()?;
        saving.handed = Some(history_id);
        Some(saving.changed.take(
            head,
            |id| {
                st.messages
                    .get(id)
                    .and_then(|k| record(&cursor_record(id, k)))
            },
            || {
                st.messages
                    .iter()
                    .filter_map(|(id, k)| Some((id.clone(), record(&cursor_record(id, k))?)))
                    .collect()
            },
        ))
    }

    fn cursor_unsaved(&self) {
        let mut saving = self.saving();
        saving.changed.all();
        saving.handed = None;
    }

    fn load_cursor(&self, head: serde_json::Value, records: Vec<String>) {
        let mut c: Cursor = match serde_json::from_value(head) {
            Ok(c) => c,
            Err(e) => {
                tracing::info!(mailbox = %self.name, "ignoring saved cursor: {e}");
                return;
            }
        };
        if c.v != CURSOR_VERSION
            || c.label_name != self.label_name
            || !c.user.eq_ignore_ascii_case(self.account.user())
        {
            tracing::info!(mailbox = %self.name, "ignoring saved cursor of another label or version");
            return;
        }
        let Some(history_id) = HistoryId::parse(&c.history_id) else {
            return;
        };
        for text in &records {
            match serde_json::from_str(text) {
                Ok(m) => c.messages.push(m),
                Err(e) => {
                    // A listing with a hole would read as messages taken
                    // out of the label: list it in full.
                    tracing::warn!(mailbox = %self.name, "ignoring saved cursor with an unreadable record: {e}");
                    return;
                }
            }
        }
        let mut st = self.lock();
        if st.history_id.is_some() {
            return;
        }
        *st = Listing {
            label_id: Some(c.label_id),
            history_id: Some(history_id),
            messages: c
                .messages
                .into_iter()
                .map(|(id, bits, received_ms, email_id)| {
                    (
                        id,
                        Known {
                            bits: Bits::from_bits_truncate(bits),
                            received_ms,
                            email_id,
                        },
                    )
                })
                .collect(),
        };
        *self.saving() = Saving {
            changed: Changed::default(),
            handed: Some(history_id),
        };
    }

    fn delete(
        &self,
        ids: Vec<String>,
        action: DeleteAction,
    ) -> BoxFuture<'_, Vec<Result<(), CloudError>>> {
        Box::pin(async move {
            let label = match self.label_id().await {
                Ok(l) => l,
                Err(e) => {
                    let e = self.err(e);
                    return ids.iter().map(|_| Err(e.clone())).collect();
                }
            };
            let (add, remove) = match action {
                DeleteAction::Archive => (Vec::new(), vec![label]),
                DeleteAction::Delete => (vec!["TRASH".to_string()], Vec::new()),
            };
            let done = self.modify(&ids, &add, &remove).await;
            let mut st = self.lock();
            ids.iter()
                .zip(done)
                .map(|(id, r)| match r {
                    // Gone already is as good as deleted.
                    Ok(()) => {
                        st.messages.remove(id);
                        self.saving().changed.touch(id);
                        Ok(())
                    }
                    Err(e) if e.kind == ErrorKind::NotFound => {
                        st.messages.remove(id);
                        self.saving().changed.touch(id);
                        Ok(())
                    }
                    Err(e) => Err(self.err(e)),
                })
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn membership_follows_messages_list() {
        let inbox = LabelBits { label: "INBOX" };
        let l = |v: &[&str]| inbox.of(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert!(inbox.contains(l(&["INBOX", "UNREAD"])));
        assert!(!inbox.contains(l(&["INBOX", "TRASH"])));
        assert!(!inbox.contains(l(&["INBOX", "SPAM"])));
        assert!(!inbox.contains(l(&["Label_1"])));
        let trash = LabelBits { label: "TRASH" };
        assert!(trash.contains(trash.of(&["TRASH".to_string()])));
        assert_eq!(flags_of(l(&["INBOX"])), Flags::READ);
        assert_eq!(flags_of(l(&["INBOX", "UNREAD", "STARRED"])), Flags::FLAGGED);
    }

    #[test]
    fn flag_changes_become_label_edits() {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            label_edits(Flags::READ | Flags::FLAGGED, Flags::NONE),
            (s(&["STARRED"]), s(&["UNREAD"]))
        );
        assert_eq!(
            label_edits(Flags::NONE, Flags::READ | Flags::FLAGGED),
            (s(&["UNREAD"]), s(&["STARRED"]))
        );
        assert_eq!(label_edits(Flags::REPLIED, Flags::NONE), (s(&[]), s(&[])));
    }

    #[test]
    fn raw_decodes_padded_or_not_with_lf() {
        let text = b"Subject: a\r\n\r\nbody\r\nline\r\n";
        let padded = base64::engine::general_purpose::URL_SAFE.encode(text);
        let bare = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text);
        assert_ne!(padded, bare);
        for s in [padded, bare] {
            assert_eq!(decode_raw(&s).unwrap(), b"Subject: a\n\nbody\nline\n");
        }
        assert!(decode_raw("not*base64").is_err());
        assert!(decode_raw("").is_err());
        assert_eq!(crlf_to_lf(b"a\rb\r\n"), b"a\rb\n");
    }
}
