//! Small secrets: the redacted [`Secret`] string and random bytes from the
//! OS CSPRNG. (PKCE pairs and `state` values come from `oauth2`.)

use std::fmt;

use secrecy::{ExposeSecret, SecretString};

/// A secret string (refresh token, code, client secret), zeroed when
/// dropped. `Debug` and `Display` never show it.
#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    /// Wrap a secret.
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(SecretString::from(s.into()))
    }

    /// The secret itself, for a request body only.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Secret) -> bool {
        self.expose() == other.expose()
    }
}

impl Eq for Secret {}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// `n` random bytes from the OS CSPRNG.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    // The OS generator only fails on exotic platforms; a zeroed buffer
    // would be a silent security bug, so stop instead.
    getrandom::fill(&mut buf).expect("the OS random number generator failed");
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_and_compared_by_value() {
        let s = Secret::new("rt-value");
        assert!(!format!("{s:?} {s}").contains("rt-value"));
        assert_eq!(s.expose(), "rt-value");
        assert_eq!(s, Secret::new("rt-value"));
        assert_ne!(s, Secret::new("other"));
    }

    #[test]
    fn random_bytes_differ() {
        assert_eq!(random_bytes(32).len(), 32);
        assert_ne!(random_bytes(32), random_bytes(32));
    }
}
