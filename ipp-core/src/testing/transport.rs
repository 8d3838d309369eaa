//! The Transport conformance suite.
