//! Realistic generated mail for `/_control/populate` and the `--populate-*` flags:
//! mailing lists with `List-Id` (sometimes folded), threads with In-Reply-To and
//! References, multipart attachments in base64, RFC 2047 subjects and UTF-8 bodies,
//! varied sizes and flags; everything deterministic from the seed.

use std::sync::Arc;

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::state::{App, Rng, State};

/// What to generate, and where.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PopulateSpec {
    /// Mailbox owner.
    pub user: String,
    /// `o365` or `gmail`.
    pub service: String,
    /// Office365 folder (path like `Inbox/Lists` or a well-known name) or Gmail label
    /// name/id; defaults to the inbox.
    #[serde(default)]
    pub folder: Option<String>,
    /// Number of messages.
    pub count: usize,
    /// Seed (defaults to the server's `--seed`).
    #[serde(default)]
    pub seed: Option<u64>,
    /// How many mailing lists to draw from (1..=8, default 5).
    #[serde(default)]
    pub lists: Option<usize>,
    /// Spread of receive times in days before the newest (default 60).
    #[serde(default)]
    pub days: Option<u32>,
}

impl PopulateSpec {
    /// Parses `USER:FOLDER:N` as given to `--populate-o365` / `--populate-gmail`.
    pub fn parse_cli(service: &str, s: &str) -> Result<PopulateSpec, String> {
        let mut it = s.rsplitn(3, ':');
        let n = it.next().and_then(|n| n.parse::<usize>().ok());
        let folder = it.next();
        let user = it.next();
        match (user, folder, n) {
            (Some(u), Some(f), Some(n)) if u.contains('@') => Ok(PopulateSpec {
                user: u.to_string(),
                service: service.to_string(),
                folder: Some(f.to_string()),
                count: n,
                seed: None,
                lists: None,
                days: None,
            }),
            _ => Err(format!("bad populate spec {s:?}: want USER:FOLDER:N")),
        }
    }
}

const LISTS: &[(&str, &str)] = &[
    ("Linux kernel mailing list", "linux-kernel.vger.kernel.org"),
    ("Netdev discussion", "netdev.vger.kernel.org"),
    ("Debian Development", "debian-devel.lists.debian.org"),
    ("The Rust users forum", "users.rust-lang.org"),
    ("Git development", "git.vger.kernel.org"),
    ("Python-Dev", "python-dev.python.org"),
    ("Mutt users", "mutt-users.mutt.org"),
    ("NetBSD technical discussion", "tech-kern.NetBSD.org"),
];
const PEOPLE: &[(&str, &str)] = &[
    ("Alice Johnson", "alice@example.org"),
    ("Bob Martinez", "bob.martinez@example.net"),
    ("Chen Wei", "chen.wei@example.cn"),
    ("Dörte Müller", "doerte@example.de"),
    ("Émile Zola", "emile@example.fr"),
    ("Fatima Haddad", "fatima@example.com"),
    ("Grzegorz Brzęczyszczykiewicz", "greg@example.pl"),
    ("Hiroshi Tanaka", "tanaka@example.jp"),
    ("Ingrid Svensson", "ingrid@example.se"),
    ("José García", "jose@example.es"),
];
const TOPICS: &[&str] = &[
    "PATCH v3 net: fix refcount leak in tcp_close",
    "RFC: rework the page cache locking",
    "Build failure on arm64 with gcc 14",
    "Meeting notes for Thursday",
    "Quarterly report draft",
    "Question about lifetimes in async closures",
    "Release schedule for 2.4",
    "Regression in 6.9-rc2: suspend hangs",
    "Proposal: drop support for Python 3.8",
    "Lunch on Friday?",
    "Invoice 2024-0117",
    "Travel plans for the conference",
    "Security advisory: please upgrade",
    "Flaky test in CI",
];
const UNICODE_TOPICS: &[&str] = &[
    "Grüße aus München",
    "Café ☕ meeting tomorrow",
    "日本語のテスト",
    "Ελληνικά και άλλα",
    "Résumé — relecture",
    "Привет, как дела?",
    "Zażółć gęślą jaźń",
];
const WORDS: &[&str] = &[
    "the",
    "kernel",
    "patch",
    "series",
    "applies",
    "cleanly",
    "on",
    "top",
    "of",
    "next",
    "branch",
    "and",
    "fixes",
    "a",
    "race",
    "between",
    "writeback",
    "reclaim",
    "please",
    "review",
    "thanks",
    "I",
    "think",
    "we",
    "should",
    "consider",
    "alternative",
    "approach",
    "benchmark",
    "shows",
    "regression",
    "of",
    "about",
    "percent",
    "with",
    "this",
    "change",
    "memory",
    "allocation",
    "failure",
    "path",
    "error",
    "handling",
    "looks",
    "good",
    "to",
    "me",
    "tested",
    "on",
    "x86_64",
    "arm64",
    "meeting",
    "agenda",
    "budget",
    "deadline",
];
const UNICODE_LINES: &[&str] = &[
    "Schöne Grüße und bis bald!",
    "Ça marche très bien, merci.",
    "これはテストメッセージです。",
    "Καλημέρα σε όλους.",
    "Спасибо за быстрый ответ.",
    "naïve café façade coöperate",
];

fn b64_words(s: &str) -> String {
    format!(
        "=?UTF-8?B?{}?=",
        base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
    )
}

fn rfc2822(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%a, %d %b %Y %H:%M:%S +0000")
        .to_string()
}

fn qp_encode(s: &str) -> String {
    let mut out = String::new();
    for line in s.split('\n') {
        let mut cur = String::new();
        for b in line.bytes() {
            let piece = if (b == b' ' || (33..=126).contains(&b)) && b != b'=' {
                (b as char).to_string()
            } else {
                format!("={b:02X}")
            };
            if cur.len() + piece.len() > 75 {
                out.push_str(&cur);
                out.push_str("=\r\n");
                cur.clear();
            }
            cur.push_str(&piece);
        }
        out.push_str(&cur);
        out.push_str("\r\n");
    }
    out
}

/// One generated message with the flags it should start with.
pub struct Generated {
    /// RFC 5322 bytes (CRLF).
    pub raw: Vec<u8>,
    /// Receive time.
    pub received_ms: i64,
    /// Seen.
    pub read: bool,
    /// Flagged / starred.
    pub flagged: bool,
    /// Answered.
    pub replied: bool,
    /// From a mailing list.
    pub list: bool,
}

struct Thread {
    subject: String,
    refs: Vec<String>,
    list: usize,
}

/// Deterministic message generator.
pub struct Generator {
    rng: Rng,
    user: String,
    lists: usize,
    threads: Vec<Thread>,
    n: usize,
}

/// Newest receive time of generated mail (fixed for determinism): 2025-06-01T00:00:00Z.
pub const BASE_MS: i64 = 1_748_736_000_000;

impl Generator {
    /// A generator for one mailbox.
    pub fn new(seed: u64, user: &str, lists: usize) -> Generator {
        let mut h: u64 = seed;
        for b in user.bytes() {
            h = h.wrapping_mul(31).wrapping_add(b as u64);
        }
        Generator {
            rng: Rng::new(h),
            user: user.to_string(),
            lists: lists.clamp(1, LISTS.len()),
            threads: Vec::new(),
            n: 0,
        }
    }

    /// The next message, received at `received_ms`.
    pub fn next(&mut self, received_ms: i64) -> Generated {
        self.n += 1;
        let rng = &mut self.rng;
        let is_list = rng.chance(0.6);
        let list_idx = rng.below(self.lists as u64) as usize;
        let (from_name, from_addr) = *rng.pick(PEOPLE);
        let unicode = rng.chance(0.2);
        let reply_to = if !self.threads.is_empty() && rng.chance(0.4) {
            let i = rng.below(self.threads.len() as u64) as usize;
            Some(i)
        } else {
            None
        };
        let domain = from_addr.split('@').nth(1).unwrap_or("example.org");
        let msgid = format!("<{:016x}.{}@{domain}>", rng.next_u64(), self.n);
        let (subject, refs, list_idx, is_list) = match reply_to {
            Some(i) => {
                let t = &self.threads[i];
                let s = if t.subject.starts_with("Re: ") {
                    t.subject.clone()
                } else {
                    format!("Re: {}", t.subject)
                };
                (s, t.refs.clone(), t.list, t.list != usize::MAX)
            }
            None => {
                let s = if unicode {
                    rng.pick(UNICODE_TOPICS).to_string()
                } else {
                    rng.pick(TOPICS).to_string()
                };
                (s, Vec::new(), list_idx, is_list)
            }
        };
        let mut h = String::new();
        h.push_str(&format!(
            "Received: from mail.{domain} (mail.{domain} [192.0.2.{}])\r\n\tby mx.fake-cloud.invalid with ESMTPS id {:x}\r\n\tfor <{}>; {}\r\n",
            rng.range(1, 254), rng.next_u64(), self.user, rfc2822(received_ms)
        ));
        let from_disp = if from_name.is_ascii() {
            format!("\"{from_name}\"")
        } else {
            b64_words(from_name)
        };
        h.push_str(&format!("From: {from_disp} <{from_addr}>\r\n"));
        if is_list {
            let (lname, lid) = LISTS[list_idx];
            let list_addr = lid.replacen('.', "@", 1);
            h.push_str(&format!("To: {list_addr}\r\n"));
            if rng.chance(0.3) {
                h.push_str(&format!("Cc: {}\r\n", self.user));
            }
            match rng.below(3) {
                0 => h.push_str(&format!("List-Id: <{lid}>\r\n")),
                1 => h.push_str(&format!("List-Id: {lname} <{lid}>\r\n")),
                _ => h.push_str(&format!("List-Id: \"{lname}\"\r\n <{lid}>\r\n")),
            }
            h.push_str(&format!("List-Post: <mailto:{list_addr}>\r\nList-Unsubscribe: <mailto:{list_addr}?subject=unsubscribe>\r\nPrecedence: list\r\n"));
        } else {
            h.push_str(&format!("To: {}\r\n", self.user));
        }
        let subj_hdr = if subject.is_ascii() {
            subject.clone()
        } else {
            b64_words(&subject)
        };
        h.push_str(&format!("Subject: {subj_hdr}\r\n"));
        h.push_str(&format!(
            "Date: {}\r\n",
            rfc2822(received_ms - rng.range(1, 120) as i64 * 1000)
        ));
        h.push_str(&format!("Message-ID: {msgid}\r\n"));
        if let Some(parent) = refs.last() {
            h.push_str(&format!("In-Reply-To: {parent}\r\n"));
            h.push_str(&format!("References: {}\r\n", refs.join("\r\n ")));
        }
        h.push_str("MIME-Version: 1.0\r\n");
        // Body text: a few to many lines, occasionally UTF-8.
        let lines = if rng.chance(0.02) {
            rng.range(2000, 6000)
        } else {
            rng.range(2, 40)
        };
        let mut text = String::new();
        if let Some(p) = refs.last() {
            text.push_str(&format!(
                "On {}, someone wrote about {p}:\n> previous text\n\n",
                rfc2822(received_ms - 3_600_000)
            ));
        }
        for _ in 0..lines {
            let nw = rng.range(4, 14);
            let words: Vec<&str> = (0..nw).map(|_| *rng.pick(WORDS)).collect();
            text.push_str(&words.join(" "));
            text.push('\n');
            if unicode && rng.chance(0.3) {
                let line: &&str = rng.pick(UNICODE_LINES);
                text.push_str(line);
                text.push('\n');
            }
        }
        text.push_str("\n-- \nSent from the fake cloud\n");
        let utf8 = !text.is_ascii();
        let (cte, body_text) = if utf8 && rng.chance(0.5) {
            ("quoted-printable", qp_encode(&text))
        } else if utf8 {
            ("8bit", text.replace('\n', "\r\n"))
        } else {
            ("7bit", text.replace('\n', "\r\n"))
        };
        let attach = rng.chance(0.1);
        let mut raw = h;
        if attach {
            let boundary = format!("=_fc{:x}", rng.next_u64());
            let size = rng.range(1_000, 150_000) as usize;
            let (fname, ctype) = *rng.pick(&[
                ("report.pdf", "application/pdf"),
                ("photo.png", "image/png"),
                ("data.csv", "text/csv"),
                (
                    "Übersicht.xlsx",
                    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                ),
            ]);
            let data = base64::engine::general_purpose::STANDARD.encode(rng.bytes(size));
            let wrapped: Vec<&str> = data
                .as_bytes()
                .chunks(76)
                .map(|c| std::str::from_utf8(c).unwrap_or(""))
                .collect();
            let fname_hdr = if fname.is_ascii() {
                format!("\"{fname}\"")
            } else {
                format!("\"{}\"", b64_words(fname))
            };
            raw.push_str(&format!("Content-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\nThis is a multi-part message in MIME format.\r\n--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: {cte}\r\n\r\n{body_text}--{boundary}\r\nContent-Type: {ctype}; name={fname_hdr}\r\nContent-Disposition: attachment; filename={fname_hdr}\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n--{boundary}--\r\n", wrapped.join("\r\n")));
        } else {
            raw.push_str(&format!("Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: {cte}\r\n\r\n{body_text}"));
        }
        let mut new_refs = refs;
        new_refs.push(msgid);
        if new_refs.len() > 12 {
            new_refs.drain(..new_refs.len() - 12);
        }
        let thread = Thread {
            subject,
            refs: new_refs,
            list: if is_list { list_idx } else { usize::MAX },
        };
        match reply_to {
            Some(i) => self.threads[i] = thread,
            None => {
                self.threads.push(thread);
                if self.threads.len() > 40 {
                    self.threads.remove(0);
                }
            }
        }
        Generated {
            raw: raw.into_bytes(),
            received_ms,
            read: rng.chance(0.7),
            flagged: rng.chance(0.06),
            replied: rng.chance(0.1),
            list: is_list,
        }
    }
}

/// Fills a mailbox; returns the ids created (immutable ids for Office365).
pub fn populate(app: &Arc<App>, spec: &PopulateSpec) -> Result<Vec<String>, String> {
    let now = app.now_ms();
    let mut st = app.lock();
    populate_locked(app, &mut st, spec, now)
}

fn populate_locked(
    app: &Arc<App>,
    st: &mut State,
    spec: &PopulateSpec,
    now: i64,
) -> Result<Vec<String>, String> {
    if !spec.user.contains('@') {
        return Err("user must be an email address".into());
    }
    let seed = spec.seed.unwrap_or(app.opts.seed);
    let folder_key = spec.folder.clone().unwrap_or_default();
    let mut g = Generator::new(
        seed ^ (folder_key.len() as u64).wrapping_mul(0x1234_5678_9abc),
        &spec.user.to_ascii_lowercase(),
        spec.lists.unwrap_or(5),
    );
    let span = spec.days.unwrap_or(60).max(1) as i64 * 86_400_000;
    let gap = (span / spec.count.max(1) as i64).max(1000);
    let mut ids = Vec::new();
    match spec.service.as_str() {
        "o365" | "office365" | "graph" => {
            let folder = spec.folder.clone().unwrap_or_else(|| "inbox".into());
            let mut rng2 = st.rng.clone();
            let mb = st.graph_mailbox(&spec.user);
            let fid = match mb
                .resolve_folder(&folder)
                .or_else(|| mb.folder_by_path(&folder))
            {
                Some(f) => f,
                None => {
                    let mut cur = mb.resolve_folder("msgfolderroot").ok_or("no root folder")?;
                    for part in folder.split('/').filter(|p| !p.is_empty()) {
                        let existing = mb
                            .children(&cur)
                            .into_iter()
                            .find(|f| f.display_name.eq_ignore_ascii_case(part))
                            .map(|f| f.id.clone());
                        cur = match existing {
                            Some(e) => e,
                            None => mb
                                .create_folder(&mut rng2, &cur, part)
                                .ok_or("folder create failed")?,
                        };
                    }
                    cur
                }
            };
            for i in 0..spec.count {
                let t = BASE_MS - (spec.count - 1 - i) as i64 * gap
                    + g.rng.below(gap as u64 / 2) as i64;
                let m = g.next(t);
                let id = mb.insert(&mut rng2, &fid, &m.raw, m.received_ms, now);
                if let Some(msg) = mb.messages.get_mut(&id) {
                    msg.is_read = m.read || m.replied;
                    if m.flagged {
                        msg.flag = serde_json::json!({"flagStatus": "flagged"});
                    }
                    msg.props.insert(
                        "Integer 0xe17".into(),
                        if m.replied && m.list {
                            "512".into()
                        } else {
                            "0".into()
                        },
                    );
                    if m.replied && !m.list {
                        msg.props.insert("Integer 0x1080".into(), "261".into());
                        msg.props.insert("Integer 0x1081".into(), "102".into());
                    } else if msg.is_read {
                        msg.props.insert("Integer 0x1080".into(), "256".into());
                    }
                }
                ids.push(id);
            }
            st.rng = rng2;
        }
        "gmail" | "google" => {
            let label = spec.folder.clone().unwrap_or_else(|| "INBOX".into());
            let window = app.opts.history_window;
            let mut rng2 = st.rng.clone();
            let mb = st.gmail_mailbox(&spec.user);
            let lid = mb.label_id(&label, true).ok_or("label create failed")?;
            for i in 0..spec.count {
                let t = BASE_MS - (spec.count - 1 - i) as i64 * gap
                    + g.rng.below(gap as u64 / 2) as i64;
                let m = g.next(t);
                let mut labels = vec![lid.clone()];
                if !m.read {
                    labels.push("UNREAD".into());
                }
                if m.flagged {
                    labels.push("STARRED".into());
                }
                labels.push(if m.list {
                    "CATEGORY_FORUMS".into()
                } else {
                    "CATEGORY_PERSONAL".into()
                });
                if !m.list && g.rng.chance(0.3) {
                    labels.push("IMPORTANT".into());
                }
                ids.push(mb.insert(&mut rng2, window, &m.raw, labels, m.received_ms));
            }
            st.rng = rng2;
        }
        other => return Err(format!("unknown service {other:?}: want o365 or gmail")),
    }
    Ok(ids)
}

/// Applies the `--populate-*` specs at start.
pub fn apply_startup(app: &Arc<App>) -> Result<(), String> {
    for spec in app.opts.populate.clone() {
        populate(app, &spec)?;
    }
    Ok(())
}
