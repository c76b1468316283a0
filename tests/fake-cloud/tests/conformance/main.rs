//! Conformance tests of the cloud emulator against `cloud-api-facts.md` §6 and the
//! quota/fault knobs; one test binary with a module per area.

mod faults;
mod gmail;
mod graph;
mod oauth;
mod quota;
mod util;
mod xoauth;
