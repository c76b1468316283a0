//! `HeaderBlock::get` against the original Python program's `get_header`
//! (CPython's `email` package, compat32) on the corpus in `data/headers/`.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use cloud_mdir_sync::config::headers::HeaderBlock;
use serde_json::Value;

/// The oracle: the original program's lookup, run once over every (file, names) pair.
const ORACLE: &str = r#"
import sys, json, re, email.parser
out = []
for item in json.load(sys.stdin):
    with open(item["path"], "rb") as f:
        data = f.read()
    res = []
    for hdr in item["names"]:
        emsg = email.parser.BytesParser().parsebytes(data)
        val = emsg.get(hdr)
        if val is None:
            res.append(None)
            continue
        v = re.sub(r"\n[ \t]+", " ", str(val)).strip()
        try:
            v.encode("utf-8")
            res.append(v)
        except UnicodeEncodeError:
            # Lone surrogates cannot cross as JSON strings; never equal to ours.
            res.append({"unencodable": ascii(v)})
    out.append(res)
json.dump(out, sys.stdout)
"#;

/// Names asked of every message.
const BASE_NAMES: &[&str] = &[
    "Subject",
    "From",
    "To",
    "Cc",
    "List-ID",
    "List-Id",
    "list-id",
    "Message-ID",
    "Message-Id",
    "In-Reply-To",
    "References",
    "Date",
    "Content-Type",
    "X-Nonexistent",
    "From ",
    "",
];

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/integration/data/headers")
}

/// The base names plus every `name:` found at the start of any line of the
/// file (headers, hidden headers, MIME part headers), in three cases.
fn names_for(data: &[u8]) -> Vec<String> {
    let mut names: Vec<String> = BASE_NAMES.iter().map(|s| s.to_string()).collect();
    let mut seen: BTreeSet<String> = names.iter().cloned().collect();
    for line in data.split(|&b| b == b'\n' || b == b'\r') {
        let Some(i) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let Ok(name) = std::str::from_utf8(&line[..i]) else {
            continue;
        };
        if name.len() > 40 || name.starts_with([' ', '\t']) {
            continue;
        }
        for variant in [name.to_string(), name.to_lowercase(), name.to_uppercase()] {
            if seen.insert(variant.clone()) {
                names.push(variant);
            }
        }
    }
    names
}

fn run_oracle(cases: &[(PathBuf, Vec<String>)]) -> Vec<Vec<Value>> {
    let input: Vec<Value> = cases
        .iter()
        .map(|(path, names)| serde_json::json!({"path": path, "names": names}))
        .collect();
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", ORACLE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run /usr/bin/python3");
    let mut stdin = child.stdin.take().expect("python stdin");
    let body = serde_json::to_vec(&input).expect("encode oracle input");
    let writer = std::thread::spawn(move || stdin.write_all(&body));
    let out = child.wait_with_output().expect("wait for python");
    writer
        .join()
        .expect("writer thread")
        .expect("write to python");
    assert!(out.status.success(), "oracle failed: {:?}", out.status);
    serde_json::from_slice(&out.stdout).expect("decode oracle output")
}

#[test]
fn corpus_matches_python_oracle() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .expect("corpus dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 40,
        "corpus has only {} messages",
        files.len()
    );

    let cases: Vec<(PathBuf, Vec<String>)> = files
        .iter()
        .map(|p| {
            (
                p.clone(),
                names_for(&std::fs::read(p).expect("read corpus file")),
            )
        })
        .collect();
    let expected = run_oracle(&cases);
    assert_eq!(expected.len(), cases.len());

    let mut failures = Vec::new();
    let (mut checked, mut found) = (0, 0);
    for ((path, names), want) in cases.iter().zip(&expected) {
        let file = path.file_name().unwrap_or_default().to_string_lossy();
        let data = std::fs::read(path).expect("read corpus file");
        let parsed = HeaderBlock::parse(&data);
        let read = HeaderBlock::read_file(path).expect("read_file");
        assert!(!read.is_truncated(), "{file}: truncated");
        assert_eq!(want.len(), names.len(), "{file}: oracle answer count");
        for (name, want) in names.iter().zip(want) {
            let got = parsed.get(name);
            checked += 1;
            let same = match (&got, want) {
                (None, Value::Null) => true,
                (Some(g), Value::String(w)) => {
                    found += 1;
                    g == w
                }
                _ => false,
            };
            if !same {
                failures.push(format!("{file} [{name:?}]: got {got:?}, python {want}"));
            }
            let from_file = read.get(name);
            if from_file != got {
                failures.push(format!(
                    "{file} [{name:?}]: read_file gave {from_file:?}, parse gave {got:?}"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} lookups differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // Guard against a vacuous pass (e.g. everything None on both sides).
    assert!(
        found > checked / 4,
        "only {found} of {checked} lookups found a value"
    );
}

#[test]
fn corpus_spot_checks() {
    let get = |file: &str, name: &str| {
        HeaderBlock::read_file(&corpus_dir().join(file))
            .expect("read corpus file")
            .get(name)
    };
    assert_eq!(
        get("01-lkml-folded-list-id.eml", "List-ID").as_deref(),
        Some("Linux kernel <linux-kernel.vger.kernel.org>")
    );
    assert_eq!(
        get("17-crlf-folded-list-id.eml", "list-id").as_deref(),
        Some("<debian-devel.lists.debian.org>")
    );
    assert_eq!(
        get("17-crlf-folded-list-id.eml", "Subject").as_deref(),
        Some("Re: Bug#1065432: RFS: new upstream release of\r libfoo")
    );
    assert_eq!(get("23-line-without-colon.eml", "List-Id"), None);
    assert_eq!(get("13-missing-message-id.eml", "Message-ID"), None);
    assert_eq!(
        get("11-raw-latin1-from.eml", "From").as_deref(),
        Some("J\u{FFFD}rgen Wei\u{FFFD} <jweiss@example.de>")
    );
}
