//! CRLF → LF, the one conversion every message goes through (cloud content
//! on its way to a maildir, and content hashing). Streaming: a CRLF split
//! across two chunks is still recognised. A CR not followed by LF is kept.

use std::io::{self, Write};

/// The streaming converter; a CR at the end of one chunk waits for the next.
#[derive(Clone, Debug, Default)]
pub struct Dos2Unix {
    cr: bool,
    /// [`Dos2Unix::write`]'s output buffer, kept between chunks.
    buf: Vec<u8>,
}

impl Dos2Unix {
    /// Convert `chunk`, handing the converted bytes to `emit` in pieces
    /// (slices of `chunk`, no copy).
    pub fn convert(&mut self, chunk: &[u8], mut emit: impl FnMut(&[u8])) {
        let Some(&first) = chunk.first() else {
            return;
        };
        if std::mem::take(&mut self.cr) && first != b'\n' {
            emit(b"\r");
        }
        let (mut start, mut from) = (0, 0);
        while let Some(off) = chunk[from..].iter().position(|&b| b == b'\r') {
            let cr = from + off;
            match chunk.get(cr + 1) {
                None => {
                    emit(&chunk[start..cr]);
                    self.cr = true;
                    return;
                }
                Some(b'\n') => {
                    emit(&chunk[start..cr]);
                    start = cr + 1;
                }
                Some(_) => {}
            }
            from = cr + 1;
        }
        emit(&chunk[start..]);
    }

    /// The end of the input: hand over a CR still held back.
    pub fn end(&mut self, mut emit: impl FnMut(&[u8])) {
        if std::mem::take(&mut self.cr) {
            emit(b"\r");
        }
    }

    /// Convert `chunk` and write it to `out` in one write.
    pub fn write(&mut self, chunk: &[u8], out: &mut dyn Write) -> io::Result<()> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        self.convert(chunk, |s| buf.extend_from_slice(s));
        let r = out.write_all(&buf);
        self.buf = buf;
        r
    }

    /// The end of the input: write a CR still held back to `out`.
    pub fn finish(&mut self, out: &mut dyn Write) -> io::Result<()> {
        let mut r = Ok(());
        self.end(|s| r = out.write_all(s));
        r
    }
}

/// A whole message in memory, converted.
pub fn crlf_to_lf(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut c = Dos2Unix::default();
    c.convert(b, |s| out.extend_from_slice(s));
    c.end(|s| out.extend_from_slice(s));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn convert(chunks: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut c = Dos2Unix::default();
        for ch in chunks {
            c.write(ch, &mut out).unwrap();
        }
        c.finish(&mut out).unwrap();
        out
    }

    #[test]
    fn crlf_to_lf_across_every_chunk_boundary() {
        let input = b"a\r\nb\r\r\nc\rd\r\n\r\n\r";
        let want = b"a\nb\r\nc\rd\n\n\r".to_vec();
        assert_eq!(convert(&[input]), want);
        assert_eq!(crlf_to_lf(input), want);
        for cut in 0..=input.len() {
            let (x, y) = input.split_at(cut);
            assert_eq!(convert(&[x, y]), want, "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(convert(&bytes), want);
        assert_eq!(crlf_to_lf(b""), b"");
        assert_eq!(crlf_to_lf(b"\r"), b"\r");
    }
}
