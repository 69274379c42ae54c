//! The wire contract with the cluster master: [`subjects`] and streams, the [`events`] the master publishes
//! and the [`replies`] the workers answer with. docs/contract.md is its prose; schemas/ its JSON Schemas.

pub mod events;
pub mod replies;
pub mod subjects;

pub use events::*;
pub use replies::*;
pub use subjects::*;

/// The only payload version this worker reads and writes.
pub const SCHEMA_VERSION: u64 = 1;
