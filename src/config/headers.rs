//! Message header lookup for `msg.get_header(name)` in `direct_message`,
//! with exact parity to the original Python program, which did:
//!
//! ```python
//! emsg = email.parser.BytesParser().parsebytes(data)   # policy compat32
//! val = emsg.get(hdr)
//! if val is None: return None
//! return re.sub(r"\n[ \t]+", " ", str(val)).strip()
//! ```
//!
//! The quirks of CPython 3.11's `email.feedparser` and `compat32` policy that
//! this module reproduces, without running Python:
//!
//! - Bytes are decoded as ASCII with `surrogateescape`; lines end at `\r\n`,
//!   `\n` or a lone `\r` (all three, mixed freely).
//! - A line belongs to the header block when it matches
//!   `^(From |[\041-\071\073-\176]*:|[\t ])`; the first line that does not
//!   ends the block. A blank line is swallowed as the separator; any other
//!   line (no colon, whitespace or 8-bit bytes before the colon, a leading
//!   NUL, ...) is pushed into the body, so later "headers" are invisible.
//! - A `From ` line is the unix-from when first, is dropped when last (it is
//!   pushed back into the body), and is ignored elsewhere. A line starting
//!   with `:` (empty name) is ignored. Continuation lines that follow no
//!   header (at the very start, after the unix-from, after an ignored line)
//!   are dropped.
//! - The value is the rest of the first line with leading spaces and tabs
//!   removed, plus every continuation line verbatim (line endings included),
//!   minus trailing `\r`/`\n` characters. Empty values are `""`, not `None`.
//! - Lookup is case-insensitive (Python `str.lower`, so the Kelvin sign
//!   matches `k`) and the first occurrence wins.
//! - RFC 2047 encoded words are never decoded. A value with 8-bit bytes comes
//!   back as an `unknown-8bit` `Header` whose `str()` turns each such byte
//!   into U+FFFD and leaves everything else (whitespace, encoded words next to
//!   the 8-bit text) untouched.
//! - Unfolding only replaces `\n` followed by spaces/tabs with one space, so
//!   CRLF messages keep a `\r` before that space; `strip()` then removes
//!   Python whitespace, which includes `\x0b`, `\x0c` and `\x1c`..`\x1f`.

use std::fs::File;
use std::io::{self, Read};
use std::ops::Range;
use std::path::Path;

/// Default bound on the bytes buffered while looking for the end of the header block.
pub const DEFAULT_HEADER_CAP: usize = 1 << 20;

/// Bytes asked of the reader per `read` call.
const READ_CHUNK: usize = 16 * 1024;

/// The header fields of one message, parsed once and queried by name.
#[derive(Clone, Debug, Default)]
pub struct HeaderBlock {
    /// The raw bytes of the header block (the lines the parser accepted).
    buf: Box<[u8]>,
    /// The ASCII-lowercased field names, concatenated.
    names: Box<[u8]>,
    /// The fields in message order.
    fields: Vec<Field>,
    /// True when the header block did not end within the read cap.
    truncated: bool,
}

/// One header field: its lowercased name in `names`, its value in `buf`.
#[derive(Clone, Debug)]
struct Field {
    name: Range<usize>,
    value: Range<usize>,
}

impl HeaderBlock {
    /// Parses the header block at the start of `data`: a whole message, or a
    /// prefix that includes the whole line ending the block; the body is ignored.
    pub fn parse(data: &[u8]) -> HeaderBlock {
        let mut scan = LineScan::default();
        scan.advance(data, true);
        let end = scan.end();
        HeaderBlock::build(data[..end].into(), &scan.lines, false)
    }

    /// Reads just enough of `reader` to parse the header block, buffering at
    /// most [`DEFAULT_HEADER_CAP`] bytes.
    pub fn read_from<R: Read>(reader: R) -> io::Result<HeaderBlock> {
        HeaderBlock::read_from_with_cap(reader, DEFAULT_HEADER_CAP)
    }

    /// Reads just enough of `reader` to parse the header block, buffering at
    /// most about `cap` bytes.
    ///
    /// Reading stops with the chunk that holds the end of the header block, so
    /// the cap only matters when the header block itself is longer than `cap`
    /// (never for real mail; large bodies do not count). In that case the
    /// complete header lines read so far are kept and
    /// [`is_truncated`](Self::is_truncated) reports it.
    pub fn read_from_with_cap<R: Read>(mut reader: R, cap: usize) -> io::Result<HeaderBlock> {
        let mut buf: Vec<u8> = Vec::new();
        let mut chunk = [0u8; READ_CHUNK];
        let mut scan = LineScan::default();
        let mut eof = false;
        let mut truncated = false;
        while !scan.advance(&buf, eof) {
            let old = buf.len();
            // At the cap, probe with one byte: only a real EOF may finish.
            let want = if old >= cap {
                1
            } else {
                READ_CHUNK.min(cap - old)
            };
            let n = loop {
                match reader.read(&mut chunk[..want]) {
                    Ok(n) => break n.min(want),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            };
            buf.extend_from_slice(&chunk[..n]);
            if n == 0 {
                eof = true;
            } else if old >= cap {
                truncated = true;
                break;
            }
        }
        buf.truncate(scan.end());
        Ok(HeaderBlock::build(
            buf.into_boxed_slice(),
            &scan.lines,
            truncated,
        ))
    }

    /// Reads the header block of the message file at `path` without reading its body.
    pub fn read_file(path: &Path) -> io::Result<HeaderBlock> {
        HeaderBlock::read_from(File::open(path)?)
    }

    /// The value of the first header called `name` (any case), unfolded and
    /// stripped exactly as the original Python `get_header` did, or `None`.
    pub fn get(&self, name: &str) -> Option<String> {
        let field = if name.is_ascii() {
            let want = name.as_bytes();
            self.fields
                .iter()
                .find(|f| self.name_of(f).eq_ignore_ascii_case(want))
        } else {
            // Python lowercases with full Unicode rules; stored names are ASCII.
            let lower = name.to_lowercase();
            if !lower.is_ascii() {
                return None;
            }
            self.fields
                .iter()
                .find(|f| self.name_of(f) == lower.as_bytes())
        }?;
        Some(clean_value(self.buf.get(field.value.clone())?))
    }

    /// The `Message-ID` header as [`get`](Self::get) returns it.
    pub fn message_id(&self) -> Option<String> {
        self.get("Message-ID")
    }

    /// True when the header block was longer than the read cap and was cut
    /// after its last complete line.
    pub fn is_truncated(&self) -> bool {
        self.truncated
    }

    /// The lowercased name of `field`.
    fn name_of(&self, field: &Field) -> &[u8] {
        self.names.get(field.name.clone()).unwrap_or_default()
    }

    /// Turns the accepted header lines into fields, as `_parse_headers` and
    /// `Compat32.header_source_parse` do.
    fn build(buf: Box<[u8]>, lines: &[Range<usize>], truncated: bool) -> HeaderBlock {
        let mut names = Vec::new();
        let mut fields = Vec::new();
        // (name range in buf, value range in buf) of the field being collected.
        let mut cur: Option<(Range<usize>, Range<usize>)> = None;
        for range in lines {
            let Some(line) = buf.get(range.clone()) else {
                break;
            };
            let Some(&first) = line.first() else {
                continue;
            };
            if first == b' ' || first == b'\t' {
                // Continuation; dropped when no field is open.
                if let Some((_, value)) = cur.as_mut() {
                    value.end = range.end;
                }
                continue;
            }
            if let Some((name, value)) = cur.take() {
                push_field(&buf, &mut names, &mut fields, name, value);
            }
            if line.starts_with(b"From ") {
                // The unix-from (first line), a misplaced one (ignored) or,
                // when last, the body's first line (pushed back): never a field.
                continue;
            }
            match line.iter().position(|&b| b == b':') {
                Some(i) if i > 0 => {
                    let start = range.start;
                    cur = Some((start..start + i, start + i + 1..range.end));
                }
                // Empty field name: a defect, the line is ignored.
                _ => {}
            }
        }
        if let Some((name, value)) = cur.take() {
            push_field(&buf, &mut names, &mut fields, name, value);
        }
        HeaderBlock {
            buf,
            names: names.into_boxed_slice(),
            fields,
            truncated,
        }
    }
}

/// Records one field, trimming its value like `header_source_parse`:
/// leading spaces/tabs of the first line, trailing CR/LF of the whole.
fn push_field(
    buf: &[u8],
    names: &mut Vec<u8>,
    fields: &mut Vec<Field>,
    name: Range<usize>,
    value: Range<usize>,
) {
    let raw = buf.get(value.clone()).unwrap_or_default();
    let lead = raw.iter().take_while(|&&b| b == b' ' || b == b'\t').count();
    let trail = raw[lead..]
        .iter()
        .rev()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count();
    let start = names.len();
    names.extend(
        buf.get(name)
            .unwrap_or_default()
            .iter()
            .map(u8::to_ascii_lowercase),
    );
    fields.push(Field {
        name: start..names.len(),
        value: value.start + lead..value.end - trail,
    });
}

/// `re.sub(r"\n[ \t]+", " ", str(value)).strip()` on a raw value, where
/// `str()` maps every 8-bit byte to U+FFFD (the `unknown-8bit` `Header`).
fn clean_value(raw: &[u8]) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let mut iter = raw.iter().copied().peekable();
    while let Some(b) = iter.next() {
        if b == b'\n' && matches!(iter.peek(), Some(b' ' | b'\t')) {
            while matches!(iter.peek(), Some(b' ' | b'\t')) {
                iter.next();
            }
            out.push(b' ');
        } else {
            out.push(b);
        }
    }
    let start = out
        .iter()
        .position(|&b| !is_py_space(b))
        .unwrap_or(out.len());
    let end = out
        .iter()
        .rposition(|&b| !is_py_space(b))
        .map_or(start, |i| i + 1);
    out[start..end]
        .iter()
        .map(|&b| if b.is_ascii() { b as char } else { '\u{FFFD}' })
        .collect()
}

/// True for the ASCII characters Python's `str.isspace` accepts.
fn is_py_space(b: u8) -> bool {
    matches!(b, b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | 0x1c..=0x1f | b' ')
}

/// Incremental split of the input into the lines of the header block, as the
/// feedparser's header loop sees them.
#[derive(Debug, Default)]
struct LineScan {
    /// Accepted header lines, line endings included; contiguous from 0.
    lines: Vec<Range<usize>>,
    /// Start of the first line not yet classified.
    pos: usize,
    /// The end of the header block is known.
    done: bool,
}

impl LineScan {
    /// Classifies as many lines of `data` as possible; `data` only ever grows
    /// between calls, and `eof` says no more will come. True once done.
    fn advance(&mut self, data: &[u8], eof: bool) -> bool {
        while !self.done {
            let rest = data.get(self.pos..).unwrap_or_default();
            if rest.is_empty() {
                self.done = eof;
                break;
            }
            match header_line_start(rest, eof) {
                None => break,
                Some(false) => self.done = true,
                Some(true) => match line_len(rest, eof) {
                    None => break,
                    Some(n) => {
                        self.lines.push(self.pos..self.pos + n);
                        self.pos += n;
                    }
                },
            }
        }
        self.done
    }

    /// End of the accepted header lines.
    fn end(&self) -> usize {
        self.lines.last().map_or(0, |r| r.end)
    }
}

/// Whether a line starting at `rest` (non-empty) matches the feedparser's
/// `headerRE`; `None` when more data is needed to tell.
fn header_line_start(rest: &[u8], eof: bool) -> Option<bool> {
    if matches!(rest.first(), Some(b' ' | b'\t')) || rest.starts_with(b"From ") {
        return Some(true);
    }
    for &b in rest {
        if b == b':' {
            return Some(true);
        }
        if !(0x21..=0x7e).contains(&b) {
            return Some(false);
        }
    }
    // Ran out inside a would-be name (or a prefix of "From ").
    if eof { Some(false) } else { None }
}

/// Length of the line at the start of `rest`, its line ending (`\r\n`, `\n`
/// or `\r`) included; `None` when more data is needed to tell.
fn line_len(rest: &[u8], eof: bool) -> Option<usize> {
    match rest.iter().position(|&b| b == b'\n' || b == b'\r') {
        None => eof.then_some(rest.len()),
        Some(i) if rest[i] == b'\n' => Some(i + 1),
        Some(i) => match rest.get(i + 1) {
            Some(b'\n') => Some(i + 2),
            Some(_) => Some(i + 1),
            // A `\r` at the end: maybe the first half of `\r\n`.
            None => eof.then_some(i + 1),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    use std::io::Write;
    use std::process::{Command, Stdio};

    fn get(data: &[u8], name: &str) -> Option<String> {
        HeaderBlock::parse(data).get(name)
    }

    fn s(v: &str) -> Option<String> {
        Some(v.to_string())
    }

    #[test]
    fn folded_list_id_lf() {
        let m = b"List-Id: Linux kernel\n <linux-kernel.vger.kernel.org>\nSubject: x\n\nbody\n";
        assert_eq!(
            get(m, "List-ID"),
            s("Linux kernel <linux-kernel.vger.kernel.org>")
        );
        assert_eq!(get(m, "list-id"), get(m, "LIST-ID"));
    }

    #[test]
    fn tab_folding_collapses_to_one_space() {
        let m = b"References: <a@b>\n\t\t<c@d>\n  \t<e@f>\n\n";
        assert_eq!(get(m, "references"), s("<a@b> <c@d> <e@f>"));
    }

    #[test]
    fn crlf_folding_keeps_cr() {
        let m = b"Subject: one\r\n two\r\n\r\nbody";
        assert_eq!(get(m, "Subject"), s("one\r two"));
        let m = b"Subject: one  \r\n\r\n";
        assert_eq!(get(m, "Subject"), s("one"));
    }

    #[test]
    fn lone_cr_line_endings() {
        let m = b"Subject: one\r two\rTo: x\r\rFrom: body\r";
        assert_eq!(get(m, "Subject"), s("one\r two"));
        assert_eq!(get(m, "To"), s("x"));
        assert_eq!(get(m, "From"), None);
    }

    #[test]
    fn eight_bit_becomes_replacement_chars() {
        let m = b"Subject: =?utf-8?q?caf=C3=A9?= caf\xc3\xa9  \n\t=?iso-8859-1?b?Zm9v?=\xff\n\n";
        assert_eq!(
            get(m, "subject"),
            s("=?utf-8?q?caf=C3=A9?= caf\u{FFFD}\u{FFFD}   =?iso-8859-1?b?Zm9v?=\u{FFFD}")
        );
        // Encoded words alone are returned undecoded.
        let m = b"Subject: =?UTF-8?B?w6k=?= =?UTF-8?B?w6k=?=\n";
        assert_eq!(get(m, "subject"), s("=?UTF-8?B?w6k=?= =?UTF-8?B?w6k=?="));
    }

    #[test]
    fn empty_values() {
        let m = b"X-Empty:\nX-Spaces:   \t\nX-Folded-Empty:\n \nSubject: x\n\n";
        assert_eq!(get(m, "x-empty"), s(""));
        assert_eq!(get(m, "x-spaces"), s(""));
        assert_eq!(get(m, "x-folded-empty"), s(""));
        assert_eq!(get(b"X-Last:", "x-last"), s(""));
        assert_eq!(get(b"X-Last:  ", "x-last"), s(""));
    }

    #[test]
    fn first_occurrence_wins() {
        let m = b"Subject: first\nsubject: second\nSUBJECT: third\n\n";
        assert_eq!(get(m, "Subject"), s("first"));
    }

    #[test]
    fn line_without_colon_ends_headers() {
        let m = b"Subject: x\nthis is not a header\nTo: y\n\n";
        assert_eq!(get(m, "subject"), s("x"));
        assert_eq!(get(m, "to"), None);
        // Whitespace (or 8-bit bytes) before the colon also ends them.
        let m = b"Subject: x\nTo : y\nCc: z\n\n";
        assert_eq!(get(m, "to"), None);
        assert_eq!(get(m, "cc"), None);
        let m = b"Subject: x\nX-\xc3\xa9: y\nCc: z\n\n";
        assert_eq!(get(m, "cc"), None);
    }

    #[test]
    fn unix_from_lines() {
        let m = b"From MAILER-DAEMON Mon Jan  1 00:00:00 2024\n cont\nSubject: x\n\n";
        assert_eq!(get(m, "subject"), s("x"));
        assert_eq!(get(m, "from"), None);
        // Last header line: pushed back into the body.
        let m = b"Subject: x\nFrom foo\n\n";
        assert_eq!(get(m, "subject"), s("x"));
        // Misplaced: ignored, and so is its continuation.
        let m = b"Subject: x\nFrom foo: bar\n cont\nTo: y\n\n";
        assert_eq!(get(m, "subject"), s("x"));
        assert_eq!(get(m, "to"), s("y"));
        assert_eq!(get(m, "from foo"), None);
        // "From:" is an ordinary header.
        assert_eq!(get(b"From: a@b\n\n", "from"), s("a@b"));
    }

    #[test]
    fn stray_continuations_and_empty_names() {
        let m = b" leading\n\tmore\nSubject: x\n:no name\n cont\nTo: y\n\n";
        assert_eq!(get(m, "subject"), s("x"));
        assert_eq!(get(m, "to"), s("y"));
        assert_eq!(get(m, ""), None);
    }

    #[test]
    fn no_body_and_no_trailing_newline() {
        assert_eq!(get(b"Subject: x", "subject"), s("x"));
        assert_eq!(get(b"Subject: x\n", "subject"), s("x"));
        assert_eq!(get(b"Subject: x\n y", "subject"), s("x y"));
        assert_eq!(get(b"", "subject"), None);
        assert_eq!(get(b"\n\nSubject: x\n", "subject"), None);
    }

    #[test]
    fn nul_and_control_bytes() {
        let m = b"Subject: a\x00b\n\x00X: y\n";
        assert_eq!(get(m, "subject"), s("a\0b"));
        assert_eq!(get(m, "x"), None);
        // Python's strip() removes \x0b, \x0c and \x1c..\x1f but not \x00.
        let m = b"Subject: \x1c\x0bv\x1f\x0c\x00\n";
        assert_eq!(get(m, "subject"), s("v\x1f\x0c\x00"));
    }

    #[test]
    fn unicode_lowercase_of_query() {
        let m = b"k: kelvin\n\n";
        assert_eq!(get(m, "\u{212a}"), s("kelvin"));
        assert_eq!(get(m, "\u{e9}"), None);
    }

    #[test]
    fn message_id_helper() {
        let m = b"Message-Id:\n <1234@example.com>\n\n";
        assert_eq!(HeaderBlock::parse(m).message_id(), s("<1234@example.com>"));
        assert_eq!(HeaderBlock::parse(b"Subject: x\n\n").message_id(), None);
    }

    /// A reader that hands out at most `step` bytes per call.
    struct Dribble<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Dribble<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(out.len()).min(self.data.len());
            out[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn reader_stops_after_headers_and_respects_cap() {
        let mut m = b"Subject: x\r\n".to_vec();
        m.extend(b"\r\n");
        m.extend(vec![b'x'; 5 << 20]);
        let mut r = io::Cursor::new(&m);
        let h = HeaderBlock::read_from(&mut r).unwrap();
        assert!(r.position() <= READ_CHUNK as u64);
        assert_eq!(h.get("subject"), s("x"));
        assert!(!h.is_truncated());

        let m = b"Subject: a\nTo: b\n c\n d\n";
        let h = HeaderBlock::read_from_with_cap(&m[..], 14).unwrap();
        assert!(h.is_truncated());
        assert_eq!(h.get("subject"), s("a"));
        let h = HeaderBlock::read_from_with_cap(&m[..], m.len()).unwrap();
        assert!(!h.is_truncated());
        assert_eq!(h.get("to"), s("b c d"));
    }

    #[test]
    fn read_file_works() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.eml");
        std::fs::write(&path, b"List-ID: <a.b>\n\nbody\n").unwrap();
        let h = HeaderBlock::read_file(&path).unwrap();
        assert_eq!(h.get("list-id"), s("<a.b>"));
    }

    const TOKENS: &[&[u8]] = &[
        b"From ",
        b"From",
        b"Subject",
        b"subject",
        b"List-Id",
        b"To",
        b"X",
        b"k",
        b": ",
        b":",
        b" ",
        b"\t",
        b"  ",
        b"\n",
        b"\r",
        b"\r\n",
        b"\n\n",
        b"\r\n\r\n",
        b"\x00",
        b"\xff",
        b"\xc3\xa9",
        b"\x1c",
        b"\x0b",
        b"=?utf-8?q?caf=C3=A9?=",
        b"=?iso-8859-1?b?Zm9v?=",
        b"<id@host>",
        b"Message-ID",
        b"List-ID",
        b"abc",
        b"a b",
        b"(",
        b"\\",
        b"Content-Type: multipart/mixed; boundary=b",
        b"--b",
        b"--b--",
        b"Content-Type: message/rfc822",
    ];

    /// Token soup: mostly header-ish fragments, some arbitrary bytes.
    fn soup(max: usize) -> impl Strategy<Value = Vec<u8>> {
        let token = prop_oneof![
            10 => prop::sample::select(TOKENS).prop_map(<[u8]>::to_vec),
            1 => prop::collection::vec(any::<u8>(), 0..4),
        ];
        prop::collection::vec(token, 0..max).prop_map(|v| v.concat())
    }

    /// A line shaped like a header, a continuation or junk, with a line ending.
    fn line() -> impl Strategy<Value = Vec<u8>> {
        let name = prop::sample::select(
            &[
                "Subject",
                "subject",
                "SUBJECT",
                "List-Id",
                "List-ID",
                "Message-ID",
                "To",
                "X",
                "k",
                "From",
                "From ",
                "X-A b",
                "",
            ][..],
        );
        let sep = prop::sample::select(&[":", ": ", ":\t", " :", ":  "][..]);
        let eol = prop::sample::select(&["\n", "\n", "\r\n", "\r\n", "\r", ""][..]);
        let body = prop_oneof![
            6 => (name, sep, soup(6)).prop_map(|(n, c, v)| [n.as_bytes(), c.as_bytes(), &v].concat()),
            3 => (prop::sample::select(&[" ", "\t", "  ", " \t"][..]), soup(6))
                .prop_map(|(w, v)| [w.as_bytes(), &v].concat()),
            1 => soup(4),
        ];
        (body, eol).prop_map(|(b, e)| [&b[..], e.as_bytes()].concat())
    }

    /// A random message: structured lines or plain token soup.
    fn message() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            3 => prop::collection::vec(line(), 0..12).prop_map(|v| v.concat()),
            1 => soup(40),
        ]
    }

    /// Names worth asking about `data`: fixed ones plus each line's would-be name.
    fn names_for(data: &[u8]) -> Vec<String> {
        let mut names: Vec<String> = ["Subject", "SUBJECT", "From", "From ", "to", "x", "k", "K"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for line in data.split(|&b| b == b'\n' || b == b'\r') {
            if let Some(i) = line.iter().position(|&b| b == b':')
                && let Ok(n) = std::str::from_utf8(&line[..i])
                && !names.iter().any(|x| x == n)
            {
                names.push(n.to_string());
            }
        }
        names
    }

    const ORACLE: &str = r#"
import sys, json, re, email.parser
out = []
for item in json.load(sys.stdin):
    emsg = email.parser.BytesParser().parsebytes(bytes.fromhex(item["hex"]))
    res = []
    for hdr in item["names"]:
        val = emsg.get(hdr)
        if val is None:
            res.append(None)
            continue
        v = re.sub(r"\n[ \t]+", " ", str(val)).strip()
        try:
            v.encode("utf-8")
            res.append(v)
        except UnicodeEncodeError:
            res.append({"unencodable": ascii(v)})
    out.append(res)
json.dump(out, sys.stdout)
"#;

    /// Runs the Python oracle once over all `(message, names)` cases.
    fn oracle(cases: &[(Vec<u8>, Vec<String>)]) -> Vec<Vec<serde_json::Value>> {
        let input: Vec<serde_json::Value> = cases
            .iter()
            .map(|(data, names)| {
                let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
                serde_json::json!({"hex": hex, "names": names})
            })
            .collect();
        let mut child = Command::new("/usr/bin/python3")
            .args(["-c", ORACLE])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run /usr/bin/python3");
        let mut stdin = child.stdin.take().unwrap();
        let body = serde_json::to_vec(&input).unwrap();
        let writer = std::thread::spawn(move || stdin.write_all(&body));
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        assert!(out.status.success(), "oracle failed");
        serde_json::from_slice(&out.stdout).unwrap()
    }

    #[test]
    fn random_blocks_match_python_oracle() {
        let mut runner = TestRunner::deterministic();
        let strategy = message();
        let cases: Vec<(Vec<u8>, Vec<String>)> = (0..5000)
            .map(|_| {
                let data = strategy.new_tree(&mut runner).unwrap().current();
                let names = names_for(&data);
                (data, names)
            })
            .collect();
        let expected = oracle(&cases);
        assert_eq!(expected.len(), cases.len());
        let mut failures = Vec::new();
        let mut found = 0;
        for ((data, names), want) in cases.iter().zip(&expected) {
            let block = HeaderBlock::parse(data);
            for (name, want) in names.iter().zip(want) {
                let got = block.get(name);
                let same = match (&got, want) {
                    (None, serde_json::Value::Null) => true,
                    (Some(g), serde_json::Value::String(w)) => {
                        found += 1;
                        g == w
                    }
                    _ => false,
                };
                if !same {
                    failures.push(format!(
                        "{:?} [{name:?}]: got {got:?}, python {want}",
                        String::from_utf8_lossy(data)
                    ));
                }
            }
        }
        assert!(
            failures.is_empty(),
            "{} mismatches:\n{}",
            failures.len(),
            failures.join("\n")
        );
        assert!(found > 3000, "only {found} lookups found a value");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..512),
                                       name in ".{0,8}") {
            let block = HeaderBlock::parse(&data);
            let _ = block.get(&name);
            let _ = block.message_id();
        }

        #[test]
        fn chunked_reads_match_parse(data in message(), step in 1usize..7) {
            let whole = HeaderBlock::parse(&data);
            let read = HeaderBlock::read_from(Dribble { data: &data, step }).unwrap();
            prop_assert!(!read.is_truncated());
            for name in names_for(&data) {
                prop_assert_eq!(whole.get(&name), read.get(&name));
            }
        }
    }
}
