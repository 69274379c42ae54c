//! The NATS adapter: implements the core's [`itg_core::store::Store`] with a JetStream KV bucket and its
//! [`itg_core::sink::Replier`] with JetStream publishes, and sets up the connection, the streams and the
//! durable consumers. The pull loop that serves events lives with the worker, which owns what a delivery
//! does.

pub mod backlog;
pub mod client;
pub mod kv;
pub mod replier;
pub mod sites;
pub mod streams;

pub use backlog::{Backlog, backlog};
pub use client::{NatsError, connect, server_addrs, url_credentials};
pub use kv::{KvStore, OpenError};
pub use replier::JetStreamReplier;
pub use sites::{ensure_hub_side, ensure_site, ensure_site_streams, replies_lost, site_laid_out};
pub use streams::{ensure_consumer, ensure_streams};
