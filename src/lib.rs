//! Internal Task Gateway: exposes tasks running inside remote Kubernetes clusters through the Gateway API.
//!
//! An event takes this path:
//!
//! 1. [`nats`] pulls it from the `ITG_EVENTS` stream (one durable consumer per resource manager);
//! 2. [`contract`] decodes and validates it ([`validate`] holds the syntax rules);
//! 3. [`worker`] reads the allocation's record from the KV bucket ([`store`]) and asks [`state`] what the
//!    event does to it; for a started it claims ports chosen by [`allocator`] with compare-and-set;
//! 4. [`gateway`] drives Kubernetes toward the record: Service, Gateway listener, TCPRoute, all named by
//!    [`names`];
//! 5. where the Gateway's controller writes status, [`worker`] waits until [`readiness`] finds the listener
//!    programmed and the route accepted, as the [`gateway`] watches report them;
//! 6. [`worker`] publishes the reply to `ITG_REPLIES` and acknowledges the event.
//!
//! Around that path: [`config`] loads the YAML config; [`app`] wires everything and reports what it found at
//! start; [`consumer`] runs the pull loop; [`replies`] builds the answers; [`reconciler`] repairs and removes
//! orphans periodically; [`replay`] serves the stream again from a point; [`admin`] and [`metrics`] are the
//! operational surface; [`cli`] and [`ctl`] hold the binaries' entry points. The deciding modules
//! (`contract`, `validate`, `names`, `allocator`, `state`, `readiness`, `config`, and the reconciler's `plan`) use neither
//! NATS nor Kubernetes.

pub mod admin;
pub mod allocator;
pub mod app;
pub mod cli;
pub mod config;
pub mod consumer;
pub mod contract;
pub mod crashpoint;
pub mod ctl;
pub mod gateway;
pub mod metrics;
pub mod names;
pub mod nats;
pub mod readiness;
pub mod reconciler;
pub mod replay;
pub mod replies;
pub mod state;
pub mod store;
pub mod validate;
pub mod worker;
