//! Gmail conformance: profile, labels, list paging, get formats, modify, batchModify,
//! history, scopes and the batch endpoint.

use std::collections::HashSet;

use base64::Engine;
use serde_json::json;

use crate::util::*;

#[tokio::test]
async fn profile_labels_and_list_paging() {
    let h = start_default().await;
    let tok = gmail_token(&h, "g@gmail.com");
    let r = get(&h, &format!("{GMAIL}/profile"), &tok, &[]).await;
    assert_eq!(r.status, 200);
    assert!(r.json()["historyId"].is_string());
    // Empty mailbox: no `messages` key.
    let r = get(&h, &format!("{GMAIL}/messages?labelIds=INBOX"), &tok, &[]).await;
    assert_eq!(r.json(), json!({"resultSizeEstimate": 0}));
    let ids = populate(&h, "g@gmail.com", "gmail", "INBOX", 23).await;
    populate(&h, "g@gmail.com", "gmail", "Lists", 4).await;
    let labels = get(&h, &format!("{GMAIL}/labels"), &tok, &[]).await.json();
    let user = labels["labels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == json!("Lists"))
        .unwrap()
        .clone();
    assert!(user["id"].as_str().unwrap().starts_with("Label_"));
    assert_eq!(user["type"], json!("user"));
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut p = format!("{GMAIL}/messages?labelIds=INBOX&maxResults=5");
        if let Some(t) = &token {
            p.push_str(&format!("&pageToken={t}"));
        }
        let v = get(&h, &p, &tok, &[]).await.json();
        for m in v["messages"].as_array().unwrap() {
            seen.push(m["id"].as_str().unwrap().to_string());
            assert!(m["threadId"].is_string());
        }
        match v["nextPageToken"].as_str() {
            Some(t) => token = Some(t.to_string()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 23);
    assert_eq!(
        seen.into_iter().collect::<HashSet<_>>(),
        ids.into_iter().collect::<HashSet<_>>()
    );
    let r = json_req(
        &h,
        "POST",
        &format!("{GMAIL}/labels"),
        &tok,
        &json!({"name": "Lists"}),
        &[],
    )
    .await;
    assert_eq!(r.status, 409);
}

#[tokio::test]
async fn get_formats_raw_metadata_minimal() {
    let h = start_default().await;
    let tok = gmail_token(&h, "g@gmail.com");
    let id = control(&h, "POST", "deliver", &json!({"user": "g@gmail.com", "service": "gmail", "raw": "From: a@b\nMessage-ID: <x1@b>\nSubject: s\n\nbody?\n"})).await.json()["id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 16);
    let v = get(&h, &format!("{GMAIL}/messages/{id}?format=raw"), &tok, &[])
        .await
        .json();
    let raw = v["raw"].as_str().unwrap();
    assert!(!raw.contains('+') && !raw.contains('/'));
    assert_eq!(raw.len() % 4, 0, "padded base64url");
    let bytes = base64::engine::general_purpose::URL_SAFE
        .decode(raw)
        .unwrap();
    assert_eq!(
        bytes,
        b"From: a@b\r\nMessage-ID: <x1@b>\r\nSubject: s\r\n\r\nbody?\r\n"
    );
    assert!(v.get("payload").is_none());
    assert!(v["internalDate"].is_string() && v["historyId"].is_string());
    let v = get(
        &h,
        &format!("{GMAIL}/messages/{id}?format=metadata&metadataHeaders=message-id"),
        &tok,
        &[],
    )
    .await
    .json();
    assert_eq!(
        v["payload"]["headers"],
        json!([{"name": "Message-ID", "value": "<x1@b>"}])
    );
    assert_eq!(v["labelIds"], json!(["INBOX", "UNREAD"]));
    let v = get(
        &h,
        &format!("{GMAIL}/messages/{id}?format=minimal"),
        &tok,
        &[],
    )
    .await
    .json();
    assert!(v.get("payload").is_none() && v.get("raw").is_none());
    let v = get(&h, &format!("{GMAIL}/messages/{id}"), &tok, &[])
        .await
        .json();
    assert_eq!(v["payload"]["mimeType"], json!("text/plain"));
    assert_eq!(
        get(&h, &format!("{GMAIL}/messages/0123456789abcdef"), &tok, &[])
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn history_changes_filters_and_expiry() {
    let h = start_default().await;
    let tok = gmail_token(&h, "g@gmail.com");
    let ids = populate(&h, "g@gmail.com", "gmail", "INBOX", 5).await;
    let hid = get(&h, &format!("{GMAIL}/profile"), &tok, &[]).await.json()["historyId"]
        .as_str()
        .unwrap()
        .to_string();
    let r = get(
        &h,
        &format!("{GMAIL}/history?startHistoryId={hid}&labelId=INBOX"),
        &tok,
        &[],
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(
        r.json().get("history").is_none(),
        "no history key when nothing changed"
    );
    assert_eq!(r.json()["historyId"], json!(hid));
    // batchModify: empty 204.
    let r = json_req(
        &h,
        "POST",
        &format!("{GMAIL}/messages/batchModify"),
        &tok,
        &json!({"ids": [ids[0], ids[1]], "removeLabelIds": ["INBOX"]}),
        &[],
    )
    .await;
    assert_eq!(r.status, 204);
    assert!(r.body.is_empty());
    let r = json_req(
        &h,
        "POST",
        &format!("{GMAIL}/messages/{}/modify", ids[2]),
        &tok,
        &json!({"addLabelIds": ["STARRED"]}),
        &[],
    )
    .await;
    assert_eq!(r.status, 200);
    let v = get(
        &h,
        &format!("{GMAIL}/history?startHistoryId={hid}&labelId=INBOX&historyTypes=labelRemoved"),
        &tok,
        &[],
    )
    .await
    .json();
    let recs = v["history"].as_array().unwrap();
    assert_eq!(recs.len(), 2);
    for rec in recs {
        assert_eq!(rec["labelsRemoved"][0]["labelIds"], json!(["INBOX"]));
        assert!(rec.get("labelsAdded").is_none());
    }
    let v = get(
        &h,
        &format!("{GMAIL}/history?startHistoryId={hid}"),
        &tok,
        &[],
    )
    .await
    .json();
    let all = v["history"].as_array().unwrap();
    assert_eq!(all.len(), 3);
    let hids: Vec<u64> = all
        .iter()
        .map(|r| r["id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(hids.windows(2).all(|w| w[0] < w[1]));
    // Too old: 404 notFound.
    control(
        &h,
        "POST",
        "expire-history",
        &json!({"user": "g@gmail.com"}),
    )
    .await;
    let r = get(
        &h,
        &format!("{GMAIL}/history?startHistoryId={hid}"),
        &tok,
        &[],
    )
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["errors"][0]["reason"], json!("notFound"));
    let r = get(
        &h,
        &format!("{GMAIL}/history?startHistoryId=abc"),
        &tok,
        &[],
    )
    .await;
    assert_eq!(r.status, 400);
    let many: Vec<String> = (0..1001).map(|i| format!("{i:016x}")).collect();
    let r = json_req(
        &h,
        "POST",
        &format!("{GMAIL}/messages/batchModify"),
        &tok,
        &json!({"ids": many, "addLabelIds": ["STARRED"]}),
        &[],
    )
    .await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn scopes_insert_trash_delete() {
    let h = start_default().await;
    let tok = gmail_token(&h, "g@gmail.com");
    let raw = base64::engine::general_purpose::URL_SAFE
        .encode("From: a@b\r\nSubject: ins\r\nDate: Mon, 01 Jan 2024 10:00:00 +0000\r\n\r\nx\r\n");
    let r = json_req(
        &h,
        "POST",
        &format!("{GMAIL}/messages/import"),
        &tok,
        &json!({"raw": raw, "labelIds": ["INBOX"]}),
        &[],
    )
    .await;
    assert_eq!(r.status, 200);
    let id = r.json()["id"].as_str().unwrap().to_string();
    let v = get(
        &h,
        &format!("{GMAIL}/messages/{id}?format=minimal"),
        &tok,
        &[],
    )
    .await
    .json();
    assert_eq!(
        v["internalDate"],
        json!("1704103200000"),
        "import uses the Date header"
    );
    let r = json_req(
        &h,
        "POST",
        &format!("{GMAIL}/messages/{id}/trash"),
        &tok,
        &json!({}),
        &[],
    )
    .await;
    assert!(
        r.json()["labelIds"]
            .as_array()
            .unwrap()
            .contains(&json!("TRASH"))
    );
    let r = send(
        "DELETE",
        &url(&h, &format!("{GMAIL}/messages/{id}")),
        &[("Authorization", &format!("Bearer {tok}"))],
        vec![],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 403, "delete needs https://mail.google.com/");
    let full = h
        .mint_token("g@gmail.com", "gmail", &["https://mail.google.com/"])
        .unwrap();
    let r = send(
        "DELETE",
        &url(&h, &format!("{GMAIL}/messages/{id}")),
        &[("Authorization", &format!("Bearer {full}"))],
        vec![],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 204);
    let graph = graph_token(&h, "g@gmail.com");
    let r = get(&h, &format!("{GMAIL}/profile"), &graph, &[]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["errors"][0]["reason"], json!("authError"));
    control(&h, "POST", "clock", &json!({"advance_secs": 4000})).await;
    assert_eq!(
        get(&h, &format!("{GMAIL}/profile"), &tok, &[]).await.status,
        401
    );
}

#[tokio::test]
async fn multipart_batch_endpoint() {
    let h = start_default().await;
    let tok = gmail_token(&h, "g@gmail.com");
    let ids = populate(&h, "g@gmail.com", "gmail", "INBOX", 2).await;
    let body = format!(
        "--b1\r\nContent-Type: application/http\r\nContent-ID: <item1>\r\n\r\nGET /gmail/v1/users/me/messages/{}?format=raw\r\n\r\n\r\n--b1\r\nContent-Type: application/http\r\nContent-ID: <item2>\r\n\r\nGET /gmail/v1/users/me/messages/ffffffffffffffff\r\n\r\n\r\n--b1--\r\n",
        ids[0]
    );
    for path in [
        "/gmail.googleapis.com/batch",
        "/www.googleapis.com/batch/gmail/v1",
    ] {
        let r = send(
            "POST",
            &url(&h, path),
            &[
                ("Authorization", &format!("Bearer {tok}")),
                ("Content-Type", "multipart/mixed; boundary=b1"),
            ],
            body.clone().into_bytes(),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200);
        let text = String::from_utf8_lossy(&r.body).to_string();
        assert!(
            r.header("content-type")
                .unwrap()
                .starts_with("multipart/mixed; boundary=")
        );
        assert!(
            text.contains("Content-ID: <response-item1>")
                && text.contains("Content-ID: <response-item2>")
        );
        assert!(text.contains("HTTP/1.1 200 OK") && text.contains("HTTP/1.1 404 Not Found"));
        assert!(text.contains("\"raw\""));
    }
}
