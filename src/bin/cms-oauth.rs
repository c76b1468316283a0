//! Token broker client.
fn main() {}
