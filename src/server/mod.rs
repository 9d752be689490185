//! Serving HTTP/1.1 and HTTP/2 (h2c, prior knowledge) on one listener until told to stop,
//! then letting in-flight requests and upgraded tunnels finish within a grace period. Used by
//! both the proxy and the admin listener.
//!
//! The protocol is told by a peek at the connection's first bytes (the HTTP/2 preface starts
//! `PRI `; no HTTP/1.1 method does): one syscall per connection, nothing per request, and an
//! HTTP/1.1 connection is then served exactly as before, by hyper's `http1` alone (hyper-util's
//! auto server would put a rewinding wrapper under every read of every connection).

mod drain;
mod timer;
pub mod tunnel;

pub use tunnel::Tunnels;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::metrics::ListenerMetrics;
use crate::telemetry::Throttle;

/// Connection settings of one listener.
#[derive(Debug, Clone, Default)]
pub struct ConnSettings {
    /// Largest request head; beyond it hyper answers 431.
    pub max_header_bytes: usize,
    /// Time a client gets to send a complete request head (slow-loris bound).
    pub header_read_timeout: Duration,
    /// Connections open at once; the next one is accepted when one closes. `None`: no bound
    /// (the admin listener, so that probes are answered whatever the proxy's load).
    pub max_connections: Option<usize>,
    /// The listener's open-connection gauge and accept-error counter.
    pub metrics: Option<ListenerMetrics>,
    /// The listener's upgraded connections, waited for (then closed) on shutdown.
    pub tunnels: Option<Tunnels>,
}

/// Concurrent streams an HTTP/2 client may open on one connection (RFC 9113 suggests at
/// least 100). Each is a request in flight, like an HTTP/1.1 connection's one.
const H2_MAX_STREAMS: u32 = 128;

/// The HTTP/2 connection preface's first bytes: enough to tell it from any HTTP/1.1 method.
const H2_PREFACE_START: &[u8; 4] = b"PRI ";

/// Which protocol a new connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}

/// Looks at the first bytes without taking them. A connection that sends nothing within
/// `timeout` (the header read timeout) is closed, as hyper would.
async fn detect(stream: &TcpStream, timeout: Duration) -> Option<Protocol> {
    let work = async {
        let mut first = [0u8; 4];
        loop {
            let n = stream.peek(&mut first).await.ok()?;
            if n == 0 || !H2_PREFACE_START.starts_with(&first[..n]) {
                // EOF or anything else: hyper's HTTP/1.1 parser answers it.
                return Some(Protocol::Http1);
            }
            if n == first.len() {
                return Some(Protocol::Http2);
            }
            // `P`, `PR` or `PRI` and nothing more yet (a client writing byte by byte): a
            // peek returns at once while the bytes are unread, so look again shortly.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(timeout, work).await.ok().flatten()
}

/// First pause after a failed `accept`; doubled on each failure in a row, up to
/// [`ACCEPT_BACKOFF_MAX`]. EMFILE does not clear by retrying at once: a loop that does spins
/// a core and floods the log.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// What a connection holds while it is open: its place in the budget and in the gauge, both
/// given back on drop, however the connection ends.
struct Slot {
    _permit: Option<OwnedSemaphorePermit>,
    metrics: Option<ListenerMetrics>,
}

impl Slot {
    fn open(permit: Option<OwnedSemaphorePermit>, metrics: Option<ListenerMetrics>) -> Slot {
        if let Some(m) = &metrics {
            m.open.inc();
        }
        Slot {
            _permit: permit,
            metrics,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(m) = &self.metrics {
            m.open.dec();
        }
    }
}

/// Accepts connections until `stop` turns true, then waits up to `grace` for open connections
/// to finish their in-flight requests (idle keep-alive connections are closed at once).
///
/// With `max_connections`, a permit is taken *before* `accept`: over the budget, new
/// connections wait in the kernel's backlog instead of being accepted and starved, and the
/// process never spends its descriptors on them.
pub async fn serve<H, F, B>(
    listener: TcpListener,
    settings: ConnSettings,
    handler: H,
    stop: watch::Receiver<bool>,
    grace: Duration,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    serve_each(listener, settings, handler.clone(), handler, stop, grace).await
}

/// [`serve`] with a handler of its own for HTTP/2 connections: the same work, written twice
/// by the caller on purpose. A handler called from both protocols has two call sites, and
/// the compiler then stops inlining it into HTTP/1.1's dispatcher: measured (callgrind), that
/// alone cost an L1 hit 160 instructions more, a `memcpy` of the answer's future among them.
pub async fn serve_each<H, F, B, G, FG, BG>(
    listener: TcpListener,
    settings: ConnSettings,
    handler: H,
    h2_handler: G,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    G: Fn(Request<Incoming>, SocketAddr) -> FG + Clone + Send + Sync + 'static,
    FG: Future<Output = Response<BG>> + Send + 'static,
    BG: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    BG::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let drain = drain::Drain::default();
    let mut builder = http1::Builder::new();
    builder
        .keep_alive(true)
        // Head and body copied into one buffer and sent with one `write`, not a `writev` of
        // the two. Measured on loopback (CPU time per request, wrk -c64): pass-through -3% on
        // the proxy's core and -3% on the receiving side's, L1 hits -2%; copying a body chunk
        // costs less than the kernel spends on a second iovec.
        .writev(false)
        // `max_header_size` is the exact limit (the parsed head's length); `max_buf_size`
        // alone let a head through whenever one read brought all of it, up to about twice
        // the limit.
        .max_header_size(settings.max_header_bytes)
        .max_buf_size(settings.max_header_bytes.max(8192))
        .header_read_timeout(settings.header_read_timeout);
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        // The HPACK-decoded head, the counterpart of `max_header_size`.
        .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX));
    let header_read_timeout = settings.header_read_timeout;
    let budget = settings
        .max_connections
        .map(|n| Arc::new(Semaphore::new(n.min(Semaphore::MAX_PERMITS))));
    let mut backoff = ACCEPT_BACKOFF_MIN;
    let mut quiet = Throttle::new(Duration::from_secs(1));
    loop {
        let permit = match &budget {
            Some(budget) => tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => break,
                p = budget.clone().acquire_owned() => Some(p.expect("the budget is never closed")),
            },
            None => None,
        };
        let accepted = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => {
                backoff = ACCEPT_BACKOFF_MIN;
                a
            }
            Err(error) => {
                // EMFILE and friends: count, log at most once a second, back off, keep serving.
                if let Some(m) = &settings.metrics {
                    m.accept_errors.inc();
                }
                if let Some(suppressed) = quiet.admit(Instant::now()) {
                    tracing::warn!(%error, suppressed, ?backoff, "Accept failed; backing off.");
                }
                tokio::select! {
                    biased;
                    _ = stop.wait_for(|s| *s) => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        let slot = Slot::open(permit, settings.metrics.clone());
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let h2_handler = h2_handler.clone();
        let mut h1 = builder.clone();
        let h2 = h2.clone();
        let drain = drain.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let result = match detect(&stream, header_read_timeout).await {
                None => return,
                Some(Protocol::Http1) => {
                    // One service type per protocol, written twice on purpose: shared, its
                    // `call` had two callers and was no longer inlined into HTTP/1.1's
                    // dispatcher (callgrind: +100 instructions per L1 hit, a `memcpy` of
                    // the answer's future among them).
                    let svc = service_fn(move |req| {
                        let fut = handler(req, peer);
                        async move { Ok::<_, Infallible>(fut.await) }
                    });
                    let conn = h1
                        .timer(timer::ConnTimer::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        // Upgrade requests (WebSocket) get their connection handed over.
                        .with_upgrades();
                    drain.watch(conn).await
                }
                Some(Protocol::Http2) => {
                    let svc = service_fn(move |req| {
                        let fut = h2_handler(req, peer);
                        async move { Ok::<_, Infallible>(fut.await) }
                    });
                    drain
                        .watch(h2.serve_connection(TokioIo::new(stream), svc))
                        .await
                }
            };
            if let Err(error) = result {
                tracing::debug!(%error, %peer, "Connection ended with an error.");
            }
        });
    }
    drop(listener);
    let deadline = tokio::time::Instant::now() + grace;
    if tokio::time::timeout_at(deadline, drain.stop())
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "Grace period over; closing the remaining connections."
        );
    }
    if let Some(tunnels) = &settings.tunnels {
        if tokio::time::timeout_at(deadline, tunnels.wait_closed())
            .await
            .is_err()
        {
            tracing::warn!(
                open = tunnels.len(),
                "Grace period over; closing the remaining upgraded connections."
            );
            tunnels.close_all();
            // Each closes as soon as its task runs.
            let _ = tokio::time::timeout(Duration::from_secs(1), tunnels.wait_closed()).await;
        }
    }
}

#[cfg(test)]
mod tests;
