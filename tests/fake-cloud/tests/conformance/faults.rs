//! Fault knobs: injected statuses in each service's error shape, resets, truncated
//! bodies, bad JSON, delays, counts and seeded probabilities, plus the CLI syntax.

use fake_cloud::Options;
use serde_json::json;

use crate::util::*;

#[tokio::test]
async fn status_faults_by_count_in_service_shape() {
    let h = start_default().await;
    let tok = graph_token(&h, "a@contoso.com");
    let r = control(&h, "POST", "faults", &json!({"route": "/graph.microsoft.com/*/mailFolders*", "method": "GET", "kind": "status", "status": 503, "count": 2})).await;
    assert_eq!(r.status, 200);
    let p = format!("{GRAPH}/me/mailFolders");
    for _ in 0..2 {
        let r = get(&h, &p, &tok, &[]).await;
        assert_eq!(r.status, 503);
        assert!(r.json()["error"]["code"].is_string());
        assert!(r.json()["error"]["innerError"]["request-id"].is_string());
    }
    assert_eq!(get(&h, &p, &tok, &[]).await.status, 200);
    // Gmail shape, 429 with Retry-After override.
    let gt = gmail_token(&h, "g@gmail.com");
    control(&h, "POST", "faults", &json!({"route": "history", "kind": "status", "status": 429, "count": 1, "retry_after": "2.5"})).await;
    let r = get(&h, &format!("{GMAIL}/history?startHistoryId=1"), &gt, &[]).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after").as_deref(), Some("2.5"));
    assert_eq!(r.json()["error"]["code"], json!(429));
    assert!(r.json()["error"]["errors"][0]["reason"].is_string());
    let listed = control(&h, "GET", "faults", &json!(null)).await.json();
    assert_eq!(listed["faults"], json!([]), "spent faults are removed");
}

#[tokio::test]
async fn reset_truncate_bad_json_and_delay() {
    let h = start_default().await;
    let tok = graph_token(&h, "a@contoso.com");
    let p = url(&h, &format!("{GRAPH}/me/mailFolders"));
    let auth = format!("Bearer {tok}");
    control(
        &h,
        "POST",
        "faults",
        &json!({"route": "mailFolders", "kind": "reset", "count": 1}),
    )
    .await;
    assert!(
        send("GET", &p, &[("Authorization", &auth)], vec![])
            .await
            .is_err(),
        "reset"
    );
    control(
        &h,
        "POST",
        "faults",
        &json!({"route": "mailFolders", "kind": "truncate", "count": 1}),
    )
    .await;
    assert!(
        send("GET", &p, &[("Authorization", &auth)], vec![])
            .await
            .is_err(),
        "truncated body"
    );
    control(
        &h,
        "POST",
        "faults",
        &json!({"route": "mailFolders", "kind": "bad_json", "count": 1}),
    )
    .await;
    let r = send("GET", &p, &[("Authorization", &auth)], vec![])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(serde_json::from_slice::<serde_json::Value>(&r.body).is_err());
    control(
        &h,
        "POST",
        "faults",
        &json!({"route": "mailFolders", "kind": "delay", "delay_ms": 50, "count": 1}),
    )
    .await;
    assert_eq!(
        send("GET", &p, &[("Authorization", &auth)], vec![])
            .await
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        send("GET", &p, &[("Authorization", &auth)], vec![])
            .await
            .unwrap()
            .status,
        200,
        "faults spent"
    );
    let stats = control(&h, "GET", "stats", &json!(null)).await.json();
    assert_eq!(stats["faults_fired"], json!(4));
}

#[tokio::test]
async fn probability_is_seeded_and_delete_clears() {
    let run = || async {
        let h = start(Options {
            seed: 42,
            ..Options::default()
        })
        .await;
        let tok = graph_token(&h, "a@contoso.com");
        control(
            &h,
            "POST",
            "faults",
            &json!({"route": "/me", "kind": "status", "status": 500, "probability": 0.5}),
        )
        .await;
        let mut out = Vec::new();
        for _ in 0..30 {
            out.push(get(&h, &format!("{GRAPH}/me"), &tok, &[]).await.status);
        }
        control(&h, "DELETE", "faults", &json!(null)).await;
        assert_eq!(get(&h, &format!("{GRAPH}/me"), &tok, &[]).await.status, 200);
        out
    };
    let a = run().await;
    let b = run().await;
    assert_eq!(a, b, "same seed, same faults");
    assert!(a.contains(&500) && a.contains(&200));
}

#[tokio::test]
async fn cli_faults_are_installed_at_start() {
    let faults = fake_cloud::faults::parse_cli(
        "route=/gmail.googleapis.com/*,kind=status,status=500,count=1",
    )
    .unwrap();
    let h = start(Options {
        faults,
        ..Options::default()
    })
    .await;
    let tok = gmail_token(&h, "g@gmail.com");
    let r = get(&h, &format!("{GMAIL}/profile"), &tok, &[]).await;
    assert_eq!(r.status, 500);
    assert_eq!(
        r.json()["error"]["errors"][0]["reason"],
        json!("backendError")
    );
    assert_eq!(
        get(&h, &format!("{GMAIL}/profile"), &tok, &[]).await.status,
        200
    );
}

#[tokio::test]
async fn populate_is_deterministic_and_realistic() {
    let dump = |seed| async move {
        let h = start(Options {
            seed,
            ..Options::default()
        })
        .await;
        populate(&h, "a@contoso.com", "o365", "inbox", 60).await;
        let r = send(
            "GET",
            &url(&h, "/_control/mailbox?user=a@contoso.com&raw=1"),
            &[],
            vec![],
        )
        .await
        .unwrap();
        r.json()
    };
    let a = dump(7).await;
    let b = dump(7).await;
    let subjects = |v: &serde_json::Value| {
        v["o365"]["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["subject"].clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(subjects(&a), subjects(&b));
    let msgs = a["o365"]["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 60);
    use base64::Engine;
    let raws: Vec<String> = msgs
        .iter()
        .map(|m| {
            String::from_utf8_lossy(
                &base64::engine::general_purpose::STANDARD
                    .decode(m["raw"].as_str().unwrap())
                    .unwrap(),
            )
            .to_string()
        })
        .collect();
    assert!(raws.iter().any(|r| r.contains("List-Id:")));
    assert!(raws.iter().any(|r| r.contains("In-Reply-To:")));
    assert!(raws.iter().any(|r| r.contains("=?UTF-8?B?")));
    assert!(raws.iter().any(|r| r.contains("multipart/mixed")));
}

#[tokio::test]
async fn error_with_status_200() {
    let h = start_default().await;
    let tok = graph_token(&h, "a@contoso.com");
    control(
        &h,
        "POST",
        "faults",
        &json!({"route": "/me/mailFolders", "kind": "error200", "status": 503, "count": 1}),
    )
    .await;
    let r = get(&h, &format!("{GRAPH}/me/mailFolders"), &tok, &[]).await;
    assert_eq!(r.status, 200);
    assert!(r.json()["error"]["code"].is_string());
}
