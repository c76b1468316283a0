//! Gmail tokens: a refused token is refreshed once, two in a row are an
//! Auth error, and no token reaches the logs.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use cloud_mdir_sync::auth::{AccessToken, Audience, AuthError, TokenSource};
use cloud_mdir_sync::cloud::gmail;
use cloud_mdir_sync::cloud::{CloudMailbox, ErrorKind, FlagChange};
use cloud_mdir_sync::endpoints::Endpoints;
use cloud_mdir_sync::types::Flags;
use fake_cloud::QuotaMode;
use futures_util::future::BoxFuture;
use serde_json::json;

use super::{Env, MODIFY, USER, fast};

/// Hands out tokens in order; `invalidate` moves to the next one.
struct Rotating {
    tokens: Mutex<VecDeque<AccessToken>>,
}

impl TokenSource for Rotating {
    fn token(&self, _audience: Audience) -> BoxFuture<'_, Result<AccessToken, AuthError>> {
        let t = self.tokens.lock().ok().and_then(|q| q.front().cloned());
        Box::pin(async move {
            t.ok_or(AuthError::LoginNeeded {
                user: USER.into(),
                reason: "no more tokens".into(),
            })
        })
    }

    fn invalidate(&self, _audience: Audience, token: &AccessToken) {
        if let Ok(mut q) = self.tokens.lock()
            && q.front() == Some(token)
        {
            q.pop_front();
        }
    }
}

#[tokio::test]
async fn refused_tokens_are_refreshed_once_and_never_logged() {
    let env = Env::start(QuotaMode::Off).await;
    let ids = env.populate("INBOX", 60, 101).await;
    let good = env.token(&[MODIFY]);
    let bogus = "ya29.bogus-token-value-never-valid".to_string();
    // The binary's one global log capture: other tests' logs land there
    // too, which only widens the scan.
    crate::util::log_buffer();

    // First token refused: refreshed once, then everything works.
    let tokens = Arc::new(Rotating {
        tokens: Mutex::new([bogus.clone(), good.clone()].map(AccessToken::new).into()),
    });
    let account = gmail::Account::new(
        USER,
        Endpoints::emulated(env.h.base_url()),
        tokens.clone(),
        fast(),
    )
    .expect("account");
    let mb = gmail::Mailbox::new(account, "INBOX", "gmail:user@gmail.com/INBOX");
    let entries = mb.list().await.expect("list after one refresh");
    assert_eq!(entries.len(), 60);
    let mut out = Vec::new();
    mb.fetch(&ids[0], &mut out).await.expect("fetch");
    let r = mb
        .set_flags(vec![FlagChange {
            id: ids[0].clone(),
            set: Flags::FLAGGED,
            clear: Flags::NONE,
        }])
        .await;
    assert!(r[0].is_ok());
    // Faults and retries log too.
    env.fault(json!({"route": "*/profile", "kind": "status", "status": 503, "count": 1}))
        .await;
    mb.list().await.expect("list");

    // Two refused tokens in a row: an Auth error, no endless loop.
    let tokens = Arc::new(Rotating {
        tokens: Mutex::new(
            [bogus.clone(), format!("{bogus}-2")]
                .map(AccessToken::new)
                .into(),
        ),
    });
    let account = gmail::Account::new(USER, Endpoints::emulated(env.h.base_url()), tokens, fast())
        .expect("account");
    let mb2 = gmail::Mailbox::new(account, "INBOX", "gmail:user@gmail.com/INBOX");
    let e = mb2.list().await.expect_err("refused twice");
    assert_eq!(e.kind, ErrorKind::Auth, "{e}");
    for t in [&good, &bogus] {
        assert!(!e.to_string().contains(t.as_str()));
    }

    let text = crate::util::logged();
    assert!(text.contains("gmail request"), "debug logs were captured");
    for t in [&good, &bogus] {
        assert!(!text.contains(t.as_str()), "a token appears in the logs");
    }
    assert!(
        !text.contains("ya29."),
        "a token fragment appears in the logs"
    );
}
