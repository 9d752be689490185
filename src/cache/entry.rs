//! A stored response. Immutable once built and shared as `Arc<Entry>` between the tiers and
//! every request that hits it.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};

/// Bookkeeping bytes counted per entry on top of headers and body, so that many tiny entries
/// cannot exceed the memory budget unnoticed.
const ENTRY_OVERHEAD: usize = 256;

#[derive(Debug)]
pub struct Entry {
    pub status: StatusCode,
    /// The headers sent with every answer from this entry: hop-by-hop fields removed, the
    /// route's `Cache-Control` applied, `ETag` present.
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The strong validator (also in `headers`), kept apart for fast `If-None-Match` checks.
    pub etag: HeaderValue,
    /// Unix seconds compared against `If-Modified-Since`: the upstream's `Last-Modified`, else
    /// its `Date`, else the time it was stored (RFC 9111 §4.3.2).
    pub last_modified: u64,
    /// Unix milliseconds when the response arrived from the upstream.
    pub stored_at_ms: u64,
    /// The upstream's `Age` on arrival, in seconds.
    pub initial_age: u64,
    /// Freshness lifetime in milliseconds, counted from `stored_at_ms - initial_age`.
    pub ttl_ms: u64,
    /// The rendered tags of this entry (`group:VIP`, ...), for invalidation.
    pub tags: Vec<String>,
    /// The request path and query that produced it: refresh-after-invalidation fetches it
    /// again, and `explain` shows it. Not part of any Redis key.
    pub path: String,
}

impl Entry {
    /// Bytes this entry holds, as charged against `l1.max_bytes`.
    pub fn weight(&self) -> u32 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 32)
            .sum();
        let tags: usize = self.tags.iter().map(|t| t.len() + 24).sum::<usize>() + self.path.len();
        (self.body.len() + headers + tags + ENTRY_OVERHEAD).min(u32::MAX as usize) as u32
    }
}
