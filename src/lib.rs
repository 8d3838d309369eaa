//! The `ipp` facade: re-exports `ipp-core` and the parts.
pub use ipp_core as core;
pub use ipp_store_mongo as store_mongo;
pub use ipp_store_sqlite as store_sqlite;
pub use ipp_transport_zmq as transport_zmq;
