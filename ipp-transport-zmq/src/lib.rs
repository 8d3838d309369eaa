//! ZeroMQ transport (being written).
