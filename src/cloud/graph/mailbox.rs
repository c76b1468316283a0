//! [`Mailbox`]: one Office365 folder as a [`CloudMailbox`]. The folder
//! is found by display name on first use; listings come from the folder's
//! delta feed applied to the listing kept in memory (and in the cursor, so a
//! restart resumes with one request); downloads stream `$value` with CRLF
//! turned into LF and are checked for completeness; flag changes and
//! deletions go through `$batch`.

use arcstr::ArcStr;
use futures_util::future::BoxFuture;
use std::collections::BTreeMap;
use std::sync::Mutex;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::batch::{self, Op};
use super::client::{Account, Call, Failure, Opened, Retrier, error_in, is_json};
use super::flags::{self, EXPAND, RepliedState, SELECT};
use super::wire::{DeltaLink, DeltaMessage, MailFolder, MoveRequest, Page, parse_utc};
use crate::cloud::cursor::{Changed, record};
use crate::cloud::transport::{path_segment, query_value};
use crate::cloud::{
    CloudEntry, CloudError, CloudMailbox, CursorDelta, ErrorKind, FlagChange, Listed, Sink,
};
use crate::lf::Dos2Unix;
use crate::lock::lock;
use crate::types::DeleteAction;
use crate::types::{Flags, StorageKind};

/// Delta page size asked for with `Prefer: odata.maxpagesize` (the items
/// are small with our `$select`; 1000 is the largest `$top` Graph takes).
const PAGE_SIZE: u32 = 1000;
/// Cursor format version.
const CURSOR_VERSION: u32 = 1;
/// How long an idle folder's cursor is reused. Every delta round returns a
/// new deltaLink, but a cursor that changes on every poll makes the engine
/// rewrite the state file (the listing included) every poll; while nothing
/// changed, the previous cursor (an older link with the same listing) resumes
/// just as well. Past this age it is refreshed, so a restart does not start
/// from a link the service may have forgotten (which would only cost a full
/// listing).
const CURSOR_REUSE: std::time::Duration = std::time::Duration::from_secs(3600);
/// Full rounds restarted in one `list` call because the service dropped
/// our sync state, before giving up until the next call.
const MAX_RESYNCS: u32 = 2;

/// What we keep per listed message.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    email_id: Option<ArcStr>,
    flags: Flags,
    received: Option<i64>,
    /// The replied state comes (also) from PidTagMessageStatus, which Graph
    /// cannot clear.
    status_answered: bool,
}

impl Entry {
    fn listed(&self, id: &ArcStr) -> CloudEntry {
        CloudEntry {
            id: id.clone(),
            email_id: self.email_id.clone(),
            flags: self.flags,
            received_time: self.received,
            size: None,
        }
    }
}

/// One delta item, reduced to what we keep.
enum Change {
    /// Present in the folder, with what the answer said (missing fields keep
    /// their old values when the message is already listed).
    Upsert {
        id: String,
        email_id: Option<String>,
        is_read: Option<bool>,
        flagged: Option<bool>,
        replied: RepliedState,
        received: Option<i64>,
    },
    /// Left the folder.
    Remove(String),
}

impl Change {
    fn from_wire(m: DeltaMessage) -> Change {
        if m.removed.is_some() {
            return Change::Remove(m.id);
        }
        let replied =
            flags::replied_state(m.single_value_extended_properties.as_deref().unwrap_or(&[]));
        Change::Upsert {
            email_id: m.internet_message_id.filter(|s| !s.trim().is_empty()),
            is_read: m.is_read,
            flagged: m.flag.as_ref().map(|f| flags::is_flagged(Some(f))),
            replied,
            received: m.received_date_time.as_deref().and_then(parse_utc),
            id: m.id,
        }
    }

    fn id(&self) -> &str {
        match self {
            Change::Remove(id) | Change::Upsert { id, .. } => id,
        }
    }

    fn apply(self, entries: &mut BTreeMap<ArcStr, Entry>) {
        match self {
            Change::Remove(id) => {
                entries.remove(id.as_str());
            }
            Change::Upsert {
                id,
                email_id,
                is_read,
                flagged,
                replied,
                received,
            } => {
                let old = entries.get(id.as_str());
                let was = |bit: Flags| old.is_some_and(|e| e.flags.contains(bit));
                let mut f = Flags::NONE;
                f = f.with(Flags::READ, is_read.unwrap_or_else(|| was(Flags::READ)));
                f = f.with(
                    Flags::FLAGGED,
                    flagged.unwrap_or_else(|| was(Flags::FLAGGED)),
                );
                // Graph leaves out the properties a message does not have, so
                // an absent list means "not replied".
                f = f.with(Flags::REPLIED, replied.replied);
                let e = Entry {
                    email_id: email_id
                        .map(ArcStr::from)
                        .or_else(|| old.and_then(|e| e.email_id.clone())),
                    flags: f,
                    received: received.or_else(|| old.and_then(|e| e.received)),
                    status_answered: replied.status_answered,
                };
                // An id already listed keeps its allocation (shared with
                // the engine's index).
                match entries.get_mut(id.as_str()) {
                    Some(old) => *old = e,
                    None => {
                        entries.insert(ArcStr::from(id), e);
                    }
                }
            }
        }
    }
}

/// The listing as of `delta_link`.
#[derive(Default)]
struct Committed {
    entries: BTreeMap<ArcStr, Entry>,
    delta_link: Option<DeltaLink>,
    /// Entries changed since the last cursor delta.
    changed: Changed,
    /// The delta link of the last cursor handed out, and when.
    handed: Option<(DeltaLink, std::time::Instant)>,
}

/// A delta round interrupted by an error, resumed by the next `list`.
struct Pending {
    /// The page to fetch next.
    next: String,
    /// The round lists the whole folder (its result replaces the listing).
    full: bool,
    /// Items of the pages fetched so far.
    changes: Vec<Change>,
}

/// One listed message in a cursor, as a compact array:
/// `[id, Message-ID, flags, received, status_answered]`.
type CursorEntry = (String, Option<String>, u8, Option<i64>, bool);

/// A cursor's head (its `entries` are stored as records; only a cursor
/// stored whole holds them here).
#[derive(Serialize, Deserialize)]
struct Cursor {
    v: u32,
    /// The version root the links belong to.
    base: String,
    /// The folder path it was made for.
    path: String,
    folder_id: String,
    delta_link: DeltaLink,
    entries: Vec<CursorEntry>,
}

/// Well-known folder names Graph accepts in place of a folder id, in any
/// mailbox language.
const WELL_KNOWN: &[&str] = &[
    "archive",
    "clutter",
    "conflicts",
    "conversationhistory",
    "deleteditems",
    "drafts",
    "inbox",
    "junkemail",
    "localfailures",
    "msgfolderroot",
    "outbox",
    "recoverableitemsdeletions",
    "scheduled",
    "searchfolders",
    "sentitems",
    "serverfailures",
    "syncissues",
];

/// One Office365 folder, listed through delta.
pub struct Mailbox {
    account: Account,
    path: String,
    name: String,
    folder_id: Mutex<Option<String>>,
    committed: Mutex<Committed>,
    /// Serialises `list`; holds an interrupted round.
    listing: tokio::sync::Mutex<Option<Pending>>,
}

/// True when Graph says our delta state is gone and a full round is needed.
fn needs_resync(status: u16, code: &str) -> bool {
    status == 410
        || ["syncStateNotFound", "resyncRequired", "syncStateInvalid"]
            .iter()
            .any(|c| c.eq_ignore_ascii_case(code))
}

impl Mailbox {
    /// The folder at `folder_path` (display names, nested as `"A/B/C"`) of
    /// `account`; `name` is used in logs and errors. Nothing is sent until
    /// the first `list`.
    pub fn new(account: Account, folder_path: &str, name: &str) -> Mailbox {
        Mailbox {
            account,
            path: folder_path.to_string(),
            name: name.to_string(),
            folder_id: Mutex::new(None),
            committed: Mutex::new(Committed::default()),
            listing: tokio::sync::Mutex::new(None),
        }
    }

    /// The folder path this mailbox mirrors.
    pub fn path(&self) -> &str {
        &self.path
    }

    fn err(&self, kind: ErrorKind, msg: impl Into<String>) -> CloudError {
        CloudError::new(&self.name, kind, msg)
    }

    /// The folder id, looked up on first use and cached.
    async fn folder_id(&self) -> Result<String, CloudError> {
        if let Some(id) = lock(&self.folder_id).clone() {
            return Ok(id);
        }
        let parts: Vec<&str> = self.path.split('/').filter(|p| !p.is_empty()).collect();
        if parts.is_empty() {
            return Err(self.err(ErrorKind::Config, "empty Office365 folder name"));
        }
        let mut parent = self.well_known(parts[0]).await?;
        let first = usize::from(parent.is_some());
        for (depth, part) in parts.iter().enumerate().skip(first) {
            let so_far = parts[..=depth].join("/");
            let found = self
                .children_named(parent.as_deref(), part, &so_far)
                .await?;
            parent = Some(self.pick(found, part, &so_far)?);
        }
        let id = parent.unwrap_or_default();
        tracing::debug!(mailbox = %self.name, "folder {:?} resolved", self.path);
        *lock(&self.folder_id) = Some(id.clone());
        Ok(id)
    }

    /// The id of the well-known folder `top` names, if it names one. A
    /// well-known name ("inbox", "archive", ...) works whatever the
    /// mailbox's language calls the folder, so it is tried first for the
    /// top level; the Python program's configs say `Office365("inbox", ..)`.
    async fn well_known(&self, top: &str) -> Result<Option<String>, CloudError> {
        let top = top.to_ascii_lowercase();
        if !WELL_KNOWN.contains(&top.as_str()) {
            return Ok(None);
        }
        let url = self.account.url(&format!("/me/mailFolders/{top}"));
        let mut r = Retrier::new(&self.account, &self.name);
        match self
            .account
            .json::<MailFolder>(&Call::get(&url), &mut r)
            .await
        {
            Ok(f) => Ok(Some(f.id)),
            Err(f) => {
                let e = f.into_cloud(&self.name);
                if e.kind == ErrorKind::NotFound {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// The folders named `part` (ignoring case) under `parent` (the top
    /// level when `None`); `so_far` is the path up to `part`, for errors.
    async fn children_named(
        &self,
        parent: Option<&str>,
        part: &str,
        so_far: &str,
    ) -> Result<Vec<MailFolder>, CloudError> {
        let base = match parent {
            None => self.account.url("/me/mailFolders"),
            Some(p) => self
                .account
                .url(&format!("/me/mailFolders/{}/childFolders", path_segment(p))),
        };
        let filter = format!("displayName eq '{}'", part.replace('\'', "''"));
        let found = self
            .all_pages(format!("{base}?$filter={}", query_value(&filter)))
            .await
            .map_err(|mut e| {
                e.message = format!("looking up folder {so_far:?}: {}", e.message);
                e
            })?;
        if !found.is_empty() {
            return Ok(found);
        }
        // The filter may compare exactly where the user's config differs in
        // case: list the children and compare ignoring case.
        let all = self.all_pages(base).await?;
        Ok(all
            .into_iter()
            .filter(|f| f.display_name.eq_ignore_ascii_case(part))
            .collect())
    }

    /// Every folder of a collection, following `@odata.nextLink` from `url`.
    async fn all_pages(&self, mut url: String) -> Result<Vec<MailFolder>, CloudError> {
        let mut found = Vec::new();
        loop {
            let mut r = Retrier::new(&self.account, &self.name);
            let page: Page<MailFolder> = self
                .account
                .json(&Call::get(&url), &mut r)
                .await
                .map_err(|f| f.into_cloud(&self.name))?;
            found.extend(page.value);
            match page.next_link {
                Some(n) => url = n,
                None => return Ok(found),
            }
        }
    }

    /// The one folder of `found` that `part` means: an exact match wins
    /// over ones the service matched ignoring case; none or several is an
    /// error naming `so_far`.
    fn pick(&self, found: Vec<MailFolder>, part: &str, so_far: &str) -> Result<String, CloudError> {
        let (exact, other): (Vec<MailFolder>, Vec<MailFolder>) =
            found.into_iter().partition(|f| f.display_name == part);
        let mut pick = if exact.is_empty() { other } else { exact };
        match pick.len() {
            1 => Ok(pick.remove(0).id),
            0 => Err(self.err(
                ErrorKind::NotFound,
                format!(
                    "Office365 folder {so_far:?} not found (looking for {:?})",
                    self.path
                ),
            )),
            many => Err(self.err(
                ErrorKind::Config,
                format!(
                    "Office365 folder name {so_far:?} is ambiguous: {many} folders match (looking for {:?})",
                    self.path
                ),
            )),
        }
    }

    fn initial_delta_url(&self, folder_id: &str) -> String {
        format!(
            "{}?$select={}&$expand={}",
            self.account.url(&format!(
                "/me/mailFolders/{}/messages/delta",
                path_segment(folder_id)
            )),
            query_value(SELECT),
            query_value(EXPAND)
        )
    }

    fn snapshot(&self) -> Vec<CloudEntry> {
        let c = lock(&self.committed);
        c.entries.iter().map(|(id, e)| e.listed(id)).collect()
    }

    /// One delta round: the folder's entries after a full round, else what
    /// the round changed.
    async fn list_impl(&self) -> Result<Listed, CloudError> {
        let mut pending = self.listing.lock().await;
        let mut folder = self.folder_id().await?;
        let mut resyncs = 0;
        let mut relooked = false;
        loop {
            let (mut url, full, mut changes) = match pending.take() {
                Some(p) => (p.next, p.full, p.changes),
                None => match lock(&self.committed).delta_link.clone() {
                    Some(link) => (link.0, false, Vec::new()),
                    None => (self.initial_delta_url(&folder), true, Vec::new()),
                },
            };
            let outcome = self.delta_pages(&mut url, &mut changes).await;
            match outcome {
                Ok((delta, pages)) => return Ok(self.commit_round(full, changes, delta, pages)),
                Err(Failure::Api { status, code, .. }) if needs_resync(status, &code) => {
                    resyncs += 1;
                    tracing::warn!(
                        mailbox = %self.name,
                        "delta state dropped by the service (HTTP {status} {code}): listing the folder again"
                    );
                    lock(&self.committed).delta_link = None;
                    if resyncs > MAX_RESYNCS {
                        return Err(self.err(
                            ErrorKind::Retry,
                            format!("delta state keeps expiring (HTTP {status} {code})"),
                        ));
                    }
                }
                Err(Failure::Api {
                    status: 404,
                    code,
                    message,
                }) if !relooked => {
                    // The folder itself went away (deleted, or moved out of
                    // its path): look its path up again now. Gone for good
                    // is `NotFound`; a folder there again is listed whole.
                    relooked = true;
                    tracing::info!(
                        mailbox = %self.name,
                        "folder answered HTTP 404 {code} ({message}): looking up {:?} again",
                        self.path
                    );
                    *lock(&self.folder_id) = None;
                    lock(&self.committed).delta_link = None;
                    folder = self.folder_id().await?;
                }
                Err(f) => {
                    // Keep what this round fetched; the next call resumes at
                    // the page that failed.
                    *pending = Some(Pending {
                        next: url,
                        full,
                        changes,
                    });
                    return Err(f.into_cloud(&self.name));
                }
            }
        }
    }

    /// Fetch delta pages from `url` on, adding their items to `changes`,
    /// until the round's delta link (returned with the pages fetched). On
    /// failure `url` is the page that failed, to resume from.
    async fn delta_pages(
        &self,
        url: &mut String,
        changes: &mut Vec<Change>,
    ) -> Result<(DeltaLink, u32), Failure> {
        let prefer = format!("odata.maxpagesize={PAGE_SIZE}");
        let mut pages = 0u32;
        loop {
            let call = Call {
                prefer: Some(&prefer),
                ..Call::get(url)
            };
            let mut r = Retrier::new(&self.account, &self.name);
            let page = self
                .account
                .json::<Page<DeltaMessage>>(&call, &mut r)
                .await?;
            pages += 1;
            changes.extend(page.value.into_iter().map(Change::from_wire));
            match (page.next_link, page.delta_link) {
                (Some(next), _) => *url = next,
                (None, Some(delta)) => return Ok((delta, pages)),
                (None, None) => {
                    return Err(Failure::Cloud(
                        self.err(ErrorKind::Retry, "delta page without nextLink or deltaLink"),
                    ));
                }
            }
        }
    }

    /// Apply a finished delta round to the committed listing: the whole
    /// folder (`full`) or what changed.
    fn commit_round(
        &self,
        full: bool,
        changes: Vec<Change>,
        delta: DeltaLink,
        pages: u32,
    ) -> Listed {
        let n = changes.len();
        let mut c = lock(&self.committed);
        if full {
            c.entries.clear();
            c.changed.all();
        }
        let mut touched = std::collections::BTreeSet::new();
        for ch in changes {
            c.changed.touch(ch.id());
            if !full {
                touched.insert(ch.id().to_string());
            }
            ch.apply(&mut c.entries);
        }
        c.delta_link = Some(delta);
        tracing::debug!(
            mailbox = %self.name,
            full,
            pages,
            changes = n,
            listed = c.entries.len(),
            "delta round done"
        );
        if full {
            drop(c);
            return Listed::Full(self.snapshot());
        }
        let (mut upsert, mut gone) = (Vec::new(), Vec::new());
        for id in touched {
            match c.entries.get_key_value(id.as_str()) {
                Some((key, e)) => upsert.push(e.listed(key)),
                None => gone.push(id),
            }
        }
        Listed::Changes { upsert, gone }
    }

    async fn fetch_impl(&self, id: &str, out: &mut Sink) -> Result<(), CloudError> {
        let url = self
            .account
            .url(&format!("/me/messages/{}/$value", path_segment(id)));
        let call = Call::get(&url);
        let mut r = Retrier::new(&self.account, &self.name);
        loop {
            let Opened { resp, permit } = self
                .account
                .open(&call, &mut r)
                .await
                .map_err(|f| f.into_cloud(&self.name))?;
            if is_json(resp.headers()) {
                // Not MIME: Graph's occasional HTTP 200 with an error body.
                let body = resp.bytes().await.unwrap_or_default();
                drop(permit);
                let code = serde_json::from_slice::<Value>(&body)
                    .ok()
                    .as_ref()
                    .and_then(error_in)
                    .map(|(c, _)| c)
                    .unwrap_or_else(|| "no error code".into());
                r.transient(format!("$value answered JSON ({code})"))
                    .await?;
                continue;
            }
            let expected = resp
                .headers()
                .get(reqwest::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            let mut conv = Dos2Unix::default();
            let mut got: u64 = 0;
            let mut stream = resp.bytes_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| {
                    self.err(
                        ErrorKind::Retry,
                        format!("download of {id} broke off after {got} bytes: {e}"),
                    )
                })?;
                got += chunk.len() as u64;
                conv.write(&chunk, out)
                    .map_err(|e| self.err(ErrorKind::Retry, format!("writing {id}: {e}")))?;
            }
            drop(permit);
            conv.finish(out)
                .map_err(|e| self.err(ErrorKind::Retry, format!("writing {id}: {e}")))?;
            if let Some(n) = expected
                && n != got
            {
                return Err(self.err(
                    ErrorKind::Retry,
                    format!("download of {id} incomplete: {got} of {n} bytes"),
                ));
            }
            if got == 0 {
                return Err(self.err(ErrorKind::Retry, format!("download of {id} was empty")));
            }
            out.flush()
                .map_err(|e| self.err(ErrorKind::Retry, format!("writing {id}: {e}")))?;
            return Ok(());
        }
    }

    async fn set_flags_impl(&self, changes: Vec<FlagChange>) -> Vec<Result<(), CloudError>> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let mut ops = Vec::new();
        let mut slot = Vec::with_capacity(changes.len());
        {
            let c = lock(&self.committed);
            for ch in &changes {
                let known = c.entries.get(ch.id.as_str());
                let read_now = known.is_some_and(|e| e.flags.contains(Flags::READ));
                if ch.clear.contains(Flags::REPLIED) && known.is_some_and(|e| e.status_answered) {
                    tracing::warn!(
                        mailbox = %self.name,
                        id = %ch.id,
                        "replied state also comes from PidTagMessageStatus, which Graph cannot clear; \
                         the message will still read as replied"
                    );
                }
                let patch = flags::patch_for(ch.set, ch.clear, read_now, now);
                if patch.is_empty() {
                    slot.push(None);
                    continue;
                }
                match serde_json::to_value(&patch) {
                    Ok(body) => {
                        slot.push(Some(ops.len()));
                        ops.push(Op {
                            method: "PATCH",
                            path: format!("/me/messages/{}", path_segment(&ch.id)),
                            body: Some(body),
                        });
                    }
                    Err(e) => {
                        tracing::error!("encoding a flag change: {e}");
                        slot.push(None);
                    }
                }
            }
        }
        let mut results = batch::run(&self.account, &self.name, &ops)
            .await
            .into_iter();
        let mut by_op: Vec<Option<Result<(), CloudError>>> = Vec::new();
        by_op.extend(results.by_ref().map(Some));
        slot.into_iter()
            .map(|s| match s {
                None => Ok(()),
                Some(i) => by_op
                    .get_mut(i)
                    .and_then(Option::take)
                    .unwrap_or_else(|| Err(self.err(ErrorKind::Retry, "no result"))),
            })
            .collect()
    }

    async fn delete_impl(
        &self,
        ids: Vec<String>,
        action: DeleteAction,
    ) -> Vec<Result<(), CloudError>> {
        let dest = match action {
            DeleteAction::Archive => "archive",
            DeleteAction::Delete => "deleteditems",
        };
        let body = match serde_json::to_value(MoveRequest {
            destination_id: dest,
        }) {
            Ok(b) => b,
            Err(e) => {
                let e = self.err(ErrorKind::Bug, format!("encoding a move: {e}"));
                return ids.iter().map(|_| Err(e.clone())).collect();
            }
        };
        let ops: Vec<Op> = ids
            .iter()
            .map(|id| Op {
                method: "POST",
                path: format!("/me/messages/{}/move", path_segment(id)),
                body: Some(body.clone()),
            })
            .collect();
        batch::run(&self.account, &self.name, &ops).await
    }

    fn cursor_delta(&self) -> Option<CursorDelta> {
        let folder_id = lock(&self.folder_id).clone()?;
        let mut c = lock(&self.committed);
        let delta_link = c.delta_link.clone()?;
        // A new delta link alone is written at most hourly: resuming from
        // an older one replays changes already applied, which is harmless.
        let head_due = c
            .handed
            .as_ref()
            .is_none_or(|(link, at)| *link != delta_link && at.elapsed() >= CURSOR_REUSE);
        if c.changed.is_empty() && !head_due {
            return None;
        }
        let head = serde_json::to_value(Cursor {
            v: CURSOR_VERSION,
            base: self.account.root(),
            path: self.path.clone(),
            folder_id,
            delta_link: delta_link.clone(),
            entries: Vec::new(),
        })
        .ok()?;
        c.handed = Some((delta_link, std::time::Instant::now()));
        let Committed {
            entries, changed, ..
        } = &mut *c;
        Some(changed.take(
            head,
            |id| entries.get(id).and_then(|e| record(&cursor_entry(id, e))),
            || {
                entries
                    .iter()
                    .filter_map(|(id, e)| Some((id.to_string(), record(&cursor_entry(id, e))?)))
                    .collect()
            },
        ))
    }

    fn restore(&self, head: Value, records: Vec<String>) {
        let mut cur: Cursor = match serde_json::from_value(head) {
            Ok(c) => c,
            Err(e) => {
                tracing::info!(mailbox = %self.name, "ignoring an unreadable cursor: {e}");
                return;
            }
        };
        if cur.v != CURSOR_VERSION || cur.base != self.account.root() || cur.path != self.path {
            tracing::info!(mailbox = %self.name, "ignoring a cursor made for another folder or endpoint");
            return;
        }
        for text in &records {
            match serde_json::from_str::<CursorEntry>(text) {
                Ok(e) => cur.entries.push(e),
                Err(e) => {
                    // A listing with a hole would read as messages
                    // deleted in the cloud: list the folder in full.
                    tracing::warn!(mailbox = %self.name, "ignoring a cursor with an unreadable record: {e}");
                    return;
                }
            }
        }
        let entries = cur
            .entries
            .into_iter()
            .map(|(id, email_id, f, received, status_answered)| {
                (
                    ArcStr::from(id),
                    Entry {
                        email_id: email_id.map(ArcStr::from),
                        flags: Flags(f) & (Flags::READ | Flags::FLAGGED | Flags::REPLIED),
                        received,
                        status_answered,
                    },
                )
            })
            .collect();
        *lock(&self.folder_id) = Some(cur.folder_id);
        *lock(&self.committed) = Committed {
            entries,
            delta_link: Some(cur.delta_link.clone()),
            changed: Changed::default(),
            handed: Some((cur.delta_link, std::time::Instant::now())),
        };
    }
}

/// One listed message as a cursor record.
fn cursor_entry<'a>(
    id: &'a str,
    e: &'a Entry,
) -> (&'a str, Option<&'a str>, u8, Option<i64>, bool) {
    (
        id,
        e.email_id.as_deref(),
        e.flags.0,
        e.received,
        e.status_answered,
    )
}

impl CloudMailbox for Mailbox {
    fn name(&self) -> &str {
        &self.name
    }

    fn storage_kind(&self) -> StorageKind {
        StorageKind::Office365
    }

    fn supported_flags(&self) -> Flags {
        Flags::REPLIED | Flags::READ | Flags::FLAGGED
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<CloudEntry>, CloudError>> {
        Box::pin(async move {
            Ok(match self.list_impl().await? {
                Listed::Full(entries) => entries,
                Listed::Changes { .. } => self.snapshot(),
            })
        })
    }

    fn list_changes(&self) -> BoxFuture<'_, Result<Listed, CloudError>> {
        Box::pin(self.list_impl())
    }

    fn fetch<'a>(
        &'a self,
        id: &'a str,
        out: &'a mut Sink,
    ) -> BoxFuture<'a, Result<(), CloudError>> {
        Box::pin(self.fetch_impl(id, out))
    }

    fn set_flags(&self, changes: Vec<FlagChange>) -> BoxFuture<'_, Vec<Result<(), CloudError>>> {
        Box::pin(self.set_flags_impl(changes))
    }

    fn cursor_records_field(&self) -> Option<&'static str> {
        Some("entries")
    }

    fn cursor_delta(&self) -> Option<CursorDelta> {
        Mailbox::cursor_delta(self)
    }

    fn cursor_unsaved(&self) {
        let mut c = lock(&self.committed);
        c.changed.all();
        c.handed = None;
    }

    fn load_cursor(&self, head: Value, records: Vec<String>) {
        self.restore(head, records)
    }

    fn delete(
        &self,
        ids: Vec<String>,
        action: DeleteAction,
    ) -> BoxFuture<'_, Vec<Result<(), CloudError>>> {
        Box::pin(self.delete_impl(ids, action))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resync_codes() {
        assert!(needs_resync(410, "SyncStateNotFound"));
        assert!(needs_resync(400, "syncStateNotFound"));
        assert!(needs_resync(400, "RESYNCREQUIRED"));
        assert!(!needs_resync(400, "BadRequest"));
    }

    #[test]
    fn partial_updates_keep_what_they_do_not_mention() {
        let mut m = BTreeMap::new();
        let up = |json: &str| Change::from_wire(serde_json::from_str(json).unwrap());
        up(r#"{"id":"a","isRead":true,"flag":{"flagStatus":"flagged"},
               "internetMessageId":"<x@y>","receivedDateTime":"2024-05-01T10:20:30Z"}"#)
        .apply(&mut m);
        up(r#"{"id":"a","isRead":false}"#).apply(&mut m);
        let e = &m["a"];
        assert_eq!(e.flags, Flags::FLAGGED);
        assert_eq!(e.email_id.as_deref(), Some("<x@y>"));
        assert_eq!(e.received, Some(1_714_558_830));
        up(r#"{"id":"a","@removed":{"reason":"deleted"}}"#).apply(&mut m);
        assert!(m.is_empty());
    }
}
