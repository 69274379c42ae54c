//! Task backends for the tests that send bytes through a real Gateway: there are no pods, so each task's
//! "pod" is a small TCP server in a network namespace this harness makes, and the worker's Service gets a
//! hand-made EndpointSlice pointing at it.
//!
//! Why a namespace: the apiserver refuses loopback addresses in an EndpointSlice and Envoy Gateway refuses
//! FQDN slices, so a backend needs an address of its own. The namespace is joined to the host by a veth
//! pair in 198.18.0.0/15 (the benchmarking range): host side `.1/30`, namespace side `.2/30`.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;

/// The `endpointslice.kubernetes.io/managed-by` of the slices made here, so the EndpointSlice controller
/// leaves them alone.
pub const SLICE_MANAGER: &str = "tests.internal-task-gateway.io";

/// Each backend answers every line it reads with `<its name> <the line>`, so a test can tell which backend
/// it reached and that the bytes went both ways.
const SERVER: &str = r#"
import socketserver, sys
port, name = int(sys.argv[1]), sys.argv[2]
class H(socketserver.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(name.encode() + b" " + line)
            self.wfile.flush()
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer.daemon_threads = True
with socketserver.ThreadingTCPServer(("0.0.0.0", port), H) as s:
    s.serve_forever()
"#;

/// Why a network namespace cannot be made here, or `None` when it can (root, with `ip` and `python3`).
pub fn unavailable() -> Option<String> {
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("making a network namespace needs root".into());
    }
    for tool in ["ip", "python3"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Some(format!("`{tool}` is not installed"));
        }
    }
    None
}

/// A network namespace with its veth pair and the backends running in it; all removed when dropped, also
/// when the test fails.
pub struct Netns {
    pub name: String,
    host_if: String,
    ns_if: String,
    /// The namespace's own address: what EndpointSlices point at.
    pub addr: Ipv4Addr,
    servers: Vec<Child>,
    /// The backend serving each port (on every address of the namespace).
    served: std::collections::BTreeMap<u16, String>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Netns {
    /// Makes a namespace joined to the host by its own /30. The subnet index is claimed by creating the
    /// namespace `itgb-<index>` (creation fails if another test holds it), so parallel tests never share one.
    pub fn create() -> Netns {
        if let Some(why) = unavailable() {
            panic!("cannot run task backends: {why}");
        }
        for _ in 0..64 {
            let i: u32 = rand::random_range(0..32768);
            let name = format!("itgb-{i}");
            if ip(&["netns", "add", &name]).is_err() {
                continue;
            }
            let net = u32::from(Ipv4Addr::new(198, 18, 0, 0)) + 4 * i;
            let (host, addr) = (Ipv4Addr::from(net + 1), Ipv4Addr::from(net + 2));
            let ns_if = format!("itgb{i}n");
            let ns = Netns {
                host_if: format!("itgb{i}h"),
                ns_if: ns_if.clone(),
                name,
                addr,
                servers: Vec::new(),
                served: Default::default(),
            };
            let steps: [&[&str]; 7] = [
                &[
                    "link",
                    "add",
                    &ns.host_if,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &ns_if,
                ],
                &["link", "set", &ns_if, "netns", &ns.name],
                &["addr", "add", &format!("{host}/30"), "dev", &ns.host_if],
                &["link", "set", &ns.host_if, "up"],
                &[
                    "-n",
                    &ns.name,
                    "addr",
                    "add",
                    &format!("{addr}/30"),
                    "dev",
                    &ns_if,
                ],
                &["-n", &ns.name, "link", "set", &ns_if, "up"],
                &["-n", &ns.name, "link", "set", "lo", "up"],
            ];
            for step in steps {
                if let Err(e) = ip(step) {
                    panic!("setting up network namespace {}: {e}", ns.name);
                }
            }
            return ns;
        }
        panic!(
            "no free 198.18.0.0/15 subnet after 64 tries: stale itgb-* namespaces? (`ip netns list`)"
        );
    }

    /// Starts a backend named `name` on `port` inside the namespace and waits until it answers from the host.
    pub fn serve(&mut self, port: u16, name: &str) {
        self.serve_at(self.addr, port, name);
    }

    /// Makes the namespace answer on a Pod's IP, as the Pod would ([`Netns::hold_pod_ip`]); then starts a
    /// backend named `name` on `port`, unless one of that name serves it already (a backend binds every
    /// address of the namespace, so it answers on each Pod IP held here), and waits until it answers at
    /// `pod_ip:port` from the host.
    pub fn serve_pod(&mut self, pod_ip: Ipv4Addr, port: u16, name: &str) {
        self.hold_pod_ip(pod_ip);
        match self.served.get(&port) {
            Some(have) if have == name => self.wait_answer(SocketAddr::from((pod_ip, port)), name),
            Some(have) => panic!(
                "network namespace {} serves port {port} as {have}, not {name}: give each backend its own port",
                self.name
            ),
            None => self.serve_at(pod_ip, port, name),
        }
    }

    /// The Pod's IP (/32) on the namespace's end of the veth and a host route to it through that veth. The
    /// route goes with the veth when the namespace is dropped; `replace` takes it over from a namespace an
    /// earlier, killed run left behind, or from another test's namespace that held a deleted Pod's IP
    /// before kwok gave it again.
    pub fn hold_pod_ip(&mut self, pod_ip: Ipv4Addr) {
        let ip32 = format!("{pod_ip}/32");
        let addr = self.addr.to_string();
        let steps: [&[&str]; 2] = [
            &[
                "-n",
                &self.name,
                "addr",
                "replace",
                &ip32,
                "dev",
                &self.ns_if,
            ],
            &[
                "route",
                "replace",
                &ip32,
                "via",
                &addr,
                "dev",
                &self.host_if,
            ],
        ];
        for step in steps {
            if let Err(e) = ip(step) {
                panic!(
                    "routing Pod IP {pod_ip} into network namespace {}: {e}",
                    self.name
                );
            }
        }
    }

    /// Starts a backend (it binds every address of the namespace) and waits until it answers at `at:port`.
    fn serve_at(&mut self, at: Ipv4Addr, port: u16, name: &str) {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name, "python3", "-c", SERVER])
            .args([&port.to_string(), name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start a backend with ip netns exec");
        self.servers.push(child);
        self.served.insert(port, name.to_owned());
        self.wait_answer(SocketAddr::from((at, port)), name);
    }

    /// Waits until the backend `name` answers at `to`.
    fn wait_answer(&self, to: SocketAddr, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match exchange(to, "probe") {
                Ok(reply) if reply == format!("{name} probe") => return,
                r => assert!(
                    Instant::now() < deadline,
                    "backend {name} at {to} does not answer: {r:?}"
                ),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for c in &mut self.servers {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Deleting the namespace deletes its veth end and with it the host end.
        let _ = ip(&["netns", "del", &self.name]);
        let _ = ip(&["link", "del", &self.host_if]);
    }
}

/// [`exchange`] off the async runtime: one line through `to` at once, the answer or why nothing came.
pub async fn ask(to: SocketAddr, line: &str) -> std::io::Result<String> {
    let line = line.to_owned();
    tokio::task::spawn_blocking(move || exchange(to, &line))
        .await
        .expect("exchange task")
}

/// Connects, sends `line`, returns the first line of the answer (without its newline).
pub fn exchange(to: SocketAddr, line: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("{line}\n").as_bytes())?;
    let mut reply = String::new();
    BufReader::new(&s).read_line(&mut reply)?;
    if reply.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed without an answer",
        ));
    }
    Ok(reply.trim_end().to_owned())
}

/// Points the Service `service` (in `ns`) at `addr:port`: one ready endpoint. The slice's port name must be
/// the Service port's name, or Envoy Gateway finds no endpoints.
pub async fn endpoint_slice(
    client: &kube::Client,
    ns: &str,
    service: &str,
    port_name: &str,
    addr: Ipv4Addr,
    port: u16,
) {
    let name = format!("{service}-backend");
    let body = json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": SLICE_MANAGER,
            }
        },
        "addressType": "IPv4",
        "ports": [{ "name": port_name, "port": port, "protocol": "TCP" }],
        "endpoints": [{ "addresses": [addr.to_string()], "conditions": { "ready": true } }]
    });
    Api::<EndpointSlice>::namespaced(client.clone(), ns)
        .patch(
            &name,
            &PatchParams::apply(SLICE_MANAGER),
            &Patch::Apply(&body),
        )
        .await
        .unwrap_or_else(|e| panic!("EndpointSlice {ns}/{name}: {e}"));
}

/// Removes the EndpointSlice [`endpoint_slice`] made for `service`, if any.
pub async fn delete_endpoint_slice(client: &kube::Client, ns: &str, service: &str) {
    let _ = Api::<EndpointSlice>::namespaced(client.clone(), ns)
        .delete(&format!("{service}-backend"), &Default::default())
        .await;
}

/// A Gateway left by an earlier run that failed keeps its envoy and its ports: removes any Gateway of the
/// envoy class `class` with a listener in `ports`, and waits until nothing listens there.
pub async fn clear_ports(env: &super::Env, class: &str, ports: (u16, u16)) {
    use gateway_api::experimental::gateways::Gateway;
    let api: Api<Gateway> = Api::namespaced(env.kube().await, "gateway-system");
    let stale: Vec<String> = api
        .list(&Default::default())
        .await
        .expect("list Gateways")
        .items
        .into_iter()
        .filter(|g| g.spec.gateway_class_name == class)
        .filter(|g| {
            g.spec
                .listeners
                .iter()
                .any(|l| (i32::from(ports.0)..=i32::from(ports.1)).contains(&l.port))
        })
        .filter_map(|g| g.metadata.name)
        .collect();
    for name in &stale {
        println!("removing Gateway {name} left by an earlier run");
        let _ = api.delete(name, &Default::default()).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for p in ports.0..=ports.1 {
        while TcpStream::connect(("127.0.0.1", p)).is_ok() {
            assert!(
                Instant::now() < deadline,
                "port {p} still accepts connections 30 s after its Gateway was removed"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Sends lines to 127.0.0.1:`port`, 10 ms apart, until one comes back from `backend`; returns how long
/// after `since` that was and the kinds of failure before it, in order (repeats folded). An answer from any
/// other backend panics at once, and so does no answer within `secs`.
pub async fn first_answer(
    port: u16,
    backend: &str,
    since: Instant,
    secs: u64,
) -> (Duration, Vec<String>) {
    first_answer_every(port, backend, since, secs, Duration::from_millis(10)).await
}

/// [`first_answer`], with `every` between tries.
pub async fn first_answer_every(
    port: u16,
    backend: &str,
    since: Instant,
    secs: u64,
    every: Duration,
) -> (Duration, Vec<String>) {
    let to = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    first_answer_at(to, backend, since, secs, every).await
}

/// [`first_answer_every`] at any address, for a Gateway whose address is not the host's loopback one.
pub async fn first_answer_at(
    to: SocketAddr,
    backend: &str,
    since: Instant,
    secs: u64,
    every: Duration,
) -> (Duration, Vec<String>) {
    let port = to.port();
    let mut failures = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let line = format!("hello {port}");
        let reply = tokio::task::spawn_blocking({
            let line = line.clone();
            move || exchange(to, &line)
        })
        .await
        .expect("exchange task");
        match reply {
            Ok(r) if r == format!("{backend} {line}") => return (since.elapsed(), failures),
            Ok(r) => panic!("port {port} reached the wrong backend: {r:?}, expected {backend}"),
            Err(e) => {
                if failures.last() != Some(&e.kind().to_string()) {
                    failures.push(e.kind().to_string());
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "port {port} did not reach {backend} within {secs} s; failures: {failures:?}"
        );
        tokio::time::sleep(every).await;
    }
}

/// Waits until 127.0.0.1:`port` refuses connections; returns how long after `since`. Panics after `secs`.
pub async fn refused(port: u16, since: Instant, secs: u64) -> Duration {
    refused_at(SocketAddr::from((Ipv4Addr::LOCALHOST, port)), since, secs).await
}

/// [`refused`] at any address.
pub async fn refused_at(to: SocketAddr, since: Instant, secs: u64) -> Duration {
    let port = to.port();
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match TcpStream::connect_timeout(&to, Duration::from_secs(1)) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return since.elapsed(),
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "port {port} still accepts connections {secs} s after it was withdrawn"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
