//! An in-memory [`CloudMailbox`] for tests: a folder held in a map, with
//! hooks for a "second client" to change it, injected failures, and counters
//! (listings, downloads, flag and delete calls).

use futures_util::future::BoxFuture;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{CloudEntry, CloudError, CloudMailbox, ErrorKind, FlagChange, Sink};
use crate::types::DeleteAction;
use crate::types::{Flags, StorageKind};

/// A message held by the in-memory cloud.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryMessage {
    /// Raw content (any line ends; served with LF).
    pub content: Vec<u8>,
    /// Stored flags.
    pub flags: Flags,
    /// Received time.
    pub received_time: i64,
}

/// Call counters, for tests that count work.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// `list` calls.
    pub lists: u64,
    /// `fetch` calls that succeeded.
    pub downloads: u64,
    /// Flag changes applied.
    pub flag_changes: u64,
    /// Messages deleted, with the action used.
    pub deletes: Vec<(String, DeleteAction)>,
    /// Calls that failed by injection ([`MemoryMailbox::fail_next`]).
    pub failed: u64,
}

#[derive(Default)]
struct Inner {
    messages: BTreeMap<String, MemoryMessage>,
    next_id: u64,
    fail_next: u32,
    fail_kind: Option<ErrorKind>,
    counters: Counters,
}

/// An in-memory cloud folder; clones share the same folder.
#[derive(Clone)]
pub struct MemoryMailbox {
    name: String,
    supported: Flags,
    inner: Arc<Mutex<Inner>>,
}

impl MemoryMailbox {
    /// An empty folder storing the `supported` flag bits.
    pub fn new(name: &str, supported: Flags) -> MemoryMailbox {
        MemoryMailbox {
            name: name.to_string(),
            supported,
            inner: Arc::new(Mutex::new(Inner::default())),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        crate::lock::lock(&self.inner)
    }

    /// Deliver a message (as a second client would); returns its id.
    pub fn add(&self, content: &[u8], flags: Flags) -> String {
        let mut g = self.lock();
        g.next_id += 1;
        let id = format!("m{:06}", g.next_id);
        let received_time = 1_700_000_000 + g.next_id as i64;
        g.messages.insert(
            id.clone(),
            MemoryMessage {
                content: content.to_vec(),
                flags: flags & self.supported,
                received_time,
            },
        );
        id
    }

    /// Change a message's flags (as a second client would).
    pub fn set(&self, id: &str, flags: Flags) {
        let supported = self.supported;
        if let Some(m) = self.lock().messages.get_mut(id) {
            m.flags = flags & supported;
        }
    }

    /// Remove a message (deleted or moved away by a second client).
    pub fn remove(&self, id: &str) -> Option<MemoryMessage> {
        self.lock().messages.remove(id)
    }

    /// A copy of the folder.
    pub fn messages(&self) -> BTreeMap<String, MemoryMessage> {
        self.lock().messages.clone()
    }

    /// Make the next `n` calls fail with a retryable error.
    pub fn fail_next(&self, n: u32) {
        self.fail_next_with(n, ErrorKind::Retry);
    }

    /// Make the next `n` calls fail with an error of `kind`.
    pub fn fail_next_with(&self, n: u32, kind: ErrorKind) {
        let mut g = self.lock();
        g.fail_next = n;
        g.fail_kind = Some(kind);
    }

    /// The counters so far.
    pub fn counters(&self) -> Counters {
        self.lock().counters.clone()
    }

    fn check_fault(&self, g: &mut Inner) -> Result<(), CloudError> {
        if g.fail_next > 0 {
            g.fail_next -= 1;
            g.counters.failed += 1;
            return Err(CloudError::new(
                &self.name,
                g.fail_kind.unwrap_or(ErrorKind::Retry),
                "injected failure",
            ));
        }
        Ok(())
    }
}

/// `content` with every CRLF turned into LF.
fn to_lf(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len());
    let mut i = 0;
    while i < content.len() {
        if content[i] == b'\r' && content.get(i + 1) == Some(&b'\n') {
            i += 1;
            continue;
        }
        out.push(content[i]);
        i += 1;
    }
    out
}

impl CloudMailbox for MemoryMailbox {
    fn name(&self) -> &str {
        &self.name
    }

    fn storage_kind(&self) -> StorageKind {
        StorageKind::Office365
    }

    fn supported_flags(&self) -> Flags {
        self.supported
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<CloudEntry>, CloudError>> {
        Box::pin(async move {
            let mut g = self.lock();
            self.check_fault(&mut g)?;
            g.counters.lists += 1;
            Ok(g.messages
                .iter()
                .map(|(id, m)| CloudEntry {
                    id: id.as_str().into(),
                    email_id: None,
                    flags: m.flags,
                    received_time: Some(m.received_time),
                    size: Some(m.content.len() as u64),
                })
                .collect())
        })
    }

    fn fetch<'a>(
        &'a self,
        id: &'a str,
        out: &'a mut Sink,
    ) -> BoxFuture<'a, Result<(), CloudError>> {
        Box::pin(async move {
            let content = {
                let mut g = self.lock();
                self.check_fault(&mut g)?;
                match g.messages.get(id) {
                    Some(m) => to_lf(&m.content),
                    None => {
                        return Err(CloudError::new(&self.name, ErrorKind::NotFound, id));
                    }
                }
            };
            out.write_all(&content).map_err(|e| {
                CloudError::new(
                    &self.name,
                    ErrorKind::Retry,
                    format!("writing download: {e}"),
                )
            })?;
            self.lock().counters.downloads += 1;
            Ok(())
        })
    }

    fn set_flags(&self, changes: Vec<FlagChange>) -> BoxFuture<'_, Vec<Result<(), CloudError>>> {
        Box::pin(async move {
            let mut g = self.lock();
            let supported = self.supported;
            changes
                .into_iter()
                .map(|c| {
                    self.check_fault(&mut g)?;
                    let m = g.messages.get_mut(&c.id).ok_or_else(|| {
                        CloudError::new(&self.name, ErrorKind::NotFound, c.id.clone())
                    })?;
                    m.flags = Flags((m.flags.0 | c.set.0) & !c.clear.0) & supported;
                    g.counters.flag_changes += 1;
                    Ok(())
                })
                .collect()
        })
    }

    fn delete(
        &self,
        ids: Vec<String>,
        action: DeleteAction,
    ) -> BoxFuture<'_, Vec<Result<(), CloudError>>> {
        Box::pin(async move {
            let mut g = self.lock();
            ids.into_iter()
                .map(|id| {
                    self.check_fault(&mut g)?;
                    if g.messages.remove(&id).is_none() {
                        return Err(CloudError::new(&self.name, ErrorKind::NotFound, id));
                    }
                    g.counters.deletes.push((id, action));
                    Ok(())
                })
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lf_normalisation() {
        assert_eq!(to_lf(b"a\r\nb\rc\r\n"), b"a\nb\rc\n");
    }
}
