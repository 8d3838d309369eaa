#![doc = include_str!("../README.md")]

mod config;
mod document;
mod error;
mod ops;
mod store;
mod writer;

pub use crate::config::{MongoConfig, DEFAULT_COLLECTION, DEFAULT_QUEUE_CAPACITY, DEFAULT_URL};
pub use crate::error::{Error, Result};
pub use crate::store::MongoStore;
