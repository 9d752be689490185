//! Forwarding to the upstream: the pooled client, and the header rules of a proxy
//! (RFC 9110 §7.6: hop-by-hop fields removed both ways, from requests here and from answers
//! by the client's parse; `Via`, `X-Forwarded-For` and `Forwarded` added). Bodies are passed
//! as streams; nothing here buffers.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response};

use crate::client::wire::{Added, HOP_BY_HOP, HOP_COUNT};
use crate::client::{Client, ClientConfig, Outgoing, UpstreamBody};
use crate::config::UpstreamConfig;
use crate::error::ProxyError;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const VIA_VALUE: HeaderValue = HeaderValue::from_static("1.1 sidecache");
const TE_TRAILERS: HeaderValue = HeaderValue::from_static("trailers");

/// Removes hop-by-hop fields, including every field named in `Connection`. Returns whether
/// the request said `TE: trailers` (the one hop-by-hop field the proxy speaks again: it passes
/// trailers on).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) -> bool {
    // One pass over the names finds which of the fixed set are present (usually none, or
    // `Connection: keep-alive` from an upstream); only those are removed.
    let mut present = [false; HOP_COUNT];
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present[i] = true;
        }
    }
    if present[0] {
        // Fields named in `Connection` beyond the fixed set (rare): `close` and `keep-alive`
        // are options, not names, and allocate nothing here.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|t| {
                !t.is_empty()
                    && !t.eq_ignore_ascii_case(b"close")
                    && !HOP_BY_HOP
                        .iter()
                        .any(|h| h.as_str().as_bytes().eq_ignore_ascii_case(t))
            })
            .filter_map(|t| HeaderName::from_bytes(t).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    // `TE` is the sixth of the fixed set (checked by a test).
    let te_trailers = present[5]
        && headers.get_all(header::TE).iter().any(|v| {
            v.as_bytes()
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"))
        });
    for (name, present) in HOP_BY_HOP.iter().zip(present) {
        if present {
            headers.remove(name);
        }
    }
    te_trailers
}

#[derive(Debug, Clone)]
pub struct Upstream {
    client: Client,
    host: HeaderValue,
    timeout: Duration,
    preserve_host: bool,
}

impl Upstream {
    pub fn new(config: &UpstreamConfig) -> Upstream {
        let authority = config
            .url
            .authority()
            .expect("validated upstream url has an authority");
        let host = HeaderValue::from_str(authority.as_str()).expect("authority is a header value");
        let client = Client::new(ClientConfig {
            host: authority.host().trim_matches(['[', ']']).to_string(),
            port: authority
                .port_u16()
                .unwrap_or(if config.tls.is_some() { 443 } else { 80 }),
            connect_timeout: config.connect_timeout,
            timeout: config.timeout,
            body_timeout: config.client_body_timeout,
            pool_max_idle: config.pool_max_idle,
            pool_idle_timeout: config.pool_idle_timeout,
            fill_quiet: config.fill_quiet,
            tls: tls_client(config),
            http2: config.protocol.is_h2(),
        });
        Upstream {
            client,
            host,
            timeout: config.timeout,
            preserve_host: config.preserve_host,
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The `Host` the upstream is asked with (unless a request's is preserved).
    pub fn host(&self) -> &HeaderValue {
        &self.host
    }

    /// The upstream request for a client request, encoded: same method, path, query and
    /// body; hop-by-hop fields removed (those named in `Connection` were already, before the
    /// proxy keyed the request); `Host` (unless preserved), `X-Forwarded-For`,
    /// `Forwarded` and `Via` written into the head beside the request's own fields. From here
    /// on nothing holds the client request's head. Its timeout runs from `now`.
    pub fn encode<B>(&self, mut req: Request<B>, client: SocketAddr, now: Instant) -> Outgoing<B>
    where
        B: http_body::Body<Data = bytes::Bytes>,
    {
        let (own_host, extra, te) = self.forwarding(&mut req, client);
        let added = Added {
            host: own_host.then_some(&self.host),
            extra: &extra[..if te { 4 } else { 3 }],
        };
        self.client.encode(req, added, now)
    }

    /// [`Self::encode`] for an upgrade request: `Connection: upgrade` and the client's
    /// `Upgrade` (both hop-by-hop, so stripped with the others) are written again, and a `101`
    /// answer hands over the connection.
    pub fn encode_upgrade<B>(
        &self,
        mut req: Request<B>,
        client: SocketAddr,
        now: Instant,
        upgrade: HeaderValue,
    ) -> Outgoing<B>
    where
        B: http_body::Body<Data = bytes::Bytes>,
    {
        let (own_host, [a, b, c, _], _) = self.forwarding(&mut req, client);
        let extra = [
            a,
            b,
            c,
            (header::CONNECTION, HeaderValue::from_static("upgrade")),
            (header::UPGRADE, upgrade),
        ];
        let added = Added {
            host: own_host.then_some(&self.host),
            extra: &extra,
        };
        self.client.encode(req, added, now).to_upgrade()
    }

    /// Removes the hop-by-hop fields and the client's `X-Forwarded-For` lines; returns
    /// whether the upstream's authority replaces `Host`, the forwarding fields to add (and
    /// `TE: trailers`, the fourth), and whether the request said `TE: trailers`.
    // Inlined into both encoders: out of line (two callers) it cost a call and copies of the
    // fields per forwarded request.
    #[inline(always)]
    fn forwarding<B>(
        &self,
        req: &mut Request<B>,
        client: SocketAddr,
    ) -> (bool, [(HeaderName, HeaderValue); 4], bool) {
        let h = req.headers_mut();
        let te = strip_hop_by_hop(h);
        let original_host = h.get(header::HOST);
        let (address, forwarded) = forwarding_values(client.ip(), original_host);
        let own_host = !self.preserve_host || original_host.is_none();
        // One `X-Forwarded-For` line: the client's list (all its lines) and this client.
        // Looked up first: `entry` would make room for a field even when there is none.
        let xff = match h.contains_key(&X_FORWARDED_FOR) {
            false => address,
            true => match h.entry(X_FORWARDED_FOR) {
                Entry::Occupied(e) => joined(e.remove_entry_mult().1, &address),
                Entry::Vacant(_) => address,
            },
        };
        (
            own_host,
            [
                (X_FORWARDED_FOR, xff),
                (header::FORWARDED, forwarded),
                (header::VIA, VIA_VALUE),
                (header::TE, TE_TRAILERS),
            ],
            te,
        )
    }

    /// Sends an encoded request; the timeout covers the wait for the response head. The
    /// answer comes without its hop-by-hop fields: the client's parse leaves them out.
    pub fn send<'a, B>(
        &'a self,
        out: Outgoing<B>,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, ProxyError>> + 'a
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + Sync + 'static,
        B::Error: std::fmt::Display + Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.client.send_encoded(out)
    }
}

/// The TLS settings of an `https://` upstream, offering the protocol configured (ALPN);
/// `None` for `http://`. Shared with the admin's verify, which must reach the upstream the way
/// the proxy does.
pub(crate) fn tls_client(config: &UpstreamConfig) -> Option<crate::client::TlsClient> {
    #[cfg(feature = "tls")]
    return config.tls.as_ref().map(|t| {
        let alpn: &[&[u8]] = match config.protocol.is_h2() {
            true => &[b"h2"],
            false => &[b"http/1.1"],
        };
        crate::client::TlsClient::new(t, alpn)
    });
    #[cfg(not(feature = "tls"))]
    return config.tls.as_ref().map(|_| crate::client::TlsClient {});
}

/// The values of `prev`, then `address`, as one comma-separated list.
fn joined(prev: impl Iterator<Item = HeaderValue>, address: &HeaderValue) -> HeaderValue {
    let mut list = Vec::with_capacity(64);
    for value in prev.chain(std::iter::once(address.clone())) {
        if !list.is_empty() {
            list.extend_from_slice(b", ");
        }
        list.extend_from_slice(value.as_bytes());
    }
    HeaderValue::from_bytes(&list).expect("valid values joined by commas are a valid value")
}

/// The values a client at `ip` asking for `host` gets: its address as text (for
/// `X-Forwarded-For`) and the `Forwarded` element. A sidecar's requests come from one app with
/// one `Host`, over and over, so the last pair built on each thread is kept: building them
/// (address text, two buffers, validation) was ~500 instructions per request.
fn forwarding_values(
    ip: std::net::IpAddr,
    host: Option<&HeaderValue>,
) -> (HeaderValue, HeaderValue) {
    struct Last {
        ip: std::net::IpAddr,
        /// A copy: the request's own value shares (and would keep) hyper's read buffer.
        host: Option<HeaderValue>,
        address: HeaderValue,
        forwarded: HeaderValue,
    }
    thread_local! {
        static LAST: std::cell::RefCell<Option<Last>> = const { std::cell::RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| {
        if let Some(l) = last
            .as_ref()
            .filter(|l| l.ip == ip && l.host.as_ref() == host)
        {
            return (l.address.clone(), l.forwarded.clone());
        }
        let text = crate::net::ip_text(ip);
        let mut fwd = String::with_capacity(64);
        fwd.push_str("for=");
        if ip.is_ipv6() {
            fwd.push_str("\"[");
            fwd.push_str(&text);
            fwd.push_str("]\"");
        } else {
            fwd.push_str(&text);
        }
        fwd.push_str(";proto=http");
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
        let address = HeaderValue::from_maybe_shared(bytes::Bytes::from(text))
            .expect("an address is a header value");
        let forwarded = HeaderValue::from_maybe_shared(bytes::Bytes::from(fwd))
            .expect("only visible ASCII was written");
        *last = Some(Last {
            ip,
            host: host.and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok()),
            address: address.clone(),
            forwarded: forwarded.clone(),
        });
        (address, forwarded)
    })
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
        assert!(strip_hop_by_hop(&mut h), "TE: trailers is reported");
        assert_eq!(HOP_BY_HOP[5], header::TE);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));

        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("Keep-Alive , X-Other"),
        );
        h.insert("x-other", HeaderValue::from_static("1"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().collect::<Vec<_>>(), [header::CONTENT_LENGTH]);
    }

    fn upstream(preserve_host: bool) -> Upstream {
        Upstream::new(&UpstreamConfig {
            url: "http://origin:8080".parse().unwrap(),
            connect_timeout: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            client_body_timeout: Duration::from_secs(1),
            fill_quiet: Duration::ZERO,
            pool_idle_timeout: Duration::from_secs(1),
            pool_max_idle: 1,
            preserve_host,
            protocol: Default::default(),
            tls: None,
        })
    }

    /// The head `upstream` writes for a GET from `ip` with `fields`.
    fn head(upstream: &Upstream, ip: &str, fields: &[(&str, &'static str)]) -> String {
        let mut req = Request::get("/x")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        for &(name, value) in fields {
            let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
            req.headers_mut()
                .append(name, HeaderValue::from_static(value));
        }
        let client = SocketAddr::new(ip.parse().unwrap(), 40000);
        let out = upstream.encode(req, client, Instant::now());
        String::from_utf8(out.head().to_vec()).unwrap()
    }

    #[test]
    fn forwarding_fields_are_added() {
        let up = upstream(false);
        let fields = [
            ("host", "app:8080"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2"),
            ("forwarded", "for=10.0.0.1"),
            ("connection", "x-hop"),
            ("x-hop", "1"),
            ("accept", "*/*"),
        ];
        // Host replaced (first), the client's list joined with this client, the Forwarded
        // and Via elements after the client's own; hop-by-hop fields gone.
        assert_eq!(
            head(&up, "::1", &fields),
            "GET /x HTTP/1.1\r\nhost: origin:8080\r\naccept: */*\r\n\
             forwarded: for=10.0.0.1\r\nx-forwarded-for: 10.0.0.1, 10.0.0.2, ::1\r\n\
             forwarded: for=\"[::1]\";proto=http;host=\"app:8080\"\r\nvia: 1.1 sidecache\r\n\r\n"
        );
        assert_eq!(
            head(&upstream(true), "10.20.0.255", &[("host", "app:8080")]),
            "GET /x HTTP/1.1\r\nhost: app:8080\r\nx-forwarded-for: 10.20.0.255\r\n\
             forwarded: for=10.20.0.255;proto=http;host=\"app:8080\"\r\nvia: 1.1 sidecache\r\n\r\n"
        );
        // No Host at all: ours, even when preserving.
        assert_eq!(
            head(&upstream(true), "10.20.0.255", &[]),
            "GET /x HTTP/1.1\r\nhost: origin:8080\r\nx-forwarded-for: 10.20.0.255\r\n\
             forwarded: for=10.20.0.255;proto=http\r\nvia: 1.1 sidecache\r\n\r\n"
        );
        // The same client again, then with another Host: the kept values follow both.
        for host in [None, Some("b:1"), Some("c:2"), None] {
            let fields: Vec<_> = host.map(|h| ("host", h)).into_iter().collect();
            let expected = match host {
                Some(host) => format!("forwarded: for=10.20.0.255;proto=http;host=\"{host}\"\r\n"),
                None => "forwarded: for=10.20.0.255;proto=http\r\n".to_string(),
            };
            let written = head(&up, "10.20.0.255", &fields);
            assert!(written.contains(&expected), "{written}");
            assert!(
                written.contains("x-forwarded-for: 10.20.0.255\r\n"),
                "{written}"
            );
        }
    }
}
