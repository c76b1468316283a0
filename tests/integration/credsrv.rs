//! The token broker and `cms-oauth`: socket mode, request format, every
//! output format, refusals, and a real XOAUTH2 login against the emulator's
//! SMTP and IMAP listeners.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use base64::Engine as _;
use cloud_mdir_sync::auth::{AccessToken, Audience, StaticTokens};
use cloud_mdir_sync::credsrv::{self, Broker, BrokerAccount};
use cloud_mdir_sync::types::{CloudKind, Protocol};

const O365: &str = "user@contoso.example";
const GMAIL: &str = "user@gmail.example";

fn cms_oauth(sock: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cms-oauth"))
        .arg("--cms_sock")
        .arg(sock)
        .args(args)
        .output()
        .expect("run cms-oauth")
}

/// Serve a broker for one Office365 and one Gmail account with the given
/// tokens; returns the socket path (the server runs until the test ends).
async fn broker(
    dir: &Path,
    o365_token: &str,
    gmail_token: &str,
    protocols: Vec<Protocol>,
    mode: u32,
) -> (std::path::PathBuf, tokio::sync::watch::Sender<bool>) {
    let mut accounts = HashMap::new();
    accounts.insert(
        O365.to_string(),
        BrokerAccount {
            kind: CloudKind::Office365,
            tokens: Arc::new(StaticTokens::new(
                O365,
                [(Audience::Outlook, AccessToken::new(o365_token))],
            )),
        },
    );
    accounts.insert(
        GMAIL.to_string(),
        BrokerAccount {
            kind: CloudKind::Gmail,
            tokens: Arc::new(StaticTokens::new(
                GMAIL,
                [(Audience::GoogleMail, AccessToken::new(gmail_token))],
            )),
        },
    );
    let path = dir.join("cms.sock");
    let listener = credsrv::bind(&path, mode).expect("bind");
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(credsrv::serve(
        listener,
        path.clone(),
        Arc::new(Broker::new(accounts, protocols)),
        rx,
    ));
    (path, tx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_formats_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let (sock, _stop) = broker(
        dir.path(),
        "TOKEN-O",
        "TOKEN-G",
        vec![Protocol::Smtp],
        0o600,
    )
    .await;
    assert_eq!(
        std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let run = |args: Vec<&'static str>| {
        let sock = sock.clone();
        tokio::task::spawn_blocking(move || cms_oauth(&sock, &args))
    };
    let out = run(vec!["--user", O365]).await.unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        out.stdout,
        format!("user={O365}\x01auth=Bearer TOKEN-O\x01\x01\n").as_bytes()
    );
    let out = run(vec!["--user", GMAIL, "--output", "token", "--no_newline"])
        .await
        .unwrap();
    assert_eq!(out.stdout, b"TOKEN-G");
    let out = run(vec!["--user", O365, "--output", "xoauth2-b64"])
        .await
        .unwrap();
    let want = base64::engine::general_purpose::STANDARD
        .encode(format!("user={O365}\x01auth=Bearer TOKEN-O\x01\x01"));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim_end(), want);
    // Unknown account, protocol not offered: no token, exit 1.
    let out = run(vec!["--user", "nobody@example.org"]).await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let out = run(vec!["--user", O365, "--proto", "IMAP"]).await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no token"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_mode_follows_config() {
    let dir = tempfile::tempdir().unwrap();
    let (sock, _stop) = broker(dir.path(), "a", "b", vec![Protocol::Smtp], 0o660).await;
    assert_eq!(
        std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777,
        0o660
    );
    // A regular file where the socket should be is never removed.
    let other = dir.path().join("not-a-socket");
    std::fs::write(&other, "keep").unwrap();
    assert!(credsrv::bind(&other, 0o600).is_err());
    assert_eq!(std::fs::read_to_string(&other).unwrap(), "keep");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_login_against_emulated_smtp_and_imap() {
    let cloud = fake_cloud::FakeCloud::start(fake_cloud::Options {
        smtp_listen: Some("127.0.0.1:0".parse().unwrap()),
        imap_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..Default::default()
    })
    .await
    .expect("emulator");
    let smtp = cloud
        .mint_token(O365, "outlook", &["https://outlook.office.com/SMTP.Send"])
        .unwrap();
    let imap = cloud
        .mint_token(GMAIL, "gmail", &["https://mail.google.com/"])
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let smtp_addr = cloud.smtp_addr().unwrap().to_string();
    let imap_addr = cloud.imap_addr().unwrap().to_string();

    // Valid tokens log in.
    let (sock, stop) = broker(
        dir.path(),
        &smtp,
        &imap,
        vec![Protocol::Smtp, Protocol::Imap],
        0o600,
    )
    .await;
    let (s, a) = (sock.clone(), smtp_addr.clone());
    let out =
        tokio::task::spawn_blocking(move || cms_oauth(&s, &["--user", O365, "--test-smtp", &a]))
            .await
            .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (s, a) = (sock.clone(), imap_addr.clone());
    let out =
        tokio::task::spawn_blocking(move || cms_oauth(&s, &["--user", GMAIL, "--test-imap", &a]))
            .await
            .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = stop.send(true);
    drop(stop);

    // A bad token is refused, and the token never shows in the report.
    let dir2 = tempfile::tempdir().unwrap();
    let (sock, _stop) = broker(
        dir2.path(),
        "not-a-valid-token",
        "not-a-valid-token",
        vec![Protocol::Smtp, Protocol::Imap],
        0o600,
    )
    .await;
    let (s, a) = (sock.clone(), smtp_addr.clone());
    let out =
        tokio::task::spawn_blocking(move || cms_oauth(&s, &["--user", O365, "--test-smtp", &a]))
            .await
            .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("authentication failed"), "{err}");
    assert!(!err.contains("not-a-valid-token"), "{err}");
    let (s, a) = (sock.clone(), imap_addr.clone());
    let out =
        tokio::task::spawn_blocking(move || cms_oauth(&s, &["--user", GMAIL, "--test-imap", &a]))
            .await
            .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
}
