//! Integration tests.
mod headers;
