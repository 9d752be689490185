//! The admin listener, on its own port so that probes and scrapes never queue behind proxied
//! traffic:
//!
//! - `GET /`: the status page for people (see [`status`]); `GET /status.json`: its numbers,
//!   read from the registry `/metrics` renders. Read-only, no token, nothing secret.
//! - `GET /healthz`: the process is alive.
//! - `GET /readyz`: the proxy accepts traffic (never depends on Redis or the upstream).
//! - `GET /metrics`: Prometheus text.
//! - `POST /admin/purge` (bearer token): `{"keys": [urls], "tags": [...], "all": bool,
//!   "soft": bool}`, applied here, in L2, and propagated to every pod. `soft` marks the
//!   entries stale instead (served within their grace while one refresh runs).
//! - `POST /admin/refresh` (bearer token): `{"keys": [urls], "tags": [...]}`, invalidated as a
//!   purge, then fetched again at once (here and on every pod that held them).
//! - `POST /admin/verify` (bearer token): `{"tag"|"route"|"sample", "repair"}`: entries
//!   compared with the upstream, a JSON report (see [`verify`]).
//! - `GET /admin/cache/stats`: entries, bytes, hits, misses and invalidations per tier.
//! - `GET /admin/cache/explain?url=...`: route, key, scope, tags, which tier holds it, age,
//!   TTL left, and why it would not be cached. The admin request's own headers stand in for
//!   the caller's (send `Authorization` to explain an identity-scoped URL).

mod explain;
mod purge;
pub mod status;
pub mod verify;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};

use crate::cache::{CacheKey, L1};
use crate::config::UpstreamConfig;
use crate::invalidate::Invalidator;
use crate::metrics::Metrics;
use crate::proxy::body::Body;
use crate::proxy::Proxy;

/// Largest purge, refresh or verify request body.
const MAX_ADMIN_BODY: usize = 64 * 1024;

/// Readiness: a latch set once the proxy listener is up, and a drain flag set on shutdown.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
    draining: AtomicBool,
}

impl Health {
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.draining.load(Ordering::Acquire)
    }
}

#[derive(Debug, Clone)]
pub struct Admin {
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    pub l1: L1,
    pub invalidator: Arc<Invalidator>,
    /// The current configuration's proxy (for `explain`).
    pub proxy: Arc<ArcSwap<Proxy>>,
    /// Bearer token of mutating endpoints; `None` disables them.
    pub token: Option<String>,
    /// Where `verify` asks for the backend's current answers.
    pub upstream: UpstreamConfig,
}

impl Admin {
    pub async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        match (req.method().clone(), path.as_str()) {
            (Method::GET | Method::HEAD, "/healthz") => text(StatusCode::OK, "ok\n"),
            (Method::GET | Method::HEAD, "/readyz") => {
                if self.health.is_ready() {
                    text(StatusCode::OK, "ready\n")
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                }
            }
            (Method::GET | Method::HEAD, "/") => {
                let mut resp = Response::new(Body::full(status::PAGE));
                let h = resp.headers_mut();
                h.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                );
                h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                // Everything the page needs is inline; it may fetch only from this listener.
                h.insert(
                    header::CONTENT_SECURITY_POLICY,
                    HeaderValue::from_static(
                        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'",
                    ),
                );
                resp
            }
            (Method::GET, "/status.json") => self.status(),
            (Method::GET, "/metrics") => {
                self.refresh_l1_usage();
                let mut resp = Response::new(Body::full(self.metrics.render()));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                resp
            }
            (Method::POST, "/admin/purge") => self.purge(req).await,
            (Method::POST, "/admin/refresh") => self.refresh(req).await,
            (Method::POST, "/admin/verify") => self.verify(req).await,
            (Method::GET, "/admin/cache/stats") => self.stats(),
            (Method::GET, "/admin/cache/explain") => self.explain(&req).await,
            (
                _,
                "/"
                | "/status.json"
                | "/healthz"
                | "/readyz"
                | "/metrics"
                | "/admin/purge"
                | "/admin/refresh"
                | "/admin/verify"
                | "/admin/cache/stats"
                | "/admin/cache/explain",
            ) => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    /// The L1 gauges are set when read (here, not on the hit path).
    fn refresh_l1_usage(&self) {
        let (entries, bytes) = self.l1.usage();
        self.metrics.set_l1_usage(entries, bytes);
    }

    fn status(&self) -> Response<Body> {
        self.refresh_l1_usage();
        let proxy = self.proxy.load();
        let ctx = status::Context {
            pod: self.invalidator.pod(),
            ready: self.health.is_ready(),
            l1_degraded: self.l1.is_degraded(),
            l2_configured: self.invalidator.l2().is_some(),
            routes: proxy
                .router()
                .routes()
                .iter()
                .map(|r| status::RouteInfo {
                    name: &r.config.name,
                    matches: &r.config.matcher.text,
                    scope: r.config.scope.as_str(),
                    ttl_seconds: r.config.ttl.map(|t| t.as_secs()),
                })
                .collect(),
        };
        json_response(
            StatusCode::OK,
            status::snapshot(self.metrics.gather(), &ctx),
        )
    }

    /// `None` when the request carries the admin token, else the refusal to send.
    fn refused(&self, headers: &HeaderMap) -> Option<Response<Body>> {
        let Some(token) = &self.token else {
            return Some(json_response(
                StatusCode::FORBIDDEN,
                json!({"error": "admin_token_not_configured", "message": "set SIDECACHE_ADMIN_TOKEN or [admin] token_file to enable mutating endpoints"}),
            ));
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token);
        match given {
            Some(g) if constant_time_eq(g.as_bytes(), token.as_bytes()) => None,
            _ => {
                let mut r = json_response(
                    StatusCode::UNAUTHORIZED,
                    json!({"error": "unauthorized", "message": "send Authorization: Bearer <admin token>"}),
                );
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                Some(r)
            }
        }
    }

    fn stats(&self) -> Response<Body> {
        let (entries, bytes) = self.l1.usage();
        let outcomes = self.metrics.totals("sidecache_requests_total", "cache");
        let l2 = self.metrics.totals("sidecache_l2_lookups_total", "result");
        let sources = self
            .metrics
            .totals("sidecache_invalidations_total", "source");
        let removed = self
            .metrics
            .totals("sidecache_invalidated_entries_total", "tier");
        let get = |m: &BTreeMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
        json_response(
            StatusCode::OK,
            json!({
                "l1": {
                    "entries": entries,
                    "bytes": bytes,
                    "hits": get(&outcomes, "hit"),
                    "misses": get(&outcomes, "miss") + get(&outcomes, "collapsed") + get(&outcomes, "hit_l2") + get(&outcomes, "uncacheable"),
                    "degraded": self.l1.is_degraded(),
                    "invalidated_entries": get(&removed, "l1"),
                },
                "l2": {
                    "configured": self.invalidator.l2().is_some(),
                    "hits": get(&l2, "hit"),
                    "misses": get(&l2, "miss") + get(&l2, "corrupt"),
                    "unavailable": get(&l2, "unavailable"),
                    "invalidated_entries": get(&removed, "l2"),
                },
                "invalidations": sources,
            }),
        )
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn json_response(status: StatusCode, v: Value) -> Response<Body> {
    crate::proxy::rescue::json_response(status, &v)
}

/// The token of an `Authorization: Bearer <token>` value. The scheme is matched without regard
/// to case (RFC 9110 §11.1: `bearer` and `BEARER` are the same scheme); the token is compared
/// exactly.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start_matches(' '))
}

/// The answer that refuses an admin request (boxed: a response is large to return by value).
type Refusal = Box<Response<Body>>;

impl Admin {
    /// What every mutating endpoint does first: the token check, then the body (at most
    /// [`MAX_ADMIN_BODY`]) read as the JSON of a `what` request. `Err` is the refusal to send.
    async fn authorized_json<T: serde::de::DeserializeOwned>(
        &self,
        req: Request<Incoming>,
        what: &str,
    ) -> Result<T, Refusal> {
        use http_body_util::{BodyExt, Limited};
        if let Some(denied) = self.refused(req.headers()) {
            return Err(Box::new(denied));
        }
        let body = match Limited::new(req.into_body(), MAX_ADMIN_BODY)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(_) => return Err(Box::new(bad_request("body unreadable or over 64KiB"))),
        };
        serde_json::from_slice(&body)
            .map_err(|e| Box::new(bad_request(&format!("body is not a {what} request: {e}"))))
    }

    /// The cache keys of `urls` (as purge and refresh name entries), or a 422 listing every
    /// URL that names none.
    fn keys_of(&self, urls: &[String]) -> Result<Vec<(CacheKey, Vec<String>)>, Refusal> {
        let mut keys = Vec::with_capacity(urls.len());
        let mut errors = Vec::new();
        for url in urls {
            match self.invalidator.key_of(url) {
                Ok(k) => keys.push(k),
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(keys)
        } else {
            Err(Box::new(json_response(
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"error": "bad_keys", "problems": errors}),
            )))
        }
    }
}

fn bad_request(message: &str) -> Response<Body> {
    json_response(
        StatusCode::BAD_REQUEST,
        json!({"error": "bad_request", "message": message}),
    )
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut resp = Response::new(Body::full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::explain::percent_decode;
    use super::*;

    #[test]
    fn decoding_and_token_comparison() {
        assert_eq!(
            percent_decode("%2Fapi%2Fgroups%2FVIP%3Fa%3D1"),
            "/api/groups/VIP?a=1"
        );
        assert_eq!(percent_decode("bad%zz"), "bad%zz");
        assert_eq!(percent_decode("end%4"), "end%4");
        assert_eq!(percent_decode("%é"), "%é");
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        for v in [
            "Bearer s3cret",
            "bearer s3cret",
            "BEARER s3cret",
            "bEaReR  s3cret",
        ] {
            assert_eq!(bearer_token(v), Some("s3cret"), "{v}");
        }
        // The token itself stays exact, and other schemes are not bearer tokens.
        assert_eq!(bearer_token("bearer S3CRET"), Some("S3CRET"));
        assert_eq!(bearer_token("Basic czNjcmV0"), None);
        assert_eq!(bearer_token("Bearers3cret"), None);
    }
}
