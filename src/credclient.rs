//! The client side of the token broker, used by `cms-oauth`: asks the
//! daemon's credential socket for an XOAUTH2 string, formats it for the
//! caller, and can try it against an SMTP (587, STARTTLS) or IMAP (993, TLS)
//! server to check that a login works.

use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UnixStream};

/// Failures of the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be used.
    #[error("{path}: {source}")]
    Socket {
        /// The socket path.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The daemon answered nothing (unknown user or protocol not enabled).
    #[error(
        "the credential server gave no token for {0} (unknown account, or protocol not enabled)"
    )]
    NoToken(String),
    /// The daemon answered something that is not an XOAUTH2 string.
    #[error("invalid answer from the credential server")]
    BadAnswer,
    /// Talking to the mail server failed.
    #[error("{server}: {message}")]
    Server {
        /// The server.
        server: String,
        /// What happened (never contains the token).
        message: String,
    },
}

/// Output formats of `cms-oauth --output`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// `user=U\x01auth=Bearer T\x01\x01`.
    Xoauth2,
    /// The same, base64-encoded (what goes on the wire).
    Xoauth2B64,
    /// The bare access token.
    Token,
}

/// Ask the broker at `sock` for `proto` (`SMTP`/`IMAP`) and `user`.
pub async fn request(sock: &Path, proto: &str, user: &str) -> Result<String, ClientError> {
    let err = |source| ClientError::Socket {
        path: sock.display().to_string(),
        source,
    };
    let mut s = UnixStream::connect(sock).await.map_err(err)?;
    s.write_all(format!("{proto} {user}").as_bytes())
        .await
        .map_err(err)?;
    s.shutdown().await.map_err(err)?;
    let mut out = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut s, &mut out)
        .await
        .map_err(err)?;
    if out.is_empty() {
        return Err(ClientError::NoToken(user.to_string()));
    }
    token_of(&out).ok_or(ClientError::BadAnswer)?;
    Ok(out)
}

/// The bare token inside an XOAUTH2 string.
pub fn token_of(xoauth2: &str) -> Option<&str> {
    let rest = xoauth2.strip_prefix("user=")?;
    let (_, auth) = rest.split_once('\x01')?;
    let auth = auth.strip_suffix("\x01\x01")?;
    let (_, token) = auth.split_once(' ')?;
    (!token.is_empty() && !token.contains(char::is_whitespace)).then_some(token)
}

/// `xoauth2` in the chosen output format.
pub fn format(xoauth2: &str, output: Output) -> String {
    match output {
        Output::Xoauth2 => xoauth2.to_string(),
        Output::Xoauth2B64 => base64::engine::general_purpose::STANDARD.encode(xoauth2),
        Output::Token => token_of(xoauth2).unwrap_or_default().to_string(),
    }
}

/// `host` with `default_port` unless it names one.
fn with_port(host: &str, default_port: u16) -> (String, u16) {
    match host.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => {
            (h.to_string(), p.parse().unwrap_or(default_port))
        }
        _ => (host.to_string(), default_port),
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

async fn tls(host: &str, tcp: TcpStream) -> Result<Box<dyn Stream>, ClientError> {
    use rustls_platform_verifier::ConfigVerifierExt;
    let server_err = |message: String| ClientError::Server {
        server: host.to_string(),
        message,
    };
    let config = tokio_rustls::rustls::ClientConfig::with_platform_verifier()
        .map_err(|e| server_err(format!("TLS setup: {e}")))?;
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| server_err(format!("bad server name: {e}")))?;
    let conn = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| server_err(format!("TLS: {e}")))?;
    Ok(Box::new(conn))
}

struct Lines<S> {
    server: String,
    io: BufReader<S>,
}

impl<S: Stream> Lines<S> {
    async fn line(&mut self) -> Result<String, ClientError> {
        let mut l = String::new();
        let n = self
            .io
            .read_line(&mut l)
            .await
            .map_err(|e| self.err(e.to_string()))?;
        if n == 0 {
            return Err(self.err("connection closed".into()));
        }
        Ok(l.trim_end().to_string())
    }

    async fn send(&mut self, s: &str) -> Result<(), ClientError> {
        let io = self.io.get_mut();
        io.write_all(s.as_bytes())
            .await
            .map_err(|e| ClientError::Server {
                server: self.server.clone(),
                message: e.to_string(),
            })?;
        io.write_all(b"\r\n")
            .await
            .map_err(|e| ClientError::Server {
                server: self.server.clone(),
                message: e.to_string(),
            })?;
        io.flush().await.map_err(|e| ClientError::Server {
            server: self.server.clone(),
            message: e.to_string(),
        })
    }

    /// An SMTP reply (multi-line aware): (code, text of the last line).
    async fn smtp_reply(&mut self) -> Result<(u16, Vec<String>), ClientError> {
        let mut lines = Vec::new();
        loop {
            let l = self.line().await?;
            let code = l.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
            let more = l.as_bytes().get(3) == Some(&b'-');
            lines.push(l);
            if !more {
                return Ok((code, lines));
            }
        }
    }

    fn err(&self, message: String) -> ClientError {
        ClientError::Server {
            server: self.server.clone(),
            message,
        }
    }
}

/// Log in to an SMTP server (`HOST[:587]`) with XOAUTH2 after STARTTLS.
/// Plain text is used only for a loopback server that offers no STARTTLS
/// (a local test server). Returns the server's final reply.
pub async fn test_smtp(host: &str, xoauth2: &str) -> Result<String, ClientError> {
    let (h, port) = with_port(host, 587);
    let tcp = TcpStream::connect((h.as_str(), port))
        .await
        .map_err(|e| ClientError::Server {
            server: host.to_string(),
            message: e.to_string(),
        })?;
    let mut plain = Lines {
        server: host.to_string(),
        io: BufReader::new(tcp),
    };
    plain.smtp_reply().await?;
    plain.send("EHLO cms-oauth").await?;
    let (_, caps) = plain.smtp_reply().await?;
    let mut c: Lines<Box<dyn Stream>> = if caps
        .iter()
        .any(|l| l.to_ascii_uppercase().contains("STARTTLS"))
    {
        plain.send("STARTTLS").await?;
        let (code, _) = plain.smtp_reply().await?;
        if code != 220 {
            return Err(plain.err(format!("STARTTLS refused ({code})")));
        }
        let mut c = Lines {
            server: host.to_string(),
            io: BufReader::new(tls(&h, plain.io.into_inner()).await?),
        };
        c.send("EHLO cms-oauth").await?;
        c.smtp_reply().await?;
        c
    } else if is_loopback(&h) {
        Lines {
            server: host.to_string(),
            io: BufReader::new(Box::new(plain.io.into_inner()) as Box<dyn Stream>),
        }
    } else {
        return Err(plain.err("the server offers no STARTTLS; not sending a token in clear".into()));
    };
    let b64 = base64::engine::general_purpose::STANDARD.encode(xoauth2);
    c.send(&format!("AUTH XOAUTH2 {b64}")).await?;
    let (mut code, mut text) = c.smtp_reply().await?;
    if code == 334 {
        // A failure challenge (Google): answer empty, read the final reply.
        c.send("").await?;
        (code, text) = c.smtp_reply().await?;
    }
    let _ = c.send("QUIT").await;
    let last = text.last().cloned().unwrap_or_default();
    if code == 235 {
        Ok(last)
    } else {
        Err(c.err(format!("authentication failed: {last}")))
    }
}

/// Log in to an IMAP server (`HOST[:993]`, TLS; plain only on loopback
/// ports other than 993) with XOAUTH2 and select INBOX.
pub async fn test_imap(host: &str, xoauth2: &str) -> Result<String, ClientError> {
    let (h, port) = with_port(host, 993);
    let tcp = TcpStream::connect((h.as_str(), port))
        .await
        .map_err(|e| ClientError::Server {
            server: host.to_string(),
            message: e.to_string(),
        })?;
    let io: Box<dyn Stream> = if port != 993 && is_loopback(&h) {
        Box::new(tcp)
    } else {
        tls(&h, tcp).await?
    };
    let mut c = Lines {
        server: host.to_string(),
        io: BufReader::new(io),
    };
    c.line().await?;
    let b64 = base64::engine::general_purpose::STANDARD.encode(xoauth2);
    c.send(&format!("A1 AUTHENTICATE XOAUTH2 {b64}")).await?;
    loop {
        let l = c.line().await?;
        if l.starts_with('+') {
            c.send("").await?;
            continue;
        }
        if let Some(rest) = l.strip_prefix("A1 ") {
            if !rest.starts_with("OK") {
                return Err(c.err(format!("authentication failed: {rest}")));
            }
            break;
        }
    }
    c.send("A2 SELECT INBOX").await?;
    loop {
        let l = c.line().await?;
        if let Some(rest) = l.strip_prefix("A2 ") {
            let _ = c.send("A3 LOGOUT").await;
            return if rest.starts_with("OK") {
                Ok(rest.to_string())
            } else {
                Err(c.err(format!("SELECT INBOX failed: {rest}")))
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_parsing_and_formats() {
        let x = "user=u@x\x01auth=Bearer TOK\x01\x01";
        assert_eq!(token_of(x), Some("TOK"));
        assert_eq!(format(x, Output::Token), "TOK");
        assert_eq!(
            format(x, Output::Xoauth2B64),
            base64::engine::general_purpose::STANDARD.encode(x)
        );
        assert_eq!(token_of("garbage"), None);
        assert_eq!(
            with_port("smtp.example.com", 587),
            ("smtp.example.com".into(), 587)
        );
        assert_eq!(with_port("127.0.0.1:2525", 587), ("127.0.0.1".into(), 2525));
    }
}
