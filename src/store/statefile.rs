//! Reading the checked state files of v0.1 (`ids.json`, `inodes.json`,
//! `sync.json`), which the state database replaced; they are imported once
//! and removed (see `store::import`).
//!
//! A file is one header line, `CMS-STATE <version> <kind> <length>
//! <blake3-of-body>`, then a compact JSON body. Loading verifies the header,
//! the length and the hash, so truncation and bit flips are caught; a bad
//! current file falls back to `<name>.prev`, and two bad files give an empty
//! state.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// Magic word opening every state file.
const MAGIC: &str = "CMS-STATE";

/// Current format version.
const VERSION: u32 = 1;

/// Why a state file could not be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Corrupt {
    /// Reading it failed.
    #[error("unreadable: {0}")]
    Io(#[from] io::Error),
    /// The header line is missing or malformed.
    #[error("bad header")]
    Header,
    /// Written by another format version.
    #[error("format version {0}, expected {VERSION}")]
    Version(u32),
    /// Holds another kind of state.
    #[error("holds {0:?} state")]
    Kind(String),
    /// The body is shorter or longer than the header says.
    #[error("body is {got} bytes, header says {expected}")]
    Length {
        /// What the header says.
        expected: usize,
        /// What is there.
        got: usize,
    },
    /// The body does not match its checksum.
    #[error("checksum mismatch")]
    Checksum,
    /// The body is not the expected JSON.
    #[error("bad JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Header plus body, as v0.1 wrote it.
#[cfg(test)]
pub(crate) fn encode(kind: &str, body: &[u8]) -> Vec<u8> {
    let header = format!(
        "{MAGIC} {VERSION} {kind} {} {}\n",
        body.len(),
        blake3::hash(body).to_hex()
    );
    let mut out = Vec::with_capacity(header.len() + body.len());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(body);
    out
}

/// The verified body of a state file of this `kind`.
pub(crate) fn decode<'a>(kind: &str, data: &'a [u8]) -> Result<&'a [u8], Corrupt> {
    let nl = data
        .iter()
        .position(|&b| b == b'\n')
        .ok_or(Corrupt::Header)?;
    let header = std::str::from_utf8(&data[..nl]).map_err(|_| Corrupt::Header)?;
    let body = &data[nl + 1..];
    let fields: Vec<&str> = header.split(' ').collect();
    let [magic, version, file_kind, len, hash] = fields[..] else {
        return Err(Corrupt::Header);
    };
    if magic != MAGIC {
        return Err(Corrupt::Header);
    }
    let version: u32 = version.parse().map_err(|_| Corrupt::Header)?;
    if version != VERSION {
        return Err(Corrupt::Version(version));
    }
    if file_kind != kind {
        return Err(Corrupt::Kind(file_kind.to_string()));
    }
    let expected: usize = len.parse().map_err(|_| Corrupt::Header)?;
    if body.len() != expected {
        return Err(Corrupt::Length {
            expected,
            got: body.len(),
        });
    }
    let want = blake3::Hash::from_hex(hash).map_err(|_| Corrupt::Header)?;
    // blake3::Hash compares in constant time; speed is what matters here,
    // and it is fast either way.
    if blake3::hash(body) != want {
        return Err(Corrupt::Checksum);
    }
    Ok(body)
}

/// One state file and its previous generation.
#[derive(Debug)]
pub(crate) struct StateFile {
    path: PathBuf,
    prev: PathBuf,
    kind: &'static str,
}

impl StateFile {
    /// The state file `dir/name` (and `dir/name.prev`) holding `kind`.
    pub(crate) fn new(dir: &Path, name: &str, kind: &'static str) -> StateFile {
        StateFile {
            path: dir.join(name),
            prev: dir.join(format!("{name}.prev")),
            kind,
        }
    }

    /// The current file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The previous generation's path.
    pub(crate) fn prev_path(&self) -> &Path {
        &self.prev
    }

    /// Loads the newest good generation, or `T::default()` when none is
    /// good; problems are logged, never fatal. Blocking.
    pub(crate) fn load<T: DeserializeOwned + Default>(&self) -> T {
        match read_checked(&self.path, self.kind) {
            Ok(Some(v)) => return v,
            Ok(None) => {}
            Err(e) => tracing::warn!(
                path = %self.path.display(), error = %e,
                "state file is damaged; trying the previous generation"
            ),
        }
        match read_checked(&self.prev, self.kind) {
            Ok(Some(v)) => {
                tracing::warn!(path = %self.prev.display(), "using the previous state generation");
                v
            }
            Ok(None) => T::default(),
            Err(e) => {
                tracing::warn!(
                    path = %self.prev.display(), error = %e,
                    "previous state file is damaged too; starting with empty state"
                );
                T::default()
            }
        }
    }
}

/// Reads and verifies one file: `Ok(None)` when it does not exist.
fn read_checked<T: DeserializeOwned>(path: &Path, kind: &str) -> Result<Option<T>, Corrupt> {
    let data = match fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let body = decode(kind, &data)?;
    Ok(Some(serde_json::from_slice(body)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_catches_damage() {
        let good = encode("ids", b"[1,2,3]");
        assert_eq!(decode("ids", &good).unwrap(), b"[1,2,3]");
        assert!(matches!(decode("inodes", &good), Err(Corrupt::Kind(_))));
        assert!(matches!(
            decode("ids", &good[..good.len() - 1]),
            Err(Corrupt::Length { .. })
        ));
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x04;
            assert!(decode("ids", &bad).is_err(), "flip at {i} not detected");
        }
        assert!(matches!(decode("ids", b""), Err(Corrupt::Header)));
        let v2 = String::from_utf8(good.clone())
            .unwrap()
            .replacen(" 1 ", " 2 ", 1);
        assert!(matches!(
            decode("ids", v2.as_bytes()),
            Err(Corrupt::Version(2))
        ));
    }

    #[test]
    fn previous_generation_and_fallback() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::new(dir.path(), "x.json", "x");
        assert_eq!(f.load::<Vec<u32>>(), Vec::<u32>::new());
        fs::write(f.path(), encode("x", b"[1,2]")).unwrap();
        fs::write(f.prev_path(), encode("x", b"[1]")).unwrap();
        assert_eq!(f.load::<Vec<u32>>(), vec![1, 2]);
        fs::write(f.path(), b"garbage").unwrap();
        assert_eq!(f.load::<Vec<u32>>(), vec![1]);
        fs::write(f.prev_path(), b"garbage").unwrap();
        assert_eq!(f.load::<Vec<u32>>(), Vec::<u32>::new());
        // Valid envelope, wrong JSON shape: also damage.
        fs::write(f.path(), encode("x", b"{\"a\":1}")).unwrap();
        assert_eq!(f.load::<Vec<u32>>(), Vec::<u32>::new());
    }
}
