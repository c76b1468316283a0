//! The emulator's `/_control/stats` read as Gmail HTTP requests (a batch
//! counts once), requests per route, quota units and rate-limit answers.

use std::collections::BTreeMap;

use serde_json::Value;

/// `/_control/stats`, read as HTTP requests and quota units.
pub(super) struct Stats(pub(super) Value);

impl Stats {
    pub(super) fn routes(&self) -> Vec<(String, u64, BTreeMap<String, u64>)> {
        let Some(routes) = self.0["routes"].as_object() else {
            return Vec::new();
        };
        routes
            .iter()
            .filter(|(k, _)| k.starts_with("gmail "))
            .map(|(k, v)| {
                let statuses = v["statuses"]
                    .as_object()
                    .map(|s| {
                        s.iter()
                            .map(|(c, n)| (c.clone(), n.as_u64().unwrap_or(0)))
                            .collect()
                    })
                    .unwrap_or_default();
                (k.clone(), v["requests"].as_u64().unwrap_or(0), statuses)
            })
            .collect()
    }

    /// HTTP requests to Gmail (a batch counts once).
    pub(super) fn http_requests(&self) -> u64 {
        self.routes()
            .iter()
            .filter(|(k, _, _)| !k.ends_with("(in batch)"))
            .map(|(_, n, _)| n)
            .sum()
    }

    /// Requests on one route (exact name, e.g. `gmail GET /users/me/profile`).
    pub(super) fn on(&self, route: &str) -> u64 {
        self.routes()
            .iter()
            .filter(|(k, _, _)| k == route)
            .map(|(_, n, _)| n)
            .sum()
    }

    /// Quota units charged: every API call (batch parts included) that was
    /// admitted, at its method's cost.
    pub(super) fn units(&self) -> u64 {
        let mut total = 0;
        for (route, _, statuses) in self.routes() {
            let path = route.trim_end_matches(" (in batch)");
            let cost = if path.ends_with("/profile") || path.ends_with("/labels") {
                1
            } else if path.ends_with("/history") {
                2
            } else if path.ends_with("/batchModify") {
                50
            } else if path.contains("/messages") {
                5
            } else {
                0 // the batch envelope itself
            };
            let admitted: u64 = statuses
                .iter()
                .filter(|(s, _)| !matches!(s.as_str(), "0" | "429" | "403"))
                .map(|(_, n)| n)
                .sum();
            total += cost * admitted;
        }
        total
    }

    /// Answers with a rate-limit status.
    pub(super) fn rate_limited(&self) -> u64 {
        self.routes()
            .iter()
            .flat_map(|(_, _, s)| s.iter())
            .filter(|(s, _)| matches!(s.as_str(), "429" | "403"))
            .map(|(_, n)| n)
            .sum()
    }
}
