//! Header lookup with the Python program's results (placeholder; replaced by
//! the compat32-exact implementation).

/// The parsed header block of one message.
pub struct HeaderBlock {
    fields: Vec<(String, String)>,
}

impl HeaderBlock {
    /// Parse the header block at the start of `raw`.
    pub fn parse(raw: &[u8]) -> HeaderBlock {
        let text = String::from_utf8_lossy(raw);
        let mut fields: Vec<(String, String)> = Vec::new();
        for line in text.split('\n') {
            if line.trim_end_matches('\r').is_empty() {
                break;
            }
            if line.starts_with([' ', '\t']) {
                if let Some(last) = fields.last_mut() {
                    last.1.push('\n');
                    last.1.push_str(line);
                }
            } else if let Some((n, v)) = line.split_once(':') {
                fields.push((n.to_ascii_lowercase(), v.trim_start().to_string()));
            }
        }
        HeaderBlock { fields }
    }

    /// The first value of `name`, unfolded and stripped.
    pub fn get(&self, name: &str) -> Option<String> {
        let name = name.to_ascii_lowercase();
        self.fields.iter().find(|(n, _)| *n == name).map(|(_, v)| {
            let mut out = String::new();
            let mut chars = v.chars().peekable();
            while let Some(c) = chars.next() {
                if c == '\n' && matches!(chars.peek(), Some(' ') | Some('\t')) {
                    while matches!(chars.peek(), Some(' ') | Some('\t')) {
                        chars.next();
                    }
                    out.push(' ');
                } else {
                    out.push(c);
                }
            }
            out.trim().to_string()
        })
    }

    /// Read only the header part of the file at `path` and parse it.
    pub fn read_file(path: &std::path::Path) -> std::io::Result<HeaderBlock> {
        Ok(HeaderBlock::parse(&std::fs::read(path)?))
    }
}
