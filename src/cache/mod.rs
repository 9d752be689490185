//! The cache: keys, pure policy, the stored entry and its shared header shapes, the L1 and L2
//! tiers, the L2 entry codec and fill coalescing.
//!
//! This module decides *what* may be stored and served; the proxy decides *when* to ask.
//! Only L2 talks to the network, through `crate::redis`.

pub mod coalesce;
pub mod codec;
pub mod entry;
pub mod hot;
pub mod key;
pub mod l1;
pub mod l2;
pub mod policy;
pub mod shape;
pub mod stale;

pub use coalesce::{Coalescer, FillState, Join};
pub use entry::{Entry, Meta};
pub use key::CacheKey;
pub use l1::L1;
pub use l2::{L2Key, L2Read, Lease, L2};
pub use policy::NoStoreReason;

/// How a request was answered, as far as the cache is concerned. The strings feed metric
/// labels and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Served from L1 without touching the upstream.
    Hit,
    /// Served from L2 (Redis) and promoted to L1.
    HitL2,
    /// Fetched from the upstream and stored.
    Miss,
    /// Waited for another request's fill and served its result.
    Collapsed,
    /// Fetched from the upstream on a cached route, but not stored (see `NoStoreReason`).
    Uncacheable,
    /// Not a cached route or method: forwarded untouched.
    Bypass,
    /// The upstream failed; the client got a 502/504.
    Error,
    /// Denied by a rate limit (429) before any cache work.
    Limited,
    /// Refused by sidecache as malformed (400) before any cache work.
    Rejected,
    /// A stored entry revalidated with the upstream (a `304`): refreshed and served.
    Revalidated,
    /// Served from a stale entry within its grace while one background refresh runs
    /// (stale-while-revalidate).
    Stale,
    /// Served from a stale entry within its grace because the upstream failed
    /// (stale-if-error: connect error, timeout, 5xx).
    StaleError,
    /// Served from an entry a soft purge marked stale, while one refresh runs.
    SoftPurged,
}

impl CacheOutcome {
    pub const ALL: [CacheOutcome; 13] = [
        Self::Hit,
        Self::HitL2,
        Self::Miss,
        Self::Collapsed,
        Self::Uncacheable,
        Self::Bypass,
        Self::Error,
        Self::Limited,
        Self::Rejected,
        Self::Revalidated,
        Self::Stale,
        Self::StaleError,
        Self::SoftPurged,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::HitL2 => "hit_l2",
            Self::Miss => "miss",
            Self::Collapsed => "collapsed",
            Self::Uncacheable => "uncacheable",
            Self::Bypass => "bypass",
            Self::Error => "error",
            Self::Limited => "limited",
            Self::Rejected => "rejected",
            Self::Revalidated => "revalidated",
            Self::Stale => "stale",
            Self::StaleError => "stale_error",
            Self::SoftPurged => "soft_purged",
        }
    }
}

impl crate::metrics::LabelSet for CacheOutcome {
    fn index(self) -> usize {
        self as usize
    }

    fn as_str(self) -> &'static str {
        CacheOutcome::as_str(self)
    }
}

/// Wall-clock reads live here, at the edge; policy functions take `now` as a parameter.
pub mod clock {
    use std::time::{SystemTime, UNIX_EPOCH};

    pub fn now_ms() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }

    pub fn now_us() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64)
    }
}
