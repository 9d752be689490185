//! Pure cache policy (RFC 9111): may a response be stored and for how long, is an entry
//! still fresh, may a request use it, does a conditional request match, which variant. No
//! clocks are read here: `now` is always a parameter, so every rule can be tested at any
//! instant.
//!
//! - this file: storability (§3, §3.5), the freshness lifetime (§4.2.1-4.2.2), the age on
//!   arrival (§4.2.3);
//! - `freshness`: the state of an entry ([`Freshness`]), how long the tiers keep it, and
//!   whether a request's directives accept it (§5.2.1);
//! - [`cache_control`]: parsing `Cache-Control` and `Age`;
//! - [`validate`]: preconditions, conditional requests, the 304 merge (§4.3);
//! - [`vary`]: secondary keys (§4.1).

pub mod cache_control;
mod freshness;
pub mod validate;
pub mod vary;

use http::{header, HeaderMap, HeaderName};

use crate::config::{RouteConfig, Scope};

pub use cache_control::{
    effective_cache_control, CacheControl, RequestDirectives, CDN_CACHE_CONTROL, SURROGATE_CONTROL,
};
pub use freshness::{age_ms, freshness, retention_ms, satisfies, Freshness, KEEP_MS};
pub use validate::{body_etag, not_modified};

/// Bits of an entry's `flags` (`Meta::flags`), kept in L1 and in the L2 codec.
pub mod flags {
    /// `must-revalidate`, `proxy-revalidate` or `s-maxage`: never served stale (§4.2.4).
    pub const MUST_REVALIDATE: u16 = 1 << 0;
    /// `no-cache`: stored, but validated with the origin before every use (§5.2.2.4).
    pub const NO_CACHE: u16 = 1 << 1;
    /// The stored ETag was computed here (weak), not sent by the origin: never sent to it.
    pub const ETAG_DERIVED: u16 = 1 << 2;
    /// `last_modified` is the origin's `Last-Modified` (not its `Date` or our clock): usable
    /// in `If-Modified-Since` towards the origin.
    pub const LAST_MODIFIED: u16 = 1 << 3;
    /// A Vary marker (see [`super::vary`]): never served.
    pub const VARY_MARKER: u16 = 1 << 4;
    /// A variant chosen by the response's `Vary`: a waiter of its fill cannot take it blindly.
    pub const VARIANT: u16 = 1 << 5;
    /// Marked stale by a soft purge: served within its grace while one refresh runs.
    pub const SOFT_PURGED: u16 = 1 << 6;
    /// Every bit defined; a stored entry with another is not read (`codec`).
    pub const ALL: u16 = (1 << 7) - 1;
}

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
    /// A request with `Authorization` on a route without an explicit `scope`, answered without
    /// `public`, `s-maxage` or `must-revalidate` (RFC 9111 §3.5).
    Authorization,
}

impl NoStoreReason {
    pub const ALL: [NoStoreReason; 13] = [
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
        Self::Authorization,
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
            Self::Authorization => "authorization",
        }
    }
}

/// Statuses whose responses may get a heuristic lifetime (RFC 9111 §4.2.2, RFC 9110 §15.1).
pub const HEURISTIC_STATUSES: [u16; 12] =
    [200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501];

/// What [`storability`] allows: the freshness lifetime, the entry's flags, and the `Vary`
/// names beyond the route's own `vary` (empty: one entry for the primary key).
#[derive(Debug, Clone, PartialEq)]
pub struct Storable {
    pub ttl_ms: u64,
    pub flags: u16,
    pub vary: Vec<HeaderName>,
    /// How long past `ttl_ms` it may be served stale, and the revalidate part of that
    /// (`cache::stale::grace_of`; 0 for entries that must be revalidated).
    pub grace_ms: u64,
    pub swr_ms: u64,
}

/// Decides whether a response to `request` on `route` may be stored, and its freshness
/// lifetime (RFC 9111 §3, §4.2.1), at `now_ms` (wall-clock ms; for a response without `Date`).
pub fn storability(
    route: &RouteConfig,
    request: &HeaderMap,
    status: u16,
    headers: &HeaderMap,
    now_ms: u64,
) -> Result<Storable, NoStoreReason> {
    // A 206 is a part of a representation: stored as if whole, it would answer later
    // requests with a fragment (config refuses 206 in `statuses`; this holds whatever).
    if status == 206 || !route.statuses.contains(&status) {
        return Err(NoStoreReason::Status);
    }
    if headers.contains_key(header::SET_COOKIE) {
        return Err(NoStoreReason::SetCookie);
    }
    // RFC 9213: a field targeted at this cache replaces `Cache-Control` for it.
    let cc = effective_cache_control(route.targeted_cache_control.as_ref(), headers);
    if cc.no_store {
        return Err(NoStoreReason::NoStore);
    }
    if route.honor_request
        && request.contains_key(header::CACHE_CONTROL)
        && RequestDirectives::parse(request).no_store
    {
        return Err(NoStoreReason::NoStore);
    }
    if cc.private && route.scope == Scope::Shared {
        return Err(NoStoreReason::Private);
    }
    if request.contains_key(header::AUTHORIZATION)
        && route.scope == Scope::Shared
        && !route.scope_explicit
        && !(cc.public || cc.s_maxage.is_some() || cc.must_revalidate)
    {
        return Err(NoStoreReason::Authorization);
    }
    let vary = vary::names(headers, &route.vary).map_err(|_| NoStoreReason::Vary)?;
    let last_modified = single_date(headers, header::LAST_MODIFIED);
    let mut flags = 0;
    if last_modified.is_some() {
        flags |= flags::LAST_MODIFIED;
    }
    if cc.must_revalidate || cc.proxy_revalidate || cc.s_maxage.is_some() {
        flags |= flags::MUST_REVALIDATE;
    }
    // The route's `ttl` keeps its milliseconds (`ttl = "500ms"`); the response's lifetimes
    // are whole seconds.
    let mut ttl_ms = match route.ttl {
        Some(ttl) => match cc.s_maxage.or(cc.max_age) {
            Some(secs) if route.honor_upstream => secs.saturating_mul(1000),
            _ => u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
        },
        None => lifetime(route, status, headers, &cc, last_modified, now_ms)?.saturating_mul(1000),
    };
    if cc.no_cache {
        flags |= flags::NO_CACHE;
        ttl_ms = 0;
    }
    // A response that is stale at once is worth storing only if it can be revalidated.
    let validator = headers.contains_key(header::ETAG) || last_modified.is_some();
    if ttl_ms == 0 && !validator {
        return Err(if cc.no_cache {
            NoStoreReason::NoCache
        } else {
            NoStoreReason::ZeroTtl
        });
    }
    let (grace_ms, swr_ms) = super::stale::grace_of(route, &cc);
    Ok(Storable {
        ttl_ms,
        flags,
        vary,
        grace_ms,
        swr_ms,
    })
}

/// The freshness lifetime in seconds of a response on a route without `ttl` (§4.2.1):
/// `s-maxage`, `max-age`, `Expires` - `Date`, else heuristic (§4.2.2) for the statuses that
/// allow it. `Err(Status)`: a status that may be stored only with explicit freshness.
fn lifetime(
    route: &RouteConfig,
    status: u16,
    headers: &HeaderMap,
    cc: &CacheControl,
    last_modified: Option<u64>,
    now_ms: u64,
) -> Result<u64, NoStoreReason> {
    if let Some(secs) = cc.s_maxage.or(cc.max_age) {
        return Ok(secs);
    }
    let date = single_date(headers, header::DATE).unwrap_or(now_ms / 1000);
    if headers.contains_key(header::EXPIRES) {
        // An invalid Expires (or several) means "already expired" (§5.3).
        return Ok(single_date(headers, header::EXPIRES).map_or(0, |e| e.saturating_sub(date)));
    }
    if !HEURISTIC_STATUSES.contains(&status) && !cc.public {
        return Err(NoStoreReason::Status);
    }
    let Some(lm) = last_modified else {
        return Ok(0);
    };
    let heuristic = (date.saturating_sub(lm) as f64 * route.heuristic) as u64;
    Ok(heuristic.min(route.heuristic_max.as_secs()))
}

/// The age of a response on arrival at `now_ms` (RFC 9111 §4.2.3): its `Age`, and, on a route
/// that takes freshness from the response alone, the time since its `Date` if that is more
/// (the apparent age). With a route `ttl`, only `Age` (as before).
pub fn initial_age(route: &RouteConfig, headers: &HeaderMap, now_ms: u64) -> u64 {
    let age = cache_control::parse_age(headers);
    if route.ttl.is_some() {
        return age;
    }
    let apparent =
        single_date(headers, header::DATE).map_or(0, |d| (now_ms / 1000).saturating_sub(d));
    age.max(apparent)
}

/// A date field given once and readable, in Unix seconds.
fn single_date(headers: &HeaderMap, name: header::HeaderName) -> Option<u64> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return None;
    }
    validate::http_date(first.to_str().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use http::HeaderValue;

    fn route(extra: &str) -> RouteConfig {
        Config::parse(&format!(
            "[upstream]\nurl = \"http://127.0.0.1:1\"\n[[route]]\nname = \"r\"\nmatch = \"GET /r\"\n{extra}"
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

    const NOW: u64 = 784_111_777_000;

    fn ttl(
        route: &RouteConfig,
        status: u16,
        h: &[(&'static str, &'static str)],
    ) -> Result<u64, NoStoreReason> {
        storability(route, &HeaderMap::new(), status, &headers(h), NOW).map(|s| s.ttl_ms / 1000)
    }

    #[test]
    fn a_route_ttl_keeps_its_milliseconds() {
        let r = route("ttl = \"500ms\"");
        let s = storability(&r, &HeaderMap::new(), 200, &HeaderMap::new(), NOW).unwrap();
        assert_eq!(s.ttl_ms, 500);
    }

    #[test]
    fn storability_with_a_route_ttl_is_as_before() {
        let shared = route("ttl = \"60s\"");
        let ident = route("ttl = \"60s\"\nscope = \"identity\"");
        assert_eq!(ttl(&shared, 200, &[]), Ok(60));
        assert_eq!(ttl(&shared, 500, &[]), Err(NoStoreReason::Status));
        assert_eq!(
            ttl(&shared, 200, &[("set-cookie", "a=b")]),
            Err(NoStoreReason::SetCookie)
        );
        assert_eq!(
            ttl(&ident, 200, &[("cache-control", "No-Store")]),
            Err(NoStoreReason::NoStore)
        );
        assert_eq!(
            ttl(&shared, 200, &[("cache-control", "private, max-age=9")]),
            Err(NoStoreReason::Private)
        );
        assert_eq!(
            ttl(&ident, 200, &[("cache-control", "private, max-age=9")]),
            Ok(9)
        );
        assert_eq!(
            ttl(
                &shared,
                200,
                &[("cache-control", "max-age=10, s-maxage=20")]
            ),
            Ok(20)
        );
        assert_eq!(
            ttl(&shared, 200, &[("cache-control", "max-age=0")]),
            Err(NoStoreReason::ZeroTtl)
        );
        assert_eq!(
            ttl(&shared, 200, &[("cache-control", "no-cache")]),
            Err(NoStoreReason::NoCache)
        );
        // Expires is not read with a route ttl.
        assert_eq!(
            ttl(
                &shared,
                200,
                &[("expires", "Thu, 01 Jan 1970 00:00:00 GMT")]
            ),
            Ok(60)
        );
        let fixed = route("ttl = \"60s\"\nhonor_upstream = false");
        assert_eq!(ttl(&fixed, 200, &[("cache-control", "max-age=5")]), Ok(60));
    }

    #[test]
    fn no_cache_and_zero_lifetimes_are_stored_when_they_can_be_revalidated() {
        let r = route("ttl = \"60s\"");
        let s = storability(
            &r,
            &HeaderMap::new(),
            200,
            &headers(&[("cache-control", "no-cache"), ("etag", "\"a\"")]),
            NOW,
        )
        .unwrap();
        assert_eq!((s.ttl_ms, s.flags & flags::NO_CACHE), (0, flags::NO_CACHE));
        let s = storability(
            &r,
            &HeaderMap::new(),
            200,
            &headers(&[
                ("cache-control", "max-age=0, must-revalidate"),
                ("last-modified", "Sun, 06 Nov 1994 08:00:00 GMT"),
            ]),
            NOW,
        )
        .unwrap();
        assert_eq!(s.ttl_ms, 0);
        assert_eq!(s.flags, flags::MUST_REVALIDATE | flags::LAST_MODIFIED);
    }

    #[test]
    fn freshness_from_the_response_alone() {
        let r = route("");
        assert!(r.ttl.is_none());
        assert_eq!(
            ttl(&r, 200, &[("cache-control", "max-age=10, s-maxage=20")]),
            Ok(20)
        );
        assert_eq!(
            ttl(
                &r,
                200,
                &[
                    ("cache-control", "max-age=10"),
                    ("expires", "Sun, 06 Nov 1994 09:49:37 GMT")
                ]
            ),
            Ok(10)
        );
        // Expires - Date; Date missing: now.
        assert_eq!(
            ttl(
                &r,
                200,
                &[
                    ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
                    ("expires", "Sun, 06 Nov 1994 08:50:37 GMT")
                ]
            ),
            Ok(60)
        );
        assert_eq!(
            ttl(&r, 200, &[("expires", "Sun, 06 Nov 1994 08:51:37 GMT")]),
            Ok(120)
        );
        // Invalid or repeated Expires: already expired (stored only with a validator).
        assert_eq!(
            ttl(&r, 200, &[("expires", "0")]),
            Err(NoStoreReason::ZeroTtl)
        );
        assert_eq!(ttl(&r, 200, &[("expires", "0"), ("etag", "\"x\"")]), Ok(0));
        assert_eq!(
            ttl(
                &r,
                200,
                &[
                    ("expires", "Sun, 06 Nov 1994 08:51:37 GMT"),
                    ("expires", "Sun, 06 Nov 1994 08:52:37 GMT"),
                    ("etag", "\"x\"")
                ]
            ),
            Ok(0)
        );
        // Heuristic: 10% of Date - Last-Modified, capped.
        assert_eq!(
            ttl(
                &r,
                200,
                &[
                    ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
                    ("last-modified", "Sun, 06 Nov 1994 08:32:57 GMT")
                ]
            ),
            Ok(100)
        );
        assert_eq!(
            ttl(
                &r,
                404,
                &[
                    ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
                    ("last-modified", "Thu, 01 Jan 1970 00:00:00 GMT")
                ]
            ),
            Ok(86_400)
        );
        let tight = route("heuristic = 0.5\nheuristic_max = \"30s\"");
        assert_eq!(
            ttl(
                &tight,
                200,
                &[
                    ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
                    ("last-modified", "Sun, 06 Nov 1994 08:49:17 GMT")
                ]
            ),
            Ok(10)
        );
        // Not heuristically cacheable: explicit freshness needed.
        assert_eq!(
            ttl(
                &r,
                500,
                &[("last-modified", "Sun, 06 Nov 1994 08:32:57 GMT")]
            ),
            Err(NoStoreReason::Status)
        );
        assert_eq!(ttl(&r, 500, &[("cache-control", "max-age=5")]), Ok(5));
        assert_eq!(
            ttl(
                &r,
                403,
                &[
                    ("cache-control", "public"),
                    ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
                    ("last-modified", "Sun, 06 Nov 1994 08:32:57 GMT")
                ]
            ),
            Ok(100)
        );
        assert_eq!(
            ttl(&r, 206, &[("cache-control", "max-age=5")]),
            Err(NoStoreReason::Status)
        );
        // Vary: * is never stored; other names become variants.
        assert_eq!(
            ttl(&r, 200, &[("cache-control", "max-age=5"), ("vary", "*")]),
            Err(NoStoreReason::Vary)
        );
        let s = storability(
            &r,
            &HeaderMap::new(),
            200,
            &headers(&[("cache-control", "max-age=5"), ("vary", "Accept-Encoding")]),
            NOW,
        )
        .unwrap();
        assert_eq!(s.vary, ["accept-encoding"]);
        let keyed = route("vary = [\"Accept-Encoding\"]");
        let s = storability(
            &keyed,
            &HeaderMap::new(),
            200,
            &headers(&[("cache-control", "max-age=5"), ("vary", "accept-encoding")]),
            NOW,
        )
        .unwrap();
        assert!(s.vary.is_empty());
    }

    #[test]
    fn authorization_needs_the_origins_word_unless_the_scope_is_explicit() {
        let auth = headers(&[("authorization", "Bearer a")]);
        let implicit = route("ttl = \"60s\"");
        let explicit = route("ttl = \"60s\"\nscope = \"shared\"");
        let st = |r: &RouteConfig, cc: &'static str| {
            storability(r, &auth, 200, &headers(&[("cache-control", cc)]), NOW).map(|s| s.ttl_ms)
        };
        assert_eq!(
            st(&implicit, "max-age=5"),
            Err(NoStoreReason::Authorization)
        );
        assert_eq!(st(&implicit, "public"), Ok(60_000));
        assert_eq!(st(&implicit, "s-maxage=7"), Ok(7_000));
        assert_eq!(st(&implicit, "must-revalidate"), Ok(60_000));
        assert_eq!(st(&explicit, "max-age=5"), Ok(5_000));
    }

    #[test]
    fn a_request_no_store_is_honoured_where_the_route_says_so() {
        let req = headers(&[("cache-control", "no-store")]);
        let honor = route("ttl = \"60s\"\nhonor_request = true");
        let ignore = route("ttl = \"60s\"");
        assert_eq!(
            storability(&honor, &req, 200, &HeaderMap::new(), NOW).map(|s| s.ttl_ms),
            Err(NoStoreReason::NoStore)
        );
        assert!(storability(&ignore, &req, 200, &HeaderMap::new(), NOW).is_ok());
    }

    #[test]
    fn the_initial_age_counts_an_old_date_without_a_route_ttl() {
        let old = headers(&[("date", "Sun, 06 Nov 1994 08:48:37 GMT"), ("age", "10")]);
        assert_eq!(initial_age(&route(""), &old, NOW), 60);
        assert_eq!(initial_age(&route("ttl = \"1h\""), &old, NOW), 10);
        let young = headers(&[("date", "Sun, 06 Nov 1994 08:49:37 GMT"), ("age", "10")]);
        assert_eq!(initial_age(&route(""), &young, NOW), 10);
        // A Date in the future is no negative age.
        let future = headers(&[("date", "Sun, 06 Nov 1994 09:49:37 GMT")]);
        assert_eq!(initial_age(&route(""), &future, NOW), 0);
    }
}
