//! Table tests for the sync planner: one test per case of `docs/sync.md`,
//! named after the case, plus the failure handling of `next_state`.

use super::*;
use crate::sync::plan::settled;
use crate::types::{ContentHash, Flags};

const N: Flags = Flags::NONE;
const R: Flags = Flags::REPLIED;
const S: Flags = Flags::READ;
const F: Flags = Flags::FLAGGED;
const T: Flags = Flags::DELETED;
/// Mailbox 0 is Office365-like: archive on delete, stores R, S and F.
const GRAPH: usize = 0;
/// Mailbox 1 is Gmail-like: delete (trash) on delete, stores S and F.
const GMAIL: usize = 1;

fn h(n: u16) -> ContentHash {
    let mut b = [0u8; 32];
    b[..2].copy_from_slice(&n.to_be_bytes());
    ContentHash(b)
}

/// Every mailbox of `w` on start-up rule `mode`.
fn set_mode(w: &mut PlanInput, mode: Mode) {
    for m in &mut w.mailboxes {
        m.mode = mode;
    }
}

/// Two complete mailboxes and two present maildirs, nothing else.
fn world() -> PlanInput {
    PlanInput {
        mailboxes: vec![
            MailboxInfo {
                supported: R | S | F,
                delete_action: DeleteAction::Archive,
                complete: true,
                mode: Mode::Online,
            },
            MailboxInfo {
                supported: S | F,
                delete_action: DeleteAction::Delete,
                complete: true,
                mode: Mode::Online,
            },
        ],
        maildirs: vec![MaildirInfo { present: true }, MaildirInfo { present: true }],
        ..PlanInput::default()
    }
}

fn cloud(mailbox: usize, id: &str, n: u16, flags: Flags, route: usize) -> CloudMsg {
    CloudMsg {
        mailbox,
        id: id.to_string(),
        hash: h(n),
        flags,
        route: Route::Maildir(route),
    }
}

fn file(maildir: usize, name: &str, n: u16, flags: Flags) -> LocalFile {
    LocalFile {
        maildir,
        name: name.to_string(),
        hash: h(n),
        flags,
    }
}

/// An agreement where every side held `flags`.
fn entry(flags: Flags, maildir: usize, copies: &[(usize, &str)]) -> LastEntry {
    LastEntry {
        flags,
        maildir,
        local: flags,
        cloud: copies
            .iter()
            .map(|&(mailbox, id)| CloudBase {
                mailbox,
                id: id.to_string(),
                flags,
            })
            .collect(),
    }
}

fn done(p: &Plan) -> Vec<Outcome> {
    vec![Outcome::Done; p.actions.len()]
}

fn set_cloud(mailbox: usize, id: &str, n: u16, set: Flags, clear: Flags) -> Action {
    Action::SetCloudFlags {
        hash: h(n),
        mailbox,
        id: id.to_string(),
        set,
        clear,
    }
}

fn set_local(maildir: usize, name: &str, n: u16, flags: Flags) -> Action {
    Action::SetLocalFlags {
        hash: h(n),
        maildir,
        name: name.to_string(),
        flags,
    }
}

fn deliver(maildir: usize, n: u16, flags: Flags) -> Action {
    Action::Deliver {
        hash: h(n),
        maildir,
        flags,
    }
}

fn remove(maildir: usize, name: &str, n: u16) -> Action {
    Action::RemoveLocal {
        hash: h(n),
        maildir,
        name: name.to_string(),
    }
}

fn delete(mailbox: usize, id: &str, n: u16, action: DeleteAction) -> Action {
    Action::DeleteCloud {
        hash: h(n),
        mailbox,
        id: id.to_string(),
        action,
    }
}

/// A known message, agreed with `base`, now `cloud_flags` in the Graph
/// mailbox and `local_flags` in maildir 0.
fn known(base: Flags, cloud_flags: Flags, local_flags: Flags) -> PlanInput {
    let mut w = world();
    w.cloud.push(cloud(GRAPH, "a", 1, cloud_flags, 0));
    w.local.push(file(0, "m1", 1, local_flags));
    w.last.entries.insert(h(1), entry(base, 0, &[(GRAPH, "a")]));
    w.last.maildir_counts = vec![1, 0];
    w
}

#[test]
fn known_unchanged_no_actions() {
    let w = known(S, S, S);
    let p = plan(&w);
    assert_eq!(p.actions, vec![]);
    assert_eq!(p.warnings, vec![]);
    assert_eq!(next_state(&w, &p, &[]), w.last);
}

#[test]
fn known_cloud_changed_read_local_changed_flagged() {
    let w = known(N, S, F);
    let p = plan(&w);
    assert_eq!(
        p.actions,
        vec![set_cloud(GRAPH, "a", 1, F, N), set_local(0, "m1", 1, S | F)]
    );
    let next = next_state(&w, &p, &done(&p));
    let e = &next.entries[&h(1)];
    assert_eq!((e.flags, e.local, e.cloud[0].flags), (S | F, S | F, S | F));
}

#[test]
fn known_both_changed_same_bit_agree() {
    let w = known(S, N, N);
    assert_eq!(plan(&w).actions, vec![]);
}

#[test]
fn known_both_changed_same_bit_cloud_wins() {
    // Last cycle's push of READ failed: local base S, cloud base N. Now the
    // user unmarks it locally and the second client marks it read.
    let mut w = known(S, S, N);
    w.last.entries.get_mut(&h(1)).unwrap().cloud[0].flags = N;
    let p = plan(&w);
    assert_eq!(p.actions, vec![set_local(0, "m1", 1, S)]);
}

#[test]
fn known_local_changed_pushes_only_differing_bits() {
    let w = known(S, S, R | S | F);
    assert_eq!(plan(&w).actions, vec![set_cloud(GRAPH, "a", 1, R | F, N)]);
}

#[test]
fn known_local_cleared_read_pushes_clear() {
    let w = known(S | F, S | F, F);
    assert_eq!(plan(&w).actions, vec![set_cloud(GRAPH, "a", 1, N, S)]);
}

#[test]
fn known_cloud_changed_renames_local() {
    let w = known(N, F, N);
    assert_eq!(plan(&w).actions, vec![set_local(0, "m1", 1, F)]);
}

#[test]
fn known_pending_push_retried() {
    // Agreed S, but the cloud copy's base is still N (the push failed).
    let mut w = known(S, N, S);
    w.last.entries.get_mut(&h(1)).unwrap().cloud[0].flags = N;
    assert_eq!(plan(&w).actions, vec![set_cloud(GRAPH, "a", 1, S, N)]);
}

#[test]
fn known_local_t_deletes_in_cloud_archive() {
    let mut w = known(S, S, S | T);
    w.cloud.push(cloud(GMAIL, "b", 1, S, 0));
    w.last
        .entries
        .insert(h(1), entry(S, 0, &[(GRAPH, "a"), (GMAIL, "b")]));
    let p = plan(&w);
    assert_eq!(
        p.actions,
        vec![
            delete(GRAPH, "a", 1, DeleteAction::Archive),
            delete(GMAIL, "b", 1, DeleteAction::Delete)
        ]
    );
    // The file stays until the listing drops the copies.
    let next = next_state(&w, &p, &done(&p));
    assert_eq!(next.entries[&h(1)].cloud.len(), 2);
    let mut w2 = w.clone();
    w2.cloud.clear();
    w2.last = next;
    let p2 = plan(&w2);
    assert_eq!(p2.actions, vec![remove(0, "m1", 1)]);
    assert_eq!(next_state(&w2, &p2, &done(&p2)).entries.len(), 0);
}

#[test]
fn known_local_t_delete_failed_is_retried() {
    let w = known(N, N, S | T);
    let p = plan(&w);
    assert_eq!(
        p.actions,
        vec![delete(GRAPH, "a", 1, DeleteAction::Archive)]
    );
    let mut w2 = w.clone();
    w2.last = next_state(&w, &p, &[Outcome::Failed]);
    assert_eq!(plan(&w2).actions, p.actions);
}

#[test]
fn gmail_replied_kept_locally() {
    let mut w = world();
    w.cloud.push(cloud(GMAIL, "g", 1, S, 0));
    w.local.push(file(0, "m1", 1, R | S));
    w.last.entries.insert(h(1), entry(S, 0, &[(GMAIL, "g")]));
    let p = plan(&w);
    assert_eq!(p.actions, vec![]);
    let e = &next_state(&w, &p, &[]).entries[&h(1)];
    assert_eq!((e.flags, e.local), (R | S, R | S));
}

#[test]
fn gmail_cloud_change_keeps_local_replied() {
    let mut w = world();
    w.cloud.push(cloud(GMAIL, "g", 1, S | F, 0));
    w.local.push(file(0, "m1", 1, R | S));
    w.last
        .entries
        .insert(h(1), entry(R | S, 0, &[(GMAIL, "g")]));
    assert_eq!(plan(&w).actions, vec![set_local(0, "m1", 1, R | S | F)]);
}

#[test]
fn removed_locally_deletes_in_cloud_archive() {
    let mut w = known(S, S, S);
    w.local.clear();
    let p = plan(&w);
    assert_eq!(
        p.actions,
        vec![delete(GRAPH, "a", 1, DeleteAction::Archive)]
    );
    // The agreement is kept: next cycle the copy is gone and it is forgotten,
    // or the delete failed and is retried.
    let next = next_state(&w, &p, &done(&p));
    assert_eq!(next.entries, w.last.entries);
    let mut w2 = w.clone();
    w2.cloud.clear();
    w2.last = next;
    let p2 = plan(&w2);
    assert_eq!(p2.actions, vec![]);
    assert!(next_state(&w2, &p2, &[]).entries.is_empty());
}

#[test]
fn removed_locally_deletes_in_cloud_delete() {
    let mut w = world();
    w.cloud.push(cloud(GMAIL, "g", 1, S, 1));
    w.last.entries.insert(h(1), entry(S, 1, &[(GMAIL, "g")]));
    assert_eq!(
        plan(&w).actions,
        vec![delete(GMAIL, "g", 1, DeleteAction::Delete)]
    );
}

#[test]
fn removed_locally_delete_failed_is_retried() {
    let mut w = known(S, S, S);
    w.local.clear();
    let p = plan(&w);
    let mut w2 = w.clone();
    w2.last = next_state(&w, &p, &[Outcome::Failed]);
    assert_eq!(plan(&w2).actions, p.actions);
}

#[test]
fn removed_locally_unknown_copy_not_deleted() {
    // The message also reached a second synced folder since the agreement:
    // only the copy the user saw is deleted.
    let mut w = known(S, S, S);
    w.local.clear();
    w.cloud.push(cloud(GMAIL, "g", 1, S, 0));
    assert_eq!(
        plan(&w).actions,
        vec![delete(GRAPH, "a", 1, DeleteAction::Archive)]
    );
    // Once the known copy is gone, the other one is delivered again.
    w.cloud.remove(0);
    assert_eq!(plan(&w).actions, vec![deliver(0, 1, S)]);
}

#[test]
fn removed_locally_offline_first_cycle_restores() {
    let mut w = known(S, S | F, S);
    w.local.clear();
    set_mode(&mut w, Mode::OfflineFirstCycle);
    let p = plan(&w);
    assert_eq!(p.actions, vec![deliver(0, 1, S | F)]);
    assert_eq!(p.warnings, vec![]);
}

#[test]
fn offline_rule_is_per_folder() {
    // Two messages removed locally: one in a folder still before its first
    // successful cycle after an --offline start (restored), one in a folder
    // past it (deleted there), in the same plan.
    let mut w = known(S, S, S);
    w.local.clear();
    w.cloud.push(cloud(GMAIL, "g", 2, F, 0));
    w.last.entries.insert(h(2), entry(F, 0, &[(GMAIL, "g")]));
    w.last.maildir_counts = vec![2, 0];
    w.mailboxes[GRAPH].mode = Mode::OfflineFirstCycle;
    assert_eq!(
        plan(&w).actions,
        vec![
            deliver(0, 1, S),
            delete(GMAIL, "g", 2, DeleteAction::Delete)
        ]
    );
    // A message with a copy in each follows the offline rule.
    w.cloud.push(cloud(GMAIL, "g1", 1, S, 0));
    w.last
        .entries
        .get_mut(&h(1))
        .unwrap()
        .cloud
        .push(CloudBase {
            mailbox: GMAIL,
            id: "g1".into(),
            flags: S,
        });
    assert_eq!(plan(&w).actions[0], deliver(0, 1, S));
}

/// `total` agreed messages in maildir 0, of which the first `missing` have no
/// file any more.
fn mass(total: u16, missing: u16) -> PlanInput {
    let mut w = world();
    for n in 0..total {
        let id = format!("m{n}");
        w.cloud.push(cloud(GRAPH, &id, n, S, 0));
        if n >= missing {
            w.local.push(file(0, &id, n, S));
        }
        w.last.entries.insert(h(n), entry(S, 0, &[(GRAPH, &id)]));
    }
    w.last.maildir_counts = vec![total as usize, 0];
    w
}

#[test]
fn guard_mass_deletion_restores() {
    let w = mass(100, 60);
    let p = plan(&w);
    assert_eq!(
        p.actions,
        (0..60).map(|n| deliver(0, n, S)).collect::<Vec<_>>()
    );
    assert_eq!(
        p.warnings,
        vec![Warning::MassDeletion {
            maildir: 0,
            missing: 60,
            last_count: 100
        }]
    );
    let next = next_state(&w, &p, &done(&p));
    assert_eq!(next.entries.len(), 100);
    assert_eq!(next.maildir_counts, vec![100, 0]);
}

#[test]
fn guard_restore_failed_forgets_so_never_deleted() {
    let w = mass(100, 60);
    let p = plan(&w);
    let next = next_state(&w, &p, &[]);
    assert_eq!(next.entries.len(), 40);
    let mut w2 = w.clone();
    w2.last = next;
    let p2 = plan(&w2);
    assert!(
        p2.actions
            .iter()
            .all(|a| matches!(a, Action::Deliver { .. }))
    );
    assert_eq!(p2.actions.len(), 60);
}

#[test]
fn guard_not_more_than_fifty_deletes() {
    let p = plan(&mass(100, 50));
    assert_eq!(p.actions.len(), 50);
    assert!(
        p.actions
            .iter()
            .all(|a| matches!(a, Action::DeleteCloud { .. }))
    );
    assert_eq!(p.warnings, vec![]);
}

#[test]
fn guard_not_more_than_quarter_deletes() {
    let p = plan(&mass(300, 75));
    assert_eq!(p.actions.len(), 75);
    assert!(
        p.actions
            .iter()
            .all(|a| matches!(a, Action::DeleteCloud { .. }))
    );
    assert_eq!(p.warnings, vec![]);
}

#[test]
fn guard_missing_maildir_restores() {
    let mut w = world();
    w.maildirs[1].present = false;
    w.cloud.push(cloud(GRAPH, "a", 1, S, 1));
    w.last.entries.insert(h(1), entry(S, 1, &[(GRAPH, "a")]));
    w.last.maildir_counts = vec![0, 1];
    let p = plan(&w);
    assert_eq!(p.actions, vec![deliver(1, 1, S)]);
    assert_eq!(
        p.warnings,
        vec![Warning::MaildirMissing {
            maildir: 1,
            missing: 1
        }]
    );
}

#[test]
fn new_cloud_message_delivered_with_cloud_flags() {
    let mut w = world();
    w.cloud.push(cloud(GMAIL, "g", 1, S | F, 1));
    let p = plan(&w);
    assert_eq!(p.actions, vec![deliver(1, 1, S | F)]);
    let next = next_state(&w, &p, &done(&p));
    let e = &next.entries[&h(1)];
    assert_eq!((e.flags, e.local, e.maildir), (S | F, S | F, 1));
    assert_eq!(next.maildir_counts, vec![0, 1]);
}

#[test]
fn new_message_routing_failed_goes_to_default() {
    let mut w = world();
    let mut c = cloud(GRAPH, "a", 1, N, 1);
    c.route = Route::Failed;
    w.cloud.push(c);
    assert_eq!(plan(&w).actions, vec![deliver(0, 1, N)]);
}

#[test]
fn new_message_routed_to_unknown_maildir_goes_to_default() {
    let mut w = world();
    w.cloud.push(cloud(GRAPH, "a", 1, N, 7));
    assert_eq!(plan(&w).actions, vec![deliver(0, 1, N)]);
}

#[test]
fn new_message_deliver_failed_records_nothing() {
    let mut w = world();
    w.cloud.push(cloud(GRAPH, "a", 1, N, 0));
    let p = plan(&w);
    let next = next_state(&w, &p, &[Outcome::Failed]);
    assert!(next.entries.is_empty());
}

#[test]
fn new_message_copies_disagree_union_pushed() {
    let mut w = world();
    w.cloud.push(cloud(GMAIL, "g", 1, F, 0));
    w.cloud.push(cloud(GRAPH, "a", 1, S, 1));
    // The first folder's route wins: Graph (mailbox 0) routes to maildir 1.
    assert_eq!(
        plan(&w).actions,
        vec![
            set_cloud(GRAPH, "a", 1, F, N),
            set_cloud(GMAIL, "g", 1, S, N),
            deliver(1, 1, S | F)
        ]
    );
}

#[test]
fn first_sight_online_cloud_wins() {
    let mut w = world();
    w.cloud.push(cloud(GRAPH, "a", 1, F, 0));
    w.local.push(file(0, "m1", 1, R | S));
    let p = plan(&w);
    assert_eq!(p.actions, vec![set_local(0, "m1", 1, F)]);
    let e = &next_state(&w, &p, &done(&p)).entries[&h(1)];
    assert_eq!((e.flags, e.local), (F, F));
}

#[test]
fn first_sight_online_gmail_replied_kept_locally() {
    let mut w = world();
    w.cloud.push(cloud(GMAIL, "g", 1, F, 0));
    w.local.push(file(0, "m1", 1, R | S));
    assert_eq!(plan(&w).actions, vec![set_local(0, "m1", 1, R | F)]);
}

#[test]
fn first_sight_online_local_t_dropped() {
    let mut w = world();
    w.cloud.push(cloud(GRAPH, "a", 1, S, 0));
    w.local.push(file(0, "m1", 1, S | T));
    assert_eq!(plan(&w).actions, vec![set_local(0, "m1", 1, S)]);
}

#[test]
fn first_sight_rename_failed_cloud_still_wins_next_cycle() {
    let mut w = world();
    w.cloud.push(cloud(GRAPH, "a", 1, F, 0));
    w.local.push(file(0, "m1", 1, S));
    let p = plan(&w);
    let mut w2 = w.clone();
    w2.last = next_state(&w, &p, &[Outcome::Failed]);
    assert_eq!(plan(&w2).actions, p.actions);
}

#[test]
fn offline_first_cycle_local_wins() {
    let mut w = world();
    set_mode(&mut w, Mode::OfflineFirstCycle);
    w.cloud.push(cloud(GRAPH, "a", 1, F, 0));
    w.local.push(file(0, "m1", 1, S));
    let p = plan(&w);
    assert_eq!(p.actions, vec![set_cloud(GRAPH, "a", 1, S, F)]);
    // A failed push is still pushed by the next (online) cycle.
    let mut w2 = w.clone();
    set_mode(&mut w2, Mode::Online);
    w2.last = next_state(&w, &p, &[Outcome::Failed]);
    assert_eq!(plan(&w2).actions, p.actions);
}

#[test]
fn offline_first_cycle_local_t_deletes() {
    let mut w = world();
    set_mode(&mut w, Mode::OfflineFirstCycle);
    w.cloud.push(cloud(GRAPH, "a", 1, N, 0));
    w.local.push(file(0, "m1", 1, T));
    let p = plan(&w);
    assert_eq!(
        p.actions,
        vec![delete(GRAPH, "a", 1, DeleteAction::Archive)]
    );
    let mut w2 = w.clone();
    set_mode(&mut w2, Mode::Online);
    w2.last = next_state(&w, &p, &[Outcome::Failed]);
    assert_eq!(plan(&w2).actions, p.actions);
}

#[test]
fn offline_first_cycle_known_merges_three_way() {
    let mut w = known(N, F, S);
    set_mode(&mut w, Mode::OfflineFirstCycle);
    assert_eq!(
        plan(&w).actions,
        vec![set_cloud(GRAPH, "a", 1, S, N), set_local(0, "m1", 1, S | F)]
    );
}

#[test]
fn gone_from_cloud_removes_local() {
    let mut w = known(S, S, S);
    w.cloud.clear();
    let p = plan(&w);
    assert_eq!(p.actions, vec![remove(0, "m1", 1)]);
    assert!(next_state(&w, &p, &done(&p)).entries.is_empty());
    // A failed removal is retried.
    let mut w2 = w.clone();
    w2.last = next_state(&w, &p, &[Outcome::Failed]);
    assert_eq!(plan(&w2).actions, p.actions);
}

#[test]
fn incomplete_mailbox_no_local_removal() {
    let mut w = known(S, S, S);
    w.cloud.clear();
    w.mailboxes[GRAPH].complete = false;
    let p = plan(&w);
    assert_eq!(p.actions, vec![]);
    assert_eq!(next_state(&w, &p, &[]).entries, w.last.entries);
}

#[test]
fn local_only_unknown_file_kept() {
    let mut w = world();
    w.local.push(file(0, "draft", 1, S | T));
    let p = plan(&w);
    assert_eq!(p.actions, vec![]);
    let next = next_state(&w, &p, &[]);
    assert!(next.entries.is_empty());
    assert_eq!(next.maildir_counts, vec![1, 0]);
}

#[test]
fn local_only_known_content_removed() {
    let mut w = world();
    w.local.push(file(1, "m1", 1, S));
    w.known_cloud_content.insert(h(1));
    assert_eq!(plan(&w).actions, vec![remove(1, "m1", 1)]);
}

#[test]
fn local_only_known_content_kept_when_listing_incomplete() {
    let mut w = world();
    w.local.push(file(1, "m1", 1, S));
    w.known_cloud_content.insert(h(1));
    w.mailboxes[GMAIL].complete = false;
    assert_eq!(plan(&w).actions, vec![]);
}

#[test]
fn gone_on_both_sides_forgotten() {
    let mut w = known(S, S, S);
    w.cloud.clear();
    w.local.clear();
    let p = plan(&w);
    assert_eq!(p.actions, vec![]);
    assert_eq!(p.warnings, vec![]);
    assert!(next_state(&w, &p, &[]).entries.is_empty());
}

#[test]
fn routing_changed_moves_file() {
    let mut w = known(N, F, S);
    w.cloud[0].route = Route::Maildir(1);
    let p = plan(&w);
    assert_eq!(
        p.actions,
        vec![
            set_cloud(GRAPH, "a", 1, S, N),
            Action::MoveLocal {
                hash: h(1),
                from_maildir: 0,
                name: "m1".into(),
                to_maildir: 1,
                flags: S | F
            }
        ]
    );
    let next = next_state(&w, &p, &done(&p));
    assert_eq!(next.entries[&h(1)].maildir, 1);
    assert_eq!(next.maildir_counts, vec![0, 1]);
    // A failed move leaves the file and the agreement where they were.
    let failed = next_state(&w, &p, &[Outcome::Done, Outcome::Failed]);
    let e = &failed.entries[&h(1)];
    assert_eq!((e.maildir, e.local, e.flags), (0, S, S | F));
    assert_eq!(failed.maildir_counts, vec![1, 0]);
}

#[test]
fn routing_failed_stays_put() {
    let mut w = known(S, S, S);
    w.local[0].maildir = 1;
    w.last.entries.get_mut(&h(1)).unwrap().maildir = 1;
    w.cloud[0].route = Route::Failed;
    assert_eq!(plan(&w).actions, vec![]);
}

#[test]
fn duplicates_keep_one_in_target() {
    let mut w = known(N, N, N);
    w.cloud[0].route = Route::Maildir(1);
    w.local.push(file(1, "copy", 1, F));
    let p = plan(&w);
    assert_eq!(
        p.actions,
        vec![set_cloud(GRAPH, "a", 1, F, N), remove(0, "m1", 1)]
    );
    let e = &next_state(&w, &p, &done(&p)).entries[&h(1)];
    assert_eq!((e.maildir, e.flags), (1, F));
}

#[test]
fn duplicates_same_maildir_keep_first_name() {
    let mut w = known(S, S, S);
    w.local.push(file(0, "m0", 1, S));
    assert_eq!(plan(&w).actions, vec![remove(0, "m1", 1)]);
}

#[test]
fn duplicates_route_failed_keep_the_agreed_maildir() {
    let mut w = known(S, S, S);
    w.cloud[0].route = Route::Failed;
    w.last.entries.get_mut(&h(1)).unwrap().maildir = 1;
    w.local.push(file(1, "m1", 1, S));
    assert_eq!(plan(&w).actions, vec![remove(0, "m1", 1)]);
}

#[test]
fn failed_cloud_flags_keeps_local_change_pending() {
    let w = known(N, N, F);
    let p = plan(&w);
    assert_eq!(p.actions, vec![set_cloud(GRAPH, "a", 1, F, N)]);
    let next = next_state(&w, &p, &[Outcome::Failed]);
    let e = &next.entries[&h(1)];
    assert_eq!((e.flags, e.local, e.cloud[0].flags), (F, F, N));
    let mut w2 = w.clone();
    w2.last = next;
    assert_eq!(plan(&w2).actions, p.actions);
    // The user takes the change back before the retry: nothing is pushed.
    w2.local[0].flags = N;
    assert_eq!(plan(&w2).actions, vec![]);
}

#[test]
fn failed_rename_keeps_cloud_change_pending() {
    let w = known(N, F, N);
    let p = plan(&w);
    let mut w2 = w.clone();
    w2.last = next_state(&w, &p, &[Outcome::Failed]);
    assert_eq!(plan(&w2).actions, p.actions);
}

#[test]
fn output_is_independent_of_input_order() {
    let mut w = mass(20, 5);
    w.cloud.push(cloud(GMAIL, "g", 3, F, 1));
    w.local.push(file(1, "dup", 4, R));
    w.local.push(file(0, "x", 99, N));
    let p = plan(&w);
    let mut r = w.clone();
    r.cloud.reverse();
    r.local.reverse();
    assert_eq!(plan(&r), p);
    assert_eq!(next_state(&r, &p, &done(&p)), next_state(&w, &p, &done(&p)));
}

#[test]
fn last_state_serde_round_trip() {
    let w = known(R | S, S, S);
    let json = serde_json::to_string(&w.last).unwrap();
    let back: LastState = serde_json::from_str(&json).unwrap();
    assert_eq!(back, w.last);
}

#[test]
fn incomplete_listing_keeps_unlisted_copy_base() {
    // The Gmail copy is hidden by an incomplete listing while the user marks
    // the message read; its base must survive, or next cycle its (old)
    // flags would look like a cloud change and undo the user's.
    let mut w = known(N, N, S);
    w.cloud.push(cloud(GMAIL, "g", 1, N, 0));
    w.last
        .entries
        .insert(h(1), entry(N, 0, &[(GRAPH, "a"), (GMAIL, "g")]));
    let mut hidden = w.clone();
    hidden.cloud.retain(|c| c.mailbox == GRAPH);
    hidden.mailboxes[GMAIL].complete = false;
    let p = plan(&hidden);
    assert_eq!(p.actions, vec![set_cloud(GRAPH, "a", 1, S, N)]);
    let next = next_state(&hidden, &p, &done(&p));
    assert_eq!(next.entries[&h(1)].cloud.len(), 2);
    let mut w2 = w.clone();
    w2.cloud[0].flags = S;
    w2.last = next;
    assert_eq!(plan(&w2).actions, vec![set_cloud(GMAIL, "g", 1, S, N)]);
}

#[test]
fn removed_locally_known_copy_unlisted_waits() {
    // The copy the user saw is hidden by an incomplete listing; another copy
    // is listed. Neither delete nor restore until the listing is complete.
    let mut w = known(S, S, S);
    w.local.clear();
    w.cloud[0] = cloud(GMAIL, "g", 1, S, 0);
    w.mailboxes[GRAPH].complete = false;
    let p = plan(&w);
    assert_eq!(p.actions, vec![]);
    assert_eq!(next_state(&w, &p, &[]).entries, w.last.entries);
}

#[test]
fn gone_on_both_sides_listing_incomplete_kept() {
    let mut w = known(S, S, S);
    w.cloud.clear();
    w.local.clear();
    w.mailboxes[GRAPH].complete = false;
    let p = plan(&w);
    assert_eq!(p.actions, vec![]);
    assert_eq!(next_state(&w, &p, &[]).entries, w.last.entries);
}

#[test]
fn gone_on_both_sides_listing_incomplete_guarded_forgotten() {
    // The maildir disappeared: its missing files are no deletion requests,
    // now or when the listing shows the message again.
    let mut w = known(S, S, S);
    w.cloud.clear();
    w.local.clear();
    w.mailboxes[GRAPH].complete = false;
    w.maildirs[0].present = false;
    let p = plan(&w);
    assert_eq!(
        p.warnings,
        vec![Warning::MaildirMissing {
            maildir: 0,
            missing: 1
        }]
    );
    assert!(next_state(&w, &p, &[]).entries.is_empty());
}

#[test]
fn guard_missing_maildir_holds_other_maildirs_deletions() {
    // The user may have moved the file into the maildir that disappeared.
    let mut w = known(S, S, S);
    w.local.clear();
    w.maildirs[1].present = false;
    let p = plan(&w);
    assert_eq!(p.actions, vec![deliver(0, 1, S)]);
    assert_eq!(
        p.warnings,
        vec![
            Warning::DeletionsHeld {
                maildir: 0,
                missing: 1
            },
            Warning::MaildirMissing {
                maildir: 1,
                missing: 0
            }
        ]
    );
}

#[test]
fn moved_copy_keeps_its_base_by_id() {
    // Another client moved the message to another synced folder (same id)
    // and marked it read: a cloud change, pushed to nothing, renamed locally.
    let mut w = known(F, F, F);
    w.cloud[0] = cloud(GMAIL, "a", 1, S | F, 0);
    assert_eq!(plan(&w).actions, vec![set_local(0, "m1", 1, S | F)]);
    // Unchanged flags after the move: nothing to do.
    w.cloud[0].flags = F;
    assert_eq!(plan(&w).actions, vec![]);
}

#[test]
fn new_copy_compared_with_agreed_flags() {
    // A copy with a new id that differs from the agreement is a cloud change.
    let mut w = known(N, N, N);
    w.cloud.push(cloud(GMAIL, "g", 1, F, 0));
    assert_eq!(
        plan(&w).actions,
        vec![set_cloud(GRAPH, "a", 1, F, N), set_local(0, "m1", 1, F)]
    );
}

#[test]
fn duplicates_failed_removal_does_not_revert_merge() {
    // The cloud marked it read; the duplicate's removal fails. The stale
    // duplicate must not look like a local "unread" next cycle.
    let mut w = known(N, S, N);
    w.local.push(file(0, "m0", 1, N));
    let p = plan(&w);
    assert_eq!(
        p.actions,
        vec![set_local(0, "m0", 1, S), remove(0, "m1", 1)]
    );
    let next = next_state(&w, &p, &[Outcome::Done, Outcome::Failed]);
    let mut w2 = w.clone();
    w2.local[1].flags = S;
    w2.last = next;
    assert_eq!(plan(&w2).actions, vec![remove(0, "m1", 1)]);
}

/// The issue-9 sequence at the planner: a pushed local change, then a cycle
/// that plans against the previous listing with the push's effect applied,
/// proposes nothing; against the listing without the effect it would take
/// the change back (which is why the engine never plans a stale pair).
#[test]
fn listing_with_effects_applied_agrees_with_the_agreement() {
    let mut w = world();
    w.cloud = vec![cloud(GRAPH, "a", 1, N, 0)];
    w.local = vec![file(0, "cur/a:2,S", 1, S)];
    w.last.entries.insert(h(1), entry(N, 0, &[(GRAPH, "a")]));
    let p = plan(&w);
    assert_eq!(p.actions, vec![set_cloud(GRAPH, "a", 1, S, N)]);
    let outcomes = done(&p);
    let attempted = vec![true; p.actions.len()];
    let effects = cloud_effects(&p, &outcomes, &attempted);
    assert_eq!(
        effects,
        vec![CloudEffect::Flags {
            mailbox: GRAPH,
            id: "a".into(),
            set: S,
            clear: N
        }]
    );
    let last = next_state(&w, &p, &outcomes);

    let mut fresh = w.clone();
    fresh.last = last.clone();
    fresh.cloud[0].flags = S;
    assert_eq!(plan(&fresh).actions, vec![]);

    let mut stale = w.clone();
    stale.last = last;
    assert_eq!(
        plan(&stale).actions,
        vec![set_local(0, "cur/a:2,S", 1, N)],
        "a stale listing reads as a cloud change"
    );
}

/// Every deletion sent is an effect, whatever its answer; a failed flag
/// change is none.
#[test]
fn deletions_sent_are_effects_failed_flag_changes_are_not() {
    let mut w = world();
    w.cloud = vec![cloud(GRAPH, "a", 1, N, 0), cloud(GRAPH, "b", 2, N, 0)];
    w.local = vec![file(0, "cur/a:2,T", 1, T), file(0, "cur/b:2,F", 2, F)];
    w.last.entries.insert(h(1), entry(N, 0, &[(GRAPH, "a")]));
    w.last.entries.insert(h(2), entry(N, 0, &[(GRAPH, "b")]));
    let p = plan(&w);
    assert_eq!(p.actions.len(), 2, "{:?}", p.actions);
    let failed = vec![Outcome::Failed; 2];
    let effects = cloud_effects(&p, &failed, &[true, true]);
    assert_eq!(
        effects,
        vec![CloudEffect::DeletionSent {
            mailbox: GRAPH,
            id: "a".into()
        }]
    );
    assert_eq!(cloud_effects(&p, &failed, &[false, false]), vec![]);
}

/// `settled` never hides work: over random single-message worlds biased
/// toward agreement, whenever it answers true the planner has no action for
/// the message and records the same agreement again. Also checks that it
/// answers true often enough for the check to mean something, and false
/// whenever one side differs from the agreement.
#[test]
fn settled_messages_plan_to_nothing_and_keep_their_agreement() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let bits = [N, R, S, F, R | S, S | F, R | S | F, T, S | T];
    let pool = [(GRAPH, "a"), (GRAPH, "b"), (GMAIL, "c")];
    let (mut yes, mut differs_and_yes) = (0, 0);
    for _ in 0..50_000 {
        let mut w = world();
        for m in &mut w.mailboxes {
            m.complete = rnd(5) != 0;
            m.mode = if rnd(4) == 0 {
                Mode::OfflineFirstCycle
            } else {
                Mode::Online
            };
        }
        w.maildirs[1].present = rnd(8) != 0;
        let sup: Vec<Flags> = w.mailboxes.iter().map(|m| m.supported).collect();
        let pick = |r: u64| bits[r as usize % bits.len()];
        let flags = if rnd(6) == 0 {
            pick(rnd(99))
        } else {
            pick(rnd(7))
        };
        let maildir = [0, 0, 1, 2][rnd(4) as usize];
        let mut copies = Vec::new();
        for &(mailbox, id) in &pool {
            if rnd(2) == 0 {
                continue;
            }
            let have = if rnd(8) == 0 { pick(rnd(99)) } else { flags };
            copies.push(CloudBase {
                mailbox,
                id: id.to_string(),
                flags: have & sup[mailbox],
            });
        }
        copies.sort();
        let last = LastEntry {
            flags,
            maildir,
            local: if rnd(8) == 0 { pick(rnd(99)) } else { flags },
            cloud: copies.clone(),
        };
        w.last.entries.insert(h(1), last.clone());
        w.last.maildir_counts = vec![10, 10];
        // The world now: mostly the agreement, with random departures.
        let mut differs = false;
        for b in &copies {
            if rnd(10) == 0 {
                differs = true;
                continue;
            }
            let have = if rnd(10) == 0 {
                pick(rnd(99)) & sup[b.mailbox]
            } else {
                b.flags
            };
            let route = if rnd(10) == 0 {
                rnd(3) as usize
            } else {
                maildir
            };
            differs |= have != b.flags || route != maildir;
            w.cloud.push(cloud(b.mailbox, &b.id, 1, have, route));
        }
        if rnd(10) == 0 {
            differs = true;
            w.cloud
                .push(cloud(GMAIL, "d", 1, flags & sup[GMAIL], maildir));
        }
        let files = [1, 1, 1, 1, 0, 2][rnd(6) as usize];
        differs |= files != 1;
        for k in 0..files {
            let m = if rnd(10) == 0 {
                1 - maildir.min(1)
            } else {
                maildir
            };
            let f = if rnd(10) == 0 { pick(rnd(99)) } else { flags };
            differs |= m != maildir || f != flags;
            w.local.push(file(m, &format!("cur/x{k}"), 1, f));
        }
        let ok = settled(
            &last,
            &sup,
            w.maildirs.len(),
            w.local.iter().map(|f| (f.maildir, f.flags)),
            w.cloud
                .iter()
                .map(|c| (c.mailbox, c.id.as_str(), c.flags, c.route)),
        );
        if !ok {
            continue;
        }
        yes += 1;
        if differs {
            differs_and_yes += 1;
        }
        let p = plan(&w);
        assert!(p.actions.is_empty(), "{w:?}\n{:?}", p.actions);
        let next = next_state(&w, &p, &done(&p));
        assert_eq!(next.entries.get(&h(1)), Some(&last), "{w:?}");
    }
    assert!(yes > 5_000, "settled answered true only {yes} times");
    assert_eq!(differs_and_yes, 0, "settled despite a difference");
}
