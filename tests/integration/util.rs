//! Shared helpers: temporary homes, config files, running the binaries.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex, OnceLock};

/// Everything logged at debug level by every test in this binary (one
/// global subscriber: per-thread ones miss events from other threads).
pub fn log_buffer() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let w = buf.clone();
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || LogWriter(w.clone()))
            .try_init();
        buf
    })
}

/// What every test has logged so far.
pub fn logged() -> String {
    String::from_utf8_lossy(&log_buffer().lock().unwrap_or_else(|p| p.into_inner())).into_owned()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A temporary HOME with a config file in it.
pub struct Home {
    /// Keeps the directory alive.
    pub dir: tempfile::TempDir,
}

impl Home {
    /// A fresh empty home.
    pub fn new() -> Home {
        Home {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// The home directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Write `cms.cfg` (or another name) with `text`; returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path().join(name);
        std::fs::write(&p, text).expect("write config");
        p
    }

    /// Run `cloud-mdir-sync` with HOME and the working directory here.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_cloud-mdir-sync"))
            .args(args)
            .env("HOME", self.path())
            .env_remove("RUST_LOG")
            .current_dir(self.path())
            .output()
            .expect("run cloud-mdir-sync")
    }

    /// Every file and directory under the home, relative, sorted.
    pub fn tree(&self) -> Vec<String> {
        let mut out = Vec::new();
        walk(self.path(), self.path(), &mut out);
        out.sort();
        out
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let p = e.path();
        out.push(p.strip_prefix(root).unwrap_or(&p).display().to_string());
        if p.is_dir() {
            walk(root, &p, out);
        }
    }
}

/// Stdout as a string.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Stderr as a string.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A mailbox's cursor as the state database would hold it, built from the
/// deltas the mailbox hands out.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StoredCursor {
    pub head: Option<serde_json::Value>,
    pub records: std::collections::BTreeMap<String, String>,
}

impl StoredCursor {
    /// Takes in the mailbox's next delta; false when it had none.
    pub fn save(&mut self, mb: &dyn cloud_mdir_sync::cloud::CloudMailbox) -> bool {
        let Some(d) = mb.cursor_delta() else {
            return false;
        };
        self.apply(d);
        true
    }

    /// Takes in one delta.
    pub fn apply(&mut self, d: cloud_mdir_sync::cloud::CursorDelta) {
        if let Some(h) = d.head {
            self.head = Some(h);
        }
        if d.full {
            self.records.clear();
        }
        self.records.extend(d.put);
        for id in d.gone {
            self.records.remove(&id);
        }
    }

    /// A fresh copy with the mailbox's first delta taken in.
    pub fn of(mb: &dyn cloud_mdir_sync::cloud::CloudMailbox) -> Option<StoredCursor> {
        let mut c = StoredCursor::default();
        c.save(mb).then_some(c)
    }

    /// Hands the cursor to a mailbox, as a start-up does.
    pub fn load(&self, mb: &dyn cloud_mdir_sync::cloud::CloudMailbox) {
        if let Some(h) = &self.head {
            mb.load_cursor(h.clone(), self.records.values().cloned().collect());
        }
    }
}
