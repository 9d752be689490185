//! The respond phase: answers built from a stored entry (200 or 304, with `Age` and
//! `Cache-Status`), and the `Cache-Status` values of forwarded answers (RFC 9211).

use std::fmt::Write as _;
use std::sync::OnceLock;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};

use super::body::Body;
use crate::cache::{policy, Entry, NoStoreReason};

pub use crate::cache::shape::CACHE_STATUS;

/// Fields a 304 carries when the 200 would have (RFC 9110 §15.4.5).
const NOT_MODIFIED_FIELDS: [HeaderName; 6] = [
    header::CACHE_CONTROL,
    header::CONTENT_LOCATION,
    header::DATE,
    header::ETAG,
    header::EXPIRES,
    header::VARY,
];

/// How an entry-backed answer came about, for `Cache-Status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// Found fresh in L1.
    Hit,
    /// Found fresh in L2 (Redis).
    HitL2,
    /// Fetched by this request and stored.
    Stored { fwd_status: u16 },
    /// Fetched by this request, not stored: an invalidation overlapped the fetch.
    Invalidated { fwd_status: u16 },
    /// Fetched by a concurrent request; this one waited for it.
    Collapsed { fwd_status: u16 },
    /// A stored entry revalidated by this request (the upstream said `304`) and refreshed.
    Revalidated,
    /// A stale entry served as a request's `max-stale` allows.
    MaxStale,
    /// A stale entry within its grace, served while one refresh runs.
    Stale { soft_purged: bool },
    /// A stale entry within its grace, served because the upstream failed: what it answered
    /// (or what sidecache would have), and why.
    StaleError {
        fwd_status: u16,
        detail: &'static str,
    },
}

/// Answers `request_headers` from `entry`: 304 when its preconditions match, else the stored
/// response (headers only for HEAD), or the byte range it asks of a stored 200 (`range.rs`).
pub fn from_entry(
    entry: &Entry,
    request_headers: &HeaderMap,
    head: bool,
    age_secs: u64,
    ttl_left_secs: u64,
    served: Served,
) -> Response<Body> {
    let age = number(age_secs);
    let status = cache_status(served, ttl_left_secs);
    if policy::not_modified(request_headers, entry.etag(), entry.last_modified()) {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        let h = r.headers_mut();
        for (name, value) in entry.headers() {
            if NOT_MODIFIED_FIELDS.contains(name) {
                h.append(name.clone(), value);
            }
        }
        h.insert(header::AGE, age);
        h.insert(CACHE_STATUS, status);
        return r;
    }
    // A scan of the names before the lookup: a request has a handful of fields and a standard
    // name compares as one byte, where `get` hashes (~170 instructions a hit, measured).
    if request_headers.keys().any(|n| n == header::RANGE) && !head {
        let range = request_headers.get(header::RANGE);
        if let (Some(range), StatusCode::OK) = (range, entry.status()) {
            if let Some(r) = super::range::answer(entry, range, request_headers, &age, &status) {
                return r;
            }
        }
    }
    let parts = entry.parts();
    let body = if head {
        Body::empty()
    } else {
        Body::Full(Some(parts.body()))
    };
    let mut r = Response::new(body);
    *r.status_mut() = entry.status();
    *r.headers_mut() = parts.response_headers(age, status);
    r
}

fn cache_status(served: Served, ttl_left: u64) -> HeaderValue {
    if served == Served::Hit {
        if let Some(v) = HIT_STATUS.get_or_init(hit_table).get(ttl_left as usize) {
            return v.clone();
        }
    }
    let mut s = String::with_capacity(64);
    match served {
        Served::Hit => s.push_str("sidecache; hit"),
        Served::HitL2 => s.push_str("sidecache; hit; detail=l2"),
        Served::Stored { fwd_status } => {
            let _ = write!(s, "sidecache; fwd=miss; fwd-status={fwd_status}; stored");
        }
        Served::Collapsed { fwd_status } => {
            let _ = write!(s, "sidecache; fwd=miss; fwd-status={fwd_status}; collapsed");
        }
        Served::Invalidated { fwd_status } => {
            return not_stored(fwd_status, NoStoreReason::Invalidated);
        }
        Served::Revalidated => s.push_str("sidecache; fwd=stale; fwd-status=304; stored"),
        Served::MaxStale => s.push_str("sidecache; hit; detail=max-stale"),
        // RFC 9211: a stored response that was stale, with a forward (the refresh) to
        // update it; no `ttl`, which would be negative.
        Served::Stale { soft_purged } => {
            let detail = if soft_purged {
                "soft-purged"
            } else {
                "stale-while-revalidate"
            };
            return value(format!("sidecache; hit; fwd=stale; detail={detail}"));
        }
        Served::StaleError { fwd_status, detail } => {
            let mut s = String::from("sidecache; hit; fwd=stale");
            if fwd_status != 0 {
                let _ = write!(s, "; fwd-status={fwd_status}");
            }
            let detail = if detail.is_empty() {
                "upstream"
            } else {
                detail
            };
            let _ = write!(s, "; detail=stale-if-error-{detail}");
            return value(s);
        }
    }
    let _ = write!(s, "; ttl={ttl_left}");
    HeaderValue::from_str(&s).expect("ASCII header value")
}

fn value(s: String) -> HeaderValue {
    HeaderValue::from_str(&s).expect("ASCII header value")
}

/// `Cache-Status` of a response fetched on a cached route but not stored.
pub fn not_stored(fwd_status: u16, reason: NoStoreReason) -> HeaderValue {
    let s = format!(
        "sidecache; fwd=miss; fwd-status={fwd_status}; detail={}",
        reason.as_str()
    );
    HeaderValue::from_str(&s).expect("ASCII header value")
}

/// `Cache-Status` of a request whose `only-if-cached` found nothing usable (answered 504).
pub fn only_if_cached() -> Response<Body> {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::GATEWAY_TIMEOUT;
    r.headers_mut().insert(
        CACHE_STATUS,
        HeaderValue::from_static("sidecache; detail=only-if-cached"),
    );
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    r
}

/// `Cache-Status` of a request the cache chose not to handle (e.g. HEAD miss, no identity).
pub fn bypassed(reason: NoStoreReason) -> HeaderValue {
    let fwd = if reason == NoStoreReason::Head {
        "method"
    } else {
        "bypass"
    };
    HeaderValue::from_str(&format!("sidecache; fwd={fwd}; detail={}", reason.as_str()))
        .expect("ASCII header value")
}

pub fn number(n: u64) -> HeaderValue {
    if let Some(v) = NUMBERS.get_or_init(number_table).get(n as usize) {
        return v.clone();
    }
    let mut buf = itoa::Buffer::new();
    HeaderValue::from_str(buf.format(n)).expect("digits are a header value")
}

/// Values every hit sends (`Age: n`, `Cache-Status: sidecache; hit; ttl=n`), precomputed for
/// n below this: cloning a static value copies two words, where formatting would allocate
/// twice per request.
const TABLE_SIZE: usize = 4096;
static NUMBERS: OnceLock<Vec<HeaderValue>> = OnceLock::new();
static HIT_STATUS: OnceLock<Vec<HeaderValue>> = OnceLock::new();

fn number_table() -> Vec<HeaderValue> {
    static_values((0..TABLE_SIZE).map(|n| n.to_string()))
}

fn hit_table() -> Vec<HeaderValue> {
    static_values((0..TABLE_SIZE).map(|n| format!("sidecache; hit; ttl={n}")))
}

/// Leaks the strings once (a few dozen KiB for the life of the process) so that the values
/// are `from_static` and clone without touching a reference count.
fn static_values(texts: impl Iterator<Item = String>) -> Vec<HeaderValue> {
    texts
        .map(|t| HeaderValue::from_static(Box::leak(t.into_boxed_str())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_match_formatting() {
        assert_eq!(number(0), "0");
        assert_eq!(number(4095), "4095");
        assert_eq!(number(4096), "4096");
        assert_eq!(number(86_400), "86400");
        assert_eq!(cache_status(Served::Hit, 59), "sidecache; hit; ttl=59");
        assert_eq!(
            cache_status(Served::Hit, 100_000),
            "sidecache; hit; ttl=100000"
        );
        assert_eq!(
            cache_status(Served::HitL2, 5),
            "sidecache; hit; detail=l2; ttl=5"
        );
        assert_eq!(
            cache_status(Served::Stale { soft_purged: false }, 0),
            "sidecache; hit; fwd=stale; detail=stale-while-revalidate"
        );
        assert_eq!(
            cache_status(
                Served::StaleError {
                    fwd_status: 503,
                    detail: "upstream_status"
                },
                0
            ),
            "sidecache; hit; fwd=stale; fwd-status=503; detail=stale-if-error-upstream_status"
        );
    }
}
