//! Filesystem helpers.
