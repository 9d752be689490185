//! The HTTP/1.1 client to the upstream: a pool of kept-alive connections to one host, used by
//! the task that serves the request.
//!
//! Why not hyper's client: hyper runs every client connection as its own task and hands the
//! request, the response head and every body chunk across channels to it. For a sidecar whose
//! upstream answers in microseconds on loopback, those hand-offs cost more CPU than the
//! exchange itself. Measured (issue 15, callgrind, `scripts/instructions-per-request.sh`,
//! pass-through at wrk -c16, the same proxy code over either client): hyper's
//! `client::conn::http1` under a small pool of `SendRequest` handles (checked ready before
//! reuse, returned when the body ended) ran 30,111 userspace instructions per request, this
//! client 18,998: 1.58x, far outside the 15% that would justify the switch; hyper's
//! connection task alone was ~12.7k per request, with 5 task polls instead of 2 (nginx:
//! ~19.6k). So the request's task writes the request and reads the response on the socket
//! itself, the way nginx does, and a response that arrived whole with its head is returned as
//! one buffer, its connection already back in the pool. The price is that the reuse rules
//! hyper enforces are ours to enforce: they live in `client::pool`, and the adversarial suite
//! (`tests/upstream_adversarial.rs`, `wire_props`) holds this client to them.
//!
//! # Connection reuse (what keeps one caller's answer from reaching another)
//!
//! On HTTP/1.1 nothing in an answer says which request it answers: a connection is reused
//! only when the next answer on it can only be the next request's. The rules, all enforced
//! by [`Pool`] (see its doc, one line per attack it stops), are those of nginx's upstream
//! keepalive and hyper's client: reuse only after a completely written request and a
//! completely read, definitely framed answer with nothing left over; an idle connection that
//! turns readable (a byte or the close) is closed at checkout; a request with content never
//! leaves its connection reusable (its upstream may not have read the body, and would read it
//! as a request); a fill whose answer will be stored takes a connection that has been quiet a
//! while, or a new one.
//!
//! A request that may be sent twice (idempotent method, no body) is retried once on a new
//! connection when a reused one fails before any byte of the answer; no other request is
//! ever replayed (RFC 9110 §9.2.2).
//!
//! The wait for an answer is bounded by `timeout` from the end of the request body (a body
//! that does not come is the client's fault: `client_body_timeout` between its chunks), with
//! one tokio sleep per connection whose deadline moves with each request: moving a deadline
//! later is one atomic update in tokio, where a new timer per request cost a wheel insert and
//! removal (~700 instructions).

mod body;
mod h2;
pub mod io;
mod pool;
pub mod wire;

use std::future::{poll_fn, Future};
use std::io as stdio;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::Body as HttpBody;
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use body::Framing as BodyFraming;
pub use body::UpstreamBody;
use io::{poll_fill, Io};
use pool::{Checkout, Pool};
use wire::{Framing, RequestFraming, ResponseHead};

use crate::error::ProxyError;

/// Read buffer size; a read is never attempted with less than `MIN_READ` bytes free.
const READ_BUF: usize = 8 * 1024;
const MIN_READ: usize = 2 * 1024;

#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub host: String,
    pub port: u16,
    pub connect_timeout: Duration,
    /// From the end of the request body to a complete response head (connecting included
    /// for requests without a body).
    pub timeout: Duration,
    /// Longest wait for the next piece of a request body from the client.
    pub body_timeout: Duration,
    pub pool_max_idle: usize,
    pub pool_idle_timeout: Duration,
    /// How long a pooled connection must have been idle to carry a fill that will be stored.
    pub fill_quiet: Duration,
    /// TLS to the upstream (`https://`); `None` in the clear.
    pub tls: Option<TlsClient>,
    /// HTTP/2 (`h2c`, or `h2` with `tls`) instead of the HTTP/1.1 pool.
    pub http2: bool,
}

/// What a TLS connection needs: the connector (or why none could be built: every connect
/// then fails with that, a 502 `upstream_tls`, and the process keeps serving the rest) and
/// the name sent as SNI and verified.
#[derive(Clone)]
pub struct TlsClient {
    #[cfg(feature = "tls")]
    pub connector: Result<tokio_rustls::TlsConnector, String>,
    #[cfg(feature = "tls")]
    pub server_name: rustls::pki_types::ServerName<'static>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient").finish_non_exhaustive()
    }
}

impl TlsClient {
    /// The TLS settings of `upstream`, offering `alpn`.
    #[cfg(feature = "tls")]
    pub fn new(upstream: &crate::config::UpstreamTls, alpn: &[&[u8]]) -> TlsClient {
        let connector =
            crate::tls::client_config(&upstream.files, alpn).map(tokio_rustls::TlsConnector::from);
        if let Err(error) = &connector {
            tracing::error!(%error, "Upstream TLS settings are unusable; requests will fail with 502 upstream_tls.");
        }
        let server_name = rustls::pki_types::ServerName::try_from(upstream.server_name.clone())
            .unwrap_or_else(|_| {
                rustls::pki_types::ServerName::try_from("invalid.invalid").expect("a DNS name")
            });
        TlsClient {
            connector,
            server_name,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Client {
    config: Arc<ClientConfig>,
    pool: Arc<Pool>,
    /// The HTTP/2 connection, when `config.http2`.
    h2: Option<Arc<h2::H2Conn>>,
}

/// One connection, what was read from it but not yet consumed, and the deadline of the
/// answer it waits for.
#[derive(Debug)]
struct Conn {
    io: Io,
    buf: BytesMut,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

/// A request whose head is encoded ([`Client::encode`]), with its body.
#[derive(Debug)]
pub struct Outgoing<B> {
    head: BytesMut,
    framing: RequestFraming,
    method: Method,
    /// Empty; kept for its allocation.
    headers: HeaderMap,
    body: B,
    /// May go again on a new connection (idempotent, no body).
    replayable: bool,
    /// Its answer will be stored: it needs a connection nothing stray can arrive on.
    stored: bool,
    /// It asks for a protocol upgrade (`Upgrade` + `Connection: upgrade` in the head): a
    /// `101` answer hands the connection over ([`Upgraded`]).
    upgrade: bool,
    started: Instant,
    /// For the complete response head, connecting included.
    deadline: Instant,
}

impl<B> Outgoing<B> {
    /// When the request was encoded: its timeout runs from here.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Marks a fill whose answer will be stored (and then served to many callers): it goes
    /// on a connection that has been quiet for `fill_quiet`, or on a new one.
    pub fn to_be_stored(mut self) -> Self {
        self.stored = true;
        self
    }

    /// Marks a request that asks for a protocol upgrade: a `101` answer is accepted and its
    /// connection handed over in the response's extensions ([`Upgraded`]).
    pub fn to_upgrade(mut self) -> Self {
        self.upgrade = true;
        self
    }

    /// The head as it will be written.
    #[cfg(test)]
    pub fn head(&self) -> &[u8] {
        &self.head
    }
}

/// The upstream connection of a `101` answer, in the response's extensions (which need
/// `Clone`: whoever takes it first has it).
#[derive(Clone, Debug)]
pub struct Upgraded(Arc<std::sync::Mutex<Option<UpgradedIo>>>);

/// A switched upstream connection and the bytes of the new protocol read with the `101`.
#[derive(Debug)]
pub struct UpgradedIo {
    pub io: Io,
    pub read_ahead: Bytes,
}

impl Upgraded {
    pub fn take(&self) -> Option<UpgradedIo> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Why an exchange failed, and whether the request may go again on a new connection.
struct Failure {
    error: ProxyError,
    /// Nothing of an answer arrived (the connection was dead before or as we wrote).
    nothing_received: bool,
}

impl Client {
    pub fn new(config: ClientConfig) -> Client {
        let pool = Arc::new(Pool::new(
            config.pool_max_idle,
            config.pool_idle_timeout,
            config.fill_quiet,
        ));
        Client {
            h2: config.http2.then(Default::default),
            config: Arc::new(config),
            pool,
        }
    }

    /// Sends `req` as it is; see [`Self::encode`] and [`Self::send_encoded`].
    pub fn send<'a, B>(
        &'a self,
        req: Request<B>,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, ProxyError>> + 'a
    where
        B: HttpBody<Data = Bytes> + Send + Sync + 'static,
        B::Error: std::fmt::Display + Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.send_encoded(self.encode(req, wire::Added::default(), Instant::now()))
    }

    /// Encodes `req`'s head (path and query from its URI; the caller has prepared the
    /// headers, hop-by-hop fields already removed). What it returns holds no part of the
    /// request but its body: a request's header values share the server's read buffer, and
    /// while any of them lives, the server's next read needs a new buffer. `added` are
    /// fields written besides the request's own; `now` starts the request's `timeout` (the
    /// caller's clock read, not another).
    pub fn encode<B>(&self, req: Request<B>, added: wire::Added<'_>, now: Instant) -> Outgoing<B>
    where
        B: HttpBody<Data = Bytes>,
    {
        let (parts, body) = req.into_parts();
        let no_body = body.is_end_stream();
        if self.h2.is_some() {
            return self.encode_h2(parts, body, added, now);
        }
        let framing = match body.size_hint().exact() {
            // A body-carrying method says "no body" explicitly (RFC 9110 §8.6).
            _ if no_body => match parts.method {
                Method::POST | Method::PUT | Method::PATCH => RequestFraming::Length(0),
                _ => RequestFraming::Empty,
            },
            Some(n) => RequestFraming::Length(n),
            None => RequestFraming::Chunked,
        };
        let path = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let mut head = BytesMut::new();
        wire::encode_request_head(
            &mut head,
            &parts.method,
            path,
            &parts.headers,
            added,
            framing,
        );
        let replayable = no_body && parts.method.is_idempotent();
        let http::request::Parts {
            method,
            mut headers,
            ..
        } = parts;
        // Emptied, its allocation is reused for the answer's fields.
        headers.clear();
        Outgoing {
            head,
            framing,
            method,
            headers,
            body,
            replayable,
            stored: false,
            upgrade: false,
            started: now,
            deadline: now + self.config.timeout,
        }
    }

    /// [`Self::encode`] for an HTTP/2 upstream: the head is kept as parts, the URI's text in
    /// `head` and the fields in `headers` (no field of its own, so that the HTTP/1.1 request is
    /// no larger). Out of line, so that the HTTP/1.1 `encode` stays small enough to inline.
    #[cold]
    #[inline(never)]
    fn encode_h2<B>(
        &self,
        parts: http::request::Parts,
        body: B,
        added: wire::Added<'_>,
        now: Instant,
    ) -> Outgoing<B> {
        let h2::H2Head {
            method,
            uri,
            headers,
        } = h2::head(&self.config, parts, added);
        Outgoing {
            head: BytesMut::from(uri.to_string().as_bytes()),
            framing: RequestFraming::Empty,
            method,
            headers,
            replayable: false,
            stored: false,
            upgrade: false,
            started: now,
            deadline: now + self.config.timeout,
            body,
        }
    }

    /// Sends an encoded request and returns the response head with a body that reads on
    /// demand. Interim (1xx) responses are skipped.
    pub fn send_encoded<'a, B>(
        &'a self,
        out: Outgoing<B>,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, ProxyError>> + 'a
    where
        B: HttpBody<Data = Bytes> + Send + Sync + 'static,
        B::Error: std::fmt::Display + Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let Outgoing {
            head,
            framing,
            method,
            mut headers,
            body,
            replayable,
            stored,
            upgrade,
            started,
            deadline,
        } = out;
        let checkout = if stored {
            Checkout::Quiet
        } else {
            Checkout::Newest
        };
        async move {
            if let Some(conn) = &self.h2 {
                let head = h2::H2Head {
                    method,
                    uri: http::Uri::from_maybe_shared(head.freeze()).unwrap_or_default(),
                    headers,
                };
                // Boxed: rare beside the HTTP/1.1 exchange, whose state stays as it was.
                let send = Box::pin(conn.send(&self.config, head, body, deadline));
                return send.await;
            }
            let mut body = std::pin::pin!(body);
            let mut fresh_only = false;
            loop {
                let (mut conn, reused) = match (!fresh_only)
                    .then(|| self.pool.take(started, checkout))
                    .flatten()
                {
                    Some(conn) => (conn, true),
                    // Boxed: the connect state (name lookup, TCP connect) is large and rare;
                    // kept inline it would be copied with every request's future.
                    None => {
                        let connect = Box::pin(self.connect(deadline));
                        (connect.await?, false)
                    }
                };
                conn.deadline.as_mut().reset(deadline.into());
                let answer = exchange(
                    &mut conn,
                    &head,
                    framing,
                    body.as_mut(),
                    &method,
                    &mut headers,
                    &self.config,
                    upgrade,
                )
                .await;
                match answer {
                    Ok(answer) => {
                        // An upgrade request declined (any answer but 101) does not leave its
                        // connection reusable either: the upstream read `Upgrade` on it, and
                        // whether it still speaks HTTP/1.1 there is its word alone.
                        let has_content = upgrade
                            || !matches!(
                                framing,
                                RequestFraming::Empty | RequestFraming::Length(0)
                            );
                        return Ok(self.response(conn, answer, has_content));
                    }
                    Err(f) if reused && replayable && f.nothing_received => {
                        tracing::debug!(error = %f.error, "Reused upstream connection was closed; retrying on a new one.");
                        fresh_only = true;
                    }
                    Err(f) => return Err(f.error),
                }
            }
        }
    }

    fn response(
        &self,
        mut conn: Conn,
        head: ResponseHead,
        has_content: bool,
    ) -> Response<UpstreamBody> {
        if head.status == StatusCode::SWITCHING_PROTOCOLS {
            // Only an upgrade request gets here (`parse_final`). The connection now carries
            // another protocol: it leaves the client for the tunnel, never for the pool.
            let mut resp = Response::new(UpstreamBody::buffered(None));
            *resp.status_mut() = head.status;
            *resp.headers_mut() = head.headers;
            resp.extensions_mut()
                .insert(Upgraded(Arc::new(std::sync::Mutex::new(Some(
                    UpgradedIo {
                        io: conn.io,
                        read_ahead: conn.buf.freeze(),
                    },
                )))));
            return resp;
        }
        let reusable = pool::may_reuse(&head, has_content);
        let body = match head.framing {
            Framing::Empty => Some(Bytes::new()),
            Framing::Length(n) if conn.buf.len() as u64 >= n => {
                Some(conn.buf.split_to(n as usize).freeze())
            }
            _ => None,
        };
        let body = match body {
            Some(bytes) => {
                self.pool.release(conn, reusable);
                UpstreamBody::buffered(Some(bytes))
            }
            None => {
                let framing = match head.framing {
                    Framing::Length(n) => BodyFraming::Length(n),
                    Framing::Chunked => BodyFraming::Chunked(wire::Chunked::Size),
                    Framing::Empty | Framing::Close => BodyFraming::Close,
                };
                UpstreamBody::streaming(conn, framing, reusable, self.pool.clone())
            }
        };
        let mut resp = Response::new(body);
        *resp.status_mut() = head.status;
        *resp.headers_mut() = head.headers;
        resp
    }

    /// A new connection: name resolution and TCP connect, both within `connect_timeout` and
    /// before `deadline` (the whole request's).
    async fn connect(&self, deadline: Instant) -> Result<Conn, ProxyError> {
        let io = connect(&self.config, deadline).await?;
        Ok(Conn {
            io,
            buf: BytesMut::with_capacity(READ_BUF),
            // Registered with tokio's wheel when first polled.
            deadline: Box::pin(tokio::time::sleep_until(deadline.into())),
        })
    }
}

/// A new connection to the upstream: name resolution, TCP connect and (for `https://`) the
/// TLS handshake, all within `connect_timeout` and before `deadline` (the whole request's).
pub(crate) async fn connect(c: &ClientConfig, deadline: Instant) -> Result<Io, ProxyError> {
    {
        let connect_by = (Instant::now() + c.connect_timeout).min(deadline);
        let attempt = async {
            let mut last = None;
            for addr in tokio::net::lookup_host((c.host.as_str(), c.port)).await? {
                match TcpStream::connect(addr).await {
                    Ok(io) => {
                        io.set_nodelay(true)?;
                        return Ok(io);
                    }
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| {
                stdio::Error::new(stdio::ErrorKind::NotFound, "the name has no address")
            }))
        };
        let tcp = match tokio::time::timeout_at(connect_by.into(), attempt).await {
            Ok(Ok(tcp)) => tcp,
            Err(_) if connect_by == deadline => return Err(ProxyError::UpstreamTimeout),
            Ok(Err(e)) => {
                return Err(ProxyError::UpstreamConnect(format!(
                    "{}:{}: {e}",
                    c.host, c.port
                )))
            }
            Err(_) => {
                return Err(ProxyError::UpstreamConnect(format!(
                    "{}:{}: connect timed out after {:?}",
                    c.host, c.port, c.connect_timeout
                )))
            }
        };
        match &c.tls {
            None => Ok(Io::Plain(tcp)),
            #[cfg(feature = "tls")]
            Some(tls) => {
                let connector = tls
                    .connector
                    .as_ref()
                    .map_err(|e| ProxyError::UpstreamTls(format!("{}:{}: {e}", c.host, c.port)))?;
                let handshake = connector.connect(tls.server_name.clone(), tcp);
                match tokio::time::timeout_at(connect_by.into(), handshake).await {
                    Ok(Ok(stream)) => Ok(Io::Tls(Box::new(stream))),
                    Err(_) if connect_by == deadline => Err(ProxyError::UpstreamTimeout),
                    Ok(Err(e)) => Err(ProxyError::UpstreamTls(format!(
                        "{}:{}: {e}",
                        c.host, c.port
                    ))),
                    Err(_) => Err(ProxyError::UpstreamTls(format!(
                        "{}:{}: TLS handshake timed out after {:?}",
                        c.host, c.port, c.connect_timeout
                    ))),
                }
            }
            #[cfg(not(feature = "tls"))]
            Some(_) => Err(ProxyError::UpstreamTls(
                "this binary was built without the `tls` feature".into(),
            )),
        }
    }
}

/// Writes the request and reads until a final response head is parsed into `headers`. The
/// head and the wait for the answer are bounded by the connection's deadline; a body, by
/// `body_timeout` between its pieces, and the deadline then moves to `timeout` after its end.
#[allow(clippy::too_many_arguments)]
async fn exchange<B>(
    conn: &mut Conn,
    head: &[u8],
    framing: RequestFraming,
    mut body: Pin<&mut B>,
    method: &Method,
    headers: &mut HeaderMap,
    config: &ClientConfig,
    upgrade: bool,
) -> Result<ResponseHead, Failure>
where
    B: HttpBody<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let Conn { io, buf, deadline } = conn;
    let io_failure = |e: stdio::Error, nothing_received| Failure {
        error: ProxyError::UpstreamProtocol(format!("upstream connection: {e}")),
        nothing_received,
    };
    within(deadline.as_mut(), write_all(io, head))
        .await
        .and_then(|r| r.map_err(|e| io_failure(e, true)))?;
    if framing != RequestFraming::Empty && !body.is_end_stream() {
        // Sent, or cut short by the upstream's close or reset: what it said, if anything,
        // is read below. (A request with a body is never retried, so whether anything was
        // received before a failure does not matter past this point.)
        if let Uploaded::Answered(head) =
            upload(io, buf, framing, body.as_mut(), method, headers, config).await?
        {
            return Ok(head);
        }
        // The upstream's time starts when it has the whole request.
        deadline
            .as_mut()
            .reset((Instant::now() + config.timeout).into());
    }
    loop {
        match parse_final(buf, method, headers, upgrade) {
            Ok(Some(head)) => return Ok(head),
            Ok(None) => {}
            Err(error) => {
                return Err(Failure {
                    error,
                    nothing_received: false,
                })
            }
        }
        let received_before = !buf.is_empty();
        let read = within(deadline.as_mut(), poll_fn(|cx| poll_fill(io, buf, cx))).await?;
        match read {
            Ok(0) => {
                return Err(Failure {
                    error: ProxyError::UpstreamProtocol(
                        "upstream closed the connection before answering".into(),
                    ),
                    nothing_received: !received_before,
                })
            }
            Ok(_) => {}
            Err(e) => return Err(io_failure(e, !received_before)),
        }
    }
}

/// `fut`, unless the deadline passes first (an upstream timeout). The deadline is polled
/// only when `fut` is pending: a request answered at once never registers its timer.
async fn within<F: Future>(
    mut deadline: Pin<&mut tokio::time::Sleep>,
    fut: F,
) -> Result<F::Output, Failure> {
    let mut fut = std::pin::pin!(fut);
    poll_fn(|cx| match fut.as_mut().poll(cx) {
        Poll::Ready(out) => Poll::Ready(Ok(out)),
        Poll::Pending if deadline.as_mut().poll(cx).is_ready() => Poll::Ready(Err(Failure {
            error: ProxyError::UpstreamTimeout,
            nothing_received: false,
        })),
        Poll::Pending => Poll::Pending,
    })
    .await
}

/// A final response head at the start of `buf`, interim (1xx) answers skipped. A `101` is
/// final for an upgrade request, and an error otherwise: no upgrade was asked for, and the
/// connection now speaks another protocol.
fn parse_final(
    buf: &mut BytesMut,
    method: &Method,
    headers: &mut HeaderMap,
    upgrade: bool,
) -> Result<Option<ResponseHead>, ProxyError> {
    loop {
        match wire::parse_response_head(buf, method, headers) {
            // Asked for: what follows the head is the new protocol's, the tunnel's to carry.
            Ok(Some(head)) if head.status == StatusCode::SWITCHING_PROTOCOLS && upgrade => {
                return Ok(Some(head))
            }
            Ok(Some(head)) if head.status == StatusCode::SWITCHING_PROTOCOLS => {
                return Err(ProxyError::UpstreamProtocol(
                    "upstream switched protocols; upgrades are not proxied".into(),
                ));
            }
            // 100 Continue, 103 Early Hints: the final answer follows.
            Ok(Some(head)) if head.status.is_informational() => continue,
            Ok(head) => return Ok(head),
            Err(message) => return Err(ProxyError::UpstreamProtocol(message)),
        }
    }
}

/// How sending a request body ended.
enum Uploaded {
    /// All sent, or the upstream closed or reset while it went out: its answer, if any, is
    /// still to be read.
    Sent,
    /// A final answer came before the body was all sent: the rest is not sent (the upstream
    /// has decided).
    Answered(ResponseHead),
}

/// Sends the body, watching the connection meanwhile: an upstream may answer before it has
/// read the body (401, 413, 417...), and the upload then stops at once instead of pushing
/// the rest at an upstream that will not read it. Each piece of the body must come within
/// `body_timeout`, and be taken by the upstream within `timeout`.
async fn upload<B>(
    io: &mut Io,
    buf: &mut BytesMut,
    framing: RequestFraming,
    body: Pin<&mut B>,
    method: &Method,
    headers: &mut HeaderMap,
    config: &ClientConfig,
) -> Result<Uploaded, Failure>
where
    B: HttpBody<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    match io {
        Io::Plain(tcp) => {
            let (reader, mut writer) = tcp.split();
            let reader: &TcpStream = reader.as_ref();
            let read =
                |buf: &mut BytesMut, cx: &mut Context<'_>| io::poll_fill_tcp(reader, buf, cx);
            upload_with(
                &mut writer,
                read,
                buf,
                framing,
                body,
                method,
                headers,
                config,
            )
            .await
        }
        #[cfg(feature = "tls")]
        Io::Tls(tls) => {
            let shared = std::sync::Mutex::new(&mut **tls);
            let mut writer = io::Locked(&shared);
            let read = |buf: &mut BytesMut, cx: &mut Context<'_>| {
                let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
                io::poll_fill_stream(&mut **s, buf, cx)
            };
            upload_with(
                &mut writer,
                read,
                buf,
                framing,
                body,
                method,
                headers,
                config,
            )
            .await
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn upload_with<B, W, R>(
    writer: &mut W,
    mut read: R,
    buf: &mut BytesMut,
    framing: RequestFraming,
    body: Pin<&mut B>,
    method: &Method,
    headers: &mut HeaderMap,
    config: &ClientConfig,
) -> Result<Uploaded, Failure>
where
    B: HttpBody<Data = Bytes>,
    B::Error: std::fmt::Display,
    W: tokio::io::AsyncWrite + Unpin,
    R: FnMut(&mut BytesMut, &mut Context<'_>) -> Poll<stdio::Result<usize>>,
{
    let mut send = std::pin::pin!(send_body(
        writer,
        framing,
        body,
        config.body_timeout,
        config.timeout
    ));
    poll_fn(|cx| {
        if let Poll::Ready(sent) = send.as_mut().poll(cx) {
            return Poll::Ready(match sent {
                Ok(()) | Err(BodyFailure::Upstream) => Ok(Uploaded::Sent),
                Err(BodyFailure::Client(error)) => Err(Failure {
                    error,
                    nothing_received: false,
                }),
                Err(BodyFailure::UpstreamStalled) => Err(Failure {
                    error: ProxyError::UpstreamTimeout,
                    nothing_received: false,
                }),
            });
        }
        loop {
            match read(buf, cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(Ok(Uploaded::Sent)),
                Poll::Ready(Ok(_)) => match parse_final(buf, method, headers, false) {
                    Ok(Some(head)) => return Poll::Ready(Ok(Uploaded::Answered(head))),
                    Ok(None) => {}
                    Err(error) => {
                        return Poll::Ready(Err(Failure {
                            error,
                            nothing_received: false,
                        }))
                    }
                },
            }
        }
    })
    .await
}

enum BodyFailure {
    /// The client's body was malformed, cut short or too slow.
    Client(ProxyError),
    /// Writing to the upstream failed.
    Upstream,
    /// The upstream took nothing of the body for `timeout`.
    UpstreamStalled,
}

/// Sends the body: each piece must come from the client within `idle`, and be taken by the
/// upstream within `stall` (an upstream that neither reads nor answers would otherwise hold
/// the request, its connection and the client's forever).
async fn send_body<B, W>(
    w: &mut W,
    framing: RequestFraming,
    mut body: Pin<&mut B>,
    idle: Duration,
    stall: Duration,
) -> Result<(), BodyFailure>
where
    B: HttpBody<Data = Bytes>,
    B::Error: std::fmt::Display,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut out = BytesMut::new();
    loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => return Err(BodyFailure::Client(ProxyError::ClientBodyTimeout)),
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(BodyFailure::Client(ProxyError::ClientBody(e.to_string())))
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                // Trailers (a gRPC client's, say) fit only the chunked coding; a body of
                // known length has no place for them.
                if let (Ok(t), RequestFraming::Chunked) = (frame.into_trailers(), framing) {
                    out.clear();
                    wire::encode_last_chunk(&mut out, &t);
                    write_within(w, &out, stall).await?;
                    return Ok(());
                }
                continue;
            }
        };
        let piece: &[u8] = if framing == RequestFraming::Chunked {
            if data.is_empty() {
                continue; // an empty chunk would end the body
            }
            out.clear();
            wire::encode_chunk(&mut out, &data);
            &out
        } else {
            &data
        };
        write_within(w, piece, stall).await?;
    }
    if framing == RequestFraming::Chunked {
        write_within(w, wire::LAST_CHUNK, stall).await?;
    }
    Ok(())
}

async fn write_within<W>(w: &mut W, bytes: &[u8], stall: Duration) -> Result<(), BodyFailure>
where
    W: tokio::io::AsyncWrite + Unpin,
{
    match tokio::time::timeout(stall, async {
        w.write_all(bytes).await?;
        // TLS keeps what the socket did not take; a no-op on TCP.
        w.flush().await
    })
    .await
    {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(BodyFailure::Upstream),
        Err(_) => Err(BodyFailure::UpstreamStalled),
    }
}

impl Conn {
    /// Reads what the socket has into the buffer; `Ok(0)` is the upstream's close.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<stdio::Result<usize>> {
        poll_fill(&mut self.io, &mut self.buf, cx)
    }
}

/// Writes `bytes`; over TLS also pushes out what rustls still holds.
async fn write_all(io: &mut Io, bytes: &[u8]) -> stdio::Result<()> {
    match io {
        Io::Plain(tcp) => tcp.write_all(bytes).await,
        #[cfg(feature = "tls")]
        Io::Tls(tls) => {
            tls.write_all(bytes).await?;
            tls.flush().await
        }
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod wire_props;
