//! HTTP/2 to the upstream (`upstream.protocol = "h2c"`, or `"h2"` over TLS with ALPN): one
//! multiplexed connection through hyper's `client::conn::http2`, made again when it closes.
//! gRPC needs it: streaming both ways and trailers (`grpc-status`), which pass through as
//! body frames.
//!
//! None of the HTTP/1.1 reuse rules (`pool`) apply: every request is its own stream, and an
//! answer carries its stream id, so it cannot reach another request. hyper's connection task
//! and channels cost more CPU per request than the HTTP/1.1 client's inline exchange; HTTP/2
//! upstreams are chosen for what they carry (gRPC), not for the L1 hit path, which never
//! reaches here.

use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::uri::{Authority, Scheme};
use http::{Method, Request, Response, Uri};
use http_body::Body as HttpBody;
use http_body_util::combinators::BoxBody;
use http_body_util::BodyExt;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::{wire, ClientConfig, UpstreamBody};
use crate::error::ProxyError;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The request body as the HTTP/2 connection takes it (one type for every caller's body).
pub(super) type H2Body = BoxBody<Bytes, BoxError>;

/// The shared connection.
#[derive(Debug, Default)]
pub(super) struct H2Conn {
    // A tokio Mutex: held across the connect, so that concurrent requests after a close make
    // one new connection, not one each.
    send: tokio::sync::Mutex<Option<SendRequest<H2Body>>>,
}

/// The head of a request for an HTTP/2 upstream.
#[derive(Debug)]
pub(super) struct H2Head {
    pub(super) method: Method,
    pub(super) uri: Uri,
    pub(super) headers: HeaderMap,
}

/// The request head for HTTP/2: `:authority` from `added.host` (or the request's own
/// `Host`), the added fields inserted, `te: trailers` (gRPC servers look for it).
pub(super) fn head(
    config: &ClientConfig,
    parts: http::request::Parts,
    added: wire::Added<'_>,
) -> H2Head {
    let http::request::Parts {
        method,
        uri,
        mut headers,
        ..
    } = parts;
    let host = added
        .host
        .cloned()
        .or_else(|| headers.get(header::HOST).cloned());
    headers.remove(header::HOST);
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::TRANSFER_ENCODING);
    for (name, value) in added.extra {
        headers.append(name.clone(), value.clone());
    }
    headers.insert(header::TE, HeaderValue::from_static("trailers"));
    let authority = host
        .and_then(|h| Authority::try_from(h.as_bytes()).ok())
        .unwrap_or_else(|| {
            Authority::try_from(format!("{}:{}", config.host, config.port))
                .unwrap_or_else(|_| Authority::from_static("upstream"))
        });
    let mut built = Uri::builder()
        .scheme(if config.tls.is_some() {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        })
        .authority(authority);
    built = built.path_and_query(uri.path_and_query().map_or("/", |pq| pq.as_str()));
    H2Head {
        method,
        uri: built.build().unwrap_or_default(),
        headers,
    }
}

impl H2Conn {
    /// Sends a request on the shared connection (made first if there is none or it closed),
    /// and returns the answer's head once it came, before `deadline`.
    pub(super) async fn send<B>(
        &self,
        config: &ClientConfig,
        head: H2Head,
        body: B,
        deadline: Instant,
    ) -> Result<Response<UpstreamBody>, ProxyError>
    where
        B: HttpBody<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        let work = async {
            let mut send = self.sender(config, deadline).await?;
            let mut req = Request::new(BoxBody::new(body.map_err(Into::into)));
            *req.method_mut() = head.method;
            *req.uri_mut() = head.uri;
            *req.headers_mut() = head.headers;
            send.ready().await.map_err(protocol)?;
            let resp = send.send_request(req).await.map_err(protocol)?;
            Ok(resp.map(UpstreamBody::h2))
        };
        match tokio::time::timeout_at(deadline.into(), work).await {
            Ok(result) => result,
            Err(_) => Err(ProxyError::UpstreamTimeout),
        }
    }

    async fn sender(
        &self,
        config: &ClientConfig,
        deadline: Instant,
    ) -> Result<SendRequest<H2Body>, ProxyError> {
        let mut slot = self.send.lock().await;
        if let Some(send) = slot.as_ref().filter(|s| !s.is_closed()) {
            return Ok(send.clone());
        }
        *slot = None;
        let io = super::connect(config, deadline).await?;
        #[cfg(feature = "tls")]
        if config.tls.is_some() && !io.alpn_h2() {
            return Err(ProxyError::UpstreamTls(format!(
                "{}:{}: the upstream did not agree to HTTP/2 (ALPN h2)",
                config.host, config.port
            )));
        }
        let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(io))
            .await
            .map_err(protocol)?;
        tokio::spawn(async move {
            if let Err(error) = conn.await {
                tracing::debug!(%error, "HTTP/2 upstream connection ended with an error.");
            }
        });
        *slot = Some(send.clone());
        Ok(send)
    }
}

fn protocol(e: hyper::Error) -> ProxyError {
    ProxyError::UpstreamProtocol(format!("HTTP/2: {e}"))
}
