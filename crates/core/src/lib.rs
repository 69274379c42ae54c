//! The core of the Internal Task Gateway: what it decides, and the seams to what it talks to. It reaches no
//! server; its Cargo.toml has neither async-nats nor kube.
//!
//! What an event is and what is answered: [`contract`] (subjects, events, replies on the wire), checked by
//! [`validate`]; [`answers`] builds the answer of one delivery, and [`delivery`] what the consumer then does with it.
//!
//! What is decided: [`state`] (what an event does to an allocation's record), [`allocator`] (which ports
//! to try, in which order), [`claims`] (the claim protocol: choose, claim, release), [`readiness`] (when
//! the controller's status says an exposure is reachable), [`probe`] (whether the data plane serves a
//! port), [`plan`] (what the reconciler repairs and removes), [`names`] (every key, subject and object name
//! built from an allocation), [`config`], [`controllers`] (what is known of each Gateway controller: its
//! port mapping and the ports it keeps), [`sites`] (which streams a worker beside a NATS leaf node keeps at
//! its site and which it sources from the hub).
//!
//! The seams the adapters implement: [`store`] (compare-and-set records and claims), [`cluster`] (expose,
//! withdraw, and the inventory the reconciler reads), [`sink`] (where replies go).
//!
//! Shared by every layer: [`resource_manager`] (one resource manager's fixed context), [`metrics`],
//! [`crashpoint`] (the fault tests' kill points) [`clock`] (time and chance, virtual in the simulator) and [`guards`] (what
//! a simulation may turn off).

pub mod allocator;
pub mod answers;
pub mod claims;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod contract;
pub mod controllers;
pub mod crashpoint;
pub mod delivery;
pub mod guards;
pub mod metrics;
pub mod names;
pub mod plan;
pub mod probe;
pub mod readiness;
pub mod resource_manager;
pub mod sink;
pub mod sites;
pub mod state;
pub mod store;
pub mod validate;
