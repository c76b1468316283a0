//! The pure three-way sync planner: from the cloud listing, the maildir scan
//! and the last agreement it decides the actions that make both sides agree,
//! and, once the actions ran, the agreement to persist. No IO, clock,
//! randomness or async; `docs/sync.md` states the semantics.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

pub use crate::types::DeleteAction;
use crate::types::{ContentHash, Flags};

/// The flags a cloud can hold; `T` is local only (a deletion request).
pub(crate) const SYNCED: Flags = Flags(Flags::REPLIED.0 | Flags::READ.0 | Flags::FLAGGED.0);

/// A maildir that lost more than this many files may be a mass deletion.
const GUARD_MIN_MISSING: usize = 50;

/// Which start-up rule applies to a folder this cycle.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// The normal case: cloud authoritative on first sight, three-way merge
    /// otherwise.
    #[default]
    Online,
    /// Until the folder's first successful cycle after an `--offline`
    /// start: on first sight local flags win, and files missing locally
    /// are restored rather than deleted. A message with a copy in such a
    /// folder is planned this way.
    OfflineFirstCycle,
}

/// Where `direct_message` sent a cloud message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// The index of the maildir (config order) it chose.
    Maildir(usize),
    /// Routing raised or returned something that is not a maildir.
    Failed,
}

/// A message in a synced cloud folder whose content hash is known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloudMsg {
    /// Index of the cloud folder (config order) it is listed in.
    pub mailbox: usize,
    /// The service's id for the message.
    pub id: String,
    /// Its content hash.
    pub hash: ContentHash,
    /// Its flags as the cloud reports them now.
    pub flags: Flags,
    /// Where `direct_message` sends it.
    pub route: Route,
}

/// What the planner needs to know about a synced cloud folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailboxInfo {
    /// The flags the service can store (Graph: replied, read, flagged; Gmail:
    /// read, flagged).
    pub supported: Flags,
    /// What a local deletion does there.
    pub delete_action: DeleteAction,
    /// False when its listing or a download failed this cycle.
    pub complete: bool,
    /// Its start-up rule.
    pub mode: Mode,
}

/// A file in a maildir.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalFile {
    /// Index of the maildir (config order) holding it.
    pub maildir: usize,
    /// Its file name, flags suffix included; unique within the maildir.
    pub name: String,
    /// Its content hash.
    pub hash: ContentHash,
    /// The `R`/`S`/`F`/`T` flags its name carries.
    pub flags: Flags,
}

/// What the planner needs to know about a maildir.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaildirInfo {
    /// False when the directory does not exist any more.
    pub present: bool,
}

/// One cloud copy of a message as it was when both sides last agreed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CloudBase {
    /// Index of the cloud folder it was listed in.
    pub mailbox: usize,
    /// The service's id for it.
    pub id: String,
    /// Its flags after the last cycle's actions.
    pub flags: Flags,
}

/// The last agreement about one content hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastEntry {
    /// The flags every side should hold (the merge result; never `T`).
    pub flags: Flags,
    /// The maildir holding the file.
    pub maildir: usize,
    /// The flags the local file had after the last cycle's actions (no `T`).
    pub local: Flags,
    /// Every cloud copy listed then, with its flags after the actions.
    pub cloud: Vec<CloudBase>,
}

/// What both sides agreed at the end of the last cycle; persisted by the
/// caller, which maps indexes to stable keys.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastState {
    /// The agreement per content hash.
    pub entries: BTreeMap<ContentHash, LastEntry>,
    /// Files in each maildir after the last cycle's actions.
    pub maildir_counts: Vec<usize>,
}

/// Everything the planner looks at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlanInput {
    /// The synced cloud folders, by index.
    pub mailboxes: Vec<MailboxInfo>,
    /// The maildirs, by index; index 0 is the default.
    pub maildirs: Vec<MaildirInfo>,
    /// Every message listed in a synced cloud folder with a known hash.
    pub cloud: Vec<CloudMsg>,
    /// Every file in every maildir.
    pub local: Vec<LocalFile>,
    /// The last agreement.
    pub last: LastState,
    /// Content the id cache says came from a synced cloud folder.
    pub known_cloud_content: BTreeSet<ContentHash>,
}

/// One step that brings the two sides closer together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Link the content from the store into a maildir with these flags.
    Deliver {
        /// The content.
        hash: ContentHash,
        /// The destination maildir.
        maildir: usize,
        /// The flags the new file carries.
        flags: Flags,
    },
    /// Rename a local file so its name carries these flags.
    SetLocalFlags {
        /// The content.
        hash: ContentHash,
        /// The maildir holding the file.
        maildir: usize,
        /// The file's current name.
        name: String,
        /// The flags it must carry (other letters are kept).
        flags: Flags,
    },
    /// Put the content into another maildir with these flags, then remove
    /// the old file; on failure the old file must still be there.
    MoveLocal {
        /// The content.
        hash: ContentHash,
        /// The maildir holding the file now.
        from_maildir: usize,
        /// The file's current name.
        name: String,
        /// The destination maildir.
        to_maildir: usize,
        /// The flags the moved file carries.
        flags: Flags,
    },
    /// Remove a local file.
    RemoveLocal {
        /// The content.
        hash: ContentHash,
        /// The maildir holding the file.
        maildir: usize,
        /// The file's name.
        name: String,
    },
    /// Change a cloud message's flags; only supported bits that differ.
    SetCloudFlags {
        /// The content.
        hash: ContentHash,
        /// The cloud folder listing it.
        mailbox: usize,
        /// The service's id for it.
        id: String,
        /// Bits to set.
        set: Flags,
        /// Bits to clear.
        clear: Flags,
    },
    /// Delete a cloud message the way its folder is configured to.
    DeleteCloud {
        /// The content.
        hash: ContentHash,
        /// The cloud folder listing it.
        mailbox: usize,
        /// The service's id for it.
        id: String,
        /// Archive or delete.
        action: DeleteAction,
    },
}

impl Action {
    /// The content hash the action is about.
    pub fn hash(&self) -> ContentHash {
        match self {
            Action::Deliver { hash, .. }
            | Action::SetLocalFlags { hash, .. }
            | Action::MoveLocal { hash, .. }
            | Action::RemoveLocal { hash, .. }
            | Action::SetCloudFlags { hash, .. }
            | Action::DeleteCloud { hash, .. } => *hash,
        }
    }

    /// The cloud folder a cloud action works on.
    pub fn mailbox(&self) -> Option<usize> {
        match self {
            Action::SetCloudFlags { mailbox, .. } | Action::DeleteCloud { mailbox, .. } => {
                Some(*mailbox)
            }
            _ => None,
        }
    }

    /// True for the actions that call the cloud.
    pub fn is_cloud(&self) -> bool {
        matches!(
            self,
            Action::SetCloudFlags { .. } | Action::DeleteCloud { .. }
        )
    }
}

/// Something the caller must log as an error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Warning {
    /// A maildir holding agreed messages disappeared; they are restored and
    /// nothing is deleted in the cloud.
    MaildirMissing {
        /// The maildir.
        maildir: usize,
        /// How many agreed messages it is missing.
        missing: usize,
    },
    /// A maildir lost too many files at once to take it as a deletion
    /// request; they are restored and nothing is deleted in the cloud.
    MassDeletion {
        /// The maildir.
        maildir: usize,
        /// How many agreed messages it is missing.
        missing: usize,
        /// How many files it held after the last cycle.
        last_count: usize,
    },
    /// Another maildir disappeared, so files missing here may have been
    /// moved there: they are restored and nothing is deleted in the cloud.
    DeletionsHeld {
        /// The maildir.
        maildir: usize,
        /// How many agreed messages it is missing.
        missing: usize,
    },
}

/// How an action went, reported by the executor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The action took effect.
    Done,
    /// The action failed and changed nothing.
    Failed,
}

/// The planner's answer: the actions, the warnings, and what to record once
/// the actions ran (see [`next_state`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The actions, grouped per content hash in hash order.
    pub actions: Vec<Action>,
    /// Problems the caller must log.
    pub warnings: Vec<Warning>,
    /// What each content hash's entry becomes, depending on outcomes.
    intents: Vec<(ContentHash, Rule)>,
}

/// How [`next_state`] records one content hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rule {
    /// Record the merge result `flags` and each side's flags after the
    /// actions, if a local file exists then (preferring one in `prefer`);
    /// with no file, record nothing, so no later cycle can read the absence
    /// as a deletion request.
    Record {
        /// The merge result.
        flags: Flags,
        /// The maildir the file is meant to be in.
        prefer: Option<usize>,
    },
    /// Keep the old entry as it is (a cloud deletion was asked for).
    KeepOld,
    /// Keep the old entry while a local file remains (gone from the cloud).
    KeepOldWhileFiles,
    /// Record nothing.
    Forget,
}

/// Everything known about one content hash, members in a stable order.
struct Group<'a> {
    hash: ContentHash,
    cloud: Vec<&'a CloudMsg>,
    local: Vec<&'a LocalFile>,
    last: Option<&'a LastEntry>,
}

/// Plans one sync cycle; see `docs/sync.md`.
pub fn plan(input: &PlanInput) -> Plan {
    let groups = group(input);
    let (guarded, warnings) = guard(input, &groups);
    let mut actions = Vec::new();
    let mut intents = Vec::with_capacity(groups.len());
    for g in groups.values() {
        let (mut a, rule) = decide(input, g, &guarded);
        actions.append(&mut a);
        intents.push((g.hash, rule));
    }
    Plan {
        actions,
        warnings,
        intents,
    }
}

/// Gathers cloud copies, local files and the last entry per content hash.
fn group(input: &PlanInput) -> BTreeMap<ContentHash, Group<'_>> {
    fn at<'a, 'b>(
        groups: &'b mut BTreeMap<ContentHash, Group<'a>>,
        hash: ContentHash,
    ) -> &'b mut Group<'a> {
        groups.entry(hash).or_insert_with(|| Group {
            hash,
            cloud: Vec::new(),
            local: Vec::new(),
            last: None,
        })
    }
    let mut groups = BTreeMap::new();
    for c in &input.cloud {
        at(&mut groups, c.hash).cloud.push(c);
    }
    for f in &input.local {
        at(&mut groups, f.hash).local.push(f);
    }
    for (h, e) in &input.last.entries {
        at(&mut groups, *h).last = Some(e);
    }
    for g in groups.values_mut() {
        g.cloud
            .sort_by(|a, b| (a.mailbox, &a.id).cmp(&(b.mailbox, &b.id)));
        g.cloud
            .dedup_by(|a, b| (a.mailbox, &a.id) == (b.mailbox, &b.id));
        g.local
            .sort_by(|a, b| (a.maildir, &a.name).cmp(&(b.maildir, &b.name)));
        g.local
            .dedup_by(|a, b| (a.maildir, &a.name) == (b.maildir, &b.name));
    }
    groups
}

/// The mass-deletion guard: the maildirs whose missing files must not be
/// taken as deletion requests, and the warnings to log about them.
fn guard(
    input: &PlanInput,
    groups: &BTreeMap<ContentHash, Group<'_>>,
) -> (BTreeSet<usize>, Vec<Warning>) {
    let n = input.maildirs.len();
    let mut missing = vec![0usize; n];
    let mut agreed = vec![0usize; n];
    for g in groups.values() {
        let Some(s) = g.last else { continue };
        if s.maildir >= n {
            continue;
        }
        agreed[s.maildir] += 1;
        // Missing files that would be (or, once an incomplete listing
        // shows them again, become) deletion requests.
        let hidden = s.cloud.iter().any(|b| !mailbox_complete(input, b.mailbox));
        if g.local.is_empty() && (!g.cloud.is_empty() || hidden) {
            missing[s.maildir] += 1;
        }
    }
    // With a maildir gone, files the user moved into it look missing from
    // the maildir the agreement names: hold every maildir's deletions.
    let any_absent = input.maildirs.iter().any(|m| !m.present);
    let mut guarded = BTreeSet::new();
    let mut warnings = Vec::new();
    for m in 0..n {
        let lost = missing[m];
        let last_count = input
            .last
            .maildir_counts
            .get(m)
            .copied()
            .unwrap_or(agreed[m]);
        let warning = if !input.maildirs[m].present {
            Some(Warning::MaildirMissing {
                maildir: m,
                missing: lost,
            })
        } else if lost > GUARD_MIN_MISSING && lost * 4 > last_count {
            Some(Warning::MassDeletion {
                maildir: m,
                missing: lost,
                last_count,
            })
        } else if lost > 0 && any_absent {
            Some(Warning::DeletionsHeld {
                maildir: m,
                missing: lost,
            })
        } else {
            None
        };
        if let Some(w) = warning {
            guarded.insert(m);
            warnings.push(w);
        }
    }
    (guarded, warnings)
}

/// Decides one content hash: the actions, and how to record it afterwards.
fn decide(input: &PlanInput, g: &Group<'_>, guarded: &BTreeSet<usize>) -> (Vec<Action>, Rule) {
    match (!g.cloud.is_empty(), !g.local.is_empty(), g.last) {
        // Known message: three-way merge against each side's own base; a
        // local `T` deletes every cloud copy and leaves the file alone until
        // the copies are gone from the listing (then the "gone from the
        // cloud" arm removes it).
        (true, true, Some(s)) => {
            let flags = three_way(input, g, s);
            let delete = g.local.iter().any(|f| f.flags.contains(Flags::DELETED));
            keep_known(input, g, flags, delete)
        }
        // First sight (first run or lost state). Online the cloud wins on
        // the bits it stores, including "not deleted": a `T` is dropped.
        // Offline first cycle the local flags win, and a `T` deletes.
        (true, true, None) => {
            let flags = first_sight(input, g);
            let delete =
                offline(input, g) && g.local.iter().any(|f| f.flags.contains(Flags::DELETED));
            keep_known(input, g, flags, delete)
        }
        // Removed locally since the last agreement: delete the copies that
        // agreement knew, unless the guard holds or this is the offline
        // first cycle (then restore). Copies it did not know (the message
        // reached another synced folder since) are never deleted: with no
        // known copy left they are delivered again; while a known copy may
        // hide in an incomplete listing, wait.
        (true, false, Some(s)) => removed_locally(input, g, s, guarded),
        // New cloud message: deliver with the cloud's flags into its route,
        // or the default maildir when routing failed.
        (true, false, None) => {
            let flags = first_sight(input, g);
            let dest = route(input, g).or_else(|| default(input));
            deliver(input, g, flags, dest)
        }
        // Gone from the cloud (deleted or moved to a folder we do not sync):
        // remove the files, unless a folder it was listed in is incomplete
        // this cycle.
        (false, true, Some(s)) => {
            let complete = s.cloud.iter().all(|b| mailbox_complete(input, b.mailbox));
            let actions = if complete { remove_all(g) } else { Vec::new() };
            (actions, Rule::KeepOldWhileFiles)
        }
        // Never synced: remove only content the id cache says came from a
        // synced folder, and only when every listing is complete (we do not
        // know which folder it came from).
        (false, true, None) => {
            let from_cloud = input.known_cloud_content.contains(&g.hash);
            let complete = input.mailboxes.iter().all(|m| m.complete);
            let actions = if from_cloud && complete {
                remove_all(g)
            } else {
                Vec::new()
            };
            (actions, Rule::Forget)
        }
        // Gone on both sides: forget it, unless a folder it was listed in
        // is incomplete this cycle: it may still be there, and its local
        // removal is then a pending deletion request; but not if the guard
        // holds for its maildir (then it is forgotten and, if still in the
        // cloud, delivered again as new).
        (false, false, Some(s)) => {
            let complete = s.cloud.iter().all(|b| mailbox_complete(input, b.mailbox));
            let held = guarded.contains(&s.maildir) || s.maildir >= input.maildirs.len();
            let rule = if complete || held {
                Rule::Forget
            } else {
                Rule::KeepOld
            };
            (Vec::new(), rule)
        }
        // A group always has at least one member; nothing to do.
        (false, false, None) => (Vec::new(), Rule::Forget),
    }
}

/// Decides a message removed locally since the last agreement `s` and
/// still listed in the cloud (see the arm in [`decide`]).
fn removed_locally(
    input: &PlanInput,
    g: &Group<'_>,
    s: &LastEntry,
    guarded: &BTreeSet<usize>,
) -> (Vec<Action>, Rule) {
    let held = guarded.contains(&s.maildir) || s.maildir >= input.maildirs.len();
    let known: Vec<&CloudMsg> = g
        .cloud
        .iter()
        .copied()
        .filter(|c| {
            s.cloud
                .iter()
                .any(|b| b.mailbox == c.mailbox && b.id == c.id)
        })
        .collect();
    let unseen = s.cloud.iter().any(|b| {
        !mailbox_complete(input, b.mailbox)
            && !g
                .cloud
                .iter()
                .any(|c| c.mailbox == b.mailbox && c.id == b.id)
    });
    let restore = || {
        let flags = three_way(input, g, s);
        let dest = route(input, g)
            .or_else(|| valid(input, s.maildir))
            .or_else(|| default(input));
        deliver(input, g, flags, dest)
    };
    if held || offline(input, g) {
        restore()
    } else if !known.is_empty() {
        let actions = known
            .iter()
            .filter_map(|c| delete_cloud(input, c))
            .collect();
        (actions, Rule::KeepOld)
    } else if unseen {
        (Vec::new(), Rule::KeepOld)
    } else {
        restore()
    }
}

/// Three-way merge, per bit: a bit a cloud copy changed since its base wins
/// (set wins if copies changed it both ways); else a bit a local file changed
/// since the local base; else the agreed value, still to be propagated.
fn three_way(input: &PlanInput, g: &Group<'_>, s: &LastEntry) -> Flags {
    let mut flags = s.flags & SYNCED;
    let mut local_changed = Flags::NONE;
    for f in &g.local {
        local_changed |= (f.flags ^ s.local) & SYNCED;
    }
    flags = (flags & !local_changed) | (!s.local & local_changed);
    let (mut set, mut cleared) = (Flags::NONE, Flags::NONE);
    for c in &g.cloud {
        let sup = supported(input, c.mailbox);
        // A copy moved to another synced folder keeps its id (Graph
        // immutable ids, Gmail labels); a truly new copy (another folder's
        // duplicate, or one a batch showed later) brings the bits it has
        // beyond the agreed flags, as at first sight (union over copies),
        // and takes none away.
        let base = s
            .cloud
            .iter()
            .find(|b| b.mailbox == c.mailbox && b.id == c.id)
            .or_else(|| s.cloud.iter().find(|b| b.id == c.id))
            .map_or(s.flags & c.flags, |b| b.flags);
        let changed = (c.flags ^ base) & sup;
        set |= c.flags & changed;
        cleared |= !c.flags & changed;
    }
    (flags & !(set | cleared)) | set
}

/// True when a cloud copy of the message is in a folder still on the
/// `--offline` start-up rule.
fn offline(input: &PlanInput, g: &Group<'_>) -> bool {
    g.cloud.iter().any(|c| {
        input
            .mailboxes
            .get(c.mailbox)
            .is_some_and(|m| m.mode == Mode::OfflineFirstCycle)
    })
}

/// Merge with no last agreement: the cloud's bits (union over the copies
/// that store them) win, bits no copy stores keep the local value; in the
/// offline first cycle the local flags win outright.
fn first_sight(input: &PlanInput, g: &Group<'_>) -> Flags {
    let mut local = Flags::NONE;
    for f in &g.local {
        local |= f.flags;
    }
    local &= SYNCED;
    if offline(input, g) && !g.local.is_empty() {
        return local;
    }
    let (mut stored, mut cloud) = (Flags::NONE, Flags::NONE);
    for c in &g.cloud {
        let sup = supported(input, c.mailbox);
        stored |= sup;
        cloud |= c.flags & sup;
    }
    (cloud & stored) | (local & !stored)
}

/// Actions for a message present on both sides: deletion, or flag pushes
/// plus placement (exactly one file, in the route's maildir).
fn keep_known(input: &PlanInput, g: &Group<'_>, flags: Flags, delete: bool) -> (Vec<Action>, Rule) {
    if delete {
        let actions = g
            .cloud
            .iter()
            .filter_map(|c| delete_cloud(input, c))
            .collect();
        let prefer = g.last.map(|s| s.maildir);
        return (actions, Rule::Record { flags, prefer });
    }
    let mut actions = push(input, g, flags);
    let dest = route(input, g);
    let pos = match dest {
        Some(m) => g.local.iter().position(|f| f.maildir == m),
        None => g
            .last
            .and_then(|s| g.local.iter().position(|f| f.maildir == s.maildir)),
    };
    let kept = g.local[pos.unwrap_or(0)];
    match dest {
        Some(to) if to != kept.maildir => actions.push(Action::MoveLocal {
            hash: g.hash,
            from_maildir: kept.maildir,
            name: kept.name.clone(),
            to_maildir: to,
            flags,
        }),
        _ if kept.flags != flags => actions.push(Action::SetLocalFlags {
            hash: g.hash,
            maildir: kept.maildir,
            name: kept.name.clone(),
            flags,
        }),
        _ => {}
    }
    for f in &g.local {
        if !std::ptr::eq(*f, kept) {
            actions.push(remove(f));
        }
    }
    let prefer = Some(dest.unwrap_or(kept.maildir));
    (actions, Rule::Record { flags, prefer })
}

/// Actions for a message with no local file that must have one.
fn deliver(
    input: &PlanInput,
    g: &Group<'_>,
    flags: Flags,
    dest: Option<usize>,
) -> (Vec<Action>, Rule) {
    let mut actions = push(input, g, flags);
    if let Some(maildir) = dest {
        actions.push(Action::Deliver {
            hash: g.hash,
            maildir,
            flags,
        });
    }
    (
        actions,
        Rule::Record {
            flags,
            prefer: dest,
        },
    )
}

/// Flag updates for the copies whose supported bits differ from `flags`.
fn push(input: &PlanInput, g: &Group<'_>, flags: Flags) -> Vec<Action> {
    let mut actions = Vec::new();
    for c in &g.cloud {
        let sup = supported(input, c.mailbox);
        let (want, have) = (flags & sup, c.flags & sup);
        if want != have {
            actions.push(Action::SetCloudFlags {
                hash: g.hash,
                mailbox: c.mailbox,
                id: c.id.clone(),
                set: want & !have,
                clear: have & !want,
            });
        }
    }
    actions
}

/// The deletion of one cloud copy, if its folder is known.
fn delete_cloud(input: &PlanInput, c: &CloudMsg) -> Option<Action> {
    let info = input.mailboxes.get(c.mailbox)?;
    Some(Action::DeleteCloud {
        hash: c.hash,
        mailbox: c.mailbox,
        id: c.id.clone(),
        action: info.delete_action,
    })
}

/// Removal of every local file of a group.
fn remove_all(g: &Group<'_>) -> Vec<Action> {
    g.local.iter().map(|f| remove(f)).collect()
}

/// Removal of one local file.
fn remove(f: &LocalFile) -> Action {
    Action::RemoveLocal {
        hash: f.hash,
        maildir: f.maildir,
        name: f.name.clone(),
    }
}

/// The route of the first copy (in folder order, then id) that routed to an
/// existing maildir.
fn route(input: &PlanInput, g: &Group<'_>) -> Option<usize> {
    g.cloud.iter().find_map(|c| match c.route {
        Route::Maildir(m) => valid(input, m),
        Route::Failed => None,
    })
}

/// `m` if it names a configured maildir.
fn valid(input: &PlanInput, m: usize) -> Option<usize> {
    (m < input.maildirs.len()).then_some(m)
}

/// The default maildir, if any is configured.
fn default(input: &PlanInput) -> Option<usize> {
    valid(input, 0)
}

/// The flags a cloud folder stores (none for an unknown folder).
fn supported(input: &PlanInput, mailbox: usize) -> Flags {
    input
        .mailboxes
        .get(mailbox)
        .map_or(Flags::NONE, |m| m.supported & SYNCED)
}

/// Whether a cloud folder's listing is complete (false for an unknown one).
fn mailbox_complete(input: &PlanInput, mailbox: usize) -> bool {
    input.mailboxes.get(mailbox).is_some_and(|m| m.complete)
}

/// True when planning one content hash would do nothing and record the same
/// agreement `last` again, so a cycle may leave it out of [`plan`]: both
/// sides hold exactly what was agreed. That is one local file, in the
/// agreed maildir, with the agreed flags; and exactly the agreed cloud
/// copies, each with its agreed flags, holding the agreed flags on every bit
/// its folder stores, and routed to the agreed maildir. `supported` gives
/// each cloud folder's stored bits; `maildirs` is how many maildirs there
/// are. Any doubt answers false and the hash is planned as usual; the plan
/// tests check that a true answer never hides an action.
pub fn settled<'a>(
    last: &LastEntry,
    supported: &[Flags],
    maildirs: usize,
    mut local: impl Iterator<Item = (usize, Flags)>,
    cloud: impl Iterator<Item = (usize, &'a str, Flags, Route)>,
) -> bool {
    let flags = last.flags & SYNCED;
    if last.maildir >= maildirs || last.local != flags || last.flags != flags {
        return false;
    }
    match (local.next(), local.next()) {
        (Some((m, f)), None) if m == last.maildir && f == flags => {}
        _ => return false,
    }
    if last.cloud.is_empty() || last.cloud.len() > 64 {
        return false;
    }
    // Each agreed copy matched once (a bit per copy).
    let mut matched = 0u64;
    for (mailbox, id, have, route) in cloud {
        let Some(&sup) = supported.get(mailbox) else {
            return false;
        };
        let sup = sup & SYNCED;
        if route != Route::Maildir(last.maildir) || have & sup != flags & sup {
            return false;
        }
        let Some(k) = last
            .cloud
            .iter()
            .position(|b| b.mailbox == mailbox && b.id == id && b.flags == have)
        else {
            return false;
        };
        if matched & (1 << k) != 0 {
            return false;
        }
        matched |= 1 << k;
    }
    matched.count_ones() as usize == last.cloud.len()
}

/// The agreement to persist after running `plan` (which must be
/// `plan(input)`), given one outcome per action; a missing outcome counts
/// as failed.
///
/// Each side's base is what it holds after the actions that succeeded, so a
/// failed action is retried next cycle and a change made afterwards on
/// either side is still seen as a change.
pub fn next_state(input: &PlanInput, plan: &Plan, outcomes: &[Outcome]) -> LastState {
    let mut world = World::scanned(input);
    for (i, action) in plan.actions.iter().enumerate() {
        if outcomes.get(i) == Some(&Outcome::Done) {
            world.apply(i, action);
        }
    }

    let mut counts = vec![0usize; input.maildirs.len()];
    let mut by_hash: BTreeMap<ContentHash, Vec<(usize, Flags)>> = BTreeMap::new();
    for ((maildir, _), (hash, flags)) in &world.files {
        if let Some(c) = counts.get_mut(*maildir) {
            *c += 1;
        }
        by_hash.entry(*hash).or_default().push((*maildir, *flags));
    }
    let mut copies: BTreeMap<ContentHash, Vec<CloudBase>> = BTreeMap::new();
    for c in &input.cloud {
        let flags = world.cloud[&(c.mailbox, c.id.as_str())];
        copies.entry(c.hash).or_default().push(CloudBase {
            mailbox: c.mailbox,
            id: c.id.clone(),
            flags,
        });
    }

    let mut entries = BTreeMap::new();
    for (hash, rule) in &plan.intents {
        let post = by_hash.get(hash).map_or(&[][..], Vec::as_slice);
        let old = input.last.entries.get(hash);
        let entry = match rule {
            Rule::Record { flags, prefer } => {
                let copies = copies.get(hash).map_or(&[][..], Vec::as_slice);
                record(input, *flags, *prefer, post, copies, old)
            }
            Rule::KeepOld => old.cloned(),
            Rule::KeepOldWhileFiles if !post.is_empty() => old.cloned(),
            Rule::KeepOldWhileFiles | Rule::Forget => None,
        };
        if let Some(e) = entry {
            entries.insert(*hash, e);
        }
    }
    LastState {
        entries,
        maildir_counts: counts,
    }
}

/// The world after the successful actions, as far as the planner knows it.
/// Scanned names are borrowed; only delivered files get new ones.
struct World<'a> {
    /// Local files by maildir and name: their content and flags.
    files: BTreeMap<(usize, Cow<'a, str>), (ContentHash, Flags)>,
    /// Cloud copies by folder and id: their flags.
    cloud: BTreeMap<(usize, &'a str), Flags>,
}

impl<'a> World<'a> {
    /// The world as scanned and listed, before any action.
    fn scanned(input: &'a PlanInput) -> Self {
        let files = input
            .local
            .iter()
            .map(|f| {
                (
                    (f.maildir, Cow::Borrowed(f.name.as_str())),
                    (f.hash, f.flags),
                )
            })
            .collect();
        let cloud = input
            .cloud
            .iter()
            .map(|c| ((c.mailbox, c.id.as_str()), c.flags))
            .collect();
        World { files, cloud }
    }

    /// Applies `action`, the plan's `i`th, which succeeded.
    fn apply(&mut self, i: usize, action: &'a Action) {
        let files = &mut self.files;
        // Names no scan can produce, for files the executor named.
        let new_name = || Cow::Owned(format!("\u{0}{i}"));
        match action {
            Action::Deliver {
                hash,
                maildir,
                flags,
            } => {
                files.insert((*maildir, new_name()), (*hash, *flags));
            }
            Action::SetLocalFlags {
                maildir,
                name,
                flags,
                ..
            } => {
                if let Some(f) = files.get_mut(&(*maildir, Cow::Borrowed(name.as_str()))) {
                    f.1 = *flags;
                }
            }
            Action::MoveLocal {
                hash,
                from_maildir,
                name,
                to_maildir,
                flags,
            } => {
                files.remove(&(*from_maildir, Cow::Borrowed(name.as_str())));
                files.insert((*to_maildir, new_name()), (*hash, *flags));
            }
            Action::RemoveLocal { maildir, name, .. } => {
                files.remove(&(*maildir, Cow::Borrowed(name.as_str())));
            }
            Action::SetCloudFlags {
                mailbox,
                id,
                set,
                clear,
                ..
            } => {
                if let Some(f) = self.cloud.get_mut(&(*mailbox, id.as_str())) {
                    *f = (*f & !*clear) | *set;
                }
            }
            // A deleted copy keeps its base: the listing drops it next cycle.
            Action::DeleteCloud { .. } => {}
        }
    }
}

/// The entry [`Rule::Record`] makes from the files (`post`) and cloud copies
/// (`copies`) of one hash after the actions, and its `old` entry; none when
/// no file is left.
fn record(
    input: &PlanInput,
    flags: Flags,
    prefer: Option<usize>,
    post: &[(usize, Flags)],
    copies: &[CloudBase],
    old: Option<&LastEntry>,
) -> Option<LastEntry> {
    let kept = prefer
        .and_then(|m| post.iter().find(|f| f.0 == m))
        .or_else(|| post.first());
    // Where files left over by a failed removal disagree, the base is the
    // opposite of the merge result: only files that hold the result look
    // changed, so it is merged again.
    let (mut all, mut any) = (Flags::ALL, Flags::NONE);
    for &(_, f) in post {
        all &= f;
        any |= f;
    }
    let disputed = any & !all;
    kept.map(|&(maildir, _)| {
        let mut cloud = copies.to_vec();
        // Copies an incomplete listing missed keep their base, or they would
        // look changed when they are listed again.
        for b in old.map_or(&[][..], |e| e.cloud.as_slice()) {
            let listed = cloud.iter().any(|c| c.mailbox == b.mailbox && c.id == b.id);
            if !listed && !mailbox_complete(input, b.mailbox) {
                cloud.push(b.clone());
            }
        }
        cloud.sort();
        cloud.dedup_by(|a, b| (a.mailbox, &a.id) == (b.mailbox, &b.id));
        LastEntry {
            flags: flags & SYNCED,
            maildir,
            local: ((all & !disputed) | (!flags & disputed)) & SYNCED,
            cloud,
        }
    })
}

/// What the cloud now holds because of one of the cycle's actions, as far as
/// the daemon knows without listing again. A cycle that does not list a
/// folder must plan against its previous listing with these applied, or the
/// listing would be older than the agreement [`next_state`] recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloudEffect {
    /// A flag change the service accepted.
    Flags {
        /// The cloud folder.
        mailbox: usize,
        /// The service's id.
        id: String,
        /// Bits now on.
        set: Flags,
        /// Bits now off.
        clear: Flags,
    },
    /// A deletion was sent (whatever its answer): it must not be sent again
    /// until a new listing of the folder shows whether it took effect.
    DeletionSent {
        /// The cloud folder.
        mailbox: usize,
        /// The service's id.
        id: String,
    },
}

impl CloudEffect {
    /// The cloud folder it happened in.
    pub fn mailbox(&self) -> usize {
        match self {
            CloudEffect::Flags { mailbox, .. } | CloudEffect::DeletionSent { mailbox, .. } => {
                *mailbox
            }
        }
    }
}

/// The cloud effects of the cycle's actions, in plan order: accepted flag
/// changes, and every deletion that was attempted (a failed call may still
/// have taken effect). `attempted` tells which actions were sent at all.
pub fn cloud_effects(plan: &Plan, outcomes: &[Outcome], attempted: &[bool]) -> Vec<CloudEffect> {
    plan.actions
        .iter()
        .enumerate()
        .filter_map(|(i, a)| match a {
            Action::SetCloudFlags {
                mailbox,
                id,
                set,
                clear,
                ..
            } if outcomes.get(i) == Some(&Outcome::Done) => Some(CloudEffect::Flags {
                mailbox: *mailbox,
                id: id.clone(),
                set: *set,
                clear: *clear,
            }),
            Action::DeleteCloud { mailbox, id, .. } if attempted.get(i) == Some(&true) => {
                Some(CloudEffect::DeletionSent {
                    mailbox: *mailbox,
                    id: id.clone(),
                })
            }
            _ => None,
        })
        .collect()
}
