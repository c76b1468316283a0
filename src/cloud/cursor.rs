//! A folder's persisted cursor as the backends hand it to storage: a small
//! head (delta link or history id) and one record per listed message, given
//! as what changed since the last hand-over, so a changed message costs its
//! own row and an unchanged listing costs nothing.

use std::collections::HashSet;

use serde::Serialize;

/// What changed in a folder's cursor since the last one handed out.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CursorDelta {
    /// The cursor without its records; `None` when it did not change.
    pub head: Option<serde_json::Value>,
    /// `put` holds every record: stored records not in it are gone.
    pub full: bool,
    /// New or changed records: message id, record (a JSON array with the
    /// id first).
    pub put: Vec<(String, String)>,
    /// Ids whose records are gone.
    pub gone: Vec<String>,
}

impl CursorDelta {
    /// True when nothing is to be written.
    pub fn is_empty(&self) -> bool {
        self.head.is_none() && !self.full && self.put.is_empty() && self.gone.is_empty()
    }
}

/// The message ids whose records changed since the last delta, kept by a
/// backend beside its listing.
#[derive(Debug, Default)]
pub struct Changed {
    ids: HashSet<String>,
    all: bool,
}

impl Changed {
    /// Record that `id`'s record changed (added, updated or removed).
    pub fn touch(&mut self, id: &str) {
        if !self.all && !self.ids.contains(id) {
            self.ids.insert(id.to_string());
        }
    }

    /// Every record is to be written again (a full listing replaced the
    /// old one, or the last delta was not stored).
    pub fn all(&mut self) {
        self.all = true;
        self.ids.clear();
    }

    /// True when no record changed.
    pub fn is_empty(&self) -> bool {
        !self.all && self.ids.is_empty()
    }

    /// The delta with `head`: the changed records as `record` gives them
    /// (`None`: gone), or every record from `every` after [`Changed::all`].
    /// Starts a new round of changes.
    pub fn take<R, E>(&mut self, head: serde_json::Value, record: R, every: E) -> CursorDelta
    where
        R: Fn(&str) -> Option<String>,
        E: FnOnce() -> Vec<(String, String)>,
    {
        let mut d = CursorDelta {
            head: Some(head),
            ..CursorDelta::default()
        };
        if std::mem::take(&mut self.all) {
            d.full = true;
            d.put = every();
        } else {
            for id in self.ids.drain() {
                match record(&id) {
                    Some(r) => d.put.push((id, r)),
                    None => d.gone.push(id),
                }
            }
        }
        d
    }
}

/// One record as stored: `value` as compact JSON.
pub fn record<T: Serialize>(value: &T) -> Option<String> {
    serde_json::to_string(value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delta_holds_what_changed_since_the_last() {
        let mut c = Changed::default();
        let rec = |id: &str| (id != "b").then(|| format!("[{id:?}]"));
        c.touch("a");
        c.touch("b");
        c.touch("a");
        let mut d = c.take(serde_json::json!({"h": 1}), rec, Vec::new);
        d.put.sort();
        assert_eq!(d.put, vec![("a".to_string(), "[\"a\"]".to_string())]);
        assert_eq!(d.gone, vec!["b".to_string()]);
        assert!(!d.full);
        assert!(c.is_empty());
        c.touch("x");
        c.all();
        let d = c.take(serde_json::json!({}), rec, || {
            vec![("z".to_string(), "[\"z\"]".to_string())]
        });
        assert!(d.full);
        assert_eq!(d.put.len(), 1);
        assert!(d.gone.is_empty());
        assert!(CursorDelta::default().is_empty());
    }
}
