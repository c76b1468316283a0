//! The refresh-token store: one file (`tokens.enc`) holding every
//! account's refresh token, encrypted with ChaCha20-Poly1305 under a random
//! key that lives only in the system keyring. Without a keyring nothing is
//! written, and logins last as long as the process.
//!
//! File layout: `MAGIC` (8 bytes, also the AEAD associated data), a 12-byte
//! nonce, then the ciphertext of `{"accounts": {KEY: REFRESH_TOKEN}}`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use serde::{Deserialize, Serialize};

use super::crypto::{Secret, random_bytes};
use super::keyring::{Keyring, KeyringError};

/// First bytes of the file; bump the digit when the layout changes.
const MAGIC: &[u8; 8] = b"CMSTOK1\n";
const NONCE_LEN: usize = 12;
const KEY_LEN: usize = 32;

/// Why the store could not be read or written. Never carries secrets.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The keyring refused to give or keep the key.
    #[error("keyring: {0}")]
    Keyring(#[from] KeyringError),
    /// The file could not be read.
    #[error("cannot read {path}: {message}")]
    Read {
        /// The token file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The file is not ours, damaged, or encrypted under another key.
    #[error("cannot decrypt {path}: {message}")]
    Decrypt {
        /// The token file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The file could not be written.
    #[error("cannot write {path}: {message}")]
    Write {
        /// The token file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// Refresh tokens by account key.
pub type TokenMap = BTreeMap<String, Secret>;

#[derive(Serialize, Deserialize, Default)]
struct Plain {
    accounts: BTreeMap<String, String>,
}

/// The encrypted token file and its key; `key == None` disables persistence.
pub struct TokenStore {
    path: PathBuf,
    key: Option<Arc<Key>>,
    /// Serialises writers so the newest map always lands last.
    write_lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenStore")
            .field("path", &self.path)
            .field("persistent", &self.key.is_some())
            .finish()
    }
}

impl TokenStore {
    /// A store that keeps nothing (no keyring).
    pub fn disabled(path: &Path) -> TokenStore {
        TokenStore {
            path: path.to_path_buf(),
            key: None,
            write_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// True when tokens are written to disk.
    pub fn is_persistent(&self) -> bool {
        self.key.is_some()
    }

    /// The token file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Open the store at `path`, fetching (or creating) its key in `keyring`
    /// under `key_id`, and read the tokens saved there. Problems are logged
    /// once and degrade to "nothing persisted" or "nothing saved yet"; this
    /// never fails. Keyring and file IO run on the blocking pool.
    pub async fn open(
        path: &Path,
        keyring: Option<Arc<dyn Keyring>>,
        key_id: &str,
    ) -> (TokenStore, TokenMap) {
        let Some(keyring) = keyring else {
            tracing::warn!(
                "no system keyring: refresh tokens are not saved, so logins do not survive a restart"
            );
            return (TokenStore::disabled(path), TokenMap::new());
        };
        let p = path.to_path_buf();
        let id = key_id.to_string();
        let res = tokio::task::spawn_blocking(move || open_blocking(&p, keyring.as_ref(), &id))
            .await
            .unwrap_or_else(|e| {
                Err(StoreError::Read {
                    path: path.to_path_buf(),
                    message: format!("task failed: {e}"),
                })
            });
        match res {
            Ok((key, tokens)) => (
                TokenStore {
                    path: path.to_path_buf(),
                    key: Some(Arc::new(key)),
                    write_lock: tokio::sync::Mutex::new(()),
                },
                tokens,
            ),
            Err(e) => {
                tracing::warn!(
                    "{e}: refresh tokens are not saved, so logins do not survive a restart"
                );
                (TokenStore::disabled(path), TokenMap::new())
            }
        }
    }

    /// Replace the saved tokens with `tokens` (atomically; nothing when not
    /// persistent).
    pub async fn save(&self, tokens: TokenMap) -> Result<(), StoreError> {
        let Some(key) = self.key.clone() else {
            return Ok(());
        };
        let _guard = self.write_lock.lock().await;
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || save_blocking(&path, &key, &tokens))
            .await
            .map_err(|e| StoreError::Write {
                path: self.path.clone(),
                message: format!("task failed: {e}"),
            })?
    }
}

/// Get or create the key, then read the file.
fn open_blocking(
    path: &Path,
    keyring: &dyn Keyring,
    key_id: &str,
) -> Result<(Key, TokenMap), StoreError> {
    let key = match keyring.get(key_id)? {
        Some(b64) => decode_key(&b64).ok_or_else(|| StoreError::Decrypt {
            path: path.to_path_buf(),
            message: format!("the key in the {} keyring is malformed", keyring.name()),
        }),
        None => {
            let raw = random_bytes(KEY_LEN);
            keyring.set(key_id, &STANDARD.encode(&raw))?;
            tracing::info!(
                "created the token-store key in the {} keyring",
                keyring.name()
            );
            Ok(*Key::from_slice(&raw))
        }
    };
    let key = match key {
        Ok(k) => k,
        Err(e) => {
            // A damaged key cannot decrypt anything: replace it.
            tracing::warn!("{e}: replacing it");
            let raw = random_bytes(KEY_LEN);
            keyring.set(key_id, &STANDARD.encode(&raw))?;
            return Ok((*Key::from_slice(&raw), TokenMap::new()));
        }
    };
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((key, TokenMap::new())),
        Err(e) => {
            tracing::warn!(
                "cannot read {}: {e}; starting without saved logins",
                path.display()
            );
            return Ok((key, TokenMap::new()));
        }
    };
    match decrypt(&key, &bytes) {
        Ok(tokens) => Ok((key, tokens)),
        Err(message) => {
            tracing::warn!(
                "cannot decrypt {}: {message}; starting without saved logins",
                path.display()
            );
            Ok((key, TokenMap::new()))
        }
    }
}

fn decode_key(b64: &str) -> Option<Key> {
    let raw = STANDARD.decode(b64.trim()).ok()?;
    (raw.len() == KEY_LEN).then(|| *Key::from_slice(&raw))
}

fn save_blocking(path: &Path, key: &Key, tokens: &TokenMap) -> Result<(), StoreError> {
    let bytes = encrypt(key, tokens);
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        crate::fsutil::create_private_dir(dir).map_err(|e| StoreError::Write {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    }
    crate::fsutil::write_atomic(path, &bytes).map_err(|e| StoreError::Write {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// The file content for `tokens` under `key` (fresh random nonce).
pub fn encrypt(key: &Key, tokens: &TokenMap) -> Vec<u8> {
    let plain = Plain {
        accounts: tokens
            .iter()
            .map(|(k, v)| (k.clone(), v.expose().to_string()))
            .collect(),
    };
    let json = serde_json::to_vec(&plain).unwrap_or_default();
    let nonce_bytes = random_bytes(NONCE_LEN);
    let nonce = Nonce::from_slice(&nonce_bytes);
    let cipher = ChaCha20Poly1305::new(key);
    // Encryption of an in-memory buffer cannot fail for this AEAD.
    let ct = cipher
        .encrypt(
            nonce,
            Payload {
                msg: &json,
                aad: MAGIC,
            },
        )
        .unwrap_or_default();
    let mut out = Vec::with_capacity(MAGIC.len() + NONCE_LEN + ct.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&nonce_bytes);
    out.extend_from_slice(&ct);
    out
}

/// The tokens in file content `bytes`, or why they cannot be had.
pub fn decrypt(key: &Key, bytes: &[u8]) -> Result<TokenMap, String> {
    let rest = bytes
        .strip_prefix(MAGIC.as_slice())
        .ok_or("not a cloud-mdir-sync token file")?;
    if rest.len() < NONCE_LEN {
        return Err("file is truncated".into());
    }
    let (nonce, ct) = rest.split_at(NONCE_LEN);
    let plain = ChaCha20Poly1305::new(key)
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: ct,
                aad: MAGIC,
            },
        )
        .map_err(|_| "wrong key or damaged file".to_string())?;
    let p: Plain =
        serde_json::from_slice(&plain).map_err(|_| "decrypted content is malformed".to_string())?;
    Ok(p.accounts
        .into_iter()
        .map(|(k, v)| (k, Secret::new(v)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::keyring::MemoryKeyring;

    #[test]
    fn roundtrip_and_tamper() {
        let key = *Key::from_slice(&[7u8; 32]);
        let mut m = TokenMap::new();
        m.insert("a".into(), Secret::new("rt-secret-value"));
        let bytes = encrypt(&key, &m);
        assert!(
            !bytes
                .windows(b"rt-secret-value".len())
                .any(|w| w == b"rt-secret-value")
        );
        assert_eq!(decrypt(&key, &bytes).unwrap(), m);
        let mut bad = bytes.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(decrypt(&key, &bad).is_err());
        let other = *Key::from_slice(&[8u8; 32]);
        assert!(decrypt(&other, &bytes).is_err());
    }

    #[tokio::test]
    async fn persists_only_with_a_keyring() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/tokens.enc");
        let kr = MemoryKeyring::new();
        let (s, t) = TokenStore::open(&path, Some(Arc::new(kr.clone())), "id").await;
        assert!(t.is_empty() && s.is_persistent());
        let mut m = TokenMap::new();
        m.insert("a".into(), Secret::new("rt"));
        s.save(m.clone()).await.unwrap();
        let (_, t2) = TokenStore::open(&path, Some(Arc::new(kr.clone())), "id").await;
        assert_eq!(t2, m);
        // Another key id (another state dir) cannot read it.
        let (_, t3) = TokenStore::open(&path, Some(Arc::new(kr)), "other").await;
        assert!(t3.is_empty());

        let path2 = dir.path().join("x/tokens.enc");
        let (s, _) = TokenStore::open(&path2, None, "id").await;
        s.save(m).await.unwrap();
        assert!(!path2.exists());
    }
}
