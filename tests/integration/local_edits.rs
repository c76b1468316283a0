//! Local edits against the emulated Office365 while cycles run without
//! listing again (the watcher's cycles): the engine must plan against the
//! cloud as its own actions left it, so a user's change is never taken back
//! locally or in the cloud, and a deletion is sent exactly once. Tested
//! through the engine (deterministic) and through the daemon with its real
//! watcher, edits 50 ms, 500 ms and 5 s apart, the maildir sampled all along.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cloud_mdir_sync::config;
use cloud_mdir_sync::daemon;
use cloud_mdir_sync::sync::engine::Folder;
use cloud_mdir_sync::types::Flags;
use serde_json::{Value, json};

use crate::graph::Cloud;
use crate::util::{Home, build_engine};

const USER: &str = "user@example.com";
const SYNCED: Flags = Flags(Flags::REPLIED.0 | Flags::READ.0 | Flags::FLAGGED.0);

/// What the user does to a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Read,
    Flag,
    Replied,
    Trash,
    Unlink,
}

const KINDS: [Kind; 5] = [
    Kind::Read,
    Kind::Flag,
    Kind::Replied,
    Kind::Trash,
    Kind::Unlink,
];

impl Kind {
    /// The bit the edit sets (none for an unlink).
    fn bit(self) -> Flags {
        match self {
            Kind::Read => Flags::READ,
            Kind::Flag => Flags::FLAGGED,
            Kind::Replied => Flags::REPLIED,
            Kind::Trash => Flags::DELETED,
            Kind::Unlink => Flags::NONE,
        }
    }

    /// True when the message leaves the cloud folder.
    fn deletes(self) -> bool {
        matches!(self, Kind::Trash | Kind::Unlink)
    }
}

/// A config with one maildir and the emulated inbox polled every `poll` s.
pub(crate) fn world(poll: u32) -> (Home, config::Loaded) {
    let home = Home::new();
    let loaded = home.config(&format!(
        "inbox = MailDir(\"~/mail/inbox\")\n\
         box = Office365(\"Inbox\", Office365_Account(user=\"{USER}\"))\n\
         box.poll_interval = {poll}\n"
    ));
    (home, loaded)
}

fn folder(c: &Cloud) -> Folder {
    c.inbox_folder(&c.account())
}

/// The maildir's letters for `flags`.
fn letters(flags: Flags) -> String {
    let s = flags.to_string();
    if s == "-" { String::new() } else { s }
}

/// A file name's base (before `:2,`) and its flags.
fn parse(name: &str) -> (String, Flags) {
    let (base, info) = name.split_once(":2,").unwrap_or((name, ""));
    let mut f = Flags::NONE;
    for ch in info.chars() {
        f |= match ch {
            'F' => Flags::FLAGGED,
            'R' => Flags::REPLIED,
            'S' => Flags::READ,
            'T' => Flags::DELETED,
            _ => Flags::NONE,
        };
    }
    (base.to_string(), f)
}

/// Every file of the maildir: base name → (path, flags).
pub(crate) fn files(md: &Path) -> BTreeMap<String, (PathBuf, Flags)> {
    let mut out = BTreeMap::new();
    for sub in ["new", "cur"] {
        let Ok(rd) = std::fs::read_dir(md.join(sub)) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let (base, flags) = parse(&name);
            out.insert(base, (e.path(), flags));
        }
    }
    out
}

/// The Message-ID header of a maildir file.
fn message_id(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().take_while(|l| !l.is_empty()).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("message-id")
            .then(|| v.trim().to_string())
    })
}

/// Base name → cloud id, matched through the Message-ID.
async fn ids_by_base(c: &Cloud, md: &Path) -> BTreeMap<String, String> {
    let by_mid: HashMap<String, String> = c
        .messages(false)
        .await
        .into_iter()
        .filter_map(|m| {
            Some((
                m["internetMessageId"].as_str()?.to_string(),
                m["id"].as_str()?.to_string(),
            ))
        })
        .collect();
    files(md)
        .into_iter()
        .filter_map(|(base, (path, _))| Some((base, by_mid.get(&message_id(&path)?)?.clone())))
        .collect()
}

/// Apply the user's edit to a file; returns the flags it now carries (None
/// once unlinked). `allowed` learns the new flags before the rename, so a
/// sampler never mistakes the user's own value for an intrusion.
fn edit(
    md: &Path,
    base: &str,
    kind: Kind,
    allowed: Option<&Mutex<HashMap<String, HashSet<Flags>>>>,
) -> Option<Flags> {
    let (path, flags) = files(md).remove(base).expect("file to edit");
    if kind == Kind::Unlink {
        std::fs::remove_file(&path).expect("unlink");
        return None;
    }
    let to = flags | kind.bit();
    if let Some(a) = allowed {
        a.lock()
            .unwrap()
            .entry(base.to_string())
            .or_default()
            .insert(to);
    }
    let new = md.join("cur").join(format!("{base}:2,{}", letters(to)));
    std::fs::rename(&path, &new).expect("rename");
    Some(to)
}

/// Base names whose file lacks every bit of `bit` (all of them for none).
fn without(md: &Path, bit: Flags) -> Vec<String> {
    files(md)
        .into_iter()
        .filter(|(_, (_, f))| bit.is_empty() || !f.contains(bit))
        .map(|(b, _)| b)
        .collect()
}

/// Move requests served (direct and inside `$batch`), all of them or only
/// the successful ones.
async fn moves(c: &Cloud, only_ok: bool) -> u64 {
    let s = c.stats().await;
    let Some(routes) = s["routes"].as_object() else {
        return 0;
    };
    routes
        .iter()
        .filter(|(k, _)| k.contains("/move"))
        .flat_map(|(_, v)| v["statuses"].as_object().cloned().unwrap_or_default())
        .filter(|(status, _)| !only_ok || status.starts_with('2'))
        .map(|(_, n)| n.as_u64().unwrap_or(0))
        .sum()
}

/// What must hold for an edited message, locally and in the cloud.
#[derive(Debug)]
struct Expect {
    base: String,
    id: String,
    kind: Kind,
    /// The file's flags after the edit (None: unlinked).
    local: Option<Flags>,
}

/// Differences between what the user did and what the two sides hold.
/// `confirmed`: the folder was listed since the last edit, so trashed
/// files must be gone too.
async fn mismatches(c: &Cloud, md: &Path, expects: &[Expect], confirmed: bool) -> Vec<String> {
    let cloud = c.expected("Inbox").await;
    let local = files(md);
    let mut out = Vec::new();
    for x in expects {
        let file = local.get(&x.base).map(|(_, f)| *f);
        let in_inbox = cloud.get(&x.id).map(|(f, _, _)| *f);
        if x.kind.deletes() {
            if in_inbox.is_some() {
                out.push(format!("{x:?}: still in the cloud inbox"));
            }
            let want = if confirmed || x.kind == Kind::Unlink {
                None
            } else {
                x.local
            };
            if file != want {
                out.push(format!("{x:?}: local file {file:?}, want {want:?}"));
            }
        } else {
            if file != x.local {
                out.push(format!("{x:?}: local file {file:?}"));
            }
            if in_inbox != x.local.map(|f| f & SYNCED) {
                out.push(format!("{x:?}: cloud {in_inbox:?}"));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cycle_without_listing_never_takes_back_a_pushed_change() {
    let c = Cloud::start().await;
    c.populate("Inbox", 40).await;
    let (home, loaded) = world(15);
    let md = home.path().join("mail/inbox");
    let mut e = build_engine(&loaded, vec![folder(&c)], false).await;
    assert!(e.cycle().await.expect("cycle").is_clean());
    let ids = ids_by_base(&c, &md).await;
    c.reset_stats().await;
    let mut used = HashSet::new();
    let mut expects = Vec::new();
    for kind in KINDS {
        let mut pick = without(&md, kind.bit())
            .into_iter()
            .filter(|b| !used.contains(b));
        let (a, b) = (pick.next().expect("A"), pick.next().expect("B"));
        used.extend([a.clone(), b.clone()]);
        // A is edited and pushed; then B is edited and a cycle that does
        // not list the folder again runs.
        let a_flags = edit(&md, &a, kind, None);
        let r = e.cycle_with(&[false]).await.expect("push A");
        assert!(r.is_clean(), "{kind:?}: {r:?}");
        let b_flags = edit(&md, &b, kind, None);
        let r = e.cycle_with(&[false]).await.expect("push B");
        assert!(r.is_clean(), "{kind:?}: {r:?}");
        expects.push(Expect {
            id: ids[&a].clone(),
            base: a,
            kind,
            local: a_flags,
        });
        expects.push(Expect {
            base: b.clone(),
            id: ids[&b].clone(),
            kind,
            local: b_flags,
        });
        let wrong = mismatches(&c, &md, &expects[expects.len() - 2..], false).await;
        assert!(
            wrong.is_empty(),
            "after the cycles without listing: {wrong:#?}"
        );
        // One more cycle without listing changes nothing.
        let r = e.cycle_with(&[false]).await.expect("idle");
        assert_eq!(r.actions, r.held, "{kind:?}: {r:?}");
        // The next poll confirms the deletions and keeps every user flag.
        let r = e.cycle().await.expect("poll");
        assert!(r.is_clean(), "{kind:?}: {r:?}");
        let wrong = mismatches(&c, &md, &expects, true).await;
        assert!(wrong.is_empty(), "after the poll: {wrong:#?}");
        let r = e.cycle().await.expect("quiet poll");
        assert_eq!(r.actions, 0, "{kind:?}: {r:?}");
    }
    // Two trashed and two unlinked messages: four moves, no more.
    assert_eq!(moves(&c, false).await, 4, "{}", c.stats().await);
}

/// The maildir sampled every few milliseconds: every file must carry flags
/// the user gave it (or the ones it was delivered with).
struct Sampler {
    allowed: Arc<Mutex<HashMap<String, HashSet<Flags>>>>,
    seen_wrong: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Sampler {
    fn start(md: &Path) -> Sampler {
        let allowed: HashMap<String, HashSet<Flags>> = files(md)
            .into_iter()
            .map(|(b, (_, f))| (b, HashSet::from([f])))
            .collect();
        let allowed = Arc::new(Mutex::new(allowed));
        let seen_wrong = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (allowed, seen_wrong, stop) = (allowed.clone(), seen_wrong.clone(), stop.clone());
            let md = md.to_path_buf();
            std::thread::spawn(move || {
                let mut samples = 0;
                while !stop.load(Ordering::Relaxed) {
                    for (base, (_, flags)) in files(&md) {
                        let mut allowed = allowed.lock().unwrap();
                        // A file delivered since: its first flags are the cloud's.
                        let ok = allowed
                            .entry(base.clone())
                            .or_insert_with(|| HashSet::from([flags]))
                            .contains(&flags);
                        if !ok {
                            let mut wrong = seen_wrong.lock().unwrap();
                            let what = format!("{base} with {flags}");
                            if !wrong.contains(&what) {
                                wrong.push(what);
                            }
                        }
                    }
                    samples += 1;
                    std::thread::sleep(Duration::from_millis(5));
                }
                samples
            })
        };
        Sampler {
            allowed,
            seen_wrong,
            stop,
            thread: Some(thread),
        }
    }

    /// Stop sampling: the number of samples and the intrusions seen.
    fn finish(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let n = self.thread.take().map_or(0, |t| t.join().expect("sampler"));
        let wrong = self.seen_wrong.lock().unwrap().clone();
        (n, wrong)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_keeps_every_edit_made_while_it_runs() {
    let c = Cloud::start().await;
    c.populate("Inbox", 80).await;
    let (home, loaded) = world(2);
    let md = home.path().join("mail/inbox");
    let (tx, rx) = tokio::sync::watch::channel(false);
    let opts = daemon::Options::default();
    let task = tokio::spawn(daemon::run(loaded, opts, vec![folder(&c)], rx));
    let deadline = Instant::now() + Duration::from_secs(60);
    while files(&md).len() < 80 {
        assert!(Instant::now() < deadline, "initial sync did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let the first cycle record its agreement.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ids = ids_by_base(&c, &md).await;
    c.reset_stats().await;
    let sampler = Sampler::start(&md);

    // For each spacing, every kind of edit on a pair of messages, A then B.
    let mut used = HashSet::new();
    let mut plans = Vec::new();
    for gap in [50u64, 500, 5000] {
        let mut pairs = Vec::new();
        for kind in KINDS {
            let mut pick = without(&md, kind.bit())
                .into_iter()
                .filter(|b| !used.contains(b));
            let (a, b) = (pick.next().expect("A"), pick.next().expect("B"));
            used.extend([a.clone(), b.clone()]);
            pairs.push((kind, a, b));
        }
        plans.push((Duration::from_millis(gap), pairs));
    }
    let mut drivers = Vec::new();
    for (gap, pairs) in plans {
        let md = md.clone();
        let allowed = sampler.allowed.clone();
        drivers.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for second in [false, true] {
                for (kind, a, b) in &pairs {
                    let base = if second { b } else { a };
                    let local = edit(&md, base, *kind, Some(&allowed));
                    out.push((base.clone(), *kind, local));
                }
                tokio::time::sleep(gap).await;
            }
            out
        }));
    }
    let mut expects = Vec::new();
    for d in drivers {
        for (base, kind, local) in d.await.expect("driver") {
            expects.push(Expect {
                id: ids[&base].clone(),
                base,
                kind,
                local,
            });
        }
    }
    // Converged, then still so after two more polls.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let wrong = mismatches(&c, &md, &expects, true).await;
        if wrong.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "never converged: {wrong:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let wrong = mismatches(&c, &md, &expects, true).await;
    assert!(wrong.is_empty(), "undone after convergence: {wrong:#?}");
    let (samples, intrusions) = sampler.finish();
    assert!(samples > 100, "sampler barely ran: {samples}");
    assert!(
        intrusions.is_empty(),
        "files showed flags the user never gave them: {intrusions:#?}"
    );
    // Three spacings, two trashed and two unlinked messages each.
    assert_eq!(moves(&c, false).await, 12, "{}", c.stats().await);
    tx.send(true).expect("shutdown");
    task.await.expect("join").expect("daemon");
}

/// A small seeded generator for the soak's choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// A second Graph client that retries through the injected faults (a fault
/// never reaches the handler, so a retry cannot apply a change twice).
async fn second_client(c: &Cloud, method: reqwest::Method, path: &str, body: Value) -> bool {
    let http = reqwest::Client::new();
    let url = format!("{}/graph.microsoft.com/v1.0{path}", c.h.base_url());
    for _ in 0..50 {
        let resp = http
            .request(method.clone(), &url)
            .bearer_auth(c.token())
            .header("Prefer", "IdType=\"ImmutableId\"")
            .json(&body)
            .send()
            .await;
        match resp {
            Ok(r) if r.status().is_success() => return true,
            Ok(r) if r.status().as_u16() == 404 => return false,
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    panic!("second client: {method} {path} kept failing");
}

/// Concurrent-edit soak: while the daemon runs with faults on every Graph
/// route, a mail client edits half of the inbox locally (S and F toggles,
/// R, T, unlinks; `new/` → `cur/`) and a second client edits the other half
/// in the cloud (read and flag toggles, moves out of the inbox, new mail),
/// never the same message from both sides. Seeded (`CMS_SOAK_SEED`), 120 s
/// by default (`CMS_SOAK_SECS` for longer runs by hand). After the faults
/// stop and the daemon quiesces: every edit is on both sides, no file was
/// ever seen with flags nobody gave it, and each local deletion cost
/// exactly one successful move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_concurrent_edits_under_faults() {
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let seed = env("CMS_SOAK_SEED", 1);
    let secs = env("CMS_SOAK_SECS", 120);
    let c = Cloud::with(fake_cloud::Options {
        seed,
        ..fake_cloud::Options::default()
    })
    .await;
    c.populate("Inbox", 200).await;
    let (home, loaded) = world(2);
    let md = home.path().join("mail/inbox");
    let (tx, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(daemon::run(
        loaded,
        daemon::Options::default(),
        vec![folder(&c)],
        rx,
    ));
    let deadline = Instant::now() + Duration::from_secs(60);
    while files(&md).len() < 200 {
        assert!(Instant::now() < deadline, "initial sync did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ids = ids_by_base(&c, &md).await;
    let start = files(&md);
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    // Even positions are the mail client's, odd ones the second client's.
    let mut local: BTreeMap<String, Option<Flags>> = BTreeMap::new();
    let mut remote: Vec<String> = Vec::new();
    for (i, (base, (_, flags))) in start.iter().enumerate() {
        if i % 2 == 0 {
            local.insert(base.clone(), Some(*flags));
        } else {
            remote.push(ids[base].clone());
        }
    }
    let remote_base: HashMap<String, String> =
        ids.iter().map(|(b, id)| (id.clone(), b.clone())).collect();
    c.reset_stats().await;
    for f in [
        json!({"route": "messages", "kind": "status", "status": 503, "probability": 0.08}),
        json!({"route": "messages", "kind": "status", "status": 429, "retry_after": "1", "probability": 0.04}),
        json!({"route": "messages", "kind": "reset", "probability": 0.04}),
        json!({"route": "$batch", "kind": "status", "status": 504, "probability": 0.06}),
        json!({"route": "*/$value", "kind": "truncate", "probability": 0.1}),
        json!({"route": "*/messages/delta", "kind": "bad_json", "probability": 0.05}),
    ] {
        c.fault(f).await;
    }
    let sampler = Sampler::start(&md);

    let (mut local_edits, mut local_deletes, mut cloud_edits, mut cloud_moves, mut new_mail) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut remote_flags: HashMap<String, Flags> = c
        .expected("Inbox")
        .await
        .into_iter()
        .map(|(id, (f, _, _))| (id, f))
        .collect();
    let until = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < until {
        if rng.chance(60) {
            // The mail client.
            let live: Vec<String> = local
                .iter()
                .filter(|(_, f)| f.is_some_and(|f| !f.contains(Flags::DELETED)))
                .map(|(b, _)| b.clone())
                .collect();
            if live.is_empty() {
                continue;
            }
            let base = live[rng.below(live.len())].clone();
            let (path, now) = files(&md).remove(&base).expect("local file");
            let roll = rng.below(100);
            let to = match roll {
                0..40 => Some(now ^ Flags::READ),
                40..70 => Some(now ^ Flags::FLAGGED),
                70..80 => Some(now | Flags::REPLIED),
                80..90 => Some(now | Flags::DELETED),
                _ => None,
            };
            match to {
                Some(to) => {
                    sampler
                        .allowed
                        .lock()
                        .unwrap()
                        .entry(base.clone())
                        .or_default()
                        .insert(to);
                    let new = md.join("cur").join(format!("{base}:2,{}", letters(to)));
                    std::fs::rename(&path, &new).expect("rename");
                    local_deletes += u64::from(to.contains(Flags::DELETED));
                }
                None => {
                    std::fs::remove_file(&path).expect("unlink");
                    local_deletes += 1;
                }
            }
            local_edits += 1;
            local.insert(base, to);
        } else {
            // The second client.
            let roll = rng.below(100);
            if roll < 10 || remote.is_empty() {
                let n = c
                    .deliver(
                        "Inbox",
                        &format!(
                            "From: a@example.org\r\nTo: {USER}\r\nSubject: soak {new_mail}\r\n\
                             Message-ID: <soak-{seed}-{new_mail}@example.org>\r\n\
                             Date: Wed, 02 Dec 2026 10:00:00 +0000\r\n\r\nbody {new_mail}\r\n"
                        ),
                    )
                    .await;
                let _ = n;
                new_mail += 1;
            } else {
                let i = rng.below(remote.len());
                let id = remote[i].clone();
                let now = remote_flags.get(&id).copied().unwrap_or(Flags::NONE);
                let (body, to) = match roll {
                    10..50 => (
                        json!({"isRead": !now.contains(Flags::READ)}),
                        Some(now ^ Flags::READ),
                    ),
                    50..90 => {
                        let on = !now.contains(Flags::FLAGGED);
                        let status = if on { "flagged" } else { "notFlagged" };
                        (
                            json!({"flag": {"flagStatus": status}}),
                            Some(now ^ Flags::FLAGGED),
                        )
                    }
                    _ => (json!({"destinationId": "archive"}), None),
                };
                match to {
                    Some(to) => {
                        sampler
                            .allowed
                            .lock()
                            .unwrap()
                            .entry(remote_base[&id].clone())
                            .or_default()
                            .insert(to);
                        if second_client(
                            &c,
                            reqwest::Method::PATCH,
                            &format!("/me/messages/{id}"),
                            body,
                        )
                        .await
                        {
                            remote_flags.insert(id, to);
                            cloud_edits += 1;
                        }
                    }
                    None => {
                        if second_client(
                            &c,
                            reqwest::Method::POST,
                            &format!("/me/messages/{id}/move"),
                            body,
                        )
                        .await
                        {
                            cloud_moves += 1;
                        }
                        remote.swap_remove(i);
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50 + rng.below(250) as u64)).await;
    }
    let faults = c.stats().await["faults_fired"].as_u64().unwrap_or(0);
    let by_kind: Vec<String> = c.ctl(reqwest::Method::GET, "faults", None).await["faults"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|f| {
            let what = f["status"]
                .as_u64()
                .map_or(f["kind"].to_string(), |s| s.to_string());
            format!("{} on {}: {}", what, f["route"], f["fired"])
        })
        .collect();
    c.clear_faults().await;

    // Quiescence: both sides agree with what the two clients did.
    let check = || async {
        let cloud = c.expected("Inbox").await;
        let here = files(&md);
        let mut wrong = Vec::new();
        for (base, want) in &local {
            let file = here.get(base).map(|(_, f)| *f);
            let in_cloud = cloud.get(&ids[base]).map(|(f, _, _)| *f);
            match want {
                Some(f) if !f.contains(Flags::DELETED) => {
                    if file != Some(*f) || in_cloud != Some(*f & SYNCED) {
                        wrong.push(format!(
                            "{base}: user {f}, file {file:?}, cloud {in_cloud:?}"
                        ));
                    }
                }
                _ => {
                    if file.is_some() || in_cloud.is_some() {
                        wrong.push(format!(
                            "{base}: deleted, file {file:?}, cloud {in_cloud:?}"
                        ));
                    }
                }
            }
        }
        // Every inbox message is one file with the cloud's flags.
        let mut by_mid: HashMap<String, Vec<Flags>> = HashMap::new();
        for (path, flags) in here.values() {
            by_mid
                .entry(message_id(path).unwrap_or_default())
                .or_default()
                .push(*flags);
        }
        for (id, (f, mid, _)) in &cloud {
            let got = mid.as_ref().and_then(|m| by_mid.get(m));
            if got.map(Vec::as_slice) != Some(&[*f][..]) {
                wrong.push(format!("{id}: cloud {f}, files {got:?}"));
            }
        }
        let listed: HashSet<&String> = cloud.values().filter_map(|(_, m, _)| m.as_ref()).collect();
        for mid in by_mid.keys() {
            if !listed.contains(mid) {
                wrong.push(format!("{mid}: a file for a message not in the inbox"));
            }
        }
        wrong
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let wrong = check().await;
        if wrong.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "never converged: {wrong:#?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let wrong = check().await;
    assert!(wrong.is_empty(), "undone after convergence: {wrong:#?}");
    let (samples, intrusions) = sampler.finish();
    let daemon_moves = moves(&c, true).await - cloud_moves;
    let tmp: Vec<_> = std::fs::read_dir(md.join("tmp")).expect("tmp").collect();
    eprintln!(
        "soak (seed {seed}, {secs} s): {local_edits} local edits ({local_deletes} deletions), \
         {cloud_edits} cloud flag edits, {cloud_moves} cloud moves, {new_mail} new mails, \
         {faults} faults served ({}); overruled edits: {}, moves per local deletion: {:.2}, \
         {samples} maildir samples",
        by_kind.join(", "),
        intrusions.len(),
        daemon_moves as f64 / local_deletes.max(1) as f64,
    );
    assert!(
        intrusions.is_empty(),
        "files showed flags nobody gave them: {intrusions:#?}"
    );
    assert_eq!(daemon_moves, local_deletes, "{}", c.stats().await);
    assert!(tmp.is_empty(), "left in tmp/: {tmp:?}");
    assert!(faults > 0 && local_deletes > 0 && cloud_edits > 0);
    tx.send(true).expect("shutdown");
    task.await.expect("join").expect("daemon");
}

/// `--once` twice after local `T`, a removal and a flag change, and cloud
/// changes: the first run leaves both sides in agreement (a deletion it
/// sent is confirmed by listing the folder again, and its file goes), so
/// the second run only lists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_reaches_a_fixed_point() {
    let c = Cloud::start().await;
    c.populate("Inbox", 20).await;
    let (home, loaded) = world(15);
    let md = home.path().join("mail/inbox");
    let once = daemon::Options {
        once: true,
        ..daemon::Options::default()
    };
    let run = |loaded: config::Loaded| {
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let f = folder(&c);
        async move { daemon::run(loaded, once, vec![f], rx).await }
    };
    run(loaded).await.expect("initial sync");
    let ids = ids_by_base(&c, &md).await;
    let bases: Vec<String> = without(&md, Flags::READ);
    assert!(bases.len() >= 5, "populate gave too few unread messages");
    let (trashed, removed, read, cloud_read, cloud_moved) =
        (&bases[0], &bases[1], &bases[2], &bases[3], &bases[4]);
    edit(&md, trashed, Kind::Trash, None);
    edit(&md, removed, Kind::Unlink, None);
    edit(&md, read, Kind::Read, None);
    let (st, _) = c
        .graph(
            reqwest::Method::PATCH,
            &format!("/me/messages/{}", ids[cloud_read]),
            Some(json!({"isRead": true})),
        )
        .await;
    assert_eq!(st, 200);
    let (st, _) = c
        .graph(
            reqwest::Method::POST,
            &format!("/me/messages/{}/move", ids[cloud_moved]),
            Some(json!({"destinationId": "archive"})),
        )
        .await;
    assert_eq!(st, 201);

    run(home.load()).await.expect("first run");
    let here = files(&md);
    let cloud = c.expected("Inbox").await;
    for gone in [trashed, removed, cloud_moved] {
        assert!(!here.contains_key(gone), "{gone} still has a file");
        assert!(!cloud.contains_key(&ids[gone]), "{gone} still in the inbox");
    }
    for r in [read, cloud_read] {
        assert!(here[r].1.contains(Flags::READ), "{r} not read locally");
        assert!(
            cloud[&ids[r]].0.contains(Flags::READ),
            "{r} not read in the cloud"
        );
    }

    c.reset_stats().await;
    let names = |md: &Path| {
        let mut v: Vec<PathBuf> = files(md).into_values().map(|(p, _)| p).collect();
        v.sort();
        v
    };
    let before = names(&md);
    run(home.load()).await.expect("second run");
    assert_eq!(names(&md), before, "the second run changed the maildir");
    let s = c.stats().await;
    let routes: Vec<&String> = s["routes"].as_object().expect("routes").keys().collect();
    assert!(
        routes
            .iter()
            .all(|r| r.contains("delta") || r.contains("mailFolders/{id}")),
        "the second run did more than list: {s}"
    );
}
