//! Authorization codes, access tokens, refresh tokens, device codes and client
//! registrations of both identity providers. Tokens are random strings mapped here
//! to (user, audience, scopes, expiry); Microsoft access tokens are additionally
//! shaped like unsigned JWTs so a client that peeks at `exp` sees a sane value.

use std::collections::HashMap;

use base64::Engine;
use serde_json::json;

use crate::state::Rng;

/// Which identity provider issued a grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    /// Entra ID (login.microsoftonline.com).
    Microsoft,
    /// Google (oauth2.googleapis.com).
    Google,
}

/// The resource an access token works for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Audience {
    /// `https://graph.microsoft.com`.
    Graph,
    /// `https://outlook.office.com` (IMAP/SMTP/EWS tokens; useless against Graph).
    Outlook,
    /// Google APIs.
    Google,
}

impl Audience {
    /// Parses the `/_control/token` audience name.
    pub fn parse(s: &str) -> Option<Audience> {
        match s {
            "graph" | "https://graph.microsoft.com" => Some(Audience::Graph),
            "outlook" | "https://outlook.office.com" => Some(Audience::Outlook),
            "gmail" | "google" => Some(Audience::Google),
            _ => None,
        }
    }
}

/// How a Microsoft client id is registered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientKind {
    /// Single-page application: token requests must carry `Origin`; RTs live 24 h.
    Spa,
    /// Public native client: token requests must not carry `Origin`.
    Native,
    /// Confidential web app with a secret.
    Confidential(String),
}

/// The built-in Office365 client ids of the Python program (registered as SPA).
pub const MS_BUILTIN_CLIENTS: [&str; 2] = [
    "122f4826-adf9-465d-8e84-e9d00bc9f234",
    "472bb794-a546-4311-96f9-76bc79989214",
];

/// The built-in Gmail desktop client id.
pub const GOOGLE_BUILTIN_CLIENT: &str =
    "14979213351-bik90v3b8b9f22160ura3oah71u3l113.apps.googleusercontent.com";
/// Its (not confidential) secret.
pub const GOOGLE_BUILTIN_SECRET: &str = "cLICGg-LVQuMAPTh3VxTC42p";

/// An issued access token.
#[derive(Clone, Debug)]
pub struct AccessToken {
    /// Lower-cased user.
    pub user: String,
    /// Issuer.
    pub provider: Provider,
    /// Resource it is good for.
    pub audience: Audience,
    /// Granted scopes, full URIs (Graph ones prefixed).
    pub scopes: Vec<String>,
    /// Expiry, epoch ms.
    pub expires_ms: i64,
    /// Client that obtained it (quota key).
    pub client_id: String,
}

impl AccessToken {
    /// True when any granted scope ends with one of `perms` (case-insensitive).
    pub fn has_any(&self, perms: &[&str]) -> bool {
        self.scopes.iter().any(|s| {
            perms.iter().any(|p| {
                s.eq_ignore_ascii_case(p)
                    || s.to_ascii_lowercase()
                        .ends_with(&format!("/{}", p.to_ascii_lowercase()))
            })
        })
    }
}

/// An issued refresh token.
#[derive(Clone, Debug)]
pub struct RefreshToken {
    /// Lower-cased user.
    pub user: String,
    /// Issuer.
    pub provider: Provider,
    /// Client it is bound to.
    pub client_id: String,
    /// Everything consented at authorize (full URIs), any resource.
    pub consented: Vec<String>,
    /// Hard deadline of the grant family (SPA 24 h, Google testing 7 days).
    pub deadline_ms: Option<i64>,
    /// Issue time.
    pub created_ms: i64,
    /// Already exchanged (rotation).
    pub used: bool,
    /// Revoked through `/_control/revoke` or by the per-user cap.
    pub revoked: bool,
    /// Issued through a SPA redirect: redeeming it needs an `Origin` header.
    pub spa: bool,
    /// AADSTS code a revoked Microsoft token answers with (50173 by default;
    /// 700082 inactivity, 50076 MFA required, 70043 sign-in frequency).
    pub fail_code: Option<u32>,
}

/// A pending or redeemed authorization code.
#[derive(Clone, Debug)]
pub struct AuthCode {
    /// Issuer.
    pub provider: Provider,
    /// Who approved.
    pub user: String,
    /// Client that asked.
    pub client_id: String,
    /// Redirect URI given at authorize (must be repeated verbatim).
    pub redirect_uri: String,
    /// Scopes requested at authorize.
    pub scopes: Vec<String>,
    /// PKCE challenge and method (`S256` or `plain`).
    pub challenge: Option<(String, String)>,
    /// Expiry, epoch ms (10 minutes).
    pub expires_ms: i64,
    /// Redeemed once already.
    pub used: bool,
    /// Google `access_type=offline`.
    pub offline: bool,
}

/// A device-flow grant.
#[derive(Clone, Debug)]
pub struct DeviceCode {
    /// Issuer.
    pub provider: Provider,
    /// Client that asked.
    pub client_id: String,
    /// Requested scopes.
    pub scopes: Vec<String>,
    /// Code the person types.
    pub user_code: String,
    /// Expiry, epoch ms.
    pub expires_ms: i64,
    /// Poll interval announced, seconds.
    pub interval: u64,
    /// Last poll, epoch ms.
    pub last_poll_ms: Option<i64>,
    /// User that approved.
    pub approved_user: Option<String>,
    /// Declined by the user.
    pub denied: bool,
    /// Tokens already handed out.
    pub redeemed: bool,
}

/// An authorize request waiting on the login page.
#[derive(Clone, Debug)]
pub struct PendingAuth {
    /// Issuer.
    pub provider: Provider,
    /// Query parameters of the authorize request.
    pub params: Vec<(String, String)>,
}

/// All grants and registrations.
#[derive(Default)]
pub struct AuthState {
    /// Codes by value.
    pub codes: HashMap<String, AuthCode>,
    /// Access tokens by value.
    pub access: HashMap<String, AccessToken>,
    /// Refresh tokens by value.
    pub refresh: HashMap<String, RefreshToken>,
    /// Device grants by device_code.
    pub devices: HashMap<String, DeviceCode>,
    /// Login pages waiting for a click, by id.
    pub pending: HashMap<String, PendingAuth>,
    /// Microsoft registrations set through `/_control/client`.
    pub ms_clients: HashMap<String, ClientKind>,
    /// Google client secrets set through `/_control/client`.
    pub google_clients: HashMap<String, String>,
}

impl AuthState {
    /// How a Microsoft client is registered (unknown ids default to SPA, like the built-in ones).
    pub fn ms_client(&self, id: &str) -> ClientKind {
        self.ms_clients.get(id).cloned().unwrap_or(ClientKind::Spa)
    }

    /// Issues an access token.
    #[allow(clippy::too_many_arguments)]
    pub fn issue_access(
        &mut self,
        rng: &mut Rng,
        user: &str,
        provider: Provider,
        audience: Audience,
        scopes: Vec<String>,
        now_ms: i64,
        lifetime_ms: i64,
        client_id: &str,
    ) -> String {
        let token = match provider {
            Provider::Microsoft => {
                let aud = match audience {
                    Audience::Outlook => "https://outlook.office.com",
                    _ => "https://graph.microsoft.com",
                };
                let claims = json!({"aud": aud, "upn": user, "appid": client_id,
                    "iat": now_ms / 1000, "exp": (now_ms + lifetime_ms) / 1000,
                    "scp": scopes.iter().map(|s| short_scope(s)).collect::<Vec<_>>().join(" "),
                    "uti": rng.token(12)});
                jwt(&claims, rng)
            }
            Provider::Google => format!("ya29.a0{}", rng.token(96)),
        };
        self.access.insert(
            token.clone(),
            AccessToken {
                user: user.to_ascii_lowercase(),
                provider,
                audience,
                scopes,
                expires_ms: now_ms + lifetime_ms,
                client_id: client_id.to_string(),
            },
        );
        token
    }

    /// Issues a refresh token.
    pub fn issue_refresh(&mut self, rng: &mut Rng, rt: RefreshToken) -> String {
        let token = match rt.provider {
            Provider::Microsoft => format!("0.AXoA{}", rng.token(180)),
            Provider::Google => format!("1//0{}", rng.token(75)),
        };
        self.refresh.insert(token.clone(), rt);
        token
    }

    /// Revokes every refresh token of a user (answering with `fail_code` on Microsoft);
    /// returns how many were live.
    pub fn revoke_user(&mut self, user: &str, fail_code: Option<u32>) -> usize {
        let user = user.to_ascii_lowercase();
        let mut n = 0;
        for rt in self.refresh.values_mut() {
            if rt.user == user && !rt.revoked {
                if !rt.used {
                    n += 1;
                }
                rt.revoked = true;
                rt.fail_code = fail_code;
            }
        }
        n
    }
}

/// Graph scopes are echoed without the resource prefix; others keep it.
pub fn short_scope(s: &str) -> String {
    s.strip_prefix("https://graph.microsoft.com/")
        .unwrap_or(s)
        .to_string()
}

/// An unsigned JWT-shaped token with the given claims.
pub fn jwt(claims: &serde_json::Value, rng: &mut Rng) -> String {
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let head = e.encode(br#"{"typ":"JWT","alg":"RS256","kid":"fake-cloud"}"#);
    let body = e.encode(serde_json::to_vec(claims).unwrap_or_default());
    format!("{head}.{body}.{}", rng.token(64))
}

/// PKCE check: `S256` compares base64url(sha256(verifier)), `plain` compares directly.
pub fn pkce_ok(challenge: &str, method: &str, verifier: &str) -> bool {
    use sha2::Digest;
    if method.eq_ignore_ascii_case("S256") {
        let digest = sha2::Sha256::digest(verifier.as_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest) == challenge
    } else {
        challenge == verifier
    }
}
