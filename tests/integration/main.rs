//! The one integration-test binary: a module per area, shared helpers in
//! `util`.

mod auth;
mod config;
mod credsrv;
mod gmail;
mod graph;
mod headers;
mod local_edits;
mod router;
mod stop;
mod sync;
mod util;
