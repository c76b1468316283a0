//! Request counters for `/_control/stats`: per normalised route, statuses, 429s
//! served and bytes out (peak concurrency per mailbox comes from the quota table).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::errors::Service;

#[derive(Default, Clone)]
struct RouteStats {
    requests: u64,
    statuses: BTreeMap<u16, u64>,
    bytes_out: u64,
}

/// All counters.
#[derive(Default)]
pub struct Stats {
    routes: BTreeMap<String, RouteStats>,
    requests: u64,
    throttled: u64,
    bytes_out: u64,
    faults_fired: u64,
}

impl Stats {
    /// Counts one request (inner batch requests count too).
    pub fn record(&mut self, route: &str, status: u16, bytes: usize) {
        let r = self.routes.entry(route.to_string()).or_default();
        r.requests += 1;
        *r.statuses.entry(status).or_default() += 1;
        r.bytes_out += bytes as u64;
        self.requests += 1;
        self.bytes_out += bytes as u64;
        if status == 429 {
            self.throttled += 1;
        }
    }

    /// Counts a throttling answer not reflected by an HTTP status (Gmail 403 rate limit).
    pub fn record_throttle(&mut self) {
        self.throttled += 1;
    }

    /// Counts a fired fault.
    pub fn record_fault(&mut self) {
        self.faults_fired += 1;
    }

    /// The JSON dump (without the mailbox peaks).
    pub fn to_json(&self) -> Value {
        let routes: BTreeMap<&String, Value> = self
            .routes
            .iter()
            .map(|(k, r)| {
                let st: BTreeMap<String, u64> = r
                    .statuses
                    .iter()
                    .map(|(s, n)| (s.to_string(), *n))
                    .collect();
                (
                    k,
                    json!({"requests": r.requests, "statuses": st, "bytes_out": r.bytes_out}),
                )
            })
            .collect();
        json!({"requests": self.requests, "throttled": self.throttled,
            "bytes_out": self.bytes_out, "faults_fired": self.faults_fired, "routes": routes})
    }
}

const GRAPH_KEYWORDS: &[&str] = &[
    "delta",
    "$value",
    "move",
    "copy",
    "childFolders",
    "messages",
    "mailFolders",
    "$count",
    "attachments",
    "singleValueExtendedProperties",
    "permanentDelete",
    "send",
];
const GMAIL_KEYWORDS: &[&str] = &[
    "batchModify",
    "batchDelete",
    "import",
    "send",
    "modify",
    "trash",
    "untrash",
    "attachments",
];

/// A stable route name such as `graph GET /me/mailFolders/{id}/messages/delta`.
pub fn route_name(method: &str, segs: &[String]) -> String {
    let host = segs.first().map(String::as_str).unwrap_or("");
    let svc = Service::of_host(host);
    let mut out: Vec<String> = Vec::new();
    let rest: &[String] = match svc {
        Service::Graph if segs.len() > 1 => &segs[2.min(segs.len())..],
        Service::Gmail => {
            let skip = segs
                .iter()
                .position(|s| s == "v1")
                .map(|p| p + 1)
                .unwrap_or(1);
            &segs[skip.min(segs.len())..]
        }
        _ => &segs[1.min(segs.len())..],
    };
    let mut prev = String::new();
    for (i, s) in rest.iter().enumerate() {
        let s = if let Some(open) = s.find("('") {
            out.push(s[..open].to_string());
            prev = s[..open].to_string();
            "{id}".to_string()
        } else {
            s.clone()
        };
        let is_id = match svc {
            Service::Graph => {
                matches!(
                    prev.as_str(),
                    "mailFolders" | "childFolders" | "messages" | "users" | "attachments"
                ) && !GRAPH_KEYWORDS.contains(&s.as_str())
            }
            Service::Gmail => {
                (matches!(
                    prev.as_str(),
                    "messages" | "labels" | "threads" | "attachments"
                ) && !GMAIL_KEYWORDS.contains(&s.as_str()))
                    || (prev == "users" && s != "me")
            }
            Service::MsLogin => i == 0 && host == "login.microsoftonline.com",
            _ => false,
        };
        let piece = if s == "{id}" {
            s
        } else if is_id {
            if svc == Service::MsLogin {
                "{tenant}".into()
            } else {
                "{id}".into()
            }
        } else {
            s
        };
        prev = rest[i].clone();
        out.push(piece);
    }
    format!("{} {} /{}", svc.name(), method, out.join("/"))
}
