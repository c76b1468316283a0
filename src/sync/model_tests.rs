//! Model-based property test of the sync planner: a simulated cloud (with a
//! second client), simulated maildirs (with an MUA), daemon restarts and
//! failing actions, checked against the promises of `docs/sync.md`.
//!
//! Cycles come in two kinds, as in the daemon: a full one lists both
//! folders; one woken by a local change lists nothing and plans against the
//! previous listing with its own actions' effects applied
//! ([`cloud_effects`]), which is older than the cloud whenever the second
//! client wrote since. A deletion sent is not sent again until a listing.
//!
//! The world: account A (Office365-like) has synced folder 0 and unsynced
//! folder 2 (its archive); account B (Gmail-like) has synced folder 1 and
//! unsynced folder 3 (its trash). Two maildirs; folder `k` routes to maildir
//! `k` unless a message's route was overridden.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;
use crate::types::{ContentHash, Flags};

const SYNCED_BITS: [Flags; 3] = [Flags::REPLIED, Flags::READ, Flags::FLAGGED];

/// Content ids in the model; the hash is derived from it.
type Content = u16;

fn hash(c: Content) -> ContentHash {
    let mut b = [0u8; 32];
    b[..2].copy_from_slice(&c.to_be_bytes());
    ContentHash(b)
}

fn content(h: &ContentHash) -> Content {
    u16::from_be_bytes([h.0[0], h.0[1]])
}

/// The flags a folder stores.
fn supported(mailbox: usize) -> Flags {
    if mailbox.is_multiple_of(2) {
        Flags::REPLIED | Flags::READ | Flags::FLAGGED
    } else {
        Flags::READ | Flags::FLAGGED
    }
}

/// One edit or daemon event.
#[derive(Clone, Debug)]
enum Op {
    /// New mail in a folder, fresh content or a copy of existing content.
    NewMail {
        mailbox: usize,
        reuse: Option<u8>,
        flags: u8,
    },
    /// The second client toggles a flag.
    CloudToggle { pick: u8, bit: u8 },
    /// The second client moves a message between synced and unsynced.
    CloudMove { pick: u8 },
    /// The second client deletes a message for good.
    CloudExpunge { pick: u8 },
    /// The MUA toggles R, S or F on a file.
    LocalToggle { pick: u8, bit: u8 },
    /// The MUA sets T on a file.
    LocalSetT { pick: u8 },
    /// The MUA removes a file.
    LocalRemove { pick: u8 },
    /// The user copies a file into a maildir.
    LocalCopy { pick: u8, to: usize },
    /// The user writes a local-only file.
    LocalDraft { maildir: usize },
    /// A whole maildir disappears.
    RemoveMaildir { maildir: usize },
    /// The config now routes a message elsewhere (2: routing fails).
    Reroute { pick: u8, route: u8 },
    /// One sync cycle; action `i` fails when bit `i % 64` of `fail` is set.
    Cycle {
        fail: u64,
        incomplete: Option<usize>,
    },
    /// A cycle woken by a local change: no listing, the previous one with
    /// the effects of the daemon's actions since.
    WatcherCycle { fail: u64 },
    /// A batch cycle while folder `mailbox` downloads: it is listed in
    /// full, but only the messages whose content is stored so far (those
    /// whose id falls under `keep` / 256, a random split of the folder) are
    /// in the picture, and the folder counts as incomplete.
    BatchCycle {
        fail: u64,
        mailbox: usize,
        keep: u8,
        salt: u8,
    },
    /// The daemon stops and starts again.
    Restart { keep_state: bool, offline: bool },
}

fn op() -> impl Strategy<Value = Op> {
    let fail = prop_oneof![3 => Just(0u64), 2 => any::<u64>()];
    let incomplete = prop_oneof![4 => Just(None), 1 => (0..2usize).prop_map(Some)];
    prop_oneof![
        3 => (0..4usize, proptest::option::of(any::<u8>()), any::<u8>())
            .prop_map(|(mailbox, reuse, flags)| Op::NewMail { mailbox, reuse, flags }),
        2 => (any::<u8>(), 0..3u8).prop_map(|(pick, bit)| Op::CloudToggle { pick, bit }),
        1 => any::<u8>().prop_map(|pick| Op::CloudMove { pick }),
        1 => any::<u8>().prop_map(|pick| Op::CloudExpunge { pick }),
        3 => (any::<u8>(), 0..3u8).prop_map(|(pick, bit)| Op::LocalToggle { pick, bit }),
        1 => any::<u8>().prop_map(|pick| Op::LocalSetT { pick }),
        1 => any::<u8>().prop_map(|pick| Op::LocalRemove { pick }),
        1 => (any::<u8>(), 0..2usize).prop_map(|(pick, to)| Op::LocalCopy { pick, to }),
        1 => (0..2usize).prop_map(|maildir| Op::LocalDraft { maildir }),
        1 => (0..2usize).prop_map(|maildir| Op::RemoveMaildir { maildir }),
        1 => (any::<u8>(), 0..3u8).prop_map(|(pick, route)| Op::Reroute { pick, route }),
        5 => (fail.clone(), incomplete).prop_map(|(fail, incomplete)| Op::Cycle { fail, incomplete }),
        3 => fail.clone().prop_map(|fail| Op::WatcherCycle { fail }),
        3 => (fail, 0..2usize, any::<u8>(), any::<u8>())
            .prop_map(|(fail, mailbox, keep, salt)| Op::BatchCycle { fail, mailbox, keep, salt }),
        1 => (any::<bool>(), any::<bool>())
            .prop_map(|(keep_state, offline)| Op::Restart { keep_state, offline }),
    ]
}

/// The simulated world plus the daemon's persisted state and the oracle's
/// bookkeeping.
#[derive(Default)]
struct Model {
    /// Cloud messages: (folder, id) → (content, flags).
    cloud: BTreeMap<(usize, String), (Content, Flags)>,
    /// Maildir files: (maildir, name) → (content, flags).
    files: BTreeMap<(usize, String), (Content, Flags)>,
    /// Whether each maildir directory exists.
    absent: [bool; 2],
    /// Routes set by `Reroute`.
    routes: BTreeMap<Content, Route>,
    /// Counter for ids, names and content.
    serial: u32,
    /// Content the user wrote locally; never in the cloud.
    drafts: BTreeSet<Content>,

    /// The daemon's persisted agreement, as JSON.
    last: String,
    /// The mode of the next cycle.
    mode: Mode,
    /// The id cache's view: content listed in a synced folder.
    known: BTreeSet<ContentHash>,

    /// Content whose last file the MUA removed since the daemon last
    /// delivered it: a deletion request.
    removed: BTreeSet<Content>,
    /// (content, bit) → the value the MUA last wrote, while no cloud write
    /// to that bit is pending or later.
    claims: BTreeMap<(Content, usize), bool>,
    /// (content, bit) → (copy, value) the second client last wrote on a
    /// synced copy, while no later local write to that bit happened.
    cloud_claims: BTreeMap<(Content, usize), ((usize, String), bool)>,
    /// (content, bit) written in the cloud since the daemon last recorded
    /// every synced copy's flags.
    dirty: BTreeSet<(Content, usize)>,

    /// The daemon's picture of each synced folder: its last listing with
    /// the effects of its actions since (None until listed after a start).
    cached: [Option<BTreeMap<String, (Content, Flags)>>; 2],
    /// Deletions sent since their folder was last listed.
    sent: BTreeSet<(usize, String)>,
}

impl Model {
    fn new() -> Model {
        Model {
            last: serde_json::to_string(&LastState::default()).unwrap(),
            ..Model::default()
        }
    }

    fn next(&mut self) -> u32 {
        self.serial += 1;
        self.serial
    }

    fn last_state(&self) -> LastState {
        serde_json::from_str(&self.last).unwrap()
    }

    fn pick_cloud(&self, pick: u8) -> Option<(usize, String)> {
        let n = self.cloud.len();
        (n > 0).then(|| self.cloud.keys().nth(pick as usize % n).unwrap().clone())
    }

    fn pick_file(&self, pick: u8) -> Option<(usize, String)> {
        let n = self.files.len();
        (n > 0).then(|| self.files.keys().nth(pick as usize % n).unwrap().clone())
    }

    fn files_of(&self, c: Content) -> usize {
        self.files.values().filter(|f| f.0 == c).count()
    }

    fn synced_copies(&self, c: Content) -> Vec<(usize, String, Flags)> {
        self.cloud
            .iter()
            .filter(|(k, v)| k.0 < 2 && v.0 == c)
            .map(|(k, v)| (k.0, k.1.clone(), v.1))
            .collect()
    }

    /// A cloud write to `bits` of `c`: the cloud now has the last word.
    fn cloud_wrote(&mut self, c: Content, bits: &[usize]) {
        for &b in bits {
            self.claims.remove(&(c, b));
            self.dirty.insert((c, b));
        }
    }

    fn drop_claims(&mut self, c: Content) {
        self.claims.retain(|k, _| k.0 != c);
    }

    /// A local write to `bits` of `c`: cloud writes the daemon has already
    /// seen lose their claim (cloud writes it has not seen yet still win).
    fn local_wrote(&mut self, c: Content, bits: &[usize]) {
        for &b in bits {
            if !self.dirty.contains(&(c, b)) {
                self.cloud_claims.remove(&(c, b));
            }
        }
    }

    fn requested(&self, c: Content) -> bool {
        self.removed.contains(&c)
            || self
                .files
                .values()
                .any(|f| f.0 == c && f.1.contains(Flags::DELETED))
    }

    fn route(&self, mailbox: usize, c: Content) -> Route {
        self.routes
            .get(&c)
            .copied()
            .unwrap_or(Route::Maildir(mailbox))
    }

    fn apply(&mut self, op: &Op) {
        if trace() {
            eprintln!("== {op:?}");
        }
        match *op {
            Op::NewMail {
                mailbox,
                reuse,
                flags,
            } => {
                let existing: Vec<Content> = self
                    .cloud
                    .values()
                    .map(|v| v.0)
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                let c = match reuse {
                    Some(r) if !existing.is_empty() => {
                        let c = existing[r as usize % existing.len()];
                        self.cloud_wrote(c, &[0, 1, 2]);
                        self.cloud_claims.retain(|k, _| k.0 != c);
                        c
                    }
                    _ => self.next() as Content,
                };
                let id = format!("{:06}", self.next());
                let flags = Flags(flags) & supported(mailbox);
                self.cloud.insert((mailbox, id), (c, flags));
            }
            Op::CloudToggle { pick, bit } => {
                let Some(k) = self.pick_cloud(pick) else {
                    return;
                };
                let b = SYNCED_BITS[bit as usize];
                if !supported(k.0).contains(b) {
                    return;
                }
                let v = self.cloud.get_mut(&k).unwrap();
                v.1 ^= b;
                let (c, on) = (v.0, v.1.contains(b));
                let key = (c, bit as usize);
                // Copies changed both ways before the daemon saw them: the
                // merge picks one (set wins), no single writer to check.
                let last = self.last_state();
                let ambiguous = last.entries.get(&hash(c)).is_some_and(|e| {
                    self.synced_copies(c).iter().any(|(m, id, f)| {
                        let base = e
                            .cloud
                            .iter()
                            .find(|x| x.mailbox == *m && x.id == *id)
                            .map_or(e.flags, |x| x.flags);
                        (*m, id) != (k.0, &k.1)
                            && supported(*m).contains(b)
                            && f.contains(b) != base.contains(b)
                            && f.contains(b) != on
                    })
                });
                // The daemon compares states: a write that leaves the copy
                // as its base says is no change it can see. With no
                // agreement yet, the offline first cycle gives the local
                // flags the win, and copies are merged as a union.
                let visible = match self.last_state().entries.get(&hash(c)) {
                    // A copy the daemon has not seen yet is compared with
                    // the agreed flags, whenever it appeared: no single
                    // writer to check.
                    Some(e)
                        if self.synced_copies(c).iter().any(|(m, id, _)| {
                            !e.cloud.iter().any(|b| b.mailbox == *m && b.id == *id)
                        }) =>
                    {
                        false
                    }
                    Some(e) => {
                        let base = e
                            .cloud
                            .iter()
                            .find(|b| b.mailbox == k.0 && b.id == k.1)
                            .map_or(e.flags, |b| b.flags);
                        base.contains(b) != on
                    }
                    None => self.mode == Mode::Online && self.synced_copies(c).len() == 1,
                };
                if k.0 < 2 && !ambiguous && visible {
                    self.cloud_claims.insert(key, (k.clone(), on));
                } else {
                    self.cloud_claims.remove(&key);
                }
                self.cloud_wrote(c, &[bit as usize]);
            }
            Op::CloudMove { pick } => {
                let Some(k) = self.pick_cloud(pick) else {
                    return;
                };
                let v = self.cloud.remove(&k).unwrap();
                let to = (k.0 + 2) % 4;
                if to < 2 {
                    self.cloud_wrote(v.0, &[0, 1, 2]);
                    self.cloud_claims.retain(|k, _| k.0 != v.0);
                }
                self.cloud.insert((to, k.1), v);
            }
            Op::CloudExpunge { pick } => {
                if let Some(k) = self.pick_cloud(pick) {
                    self.cloud.remove(&k);
                }
            }
            Op::LocalToggle { pick, bit } => {
                let Some(k) = self.pick_file(pick) else {
                    return;
                };
                let f = self.files.get_mut(&k).unwrap();
                f.1 ^= SYNCED_BITS[bit as usize];
                let (c, v) = (f.0, f.1.contains(SYNCED_BITS[bit as usize]));
                let b = SYNCED_BITS[bit as usize];
                // A write back to the local base is no change the daemon can
                // see: a pending agreed value then wins.
                // A copy the agreement does not know yet is compared with the
                // agreed flags when it shows up: that contests the write.
                let unseen_copy = |e: &LastEntry| {
                    self.synced_copies(c)
                        .iter()
                        .any(|(m, id, _)| !e.cloud.iter().any(|x| x.mailbox == *m && x.id == *id))
                };
                let visible = self.last_state().entries.get(&hash(c)).map(|e| {
                    !unseen_copy(e) && (e.local.contains(b) != v || e.flags.contains(b) == v)
                });
                self.local_wrote(c, &[bit as usize]);
                if self.files_of(c) > 1 || visible != Some(true) {
                    self.drop_claims(c);
                } else if self.dirty.contains(&(c, bit as usize)) {
                    self.claims.remove(&(c, bit as usize));
                } else {
                    self.claims.insert((c, bit as usize), v);
                }
            }
            Op::LocalSetT { pick } => {
                if let Some(k) = self.pick_file(pick) {
                    let f = self.files.get_mut(&k).unwrap();
                    f.1 |= Flags::DELETED;
                }
            }
            Op::LocalRemove { pick } => {
                let Some(k) = self.pick_file(pick) else {
                    return;
                };
                let (c, _) = self.files.remove(&k).unwrap();
                if self.files_of(c) == 0 {
                    self.removed.insert(c);
                } else {
                    self.local_wrote(c, &[0, 1, 2]);
                }
                self.drop_claims(c);
            }
            Op::LocalCopy { pick, to } => {
                let Some(k) = self.pick_file(pick) else {
                    return;
                };
                if self.absent[to] {
                    return;
                }
                let v = self.files[&k];
                self.local_wrote(v.0, &[0, 1, 2]);
                let name = format!("copy{}", self.next());
                self.files.insert((to, name), v);
            }
            Op::LocalDraft { maildir } => {
                if self.absent[maildir] {
                    return;
                }
                let c = self.next() as Content;
                self.drafts.insert(c);
                let name = format!("draft{c}");
                self.files.insert((maildir, name), (c, Flags::NONE));
            }
            Op::RemoveMaildir { maildir } => {
                let gone: Vec<Content> = self
                    .files
                    .iter()
                    .filter(|(k, _)| k.0 == maildir)
                    .map(|(_, v)| v.0)
                    .collect();
                self.files.retain(|k, _| k.0 != maildir);
                self.absent[maildir] = true;
                for c in gone {
                    self.drop_claims(c);
                }
            }
            Op::Reroute { pick, route } => {
                let Some(k) = self.pick_cloud(pick) else {
                    return;
                };
                let c = self.cloud[&k].0;
                let r = match route {
                    0 | 1 => Route::Maildir(route as usize),
                    _ => Route::Failed,
                };
                self.routes.insert(c, r);
            }
            Op::Cycle { fail, incomplete } => self.cycle(fail, incomplete),
            Op::WatcherCycle { fail } => self.watcher_cycle(fail),
            Op::BatchCycle {
                fail,
                mailbox,
                keep,
                salt,
            } => self.batch_cycle(fail, mailbox, keep, salt),
            Op::Restart {
                keep_state,
                offline,
            } => {
                if !keep_state {
                    self.last = serde_json::to_string(&LastState::default()).unwrap();
                    // First sight: copies that disagree are merged as a
                    // union, and offline the local flags win.
                    self.claims.clear();
                    self.cloud_claims.clear();
                }
                if offline {
                    // First sight then gives the local flags the win.
                    let last = self.last_state();
                    self.cloud_claims
                        .retain(|k, _| last.entries.contains_key(&hash(k.0)));
                }
                self.mode = if offline {
                    Mode::OfflineFirstCycle
                } else {
                    Mode::Online
                };
                self.cached = [None, None];
                self.sent.clear();
            }
        }
    }

    fn input(&self, incomplete: Option<usize>) -> PlanInput {
        let info = |mailbox: usize| MailboxInfo {
            supported: supported(mailbox),
            delete_action: if mailbox == 0 {
                DeleteAction::Archive
            } else {
                DeleteAction::Delete
            },
            complete: incomplete != Some(mailbox),
            mode: self.mode,
        };
        PlanInput {
            mailboxes: vec![info(0), info(1)],
            maildirs: self
                .absent
                .iter()
                .map(|a| MaildirInfo { present: !a })
                .collect(),
            cloud: self
                .cloud
                .iter()
                .filter(|(k, _)| k.0 < 2 && Some(k.0) != incomplete)
                .map(|(k, v)| CloudMsg {
                    mailbox: k.0,
                    id: k.1.clone(),
                    hash: hash(v.0),
                    flags: v.1,
                    route: self.route(k.0, v.0),
                })
                .collect(),
            local: self
                .files
                .iter()
                .map(|(k, v)| LocalFile {
                    maildir: k.0,
                    name: k.1.clone(),
                    hash: hash(v.0),
                    flags: v.1,
                })
                .collect(),
            last: self.last_state(),
            known_cloud_content: self.known.clone(),
        }
    }

    /// The planner input of a cycle that lists nothing: the cached picture
    /// of each folder (a folder never listed since the start is incomplete).
    fn cached_input(&self) -> PlanInput {
        let mut input = self.input(None);
        for (m, cached) in self.cached.iter().enumerate() {
            input.mailboxes[m].complete = cached.is_some();
        }
        input.cloud = self
            .cached
            .iter()
            .enumerate()
            .flat_map(|(m, c)| c.iter().flatten().map(move |(id, v)| (m, id, v)))
            .map(|(m, id, v)| CloudMsg {
                mailbox: m,
                id: id.clone(),
                hash: hash(v.0),
                flags: v.1,
                route: self.route(m, v.0),
            })
            .collect();
        input
    }

    /// Folder `m` was listed as `input` shows it: cache the picture; sent
    /// deletions are confirmed or not by it.
    fn listed(&mut self, input: &PlanInput, m: usize) {
        self.cached[m] = Some(
            input
                .cloud
                .iter()
                .filter(|c| c.mailbox == m)
                .map(|c| (c.id.clone(), (content(&c.hash), c.flags)))
                .collect(),
        );
        self.sent.retain(|k| k.0 != m);
    }

    /// One full daemon cycle: list, plan, execute (some actions fail), persist.
    fn cycle(&mut self, fail: u64, incomplete: Option<usize>) {
        let input = self.input(incomplete);
        for m in 0..2 {
            if incomplete != Some(m) {
                self.listed(&input, m);
            }
        }
        self.run_cycle(input, fail, false);
    }

    /// A batch cycle: `mailbox` is listed (its picture cached in full), but
    /// only a random part of it has content yet; it is incomplete.
    fn batch_cycle(&mut self, fail: u64, mailbox: usize, keep: u8, salt: u8) {
        let mut input = self.input(None);
        for m in 0..2 {
            self.listed(&input, m);
        }
        let stored = |id: &str| {
            let h = id.bytes().fold(u32::from(salt), |a, b| {
                a.wrapping_mul(31).wrapping_add(u32::from(b))
            });
            (h % 256) < u32::from(keep)
        };
        input
            .cloud
            .retain(|c| c.mailbox != mailbox || stored(&c.id));
        input.mailboxes[mailbox].complete = false;
        self.run_cycle(input, fail, false);
    }

    /// A cycle woken by a local change: no listing.
    fn watcher_cycle(&mut self, fail: u64) {
        let input = self.cached_input();
        self.run_cycle(input, fail, true);
    }

    fn run_cycle(&mut self, input: PlanInput, fail: u64, watcher: bool) {
        let plan = plan(&input);
        let before: BTreeSet<Content> = self.files.values().map(|f| f.0).collect();
        let drafts_before: BTreeSet<(usize, String)> = self
            .files
            .iter()
            .filter(|(_, v)| self.drafts.contains(&v.0))
            .map(|(k, _)| k.clone())
            .collect();

        let mut outcomes = Vec::new();
        let mut attempted = Vec::new();
        for (i, action) in plan.actions.iter().enumerate() {
            // (4) No cloud delete without a local deletion request.
            if let Action::DeleteCloud { hash, .. } = action {
                assert!(
                    self.requested(content(hash)),
                    "delete without request: {action:?}"
                );
            }
            let held = match action {
                Action::DeleteCloud { mailbox, id, .. } => {
                    self.sent.contains(&(*mailbox, id.clone()))
                }
                _ => false,
            };
            let failed = held || fail >> (i % 64) & 1 == 1;
            attempted.push(!held && action.is_cloud());
            let done = !failed && self.execute(action);
            if trace() {
                let what = if held {
                    "HELD"
                } else if done {
                    "ok  "
                } else {
                    "FAIL"
                };
                eprintln!("  {what} {action:?}");
            }
            if !done {
                outcomes.push(Outcome::Failed);
                continue;
            }
            // A push from a cycle that did not list lands after any cloud
            // write it did not see: that write is overwritten, the later
            // writer wins.
            if watcher
                && let Action::SetCloudFlags {
                    hash, set, clear, ..
                } = action
            {
                for (b, bit) in SYNCED_BITS.iter().enumerate() {
                    if (*set | *clear).contains(*bit) {
                        self.cloud_claims.remove(&(content(hash), b));
                    }
                }
            }
            outcomes.push(Outcome::Done);
        }
        // The daemon's picture now shows its actions' effects.
        for e in cloud_effects(&plan, &outcomes, &attempted) {
            match e {
                CloudEffect::Flags {
                    mailbox,
                    id,
                    set,
                    clear,
                } => {
                    if let Some(v) = self.cached[mailbox].as_mut().and_then(|c| c.get_mut(&id)) {
                        v.1 = (v.1 & !clear) | set;
                    }
                }
                CloudEffect::DeletionSent { mailbox, id } => {
                    self.sent.insert((mailbox, id));
                }
            }
        }

        // (3) No message leaves the maildirs while a copy the daemon knows of
        // is still in a synced folder.
        let last = &input.last;
        for &c in &before {
            if self.files_of(c) > 0 {
                continue;
            }
            let listed: Vec<(usize, &str)> = input
                .cloud
                .iter()
                .filter(|m| m.hash == hash(c))
                .map(|m| (m.mailbox, m.id.as_str()))
                .collect();
            // What the daemon knows of: the cloud when it listed, its own
            // picture when it did not.
            let known: Vec<(usize, String, Flags)> = if watcher {
                input
                    .cloud
                    .iter()
                    .filter(|m| m.hash == hash(c))
                    .map(|m| (m.mailbox, m.id.clone(), m.flags))
                    .collect()
            } else {
                self.synced_copies(c)
            };
            for (mailbox, id, _) in known {
                let agreed = last
                    .entries
                    .get(&hash(c))
                    .is_some_and(|e| e.cloud.iter().any(|b| b.mailbox == mailbox && b.id == id));
                assert!(
                    !agreed && !listed.contains(&(mailbox, id.as_str())),
                    "content {c} removed locally while still in folder {mailbox}"
                );
            }
            self.drop_claims(c);
            self.cloud_claims.retain(|k, _| k.0 != c);
        }
        // Local-only files are never touched.
        for k in drafts_before {
            assert!(self.files.contains_key(&k), "draft {k:?} removed");
        }

        let next = next_state(&input, &plan, &outcomes);
        if trace() {
            eprintln!("  warnings {:?}", plan.warnings);
            eprintln!("  cloud {:?}", self.cloud);
            eprintln!("  files {:?}", self.files);
            eprintln!("  last {:?}", next.entries);
        }
        self.last = serde_json::to_string(&next).unwrap();
        self.mode = Mode::Online;
        self.known.extend(input.cloud.iter().map(|m| m.hash));
        // Without an agreement the next sight is a first sight, with its own
        // rules (union of copies, or offline local wins): no claim holds.
        self.claims
            .retain(|k, _| next.entries.contains_key(&hash(k.0)));
        self.cloud_claims
            .retain(|k, _| next.entries.contains_key(&hash(k.0)));
        // Cloud writes are now reflected in every copy's base.
        for (h, e) in &next.entries {
            let c = content(h);
            let all_based = self.synced_copies(c).iter().all(|(mailbox, id, flags)| {
                e.cloud
                    .iter()
                    .any(|b| b.mailbox == *mailbox && &b.id == id && b.flags == *flags)
            });
            if all_based {
                self.dirty.retain(|k| k.0 != c);
            }
        }
    }

    /// The executor, against the simulated world; false when the action
    /// could not take effect (a message the daemon's picture still shows
    /// was expunged). Ids survive moves, as Graph immutable ids and Gmail
    /// ids do.
    fn execute(&mut self, action: &Action) -> bool {
        match action {
            Action::Deliver {
                hash,
                maildir,
                flags,
            } => {
                let name = format!("new{}", self.next());
                self.absent[*maildir] = false;
                self.files.insert((*maildir, name), (content(hash), *flags));
                self.removed.remove(&content(hash));
            }
            Action::SetLocalFlags {
                maildir,
                name,
                flags,
                ..
            } => {
                let f = self.files.get_mut(&(*maildir, name.clone())).unwrap();
                f.1 = *flags;
            }
            Action::MoveLocal {
                hash,
                from_maildir,
                name,
                to_maildir,
                flags,
            } => {
                self.files.remove(&(*from_maildir, name.clone())).unwrap();
                let name = format!("moved{}", self.next());
                self.absent[*to_maildir] = false;
                self.files
                    .insert((*to_maildir, name), (content(hash), *flags));
            }
            Action::RemoveLocal { maildir, name, .. } => {
                self.files.remove(&(*maildir, name.clone())).unwrap();
            }
            Action::SetCloudFlags {
                mailbox,
                id,
                set,
                clear,
                ..
            } => {
                assert_eq!(
                    (*set | *clear) & !supported(*mailbox),
                    Flags::NONE,
                    "unsupported bits pushed"
                );
                let at = [*mailbox, (mailbox + 2) % 4].map(|m| (m, id.clone()));
                let Some(k) = at.into_iter().find(|k| self.cloud.contains_key(k)) else {
                    return false;
                };
                let m = self.cloud.get_mut(&k).expect("present");
                m.1 = (m.1 & !*clear) | *set;
            }
            Action::DeleteCloud { mailbox, id, .. } => {
                match self.cloud.remove(&(*mailbox, id.clone())) {
                    Some(v) => {
                        self.cloud.insert((mailbox + 2, id.clone()), v);
                    }
                    // Already where the deletion puts it.
                    None => return self.cloud.contains_key(&(mailbox + 2, id.clone())),
                }
            }
        }
        true
    }

    /// (1) and (2): after quiet cycles both sides hold what the semantics
    /// define.
    fn check_converged(&mut self) {
        for _ in 0..4 {
            self.cycle(0, None);
        }
        let input = self.input(None);
        let p = plan(&input);
        assert_eq!(p.actions, vec![], "not quiescent");

        let contents: BTreeSet<Content> = self.files.values().map(|f| f.0).collect();
        for c in &contents {
            if self.synced_copies(*c).is_empty() {
                assert!(self.drafts.contains(c), "stale local content {c}");
            }
        }
        let in_cloud: BTreeSet<Content> = self
            .cloud
            .iter()
            .filter(|(k, _)| k.0 < 2)
            .map(|(_, v)| v.0)
            .collect();
        for c in in_cloud {
            let copies = self.synced_copies(c);
            let files: Vec<(usize, Flags)> = self
                .files
                .iter()
                .filter(|(_, v)| v.0 == c)
                .map(|(k, v)| (k.0, v.1))
                .collect();
            assert_eq!(files.len(), 1, "content {c} has files {files:?}");
            let (maildir, flags) = files[0];
            assert!(!flags.contains(Flags::DELETED));
            let dest = copies
                .iter()
                .find_map(|(mailbox, _, _)| match self.route(*mailbox, c) {
                    Route::Maildir(m) => Some(m),
                    Route::Failed => None,
                });
            if let Some(m) = dest {
                assert_eq!(maildir, m, "content {c} not in its routed maildir");
            }
            for (mailbox, id, cf) in &copies {
                let sup = supported(*mailbox);
                assert_eq!(
                    flags & sup,
                    *cf,
                    "content {c} flags differ from {mailbox}/{id}"
                );
            }
            for (b, bit) in SYNCED_BITS.iter().enumerate() {
                if let Some(&v) = self.claims.get(&(c, b))
                    && copies.iter().any(|(m, _, _)| supported(*m).contains(*bit))
                {
                    assert_eq!(
                        flags.contains(*bit),
                        v,
                        "local change to bit {b} of {c} lost"
                    );
                }
                if let Some((k, v)) = self.cloud_claims.get(&(c, b))
                    && self.cloud.contains_key(k)
                {
                    assert_eq!(
                        flags.contains(*bit),
                        *v,
                        "cloud change to bit {b} of {c} lost"
                    );
                }
            }
        }
    }
}

/// Set `MODEL_TRACE=1` to print every op, action and resulting world.
fn trace() -> bool {
    std::env::var_os("MODEL_TRACE").is_some()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn model_converges_and_loses_nothing(ops in proptest::collection::vec(op(), 1..60)) {
        let mut m = Model::new();
        for op in &ops {
            m.apply(op);
        }
        m.check_converged();
    }

    /// An initial sync fed to the planner in random batches (random splits
    /// of each folder, in random order, with failing actions) ends where one
    /// big cycle ends: the same files, in the same maildirs, with the same
    /// flags, and the same cloud.
    #[test]
    fn batches_reach_the_state_of_one_big_cycle(
        mails in proptest::collection::vec((0..2usize, proptest::option::of(any::<u8>()), any::<u8>()), 1..40),
        batches in proptest::collection::vec((any::<u64>(), 0..2usize, any::<u8>(), any::<u8>()), 1..8),
    ) {
        let world = |batched: bool| {
            let mut m = Model::new();
            for (mailbox, reuse, flags) in &mails {
                m.apply(&Op::NewMail { mailbox: *mailbox, reuse: *reuse, flags: *flags });
            }
            if batched {
                for (fail, mailbox, keep, salt) in &batches {
                    m.apply(&Op::BatchCycle { fail: *fail, mailbox: *mailbox, keep: *keep, salt: *salt });
                }
            }
            for _ in 0..3 {
                m.cycle(0, None);
            }
            let mut files: Vec<(Content, usize, Flags)> =
                m.files.iter().map(|(k, v)| (v.0, k.0, v.1)).collect();
            files.sort();
            let cloud: Vec<((usize, String), (Content, Flags))> =
                m.cloud.iter().map(|(k, v)| (k.clone(), *v)).collect();
            (files, cloud)
        };
        prop_assert_eq!(world(true), world(false));
    }
}
