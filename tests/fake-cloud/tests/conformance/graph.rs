//! Graph mail conformance: folders, listing, `$value`, PATCH, move, delete, create,
//! `$batch` and delta.

use std::collections::HashSet;

use base64::Engine;
use serde_json::{Value, json};

use crate::util::*;

const IMM: (&str, &str) = ("Prefer", "IdType=\"ImmutableId\"");
const CMS_LIST: &str = "?$select=internetMessageId,isRead,Flag,receivedDateTime,singleValueExtendedProperties&$expand=SingleValueExtendedProperties($filter=(id%20eq%20'Integer%200xe17')%20or%20(id%20eq%20'Integer%200x1080'))&$top=500";

async fn inbox_id(h: &fake_cloud::Handle, tok: &str) -> String {
    let r = get(
        h,
        &format!("{GRAPH}/me/mailFolders?$filter=displayName%20eq%20'Inbox'"),
        tok,
        &[],
    )
    .await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["value"].as_array().unwrap().len(), 1);
    v["value"][0]["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn folder_lookup_by_display_name_and_child_folders() {
    let h = start_default().await;
    let tok = graph_token(&h, "a@contoso.com");
    populate(&h, "a@contoso.com", "o365", "Inbox/Lists/Kernel", 1).await;
    let inbox = inbox_id(&h, &tok).await;
    let r = get(
        &h,
        &format!("{GRAPH}/me/mailFolders/{inbox}/childFolders?$filter=displayName%20eq%20'Lists'"),
        &tok,
        &[],
    )
    .await;
    let v = r.json();
    assert_eq!(v["value"].as_array().unwrap().len(), 1);
    let lists = v["value"][0]["id"].as_str().unwrap();
    let r = get(
        &h,
        &format!("{GRAPH}/me/mailFolders/{lists}/childFolders?$filter=displayName%20eq%20'Kernel'"),
        &tok,
        &[],
    )
    .await;
    assert_eq!(r.json()["value"][0]["totalItemCount"], 1);
    // No match: still an array.
    let r = get(
        &h,
        &format!("{GRAPH}/me/mailFolders?$filter=displayName%20eq%20'Nope'"),
        &tok,
        &[],
    )
    .await;
    assert_eq!(r.json()["value"], json!([]));
    // /me/mailFolders lists only root children, 10 per page, with nextLink.
    let r = get(&h, &format!("{GRAPH}/me/mailFolders"), &tok, &[]).await;
    let v = r.json();
    let names: Vec<&str> = v["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["displayName"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"Inbox") && names.contains(&"Archive"));
    assert!(
        !names.contains(&"Sync Issues"),
        "hidden folders need includeHiddenFolders"
    );
    // Well-known names stand in for ids.
    let r = get(&h, &format!("{GRAPH}/me/mailFolders/inbox"), &tok, &[]).await;
    assert_eq!(r.json()["id"], json!(inbox));
}

#[tokio::test]
async fn list_paging_covers_the_set_exactly() {
    let h = start_default().await;
    let tok = graph_token(&h, "a@contoso.com");
    let ids = populate(&h, "a@contoso.com", "o365", "inbox", 37).await;
    let mut seen = Vec::new();
    let mut next = Some(url(
        &h,
        &format!("{GRAPH}/me/mailFolders/inbox/messages?$select=isRead&$top=5"),
    ));
    let mut pages = 0;
    while let Some(u) = next {
        assert!(
            u.starts_with(h.base_url()),
            "nextLink must be absolute: {u}"
        );
        let r = get(&h, &u, &tok, &[IMM]).await;
        assert_eq!(r.status, 200);
        let v = r.json();
        for m in v["value"].as_array().unwrap() {
            seen.push(m["id"].as_str().unwrap().to_string());
            assert!(m.get("subject").is_none(), "$select limits fields");
        }
        next = v["@odata.nextLink"].as_str().map(str::to_string);
        pages += 1;
    }
    assert_eq!(pages, 8);
    let set: HashSet<_> = seen.iter().cloned().collect();
    assert_eq!(seen.len(), 37, "no duplicates");
    assert_eq!(set, ids.into_iter().collect::<HashSet<_>>(), "no gaps");
    // $top out of range is refused.
    assert_eq!(
        get(
            &h,
            &format!("{GRAPH}/me/mailFolders/inbox/messages?$top=1001"),
            &tok,
            &[]
        )
        .await
        .status,
        400
    );
    // Default page is 10.
    let r = get(
        &h,
        &format!("{GRAPH}/me/mailFolders/inbox/messages"),
        &tok,
        &[],
    )
    .await;
    assert_eq!(r.json()["value"].as_array().unwrap().len(), 10);
}

#[tokio::test]
async fn cms_select_and_expand_are_case_insensitive() {
    let h = start_default().await;
    let tok = graph_token(&h, "a@contoso.com");
    populate(&h, "a@contoso.com", "o365", "inbox", 20).await;
    let r = get(
        &h,
        &format!("{GRAPH}/me/mailFolders/inbox/messages{CMS_LIST}"),
        &tok,
        &[IMM],
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    let items = v["value"].as_array().unwrap();
    assert_eq!(items.len(), 20);
    for m in items {
        assert!(m["flag"]["flagStatus"].is_string());
        let t = m["receivedDateTime"].as_str().unwrap();
        assert!(
            chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%SZ").is_ok(),
            "{t}"
        );
        if let Some(props) = m["singleValueExtendedProperties"].as_array() {
            for p in props {
                assert!(p["value"].is_string());
                assert!(["Integer 0xe17", "Integer 0x1080"].contains(&p["id"].as_str().unwrap()));
            }
        }
    }
    let r = get(
        &h,
        &format!("{GRAPH}/me/mailFolders/inbox/messages?$select=bogusProp"),
        &tok,
        &[],
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]["code"].is_string());
}

#[tokio::test]
async fn value_is_mime_with_crlf() {
    let h = start_default().await;
    let tok = graph_token(&h, "a@contoso.com");
    let id = control(
        &h,
        "POST",
        "deliver",
        &json!({"user": "a@contoso.com", "raw": "From: x@y\nSubject: hi\n\nline1\nline2\n"}),
    )
    .await
    .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = get(&h, &format!("{GRAPH}/me/messages/{id}/$value"), &tok, &[]).await;
    assert_eq!(r.status, 200);
    let body = String::from_utf8(r.body.to_vec()).unwrap();
    assert_eq!(body, "From: x@y\r\nSubject: hi\r\n\r\nline1\r\nline2\r\n");
    let r = get(&h, &format!("{GRAPH}/me/messages/{id}/%24value"), &tok, &[]).await;
    assert_eq!(r.status, 200, "percent-encoded $value");
    // The folder-scoped form is refused (observed 405).
    let r = get(
        &h,
        &format!("{GRAPH}/me/mailFolders/inbox/messages/{id}/$value"),
        &tok,
        &[],
    )
    .await;
    assert_eq!(r.status, 405);
}

#[tokio::test]
async fn patch_move_delete_and_ids() {
    let h = start_default().await;
    let tok = graph_token(&h, "a@contoso.com");
    let ids = populate(&h, "a@contoso.com", "o365", "inbox", 3).await;
    let imm = &ids[0];
    // PATCH returns 200 and the message, without the extended properties.
    let body = json!({"singleValueExtendedProperties": [{"id": "Integer 0x1081", "value": "103"}, {"id": "SystemTime 0x1082", "value": "2025-01-01T00:00:00Z"}, {"id": "Integer 0x1080", "value": "261"}]});
    let r = json_req(
        &h,
        "PATCH",
        &format!("{GRAPH}/me/messages/{imm}"),
        &tok,
        &body,
        &[IMM],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["id"], json!(imm));
    assert!(r.json().get("singleValueExtendedProperties").is_none());
    let r = json_req(
        &h,
        "PATCH",
        &format!("{GRAPH}/me/messages/{imm}"),
        &tok,
        &json!({"isRead": true, "flag": {"flagStatus": "flagged"}}),
        &[IMM],
    )
    .await;
    assert_eq!(r.json()["isRead"], json!(true));
    assert_eq!(r.json()["flag"]["flagStatus"], json!("flagged"));
    let r = json_req(&h, "PATCH", &format!("{GRAPH}/me/messages/{imm}"), &tok, &json!({"flag": {"flagStatus": "flagged", "dueDateTime": {"dateTime": "2025-01-01T00:00:00", "timeZone": "UTC"}}}), &[]).await;
    assert_eq!(r.status, 400, "dueDateTime without startDateTime");
    let r = json_req(
        &h,
        "PATCH",
        &format!("{GRAPH}/me/messages/{imm}"),
        &tok,
        &json!({"isRead": "yes"}),
        &[],
    )
    .await;
    assert_eq!(r.status, 400);
    let r = get(&h, &format!("{GRAPH}/me/messages/{imm}?$expand=singleValueExtendedProperties($filter=id%20eq%20'Integer%200x1080')"), &tok, &[]).await;
    assert_eq!(
        r.json()["singleValueExtendedProperties"][0]["value"],
        json!("261")
    );
    // Without the Prefer header ids are REST ids that change on move.
    let rest = get(&h, &format!("{GRAPH}/me/messages/{imm}"), &tok, &[])
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(&rest, imm);
    let r = json_req(
        &h,
        "POST",
        &format!("{GRAPH}/me/messages/{rest}/move"),
        &tok,
        &json!({"destinationId": "archive"}),
        &[],
    )
    .await;
    assert_eq!(r.status, 201);
    let new_rest = r.json()["id"].as_str().unwrap().to_string();
    assert_ne!(new_rest, rest);
    assert_eq!(
        get(&h, &format!("{GRAPH}/me/messages/{rest}"), &tok, &[])
            .await
            .status,
        404,
        "old REST id is stale"
    );
    // With ImmutableId the id survives the move.
    let r = json_req(
        &h,
        "POST",
        &format!("{GRAPH}/me/messages/{imm}/move"),
        &tok,
        &json!({"destinationId": "deleteditems"}),
        &[IMM],
    )
    .await;
    assert_eq!(r.status, 201);
    assert_eq!(r.json()["id"], json!(imm));
    // Delete: 204, empty.
    let r = send(
        "DELETE",
        &url(&h, &format!("{GRAPH}/me/messages/{}", ids[1])),
        &[("Authorization", &format!("Bearer {tok}"))],
        vec![],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 204);
    assert!(r.body.is_empty());
    assert_eq!(
        get(
            &h,
            &format!("{GRAPH}/me/mailFolders/inbox/messages"),
            &tok,
            &[]
        )
        .await
        .json()["value"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn create_message_from_mime() {
    let h = start_default().await;
    let tok = graph_token(&h, "a@contoso.com");
    let mime = base64::engine::general_purpose::STANDARD
        .encode("From: b@x\r\nSubject: delivered\r\nMessage-ID: <m1@x>\r\n\r\nhello\r\n");
    let r = send(
        "POST",
        &url(&h, &format!("{GRAPH}/me/mailFolders/inbox/messages")),
        &[
            ("Authorization", &format!("Bearer {tok}")),
            ("Content-Type", "text/plain"),
        ],
        mime.into_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 201);
    assert_eq!(r.json()["internetMessageId"], json!("<m1@x>"));
    let r = send(
        "POST",
        &url(&h, &format!("{GRAPH}/me/mailFolders/inbox/messages")),
        &[
            ("Authorization", &format!("Bearer {tok}")),
            ("Content-Type", "text/plain"),
        ],
        b"not base64 !!".to_vec(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["error"]["code"],
        json!("ErrorMimeContentInvalidBase64String")
    );
}

#[tokio::test]
async fn batch_limits_statuses_and_dependencies() {
    let h = start_default().await;
    let tok = graph_token(&h, "a@contoso.com");
    let ids = populate(&h, "a@contoso.com", "o365", "inbox", 3).await;
    let reqs: Vec<Value> = (0..21)
        .map(|i| json!({"id": i.to_string(), "method": "GET", "url": "/me/mailFolders/inbox"}))
        .collect();
    let r = json_req(
        &h,
        "POST",
        &format!("{GRAPH}/$batch"),
        &tok,
        &json!({"requests": reqs}),
        &[],
    )
    .await;
    assert_eq!(r.status, 400, "more than 20 requests");
    let dup = json!({"requests": [{"id": "a", "method": "GET", "url": "/me"}, {"id": "A", "method": "GET", "url": "/me"}]});
    assert_eq!(
        json_req(&h, "POST", &format!("{GRAPH}/$batch"), &tok, &dup, &[])
            .await
            .status,
        400,
        "ids are case-insensitive and unique"
    );
    let nobody = json!({"requests": [{"id": "1", "method": "PATCH", "url": format!("/me/messages/{}", ids[0]), "body": {"isRead": true}}]});
    assert_eq!(
        json_req(&h, "POST", &format!("{GRAPH}/$batch"), &tok, &nobody, &[])
            .await
            .status,
        400,
        "body needs Content-Type"
    );
    let ct = json!({"Content-Type": "application/json"});
    let b = json!({"requests": [
        {"id": "1", "method": "PATCH", "url": format!("/me/messages/{}", ids[0]), "headers": ct, "body": {"isRead": true}},
        {"id": "2", "method": "GET", "url": "/me/messages/AAMkAdoesnotexist"},
        {"id": "3", "method": "POST", "url": format!("/me/messages/{}/move", ids[1]), "headers": ct, "body": {"destinationId": "archive"}},
    ]});
    let r = json_req(&h, "POST", &format!("{GRAPH}/$batch"), &tok, &b, &[]).await;
    assert_eq!(r.status, 200);
    let resp = r.json()["responses"].as_array().unwrap().clone();
    let by_id = |id: &str| resp.iter().find(|x| x["id"] == json!(id)).unwrap().clone();
    assert_eq!(by_id("1")["status"], 200);
    assert_eq!(by_id("2")["status"], 404);
    assert_eq!(
        by_id("2")["body"]["error"]["code"],
        json!("ErrorItemNotFound")
    );
    assert_eq!(by_id("3")["status"], 201);
    let dep = json!({"requests": [
        {"id": "1", "method": "GET", "url": "/me/messages/nope"},
        {"id": "2", "method": "GET", "url": "/me/mailFolders/inbox", "dependsOn": ["1"]},
    ]});
    let r = json_req(&h, "POST", &format!("{GRAPH}/$batch"), &tok, &dep, &[]).await;
    let resp = r.json()["responses"].as_array().unwrap().clone();
    assert_eq!(
        resp.iter().find(|x| x["id"] == json!("2")).unwrap()["status"],
        424
    );
}

async fn delta_round(
    h: &fake_cloud::Handle,
    tok: &str,
    start: &str,
    page: &str,
) -> (Vec<Value>, String, usize) {
    let mut items = Vec::new();
    let mut u = start.to_string();
    let mut pages = 0;
    loop {
        let r = get(h, &u, tok, &[IMM, ("Prefer", page)]).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let v = r.json();
        pages += 1;
        items.extend(v["value"].as_array().unwrap().iter().cloned());
        let next = v["@odata.nextLink"].as_str();
        let delta = v["@odata.deltaLink"].as_str();
        assert!(
            next.is_some() != delta.is_some(),
            "exactly one of nextLink/deltaLink"
        );
        if let Some(n) = next {
            assert!(n.contains("$skiptoken="));
            u = n.to_string();
        } else {
            let d = delta.unwrap();
            assert!(d.contains("$deltatoken=") && d.starts_with(h.base_url()));
            return (items, d.to_string(), pages);
        }
    }
}

#[tokio::test]
async fn delta_reports_exactly_the_changes() {
    let h = start_default().await;
    let tok = graph_token(&h, "a@contoso.com");
    let ids = populate(&h, "a@contoso.com", "o365", "inbox", 12).await;
    let start = url(
        &h,
        &format!("{GRAPH}/me/mailFolders/inbox/messages/delta?$select=isRead,flag"),
    );
    let (items, delta, pages) = delta_round(&h, &tok, &start, "odata.maxpagesize=5").await;
    assert_eq!(pages, 3);
    assert_eq!(
        items
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_string())
            .collect::<HashSet<_>>(),
        ids.iter().cloned().collect()
    );
    // Nothing changed: empty round.
    let (items, delta, _) = delta_round(&h, &tok, &delta, "odata.maxpagesize=5").await;
    assert!(items.is_empty());
    // Archive's own delta baseline.
    let astart = url(
        &h,
        &format!("{GRAPH}/me/mailFolders/archive/messages/delta?$select=isRead"),
    );
    let (_, adelta, _) = delta_round(&h, &tok, &astart, "odata.maxpagesize=5").await;
    // Flag one, move one, delete one.
    json_req(
        &h,
        "PATCH",
        &format!("{GRAPH}/me/messages/{}", ids[0]),
        &tok,
        &json!({"flag": {"flagStatus": "flagged"}}),
        &[],
    )
    .await;
    json_req(
        &h,
        "POST",
        &format!("{GRAPH}/me/messages/{}/move", ids[1]),
        &tok,
        &json!({"destinationId": "archive"}),
        &[],
    )
    .await;
    send(
        "DELETE",
        &url(&h, &format!("{GRAPH}/me/messages/{}", ids[2])),
        &[("Authorization", &format!("Bearer {tok}"))],
        vec![],
    )
    .await
    .unwrap();
    let (items, _, _) = delta_round(&h, &tok, &delta, "odata.maxpagesize=2").await;
    assert_eq!(items.len(), 3, "{items:?}");
    let find = |id: &str| {
        items
            .iter()
            .find(|i| i["id"] == json!(id))
            .cloned()
            .unwrap()
    };
    assert_eq!(find(&ids[0])["flag"]["flagStatus"], json!("flagged"));
    assert!(find(&ids[0]).get("@removed").is_none());
    assert_eq!(find(&ids[1])["@removed"]["reason"], json!("deleted"));
    assert_eq!(find(&ids[2])["@removed"]["reason"], json!("deleted"));
    let (aitems, _, _) = delta_round(&h, &tok, &adelta, "odata.maxpagesize=5").await;
    assert_eq!(aitems.len(), 1);
    assert_eq!(aitems[0]["id"], json!(ids[1]));
    assert!(aitems[0].get("@removed").is_none());
}

#[tokio::test]
async fn expired_delta_tokens_are_refused() {
    let h = start_default().await;
    let tok = graph_token(&h, "a@contoso.com");
    populate(&h, "a@contoso.com", "o365", "inbox", 3).await;
    let start = url(&h, &format!("{GRAPH}/me/mailFolders/inbox/messages/delta"));
    let (_, delta, _) = delta_round(&h, &tok, &start, "odata.maxpagesize=10").await;
    let r = control(
        &h,
        "POST",
        "expire-delta",
        &json!({"user": "a@contoso.com"}),
    )
    .await;
    assert_eq!(r.status, 200);
    let r = get(&h, &delta, &tok, &[]).await;
    assert_eq!(r.status, 410);
    assert_eq!(r.json()["error"]["code"], json!("SyncStateNotFound"));
    assert!(r.header("location").unwrap().contains("/messages/delta"));
    // The 400 form.
    let (_, delta, _) = delta_round(&h, &tok, &start, "odata.maxpagesize=10").await;
    control(
        &h,
        "POST",
        "expire-delta",
        &json!({"user": "a@contoso.com", "mode": "400"}),
    )
    .await;
    let r = get(&h, &delta, &tok, &[]).await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["error"]["code"]
            .as_str()
            .unwrap()
            .to_ascii_lowercase(),
        "syncstatenotfound"
    );
    // Unknown tokens.
    let r = get(
        &h,
        &format!("{GRAPH}/me/mailFolders/inbox/messages/delta?$deltatoken=garbage"),
        &tok,
        &[],
    )
    .await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn tokens_for_wrong_audience_or_expired_get_401() {
    let h = start_default().await;
    let outlook = h.mint_token("a@contoso.com", "outlook", &[]).unwrap();
    let r = get(&h, &format!("{GRAPH}/me/mailFolders"), &outlook, &[]).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.json()["error"]["code"],
        json!("InvalidAuthenticationToken")
    );
    let tok = graph_token(&h, "a@contoso.com");
    assert_eq!(
        get(&h, &format!("{GRAPH}/me/mailFolders"), &tok, &[])
            .await
            .status,
        200
    );
    control(&h, "POST", "clock", &json!({"advance_secs": 4000})).await;
    let r = get(&h, &format!("{GRAPH}/me/mailFolders"), &tok, &[]).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.json()["error"]["code"],
        json!("InvalidAuthenticationToken")
    );
    let read_only = h
        .mint_token("a@contoso.com", "graph", &["Mail.Read"])
        .unwrap();
    let r = json_req(
        &h,
        "PATCH",
        &format!("{GRAPH}/me/messages/x"),
        &read_only,
        &json!({"isRead": true}),
        &[],
    )
    .await;
    assert_eq!(r.status, 403);
}

#[tokio::test]
async fn deleting_a_folder_moves_it_to_deleted_items_then_removes_it() {
    let h = start_default().await;
    let user = "a@contoso.com";
    let tok = graph_token(&h, user);
    populate(&h, user, "o365", "Projects", 2).await;
    let r = get(
        &h,
        &format!("{GRAPH}/me/mailFolders?$filter=displayName%20eq%20'Projects'"),
        &tok,
        &[],
    )
    .await;
    let id = r.json()["value"][0]["id"].as_str().unwrap().to_string();
    let delete = |what: String| {
        let auth = format!("Bearer {tok}");
        let u = url(&h, &format!("{GRAPH}/me/mailFolders/{what}"));
        async move {
            send("DELETE", &u, &[("Authorization", &auth)], vec![])
                .await
                .unwrap()
        }
    };
    // A well-known folder cannot be deleted.
    let r = delete("inbox".into()).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], "ErrorDeleteDistinguishedFolder");
    // First delete: it lives on under Deleted Items, same id, same messages.
    assert_eq!(delete(id.clone()).await.status, 204);
    let f = get(&h, &format!("{GRAPH}/me/mailFolders/{id}"), &tok, &[]).await;
    assert_eq!(f.status, 200);
    let trash = get(
        &h,
        &format!("{GRAPH}/me/mailFolders/deleteditems"),
        &tok,
        &[],
    )
    .await;
    assert_eq!(f.json()["parentFolderId"], trash.json()["id"]);
    assert_eq!(f.json()["totalItemCount"], 2);
    let top = get(
        &h,
        &format!("{GRAPH}/me/mailFolders?$filter=displayName%20eq%20'Projects'"),
        &tok,
        &[],
    )
    .await;
    assert_eq!(top.json()["value"], json!([]));
    // Second delete, from Deleted Items: gone, and so are its messages.
    assert_eq!(delete(id.clone()).await.status, 204);
    let f = get(&h, &format!("{GRAPH}/me/mailFolders/{id}"), &tok, &[]).await;
    assert_eq!(f.status, 404);
    assert_eq!(f.json()["error"]["code"], "ErrorItemNotFound");
    let d = get(
        &h,
        &format!("{GRAPH}/me/mailFolders/{id}/messages/delta"),
        &tok,
        &[],
    )
    .await;
    assert_eq!(d.status, 404);
    assert_eq!(delete(id).await.status, 404);
}
