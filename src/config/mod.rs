//! cms.cfg runtime.
pub mod headers;
