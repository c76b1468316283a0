//! What each identity provider needs: the account description
//! ([`AccountSpec`]), scopes per audience, authorize URLs, and the token
//! endpoint requests (code, refresh, device code) as plain form POSTs.
//!
//! The requests are written by hand rather than through the `oauth2` crate:
//! Microsoft needs an `Origin` header on every token call and one request
//! per resource with the newest (rotated) refresh token, Google needs the
//! non-secret client secret, and device polling must read `slow_down` and
//! `expired_token`; each is a few lines here and would be an adapter there.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::Deserialize;

use super::Audience;
use super::crypto::Secret;
use crate::config::{Config, registration};
use crate::endpoints::Endpoints;
use crate::types::{CloudKind, Protocol};

/// Microsoft identity host.
pub const MS_LOGIN_HOST: &str = "login.microsoftonline.com";
/// Google authorize host.
pub const GOOGLE_ACCOUNTS_HOST: &str = "accounts.google.com";
/// Google token host.
pub const GOOGLE_TOKEN_HOST: &str = "oauth2.googleapis.com";

const GRAPH_SYNC: &[&str] = &[
    "https://graph.microsoft.com/User.Read",
    "https://graph.microsoft.com/Mail.ReadWrite",
];
const OUTLOOK_SYNC: &str = "https://outlook.office.com/mail.read";
const OUTLOOK_SMTP: &str = "https://outlook.office.com/SMTP.Send";
const OUTLOOK_IMAP: &str = "https://outlook.office.com/IMAP.AccessAsUser.All";
const GMAIL_SYNC: &str = "https://www.googleapis.com/auth/gmail.modify";
const GMAIL_ALL: &str = "https://mail.google.com/";

/// One OAuth account as the auth code needs it.
#[derive(Clone, PartialEq, Eq)]
pub struct AccountSpec {
    /// Office365 or Gmail.
    pub kind: CloudKind,
    /// The user's address (`login_hint`); `None` lets the provider ask.
    pub user: Option<String>,
    /// Azure tenant (Office365; ignored for Gmail).
    pub tenant: String,
    /// OAuth client id.
    pub client_id: String,
    /// The client secret (Gmail's non-confidential one; `None` for Office365).
    pub client_secret: Option<Secret>,
    /// Log in with the device code flow.
    pub device_code: bool,
    /// Mail sync uses this account (Graph / Gmail API scopes).
    pub sync: bool,
    /// A credential server hands out SMTP tokens for it.
    pub smtp: bool,
    /// A credential server hands out IMAP tokens for it.
    pub imap: bool,
}

impl std::fmt::Debug for AccountSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountSpec")
            .field("kind", &self.kind)
            .field("user", &self.user)
            .field("tenant", &self.tenant)
            .field("client_id", &self.client_id)
            .field("device_code", &self.device_code)
            .field("sync", &self.sync)
            .field("smtp", &self.smtp)
            .field("imap", &self.imap)
            .finish_non_exhaustive()
    }
}

impl AccountSpec {
    /// An Office365 account used for sync, with the registration the
    /// built-in table gives its domain.
    pub fn office365(user: Option<&str>) -> AccountSpec {
        let reg = registration::office365_for(user, false);
        AccountSpec {
            kind: CloudKind::Office365,
            user: user.map(str::to_string),
            tenant: reg.tenant.to_string(),
            client_id: reg.client_id.to_string(),
            client_secret: None,
            device_code: false,
            sync: true,
            smtp: false,
            imap: false,
        }
    }

    /// A Gmail account used for sync, with the built-in client (an empty
    /// `user` lets Google ask).
    pub fn gmail(user: &str) -> AccountSpec {
        AccountSpec {
            kind: CloudKind::Gmail,
            user: (!user.is_empty()).then(|| user.to_string()),
            tenant: String::new(),
            client_id: registration::GMAIL_CLIENT_ID.to_string(),
            client_secret: Some(Secret::new(registration::GMAIL_CLIENT_SECRET)),
            device_code: false,
            sync: true,
            smtp: false,
            imap: false,
        }
    }

    /// The accounts of a validated config, in its order, with the
    /// protocols its mailboxes and credential servers use them for.
    pub fn from_config(cfg: &Config) -> Vec<AccountSpec> {
        cfg.accounts
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let mut spec = match a.kind {
                    CloudKind::Office365 => {
                        let reg = registration::office365_for(a.user.as_deref(), false);
                        let mut s = AccountSpec::office365(a.user.as_deref());
                        s.tenant = a.tenant.clone().unwrap_or_else(|| reg.tenant.to_string());
                        s.client_id = a
                            .client_id
                            .clone()
                            .unwrap_or_else(|| reg.client_id.to_string());
                        s
                    }
                    CloudKind::Gmail => AccountSpec::gmail(a.user.as_deref().unwrap_or("")),
                };
                spec.device_code = a.device_code;
                spec.sync = cfg.mailboxes.iter().any(|m| m.account == i);
                for s in cfg
                    .credential_servers
                    .iter()
                    .filter(|s| s.accounts.contains(&i))
                {
                    spec.smtp |= s.protocols.contains(&Protocol::Smtp);
                    spec.imap |= s.protocols.contains(&Protocol::Imap);
                }
                spec
            })
            .collect()
    }

    /// The key its refresh token is saved under; a new tenant or client id
    /// means a new login.
    pub fn store_key(&self) -> String {
        let user = self.user.as_deref().unwrap_or("").to_ascii_lowercase();
        match self.kind {
            CloudKind::Office365 => format!("o365:{user}:{}:{}", self.tenant, self.client_id),
            CloudKind::Gmail => format!("gmail:{user}:{}", self.client_id),
        }
    }

    /// `office365:user` / `gmail:user`, for logs and the page.
    pub fn label(&self) -> String {
        let kind = match self.kind {
            CloudKind::Office365 => "office365",
            CloudKind::Gmail => "gmail",
        };
        format!("{kind}:{}", self.user.as_deref().unwrap_or("(any user)"))
    }

    /// The user for error messages.
    pub fn user_name(&self) -> String {
        self.user.clone().unwrap_or_else(|| self.label())
    }

    /// Audiences this account serves.
    pub fn audiences(&self) -> Vec<Audience> {
        match self.kind {
            CloudKind::Office365 => {
                let mut v = Vec::new();
                if self.sync {
                    v.push(Audience::Graph);
                }
                v.push(Audience::Outlook);
                v
            }
            CloudKind::Gmail => {
                let mut v = Vec::new();
                if self.sync || !(self.smtp || self.imap) {
                    v.push(Audience::Gmail);
                }
                if self.smtp || self.imap {
                    v.push(Audience::GoogleMail);
                }
                v
            }
        }
    }

    /// Scopes of a token request for `aud`; `None` when the account does
    /// not serve it. Google issues one token for all its scopes.
    pub fn scopes(&self, aud: Audience) -> Option<Vec<&'static str>> {
        if !self.audiences().contains(&aud) {
            return None;
        }
        Some(match aud {
            Audience::Graph => {
                let mut v = GRAPH_SYNC.to_vec();
                v.push("offline_access");
                v
            }
            Audience::Outlook => {
                let mut v = Vec::new();
                if self.sync {
                    v.push(OUTLOOK_SYNC);
                }
                if self.smtp {
                    v.push(OUTLOOK_SMTP);
                }
                if self.imap {
                    v.push(OUTLOOK_IMAP);
                }
                if v.is_empty() {
                    v.push("openid");
                }
                v.push("offline_access");
                v
            }
            Audience::Gmail | Audience::GoogleMail => self.google_scopes(),
        })
    }

    fn google_scopes(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.sync {
            v.push(GMAIL_SYNC);
        }
        if self.smtp || self.imap {
            v.push(GMAIL_ALL);
        }
        if v.is_empty() {
            v.push("openid");
        }
        v
    }

    /// Audiences served by the token a code exchange (or device grant)
    /// returns: Outlook for Microsoft (the code is redeemed for the Outlook
    /// resource), every audience for Google.
    pub fn first_audiences(&self) -> Vec<Audience> {
        match self.kind {
            CloudKind::Office365 => vec![Audience::Outlook],
            CloudKind::Gmail => self.audiences(),
        }
    }

    /// Everything to consent to at once: Outlook scopes first (the code is
    /// redeemed for them), then Graph ones.
    pub fn consent_scopes(&self) -> Vec<&'static str> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        let order: &[Audience] = match self.kind {
            CloudKind::Office365 => &[Audience::Outlook, Audience::Graph],
            CloudKind::Gmail => &[Audience::Gmail, Audience::GoogleMail],
        };
        for a in order {
            for s in self.scopes(*a).unwrap_or_default() {
                if seen.insert(s) {
                    out.push(s);
                }
            }
        }
        out
    }

    /// The redirect path for this provider.
    pub fn redirect_path(&self) -> &'static str {
        match self.kind {
            CloudKind::Office365 => "/oauth2/msal",
            CloudKind::Gmail => "/oauth2/gmail",
        }
    }

    /// The authorize URL for a PKCE login.
    pub fn authorize_url(
        &self,
        ep: &Endpoints,
        redirect_uri: &str,
        state: &str,
        challenge: &str,
    ) -> String {
        let scope = self.consent_scopes().join(" ");
        let mut q: Vec<(&str, &str)> = vec![
            ("client_id", &self.client_id),
            ("response_type", "code"),
            ("redirect_uri", redirect_uri),
            ("scope", &scope),
            ("state", state),
            ("code_challenge", challenge),
            ("code_challenge_method", "S256"),
        ];
        if let Some(u) = &self.user {
            q.push(("login_hint", u));
        }
        let base = match self.kind {
            CloudKind::Office365 => ep.url(
                MS_LOGIN_HOST,
                &format!("/{}/oauth2/v2.0/authorize", self.tenant),
            ),
            CloudKind::Gmail => {
                q.push(("access_type", "offline"));
                q.push(("prompt", "consent"));
                ep.url(GOOGLE_ACCOUNTS_HOST, "/o/oauth2/v2/auth")
            }
        };
        let mut url = url::Url::parse(&base).unwrap_or_else(|_| {
            // Endpoints always yield absolute URLs; keep a usable fallback.
            url::Url::parse("http://127.0.0.1/").expect("static URL")
        });
        url.query_pairs_mut().extend_pairs(q);
        url.to_string()
    }

    /// The token endpoint.
    pub fn token_url(&self, ep: &Endpoints) -> String {
        match self.kind {
            CloudKind::Office365 => ep.url(
                MS_LOGIN_HOST,
                &format!("/{}/oauth2/v2.0/token", self.tenant),
            ),
            CloudKind::Gmail => ep.url(GOOGLE_TOKEN_HOST, "/token"),
        }
    }

    /// The device authorization endpoint (Microsoft only).
    pub fn devicecode_url(&self, ep: &Endpoints) -> String {
        ep.url(
            MS_LOGIN_HOST,
            &format!("/{}/oauth2/v2.0/devicecode", self.tenant),
        )
    }
}

/// A token endpoint answer.
#[derive(Deserialize)]
pub struct TokenResponse {
    /// The access token.
    pub access_token: String,
    /// A new refresh token (rotation), when sent.
    #[serde(default)]
    pub refresh_token: Option<String>,
    /// Seconds until the access token expires.
    #[serde(default)]
    pub expires_in: Option<u64>,
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("expires_in", &self.expires_in)
            .field("refresh_token", &self.refresh_token.is_some())
            .finish_non_exhaustive()
    }
}

/// A device authorization answer (RFC 8628 §3.2).
#[derive(Deserialize)]
pub struct DeviceAuthorization {
    /// Polled for the grant; secret.
    pub device_code: String,
    /// Shown to the user.
    pub user_code: String,
    /// Where the user enters the code (Google calls it `verification_url`).
    #[serde(alias = "verification_url")]
    pub verification_uri: String,
    /// Seconds the codes live.
    #[serde(default = "default_device_expiry")]
    pub expires_in: u64,
    /// Seconds between polls.
    #[serde(default = "default_interval")]
    pub interval: u64,
}

fn default_device_expiry() -> u64 {
    900
}

fn default_interval() -> u64 {
    5
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

/// A failed token endpoint call. Messages never contain tokens.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OAuthError {
    /// The endpoint answered with an OAuth error.
    #[error("{url}: HTTP {status}: {error}: {description}")]
    Endpoint {
        /// The endpoint (no query, no secrets).
        url: String,
        /// HTTP status.
        status: u16,
        /// The `error` code (`invalid_grant`, `authorization_pending`, ...).
        error: String,
        /// First line of `error_description`.
        description: String,
    },
    /// The endpoint could not be reached or answered nonsense.
    #[error("{url}: {message}")]
    Transport {
        /// The endpoint.
        url: String,
        /// What went wrong.
        message: String,
    },
}

impl OAuthError {
    /// The OAuth `error` code, if the endpoint sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            OAuthError::Endpoint { error, .. } => Some(error),
            OAuthError::Transport { .. } => None,
        }
    }

    /// True when only a new interactive login can help (revoked, expired,
    /// MFA or consent needed).
    pub fn needs_login(&self) -> bool {
        matches!(
            self.code(),
            Some("invalid_grant" | "interaction_required" | "consent_required" | "login_required")
        )
    }

    /// A short reason for the page and `AuthError`s.
    pub fn reason(&self) -> String {
        match self {
            OAuthError::Endpoint {
                error, description, ..
            } => {
                if description.is_empty() {
                    error.clone()
                } else {
                    format!("{error}: {description}")
                }
            }
            OAuthError::Transport { message, .. } => message.clone(),
        }
    }
}

/// Posts token-endpoint forms.
#[derive(Clone, Debug)]
pub struct TokenClient {
    http: reqwest::Client,
    /// `Origin` sent to Microsoft (`http://127.0.0.1:PORT/`).
    origin: String,
}

/// How long one token endpoint call may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

impl TokenClient {
    /// A client sending `origin` as `Origin` on Microsoft calls.
    pub fn new(http: reqwest::Client, origin: &str) -> TokenClient {
        TokenClient {
            http,
            origin: origin.to_string(),
        }
    }

    /// POST `form` to `url` and parse a JSON answer of type `T`.
    pub async fn post<T: serde::de::DeserializeOwned>(
        &self,
        spec: &AccountSpec,
        url: &str,
        form: &[(&str, &str)],
    ) -> Result<T, OAuthError> {
        let mut req = self
            .http
            .post(url)
            .header("Accept", "application/json")
            .timeout(REQUEST_TIMEOUT)
            .form(form);
        if spec.kind == CloudKind::Office365 {
            // The built-in registrations are single-page-app type: Microsoft
            // redeems their codes and refresh tokens only cross-origin.
            req = req.header("Origin", &self.origin);
        }
        let transport = |e: reqwest::Error| OAuthError::Transport {
            url: url.to_string(),
            message: e.without_url().to_string(),
        };
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(transport)?;
        if status.is_success() {
            // Some services answer 200 with an error body.
            if let Ok(e) = serde_json::from_slice::<ErrorBody>(&body)
                && !e.error.is_empty()
            {
                return Err(endpoint_error(url, status.as_u16(), e));
            }
            return serde_json::from_slice(&body).map_err(|e| OAuthError::Transport {
                url: url.to_string(),
                message: format!("malformed answer ({:?})", e.classify()),
            });
        }
        match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(e) if !e.error.is_empty() => Err(endpoint_error(url, status.as_u16(), e)),
            _ => Err(OAuthError::Transport {
                url: url.to_string(),
                message: format!("HTTP {}", status.as_u16()),
            }),
        }
    }

    /// Redeem an authorization code.
    pub async fn redeem_code(
        &self,
        spec: &AccountSpec,
        ep: &Endpoints,
        code: &Secret,
        redirect_uri: &str,
        verifier: &Secret,
    ) -> Result<TokenResponse, OAuthError> {
        let scope = spec
            .scopes(spec.first_audiences()[0])
            .unwrap_or_default()
            .join(" ");
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("client_id", spec.client_id.as_str()),
            ("code", code.expose()),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier.expose()),
        ];
        if spec.kind == CloudKind::Office365 {
            form.push(("scope", &scope));
        }
        if let Some(s) = &spec.client_secret {
            form.push(("client_secret", s.expose()));
        }
        self.post(spec, &spec.token_url(ep), &form).await
    }

    /// Exchange a refresh token for an access token for `aud`.
    pub async fn refresh(
        &self,
        spec: &AccountSpec,
        ep: &Endpoints,
        rt: &Secret,
        aud: Audience,
    ) -> Result<TokenResponse, OAuthError> {
        let scope = spec.scopes(aud).unwrap_or_default().join(" ");
        let mut form = vec![
            ("grant_type", "refresh_token"),
            ("client_id", spec.client_id.as_str()),
            ("refresh_token", rt.expose()),
        ];
        if spec.kind == CloudKind::Office365 {
            form.push(("scope", &scope));
        }
        if let Some(s) = &spec.client_secret {
            form.push(("client_secret", s.expose()));
        }
        self.post(spec, &spec.token_url(ep), &form).await
    }

    /// Start a device authorization (Microsoft).
    pub async fn device_authorization(
        &self,
        spec: &AccountSpec,
        ep: &Endpoints,
    ) -> Result<DeviceAuthorization, OAuthError> {
        let scope = spec.consent_scopes().join(" ");
        let form = [("client_id", spec.client_id.as_str()), ("scope", &scope)];
        self.post(spec, &spec.devicecode_url(ep), &form).await
    }

    /// Poll for a device grant.
    pub async fn poll_device(
        &self,
        spec: &AccountSpec,
        ep: &Endpoints,
        device_code: &Secret,
    ) -> Result<TokenResponse, OAuthError> {
        let form = [
            ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
            ("client_id", spec.client_id.as_str()),
            ("device_code", device_code.expose()),
        ];
        self.post(spec, &spec.token_url(ep), &form).await
    }
}

fn endpoint_error(url: &str, status: u16, e: ErrorBody) -> OAuthError {
    OAuthError::Endpoint {
        url: url.to_string(),
        status,
        error: e.error,
        description: e
            .error_description
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_per_protocol() {
        let mut s = AccountSpec::office365(Some("a@example.com"));
        assert_eq!(
            s.scopes(Audience::Graph).unwrap(),
            vec![
                "https://graph.microsoft.com/User.Read",
                "https://graph.microsoft.com/Mail.ReadWrite",
                "offline_access"
            ]
        );
        assert_eq!(
            s.scopes(Audience::Outlook).unwrap(),
            vec!["https://outlook.office.com/mail.read", "offline_access"]
        );
        assert_eq!(s.scopes(Audience::Gmail), None);
        s.smtp = true;
        s.imap = true;
        assert_eq!(
            s.consent_scopes(),
            vec![
                "https://outlook.office.com/mail.read",
                "https://outlook.office.com/SMTP.Send",
                "https://outlook.office.com/IMAP.AccessAsUser.All",
                "offline_access",
                "https://graph.microsoft.com/User.Read",
                "https://graph.microsoft.com/Mail.ReadWrite",
            ]
        );
        s.sync = false;
        assert_eq!(s.audiences(), vec![Audience::Outlook]);

        let mut g = AccountSpec::gmail("u@gmail.com");
        assert_eq!(g.audiences(), vec![Audience::Gmail]);
        g.smtp = true;
        assert_eq!(
            g.scopes(Audience::GoogleMail).unwrap(),
            vec![
                "https://www.googleapis.com/auth/gmail.modify",
                "https://mail.google.com/"
            ]
        );
    }

    #[test]
    fn protocols_from_config() {
        use crate::config::{AccountConfig, CredentialServerConfig, MailboxConfig};
        use crate::types::DeleteAction;
        let acct = |kind, user: &str| AccountConfig {
            kind,
            user: Some(user.to_string()),
            tenant: Some("t".into()),
            client_id: Some("c".into()),
            device_code: kind == CloudKind::Office365,
        };
        let cfg = Config {
            file: "cms.cfg".into(),
            message_db_dir: "/tmp/x".into(),
            maildirs: vec![],
            accounts: vec![
                acct(CloudKind::Office365, "a@example.com"),
                acct(CloudKind::Gmail, "g@gmail.com"),
            ],
            mailboxes: vec![MailboxConfig {
                kind: CloudKind::Gmail,
                name: "INBOX".into(),
                account: 1,
                delete_action: DeleteAction::Archive,
                poll_interval: crate::config::DEFAULT_POLL_INTERVAL,
            }],
            credential_servers: vec![CredentialServerConfig {
                path: "/tmp/s".into(),
                accounts: vec![0, 1],
                umask: 0o600,
                protocols: vec![Protocol::Smtp],
            }],
            custom_router: false,
            rescan_interval: std::time::Duration::from_secs(3600),
        };
        let specs = AccountSpec::from_config(&cfg);
        let (o, g) = (&specs[0], &specs[1]);
        assert!(!o.sync && o.smtp && !o.imap && o.device_code);
        assert_eq!((o.tenant.as_str(), o.client_id.as_str()), ("t", "c"));
        assert_eq!(
            o.scopes(Audience::Outlook).unwrap(),
            vec!["https://outlook.office.com/SMTP.Send", "offline_access"]
        );
        assert_eq!(o.scopes(Audience::Graph), None);
        assert!(g.sync && g.smtp);
        assert_eq!(g.client_id, registration::GMAIL_CLIENT_ID);
        assert_eq!(g.audiences(), vec![Audience::Gmail, Audience::GoogleMail]);
        assert_ne!(o.store_key(), g.store_key());
        assert!(!format!("{g:?}").contains(registration::GMAIL_CLIENT_SECRET));
    }

    #[test]
    fn authorize_urls() {
        let ep = Endpoints::emulated("http://127.0.0.1:9");
        let g = AccountSpec::gmail("u@gmail.com");
        let u = g.authorize_url(&ep, "http://127.0.0.1:8080/oauth2/gmail", "st", "ch");
        assert!(u.starts_with("http://127.0.0.1:9/accounts.google.com/o/oauth2/v2/auth?"));
        for p in [
            "access_type=offline",
            "prompt=consent",
            "login_hint=u%40gmail.com",
            "code_challenge_method=S256",
            "redirect_uri=http%3A%2F%2F127.0.0.1%3A8080%2Foauth2%2Fgmail",
        ] {
            assert!(u.contains(p), "{u} lacks {p}");
        }
        let m = AccountSpec::office365(Some("a@nvidia.com"));
        let u = m.authorize_url(&Endpoints::real(), "r", "s", "c");
        assert!(u.starts_with(
            "https://login.microsoftonline.com/43083d15-7273-40c1-b7db-39efd9ccc17a/oauth2/v2.0/authorize?"
        ));
    }
}
