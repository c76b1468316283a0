//! Fault injection: status codes in the owning service's error shape, connection
//! resets, truncated bodies, bad JSON and delays, matched by path pattern and method,
//! firing for the next N matches or with a seeded probability.
//!
//! CLI syntax (`--faults SPEC`): faults separated by `;`, each a comma-separated list of
//! `key=value` with the JSON keys: `route=/graph.microsoft.com/*/messages,kind=status,status=503,count=2;route=history,kind=reset,probability=0.1`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::state::Rng;

/// What a fault does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// Answer with `status` (and the service's error body unless `body` is given).
    Status,
    /// Close the connection with a TCP reset, no response.
    Reset,
    /// Send the headers (full Content-Length) and half the body, then close.
    Truncate,
    /// Answer 200 with a body that is not valid JSON.
    BadJson,
    /// Wait `delay_ms`, then serve normally.
    Delay,
    /// Answer HTTP 200 with the error body of `status` (Graph occasionally does this).
    Error200,
}

/// One fault as given by JSON or the CLI.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FaultSpec {
    /// Path pattern: a glob when it contains `*`, else a substring (host prefix included).
    pub route: String,
    /// HTTP method to match (any when absent).
    #[serde(default)]
    pub method: Option<String>,
    /// Effect.
    pub kind: FaultKind,
    /// Status for `status` faults.
    #[serde(default)]
    pub status: Option<u16>,
    /// Body to send instead of the service's error body.
    #[serde(default)]
    pub body: Option<Value>,
    /// `Retry-After` header value to add.
    #[serde(default)]
    pub retry_after: Option<String>,
    /// Delay for `delay` faults (also applied before `status`).
    #[serde(default)]
    pub delay_ms: Option<u64>,
    /// Fire for the next N matching requests (then the fault is spent).
    #[serde(default)]
    pub count: Option<u64>,
    /// Fire with this probability (seeded RNG); with `count`, both apply.
    #[serde(default)]
    pub probability: Option<f64>,
}

/// An installed fault.
#[derive(Clone, Debug, Serialize)]
pub struct Installed {
    /// Id for listing.
    pub id: u64,
    /// The spec.
    #[serde(flatten)]
    pub spec: FaultSpec,
    /// How often it fired.
    pub fired: u64,
}

/// Installed faults.
pub struct Faults {
    rng: Rng,
    list: Vec<Installed>,
    next: u64,
}

impl Faults {
    /// A table with the start-up faults.
    pub fn new(seed: u64, specs: Vec<FaultSpec>) -> Faults {
        let mut f = Faults {
            rng: Rng::new(seed),
            list: Vec::new(),
            next: 1,
        };
        for s in specs {
            f.add(s);
        }
        f
    }

    /// Installs a fault; returns its id.
    pub fn add(&mut self, spec: FaultSpec) -> u64 {
        let id = self.next;
        self.next += 1;
        self.list.push(Installed { id, spec, fired: 0 });
        id
    }

    /// Removes all faults.
    pub fn clear(&mut self) {
        self.list.clear();
    }

    /// The installed faults.
    pub fn list(&self) -> &[Installed] {
        &self.list
    }

    /// The first fault that fires for this request, if any (count is consumed).
    pub fn take(&mut self, method: &str, path: &str, decoded: &str) -> Option<FaultSpec> {
        let mut hit = None;
        for (i, f) in self.list.iter_mut().enumerate() {
            if f.spec.count == Some(0) {
                continue;
            }
            if let Some(m) = &f.spec.method
                && !m.eq_ignore_ascii_case(method)
            {
                continue;
            }
            if !matches(&f.spec.route, path) && !matches(&f.spec.route, decoded) {
                continue;
            }
            if let Some(p) = f.spec.probability
                && !self.rng.chance(p)
            {
                continue;
            }
            if let Some(c) = f.spec.count.as_mut() {
                *c -= 1;
            }
            f.fired += 1;
            hit = Some((i, f.spec.clone()));
            break;
        }
        let (i, spec) = hit?;
        if self.list[i].spec.count == Some(0) {
            self.list.remove(i);
        }
        Some(spec)
    }
}

/// Glob (`*` matches anything, `?` one character) or substring match.
pub fn matches(pattern: &str, path: &str) -> bool {
    if !pattern.contains('*') && !pattern.contains('?') {
        return path.contains(pattern);
    }
    glob(pattern.as_bytes(), path.as_bytes())
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

/// Parses the `--faults` syntax.
pub fn parse_cli(spec: &str) -> Result<Vec<FaultSpec>, String> {
    let mut out = Vec::new();
    for item in spec.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        let mut obj = serde_json::Map::new();
        for kv in item.split(',') {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("fault item {kv:?} is not key=value"))?;
            let k = match k.trim() {
                "prob" => "probability",
                "delay" => "delay_ms",
                k => k,
            };
            let val = match k {
                "status" | "delay_ms" | "count" => Value::from(
                    v.trim()
                        .parse::<u64>()
                        .map_err(|_| format!("{k} wants a number, got {v:?}"))?,
                ),
                "probability" => Value::from(
                    v.trim()
                        .parse::<f64>()
                        .map_err(|_| format!("{k} wants a number, got {v:?}"))?,
                ),
                "body" => serde_json::from_str(v).unwrap_or_else(|_| Value::from(v)),
                _ => Value::from(v.trim()),
            };
            obj.insert(k.to_string(), val);
        }
        let f: FaultSpec = serde_json::from_value(Value::Object(obj))
            .map_err(|e| format!("bad fault {item:?}: {e}"))?;
        out.push(f);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_and_substring() {
        assert!(matches(
            "/graph.microsoft.com/*/delta",
            "/graph.microsoft.com/v1.0/me/mailFolders/x/messages/delta"
        ));
        assert!(!matches(
            "/graph.microsoft.com/*/delta",
            "/graph.microsoft.com/v1.0/me/messages"
        ));
        assert!(matches(
            "history",
            "/gmail.googleapis.com/gmail/v1/users/me/history"
        ));
    }

    #[test]
    fn cli_syntax() {
        let f = parse_cli(
            "route=/graph*,kind=status,status=503,count=2;route=history,kind=reset,prob=0.5",
        )
        .unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].status, Some(503));
        assert_eq!(f[1].kind, FaultKind::Reset);
        assert_eq!(f[1].probability, Some(0.5));
    }
}
