//! XOAUTH2 on the SMTP and IMAP listeners (§6 item 10).

use base64::Engine;
use fake_cloud::Options;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::util::*;

fn sasl(user: &str, tok: &str) -> String {
    base64::engine::general_purpose::STANDARD
        .encode(format!("user={user}\x01auth=Bearer {tok}\x01\x01"))
}

async fn talk(addr: std::net::SocketAddr, lines: &[String]) -> Vec<String> {
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (r, mut w) = s.into_split();
    let mut r = BufReader::new(r).lines();
    let mut out = vec![r.next_line().await.unwrap().unwrap()];
    for l in lines {
        w.write_all(format!("{l}\r\n").as_bytes()).await.unwrap();
        loop {
            let got = r.next_line().await.unwrap().unwrap();
            let done =
                !got.starts_with("250-") && !got.starts_with("535-") && !got.starts_with("* ");
            out.push(got);
            if done {
                break;
            }
        }
    }
    out
}

#[tokio::test]
async fn smtp_and_imap_accept_only_valid_xoauth2() {
    let any = "127.0.0.1:0".parse().ok();
    let h = start(Options {
        smtp_listen: any,
        imap_listen: any,
        ..Options::default()
    })
    .await;
    let smtp = h.smtp_addr().unwrap();
    let imap = h.imap_addr().unwrap();
    let ms = h.mint_token("u@contoso.com", "outlook", &[]).unwrap();
    let out = talk(
        smtp,
        &[
            "EHLO me".into(),
            format!("AUTH XOAUTH2 {}", sasl("u@contoso.com", &ms)),
        ],
    )
    .await;
    assert!(out.last().unwrap().starts_with("235"), "{out:?}");
    let out = talk(
        smtp,
        &[
            "EHLO me".into(),
            format!("AUTH XOAUTH2 {}", sasl("other@contoso.com", &ms)),
        ],
    )
    .await;
    assert!(out.last().unwrap().starts_with("535"), "{out:?}");
    // Google: challenge first, then 535 after the empty line.
    let g = h
        .mint_token(
            "g@gmail.com",
            "gmail",
            &["https://www.googleapis.com/auth/gmail.modify"],
        )
        .unwrap();
    let out = talk(
        smtp,
        &[
            "EHLO me".into(),
            format!("AUTH XOAUTH2 {}", sasl("g@gmail.com", &g)),
            String::new(),
        ],
    )
    .await;
    assert!(out.iter().any(|l| l.starts_with("334 ")), "{out:?}");
    assert!(out.last().unwrap().starts_with("535"));
    let gf = h
        .mint_token("g@gmail.com", "gmail", &["https://mail.google.com/"])
        .unwrap();
    let out = talk(
        imap,
        &[format!(
            "a1 AUTHENTICATE XOAUTH2 {}",
            sasl("g@gmail.com", &gf)
        )],
    )
    .await;
    assert!(out.last().unwrap().starts_with("a1 OK"), "{out:?}");
    let imap_ms = h
        .mint_token(
            "u@contoso.com",
            "outlook",
            &["https://outlook.office.com/IMAP.AccessAsUser.All"],
        )
        .unwrap();
    let out = talk(
        imap,
        &[format!(
            "a1 AUTHENTICATE XOAUTH2 {}",
            sasl("u@contoso.com", &imap_ms)
        )],
    )
    .await;
    assert!(out.last().unwrap().starts_with("a1 OK"), "{out:?}");
    let smtp_only = h
        .mint_token(
            "u@contoso.com",
            "outlook",
            &["https://outlook.office.com/SMTP.Send"],
        )
        .unwrap();
    let out = talk(
        imap,
        &[format!(
            "a2 AUTHENTICATE XOAUTH2 {}",
            sasl("u@contoso.com", &smtp_only)
        )],
    )
    .await;
    assert!(
        out.last().unwrap().starts_with("a2 NO"),
        "SMTP-only token on IMAP: {out:?}"
    );
    let _ = url(&h, "/");
}
