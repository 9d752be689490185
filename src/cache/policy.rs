//! Pure cache policy: may a response be stored and for how long, is an entry still fresh,
//! does a conditional request match. No clocks are read here: `now` is always a parameter,
//! so every rule can be tested at any instant.

use std::time::Duration;

use http::{header, HeaderMap, HeaderValue};

use crate::config::{RouteConfig, Scope};

/// Why a response was not stored. The strings feed `Cache-Status` `detail`, logs and metric
/// labels alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoStoreReason {
    Status,
    SetCookie,
    NoStore,
    NoCache,
    Private,
    ZeroTtl,
    Vary,
    TooLarge,
    NoIdentity,
    Head,
    /// An invalidation overlapped the fill: what it read may predate a write.
    Invalidated,
    /// The request carried a body, which the key does not see.
    RequestBody,
}

impl NoStoreReason {
    pub const ALL: [NoStoreReason; 12] = [
        Self::Status,
        Self::SetCookie,
        Self::NoStore,
        Self::NoCache,
        Self::Private,
        Self::ZeroTtl,
        Self::Vary,
        Self::TooLarge,
        Self::NoIdentity,
        Self::Head,
        Self::Invalidated,
        Self::RequestBody,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::SetCookie => "set_cookie",
            Self::NoStore => "no_store",
            Self::NoCache => "no_cache",
            Self::Private => "private",
            Self::ZeroTtl => "zero_ttl",
            Self::Vary => "vary",
            Self::TooLarge => "too_large",
            Self::NoIdentity => "no_identity",
            Self::Head => "head",
            Self::Invalidated => "invalidated",
            Self::RequestBody => "request_body",
        }
    }
}

/// The `Cache-Control` directives that matter to a cache.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CacheControl {
    pub no_store: bool,
    pub no_cache: bool,
    pub private: bool,
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    /// RFC 9111 §5.2.2.2 / §5.2.2.8: never served stale (with `s-maxage`, which implies
    /// `proxy-revalidate` in a shared cache, §5.2.2.10).
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    /// RFC 5861 windows, in seconds: serve stale while one refresh runs / when the origin fails.
    pub stale_while_revalidate: Option<u64>,
    pub stale_if_error: Option<u64>,
}

impl CacheControl {
    pub fn parse(headers: &HeaderMap) -> CacheControl {
        Self::parse_field(headers, &header::CACHE_CONTROL)
    }

    /// The directives of one field with `Cache-Control` syntax (`CDN-Cache-Control`,
    /// `Surrogate-Control` and other targeted fields, RFC 9213, parse alike).
    pub fn parse_field(headers: &HeaderMap, field: &header::HeaderName) -> CacheControl {
        let mut cc = CacheControl::default();
        for value in headers.get_all(field) {
            let Ok(text) = value.to_str() else {
                // Unreadable directives: assume the strictest reading.
                cc.no_store = true;
                continue;
            };
            for directive in text.split(',') {
                let (name, arg) = match directive.split_once('=') {
                    Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                    None => (directive.trim(), None),
                };
                let seconds = || arg.and_then(|a| a.parse::<u64>().ok());
                if name.eq_ignore_ascii_case("no-store") {
                    cc.no_store = true;
                } else if name.eq_ignore_ascii_case("no-cache") {
                    // `no-cache="field"` is honoured as a plain no-cache: stricter, never wrong.
                    cc.no_cache = true;
                } else if name.eq_ignore_ascii_case("private") {
                    cc.private = true;
                } else if name.eq_ignore_ascii_case("max-age") {
                    // An unparseable max-age means "stale" (RFC 9111 §4.2.1).
                    cc.max_age = Some(seconds().unwrap_or(0));
                } else if name.eq_ignore_ascii_case("s-maxage") {
                    cc.s_maxage = Some(seconds().unwrap_or(0));
                } else if name.eq_ignore_ascii_case("must-revalidate") {
                    cc.must_revalidate = true;
                } else if name.eq_ignore_ascii_case("proxy-revalidate") {
                    cc.proxy_revalidate = true;
                } else if name.eq_ignore_ascii_case("stale-while-revalidate") {
                    // Unparseable: no window (the strict reading).
                    cc.stale_while_revalidate = Some(seconds().unwrap_or(0));
                } else if name.eq_ignore_ascii_case("stale-if-error") {
                    cc.stale_if_error = Some(seconds().unwrap_or(0));
                }
            }
        }
        cc
    }
}

/// The directives sidecache obeys for storing a response on `route` (RFC 9213): the first of
/// the route's targeted field (default `Sidecache-Cache-Control`), `CDN-Cache-Control` and
/// `Surrogate-Control` that the response carries, in place of `Cache-Control`; else
/// `Cache-Control`.
pub fn effective_cache_control(route: &RouteConfig, headers: &HeaderMap) -> CacheControl {
    let fixed = [CDN_CACHE_CONTROL, SURROGATE_CONTROL];
    for field in route.targeted_cache_control.iter().chain(fixed.iter()) {
        if headers.contains_key(field) {
            return CacheControl::parse_field(headers, field);
        }
    }
    CacheControl::parse(headers)
}

/// RFC 9213's field for every CDN-like cache, and the older Edge Architecture one.
pub const CDN_CACHE_CONTROL: header::HeaderName =
    header::HeaderName::from_static("cdn-cache-control");
pub const SURROGATE_CONTROL: header::HeaderName =
    header::HeaderName::from_static("surrogate-control");

/// Decides whether a response on `route` may be stored, and its freshness lifetime.
pub fn storability(
    route: &RouteConfig,
    status: u16,
    headers: &HeaderMap,
) -> Result<Duration, NoStoreReason> {
    // A 206 is a part of a representation: stored as if whole, it would answer later
    // requests with a fragment. Whatever `statuses` lists.
    if status == 206 || !route.statuses.contains(&status) {
        return Err(NoStoreReason::Status);
    }
    if headers.contains_key(header::SET_COOKIE) {
        return Err(NoStoreReason::SetCookie);
    }
    let cc = effective_cache_control(route, headers);
    if cc.no_store {
        return Err(NoStoreReason::NoStore);
    }
    if cc.private && route.scope == Scope::Shared {
        return Err(NoStoreReason::Private);
    }
    if cc.no_cache {
        return Err(NoStoreReason::NoCache);
    }
    for value in headers.get_all(header::VARY) {
        let Ok(text) = value.to_str() else {
            return Err(NoStoreReason::Vary);
        };
        for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "*"
                || !route
                    .vary
                    .iter()
                    .any(|v| v.as_str().eq_ignore_ascii_case(name))
            {
                return Err(NoStoreReason::Vary);
            }
        }
    }
    let ttl = if route.honor_upstream {
        match cc.s_maxage.or(cc.max_age) {
            Some(secs) => Duration::from_secs(secs),
            None => route.ttl,
        }
    } else {
        route.ttl
    };
    if ttl.is_zero() {
        return Err(NoStoreReason::ZeroTtl);
    }
    Ok(ttl)
}

/// How an entry stands at `now`: the one state enum of a stored entry. Its strings feed logs
/// and `explain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Usable: its `Age` and the seconds of freshness left.
    Fresh { age_secs: u64, ttl_left_secs: u64 },
    /// Past its freshness lifetime but within its grace: served when the origin fails
    /// (stale-if-error) and, if `while_revalidate`, at once while one refresh runs
    /// (stale-while-revalidate).
    Stale {
        age_secs: u64,
        grace_left_secs: u64,
        while_revalidate: bool,
    },
    /// Past its grace (or it had none): never served.
    Expired,
}

impl Freshness {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fresh { .. } => "fresh",
            Self::Stale {
                while_revalidate: true,
                ..
            } => "stale_while_revalidate",
            Self::Stale { .. } => "stale_if_error",
            Self::Expired => "expired",
        }
    }

    pub fn is_fresh(self) -> bool {
        matches!(self, Self::Fresh { .. })
    }
}

/// The age in milliseconds at `now_ms` of an entry stored at `stored_at_ms`, already
/// `initial_age` seconds old then.
pub fn age_ms(stored_at_ms: u64, initial_age: u64, now_ms: u64) -> u64 {
    now_ms.saturating_sub(stored_at_ms) + initial_age * 1000
}

/// Freshness of an entry stored at `stored_at_ms` (already `initial_age` old then) with a
/// lifetime of `ttl_ms`, kept `grace_ms` past it (served at once, while refreshing, during
/// the first `swr_ms` of that), seen at `now_ms`.
pub fn freshness(
    stored_at_ms: u64,
    initial_age: u64,
    ttl_ms: u64,
    grace: (u64, u64),
    now_ms: u64,
) -> Freshness {
    let (grace_ms, swr_ms) = grace;
    let age_ms = age_ms(stored_at_ms, initial_age, now_ms);
    if age_ms < ttl_ms {
        return Freshness::Fresh {
            age_secs: age_ms / 1000,
            ttl_left_secs: (ttl_ms - age_ms) / 1000,
        };
    }
    let past = age_ms - ttl_ms;
    if past < grace_ms {
        Freshness::Stale {
            age_secs: age_ms / 1000,
            grace_left_secs: (grace_ms - past) / 1000,
            while_revalidate: past < swr_ms,
        }
    } else {
        Freshness::Expired
    }
}

/// The result of evaluating a request's preconditions against a stored response
/// (RFC 9110 §13.2.2: `If-None-Match` wins over `If-Modified-Since`).
pub fn not_modified(request: &HeaderMap, etag: &[u8], last_modified: u64) -> bool {
    let mut inm = request.get_all(header::IF_NONE_MATCH).iter().peekable();
    if inm.peek().is_some() {
        let ours = opaque(etag);
        return inm.any(|v| {
            v.as_bytes()
                .split(|b| *b == b',')
                .map(|t| t.trim_ascii())
                .any(|t| t == b"*" || opaque(t) == ours)
        });
    }
    if let Some(ims) = request
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| httpdate::parse_http_date(s).ok())
    {
        let ims = ims
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        return last_modified <= ims;
    }
    false
}

/// Weak comparison (RFC 9110 §8.8.3.2): `W/"x"` and `"x"` match.
fn opaque(tag: &[u8]) -> &[u8] {
    tag.strip_prefix(b"W/").unwrap_or(tag)
}

/// Is `etag` usable as a strong validator as received (`"..."`, not `W/"..."`)?
pub fn is_strong_etag(etag: &HeaderValue) -> bool {
    let b = etag.as_bytes();
    b.len() >= 2 && b[0] == b'"' && b[b.len() - 1] == b'"'
}

/// A strong ETag computed from the body.
pub fn body_etag(body: &[u8]) -> HeaderValue {
    let h = xxhash_rust::xxh3::xxh3_128(body);
    HeaderValue::from_str(&format!("\"{h:032x}\"")).expect("hex is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn route(extra: &str) -> RouteConfig {
        Config::parse(&format!(
            "[upstream]\nurl = \"http://127.0.0.1:1\"\n[[route]]\nname = \"r\"\nmatch = \"GET /r\"\nttl = \"60s\"\n{extra}"
        ))
        .unwrap()
        .routes
        .remove(0)
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn storability_rules() {
        let shared = route("");
        let ident = route("scope = \"identity\"");
        let s = Duration::from_secs;
        assert_eq!(storability(&shared, 200, &headers(&[])), Ok(s(60)));
        assert_eq!(
            storability(&shared, 500, &headers(&[])),
            Err(NoStoreReason::Status)
        );
        assert_eq!(
            storability(&shared, 200, &headers(&[("set-cookie", "a=b")])),
            Err(NoStoreReason::SetCookie)
        );
        assert_eq!(
            storability(&ident, 200, &headers(&[("cache-control", "No-Store")])),
            Err(NoStoreReason::NoStore)
        );
        assert_eq!(
            storability(
                &shared,
                200,
                &headers(&[("cache-control", "private, max-age=9")])
            ),
            Err(NoStoreReason::Private)
        );
        assert_eq!(
            storability(
                &ident,
                200,
                &headers(&[("cache-control", "private, max-age=9")])
            ),
            Ok(s(9))
        );
        assert_eq!(
            storability(
                &shared,
                200,
                &headers(&[("cache-control", "max-age=10, s-maxage=20")])
            ),
            Ok(s(20))
        );
        assert_eq!(
            storability(&shared, 200, &headers(&[("cache-control", "max-age=0")])),
            Err(NoStoreReason::ZeroTtl)
        );
        assert_eq!(
            storability(&shared, 200, &headers(&[("cache-control", "no-cache")])),
            Err(NoStoreReason::NoCache)
        );
        assert_eq!(
            storability(&shared, 200, &headers(&[("vary", "accept-encoding")])),
            Err(NoStoreReason::Vary)
        );
        let vary = route("vary = [\"Accept-Encoding\"]");
        assert_eq!(
            storability(&vary, 200, &headers(&[("vary", "accept-encoding")])),
            Ok(s(60))
        );
        let fixed = route("honor_upstream = false");
        assert_eq!(
            storability(&fixed, 200, &headers(&[("cache-control", "max-age=5")])),
            Ok(s(60))
        );
    }

    #[test]
    fn freshness_over_time() {
        assert_eq!(
            freshness(1_000, 0, 60_000, (0, 0), 1_000),
            Freshness::Fresh {
                age_secs: 0,
                ttl_left_secs: 60
            }
        );
        assert_eq!(
            freshness(1_000, 5, 60_000, (0, 0), 11_000),
            Freshness::Fresh {
                age_secs: 15,
                ttl_left_secs: 45
            }
        );
        assert_eq!(
            freshness(1_000, 0, 60_000, (0, 0), 61_000),
            Freshness::Expired
        );
        // Within grace: stale; within the revalidate window, served at once.
        assert_eq!(
            freshness(1_000, 0, 60_000, (30_000, 10_000), 65_000),
            Freshness::Stale {
                age_secs: 64,
                grace_left_secs: 26,
                while_revalidate: true
            }
        );
        assert_eq!(
            freshness(1_000, 0, 60_000, (30_000, 10_000), 75_000).as_str(),
            "stale_if_error"
        );
        assert_eq!(
            freshness(1_000, 0, 60_000, (30_000, 10_000), 91_000),
            Freshness::Expired
        );
        // A clock that steps back never makes an entry younger than its initial age.
        assert_eq!(
            freshness(10_000, 2, 60_000, (0, 0), 5_000),
            Freshness::Fresh {
                age_secs: 2,
                ttl_left_secs: 58
            }
        );
    }

    #[test]
    fn conditionals() {
        let etag: &[u8] = b"\"abc\"";
        assert!(not_modified(
            &headers(&[("if-none-match", "\"abc\"")]),
            etag,
            0
        ));
        assert!(not_modified(
            &headers(&[("if-none-match", "\"x\", W/\"abc\"")]),
            etag,
            0
        ));
        assert!(not_modified(&headers(&[("if-none-match", "*")]), etag, 0));
        assert!(!not_modified(
            &headers(&[("if-none-match", "\"x\"")]),
            etag,
            0
        ));
        let ims = headers(&[("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT")]);
        assert!(not_modified(&ims, etag, 784_111_777));
        assert!(!not_modified(&ims, etag, 784_111_778));
        // If-None-Match wins over If-Modified-Since.
        let both = headers(&[
            ("if-none-match", "\"x\""),
            ("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ]);
        assert!(!not_modified(&both, etag, 0));
        assert!(!not_modified(&HeaderMap::new(), etag, 0));
    }

    #[test]
    fn etags() {
        assert!(is_strong_etag(&HeaderValue::from_static("\"a\"")));
        assert!(!is_strong_etag(&HeaderValue::from_static("W/\"a\"")));
        assert_eq!(body_etag(b"x"), body_etag(b"x"));
        assert_ne!(body_etag(b"x"), body_etag(b"y"));
    }
}
