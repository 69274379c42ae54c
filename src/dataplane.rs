//! The data plane probe's connections, over the network: one TCP connect per attempt (the core's
//! [`crate::probe`] says what a series of them means).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;

use crate::probe::{DataPlane, Reach, socket_address};

/// How long an accepted connection must stay open to count as accepted: envoy closes one with no route,
/// or whose backend refuses, within a millisecond or two of accepting it.
const SETTLE: Duration = Duration::from_millis(50);

/// What a failed connect says. The worker's own shortages (file descriptors, local ports, buffers) say
/// nothing of the Gateway; no route says the address cannot be reached at all.
fn reach_of_error(e: &std::io::Error, target: &str) -> Reach {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::ConnectionRefused => Reach::Refused,
        _ if e.raw_os_error().is_some_and(crate::probe::is_local_errno) => {
            Reach::Local(format!("connecting to {target} from this host: {e}"))
        }
        ErrorKind::TimedOut => Reach::Silent(format!("no answer from {target}: {e}")),
        _ => Reach::Unreachable(format!("{target}: {e}")),
    }
}

/// Connects over TCP from the worker's host.
pub struct Tcp;

impl DataPlane for Tcp {
    fn connect<'a>(
        &'a self,
        host: &'a str,
        port: u16,
        timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = Reach> + Send + 'a>> {
        Box::pin(async move {
            let target = socket_address(host, port);
            let mut stream = match tokio::time::timeout(timeout, TcpStream::connect(&target)).await
            {
                Err(_) => {
                    return Reach::Silent(format!(
                        "no answer from {target} within {}",
                        humantime::format_duration(timeout)
                    ));
                }
                Ok(Err(e)) => return reach_of_error(&e, &target),
                Ok(Ok(s)) => s,
            };
            let mut byte = [0u8; 1];
            match tokio::time::timeout(SETTLE, stream.read(&mut byte)).await {
                // Still open: routed, envoy is reaching the backend (or the backend waits for us).
                Err(_) => Reach::Accepted,
                Ok(Ok(0)) | Ok(Err(_)) => Reach::Closed,
                Ok(Ok(_)) => Reach::Accepted,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workers_own_shortages_say_nothing_of_the_gateway() {
        // EMFILE, EADDRNOTAVAIL, ENOBUFS; then ECONNREFUSED and EHOSTUNREACH (Linux numbers).
        for errno in [24, 99, 105] {
            let e = std::io::Error::from_raw_os_error(errno);
            assert!(
                matches!(reach_of_error(&e, "203.0.113.10:40001"), Reach::Local(_)),
                "{e}"
            );
        }
        let refused = std::io::Error::from_raw_os_error(111);
        assert_eq!(reach_of_error(&refused, "x:1"), Reach::Refused);
        let no_route = std::io::Error::from_raw_os_error(113);
        assert!(matches!(
            reach_of_error(&no_route, "x:1"),
            Reach::Unreachable(_)
        ));
    }
}
