//! The Kubernetes adapter: implements the core's [`itg_core::cluster`] seam with a Service, a listener on
//! the shared Gateway and a TCPRoute per proxy port.
//!
//! Listeners are written with server-side apply of a partial Gateway holding only that listener, under a
//! field manager of its own: the apiserver merges listeners by name, so workers never read-modify-write the
//! whole Gateway and never touch listeners they do not own. A watch of the one Gateway feeds an in-memory
//! view (foreign ports, listener count) so the hot path lists nothing. Where the Gateway's controller writes
//! status, a watch of the worker's TCPRoutes joins it, and [`itg_core::readiness`] reads both to tell when
//! an exposure is reachable.
//!
//! TCPRoute is written in the version the apiserver serves, found by discovery at start: `v1` (Gateway API
//! v1.6 and later) where served, else `v1alpha2`. Every read, write and delete goes through that one version:
//! an apiserver serving both keeps one storage, so routes written in the other version are listed, read and
//! deleted through it as well.
//!
//! [`client`] connects and bounds every call; [`objects`] builds what is applied; [`watch`] follows the
//! Gateway and the routes; [`apply`] writes and removes; [`inventory`] lists what the reconciler judges.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use gateway_api::experimental::gateways::Gateway;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::reflector::Store as Reflector;
use kube::{Api, Client};

pub mod apply;
pub mod attached;
pub mod backend;
pub mod client;
pub mod inventory;
pub mod listenerset;
pub mod objects;
mod setsview;
pub mod watch;

pub use backend::Backend;
pub use client::{classify, client_for, connect, route_resource};
pub use listenerset::ListenerSets;
pub use objects::{
    TCPROUTE_VERSIONS, listener_patch, listener_removal, route_body, route_object, service_object,
};
pub use watch::listener_managers;

/// A resource manager's apiserver and Gateway.
#[derive(Clone)]
pub struct KubeGateway {
    rm: String,
    /// The resource manager's port range: a legacy listener is taken as its own only inside it.
    range: std::ops::RangeInclusive<u16>,
    client: Client,
    gateway_namespace: String,
    gateway_name: String,
    gateways: Api<Gateway>,
    reflector: Reflector<Gateway>,
    /// The TCPRoute resource in the version the apiserver serves.
    route_resource: ApiResource,
    /// The worker's routes, one store per watched scope (a namespace, or all namespaces); empty when the
    /// resource manager does not wait for its controller.
    route_stores: Vec<Reflector<DynamicObject>>,
    /// Listener name -> (port, the Gateway generation in which the watch first saw it with that port).
    listener_generations: Arc<Mutex<BTreeMap<String, (u16, i64)>>>,
    changes: tokio::sync::watch::Receiver<u64>,
    /// Ticks `changes`: every watch of this resource manager's objects sends here.
    tick: Arc<tokio::sync::watch::Sender<u64>>,
    /// One Gateway write at a time from this process. Concurrent applies to the one object make the
    /// apiserver retry each against the others, re-running the listener validation every time; measured,
    /// removals went from ~0.2 s to ~30 s with 32 in flight.
    write_lock: Arc<tokio::sync::Mutex<()>>,
    /// The longest one apiserver request may take: a half-open connection answers nothing, never.
    call_timeout: std::time::Duration,
    /// Others' ListenerSets attached to the Gateway, whose ports are foreign; followed from when the
    /// Gateway is first seen, and empty while it takes none (or the apiserver serves no ListenerSet).
    attached: attached::Attached,
    /// The Gateway's controller, once the start has looked it up: a port of the range whose data-plane
    /// port a listener not ours binds is foreign too.
    controller: Arc<std::sync::OnceLock<&'static itg_core::controllers::Controller>>,
}
