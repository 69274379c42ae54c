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
                    return Reach::Unreachable(format!(
                        "no answer from {target} within {}",
                        humantime::format_duration(timeout)
                    ));
                }
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    return Reach::Refused;
                }
                Ok(Err(e)) => return Reach::Unreachable(format!("{target}: {e}")),
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
