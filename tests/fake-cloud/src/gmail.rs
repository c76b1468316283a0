//! Gmail API v1 (placeholder while the Graph side settles).

use std::sync::Arc;

use crate::http::{Req, Resp};
use crate::state::App;

/// Entry point for gmail.googleapis.com and www.googleapis.com.
pub async fn handle(_app: &Arc<App>, _r: Req) -> Resp {
    crate::errors::google_not_found()
}
