//! Test support: a recording origin on port 0, sidecache started in-process from a `Config`,
//! and a small client. Real sockets everywhere; nothing is mocked.
//!
//! ```ignore
//! let origin = Origin::start(|_req| Reply::json(r#"{"a":1}"#)).await;
//! let sc = Sidecache::start(&origin, ROUTE_GROUP).await;
//! let r = sc.get("/api/groups/VIP/EURUSD").await;
//! ```
#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use sidecache::app::{App, Running};
use sidecache::config::Config;
use tokio::net::TcpListener;

pub mod hostile;
pub mod redis;

/// A request as the origin received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// What the origin answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub delay: Duration,
}

impl Reply {
    pub fn json(body: impl Into<Bytes>) -> Reply {
        Reply {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.into(),
            delay: Duration::ZERO,
        }
    }

    pub fn status(mut self, s: u16) -> Reply {
        self.status = s;
        self
    }

    pub fn header(mut self, k: &str, v: &str) -> Reply {
        self.headers.push((k.into(), v.into()));
        self
    }

    pub fn delay(mut self, d: Duration) -> Reply {
        self.delay = d;
        self
    }
}

type Handler = Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>;

/// A counting HTTP/1.1 origin on 127.0.0.1:0.
pub struct Origin {
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    log: Arc<Mutex<Vec<Recorded>>>,
    /// The accept loop, which owns every connection's task: aborting it kills the origin.
    task: tokio::task::AbortHandle,
}

impl Origin {
    pub async fn start(handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let log = Arc::new(Mutex::new(Vec::new()));
        let handler: Handler = Arc::new(handler);
        let (h2, l2) = (hits.clone(), log.clone());
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                while connections.try_join_next().is_some() {}
                let (handler, hits, log) = (handler.clone(), h2.clone(), l2.clone());
                connections.spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (handler, hits, log) = (handler.clone(), hits.clone(), log.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let rec = Recorded {
                                method: parts.method,
                                uri: parts.uri.to_string(),
                                headers: parts.headers,
                                body,
                            };
                            hits.fetch_add(1, Ordering::SeqCst);
                            let reply = handler(&rec);
                            log.lock().unwrap().push(rec);
                            if !reply.delay.is_zero() {
                                tokio::time::sleep(reply.delay).await;
                            }
                            let mut resp = Response::new(Full::new(reply.body));
                            *resp.status_mut() = StatusCode::from_u16(reply.status).unwrap();
                            for (k, v) in &reply.headers {
                                resp.headers_mut().append(
                                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                                    v.parse().unwrap(),
                                );
                            }
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Origin {
            addr,
            hits,
            log,
            task: task.abort_handle(),
        }
    }

    /// Kills the origin: its listener and every connection close, so what comes next is a
    /// connect error (the port stays free for nobody else in practice: tests bind port 0).
    pub async fn kill(&self) {
        self.task.abort();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while tokio::net::TcpStream::connect(self.addr).await.is_ok() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the origin does not die"
            );
            tokio::task::yield_now().await;
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.log.lock().unwrap().clone()
    }
}

/// The route most tests use.
pub const ROUTE_GROUP: &str = r#"
[[route]]
name = "group"
match = "GET /api/groups/{group}/{symbol}"
ttl = "1h"
tags = ["group:{group}", "group:{group}:{symbol}"]
"#;

/// An identity-scoped route (keyed per `Authorization`).
pub const ROUTE_BALANCE: &str = r#"
[[route]]
name = "balance"
match = "GET /api/users/{id}/balance"
ttl = "1h"
scope = "identity"
"#;

/// A config for tests: both listeners on port 0, the given upstream, plus `extra` TOML.
pub fn config(upstream: &str, extra: &str) -> Config {
    Config::parse(&format!(
        r#"
[listen]
proxy = "127.0.0.1:0"
admin = "127.0.0.1:0"
[upstream]
url = "{upstream}"
connect_timeout = "500ms"
timeout = "2s"
[shutdown]
grace_period = "5s"
{extra}
"#
    ))
    .unwrap_or_else(|e| panic!("test config: {e}"))
}

/// A response read whole.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }

    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }
}

/// A sidecache instance running in this test's runtime.
pub struct Sidecache {
    pub running: Option<Running>,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Sidecache {
    pub async fn start(origin: &Origin, extra: &str) -> Sidecache {
        Self::start_with(config(&origin.url(), extra)).await
    }

    pub async fn start_with(config: Config) -> Sidecache {
        if std::env::var_os("SIDECACHE_TEST_LOG").is_some() {
            sidecache::telemetry::init(&config.log);
        }
        let with_l2 = config.l2.is_some();
        let running = App::build(config).start().await.unwrap();
        let sc = Sidecache {
            proxy: running.proxy_addr,
            admin: running.admin_addr,
            running: Some(running),
            client: client(),
        };
        if with_l2 {
            sc.wait_subscribed().await;
        }
        sc
    }

    /// Waits until `/readyz` answers 200 (e.g. after a readiness-gating warmup).
    pub async fn wait_ready(&self) {
        let ok = eventually(Duration::from_secs(5), async || {
            self.admin_get("/readyz").await.status == 200
        })
        .await;
        assert!(ok, "sidecache never became ready");
    }

    /// Waits until the pub/sub subscription is up (L1 is live, L2's namespace known).
    pub async fn wait_subscribed(&self) {
        let ok = eventually(Duration::from_secs(10), async || {
            metric(&self.metrics().await, "sidecache_pubsub_connected", &[]) == 1.0
        })
        .await;
        assert!(ok, "sidecache never subscribed to Redis pub/sub");
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.request(Method::GET, path, &[], Bytes::new()).await
    }

    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Resp {
        self.request(Method::GET, path, headers, Bytes::new()).await
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Resp {
        send(&self.client, self.proxy, method, path, headers, body.into()).await
    }

    pub async fn admin_get(&self, path: &str) -> Resp {
        send(
            &self.client,
            self.admin,
            Method::GET,
            path,
            &[],
            Bytes::new(),
        )
        .await
    }

    pub async fn metrics(&self) -> String {
        self.admin_get("/metrics").await.text().to_string()
    }

    pub async fn shutdown(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Resp {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(Full::new(body)).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    Resp {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

/// Polls `check` until it holds or `deadline` passes; returns whether it held.
pub async fn eventually(deadline: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The value of the sample `name{labels...}` in a Prometheus text exposition, summed over
/// every series whose labels contain all of `labels`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `[l2]` TOML for a standalone Redis at `url`, with short timeouts fit for tests.
pub fn l2_standalone(url: &str) -> String {
    format!("[l2]\nurl = \"{url}\"\ntimeout = \"200ms\"\nbreaker_open = \"200ms\"\nbreaker_failures = 3\n")
}

/// Writes `bytes` on a fresh connection and reads until the server closes it.
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The server may answer and close before it has read everything; a reset is fine.
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Log lines written while the returned guard lives, on this thread (a current-thread runtime
/// runs every task of the test on it).
pub fn capture_logs() -> (Arc<Mutex<Vec<u8>>>, tracing::subscriber::DefaultGuard) {
    #[derive(Clone)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let out = Arc::new(Mutex::new(Vec::new()));
    let sink = Sink(out.clone());
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .with_writer(move || sink.clone())
        .finish();
    (out, tracing::subscriber::set_default(subscriber))
}

pub fn lines_with(logs: &Mutex<Vec<u8>>, needle: &str) -> Vec<String> {
    String::from_utf8_lossy(&logs.lock().unwrap())
        .lines()
        .filter(|l| l.contains(needle))
        .map(String::from)
        .collect()
}
