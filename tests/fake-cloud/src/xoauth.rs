//! Plain-text SMTP and IMAP listeners that accept only XOAUTH2 (`user=U\x01auth=Bearer
//! T\x01\x01`, base64), for testing the token broker. No TLS: STARTTLS is refused,
//! so a client must be pointed at them without it. Tokens must belong to the user
//! and carry the protocol scope (Outlook `SMTP.Send` / `IMAP.AccessAsUser.All`, or
//! Google `https://mail.google.com/`); Google-style failures send the JSON challenge
//! and wait for the client's empty line first.

use std::sync::Arc;

use base64::Engine;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::state::App;
use crate::tokens::{Audience, Provider};

/// Which protocol a listener speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// SMTP (AUTH XOAUTH2).
    Smtp,
    /// IMAP (AUTHENTICATE XOAUTH2).
    Imap,
}

/// Outcome of checking one XOAUTH2 initial response.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Accepted for this user.
    Ok(String),
    /// Refused; true when the token is a Google one (challenge first).
    Refused(bool),
}

/// Decodes and checks an XOAUTH2 initial response for a protocol.
pub fn check(app: &Arc<App>, proto: Proto, b64: &str) -> Verdict {
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) else {
        return Verdict::Refused(false);
    };
    let text = String::from_utf8_lossy(&raw).to_string();
    let mut user = None;
    let mut token = None;
    for field in text.split('\x01') {
        if let Some(u) = field.strip_prefix("user=") {
            user = Some(u.to_ascii_lowercase());
        } else if let Some(a) = field.strip_prefix("auth=") {
            token = a.strip_prefix("Bearer ").map(str::to_string);
        }
    }
    if !text.ends_with("\x01\x01") {
        return Verdict::Refused(false);
    }
    let (Some(user), Some(token)) = (user, token) else {
        return Verdict::Refused(false);
    };
    let Some(t) = app.lock().auth.access.get(&token).cloned() else {
        return Verdict::Refused(false);
    };
    let google = t.provider == Provider::Google;
    let scope_ok = match (t.audience, proto) {
        (Audience::Outlook, Proto::Smtp) => t.has_any(&["SMTP.Send"]),
        (Audience::Outlook, Proto::Imap) => t.has_any(&["IMAP.AccessAsUser.All"]),
        (Audience::Google, _) => t.scopes.iter().any(|s| s == "https://mail.google.com/"),
        _ => false,
    };
    if t.user != user || t.expires_ms <= app.now_ms() || !scope_ok {
        return Verdict::Refused(google);
    }
    Verdict::Ok(user)
}

fn challenge() -> String {
    base64::engine::general_purpose::STANDARD
        .encode(r#"{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}"#)
}

/// Serves one protocol on a bound listener until the task is dropped.
pub async fn serve(app: Arc<App>, listener: TcpListener, proto: Proto) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            acc = listener.accept() => {
                if let Ok((s, _)) = acc {
                    let app = app.clone();
                    conns.spawn(async move {
                        let _ = match proto {
                            Proto::Smtp => smtp(app, s).await,
                            Proto::Imap => imap(app, s).await,
                        };
                    });
                }
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn smtp(app: Arc<App>, s: TcpStream) -> std::io::Result<()> {
    let (r, mut w) = s.into_split();
    let mut lines = BufReader::new(r).lines();
    w.write_all(b"220 fake-cloud ESMTP ready\r\n").await?;
    let mut authed = false;
    while let Some(line) = lines.next_line().await? {
        let upper = line.to_ascii_uppercase();
        let reply: String = if upper.starts_with("EHLO") {
            "250-fake-cloud\r\n250-8BITMIME\r\n250 AUTH XOAUTH2\r\n".into()
        } else if upper.starts_with("HELO") {
            "250 fake-cloud\r\n".into()
        } else if upper.starts_with("STARTTLS") {
            "454 4.7.0 TLS not available in the emulator\r\n".into()
        } else if upper.starts_with("AUTH XOAUTH2") {
            let mut arg = line[12..].trim().to_string();
            if arg.is_empty() {
                w.write_all(b"334 \r\n").await?;
                arg = lines.next_line().await?.unwrap_or_default();
            }
            match check(&app, Proto::Smtp, &arg) {
                Verdict::Ok(_) => {
                    authed = true;
                    "235 2.7.0 Authentication successful\r\n".into()
                }
                Verdict::Refused(true) => {
                    w.write_all(format!("334 {}\r\n", challenge()).as_bytes())
                        .await?;
                    let _ = lines.next_line().await?;
                    "535-5.7.8 Username and Password not accepted.\r\n535 5.7.8 https://support.google.com/mail/?p=BadCredentials\r\n".into()
                }
                Verdict::Refused(false) => "535 5.7.3 Authentication unsuccessful\r\n".into(),
            }
        } else if upper.starts_with("QUIT") {
            w.write_all(b"221 2.0.0 Bye\r\n").await?;
            return Ok(());
        } else if upper.starts_with("NOOP") || upper.starts_with("RSET") {
            "250 2.0.0 OK\r\n".into()
        } else if !authed {
            "530 5.7.0 Authentication required\r\n".into()
        } else if upper.starts_with("MAIL") || upper.starts_with("RCPT") {
            "250 2.1.0 OK\r\n".into()
        } else if upper.starts_with("DATA") {
            w.write_all(b"354 Go ahead\r\n").await?;
            while let Some(l) = lines.next_line().await? {
                if l == "." {
                    break;
                }
            }
            "250 2.0.0 OK queued (discarded by the emulator)\r\n".into()
        } else {
            "502 5.5.1 Command not implemented\r\n".into()
        };
        w.write_all(reply.as_bytes()).await?;
    }
    Ok(())
}

async fn imap(app: Arc<App>, s: TcpStream) -> std::io::Result<()> {
    let (r, mut w) = s.into_split();
    let mut lines = BufReader::new(r).lines();
    w.write_all(b"* OK [CAPABILITY IMAP4rev1 AUTH=XOAUTH2 SASL-IR] fake-cloud ready\r\n")
        .await?;
    let mut authed = false;
    while let Some(line) = lines.next_line().await? {
        let mut parts = line.splitn(3, ' ');
        let tag = parts.next().unwrap_or("*").to_string();
        let cmd = parts.next().unwrap_or("").to_ascii_uppercase();
        let rest = parts.next().unwrap_or("").to_string();
        let reply = match cmd.as_str() {
            "CAPABILITY" => format!(
                "* CAPABILITY IMAP4rev1 AUTH=XOAUTH2 SASL-IR\r\n{tag} OK CAPABILITY completed\r\n"
            ),
            // Enough of a mailbox for a login check: INBOX exists and is empty.
            "SELECT" | "EXAMINE" if !authed => format!("{tag} NO Not authenticated\r\n"),
            "SELECT" | "EXAMINE" if rest.trim().trim_matches('"').eq_ignore_ascii_case("INBOX") => {
                format!(
                    "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n* 0 EXISTS\r\n\
                     * 0 RECENT\r\n{tag} OK [READ-WRITE] {cmd} completed\r\n"
                )
            }
            "SELECT" | "EXAMINE" => format!("{tag} NO [NONEXISTENT] Unknown Mailbox\r\n"),
            "NOOP" => format!("{tag} OK NOOP completed\r\n"),
            "LOGOUT" => {
                w.write_all(
                    format!("* BYE logging out\r\n{tag} OK LOGOUT completed\r\n").as_bytes(),
                )
                .await?;
                return Ok(());
            }
            "AUTHENTICATE" => {
                let mut it = rest.splitn(2, ' ');
                let mech = it.next().unwrap_or("").to_ascii_uppercase();
                let mut arg = it.next().unwrap_or("").trim().to_string();
                if mech != "XOAUTH2" {
                    format!("{tag} NO [CANNOT] Unsupported mechanism\r\n")
                } else {
                    if arg.is_empty() {
                        w.write_all(b"+ \r\n").await?;
                        arg = lines.next_line().await?.unwrap_or_default();
                    }
                    match check(&app, Proto::Imap, &arg) {
                        Verdict::Ok(u) => {
                            authed = true;
                            format!("{tag} OK AUTHENTICATE completed ({u})\r\n")
                        }
                        Verdict::Refused(google) => {
                            if google {
                                w.write_all(format!("+ {}\r\n", challenge()).as_bytes())
                                    .await?;
                                let _ = lines.next_line().await?;
                            }
                            format!(
                                "{tag} NO [AUTHENTICATIONFAILED] Invalid credentials (Failure)\r\n"
                            )
                        }
                    }
                }
            }
            "STARTTLS" => format!("{tag} NO TLS not available in the emulator\r\n"),
            _ => format!("{tag} BAD Command not emulated\r\n"),
        };
        w.write_all(reply.as_bytes()).await?;
    }
    Ok(())
}
