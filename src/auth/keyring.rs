//! Where the token-store key lives: the [`Keyring`] trait (blocking calls;
//! async code runs them through `spawn_blocking`), the system keyring
//! (Secret Service on desktops, the kernel's keyutils as a fallback) and an
//! in-memory keyring for tests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use keyring_core::{CredentialStore, Entry};

/// The keyring service name entries are filed under.
pub const SERVICE: &str = "cloud-mdir-sync";

/// A keyring operation that failed. Never carries secret material.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KeyringError {
    /// The keyring cannot be reached or refused access (locked, no D-Bus,
    /// no session keyring).
    #[error("{backend}: {message}")]
    Unavailable {
        /// Which keyring.
        backend: String,
        /// What went wrong.
        message: String,
    },
}

/// A store of small secrets, addressed by an id. Calls block.
pub trait Keyring: Send + Sync {
    /// A name for log messages (`Secret Service`, `keyutils`, `memory`).
    fn name(&self) -> String;

    /// The secret filed under `id`, `None` when there is none.
    fn get(&self, id: &str) -> Result<Option<String>, KeyringError>;

    /// File `secret` under `id`, replacing any earlier one.
    fn set(&self, id: &str, secret: &str) -> Result<(), KeyringError>;
}

/// A process-local keyring for tests; clones share the entries.
#[derive(Debug, Clone, Default)]
pub struct MemoryKeyring {
    entries: Arc<Mutex<HashMap<String, String>>>,
}

impl MemoryKeyring {
    /// An empty keyring.
    pub fn new() -> MemoryKeyring {
        MemoryKeyring::default()
    }

    /// Number of entries (for tests).
    pub fn len(&self) -> usize {
        self.entries.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// True when nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Keyring for MemoryKeyring {
    fn name(&self) -> String {
        "memory".to_string()
    }

    fn get(&self, id: &str) -> Result<Option<String>, KeyringError> {
        Ok(self.entries.lock().ok().and_then(|m| m.get(id).cloned()))
    }

    fn set(&self, id: &str, secret: &str) -> Result<(), KeyringError> {
        if let Ok(mut m) = self.entries.lock() {
            m.insert(id.to_string(), secret.to_string());
        }
        Ok(())
    }
}

/// The desktop's or the kernel's keyring, through `keyring-core` stores.
pub struct SystemKeyring {
    store: Arc<CredentialStore>,
    name: &'static str,
}

impl std::fmt::Debug for SystemKeyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SystemKeyring")
            .field("name", &self.name)
            .finish()
    }
}

const PROBE: &str = "probe";

impl SystemKeyring {
    /// Find a working keyring: the Secret Service (gnome-keyring, KWallet)
    /// when the session bus offers one, else the kernel's keyutils. A
    /// process without a session keyring (some services and containers)
    /// joins a new anonymous one first; keys also go into the user's
    /// persistent keyring, which outlives the process for a few days (and
    /// never a reboot). Blocks: call through `spawn_blocking`.
    pub fn detect() -> Result<SystemKeyring, KeyringError> {
        let mut why = Vec::new();
        match zbus_secret_service_keyring_store::Store::new() {
            Ok(store) => {
                let k = SystemKeyring {
                    store,
                    name: "Secret Service",
                };
                match k.get(PROBE) {
                    Ok(_) => return Ok(k),
                    Err(e) => why.push(e.to_string()),
                }
            }
            Err(e) => why.push(format!("Secret Service: {}", describe(&e))),
        }
        for attempt in 0..2 {
            if attempt == 1 {
                join_session_keyring();
            }
            match linux_keyutils_keyring_store::Store::new() {
                Ok(store) => {
                    let k = SystemKeyring {
                        store,
                        name: "keyutils",
                    };
                    match k.get(PROBE) {
                        Ok(_) => return Ok(k),
                        Err(e) => why.push(e.to_string()),
                    }
                }
                Err(e) => why.push(format!("keyutils: {}", describe(&e))),
            }
        }
        Err(KeyringError::Unavailable {
            backend: "system keyring".to_string(),
            message: why.join("; "),
        })
    }

    fn entry(&self, id: &str) -> Result<Entry, KeyringError> {
        Entry::new_in_store(&self.store, SERVICE, id).map_err(|e| self.err(&e))
    }

    fn err(&self, e: &keyring_core::Error) -> KeyringError {
        KeyringError::Unavailable {
            backend: self.name.to_string(),
            message: describe(e),
        }
    }
}

/// A description of a keyring error that never includes secret bytes (the
/// `BadEncoding`/`BadDataFormat` variants carry them in `Debug`).
fn describe(e: &keyring_core::Error) -> String {
    use keyring_core::Error as E;
    match e {
        E::BadEncoding(_) => "stored secret is not UTF-8".to_string(),
        E::BadDataFormat(..) => "stored secret is malformed".to_string(),
        E::Ambiguous(v) => format!("{} entries match", v.len()),
        other => other.to_string(),
    }
}

/// `keyctl(KEYCTL_JOIN_SESSION_KEYRING, NULL)`: give this process a new
/// anonymous session keyring, for processes started without one.
fn join_session_keyring() {
    const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
    // SAFETY: the syscall takes a nullable C string; NULL asks for an
    // anonymous keyring. It touches no memory of ours.
    let r = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            KEYCTL_JOIN_SESSION_KEYRING,
            std::ptr::null::<libc::c_char>(),
        )
    };
    if r < 0 {
        tracing::debug!(
            "keyctl(JOIN_SESSION_KEYRING) failed: {}",
            std::io::Error::last_os_error()
        );
    }
}

impl Keyring for SystemKeyring {
    fn name(&self) -> String {
        self.name.to_string()
    }

    fn get(&self, id: &str) -> Result<Option<String>, KeyringError> {
        match self.entry(id)?.get_password() {
            Ok(s) => Ok(Some(s)),
            Err(keyring_core::Error::NoEntry) => Ok(None),
            Err(e) => Err(self.err(&e)),
        }
    }

    fn set(&self, id: &str, secret: &str) -> Result<(), KeyringError> {
        self.entry(id)?
            .set_password(secret)
            .map_err(|e| self.err(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_keyring_shares_entries() {
        let a = MemoryKeyring::new();
        let b = a.clone();
        assert_eq!(a.get("x").unwrap(), None);
        b.set("x", "k").unwrap();
        assert_eq!(a.get("x").unwrap().as_deref(), Some("k"));
        assert_eq!(a.len(), 1);
    }
}

#[cfg(test)]
mod system_tests {
    use super::*;

    /// Uses the real keyring of the machine: run by hand with
    /// `cargo test --lib system_keyring -- --ignored`.
    #[test]
    #[ignore]
    fn system_keyring_roundtrip() {
        let k = SystemKeyring::detect().expect("a keyring");
        let id = format!("test-{}", std::process::id());
        assert_eq!(k.get(&id).unwrap(), None);
        k.set(&id, "value").unwrap();
        assert_eq!(k.get(&id).unwrap().as_deref(), Some("value"));
        eprintln!("keyring: {}", k.name());
    }
}
