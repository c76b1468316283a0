//! Small secrets: the redacted [`Secret`] string, random tokens from the OS
//! CSPRNG, and the PKCE S256 verifier/challenge pair (RFC 7636).

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

/// A secret string (refresh token, code, verifier, state, client secret),
/// zeroed when dropped. `Debug` and `Display` never show it.
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

/// A URL-safe random token carrying `bytes` bytes of entropy.
pub fn random_token(bytes: usize) -> Secret {
    Secret::new(URL_SAFE_NO_PAD.encode(random_bytes(bytes)))
}

/// A PKCE pair: the verifier stays here, the challenge goes to `/authorize`.
#[derive(Debug, Clone)]
pub struct Pkce {
    /// The `code_verifier` (43–128 unreserved characters).
    pub verifier: Secret,
    /// `BASE64URL(SHA256(verifier))`, sent as `code_challenge`.
    pub challenge: String,
}

impl Pkce {
    /// A fresh pair: 96 random bytes give a 128-character verifier.
    pub fn new() -> Pkce {
        Pkce::from_verifier(random_token(96))
    }

    /// The pair for a given verifier.
    pub fn from_verifier(verifier: Secret) -> Pkce {
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.expose().as_bytes()));
        Pkce {
            verifier,
            challenge,
        }
    }
}

impl Default for Pkce {
    fn default() -> Self {
        Pkce::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7636_appendix_b() {
        let p = Pkce::from_verifier(Secret::new("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"));
        assert_eq!(p.challenge, "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
    }

    #[test]
    fn verifier_shape() {
        let p = Pkce::new();
        assert_eq!(p.verifier.expose().len(), 128);
        assert!(
            p.verifier
                .expose()
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_ne!(Pkce::new().verifier, p.verifier);
        assert!(!format!("{:?} {}", p, p.verifier).contains(p.verifier.expose()));
    }
}
