//! Just enough RFC 5322/2045/2047 to serve messages: CRLF normalisation, header
//! unfolding, encoded-word decoding, address parsing and a multipart tree.

use base64::Engine;

/// Converts any line ending to CRLF (what `$value` and Gmail `raw` serve).
pub fn to_crlf(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 40);
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'\r' if raw.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 2;
                continue;
            }
            b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
            c => out.push(c),
        }
        i += 1;
    }
    out
}

/// Splits a message into its header block and body (at the first empty line).
pub fn split(raw: &[u8]) -> (&[u8], &[u8]) {
    for i in 0..raw.len() {
        if raw[i..].starts_with(b"\r\n\r\n") {
            return (&raw[..i + 2], &raw[i + 4..]);
        }
        if raw[i..].starts_with(b"\n\n") {
            return (&raw[..i + 1], &raw[i + 2..]);
        }
    }
    (raw, &[])
}

/// Unfolded headers in order (name, value with surrounding whitespace trimmed).
pub fn headers(raw: &[u8]) -> Vec<(String, String)> {
    let (head, _) = split(raw);
    let text = String::from_utf8_lossy(head);
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        if line.starts_with(' ') || line.starts_with('\t') {
            if let Some(last) = out.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
        } else if let Some((n, v)) = line.split_once(':') {
            out.push((n.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

/// First header value by case-insensitive name.
pub fn header<'a>(hs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    hs.iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Decodes RFC 2047 encoded words (`=?UTF-8?B?...?=`, `Q`), other text kept.
pub fn decode_words(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    let mut last_was_word = false;
    while let Some(start) = rest.find("=?") {
        let before = &rest[..start];
        let after = &rest[start + 2..];
        let parsed = (|| {
            let (charset, r) = after.split_once('?')?;
            let (enc, r) = r.split_once('?')?;
            let end = r.find("?=")?;
            let text = &r[..end];
            let bytes = match enc {
                "B" | "b" => base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .ok()?,
                "Q" | "q" => qp_decode(&text.replace('_', " "), false),
                _ => return None,
            };
            let _ = charset;
            Some((
                String::from_utf8_lossy(&bytes).into_owned(),
                charset.len() + enc.len() + end + 4,
            ))
        })();
        match parsed {
            Some((decoded, used)) => {
                if !(last_was_word && before.trim().is_empty()) {
                    out.push_str(before);
                }
                out.push_str(&decoded);
                rest = &after[used..];
                last_was_word = true;
            }
            None => {
                out.push_str(&rest[..start + 2]);
                rest = after;
                last_was_word = false;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Decodes quoted-printable; `soft_breaks` handles `=\r\n` line continuations.
pub fn qp_decode(s: &str, soft_breaks: bool) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'=' {
            if soft_breaks && b[i + 1..].starts_with(b"\r\n") {
                i += 3;
                continue;
            }
            if soft_breaks && b[i + 1..].starts_with(b"\n") {
                i += 2;
                continue;
            }
            if i + 2 < b.len() {
                let hex = |c: u8| (c as char).to_digit(16);
                if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// One parsed mailbox address.
#[derive(Clone, Debug, Default)]
pub struct Addr {
    /// Display name (decoded), possibly empty.
    pub name: String,
    /// The address itself.
    pub address: String,
}

/// Parses an address list header (`"Name" <a@b>, c@d`).
pub fn addresses(v: &str) -> Vec<Addr> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_quote = false;
    let mut depth = 0;
    let mut parts = Vec::new();
    for c in v.chars() {
        match c {
            '"' => in_quote = !in_quote,
            '<' if !in_quote => depth += 1,
            '>' if !in_quote => depth -= 1,
            ',' if !in_quote && depth == 0 => {
                parts.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    parts.push(cur);
    for p in parts {
        let p = p.trim();
        if p.is_empty() {
            continue;
        }
        if let (Some(l), Some(r)) = (p.rfind('<'), p.rfind('>'))
            && l < r
        {
            out.push(Addr {
                name: decode_words(p[..l].trim().trim_matches('"')),
                address: p[l + 1..r].trim().to_string(),
            });
            continue;
        }
        out.push(Addr {
            name: String::new(),
            address: p.to_string(),
        });
    }
    out
}

/// Content-Type value split into lower-cased type and parameters.
pub fn content_type(v: Option<&str>) -> (String, Vec<(String, String)>) {
    let v = v.unwrap_or("text/plain");
    let mut it = v.split(';');
    let ty = it
        .next()
        .unwrap_or("text/plain")
        .trim()
        .to_ascii_lowercase();
    let params = it
        .filter_map(|p| {
            let (k, v) = p.split_once('=')?;
            Some((
                k.trim().to_ascii_lowercase(),
                v.trim().trim_matches('"').to_string(),
            ))
        })
        .collect();
    (ty, params)
}

/// One node of a parsed MIME tree.
#[derive(Clone, Debug)]
pub struct Part {
    /// Headers of this part.
    pub headers: Vec<(String, String)>,
    /// Lower-cased media type.
    pub mime_type: String,
    /// File name from Content-Disposition or Content-Type.
    pub filename: String,
    /// Decoded body (empty for multiparts).
    pub data: Vec<u8>,
    /// Children of a multipart.
    pub parts: Vec<Part>,
}

/// Parses a message into a MIME tree.
pub fn parse(raw: &[u8]) -> Part {
    parse_depth(raw, 0)
}

fn parse_depth(raw: &[u8], depth: usize) -> Part {
    let hs = headers(raw);
    let (_, body) = split(raw);
    let (mime_type, params) = content_type(header(&hs, "content-type"));
    let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let disp_name = header(&hs, "content-disposition").and_then(|d| {
        content_type(Some(d))
            .1
            .into_iter()
            .find(|(k, _)| k == "filename")
            .map(|(_, v)| decode_words(&v))
    });
    let filename = disp_name
        .or_else(|| param("name").map(|n| decode_words(&n)))
        .unwrap_or_default();
    let mut part = Part {
        headers: hs.clone(),
        mime_type: mime_type.clone(),
        filename,
        data: Vec::new(),
        parts: Vec::new(),
    };
    if mime_type.starts_with("multipart/")
        && depth < 20
        && let Some(b) = param("boundary")
    {
        let delim = format!("--{b}");
        let text = body;
        let mut pieces = Vec::new();
        let mut idx = find(text, delim.as_bytes(), 0);
        while let Some(start) = idx {
            let after = start + delim.len();
            if text[after..].starts_with(b"--") {
                break;
            }
            let content_start = match find(text, b"\n", after) {
                Some(n) => n + 1,
                None => break,
            };
            let next = find(text, delim.as_bytes(), content_start);
            let end = next.unwrap_or(text.len());
            let mut piece = &text[content_start..end];
            if piece.ends_with(b"\r\n") {
                piece = &piece[..piece.len() - 2];
            } else if piece.ends_with(b"\n") {
                piece = &piece[..piece.len() - 1];
            }
            pieces.push(piece);
            idx = next;
        }
        part.parts = pieces
            .into_iter()
            .map(|p| parse_depth(p, depth + 1))
            .collect();
        return part;
    }
    let cte = header(&hs, "content-transfer-encoding")
        .unwrap_or("7bit")
        .to_ascii_lowercase();
    part.data = match cte.as_str() {
        "base64" => {
            let clean: Vec<u8> = body
                .iter()
                .copied()
                .filter(|c| !c.is_ascii_whitespace())
                .collect();
            base64::engine::general_purpose::STANDARD
                .decode(&clean)
                .unwrap_or_else(|_| body.to_vec())
        }
        "quoted-printable" => qp_decode(&String::from_utf8_lossy(body), true),
        _ => body.to_vec(),
    };
    part
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if from > hay.len() || needle.is_empty() {
        return None;
    }
    hay[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// The first `text/plain` body of a tree, as text.
pub fn first_text(p: &Part) -> Option<String> {
    if p.parts.is_empty() {
        if p.mime_type == "text/plain" && p.filename.is_empty() {
            return Some(String::from_utf8_lossy(&p.data).into_owned());
        }
        return None;
    }
    p.parts.iter().find_map(first_text)
}

/// True when any leaf has a file name.
pub fn has_attachments(p: &Part) -> bool {
    (!p.filename.is_empty()) || p.parts.iter().any(has_attachments)
}

/// A one-line preview of at most `n` characters.
pub fn preview(text: &str, n: usize) -> String {
    let flat: Vec<&str> = text.split_whitespace().collect();
    flat.join(" ").chars().take(n).collect()
}

/// Parses an RFC 2822 `Date:` header into epoch milliseconds.
pub fn parse_date(v: &str) -> Option<i64> {
    let cleaned = match v.find('(') {
        Some(i) => v[..i].trim(),
        None => v.trim(),
    };
    chrono::DateTime::parse_from_rfc2822(cleaned)
        .ok()
        .map(|d| d.timestamp_millis())
}
