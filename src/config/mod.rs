//! cms.cfg runtime.
