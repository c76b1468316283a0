//! Content identity: BLAKE3 of a message with every CRLF turned into LF,
//! computed in a streaming way so a CRLF split across two chunks is still
//! recognised. A CR not followed by LF is kept.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use crate::lf::Dos2Unix;
use crate::types::ContentHash;

/// Read buffer size for hashing files.
const READ_BUF: usize = 64 * 1024;

/// A streaming [`ContentHash`] computation that normalises CRLF to LF.
#[derive(Clone, Debug, Default)]
pub struct ContentHasher {
    inner: blake3::Hasher,
    lf: Dos2Unix,
}

impl ContentHasher {
    /// A hasher that has seen no data.
    pub fn new() -> ContentHasher {
        ContentHasher::default()
    }

    /// Feeds the next chunk of the message.
    pub fn update(&mut self, data: &[u8]) {
        let inner = &mut self.inner;
        self.lf.convert(data, |s| {
            inner.update(s);
        });
    }

    /// The hash of everything fed so far.
    pub fn finalize(&self) -> ContentHash {
        let mut h = self.inner.clone();
        self.lf.clone().end(|s| {
            h.update(s);
        });
        ContentHash(*h.finalize().as_bytes())
    }
}

/// The content hash of a whole message held in memory.
pub fn hash_bytes(data: &[u8]) -> ContentHash {
    let mut h = ContentHasher::new();
    h.update(data);
    h.finalize()
}

/// The content hash of everything `reader` yields, read through a buffer.
/// Blocking.
pub fn hash_reader(reader: impl Read) -> io::Result<ContentHash> {
    let mut reader = BufReader::with_capacity(READ_BUF, reader);
    let mut h = ContentHasher::new();
    loop {
        let buf = match reader.fill_buf() {
            Ok(buf) => buf,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok(h.finalize());
        }
        h.update(buf);
        let n = buf.len();
        reader.consume(n);
    }
}

/// The content hash of the file at `path`. Blocking; async callers use
/// `spawn_blocking`.
pub fn hash_file(path: &Path) -> io::Result<ContentHash> {
    hash_reader(File::open(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The reference: replace every CRLF by LF, then BLAKE3.
    fn reference(data: &[u8]) -> ContentHash {
        let mut out = Vec::with_capacity(data.len());
        let mut i = 0;
        while i < data.len() {
            if data[i] == b'\r' && data.get(i + 1) == Some(&b'\n') {
                i += 1;
                continue;
            }
            out.push(data[i]);
            i += 1;
        }
        ContentHash(*blake3::hash(&out).as_bytes())
    }

    #[test]
    fn crlf_and_lf_hash_alike() {
        assert_eq!(
            hash_bytes(b"a: b\r\n\r\nbody\r\n"),
            hash_bytes(b"a: b\n\nbody\n")
        );
        assert_ne!(hash_bytes(b"a\rb"), hash_bytes(b"a\nb"));
        assert_eq!(
            hash_bytes(b"a\r\r\n"),
            ContentHash(*blake3::hash(b"a\r\n").as_bytes())
        );
        assert_eq!(
            hash_bytes(b"x\r"),
            ContentHash(*blake3::hash(b"x\r").as_bytes())
        );
        assert_eq!(hash_bytes(b""), ContentHash(*blake3::hash(b"").as_bytes()));
    }

    #[test]
    fn split_exactly_between_cr_and_lf() {
        let mut h = ContentHasher::new();
        h.update(b"line\r");
        h.update(b"");
        h.update(b"\nnext\r");
        h.update(b"\r");
        h.update(b"x");
        assert_eq!(h.finalize(), reference(b"line\r\nnext\r\rx"));
    }

    #[test]
    fn file_hash_matches_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m");
        let data: Vec<u8> = (0..300_000u32)
            .map(|i| {
                if i % 7 == 0 {
                    b'\r'
                } else if i % 7 == 1 {
                    b'\n'
                } else {
                    b'a'
                }
            })
            .collect();
        std::fs::write(&p, &data).unwrap();
        assert_eq!(hash_file(&p).unwrap(), reference(&data));
    }

    proptest! {
        #[test]
        fn chunked_matches_reference(
            data in proptest::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'a'), any::<u8>()], 0..400),
            cuts in proptest::collection::vec(0usize..400, 0..8),
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
            cuts.sort_unstable();
            let mut h = ContentHasher::new();
            let mut prev = 0;
            for c in cuts {
                h.update(&data[prev..c]);
                prev = c;
            }
            h.update(&data[prev..]);
            prop_assert_eq!(h.finalize(), reference(&data));
            prop_assert_eq!(hash_bytes(&data), reference(&data));
        }
    }
}
