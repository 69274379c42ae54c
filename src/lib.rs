//! Internal Task Gateway: exposes tasks running inside remote Kubernetes clusters through the Gateway API.
//!
//! This package wires the layers into the two binaries. The file tree shows them:
//!
//! - `crates/core` ([`itg_core`]) decides and reaches no server: the contract, validation, config, names,
//!   the allocator and the claim protocol, the state machine, readiness, the reconciler's plan, the answers;
//!   and the seams the adapters implement ([`store`], [`cluster`], [`sink`]). Its modules are re-exported
//!   here, so `itg::contract` is `itg_core::contract`.
//! - `crates/nats` ([`nats`]) and `crates/k8s` ([`k8s`]) are the adapters: the JetStream KV store and reply
//!   sink, and the Gateway-listener backend.
//! - Here: [`worker`] serves one event (started, ended, repair), [`consumer`] pulls the events and acks
//!   them, [`reconciler`] and [`replay`] drive the worker without a live event, [`app`] connects and runs
//!   everything, [`admin`] serves health and metrics, [`cli`] and [`ctl`] are the binaries' entry points.
//!
//! An event takes this path: [`consumer`] pulls it from `ITG_EVENTS` → [`worker`] decodes it
//! ([`contract`]) and asks [`state`] what it does to the allocation's record → [`claims`] claims ports with
//! compare-and-set in the store → the [`cluster`] seam exposes them (Service, listener, TCPRoute) and,
//! where the controller writes status, [`readiness`] says when it reports them programmed, and [`dataplane`]
//! connects to each port to see that its data plane serves it → [`answers`] builds the
//! reply → [`consumer`] publishes it through the [`sink`] and acknowledges the event.

pub use itg_core::{
    allocator, answers, claims, clock, cluster, config, contract, controllers, crashpoint,
    delivery, guards, metrics, names, plan, probe, readiness, resource_manager, sink, state, store,
    validate,
};
pub use itg_k8s as k8s;
pub use itg_nats as nats;

pub mod admin;
pub mod app;
pub mod cli;
pub mod consumer;
pub mod ctl;
pub mod dataplane;
pub mod reconciler;
pub mod replay;
pub mod site;
pub mod worker;
