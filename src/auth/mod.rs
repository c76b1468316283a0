//! Authentication: where cloud clients get access tokens. The
//! [`TokenSource`] trait is what Graph and Gmail clients see; the OAuth
//! implementation lives in submodules and [`StaticTokens`] serves fixed
//! tokens to tests.
//!
//! # Layout
//! - [`manager`]: [`AuthManager`] owns every account, refreshes and caches
//!   access tokens, runs logins, and gives each account an
//!   [`AccountTokens`] (a [`TokenSource`]).
//! - [`web`]: the loopback login server: status page, server-sent events,
//!   OAuth redirects.
//! - [`provider`]: scopes, authorize URLs and token requests of Microsoft
//!   and Google (through `oauth2`); [`http`]: the HTTP client `oauth2`
//!   uses, adding Microsoft's `Origin` header.
//! - [`store`]: refresh tokens encrypted at rest; [`keyring`]: where the
//!   key lives.
//! - [`crypto`], [`clock`], [`browser`]: secrets, injected time,
//!   the browser launcher hook.

pub mod browser;
pub mod clock;
pub mod crypto;
pub mod http;
pub mod keyring;
pub mod manager;
pub mod provider;
pub mod store;
pub mod web;

pub use browser::{Browser, CommandBrowser, NoBrowser};
pub use clock::{Clock, SystemClock};
pub use keyring::{Keyring, MemoryKeyring, SystemKeyring};
pub use manager::{
    AccountStatus, AccountTokens, AuthManager, AuthOptions, DeviceCodeInfo, LoginState, StartError,
    daemon_options,
};
pub use provider::AccountSpec;

use futures_util::future::BoxFuture;
use secrecy::{ExposeSecret, SecretString};
#[cfg(any(test, feature = "test-util"))]
use std::collections::HashMap;
use std::fmt;
#[cfg(any(test, feature = "test-util"))]
use std::sync::Mutex;

/// Which resource a token is for; each needs its own access token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Audience {
    /// Microsoft Graph (mail sync).
    Graph,
    /// `outlook.office.com` (SMTP/IMAP XOAUTH2).
    Outlook,
    /// Gmail API (mail sync, `gmail.modify`).
    Gmail,
    /// Google `https://mail.google.com/` (SMTP/IMAP XOAUTH2).
    GoogleMail,
}

/// An access token, zeroed when dropped. Its `Debug` and `Display` never
/// show the secret.
#[derive(Clone)]
pub struct AccessToken(SecretString);

impl AccessToken {
    /// Wrap a token string.
    pub fn new(s: impl Into<String>) -> AccessToken {
        AccessToken(SecretString::from(s.into()))
    }

    /// The secret, for an `Authorization` header only.
    pub fn secret(&self) -> &str {
        self.0.expose_secret()
    }

    /// `Bearer <token>`, for an `Authorization` header.
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.secret())
    }
}

impl PartialEq for AccessToken {
    fn eq(&self, other: &AccessToken) -> bool {
        self.secret() == other.secret()
    }
}

impl Eq for AccessToken {}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessToken(<redacted>)")
    }
}

impl fmt::Display for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted token>")
    }
}

/// Why no token could be had.
#[derive(Clone, Debug, thiserror::Error)]
pub enum AuthError {
    /// The user must log in (no refresh token, or it was revoked/expired);
    /// the login page shows the account as pending.
    #[error("{user}: login needed ({reason})")]
    LoginNeeded {
        /// The account.
        user: String,
        /// Why (never contains a token).
        reason: String,
    },
    /// A transient failure talking to the token endpoint.
    #[error("{user}: token endpoint unavailable: {reason}")]
    Unavailable {
        /// The account.
        user: String,
        /// Why.
        reason: String,
    },
}

/// Supplies access tokens for one account.
pub trait TokenSource: Send + Sync {
    /// A currently valid access token for `audience` (refreshing or waiting
    /// for a login as needed).
    fn token(&self, audience: Audience) -> BoxFuture<'_, Result<AccessToken, AuthError>>;

    /// The service refused `token` (HTTP 401): forget it so the next
    /// [`TokenSource::token`] call refreshes.
    fn invalidate(&self, audience: Audience, token: &AccessToken);
}

/// Fixed tokens per audience, for tests (e.g. minted by the emulator's
/// `/_control/token`); built with the `test-util` feature.
#[cfg(any(test, feature = "test-util"))]
#[derive(Default)]
pub struct StaticTokens {
    user: String,
    tokens: Mutex<HashMap<Audience, AccessToken>>,
}

#[cfg(any(test, feature = "test-util"))]
impl StaticTokens {
    /// Tokens for `user`.
    pub fn new(user: &str, tokens: impl IntoIterator<Item = (Audience, AccessToken)>) -> Self {
        StaticTokens {
            user: user.to_string(),
            tokens: Mutex::new(tokens.into_iter().collect()),
        }
    }

    /// Replace the token for `audience`.
    pub fn set(&self, audience: Audience, token: AccessToken) {
        if let Ok(mut m) = self.tokens.lock() {
            m.insert(audience, token);
        }
    }
}

#[cfg(any(test, feature = "test-util"))]
impl TokenSource for StaticTokens {
    fn token(&self, audience: Audience) -> BoxFuture<'_, Result<AccessToken, AuthError>> {
        let t = self
            .tokens
            .lock()
            .ok()
            .and_then(|m| m.get(&audience).cloned());
        let user = self.user.clone();
        Box::pin(async move {
            t.ok_or(AuthError::LoginNeeded {
                user,
                reason: format!("no static token for {audience:?}"),
            })
        })
    }

    fn invalidate(&self, audience: Audience, token: &AccessToken) {
        if let Ok(mut m) = self.tokens.lock()
            && m.get(&audience) == Some(token)
        {
            m.remove(&audience);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_redacted() {
        let t = AccessToken::new("secret-value");
        assert!(!format!("{t:?} {t}").contains("secret"));
        assert_eq!(t.bearer(), "Bearer secret-value");
    }
}
