//! L1: the in-process tier, a moka cache weighted by bytes with a per-entry expiry.
//!
//! moka's clock cannot be driven from outside, so expiry here only bounds memory; whether an
//! entry may be *served* is decided by `policy::freshness` with an explicit `now`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::notification::RemovalCause;
use moka::sync::Cache;
use moka::Expiry;

use super::{clock, CacheKey, Entry};

#[derive(Clone)]
pub struct L1 {
    cache: Cache<CacheKey, Arc<Entry>>,
}

impl std::fmt::Debug for L1 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("L1")
            .field("entries", &self.cache.entry_count())
            .finish()
    }
}

/// Expires each entry when its freshness lifetime ends.
struct ByTtl;

impl Expiry<CacheKey, Arc<Entry>> for ByTtl {
    fn expire_after_create(&self, _: &CacheKey, e: &Arc<Entry>, _: Instant) -> Option<Duration> {
        let age_ms = clock::now_ms().saturating_sub(e.stored_at_ms) + e.initial_age * 1000;
        Some(Duration::from_millis(e.ttl_ms.saturating_sub(age_ms)))
    }
}

impl L1 {
    /// `on_removal` hears the cause of every removal (`expired`, `size`, ...), for metrics.
    pub fn new(max_bytes: u64, on_removal: impl Fn(&'static str) + Send + Sync + 'static) -> L1 {
        let cache = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_, e: &Arc<Entry>| e.weight())
            .expire_after(ByTtl)
            .eviction_listener(move |_, _, cause| on_removal(removal_cause(cause)))
            .build();
        L1 { cache }
    }

    pub fn get(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        self.cache.get(key)
    }

    pub fn insert(&self, key: CacheKey, entry: Arc<Entry>) {
        self.cache.insert(key, entry);
    }

    pub fn remove(&self, key: &CacheKey) {
        self.cache.invalidate(key);
    }

    pub fn clear(&self) {
        self.cache.invalidate_all();
    }

    /// (entries, bytes) after applying pending bookkeeping, for metrics and stats.
    pub fn usage(&self) -> (u64, u64) {
        self.cache.run_pending_tasks();
        (self.cache.entry_count(), self.cache.weighted_size())
    }
}

/// moka's removal causes as metric labels.
fn removal_cause(cause: RemovalCause) -> &'static str {
    match cause {
        RemovalCause::Expired => "expired",
        RemovalCause::Explicit => "explicit",
        RemovalCause::Replaced => "replaced",
        RemovalCause::Size => "size",
    }
}
