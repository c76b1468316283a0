//! Google OAuth (placeholder).

use std::sync::Arc;

use crate::http::{Req, Resp};
use crate::state::App;

/// Entry point for accounts.google.com and oauth2.googleapis.com.
pub fn handle(_app: &Arc<App>, _r: Req) -> Resp {
    crate::errors::google_oauth(404, "not_found", "not yet")
}
