//! Forwarding to the upstream: the pooled hyper-util client, and the header rules of a proxy
//! (RFC 9110 §7.6: hop-by-hop fields removed both ways, `Via`, `X-Forwarded-For` and
//! `Forwarded` added). Bodies are passed as streams; nothing here buffers.

use std::net::SocketAddr;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::body::Body;
use crate::config::UpstreamConfig;
use crate::error::ProxyError;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const VIA_VALUE: HeaderValue = HeaderValue::from_static("1.1 sidecache");

/// Fields that describe one connection, never the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop fields, including every field named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

#[derive(Debug, Clone)]
pub struct Upstream {
    client: Client<HttpConnector, Body>,
    authority: Authority,
    host: HeaderValue,
    timeout: Duration,
    preserve_host: bool,
}

impl Upstream {
    pub fn new(config: &UpstreamConfig) -> Upstream {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.pool_max_idle)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        let authority = config
            .url
            .authority()
            .cloned()
            .expect("validated upstream url has an authority");
        let host = HeaderValue::from_str(authority.as_str()).expect("authority is a header value");
        Upstream {
            client,
            authority,
            host,
            timeout: config.timeout,
            preserve_host: config.preserve_host,
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Turns a client request into the upstream request: same method, path, query and body;
    /// hop-by-hop fields removed; forwarding fields added.
    pub fn prepare<B>(&self, req: Request<B>, client: SocketAddr) -> Request<B> {
        let (mut parts, body) = req.into_parts();
        let pq = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(Scheme::HTTP);
        uri.authority = Some(self.authority.clone());
        uri.path_and_query = Some(pq);
        parts.uri = Uri::from_parts(uri).expect("scheme, authority and path make a URI");
        parts.version = http::Version::HTTP_11;

        let h = &mut parts.headers;
        strip_hop_by_hop(h);
        let original_host = h.get(header::HOST).cloned();
        if !self.preserve_host || original_host.is_none() {
            h.insert(header::HOST, self.host.clone());
        }
        add_forwarded(h, client.ip(), original_host.as_ref());
        h.append(header::VIA, VIA_VALUE);
        Request::from_parts(parts, body)
    }

    /// Sends a prepared request; the timeout covers the wait for the response head.
    pub async fn send(&self, req: Request<Body>) -> Result<Response<Incoming>, ProxyError> {
        match tokio::time::timeout(self.timeout, self.client.request(req)).await {
            Err(_) => Err(ProxyError::UpstreamTimeout),
            Ok(Err(e)) if e.is_connect() => Err(ProxyError::UpstreamConnect(source_chain(&e))),
            Ok(Err(e)) => Err(ProxyError::UpstreamProtocol(source_chain(&e))),
            Ok(Ok(mut resp)) => {
                strip_hop_by_hop(resp.headers_mut());
                Ok(resp)
            }
        }
    }
}

fn add_forwarded(h: &mut HeaderMap, ip: std::net::IpAddr, host: Option<&HeaderValue>) {
    let ip_text = ip.to_string();
    let xff = match h.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {ip_text}"),
        None => ip_text.clone(),
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        h.insert(X_FORWARDED_FOR, v);
    }
    let node = if ip.is_ipv6() {
        format!("\"[{ip_text}]\"")
    } else {
        ip_text
    };
    let mut fwd = format!("for={node};proto=http");
    if let Some(host) = host.and_then(|v| v.to_str().ok()) {
        if host
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        {
            fwd.push_str(";host=\"");
            fwd.push_str(host);
            fwd.push('"');
        }
    }
    if let Ok(v) = HeaderValue::from_str(&fwd) {
        h.append(header::FORWARDED, v);
    }
}

/// The error and its causes on one line: hyper's top-level message alone says too little.
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_fields_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn forwarding_fields_are_appended() {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.1"));
        add_forwarded(
            &mut h,
            "::1".parse().unwrap(),
            Some(&HeaderValue::from_static("app:8080")),
        );
        assert_eq!(h.get(&X_FORWARDED_FOR).unwrap(), "10.0.0.1, ::1");
        assert_eq!(
            h.get(header::FORWARDED).unwrap(),
            "for=\"[::1]\";proto=http;host=\"app:8080\""
        );
    }
}
