#![doc = include_str!("../README.md")]

mod bind;
mod checkpoint;
mod config;
mod error;
mod held;
mod ids;
mod query;
mod rows;
mod schema;
mod store;
mod writer;

pub use crate::config::{SqliteConfig, DEFAULT_TABLE};
pub use crate::error::{Error, Result};
pub use crate::store::SqliteStore;
