//! Our own ZMTP 3.1 (NULL mechanism) on tokio TCP: the four socket kinds ipyparallel uses,
//! wire-compatible with libzmq peers.
//!
//! - `codec`: greeting, frames, commands, the decoder (no IO).
//! - `conn`: one connection: handshake, direct vectored writes, reading.
//! - `pool`: the buffers of very large frames, reused rather than faulted in afresh.
//! - `socket`: ROUTER, DEALER, PUB and SUB over a set of connections.

pub(crate) mod codec;
pub(crate) mod conn;
pub(crate) mod pool;
pub(crate) mod socket;

pub use codec::ProtocolError;
pub use conn::ConnError;
