//! The one integration-test binary: a module per area, shared helpers in
//! `util`.

mod config;
mod graph;
mod headers;
mod router;
mod sync;
mod util;
