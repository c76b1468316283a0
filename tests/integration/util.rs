//! Shared helpers of every module: log capture, temporary homes with their
//! config, running the binaries, building an engine, reading a maildir,
//! stored message content, and the cursor a state database would hold.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex, OnceLock};

use cloud_mdir_sync::config::{self, PathContext, PyActor};
use cloud_mdir_sync::daemon;
use cloud_mdir_sync::maildir::Maildir;
use cloud_mdir_sync::sync::engine::{Engine, Folder};
use cloud_mdir_sync::types::Flags;

/// Everything logged at debug level by every test in this binary (one
/// global subscriber: per-thread ones miss events from other threads).
pub fn log_buffer() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Capture> = OnceLock::new();
    &LOG.get_or_init(|| {
        let buf = Capture::default();
        let w = buf.clone();
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || w.clone())
            .try_init();
        buf
    })
    .0
}

/// What every test has logged so far.
pub fn logged() -> String {
    String::from_utf8_lossy(&log_buffer().lock().unwrap_or_else(|p| p.into_inner())).into_owned()
}

/// Collects everything a tracing subscriber writes; clones share the
/// buffer. The global [`log_buffer`] is one; a test may set its own as the
/// thread's default subscriber.
#[derive(Clone, Default)]
pub struct Capture(pub Arc<Mutex<Vec<u8>>>);

impl Capture {
    /// Everything written so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

impl Write for Capture {
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

    /// Home and working directory both here, as configs are read.
    pub fn paths(&self) -> PathContext {
        PathContext {
            home: self.path().to_path_buf(),
            cwd: self.path().to_path_buf(),
        }
    }

    /// Write `cms.cfg` with `text` and load it.
    pub fn config(&self, text: &str) -> config::Loaded {
        self.write("cms.cfg", text);
        self.load()
    }

    /// Load `cms.cfg` as it is (again: one per daemon run); a failure
    /// panics with the Python traceback.
    pub fn load(&self) -> config::Loaded {
        let file = self.path().join("cms.cfg");
        match config::load(&PyActor::spawn(), &file, &self.paths()) {
            Ok(l) => l,
            Err(e) => panic!("config failed: {e}\n{:?}", e.traceback),
        }
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

/// A fresh engine over `folders`, as the daemon builds it at start-up (the
/// store and maildirs of `loaded`).
pub async fn build_engine(loaded: &config::Loaded, folders: Vec<Folder>, offline: bool) -> Engine {
    let (store, maildirs) = daemon::prepare(loaded).await.expect("prepare");
    Engine::new(store, loaded.router.clone(), folders, maildirs, offline).expect("engine")
}

/// (path, flags) of every message in the maildir at `dir`, sorted.
pub fn maildir_files(dir: &Path) -> Vec<(PathBuf, Flags)> {
    let md = Maildir::open(dir).expect("maildir");
    let mut out: Vec<_> = md
        .scan()
        .expect("scan")
        .entries
        .into_iter()
        .map(|e| (e.path, e.flags))
        .collect();
    out.sort();
    out
}

/// A message's stored content (the emulator's base64 `raw`) with CRLF
/// turned into LF, as a maildir file or a download should hold it.
pub fn lf(m: &serde_json::Value) -> String {
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(m["raw"].as_str().expect("raw"))
        .expect("base64");
    String::from_utf8_lossy(&raw).replace("\r\n", "\n")
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
