//! Tests of maildir scanning, delivery, renames and watching.

use super::*;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::time::Duration;

fn new_maildir() -> (tempfile::TempDir, Maildir) {
    let dir = tempfile::tempdir().unwrap();
    let md = Maildir::create(&dir.path().join("INBOX")).unwrap();
    (dir, md)
}

/// Names of the files in a directory, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn create_makes_private_dirs_and_open_checks() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("m");
    assert!(matches!(
        Maildir::open(&root),
        Err(MaildirError::NotAMaildir { .. })
    ));
    Maildir::create(&root).unwrap();
    for sub in ["tmp", "cur", "new"] {
        let mode = fs::metadata(root.join(sub)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o700, "{sub}");
    }
    let md = Maildir::open(&root).unwrap();
    assert_eq!(md.path(), root);
}

#[test]
fn deliver_places_by_flags_and_scan_finds_them() {
    let (_d, md) = new_maildir();
    let a = md
        .deliver_bytes(b"Subject: a\n\nbody\n", "a1", Flags::NONE)
        .unwrap();
    assert_eq!(a.subdir, Subdir::New);
    assert_eq!(a.path, md.subdir_path(Subdir::New).join("a1"));
    let b = md
        .deliver_bytes(b"Subject: b\n\n", "b1", Flags::READ | Flags::FLAGGED)
        .unwrap();
    assert_eq!(b.path, md.subdir_path(Subdir::Cur).join("b1:2,FS"));
    assert_eq!(fs::read(&b.path).unwrap(), b"Subject: b\n\n");
    assert!(names(&md.tmp).is_empty());

    let scan = md.scan().unwrap();
    assert!(!scan.changed);
    let mut got = scan.entries.clone();
    got.sort_by(|x, y| x.base.cmp(&y.base));
    assert_eq!(got, vec![a.clone(), b.clone()]);
    // An entry follows from its maildir, its name and its inode key.
    for (e, name) in [(&a, "new/a1"), (&b, "cur/b1:2,FS")] {
        assert_eq!(Entry::named(md.path(), name, e.key).as_ref(), Some(e));
    }
    let mut c = md
        .deliver_bytes(
            b"Subject: c

",
            "c1",
            Flags::READ,
        )
        .unwrap();
    let renamed = c.path.with_file_name("c1:2,Sax");
    fs::rename(&c.path, &renamed).unwrap();
    c.path = renamed;
    c.other = "ax".into();
    assert_eq!(Entry::named(md.path(), "cur/c1:2,Sax", c.key), Some(c));
    assert_eq!(Entry::named(md.path(), "tmp/x", a.key), None);
    assert_eq!(Entry::named(md.path(), "x", a.key), None);
}

#[test]
fn deliver_link_shares_inode() {
    let (d, md) = new_maildir();
    let src = d.path().join("blob");
    fs::write(&src, b"content").unwrap();
    let e = md
        .deliver_link(&src, &Maildir::new_base_name(), Flags::REPLIED)
        .unwrap();
    assert_eq!(e.subdir, Subdir::Cur);
    assert!(e.path.to_str().unwrap().ends_with(":2,R"));
    let src_key = InodeKey::from_metadata(&fs::metadata(&src).unwrap());
    assert_eq!(src_key.ino, e.key.ino);
    assert!(names(&md.tmp).is_empty());
}

/// A reader that yields some bytes, then fails.
struct FailingReader(usize);

impl Read for FailingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.0 == 0 {
            return Err(io::Error::other("network dropped"));
        }
        let n = self.0.min(buf.len());
        buf[..n].fill(b'x');
        self.0 -= n;
        Ok(n)
    }
}

#[test]
fn failed_delivery_leaves_nothing_in_cur_or_new() {
    let (d, md) = new_maildir();
    let err = md
        .deliver_reader(&mut FailingReader(100_000), "partial", Flags::READ)
        .unwrap_err();
    assert!(matches!(err, MaildirError::Write { .. }), "{err}");
    assert!(err.to_string().contains("partial"));
    assert!(names(md.subdir_path(Subdir::Cur)).is_empty());
    assert!(names(md.subdir_path(Subdir::New)).is_empty());
    assert!(names(&md.tmp).is_empty());

    // Link delivery from a missing source fails before anything is placed.
    let err = md
        .deliver_link(&d.path().join("nope"), "x1", Flags::NONE)
        .unwrap_err();
    assert!(matches!(err, MaildirError::Link { .. }));
    assert!(names(md.subdir_path(Subdir::New)).is_empty());

    // A name collision in cur/ fails rather than replacing the existing file.
    md.deliver_bytes(b"first", "same", Flags::READ).unwrap();
    let err = md
        .deliver_bytes(b"second", "same", Flags::READ)
        .unwrap_err();
    assert!(matches!(err, MaildirError::Exists { .. }), "{err}");
    assert_eq!(names(md.subdir_path(Subdir::Cur)), vec!["same:2,S"]);
    assert_eq!(
        fs::read(md.subdir_path(Subdir::Cur).join("same:2,S")).unwrap(),
        b"first"
    );
    assert!(names(&md.tmp).is_empty());
}

#[test]
fn bad_base_names_are_refused() {
    let (_d, md) = new_maildir();
    for base in ["", ".hidden", "a/b", "a:2,S"] {
        let err = md.deliver_bytes(b"x", base, Flags::NONE).unwrap_err();
        assert!(matches!(err, MaildirError::BadBase { .. }), "{base}");
    }
    let base = Maildir::new_base_name();
    assert!(!base.contains([':', '/']));
    assert_ne!(base, Maildir::new_base_name());
}

#[test]
fn scan_skips_dotfiles_dirs_and_symlinks() {
    let (d, md) = new_maildir();
    let cur = md.subdir_path(Subdir::Cur).to_path_buf();
    let new = md.subdir_path(Subdir::New).to_path_buf();
    fs::write(cur.join(".hidden:2,S"), b"x").unwrap();
    fs::write(new.join(".nfs0001"), b"x").unwrap();
    fs::create_dir(cur.join("subdir:2,S")).unwrap();
    let outside = d.path().join("outside");
    fs::write(&outside, b"x").unwrap();
    symlink(&outside, new.join("link")).unwrap();
    symlink(d.path().join("dangling"), cur.join("dangling:2,S")).unwrap();
    fs::write(md.tmp.join("inflight"), b"x").unwrap();
    fs::write(cur.join("real:2,DS"), b"x").unwrap();
    fs::write(new.join("fresh"), b"y").unwrap();

    let scan = md.scan().unwrap();
    let mut got: Vec<(String, Subdir, Flags, String)> = scan
        .entries
        .iter()
        .map(|e| (e.base.clone(), e.subdir, e.flags, e.other.clone()))
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("fresh".into(), Subdir::New, Flags::NONE, String::new()),
            ("real".into(), Subdir::Cur, Flags::READ, "D".into()),
        ]
    );
}

#[test]
fn set_flags_renames_and_keeps_other_letters() {
    let (_d, md) = new_maildir();
    let e = md.deliver_bytes(b"m", "base1", Flags::NONE).unwrap();
    // new/ -> cur/ when a flag appears.
    let e = md.set_flags(&e, Flags::READ).unwrap();
    assert_eq!(e.path, md.subdir_path(Subdir::Cur).join("base1:2,S"));
    // An MUA adds a draft letter; it survives our flag change.
    let with_d = md.subdir_path(Subdir::Cur).join("base1:2,DS");
    fs::rename(&e.path, &with_d).unwrap();
    let e = md.scan().unwrap().entries.pop().unwrap();
    assert_eq!(e.other, "D");
    let e = md.set_flags(&e, Flags::FLAGGED | Flags::DELETED).unwrap();
    assert_eq!(e.path, md.subdir_path(Subdir::Cur).join("base1:2,DFT"));
    // Unchanged flags: no rename, same entry.
    assert_eq!(md.set_flags(&e, e.flags).unwrap(), e);
    // Only the other letter left: stays in cur/.
    let e = md.set_flags(&e, Flags::NONE).unwrap();
    assert_eq!(e.path, md.subdir_path(Subdir::Cur).join("base1:2,D"));
    assert_eq!(names(md.subdir_path(Subdir::Cur)), vec!["base1:2,D"]);
}

#[test]
fn set_flags_back_to_none_moves_to_new() {
    let (_d, md) = new_maildir();
    let e = md.deliver_bytes(b"m", "b2", Flags::READ).unwrap();
    let e = md.set_flags(&e, Flags::NONE).unwrap();
    assert_eq!(e.path, md.subdir_path(Subdir::New).join("b2"));
}

#[test]
fn vanished_files_are_reported_as_such() {
    let (_d, md) = new_maildir();
    let e = md.deliver_bytes(b"m", "gone", Flags::NONE).unwrap();
    // The MUA renames it behind our back.
    fs::rename(&e.path, md.subdir_path(Subdir::Cur).join("gone:2,S")).unwrap();
    assert!(matches!(
        md.set_flags(&e, Flags::FLAGGED),
        Err(MaildirError::Vanished { .. })
    ));
    assert!(matches!(md.remove(&e), Err(MaildirError::Vanished { .. })));
    let e = md.scan().unwrap().entries.pop().unwrap();
    md.remove(&e).unwrap();
    assert!(md.scan().unwrap().entries.is_empty());
    md.sync().unwrap();
}

#[test]
fn watcher_reports_rename_in_cur() {
    let (_d, md) = new_maildir();
    let e = md.deliver_bytes(b"m", "w1", Flags::READ).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let (guard, mut rx) =
            watch(vec![md.path().to_path_buf()], Duration::from_millis(50)).unwrap();
        // A dot file next to the rename must not disturb the event.
        fs::write(md.subdir_path(Subdir::Cur).join(".tmpfile"), b"x").unwrap();
        md.set_flags(&e, Flags::READ | Flags::REPLIED).unwrap();
        let ev = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("no watch event within 10 s")
            .expect("watch channel closed");
        assert_eq!(ev.maildir, md.path());
        assert!(!ev.rescan);
        // Both names of the rename, not the dot file.
        let renamed = md.scan().unwrap().entries.pop().unwrap().path;
        let mut want = vec![e.path.clone(), renamed];
        want.sort();
        assert_eq!(ev.paths, want);
        drop(guard);
        // After the guard goes, the channel closes (eventually).
        let end = tokio::time::timeout(Duration::from_secs(10), async {
            while rx.recv().await.is_some() {}
        })
        .await;
        assert!(
            end.is_ok(),
            "watch channel did not close after the guard was dropped"
        );
    });
}

#[test]
fn watch_event_mapping_ignores_dotfiles() {
    use watch::Place;
    let roots = vec![PathBuf::from("/m/a"), PathBuf::from("/m/b")];
    let place = |p: &str| watch::place_of(Path::new(p), &roots);
    assert_eq!(place("/m/b/cur/x:2,S"), Some(Place::File(1)));
    assert_eq!(place("/m/a/new/x"), Some(Place::File(0)));
    assert_eq!(place("/m/a/new/.x"), None);
    assert_eq!(place("/m/a/tmp/x"), None);
    assert_eq!(place("/m/a/cur"), Some(Place::Subdir(0)));
}

#[test]
fn interrupted_deliveries_of_dead_processes_are_cleared() {
    let (_dir, md) = new_maildir();
    let tmp = md.path().join("tmp");
    let ours = Maildir::new_base_name();
    let host = ours
        .split_once('Q')
        .unwrap()
        .1
        .split_once('.')
        .unwrap()
        .1
        .to_string();
    // A pid no process has (beyond the kernel's pid_max).
    let dead = format!("1700000000.M1P4999999Q3.{host}");
    let other_host = "1700000000.M1P4999999Q3.elsewhere".to_string();
    let mutt = "1700000000.12345_1.somehost".to_string();
    for n in [&ours, &dead, &other_host, &mutt] {
        fs::write(tmp.join(n), b"x").unwrap();
    }
    assert_eq!(md.clear_interrupted_deliveries(), 1);
    let mut left = names(&tmp);
    left.sort();
    let mut want = vec![ours, other_host, mutt];
    want.sort();
    assert_eq!(left, want, "only the dead process's delivery goes");
}

#[test]
fn process_liveness_and_hostname() {
    assert!(super::process_alive(std::process::id()));
    // pid 1 exists (EPERM when it is not ours counts as alive).
    assert!(super::process_alive(1));
    // Beyond the kernel's pid_max, beyond i32, and pid 0: no process.
    assert!(!super::process_alive(4_999_999));
    assert!(!super::process_alive(u32::MAX));
    assert!(!super::process_alive(0));
    let host = super::hostname();
    assert!(!host.is_empty());
    assert!(!host.contains('/') && !host.contains(':'));
}
