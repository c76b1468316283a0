//! Identity conformance: Microsoft auth code + PKCE, refresh rotation and audiences,
//! Origin handling, device flow; Google client_secret, PKCE, refresh, revoke, device
//! scopes; the login page.

use base64::Engine;
use fake_cloud::Options;
use serde_json::json;
use sha2::Digest;

use crate::util::*;

const MS_CLIENT: &str = "122f4826-adf9-465d-8e84-e9d00bc9f234";
const REDIRECT: &str = "http://127.0.0.1:8080/oauth2/msal";
const ORIGIN: (&str, &str) = ("Origin", "http://127.0.0.1:8080/");
const TOKEN: &str = "/login.microsoftonline.com/common/oauth2/v2.0/token";
const SCOPES: &str = "https://graph.microsoft.com/User.Read https://graph.microsoft.com/Mail.ReadWrite https://outlook.office.com/SMTP.Send offline_access";

fn challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(verifier.as_bytes()))
}

async fn ms_code(h: &fake_cloud::Handle, verifier: &str) -> String {
    let q = form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("client_id", MS_CLIENT),
            ("response_type", "code"),
            ("redirect_uri", REDIRECT),
            ("scope", SCOPES),
            ("state", "st8"),
            ("code_challenge", &challenge(verifier)),
            ("code_challenge_method", "S256"),
            ("login_hint", "u@contoso.com"),
        ])
        .finish();
    let r = send(
        "GET",
        &url(
            h,
            &format!("/login.microsoftonline.com/common/oauth2/v2.0/authorize?{q}"),
        ),
        &[],
        vec![],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 302, "{}", String::from_utf8_lossy(&r.body));
    let loc = r.header("location").unwrap();
    assert!(loc.starts_with(REDIRECT));
    assert_eq!(query_param(&loc, "state").as_deref(), Some("st8"));
    query_param(&loc, "code").unwrap()
}

async fn redeem(
    h: &fake_cloud::Handle,
    code: &str,
    verifier: &str,
    scope: &str,
    origin: bool,
) -> Reply {
    let pairs = [
        ("client_id", MS_CLIENT),
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", REDIRECT),
        ("scope", scope),
        ("code_verifier", verifier),
    ];
    form(h, TOKEN, &pairs, if origin { &[ORIGIN] } else { &[] }).await
}

fn auto() -> Options {
    Options {
        auto_approve: true,
        ..Options::default()
    }
}

#[tokio::test]
async fn ms_pkce_code_single_use_and_origin() {
    let h = start(auto()).await;
    let code = ms_code(&h, "v1-verifier-0123456789012345678901234567890123").await;
    let r = redeem(
        &h,
        &code,
        "wrong-verifier-012345678901234567890123456789012",
        "https://outlook.office.com/SMTP.Send offline_access",
        true,
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], json!("invalid_grant"));
    assert_eq!(r.json()["error_codes"], json!([501481]));
    assert!(
        r.json()["error_description"]
            .as_str()
            .unwrap()
            .starts_with("AADSTS501481")
    );
    for k in ["timestamp", "trace_id", "correlation_id", "error_uri"] {
        assert!(r.json()[k].is_string(), "{k}");
    }
    // The code was consumed by the failed attempt.
    let r = redeem(
        &h,
        &code,
        "v1-verifier-0123456789012345678901234567890123",
        "https://outlook.office.com/SMTP.Send offline_access",
        true,
    )
    .await;
    assert_eq!(r.json()["error_codes"], json!([54005]));
    // Without Origin the SPA registration refuses.
    let v = "v2-verifier-0123456789012345678901234567890123";
    let code = ms_code(&h, v).await;
    let r = redeem(
        &h,
        &code,
        v,
        "https://outlook.office.com/SMTP.Send offline_access",
        false,
    )
    .await;
    assert_eq!(r.json()["error"], json!("invalid_request"));
    assert_eq!(r.json()["error_codes"], json!([9002327]));
    let code = ms_code(&h, v).await;
    let r = redeem(
        &h,
        &code,
        v,
        "https://outlook.office.com/SMTP.Send offline_access",
        true,
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let t = r.json();
    assert!(t["refresh_token"].is_string() && t["access_token"].is_string());
    assert_eq!(t["token_type"], json!("Bearer"));
    // An Outlook-audience token does not work on Graph.
    let at = t["access_token"].as_str().unwrap();
    assert_eq!(
        get(&h, &format!("{GRAPH}/me/mailFolders"), at, &[])
            .await
            .status,
        401
    );
}

#[tokio::test]
async fn ms_refresh_rotation_and_audience() {
    let h = start(auto()).await;
    let v = "verifier-abcdefghijklmnopqrstuvwxyz0123456789ABCDEF";
    let code = ms_code(&h, v).await;
    let t = redeem(
        &h,
        &code,
        v,
        "https://outlook.office.com/SMTP.Send offline_access",
        true,
    )
    .await
    .json();
    let rt1 = t["refresh_token"].as_str().unwrap().to_string();
    let refresh = |rt: String, scope: &'static str| {
        let h = &h;
        async move {
            form(
                h,
                TOKEN,
                &[
                    ("client_id", MS_CLIENT),
                    ("grant_type", "refresh_token"),
                    ("refresh_token", &rt),
                    ("scope", scope),
                ],
                &[ORIGIN],
            )
            .await
        }
    };
    let r = refresh(rt1.clone(), "https://graph.microsoft.com/User.Read https://graph.microsoft.com/Mail.ReadWrite offline_access").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let t2 = r.json();
    let rt2 = t2["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(rt1, rt2, "rotation");
    assert!(t2["scope"].as_str().unwrap().contains("Mail.ReadWrite"));
    let gt = t2["access_token"].as_str().unwrap();
    assert_eq!(
        get(&h, &format!("{GRAPH}/me/mailFolders"), gt, &[])
            .await
            .status,
        200
    );
    // The used refresh token is single-use now.
    let r = refresh(
        rt1,
        "https://graph.microsoft.com/Mail.ReadWrite offline_access",
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], json!("invalid_grant"));
    // Scopes never consented are refused.
    let r = refresh(rt2.clone(), "https://graph.microsoft.com/Calendars.Read").await;
    assert_eq!(r.json()["error_codes"], json!([65001]));
    // Revocation.
    control(&h, "POST", "revoke", &json!({"user": "u@contoso.com"})).await;
    let r = refresh(
        rt2,
        "https://graph.microsoft.com/Mail.ReadWrite offline_access",
    )
    .await;
    assert_eq!(r.json()["error_codes"], json!([50173]));
}

#[tokio::test]
async fn ms_redirect_mismatch_and_login_page() {
    let h = start_default().await;
    let q = form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("client_id", MS_CLIENT),
            ("response_type", "code"),
            ("redirect_uri", "http://evil.example/cb"),
            ("scope", SCOPES),
            ("code_challenge", "x"),
            ("code_challenge_method", "S256"),
        ])
        .finish();
    let r = send(
        "GET",
        &url(
            &h,
            &format!("/login.microsoftonline.com/common/oauth2/v2.0/authorize?{q}"),
        ),
        &[],
        vec![],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 400);
    assert!(String::from_utf8_lossy(&r.body).contains("AADSTS50011"));
    // Without auto-approve: a page with an Approve button; posting it redirects.
    let q = form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("client_id", MS_CLIENT),
            ("response_type", "code"),
            ("redirect_uri", REDIRECT),
            ("scope", SCOPES),
            ("state", "s"),
            ("code_challenge", "x"),
            ("code_challenge_method", "S256"),
        ])
        .finish();
    let r = send(
        "GET",
        &url(
            &h,
            &format!("/login.microsoftonline.com/common/oauth2/v2.0/authorize?{q}"),
        ),
        &[],
        vec![],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let page = String::from_utf8_lossy(&r.body).to_string();
    assert!(page.contains("id=\"approve\""));
    let pending = page
        .split("name=\"pending\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    let r = form(
        &h,
        "/login.microsoftonline.com/common/oauth2/v2.0/authorize",
        &[
            ("pending", &pending),
            ("user", "p@contoso.com"),
            ("action", "approve"),
        ],
        &[],
    )
    .await;
    assert_eq!(r.status, 302);
    let loc = r.header("location").unwrap();
    assert!(loc.starts_with(REDIRECT) && query_param(&loc, "code").is_some());
}

#[tokio::test]
async fn ms_device_flow_pending_slow_down_expired() {
    let h = start_default().await;
    let dc = form(
        &h,
        "/login.microsoftonline.com/common/oauth2/v2.0/devicecode",
        &[
            ("client_id", MS_CLIENT),
            (
                "scope",
                "https://graph.microsoft.com/Mail.ReadWrite offline_access",
            ),
        ],
        &[],
    )
    .await
    .json();
    assert!(dc["verification_uri"].is_string() && dc["user_code"].is_string());
    let poll = |code: String| {
        let h = &h;
        async move {
            form(
                h,
                TOKEN,
                &[
                    ("client_id", MS_CLIENT),
                    ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                    ("device_code", &code),
                ],
                &[],
            )
            .await
        }
    };
    let code = dc["device_code"].as_str().unwrap().to_string();
    assert_eq!(
        poll(code.clone()).await.json()["error"],
        json!("authorization_pending")
    );
    assert_eq!(poll(code.clone()).await.json()["error"], json!("slow_down"));
    let r = control(
        &h,
        "POST",
        "device",
        &json!({"user_code": dc["user_code"], "user": "d@contoso.com"}),
    )
    .await;
    assert_eq!(r.status, 200);
    control(&h, "POST", "clock", &json!({"advance_secs": 6})).await;
    let r = poll(code.clone()).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.json()["refresh_token"].is_string());
    let dc = form(
        &h,
        "/login.microsoftonline.com/common/oauth2/v2.0/devicecode",
        &[
            ("client_id", MS_CLIENT),
            ("scope", "https://graph.microsoft.com/Mail.ReadWrite"),
        ],
        &[],
    )
    .await
    .json();
    control(&h, "POST", "clock", &json!({"advance_secs": 901})).await;
    assert_eq!(
        poll(dc["device_code"].as_str().unwrap().to_string())
            .await
            .json()["error"],
        json!("expired_token")
    );
}

const G_CLIENT: &str = "14979213351-bik90v3b8b9f22160ura3oah71u3l113.apps.googleusercontent.com";
const G_SECRET: &str = "cLICGg-LVQuMAPTh3VxTC42p";
const G_REDIRECT: &str = "http://127.0.0.1:8080/oauth2/gmail";

#[tokio::test]
async fn google_code_flow_secret_refresh_revoke() {
    let h = start(auto()).await;
    let v = "google-verifier-0123456789012345678901234567890123456789";
    let q = form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("client_id", G_CLIENT),
            ("redirect_uri", G_REDIRECT),
            ("response_type", "code"),
            ("scope", "https://www.googleapis.com/auth/gmail.modify"),
            ("state", "gs"),
            ("code_challenge", &challenge(v)),
            ("code_challenge_method", "S256"),
            ("access_type", "offline"),
            ("login_hint", "g@gmail.com"),
        ])
        .finish();
    let r = send(
        "GET",
        &url(&h, &format!("/accounts.google.com/o/oauth2/v2/auth?{q}")),
        &[],
        vec![],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 302);
    let code = query_param(&r.header("location").unwrap(), "code").unwrap();
    let base = [
        ("client_id", G_CLIENT),
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", G_REDIRECT),
        ("code_verifier", v),
    ];
    let r = form(&h, "/oauth2.googleapis.com/token", &base, &[]).await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["error"],
        json!("invalid_request"),
        "client_secret is required"
    );
    let mut with_secret = base.to_vec();
    with_secret.push(("client_secret", G_SECRET));
    let t = form(&h, "/oauth2.googleapis.com/token", &with_secret, &[]).await;
    assert_eq!(t.status, 200, "{}", String::from_utf8_lossy(&t.body));
    let t = t.json();
    let rt = t["refresh_token"].as_str().unwrap().to_string();
    let at = t["access_token"].as_str().unwrap();
    assert_eq!(
        get(&h, &format!("{GMAIL}/profile"), at, &[]).await.status,
        200
    );
    let refresh = [
        ("client_id", G_CLIENT),
        ("client_secret", G_SECRET),
        ("grant_type", "refresh_token"),
        ("refresh_token", rt.as_str()),
    ];
    let r = form(&h, "/oauth2.googleapis.com/token", &refresh, &[]).await;
    assert_eq!(r.status, 200);
    assert!(
        r.json().get("refresh_token").is_none(),
        "Google does not rotate"
    );
    control(&h, "POST", "revoke", &json!({"user": "g@gmail.com"})).await;
    let r = form(&h, "/oauth2.googleapis.com/token", &refresh, &[]).await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json(),
        json!({"error": "invalid_grant", "error_description": "Token has been expired or revoked."})
    );
}

#[tokio::test]
async fn google_pkce_and_device_scope_refusal() {
    let h = start(auto()).await;
    let q = form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("client_id", G_CLIENT),
            ("redirect_uri", G_REDIRECT),
            ("response_type", "code"),
            ("scope", "https://mail.google.com/"),
            ("code_challenge", &challenge("right")),
            ("code_challenge_method", "S256"),
        ])
        .finish();
    let r = send(
        "GET",
        &url(&h, &format!("/accounts.google.com/o/oauth2/v2/auth?{q}")),
        &[],
        vec![],
    )
    .await
    .unwrap();
    let code = query_param(&r.header("location").unwrap(), "code").unwrap();
    let r = form(
        &h,
        "/oauth2.googleapis.com/token",
        &[
            ("client_id", G_CLIENT),
            ("client_secret", G_SECRET),
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", G_REDIRECT),
            ("code_verifier", "wrong"),
        ],
        &[],
    )
    .await;
    assert_eq!(r.json()["error"], json!("invalid_grant"));
    let r = form(
        &h,
        "/oauth2.googleapis.com/device/code",
        &[
            ("client_id", G_CLIENT),
            ("scope", "https://www.googleapis.com/auth/gmail.modify"),
        ],
        &[],
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], json!("invalid_scope"));
    assert_eq!(
        r.json()["error_description"],
        json!("Invalid device flow scope: https://www.googleapis.com/auth/gmail.modify")
    );
    let r = form(
        &h,
        "/oauth2.googleapis.com/device/code",
        &[("client_id", G_CLIENT), ("scope", "openid email")],
        &[],
    )
    .await;
    let dc = r.json();
    assert!(dc["verification_url"].is_string());
    let poll = [
        ("client_id", G_CLIENT),
        ("client_secret", G_SECRET),
        ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
        ("device_code", dc["device_code"].as_str().unwrap()),
    ];
    assert_eq!(
        form(&h, "/oauth2.googleapis.com/token", &poll, &[])
            .await
            .json()["error"],
        json!("authorization_pending")
    );
    assert_eq!(
        form(&h, "/oauth2.googleapis.com/token", &poll, &[])
            .await
            .json()["error"],
        json!("slow_down")
    );
    control(&h, "POST", "clock", &json!({"advance_secs": 1801})).await;
    assert_eq!(
        form(&h, "/oauth2.googleapis.com/token", &poll, &[])
            .await
            .json()["error"],
        json!("expired_token")
    );
}

#[tokio::test]
async fn ms_refresh_failure_codes() {
    let h = start(auto()).await;
    let v = "verifier-abcdefghijklmnopqrstuvwxyz0123456789ABCDEF";
    let get_rt = || async {
        let code = ms_code(&h, v).await;
        redeem(
            &h,
            &code,
            v,
            "https://graph.microsoft.com/Mail.ReadWrite offline_access",
            true,
        )
        .await
        .json()["refresh_token"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let refresh = |rt: String| {
        let h = &h;
        async move {
            form(
                h,
                TOKEN,
                &[
                    ("client_id", MS_CLIENT),
                    ("grant_type", "refresh_token"),
                    ("refresh_token", &rt),
                    (
                        "scope",
                        "https://graph.microsoft.com/Mail.ReadWrite offline_access",
                    ),
                ],
                &[ORIGIN],
            )
            .await
            .json()
        }
    };
    let rt = get_rt().await;
    control(
        &h,
        "POST",
        "revoke",
        &json!({"user": "u@contoso.com", "reason": "inactive"}),
    )
    .await;
    assert_eq!(refresh(rt).await["error_codes"], json!([700082]));
    let rt = get_rt().await;
    control(
        &h,
        "POST",
        "revoke",
        &json!({"user": "u@contoso.com", "reason": "mfa"}),
    )
    .await;
    let r = refresh(rt).await;
    assert_eq!(r["error_codes"], json!([50076]));
    assert_eq!(r["suberror"], json!("basic_action"));
    // SPA refresh tokens die 24 h after sign-in, however often they are used.
    let rt = get_rt().await;
    control(&h, "POST", "clock", &json!({"advance_secs": 86_401})).await;
    assert_eq!(refresh(rt).await["error_codes"], json!([700084]));
    // Without Origin a SPA refresh token is refused.
    let rt = get_rt().await;
    let r = form(
        &h,
        TOKEN,
        &[
            ("client_id", MS_CLIENT),
            ("grant_type", "refresh_token"),
            ("refresh_token", &rt),
        ],
        &[],
    )
    .await;
    assert_eq!(r.json()["error_codes"], json!([9002327]));
}

#[tokio::test]
async fn native_client_refuses_origin() {
    let h = start(auto()).await;
    control(&h, "POST", "client", &json!({"provider": "microsoft", "client_id": "11111111-2222-3333-4444-555555555555", "kind": "native"})).await;
    let q = form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("client_id", "11111111-2222-3333-4444-555555555555"),
            ("response_type", "code"),
            ("redirect_uri", "http://localhost"),
            ("scope", "Mail.ReadWrite offline_access"),
            ("login_hint", "n@contoso.com"),
        ])
        .finish();
    let r = send(
        "GET",
        &url(
            &h,
            &format!("/login.microsoftonline.com/common/oauth2/v2.0/authorize?{q}"),
        ),
        &[],
        vec![],
    )
    .await
    .unwrap();
    let code = query_param(&r.header("location").unwrap(), "code").unwrap();
    let pairs = [
        ("client_id", "11111111-2222-3333-4444-555555555555"),
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", "http://localhost"),
        ("scope", "Mail.ReadWrite offline_access"),
    ];
    let r = form(&h, TOKEN, &pairs, &[ORIGIN]).await;
    assert_eq!(r.json()["error_codes"], json!([9002326]));
}
