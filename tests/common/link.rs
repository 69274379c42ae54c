//! A loopback TCP link to `upstream` that a test cuts, silences, slows and heals on its own, without
//! touching the servers other tests share: a private site's leaf-node link, or one worker's path to the
//! apiserver.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const UP: u8 = 0;
const CUT: u8 = 1;
const SILENT: u8 = 2;

/// Up: bytes pass, each chunk held for the delay. Cut: every connection is closed, a new one at once.
/// Silent: connections stay open and nothing passes, as a path that black-holes packets; they are closed
/// when it heals, so that the clients connect again.
pub struct Link {
    pub addr: String,
    state: Arc<AtomicU8>,
    delay_ms: Arc<AtomicU64>,
}

async fn pump(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    delay_ms: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let d = delay_ms.load(Ordering::SeqCst);
        if d > 0 {
            tokio::time::sleep(Duration::from_millis(d)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Link {
    pub async fn start(upstream: String) -> Link {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let state = Arc::new(AtomicU8::new(UP));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let (st, dl) = (state.clone(), delay_ms.clone());
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let at_accept = st.load(Ordering::SeqCst);
                if at_accept == CUT {
                    continue;
                }
                let (upstream, st, dl) = (upstream.clone(), st.clone(), dl.clone());
                tokio::spawn(async move {
                    let changed = |from: u8| {
                        let st = st.clone();
                        async move {
                            while st.load(Ordering::SeqCst) == from {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        }
                    };
                    if at_accept == SILENT {
                        changed(SILENT).await;
                        return;
                    }
                    let Ok(outbound) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (mut ir, mut iw) = inbound.into_split();
                    let (mut or, mut ow) = outbound.into_split();
                    tokio::select! {
                        () = pump(&mut ir, &mut ow, dl.clone()) => return,
                        () = pump(&mut or, &mut iw, dl) => return,
                        () = changed(UP) => {}
                    }
                    // Silenced: the connection stays open, carrying nothing, until the link changes again.
                    if st.load(Ordering::SeqCst) == SILENT {
                        changed(SILENT).await;
                    }
                    drop((ir, iw, or, ow));
                });
            }
        });
        Link {
            addr,
            state,
            delay_ms,
        }
    }

    pub fn cut(&self) {
        self.state.store(CUT, Ordering::SeqCst);
    }

    pub fn silence(&self) {
        self.state.store(SILENT, Ordering::SeqCst);
    }

    pub fn heal(&self) {
        self.state.store(UP, Ordering::SeqCst);
    }

    /// Holds every chunk this long before passing it on; 0 for none.
    pub fn delay(&self, d: Duration) {
        self.delay_ms.store(
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
    }
}

/// `GET path` on an admin address: the status code and the body.
pub fn admin_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((code, body))
}
