//! Google OAuth 2.0 for installed apps: authorize (login page or auto-approve), token
//! (authorization_code with PKCE and the required non-confidential client_secret,
//! refresh_token without rotation, device_code), the device endpoint that refuses
//! Gmail scopes, and token revocation.

use std::sync::Arc;

use serde_json::json;

use crate::errors::google_oauth as gerr;
use crate::http::{Req, Resp, enc, form_get};
use crate::oauth_ms::html_escape;
use crate::state::App;
use crate::tokens::{
    Audience, AuthCode, DeviceCode, GOOGLE_BUILTIN_CLIENT, GOOGLE_BUILTIN_SECRET, PendingAuth,
    Provider, RefreshToken, jwt, pkce_ok,
};

/// Live refresh tokens Google keeps per user and client; the oldest dies beyond this.
pub const MAX_LIVE_RTS: usize = 100;

const DEVICE_SCOPES: &[&str] = &[
    "openid",
    "email",
    "profile",
    "https://www.googleapis.com/auth/userinfo.email",
    "https://www.googleapis.com/auth/userinfo.profile",
    "https://www.googleapis.com/auth/drive.appdata",
    "https://www.googleapis.com/auth/drive.file",
    "https://www.googleapis.com/auth/youtube",
    "https://www.googleapis.com/auth/youtube.readonly",
];

/// Routes accounts.google.com, oauth2.googleapis.com and the device page.
pub fn handle(app: &Arc<App>, r: Req) -> Resp {
    let segs: Vec<&str> = r.segs.iter().map(String::as_str).collect();
    match (r.method.as_str(), segs.as_slice()) {
        ("GET", ["accounts.google.com", "o", "oauth2", "v2", "auth"]) => authorize(app, &r.query),
        ("POST", ["accounts.google.com", "o", "oauth2", "v2", "auth"]) => {
            login_submit(app, &r.form())
        }
        ("POST", ["oauth2.googleapis.com", "token"]) => token(app, &r.form()),
        ("POST", ["oauth2.googleapis.com", "device", "code"]) => device_code(app, &r.form()),
        ("POST", ["oauth2.googleapis.com", "revoke"]) => {
            let f = r.form();
            let tok = form_get(&f, "token")
                .or(r.q("token"))
                .unwrap_or("")
                .to_string();
            let mut st = app.lock();
            let found = st.auth.access.remove(&tok).is_some()
                || st
                    .auth
                    .refresh
                    .get_mut(&tok)
                    .map(|rt| rt.revoked = true)
                    .is_some();
            if found {
                Resp::empty(200)
            } else {
                gerr(400, "invalid_token", "Token expired or revoked")
            }
        }
        ("GET", ["www.google.com", "device"]) => device_page(None),
        ("POST", ["www.google.com", "device"]) => {
            let f = r.form();
            let code = form_get(&f, "user_code").unwrap_or("");
            let user = form_get(&f, "user").unwrap_or("");
            let approve = form_get(&f, "action") != Some("deny");
            let msg = match crate::oauth_ms::approve_device(app, code, user, approve) {
                Ok(()) => {
                    if approve {
                        "Success! Device connected.".to_string()
                    } else {
                        "Access denied.".to_string()
                    }
                }
                Err(e) => e,
            };
            device_page(Some(&msg))
        }
        _ => gerr(404, "invalid_request", "Not Found"),
    }
}

fn page_error(error: &str, text: &str) -> Resp {
    Resp::html(
        400,
        format!(
            "<!doctype html><html><head><title>Error 400: {e}</title></head><body>\
             <h1>Access blocked: This app's request is invalid</h1>\
             <p id=\"error\">Error 400: {e}</p><p>{t}</p></body></html>",
            e = html_escape(error),
            t = html_escape(text)
        ),
    )
}

fn loopback_ok(uri: &str) -> bool {
    let Some(rest) = uri.strip_prefix("http://") else {
        return false;
    };
    let hostport = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = if hostport.starts_with('[') {
        hostport
            .split(']')
            .next()
            .map(|h| format!("{h}]"))
            .unwrap_or_default()
    } else {
        hostport.split(':').next().unwrap_or("").to_string()
    };
    matches!(host.as_str(), "127.0.0.1" | "localhost" | "[::1]")
}

fn authorize(app: &Arc<App>, params: &[(String, String)]) -> Resp {
    let p = |k: &str| form_get(params, k);
    let Some(client_id) = p("client_id") else {
        return page_error("invalid_request", "Missing required parameter: client_id");
    };
    let Some(redirect) = p("redirect_uri") else {
        return page_error(
            "invalid_request",
            "Missing required parameter: redirect_uri",
        );
    };
    if redirect.starts_with("urn:ietf:wg:oauth:2.0:oob") {
        return page_error(
            "invalid_request",
            "The out-of-band (OOB) flow has been blocked in order to keep users secure.",
        );
    }
    if !loopback_ok(redirect) {
        return page_error(
            "redirect_uri_mismatch",
            &format!(
                "You can't sign in to this app because it doesn't comply with Google's OAuth 2.0 policy. redirect_uri={redirect}"
            ),
        );
    }
    if p("response_type") != Some("code") {
        return redirect_to(params, &[("error", "unsupported_response_type".into())]);
    }
    let Some(scope) = p("scope").filter(|s| !s.trim().is_empty()) else {
        return page_error("invalid_request", "Missing required parameter: scope");
    };
    if let Some(m) = p("code_challenge_method")
        && m != "S256"
        && m != "plain"
    {
        return page_error("invalid_request", "Invalid code_challenge_method value.");
    }
    let _ = scope;
    if app.opts.auto_approve {
        let user = p("login_hint")
            .unwrap_or(&app.opts.default_user)
            .to_string();
        return approve(app, params, &user);
    }
    let mut st = app.lock();
    let id = st.rng.token(16);
    st.auth.pending.insert(
        id.clone(),
        PendingAuth {
            provider: Provider::Google,
            params: params.to_vec(),
        },
    );
    drop(st);
    Resp::html(
        200,
        format!(
            "<!doctype html><html><head><title>Sign in - Google Accounts</title></head><body>\
             <h1>Emulated Google sign-in</h1><p>App <code>{}</code> wants: <code>{}</code></p>\
             <form method=\"post\" action=\"/accounts.google.com/o/oauth2/v2/auth\">\
             <input type=\"hidden\" name=\"pending\" value=\"{id}\">\
             <label>Account <input id=\"user\" name=\"user\" value=\"{}\"></label>\
             <button id=\"approve\" type=\"submit\" name=\"action\" value=\"approve\">Approve</button>\
             <button id=\"deny\" type=\"submit\" name=\"action\" value=\"deny\">Deny</button>\
             </form></body></html>",
            html_escape(client_id),
            html_escape(p("scope").unwrap_or("")),
            html_escape(p("login_hint").unwrap_or(""))
        ),
    )
}

fn redirect_to(params: &[(String, String)], pairs: &[(&str, String)]) -> Resp {
    let uri = form_get(params, "redirect_uri").unwrap_or("");
    let mut q: Vec<String> = Vec::new();
    if let Some(s) = form_get(params, "state") {
        q.push(format!("state={}", enc(s)));
    }
    for (k, v) in pairs {
        q.push(format!("{k}={}", enc(v)));
    }
    let sep = if uri.contains('?') { "&" } else { "?" };
    Resp::redirect(&format!("{uri}{sep}{}", q.join("&")))
}

fn login_submit(app: &Arc<App>, form: &[(String, String)]) -> Resp {
    let pending = form_get(form, "pending").unwrap_or("");
    let Some(pa) = app.lock().auth.pending.remove(pending) else {
        return page_error(
            "invalid_request",
            "This sign-in request is unknown or already completed.",
        );
    };
    if form_get(form, "action") == Some("deny") {
        return redirect_to(&pa.params, &[("error", "access_denied".into())]);
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
    let scopes: Vec<String> = p("scope").split_whitespace().map(str::to_string).collect();
    let mut st = app.lock();
    st.gmail_mailbox(user);
    let code = format!("4/0A{}", st.rng.token(60));
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
            provider: Provider::Google,
            user: user.to_ascii_lowercase(),
            client_id: p("client_id"),
            redirect_uri: p("redirect_uri"),
            scopes: scopes.clone(),
            challenge,
            expires_ms: now + 10 * 60 * 1000,
            used: false,
            offline: p("access_type") == "offline",
        },
    );
    drop(st);
    redirect_to(params, &[("code", code), ("scope", scopes.join(" "))])
}

fn check_client(app: &Arc<App>, f: &[(String, String)]) -> Result<String, Resp> {
    let Some(client_id) = form_get(f, "client_id") else {
        return Err(gerr(
            400,
            "invalid_request",
            "Missing required parameter: client_id",
        ));
    };
    // Desktop clients get a secret that is not confidential, but the token endpoint
    // still insists on it (cms: "Google doesn't follow RFC8252 8.5").
    let Some(secret) = form_get(f, "client_secret") else {
        return Err(gerr(400, "invalid_request", "client_secret is missing."));
    };
    let expected = if client_id == GOOGLE_BUILTIN_CLIENT {
        Some(GOOGLE_BUILTIN_SECRET.to_string())
    } else {
        app.lock().auth.google_clients.get(client_id).cloned()
    };
    if expected.is_some_and(|e| e != secret) || secret.is_empty() {
        return Err(gerr(401, "invalid_client", "Unauthorized"));
    }
    Ok(client_id.to_string())
}

fn issue(
    app: &Arc<App>,
    user: &str,
    client_id: &str,
    scopes: Vec<String>,
    rt: Option<Vec<String>>,
) -> Resp {
    let now = app.now_ms();
    let lifetime = app.opts.token_lifetime.as_millis() as i64;
    let mut guard = app.lock();
    let st = &mut *guard;
    let at = st.auth.issue_access(
        &mut st.rng,
        user,
        Provider::Google,
        Audience::Google,
        scopes.clone(),
        now,
        lifetime,
        client_id,
    );
    let mut out = json!({"access_token": at, "expires_in": lifetime / 1000, "scope": scopes.join(" "), "token_type": "Bearer"});
    if let Some(consent) = rt {
        let deadline = app
            .opts
            .google_rt_lifetime
            .map(|d| now + d.as_millis() as i64);
        let tok = st.auth.issue_refresh(
            &mut st.rng,
            RefreshToken {
                user: user.to_ascii_lowercase(),
                provider: Provider::Google,
                client_id: client_id.to_string(),
                consented: consent,
                deadline_ms: deadline,
                created_ms: now,
                used: false,
                revoked: false,
                spa: false,
                fail_code: None,
            },
        );
        // Per user+client cap: the oldest live token stops working.
        let mut live: Vec<(i64, String)> = st
            .auth
            .refresh
            .iter()
            .filter(|(_, r)| {
                r.provider == Provider::Google
                    && r.user == user.to_ascii_lowercase()
                    && r.client_id == client_id
                    && !r.revoked
            })
            .map(|(k, r)| (r.created_ms, k.clone()))
            .collect();
        if live.len() > MAX_LIVE_RTS {
            live.sort();
            for (_, k) in live.iter().take(live.len() - MAX_LIVE_RTS) {
                if let Some(r) = st.auth.refresh.get_mut(k) {
                    r.revoked = true;
                }
            }
        }
        out["refresh_token"] = json!(tok);
        if deadline.is_some() {
            out["refresh_token_expires_in"] =
                json!(app.opts.google_rt_lifetime.map(|d| d.as_secs()));
        }
    }
    if scopes.iter().any(|s| s == "openid") {
        let claims = json!({"iss": "https://accounts.google.com", "aud": client_id, "azp": client_id,
            "sub": format!("{}", 100_000_000_000_000_000_000u128 + (user.len() as u128)), "email": user, "email_verified": true,
            "iat": now / 1000, "exp": now / 1000 + 3600});
        out["id_token"] = json!(jwt(&claims, &mut st.rng));
    }
    Resp::json(200, &out).with_header(
        "Cache-Control",
        "no-cache, no-store, max-age=0, must-revalidate",
    )
}

fn token(app: &Arc<App>, f: &[(String, String)]) -> Resp {
    let g = |k: &str| form_get(f, k);
    let Some(grant) = g("grant_type") else {
        return gerr(400, "unsupported_grant_type", "Invalid grant_type: ");
    };
    let client_id = match check_client(app, f) {
        Ok(c) => c,
        Err(e) => return e,
    };
    let now = app.now_ms();
    match grant {
        "authorization_code" => {
            let Some(code) = g("code") else {
                return gerr(400, "invalid_request", "Missing required parameter: code");
            };
            let mut st = app.lock();
            let Some(c) = st
                .auth
                .codes
                .get_mut(code)
                .filter(|c| c.provider == Provider::Google)
            else {
                return gerr(400, "invalid_grant", "Malformed auth code.");
            };
            if c.used || c.expires_ms < now {
                return gerr(400, "invalid_grant", "Bad Request");
            }
            c.used = true;
            if c.client_id != client_id {
                return gerr(400, "invalid_grant", "Unauthorized");
            }
            if g("redirect_uri") != Some(c.redirect_uri.as_str()) {
                return gerr(400, "redirect_uri_mismatch", "Bad Request");
            }
            if let Some((ch, m)) = &c.challenge {
                let Some(v) = g("code_verifier") else {
                    return gerr(400, "invalid_grant", "Missing code verifier.");
                };
                if !pkce_ok(ch, m, v) {
                    return gerr(400, "invalid_grant", "Invalid code verifier.");
                }
            }
            let c = c.clone();
            // Offline access gives a refresh token on the first exchange; Google re-issues
            // one later only when consent was shown again (prompt=consent), which every
            // approval here counts as.
            drop(st);
            let rt = c.offline.then(|| c.scopes.clone());
            issue(app, &c.user, &client_id, c.scopes.clone(), rt)
        }
        "refresh_token" => {
            let Some(rt_s) = g("refresh_token") else {
                return gerr(
                    400,
                    "invalid_request",
                    "Missing required parameter: refresh_token",
                );
            };
            let st = app.lock();
            let Some(rt) = st
                .auth
                .refresh
                .get(rt_s)
                .filter(|r| r.provider == Provider::Google)
                .cloned()
            else {
                return gerr(400, "invalid_grant", "Bad Request");
            };
            drop(st);
            if rt.revoked || rt.deadline_ms.is_some_and(|d| d < now) {
                return gerr(400, "invalid_grant", "Token has been expired or revoked.");
            }
            if rt.client_id != client_id {
                return gerr(401, "unauthorized_client", "Unauthorized");
            }
            let scopes = match g("scope") {
                Some(s) => {
                    let want: Vec<String> = s.split_whitespace().map(str::to_string).collect();
                    if let Some(bad) = want.iter().find(|w| !rt.consented.contains(w)) {
                        return gerr(
                            400,
                            "invalid_scope",
                            &format!("Some requested scopes were invalid. {{invalid=[{bad}]}}"),
                        );
                    }
                    want
                }
                None => rt.consented.clone(),
            };
            // Google does not rotate refresh tokens: no refresh_token in the answer.
            issue(app, &rt.user, &client_id, scopes, None)
        }
        "urn:ietf:params:oauth:grant-type:device_code" => {
            let Some(dc) = g("device_code") else {
                return gerr(
                    400,
                    "invalid_request",
                    "Missing required parameter: device_code",
                );
            };
            let interval_ms = (app.opts.device_interval * 1000) as i64;
            let mut st = app.lock();
            let Some(d) = st
                .auth
                .devices
                .get_mut(dc)
                .filter(|d| d.provider == Provider::Google && d.client_id == client_id)
            else {
                return gerr(400, "invalid_grant", "Malformed auth code.");
            };
            if d.expires_ms < now {
                return gerr(400, "expired_token", "Bad Request");
            }
            if d.denied {
                return gerr(403, "access_denied", "Forbidden");
            }
            if d.redeemed {
                return gerr(400, "invalid_grant", "Bad Request");
            }
            let Some(user) = d.approved_user.clone() else {
                let last = d.last_poll_ms.replace(now);
                // HTTP statuses for pending/slow_down are UNVERIFIED (428/403 seen in clients).
                if last.is_some_and(|l| now - l < interval_ms) {
                    return gerr(403, "slow_down", "Forbidden");
                }
                return gerr(428, "authorization_pending", "Precondition Required");
            };
            d.redeemed = true;
            let scopes = d.scopes.clone();
            drop(st);
            issue(app, &user, &client_id, scopes.clone(), Some(scopes))
        }
        other => gerr(
            400,
            "unsupported_grant_type",
            &format!("Invalid grant_type: {other}"),
        ),
    }
}

fn device_code(app: &Arc<App>, f: &[(String, String)]) -> Resp {
    let Some(client_id) = form_get(f, "client_id") else {
        return gerr(400, "invalid_client", "The OAuth client was not found.");
    };
    let Some(scope) = form_get(f, "scope") else {
        return gerr(400, "invalid_scope", "Missing required parameter: scope");
    };
    for s in scope.split_whitespace() {
        if !DEVICE_SCOPES.contains(&s) {
            return gerr(
                400,
                "invalid_scope",
                &format!("Invalid device flow scope: {s}"),
            );
        }
    }
    let now = app.now_ms();
    let mut st = app.lock();
    let device_code = format!("AH-1Ng{}", st.rng.token(60));
    const ALPHA: &[u8] = b"BCDFGHJKLMNPQRSTVWXZ";
    let mut user_code = String::new();
    for i in 0..9 {
        if i == 3 || i == 6 {
            user_code.push('-');
        }
        user_code.push(*st.rng.pick(ALPHA) as char);
    }
    st.auth.devices.insert(
        device_code.clone(),
        DeviceCode {
            provider: Provider::Google,
            client_id: client_id.to_string(),
            scopes: scope.split_whitespace().map(str::to_string).collect(),
            user_code: user_code.clone(),
            expires_ms: now + 1800 * 1000,
            interval: app.opts.device_interval,
            last_poll_ms: None,
            approved_user: None,
            denied: false,
            redeemed: false,
        },
    );
    Resp::json(
        200,
        &json!({"device_code": device_code, "user_code": user_code,
        "verification_url": format!("{}/www.google.com/device", app.base_url),
        "expires_in": 1800, "interval": app.opts.device_interval}),
    )
}

fn device_page(msg: Option<&str>) -> Resp {
    Resp::html(
        200,
        format!(
            "<!doctype html><html><head><title>Google device sign-in</title></head><body>\
         <h1>Emulated Google device sign-in</h1><p id=\"message\">{}</p>\
         <form method=\"post\"><label>Code <input id=\"user_code\" name=\"user_code\"></label>\
         <label>Account <input id=\"user\" name=\"user\"></label>\
         <button id=\"approve\" name=\"action\" value=\"approve\">Allow</button>\
         <button id=\"deny\" name=\"action\" value=\"deny\">Deny</button></form></body></html>",
            html_escape(msg.unwrap_or("Enter the code displayed on your device."))
        ),
    )
}
