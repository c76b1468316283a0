//! The token broker: a UNIX socket that hands XOAUTH2 strings to SMTP and
//! IMAP clients (msmtp `passwordeval`, exim `readsocket`, mutt, mbsync through
//! `cms-oauth`). A client writes `PROTO[,opt,...] user@domain` and shuts its
//! write side; the answer is `user=USER\x01auth=Bearer TOKEN\x01\x01`, or the
//! connection closes without data for an unknown user or a protocol the
//! server does not offer.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustix::fs::Mode;
use rustix::process::umask;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use crate::auth::{Audience, TokenSource};
use crate::shutdown::{self, StopSignal, TaskTracker};
use crate::types::{CloudKind, Protocol};

/// Longest request accepted.
const MAX_REQUEST: u64 = 4096;
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Failures setting up the socket.
#[derive(Debug, thiserror::Error)]
pub enum CredsrvError {
    /// Binding or setting the mode of the socket failed.
    #[error("credential socket {path}: {source}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// One account the broker serves.
pub struct BrokerAccount {
    /// Service of the account (decides the token audience).
    pub kind: CloudKind,
    /// Where tokens come from.
    pub tokens: Arc<dyn TokenSource>,
}

/// What one socket serves: accounts by address, and the protocols offered.
pub struct Broker {
    accounts: HashMap<String, BrokerAccount>,
    protocols: Vec<Protocol>,
}

/// A parsed request line.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    /// `SMTP` or `IMAP` (anything else is refused later).
    pub proto: String,
    /// Options after the protocol, comma separated (unused, kept for logs).
    pub options: Vec<String>,
    /// The account address.
    pub user: String,
}

/// Parse `PROTO[,opt,...] user@domain` (surrounding whitespace ignored).
pub fn parse_request(text: &str) -> Option<Request> {
    let mut parts = text.split_whitespace();
    let head = parts.next()?;
    let user = parts.next()?;
    if parts.next().is_some() || !user.contains('@') {
        return None;
    }
    let mut head = head.split(',');
    let proto = head.next()?.to_string();
    if proto.is_empty() {
        return None;
    }
    Some(Request {
        proto,
        options: head.map(str::to_string).collect(),
        user: user.to_string(),
    })
}

/// The XOAUTH2 initial response string (before base64).
pub fn xoauth2(user: &str, token: &str) -> String {
    format!("user={user}\x01auth=Bearer {token}\x01\x01")
}

impl Broker {
    /// A broker for `accounts` (address → account) offering `protocols`.
    pub fn new(accounts: HashMap<String, BrokerAccount>, protocols: Vec<Protocol>) -> Broker {
        Broker {
            accounts,
            protocols,
        }
    }

    /// The answer to one request, or `None` to close without data.
    pub async fn answer(&self, req: &Request) -> Option<String> {
        let proto = match req.proto.as_str() {
            "SMTP" => Protocol::Smtp,
            "IMAP" => Protocol::Imap,
            _ => return None,
        };
        if !self.protocols.contains(&proto) {
            return None;
        }
        let acct = self.accounts.get(&req.user)?;
        let audience = match acct.kind {
            CloudKind::Office365 => Audience::Outlook,
            CloudKind::Gmail => Audience::GoogleMail,
        };
        match acct.tokens.token(audience).await {
            Ok(t) => Some(xoauth2(&req.user, t.secret())),
            Err(e) => {
                tracing::warn!("credential request for {} failed: {e}", req.user);
                None
            }
        }
    }
}

/// Bind the socket at `path` (replacing a stale socket file, never another
/// kind of file) and give it `mode`.
pub fn bind(path: &Path, mode: u32) -> Result<UnixListener, CredsrvError> {
    let err = |source| CredsrvError::Socket {
        path: path.to_path_buf(),
        source,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if meta.file_type().is_socket() {
            std::fs::remove_file(path).map_err(err)?;
        } else {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "exists and is not a socket",
            )));
        }
    }
    // Bind under a restrictive umask so the socket is never more open than
    // asked, even for an instant; then set the exact mode.
    let old = umask(Mode::from_raw_mode(0o077));
    let listener = UnixListener::bind(path);
    umask(old);
    let listener = listener.map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(err)?;
    Ok(listener)
}

/// Serve `broker` on `listener` until `shutdown` (a token, or a watch that
/// turns true); removes the socket file at the end.
/// Each connection is a task tracked here; a stop abandons the ones still
/// running (their clients see the connection close without data) and waits
/// for them before returning.
pub async fn serve(
    listener: UnixListener,
    path: PathBuf,
    broker: Arc<Broker>,
    shutdown: impl Into<StopSignal>,
) {
    shutdown
        .into()
        .drive(|stop| async move {
            let connections = TaskTracker::new();
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => {
                            let (broker, stop) = (broker.clone(), stop.clone());
                            connections.spawn(async move {
                                stop.run_until_cancelled(handle(stream, &broker)).await;
                            });
                        }
                        Err(e) => {
                            tracing::warn!("credential socket accept failed: {e}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }
            drop(listener);
            let _ = std::fs::remove_file(&path);
            shutdown::wait_tracked(&connections, "credential connection").await;
        })
        .await;
}

async fn handle(mut stream: UnixStream, broker: &Broker) {
    let mut buf = Vec::new();
    let read = tokio::time::timeout(
        REQUEST_TIMEOUT,
        (&mut stream).take(MAX_REQUEST).read_to_end(&mut buf),
    )
    .await;
    if !matches!(read, Ok(Ok(_))) {
        return;
    }
    let text = String::from_utf8_lossy(&buf);
    let Some(req) = parse_request(&text) else {
        tracing::warn!(
            "invalid credential request {:?}",
            text.chars().take(80).collect::<String>()
        );
        return;
    };
    tracing::debug!(proto = %req.proto, user = %req.user, "credential request");
    if let Some(answer) = broker.answer(&req).await {
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_requests() {
        assert_eq!(
            parse_request("SMTP user@example.com"),
            Some(Request {
                proto: "SMTP".into(),
                options: vec![],
                user: "user@example.com".into()
            })
        );
        let r = parse_request("IMAP,a,b u@x.org\n").unwrap();
        assert_eq!(r.options, vec!["a", "b"]);
        assert_eq!(parse_request("SMTP"), None);
        assert_eq!(parse_request("SMTP nobody"), None);
        assert_eq!(parse_request("SMTP a@b c@d"), None);
    }

    /// This process's file-creation mask, read without changing it.
    fn current_umask() -> u32 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("Umask:")).unwrap();
        u32::from_str_radix(line["Umask:".len()..].trim(), 8).unwrap()
    }

    #[tokio::test]
    async fn bind_sets_the_mode_and_restores_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sock");
        let before = current_umask();
        let _listener = bind(&path, 0o660).unwrap();
        assert_eq!(current_umask(), before);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o660);
        // A stale socket is replaced; another kind of file is refused.
        drop(_listener);
        bind(&path, 0o600).unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, b"x").unwrap();
        assert!(bind(&plain, 0o600).is_err());
    }

    #[test]
    fn xoauth2_format() {
        assert_eq!(xoauth2("u@x", "T"), "user=u@x\x01auth=Bearer T\x01\x01");
    }
}
