//! Microsoft identity platform v2.0: authorize (login page or auto-approve), token
//! (authorization_code with PKCE, refresh_token with rotation and per-resource
//! audiences, device_code) and devicecode, with the §2.2 error envelope.
//!
//! Origin handling models the registration types: a `spa` client (the built-in
//! client ids, and by default any unknown id, since the product always sends
//! `Origin`) must redeem codes and its SPA refresh tokens with an `Origin` header
//! (else AADSTS9002327); a `native` client (set through `/_control/client`) must not
//! send one (AADSTS9002326). SPA refresh tokens have a fixed 24 h lifetime (AADSTS700084).

use std::sync::Arc;

use serde_json::json;

use crate::errors::aad;
use crate::http::{Req, Resp, enc, form_get};
use crate::state::{App, State};
use crate::tokens::{
    Audience, AuthCode, ClientKind, DeviceCode, MS_BUILTIN_CLIENTS, PendingAuth, Provider,
    RefreshToken, jwt, pkce_ok, short_scope,
};

const OIDC: &[&str] = &["openid", "profile", "email", "offline_access"];

/// Routes login.microsoftonline.com and the device login page.
pub fn handle(app: &Arc<App>, r: Req) -> Resp {
    let segs: Vec<&str> = r.segs.iter().map(String::as_str).collect();
    let method = r.method.as_str();
    match (method, segs.as_slice()) {
        (
            "GET",
            [
                "login.microsoftonline.com",
                tenant,
                "oauth2",
                "v2.0",
                "authorize",
            ],
        ) => authorize(app, &r.query, tenant),
        (
            "POST",
            [
                "login.microsoftonline.com",
                tenant,
                "oauth2",
                "v2.0",
                "authorize",
            ],
        ) => login_submit(app, &r.form(), tenant),
        ("POST", ["login.microsoftonline.com", _, "oauth2", "v2.0", "token"]) => token(app, &r),
        (
            "POST",
            [
                "login.microsoftonline.com",
                _,
                "oauth2",
                "v2.0",
                "devicecode",
            ],
        ) => devicecode(app, &r.form()),
        ("GET", ["microsoft.com", "devicelogin"]) => device_page(app, None),
        ("POST", ["microsoft.com", "devicelogin"]) => {
            let f = r.form();
            let code = form_get(&f, "user_code").unwrap_or("");
            let user = form_get(&f, "user").unwrap_or("");
            let approve = form_get(&f, "action") != Some("deny");
            let msg = match approve_device(app, code, user, approve) {
                Ok(()) if approve => "Signed in. You can close this window.".to_string(),
                Ok(()) => "Sign-in declined.".to_string(),
                Err(e) => e,
            };
            device_page(app, Some(&msg))
        }
        _ => aad(
            404,
            "invalid_request",
            900561,
            "The endpoint only accepts POST or GET requests at the documented paths.",
        ),
    }
}

/// The resource of a Microsoft scope, or None for OIDC scopes; Err for unknown resources.
fn resource_of(scope: &str) -> Result<Option<(Audience, String)>, String> {
    if OIDC.iter().any(|o| o.eq_ignore_ascii_case(scope)) {
        return Ok(None);
    }
    let lower = scope.to_ascii_lowercase();
    if lower.starts_with("https://graph.microsoft.com/") {
        return Ok(Some((Audience::Graph, scope.to_string())));
    }
    if lower.starts_with("https://outlook.office.com/")
        || lower.starts_with("https://outlook.office365.com/")
    {
        return Ok(Some((Audience::Outlook, scope.to_string())));
    }
    if !scope.contains("://") {
        return Ok(Some((
            Audience::Graph,
            format!("https://graph.microsoft.com/{scope}"),
        )));
    }
    Err(scope.to_string())
}

fn split_scopes(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}

fn has(scopes: &[String], s: &str) -> bool {
    scopes.iter().any(|x| x.eq_ignore_ascii_case(s))
}

fn perm_of(full: &str) -> String {
    full.rsplit('/').next().unwrap_or(full).to_ascii_lowercase()
}

fn consented(consent: &[String], aud: Audience, full: &str) -> bool {
    let p = perm_of(full);
    consent.iter().any(|c| match resource_of(c) {
        Ok(Some((a, cf))) => a == aud && (perm_of(&cf) == p || p == ".default"),
        _ => false,
    })
}

fn redirect_ok(client_id: &str, uri: &str) -> bool {
    if uri == "https://login.microsoftonline.com/common/oauth2/nativeclient" {
        return true;
    }
    let Some((scheme, rest)) = uri.split_once("://") else {
        return false;
    };
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let path = path.split(['?', '#']).next().unwrap_or("/");
    let host = hostport.split(':').next().unwrap_or("");
    let loopback = matches!(host, "127.0.0.1" | "localhost");
    if scheme == "http" && !loopback {
        return false;
    }
    if scheme != "http" && scheme != "https" {
        return false;
    }
    // The built-in registrations list the Python program's loopback redirect; the
    // port is ignored for loopback URIs (RFC 8252), the path is not.
    if MS_BUILTIN_CLIENTS.contains(&client_id) {
        return loopback && path == "/oauth2/msal";
    }
    true
}

fn error_page(code: u32, text: &str) -> Resp {
    Resp::html(
        400,
        format!(
            "<!doctype html><html><head><title>Sign in to your account</title></head><body>\
             <h1>Sorry, but we're having trouble signing you in.</h1>\
             <p id=\"error\">AADSTS{code}: {}</p></body></html>",
            html_escape(text)
        ),
    )
}

/// Escapes text for HTML.
pub fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn redirect_with(params: &[(String, String)], pairs: &[(&str, String)]) -> Resp {
    let p = |k: &str| form_get(params, k).unwrap_or("").to_string();
    let uri = p("redirect_uri");
    let mut pairs: Vec<(&str, String)> = pairs.to_vec();
    if let Some(st) = form_get(params, "state") {
        pairs.push(("state", st.to_string()));
    }
    let mode = p("response_mode");
    if mode == "form_post" {
        let inputs: String = pairs
            .iter()
            .map(|(k, v)| {
                format!(
                    "<input type=\"hidden\" name=\"{k}\" value=\"{}\">",
                    html_escape(v)
                )
            })
            .collect();
        return Resp::html(
            200,
            format!(
                "<!doctype html><html><body onload=\"document.forms[0].submit()\">\
                 <form method=\"post\" action=\"{}\">{inputs}<noscript><button>Continue</button></noscript></form></body></html>",
                html_escape(&uri)
            ),
        );
    }
    let q: String = pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", enc(v)))
        .collect::<Vec<_>>()
        .join("&");
    let sep = if mode == "fragment" {
        "#"
    } else if uri.contains('?') {
        "&"
    } else {
        "?"
    };
    Resp::redirect(&format!("{uri}{sep}{q}"))
}

fn authorize(app: &Arc<App>, params: &[(String, String)], tenant: &str) -> Resp {
    let p = |k: &str| form_get(params, k);
    let Some(client_id) = p("client_id") else {
        return error_page(
            900144,
            "The request body must contain the following parameter: 'client_id'.",
        );
    };
    let Some(redirect) = p("redirect_uri") else {
        return error_page(
            900144,
            "The request body must contain the following parameter: 'redirect_uri'.",
        );
    };
    if !redirect_ok(client_id, redirect) {
        return error_page(
            50011,
            &format!(
                "The redirect URI '{redirect}' specified in the request does not match the redirect URIs configured for the application '{client_id}'."
            ),
        );
    }
    let err = |e: &str, code: u32, text: &str| {
        redirect_with(
            params,
            &[
                ("error", e.to_string()),
                ("error_description", format!("AADSTS{code}: {text}")),
            ],
        )
    };
    if p("response_type") != Some("code") {
        return err(
            "unsupported_response_type",
            700054,
            "response_type 'code' is required.",
        );
    }
    let Some(scope) = p("scope") else {
        return err(
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'scope'.",
        );
    };
    for s in split_scopes(scope) {
        if let Err(bad) = resource_of(&s) {
            return err(
                "invalid_resource",
                500011,
                &format!("The resource principal named {bad} was not found in the tenant."),
            );
        }
    }
    let method = p("code_challenge_method").unwrap_or("plain");
    if p("code_challenge").is_some() && method != "S256" && method != "plain" {
        return err(
            "invalid_request",
            50140,
            "code_challenge_method must be S256 or plain.",
        );
    }
    let kind = app.lock().auth.ms_client(client_id);
    if kind == ClientKind::Spa && p("code_challenge").is_none() {
        return err(
            "invalid_request",
            9002325,
            "Proof Key for Code Exchange is required for cross-origin authorization code redemption.",
        );
    }
    if p("prompt") == Some("none") {
        let user = p("login_hint")
            .unwrap_or(&app.opts.default_user)
            .to_ascii_lowercase();
        if !app.lock().graph.contains_key(&user) {
            return err(
                "login_required",
                50058,
                "A silent sign-in request was sent but no user is signed in.",
            );
        }
        return approve(app, params, &user);
    }
    if app.opts.auto_approve {
        let user = p("login_hint")
            .unwrap_or(&app.opts.default_user)
            .to_string();
        return approve(app, params, &user);
    }
    let id = {
        let mut st = app.lock();
        let id = st.rng.token(16);
        st.auth.pending.insert(
            id.clone(),
            PendingAuth {
                provider: Provider::Microsoft,
                params: params.to_vec(),
            },
        );
        id
    };
    let hint = p("login_hint").unwrap_or("");
    Resp::html(
        200,
        format!(
            "<!doctype html><html><head><title>Sign in to your account</title></head><body>\
             <h1>Emulated Microsoft sign-in</h1>\
             <p>Application <code>{}</code> asks for: <code>{}</code></p>\
             <form method=\"post\" action=\"/login.microsoftonline.com/{}/oauth2/v2.0/authorize\">\
             <input type=\"hidden\" name=\"pending\" value=\"{id}\">\
             <label>Account <input id=\"user\" name=\"user\" value=\"{}\"></label>\
             <button id=\"approve\" type=\"submit\" name=\"action\" value=\"approve\">Approve</button>\
             <button id=\"deny\" type=\"submit\" name=\"action\" value=\"deny\">Deny</button>\
             </form></body></html>",
            html_escape(client_id),
            html_escape(scope),
            html_escape(tenant),
            html_escape(hint)
        ),
    )
}

fn login_submit(app: &Arc<App>, form: &[(String, String)], _tenant: &str) -> Resp {
    let pending = form_get(form, "pending").unwrap_or("");
    let Some(pa) = app.lock().auth.pending.remove(pending) else {
        return error_page(
            90014,
            "The sign-in request is unknown or was already completed.",
        );
    };
    if form_get(form, "action") == Some("deny") {
        return redirect_with(
            &pa.params,
            &[
                ("error", "access_denied".into()),
                (
                    "error_description",
                    "AADSTS65004: User declined to consent to access the app.".into(),
                ),
            ],
        );
    }
    let user = form_get(form, "user")
        .filter(|u| !u.trim().is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| app.opts.default_user.clone());
    approve(app, &pa.params, user.trim())
}

fn approve(app: &Arc<App>, params: &[(String, String)], user: &str) -> Resp {
    let p = |k: &str| form_get(params, k).unwrap_or("").to_string();
    let now = app.now_ms();
    let code = {
        let mut st = app.lock();
        st.graph_mailbox(user);
        let code = format!("M.C5{}", st.rng.token(90));
        let challenge = form_get(params, "code_challenge").map(|c| {
            (
                c.to_string(),
                form_get(params, "code_challenge_method")
                    .unwrap_or("plain")
                    .to_string(),
            )
        });
        st.auth.codes.insert(
            code.clone(),
            AuthCode {
                provider: Provider::Microsoft,
                user: user.to_ascii_lowercase(),
                client_id: p("client_id"),
                redirect_uri: p("redirect_uri"),
                scopes: split_scopes(&p("scope")),
                challenge,
                expires_ms: now + 10 * 60 * 1000,
                used: false,
                offline: false,
            },
        );
        code
    };
    redirect_with(params, &[("code", code)])
}

fn missing(name: &str) -> Resp {
    aad(
        400,
        "invalid_request",
        900144,
        &format!("The request body must contain the following parameter: '{name}'."),
    )
}

struct Grant {
    user: String,
    client_id: String,
    consent: Vec<String>,
    requested: Vec<String>,
    offline: bool,
    spa: bool,
    deadline: Option<i64>,
}

fn issue(app: &Arc<App>, st: &mut State, g: Grant) -> Resp {
    let now = app.now_ms();
    // The token is for the first resource scope's resource (§2.2); scopes of other
    // resources in the request are dropped from this token.
    let mut aud = None;
    let mut granted = Vec::new();
    for s in &g.requested {
        match resource_of(s) {
            Ok(Some((a, full))) => {
                if aud.is_none() {
                    aud = Some(a);
                }
                if Some(a) == aud {
                    if !consented(&g.consent, a, &full) {
                        return aad(
                            400,
                            "invalid_grant",
                            65001,
                            &format!(
                                "The user or administrator has not consented to use the application with ID '{}'. Send an interactive authorization request for this user and resource.",
                                g.client_id
                            ),
                        );
                    }
                    if perm_of(&full) == ".default" {
                        for c in &g.consent {
                            if let Ok(Some((ca, cf))) = resource_of(c)
                                && ca == a
                                && !granted.contains(&cf)
                            {
                                granted.push(cf);
                            }
                        }
                    } else if !granted.contains(&full) {
                        granted.push(full);
                    }
                }
            }
            Ok(None) => {}
            Err(bad) => {
                return aad(
                    400,
                    "invalid_resource",
                    500011,
                    &format!("The resource principal named {bad} was not found in the tenant."),
                );
            }
        }
    }
    let aud = aud.unwrap_or(Audience::Graph);
    for o in ["openid", "profile", "email"] {
        if has(&g.requested, o) {
            granted.push(o.to_string());
        }
    }
    let lifetime = app.opts.token_lifetime.as_millis() as i64;
    let rng = &mut st.rng;
    let at = st.auth.issue_access(
        rng,
        &g.user,
        Provider::Microsoft,
        aud,
        granted.clone(),
        now,
        lifetime,
        &g.client_id,
    );
    let secs = lifetime / 1000;
    let mut out = json!({"token_type": "Bearer",
        "scope": granted.iter().map(|s| short_scope(s)).collect::<Vec<_>>().join(" "),
        "expires_in": secs, "ext_expires_in": secs, "access_token": at});
    if g.offline {
        let rt = st.auth.issue_refresh(
            &mut st.rng,
            RefreshToken {
                user: g.user.clone(),
                provider: Provider::Microsoft,
                client_id: g.client_id.clone(),
                consented: g.consent.clone(),
                deadline_ms: g.deadline,
                created_ms: now,
                used: false,
                revoked: false,
                spa: g.spa,
                fail_code: None,
            },
        );
        out["refresh_token"] = json!(rt);
    }
    if has(&g.requested, "openid") {
        let claims = json!({"aud": g.client_id, "iss": "https://login.microsoftonline.com/9188040d-6c67-4c5b-b112-36a304b66dad/v2.0",
            "iat": now / 1000, "nbf": now / 1000, "exp": now / 1000 + 3600,
            "name": g.user.split('@').next().unwrap_or(""), "preferred_username": g.user, "email": g.user,
            "oid": crate::state::guid(), "sub": st.rng.token(24), "tid": "9188040d-6c67-4c5b-b112-36a304b66dad", "ver": "2.0"});
        out["id_token"] = json!(jwt(&claims, &mut st.rng));
    }
    Resp::json(200, &out).with_header("Cache-Control", "no-store, no-cache")
}

fn token(app: &Arc<App>, r: &Req) -> Resp {
    let f = r.form();
    let g = |k: &str| form_get(&f, k);
    let origin = r.header("origin").is_some();
    let Some(grant_type) = g("grant_type") else {
        return missing("grant_type");
    };
    let Some(client_id) = g("client_id") else {
        return missing("client_id");
    };
    let now = app.now_ms();
    let mut st = app.lock();
    let kind = st.auth.ms_client(client_id);
    let secret = g("client_secret").or(g("client_assertion"));
    match (&kind, secret) {
        (ClientKind::Confidential(s), Some(given)) if s != given => {
            return aad(
                401,
                "invalid_client",
                7000215,
                "Invalid client secret provided.",
            );
        }
        (ClientKind::Confidential(_), None) => {
            return aad(
                401,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
            );
        }
        (ClientKind::Spa | ClientKind::Native, Some(_)) => {
            return aad(
                401,
                "invalid_client",
                700025,
                "Client is public so neither 'client_assertion' nor 'client_secret' should be presented.",
            );
        }
        _ => {}
    }
    let spa_err = || {
        aad(
            400,
            "invalid_request",
            9002327,
            "Tokens issued for the 'Single-Page Application' client-type may only be redeemed via cross-origin requests.",
        )
    };
    let native_err = || {
        aad(
            400,
            "invalid_request",
            9002326,
            "Cross-origin token redemption is permitted only for the 'Single-Page Application' client-type.",
        )
    };
    match grant_type {
        "authorization_code" => {
            let Some(code) = g("code") else {
                return missing("code");
            };
            if kind == ClientKind::Spa && !origin {
                return spa_err();
            }
            if kind != ClientKind::Spa && origin {
                return native_err();
            }
            let Some(scope) = g("scope") else {
                return missing("scope");
            };
            let Some(c) = st.auth.codes.get_mut(code) else {
                return aad(
                    400,
                    "invalid_grant",
                    9002313,
                    "Invalid request. Request is malformed or invalid.",
                );
            };
            if c.provider != Provider::Microsoft {
                return aad(
                    400,
                    "invalid_grant",
                    9002313,
                    "Invalid request. Request is malformed or invalid.",
                );
            }
            if c.used {
                return aad(
                    400,
                    "invalid_grant",
                    54005,
                    "OAuth2 Authorization code was already redeemed, please retry with a new valid code or use an existing refresh token.",
                );
            }
            c.used = true;
            if c.expires_ms < now {
                return aad(
                    400,
                    "invalid_grant",
                    70008,
                    "The provided authorization code or refresh token has expired due to inactivity. Send a new interactive authorization request for this user and resource.",
                );
            }
            if c.client_id != client_id {
                return aad(
                    400,
                    "invalid_grant",
                    70000,
                    "Provided grant is invalid or malformed: the code was issued to another client.",
                );
            }
            if g("redirect_uri") != Some(c.redirect_uri.as_str()) {
                return aad(
                    400,
                    "invalid_grant",
                    50011,
                    "The redirect URI specified in the request does not match the one used at authorize.",
                );
            }
            if let Some((challenge, method)) = &c.challenge {
                let Some(verifier) = g("code_verifier") else {
                    return missing("code_verifier");
                };
                if !pkce_ok(challenge, method, verifier) {
                    return aad(
                        400,
                        "invalid_grant",
                        501481,
                        "The Code_Verifier does not match the code_challenge supplied in the authorization request.",
                    );
                }
            }
            let requested = split_scopes(scope);
            // A code redemption names one resource; more is AADSTS28000.
            let resources: std::collections::BTreeSet<String> = requested
                .iter()
                .filter_map(|s| resource_of(s).ok().flatten())
                .map(|(a, _)| format!("{a:?}"))
                .collect();
            if resources.len() > 1 {
                return aad(
                    400,
                    "invalid_scope",
                    28000,
                    "Provided value for the input parameter scope is not valid because it contains more than one resource. Scope openid offline_access is not valid.",
                );
            }
            let c = c.clone();
            let offline = has(&c.scopes, "offline_access") || has(&requested, "offline_access");
            let spa = kind == ClientKind::Spa;
            let grant = Grant {
                user: c.user.clone(),
                client_id: client_id.to_string(),
                consent: c.scopes.clone(),
                requested,
                offline,
                spa,
                deadline: spa.then_some(now + 24 * 3600 * 1000),
            };
            issue(app, &mut st, grant)
        }
        "refresh_token" => {
            let Some(rt_s) = g("refresh_token") else {
                return missing("refresh_token");
            };
            let Some(rt) = st.auth.refresh.get(rt_s).cloned() else {
                return aad(
                    400,
                    "invalid_grant",
                    9002313,
                    "Invalid request. Request is malformed or invalid.",
                );
            };
            if rt.provider != Provider::Microsoft {
                return aad(
                    400,
                    "invalid_grant",
                    9002313,
                    "Invalid request. Request is malformed or invalid.",
                );
            }
            if rt.spa && !origin {
                return spa_err();
            }
            if !rt.spa && kind == ClientKind::Native && origin {
                return native_err();
            }
            if rt.revoked {
                return match rt.fail_code {
                    Some(700082) => aad(
                        400,
                        "invalid_grant",
                        700082,
                        "The refresh token has expired due to inactivity. The token was issued on 2024-01-01T00:00:00Z and was inactive for 90.00:00:00.",
                    ),
                    Some(70043) => aad(
                        400,
                        "invalid_grant",
                        70043,
                        "The refresh token has expired or is invalid due to sign-in frequency checks by conditional access.",
                    ),
                    Some(50076) => {
                        // Both interaction_required and invalid_grant are observed; the
                        // documented error value is used, with the observed suberror.
                        let mut r = aad(
                            400,
                            "interaction_required",
                            50076,
                            "Due to a configuration change made by your administrator, or because you moved to a new location, you must use multi-factor authentication to access this resource.",
                        );
                        let mut v = r.body_json();
                        v["suberror"] = json!("basic_action");
                        r.body = bytes::Bytes::from(serde_json::to_vec(&v).unwrap_or_default());
                        r
                    }
                    _ => aad(
                        400,
                        "invalid_grant",
                        50173,
                        "The provided grant has expired due to it being revoked, a fresh auth token is needed. The user might have changed or reset their password.",
                    ),
                };
            }
            if rt.used && app.opts.rt_single_use {
                // Stricter than Entra (which leaves old RTs valid): the brief asks
                // for single-use refresh tokens after rotation.
                return aad(
                    400,
                    "invalid_grant",
                    70008,
                    "The provided authorization code or refresh token has expired due to inactivity (it was already exchanged and rotated). Send a new interactive authorization request for this user and resource.",
                );
            }
            if rt.deadline_ms.is_some_and(|d| d < now) {
                return aad(
                    400,
                    "invalid_grant",
                    700084,
                    "The refresh token was issued to a single page app (SPA), and therefore has a fixed, limited lifetime of 1.00:00:00, which cannot be extended. It is now expired and a new sign in request must be sent by the SPA to the sign in page.",
                );
            }
            if rt.client_id != client_id {
                return aad(
                    400,
                    "invalid_grant",
                    70000,
                    "Provided grant is invalid or malformed: the refresh token was issued to another client.",
                );
            }
            let requested = match g("scope") {
                Some(s) => split_scopes(s),
                None => rt.consented.clone(),
            };
            let grant = Grant {
                user: rt.user.clone(),
                client_id: client_id.to_string(),
                consent: rt.consented.clone(),
                requested,
                offline: true,
                spa: rt.spa,
                deadline: rt.deadline_ms,
            };
            let resp = issue(app, &mut st, grant);
            if resp.status == 200
                && let Some(old) = st.auth.refresh.get_mut(rt_s)
            {
                old.used = true;
            }
            resp
        }
        "urn:ietf:params:oauth:grant-type:device_code" => {
            let Some(dc) = g("device_code") else {
                return missing("device_code");
            };
            let interval_ms = (app.opts.device_interval * 1000) as i64;
            let Some(d) = st.auth.devices.get_mut(dc) else {
                return aad(400, "bad_verification_code", 70018, "Invalid device code.");
            };
            if d.provider != Provider::Microsoft || d.client_id != client_id {
                return aad(400, "bad_verification_code", 70018, "Invalid device code.");
            }
            if d.expires_ms < now {
                return aad(400, "expired_token", 70019, "Verification code expired.");
            }
            if d.denied {
                return aad(
                    400,
                    "authorization_declined",
                    65004,
                    "User declined to consent to access the app.",
                );
            }
            if d.redeemed {
                return aad(
                    400,
                    "invalid_grant",
                    54005,
                    "The device code was already redeemed.",
                );
            }
            let Some(user) = d.approved_user.clone() else {
                let last = d.last_poll_ms.replace(now);
                // Entra does not document slow_down; RFC 8628 does and MSAL handles
                // it, so polling faster than `interval` gets it here (stricter).
                if last.is_some_and(|l| now - l < interval_ms) {
                    return aad(
                        400,
                        "slow_down",
                        70016,
                        "OAuth 2.0 device flow error. Polling too fast; wait the interval and add 5 seconds.",
                    );
                }
                return aad(
                    400,
                    "authorization_pending",
                    70016,
                    "OAuth 2.0 device flow error. Authorization is pending. Continue polling.",
                );
            };
            d.redeemed = true;
            let scopes = d.scopes.clone();
            let grant = Grant {
                user,
                client_id: client_id.to_string(),
                consent: scopes.clone(),
                offline: has(&scopes, "offline_access"),
                requested: scopes,
                spa: false,
                deadline: None,
            };
            issue(app, &mut st, grant)
        }
        other => aad(
            400,
            "unsupported_grant_type",
            70003,
            &format!("The app requested an unsupported grant type '{other}'."),
        ),
    }
}

fn devicecode(app: &Arc<App>, f: &[(String, String)]) -> Resp {
    let Some(client_id) = form_get(f, "client_id") else {
        return missing("client_id");
    };
    let Some(scope) = form_get(f, "scope") else {
        return missing("scope");
    };
    for s in split_scopes(scope) {
        if let Err(bad) = resource_of(&s) {
            return aad(
                400,
                "invalid_resource",
                500011,
                &format!("The resource principal named {bad} was not found in the tenant."),
            );
        }
    }
    let now = app.now_ms();
    let mut st = app.lock();
    if matches!(st.auth.ms_client(client_id), ClientKind::Confidential(_)) {
        return aad(
            400,
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        );
    }
    let device_code = format!("DAQABAAEAAA{}", st.rng.token(120));
    const ALPHA: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let user_code: String = (0..9).map(|_| *st.rng.pick(ALPHA) as char).collect();
    st.auth.devices.insert(
        device_code.clone(),
        DeviceCode {
            provider: Provider::Microsoft,
            client_id: client_id.to_string(),
            scopes: split_scopes(scope),
            user_code: user_code.clone(),
            expires_ms: now + 900 * 1000,
            interval: app.opts.device_interval,
            last_poll_ms: None,
            approved_user: None,
            denied: false,
            redeemed: false,
        },
    );
    let uri = format!("{}/microsoft.com/devicelogin", app.base_url);
    Resp::json(
        200,
        &json!({"user_code": user_code, "device_code": device_code, "verification_uri": uri,
            "expires_in": 900, "interval": app.opts.device_interval,
            "message": format!("To sign in, use a web browser to open the page {uri} and enter the code {user_code} to authenticate.")}),
    )
}

/// Approves or declines a pending device grant of either provider by its user code.
pub fn approve_device(
    app: &Arc<App>,
    user_code: &str,
    user: &str,
    approve: bool,
) -> Result<(), String> {
    let user = if user.trim().is_empty() {
        app.opts.default_user.clone()
    } else {
        user.trim().to_ascii_lowercase()
    };
    let now = app.now_ms();
    let mut st = app.lock();
    let norm = |s: &str| s.replace('-', "").to_ascii_uppercase();
    let Some(d) = st
        .auth
        .devices
        .values_mut()
        .find(|d| norm(&d.user_code) == norm(user_code))
    else {
        return Err("Unknown code.".into());
    };
    if d.expires_ms < now {
        return Err("The code has expired.".into());
    }
    let provider = d.provider;
    if approve {
        d.approved_user = Some(user.clone());
    } else {
        d.denied = true;
    }
    if approve {
        match provider {
            Provider::Microsoft => {
                st.graph_mailbox(&user);
            }
            Provider::Google => {
                st.gmail_mailbox(&user);
            }
        }
    }
    Ok(())
}

fn device_page(_app: &Arc<App>, msg: Option<&str>) -> Resp {
    Resp::html(
        200,
        format!(
            "<!doctype html><html><head><title>Enter code</title></head><body>\
             <h1>Emulated device sign-in</h1><p id=\"message\">{}</p>\
             <form method=\"post\"><label>Code <input id=\"user_code\" name=\"user_code\"></label>\
             <label>Account <input id=\"user\" name=\"user\"></label>\
             <button id=\"approve\" name=\"action\" value=\"approve\">Approve</button>\
             <button id=\"deny\" name=\"action\" value=\"deny\">Deny</button></form></body></html>",
            html_escape(msg.unwrap_or("Enter the code displayed on your device."))
        ),
    )
}
