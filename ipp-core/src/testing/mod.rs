//! Conformance suites that every implementation of a seam runs in its own tests.
//!
//! Each check is a `pub async fn` taking the implementation under test; it panics with a
//! message that says what broke.

pub mod store;
pub mod transport;
