//! The ipyparallel 9.x wire protocol: messages, signing, dates, connection files.
//!
//! See `shared/spec/protocol.md` for the behaviour this module implements.

pub mod apply;
pub mod connection;
pub mod date;
pub mod error_content;
pub mod message;
pub mod session;

pub use connection::{ClientConnectionInfo, ConnectionFiles, EngineConnectionInfo};
pub use date::Timestamp;
pub use error_content::{error_content, key_error_value, RemoteError};
pub use message::{Header, JsonMap, Message, WireMessage, DELIMITER, PROTOCOL_VERSION};
pub use session::{new_id, to_json_bytes, Session, SigningKey};
