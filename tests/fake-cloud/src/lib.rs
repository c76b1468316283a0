//! Cloud emulator for tests: Microsoft Graph mail, Gmail and both OAuth servers on one
//! loopback HTTP port, with quotas, fault injection and a `/_control/` API.
//!
//! # Layout
//! - [`server`]: accept loop, hyper connection handling, host-prefix dispatch, faults, stats.
//! - [`http`]: the request/response types every handler works on (decoded `$` paths and queries).
//! - [`state`]: shared state, clock, seeded RNG and id generators.
//! - [`tokens`]: access and refresh tokens shared by both identity providers.
//! - [`oauth_ms`], [`oauth_google`]: Microsoft identity v2.0 and Google OAuth endpoints.
//! - [`graph`], [`graph_delta`], [`graph_batch`]: Microsoft Graph mail.
//! - [`gmail`], [`gmail_batch`]: Gmail API v1.
//! - [`quota`], [`faults`], [`stats`], [`control`]: test knobs.
//! - [`mime`], [`populate`]: MIME parsing and realistic message generation.
//! - [`errors`]: error bodies in each service's shape.
//! - [`xoauth`]: SMTP/IMAP listeners that check XOAUTH2 tokens.

pub mod control;
pub mod errors;
pub mod faults;
pub mod gmail;
pub mod gmail_batch;
pub mod graph;
pub mod graph_batch;
pub mod graph_delta;
pub mod http;
pub mod mime;
pub mod oauth_google;
pub mod oauth_ms;
pub mod options;
pub mod populate;
pub mod quota;
pub mod server;
pub mod state;
pub mod stats;
pub mod store_gmail;
pub mod store_graph;
pub mod tokens;
pub mod xoauth;

use std::net::SocketAddr;
use std::sync::Arc;

pub use options::{Options, QuotaMode};
pub use populate::PopulateSpec;
pub use state::App;

/// Entry point: starts the emulator on a loopback port.
pub struct FakeCloud;

impl FakeCloud {
    /// Binds the listen address, seeds the state and serves until the handle is dropped.
    pub async fn start(opts: Options) -> std::io::Result<Handle> {
        let listener = tokio::net::TcpListener::bind(opts.listen).await?;
        let addr = listener.local_addr()?;
        let base_url = format!("http://{addr}");
        let app = Arc::new(App::new(opts, base_url.clone()));
        populate::apply_startup(&app).map_err(std::io::Error::other)?;
        let mut extra = Vec::new();
        let mut smtp_addr = None;
        let mut imap_addr = None;
        for (want, proto, slot) in [
            (app.opts.smtp_listen, xoauth::Proto::Smtp, &mut smtp_addr),
            (app.opts.imap_listen, xoauth::Proto::Imap, &mut imap_addr),
        ] {
            if let Some(a) = want {
                let l = tokio::net::TcpListener::bind(a).await?;
                *slot = Some(l.local_addr()?);
                extra.push(tokio::spawn(xoauth::serve(app.clone(), l, proto)));
            }
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(server::run(app.clone(), listener, rx));
        Ok(Handle {
            base_url,
            addr,
            app,
            shutdown: Some(tx),
            task: Some(task),
            extra,
            smtp_addr,
            imap_addr,
        })
    }
}

/// A running emulator; dropping it stops the server.
pub struct Handle {
    base_url: String,
    addr: SocketAddr,
    app: Arc<App>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    extra: Vec<tokio::task::JoinHandle<()>>,
    smtp_addr: Option<SocketAddr>,
    imap_addr: Option<SocketAddr>,
}

impl Handle {
    /// `http://127.0.0.1:PORT`, the prefix of every emulated host.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The bound socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Address of the XOAUTH2 SMTP listener, when one was asked for.
    pub fn smtp_addr(&self) -> Option<SocketAddr> {
        self.smtp_addr
    }

    /// Address of the XOAUTH2 IMAP listener, when one was asked for.
    pub fn imap_addr(&self) -> Option<SocketAddr> {
        self.imap_addr
    }

    /// The shared state, for tests that want to look inside or mint tokens directly.
    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// Mints an access token as `/_control/token` does (audience `graph`, `outlook` or
    /// `gmail`; empty `scopes` means the audience's mail scopes).
    pub fn mint_token(
        &self,
        user: &str,
        audience: &str,
        scopes: &[&str],
    ) -> Result<String, String> {
        let mut spec = serde_json::json!({"user": user, "audience": audience});
        if !scopes.is_empty() {
            spec["scopes"] = serde_json::json!(scopes);
        }
        control::mint_token(&self.app, &spec)
            .map(|v| v["access_token"].as_str().unwrap_or_default().to_string())
    }

    /// Stops the server and waits for the accept loop to end.
    pub async fn shutdown(mut self) {
        for t in self.extra.drain(..) {
            t.abort();
        }
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        for t in self.extra.drain(..) {
            t.abort();
        }
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
