//! What each identity provider needs: the account description
//! ([`AccountSpec`]), scopes per audience, authorize URLs, and the token
//! endpoint requests (code, refresh, device code).
//!
//! The `oauth2` crate builds the authorize URL and the requests and reads
//! the answers; it sends them through [`OAuthHttp`], which adds
//! Microsoft's `Origin` header. What stays here: which scopes go to which
//! resource (one refresh request per resource with the newest refresh
//! token), Google's extra authorize parameters and client secret, and the
//! mapping of answers to [`OAuthError`] (login needed or transient).

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use oauth2::basic::{BasicClient, BasicTokenResponse};
use oauth2::http::HeaderValue;
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken,
    DeviceAuthorizationUrl, EndpointNotSet, EndpointSet, ErrorResponseType, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, RefreshToken, RequestTokenError, Scope,
    StandardDeviceAuthorizationResponse, StandardErrorResponse, TokenResponse, TokenUrl,
};
use serde::Deserialize;

use super::clock::Clock;
use super::crypto::Secret;
use super::http::{HttpError, OAuthHttp};
use super::{AccessToken, Audience};
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

    /// The `oauth2` client for this account's endpoints. The client secret
    /// (Google's) goes in the form body, as Google documents it for
    /// installed apps.
    fn client(&self, ep: &Endpoints) -> Result<Client, OAuthError> {
        let auth = match self.kind {
            CloudKind::Office365 => ep.url(
                MS_LOGIN_HOST,
                &format!("/{}/oauth2/v2.0/authorize", self.tenant),
            ),
            CloudKind::Gmail => ep.url(GOOGLE_ACCOUNTS_HOST, "/o/oauth2/v2/auth"),
        };
        let (token, device) = (self.token_url(ep), self.devicecode_url(ep));
        let bad = |url: &str| OAuthError::Transport {
            url: url.to_string(),
            message: "not a valid endpoint URL".into(),
        };
        let mut c = BasicClient::new(ClientId::new(self.client_id.clone()))
            .set_auth_type(AuthType::RequestBody)
            .set_auth_uri(AuthUrl::new(auth.clone()).map_err(|_| bad(&auth))?)
            .set_token_uri(TokenUrl::new(token.clone()).map_err(|_| bad(&token))?)
            .set_device_authorization_url(
                DeviceAuthorizationUrl::new(device.clone()).map_err(|_| bad(&device))?,
            );
        if let Some(s) = &self.client_secret {
            c = c.set_client_secret(ClientSecret::new(s.expose().to_string()));
        }
        Ok(c)
    }

    /// The authorize URL of a PKCE login and the `state` it carries.
    /// Besides the standard parameters: `login_hint`, and for Google
    /// `access_type=offline` and `prompt=consent`, without which Google
    /// sends no refresh token.
    pub fn authorize_url(
        &self,
        ep: &Endpoints,
        redirect_uri: &RedirectUrl,
        challenge: PkceCodeChallenge,
    ) -> Result<(String, CsrfToken), OAuthError> {
        let client = self.client(ep)?;
        let mut req = client
            .authorize_url(|| CsrfToken::new_random_len(24))
            .set_redirect_uri(Cow::Borrowed(redirect_uri))
            .add_scopes(self.consent_scopes().into_iter().map(scope))
            .set_pkce_challenge(challenge);
        if let Some(u) = &self.user {
            req = req.add_extra_param("login_hint", u);
        }
        if self.kind == CloudKind::Gmail {
            req = req
                .add_extra_param("access_type", "offline")
                .add_extra_param("prompt", "consent");
        }
        let (url, state) = req.url();
        Ok((url.to_string(), state))
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

    /// The device authorization endpoint (only Microsoft's is used: Google
    /// refuses Gmail scopes in the device flow).
    pub fn devicecode_url(&self, ep: &Endpoints) -> String {
        match self.kind {
            CloudKind::Office365 => ep.url(
                MS_LOGIN_HOST,
                &format!("/{}/oauth2/v2.0/devicecode", self.tenant),
            ),
            CloudKind::Gmail => ep.url(GOOGLE_TOKEN_HOST, "/device/code"),
        }
    }
}

fn scope(s: &str) -> Scope {
    Scope::new(s.to_string())
}

/// The `oauth2` client with authorize, device and token endpoints set.
type Client = BasicClient<EndpointSet, EndpointSet, EndpointNotSet, EndpointNotSet, EndpointSet>;

/// A device authorization answer (RFC 8628 §3.2; Google's
/// `verification_url` is read too).
pub type DeviceAuthorization = StandardDeviceAuthorizationResponse;

/// A token endpoint's answer, its secrets wrapped at once.
pub struct Grant {
    /// The access token.
    pub access: AccessToken,
    /// A new refresh token (rotation), when sent.
    pub refresh: Option<Secret>,
    /// How long the access token lives, when said.
    pub expires_in: Option<Duration>,
}

impl From<BasicTokenResponse> for Grant {
    fn from(r: BasicTokenResponse) -> Grant {
        Grant {
            access: AccessToken::new(r.access_token().secret().as_str()),
            refresh: r.refresh_token().map(|t| Secret::new(t.secret().as_str())),
            expires_in: r.expires_in(),
        }
    }
}

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grant")
            .field("expires_in", &self.expires_in)
            .field("refresh", &self.refresh.is_some())
            .finish_non_exhaustive()
    }
}

/// An OAuth error body, read from a 200 answer some services send.
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

    /// Our error for what `oauth2` returned from a request to `url` made
    /// through `http`. Answer bodies (which may hold tokens) are only
    /// parsed, never quoted.
    fn from_oauth2<T: ErrorResponseType + AsRef<str> + std::fmt::Display>(
        url: &str,
        http: &OAuthHttp,
        e: RequestTokenError<HttpError, StandardErrorResponse<T>>,
    ) -> OAuthError {
        let status = http.last_status().unwrap_or(0);
        let endpoint = |error: String, description: Option<&str>| OAuthError::Endpoint {
            url: url.to_string(),
            status,
            error,
            description: description
                .and_then(|d| d.lines().next())
                .unwrap_or("")
                .trim()
                .to_string(),
        };
        let transport = |message: String| OAuthError::Transport {
            url: url.to_string(),
            message,
        };
        match e {
            RequestTokenError::ServerResponse(r) => endpoint(
                r.error().as_ref().to_string(),
                r.error_description().map(String::as_str),
            ),
            RequestTokenError::Request(e) => transport(e.to_string()),
            RequestTokenError::Parse(e, body) => {
                match serde_json::from_slice::<ErrorBody>(&body) {
                    // An error answered with 200.
                    Ok(b) if !b.error.is_empty() => endpoint(b.error, Some(&b.error_description)),
                    _ if status != 200 => transport(format!("HTTP {status}")),
                    _ => transport(format!(
                        "malformed answer at {} ({:?})",
                        e.path(),
                        e.inner().classify()
                    )),
                }
            }
            RequestTokenError::Other(_) if status != 200 => transport(format!("HTTP {status}")),
            RequestTokenError::Other(m) => transport(m),
        }
    }
}

/// Sends token-endpoint requests through `oauth2`.
#[derive(Clone, Debug)]
pub struct TokenClient {
    http: reqwest::Client,
    /// `Origin` sent to Microsoft (`http://127.0.0.1:PORT/`).
    origin: Option<HeaderValue>,
}

impl TokenClient {
    /// A client sending `origin` as `Origin` on Microsoft calls.
    pub fn new(http: reqwest::Client, origin: &str) -> TokenClient {
        TokenClient {
            http,
            origin: HeaderValue::from_str(origin).ok(),
        }
    }

    /// The HTTP client for `spec`'s requests. The built-in Microsoft
    /// registrations are single-page-app type: Microsoft redeems their
    /// codes and refresh tokens only cross-origin.
    fn http(&self, spec: &AccountSpec) -> OAuthHttp {
        let origin = match spec.kind {
            CloudKind::Office365 => self.origin.clone(),
            CloudKind::Gmail => None,
        };
        OAuthHttp::new(self.http.clone(), origin)
    }

    /// Redeem an authorization code. Microsoft is told the scopes of the
    /// resource the code is redeemed for (`oauth2` sends no `scope` here).
    pub async fn redeem_code(
        &self,
        spec: &AccountSpec,
        ep: &Endpoints,
        code: &Secret,
        redirect_uri: &RedirectUrl,
        verifier: PkceCodeVerifier,
    ) -> Result<Grant, OAuthError> {
        let client = spec.client(ep)?;
        let scopes = spec.scopes(spec.first_audiences()[0]).unwrap_or_default();
        let mut req = client
            .exchange_code(AuthorizationCode::new(code.expose().to_string()))
            .set_pkce_verifier(verifier)
            .set_redirect_uri(Cow::Borrowed(redirect_uri));
        if spec.kind == CloudKind::Office365 {
            req = req.add_extra_param("scope", scopes.join(" "));
        }
        let http = self.http(spec);
        let r = req.request_async(&http).await;
        r.map(Grant::from)
            .map_err(|e| OAuthError::from_oauth2(&spec.token_url(ep), &http, e))
    }

    /// Exchange a refresh token for an access token for `aud`. Microsoft
    /// issues one token per resource, so each audience is its own request
    /// with the same (newest) refresh token; Google's one token covers all.
    pub async fn refresh(
        &self,
        spec: &AccountSpec,
        ep: &Endpoints,
        rt: &Secret,
        aud: Audience,
    ) -> Result<Grant, OAuthError> {
        let client = spec.client(ep)?;
        let rt = RefreshToken::new(rt.expose().to_string());
        let mut req = client.exchange_refresh_token(&rt);
        if spec.kind == CloudKind::Office365 {
            req = req.add_scopes(spec.scopes(aud).unwrap_or_default().into_iter().map(scope));
        }
        let http = self.http(spec);
        let r = req.request_async(&http).await;
        r.map(Grant::from)
            .map_err(|e| OAuthError::from_oauth2(&spec.token_url(ep), &http, e))
    }

    /// Start a device authorization (Microsoft).
    pub async fn device_authorization(
        &self,
        spec: &AccountSpec,
        ep: &Endpoints,
    ) -> Result<DeviceAuthorization, OAuthError> {
        let client = spec.client(ep)?;
        let req = client
            .exchange_device_code()
            .add_scopes(spec.consent_scopes().into_iter().map(scope));
        let http = self.http(spec);
        let r = req.request_async(&http).await;
        r.map_err(|e| OAuthError::from_oauth2(&spec.devicecode_url(ep), &http, e))
    }

    /// Poll for a device grant until it comes, the user refuses, or the
    /// code expires (`expired_token`) — at most `within` on `clock`.
    /// `oauth2` runs the loop: it sleeps on `clock` after each poll, keeps
    /// the interval on `authorization_pending`, adds 5 s on `slow_down`
    /// and backs off (to 10 s) when a poll gets no answer at all. An
    /// answer that is no OAuth error (a 5xx) ends the loop with a
    /// [`OAuthError::Transport`], for the caller to retry.
    pub async fn poll_device(
        &self,
        spec: &AccountSpec,
        ep: &Endpoints,
        da: &DeviceAuthorization,
        clock: &Arc<dyn Clock>,
        within: Duration,
    ) -> Result<Grant, OAuthError> {
        let client = spec.client(ep)?;
        let now = clock.clone();
        let req = client
            .exchange_device_access_token(da)
            .set_time_fn(move || DateTime::<Utc>::from(now.now()));
        let http = self.http(spec);
        let r = req
            .request_async(&http, |d| clock.sleep(d), Some(within))
            .await;
        r.map(Grant::from)
            .map_err(|e| OAuthError::from_oauth2(&spec.token_url(ep), &http, e))
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
        let redirect = RedirectUrl::new("http://127.0.0.1:8080/oauth2/gmail".into()).unwrap();
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256_len(96);
        assert_eq!(verifier.secret().len(), 128);
        let (u, state) = g.authorize_url(&ep, &redirect, challenge.clone()).unwrap();
        assert!(u.starts_with("http://127.0.0.1:9/accounts.google.com/o/oauth2/v2/auth?"));
        for p in [
            "response_type=code",
            &format!("client_id={}", registration::GMAIL_CLIENT_ID),
            &format!("state={}", state.secret()),
            &format!("code_challenge={}", challenge.as_str()),
            "code_challenge_method=S256",
            "access_type=offline",
            "prompt=consent",
            "login_hint=u%40gmail.com",
            "scope=https%3A%2F%2Fwww.googleapis.com%2Fauth%2Fgmail.modify&",
            "redirect_uri=http%3A%2F%2F127.0.0.1%3A8080%2Foauth2%2Fgmail",
        ] {
            assert!(u.contains(p), "{u} lacks {p}");
        }
        assert!(!u.contains("client_secret"), "{u}");
        assert_eq!(state.secret().len(), 32, "24 random bytes, base64url");
        let mut m = AccountSpec::office365(Some("a@nvidia.com"));
        m.smtp = true;
        let redirect = RedirectUrl::new("http://127.0.0.1:8080/oauth2/msal".into()).unwrap();
        let (u, _) = m
            .authorize_url(&Endpoints::real(), &redirect, challenge)
            .unwrap();
        assert!(u.starts_with(
            "https://login.microsoftonline.com/43083d15-7273-40c1-b7db-39efd9ccc17a/oauth2/v2.0/authorize?"
        ));
        // Both resources' scopes, consented to at once.
        assert!(
            u.contains("SMTP.Send+offline_access+https%3A%2F%2Fgraph.microsoft.com"),
            "{u}"
        );
        assert!(!u.contains("access_type") && !u.contains("prompt"), "{u}");
    }

    /// A token endpoint per tenant, each with one canned answer; answers
    /// 400 to any request without the `Origin` header.
    async fn canned_endpoints() -> Endpoints {
        use warp::Filter;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let route = warp::path!("login.microsoftonline.com" / String / "oauth2" / "v2.0" / "token")
            .and(warp::header::optional::<String>("origin"))
            .and(warp::body::form::<Vec<(String, String)>>())
            .map(|tenant: String, origin: Option<String>, form: Vec<(String, String)>| {
                let has = |k: &str, v: &str| form.iter().any(|(a, b)| a == k && b == v);
                let (status, ctype, body) = match tenant.as_str() {
                    _ if origin.as_deref() != Some("http://127.0.0.1:8080/") => {
                        (400, "application/json", r#"{"error":"invalid_request"}"#)
                    }
                    "ok" if has("grant_type", "refresh_token")
                        && has("refresh_token", "rt-1")
                        && has("scope", "https://outlook.office.com/mail.read offline_access") =>
                    {
                        (
                            200,
                            "application/json; charset=utf-8",
                            r#"{"token_type":"Bearer","access_token":"at-2","refresh_token":"rt-2","expires_in":3599}"#,
                        )
                    }
                    "revoked" => (
                        400,
                        "application/json",
                        "{\"error\":\"invalid_grant\",\"error_description\":\"AADSTS50173: revoked.\\r\\nTrace ID: x\"}",
                    ),
                    "busy" => (503, "text/html", "<html>busy</html>"),
                    "bad" => (
                        200,
                        "application/json",
                        r#"{"token_type":"Bearer","access_token":"at-secret","expires_in":"at-secret"}"#,
                    ),
                    "ok200err" => (200, "application/json", r#"{"error":"interaction_required"}"#),
                    _ => (400, "application/json", r#"{"error":"unexpected_request"}"#),
                };
                warp::http::Response::builder()
                    .status(status)
                    .header("content-type", ctype)
                    .body(body.to_string())
                    .unwrap()
            });
        tokio::spawn(warp::serve(route).incoming(listener).run());
        Endpoints::emulated(&format!("http://{addr}"))
    }

    #[tokio::test]
    async fn refresh_through_oauth2_keeps_our_error_classes() {
        let ep = canned_endpoints().await;
        let client = TokenClient::new(reqwest::Client::new(), "http://127.0.0.1:8080/");
        let rt = Secret::new("rt-1");
        let refresh = |tenant: &str| {
            let mut spec = AccountSpec::office365(Some("a@example.com"));
            spec.tenant = tenant.to_string();
            let (client, ep, rt) = (&client, &ep, &rt);
            async move { client.refresh(&spec, ep, rt, Audience::Outlook).await }
        };
        let g = refresh("ok").await.unwrap();
        assert_eq!(g.access.secret(), "at-2");
        assert_eq!(g.refresh.unwrap().expose(), "rt-2");
        assert_eq!(g.expires_in, Some(Duration::from_secs(3599)));

        let e = refresh("revoked").await.unwrap_err();
        assert!(e.needs_login(), "{e}");
        assert_eq!(e.reason(), "invalid_grant: AADSTS50173: revoked.");
        assert!(e.to_string().contains("HTTP 400"), "{e}");

        let e = refresh("busy").await.unwrap_err();
        assert!(!e.needs_login() && e.code().is_none(), "{e}");
        assert!(e.to_string().ends_with("HTTP 503"), "{e}");

        // A malformed grant: transient, and no value is quoted.
        let e = refresh("bad").await.unwrap_err();
        assert!(!e.needs_login() && e.code().is_none(), "{e}");
        assert!(!e.to_string().contains("at-secret"), "{e}");

        let e = refresh("ok200err").await.unwrap_err();
        assert!(e.needs_login(), "{e}");

        // Without the Origin header the endpoint refuses.
        let plain = TokenClient::new(reqwest::Client::new(), "http://elsewhere/");
        let mut spec = AccountSpec::office365(Some("a@example.com"));
        spec.tenant = "ok".into();
        let e = plain.refresh(&spec, &ep, &rt, Audience::Outlook).await;
        assert_eq!(e.unwrap_err().code(), Some("invalid_request"));
    }

    #[tokio::test]
    async fn no_answer_is_transient() {
        let addr = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let ep = Endpoints::emulated(&format!("http://{addr}"));
        let client = TokenClient::new(reqwest::Client::new(), "http://127.0.0.1:8080/");
        let spec = AccountSpec::office365(Some("a@example.com"));
        let e = client
            .refresh(&spec, &ep, &Secret::new("rt"), Audience::Outlook)
            .await
            .unwrap_err();
        assert!(!e.needs_login() && e.code().is_none(), "{e}");
    }
}
