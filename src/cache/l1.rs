//! L1: the in-process tier, a moka cache weighted by bytes with a per-entry expiry, plus the
//! tag book that makes invalidation exact and fills safe.
//!
//! moka's clock cannot be driven from outside, so expiry here only bounds memory (and applies
//! the hard `max_age`); whether an entry may be *served* is decided by `policy::freshness`
//! with an explicit `now`.
//!
//! # No stale write-back
//!
//! A fill takes a [`FillTicket`] (the invalidation epoch) *before* it reads L2 or the
//! upstream. [`L1::insert_fill`] stores its result only if no invalidation of the entry's key,
//! of one of its tags, or of everything happened since the ticket; it checks before the insert
//! and again after (an invalidation may run between), so an invalidation is always either seen
//! by the fill or sees the fill's entry in the index and removes it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moka::notification::RemovalCause;
use moka::sync::Cache;
use moka::Expiry;
use xxhash_rust::xxh3::xxh3_64;

use super::entry::MALLOC_OVERHEAD;
use super::{clock, CacheKey, Entry};

/// The value stored in moka: the entry and which L1 age limit applies to it.
#[derive(Clone)]
struct Slot {
    entry: Arc<Entry>,
    /// Stored while degraded: kept `degraded_max_age` instead of `max_age`. A flag rather
    /// than the duration keeps the slot (inline in moka's node) at two words.
    degraded: bool,
}

/// What moka keeps per entry besides the value, measured with heaptrack on 103,000 entries
/// (moka 0.12): entry info (64 B), the value node holding the [`Slot`] (40), deque-node cell
/// (48), timer-wheel node (40), access-order node (24), the `Arc` of the key (32), the
/// hash-table bucket (16) and its share of the bucket array (~20), plus chunk overhead for the
/// 7 allocations of its own.
const MOKA_ENTRY_BYTES: usize = 284 + 7 * MALLOC_OVERHEAD;

/// What the tag book keeps per tag of an entry: a 32-byte bucket at hashbrown's load factor,
/// or an element of a shared tag's key set.
const INDEX_BYTES_PER_TAG: usize = 48;

/// Invalidation records are kept this long; a fill older than this is not stored at all,
/// since the records it would need to be checked against may be gone.
const RECORD_HORIZON: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct L1 {
    cache: Cache<CacheKey, Slot>,
    state: Arc<State>,
}

impl std::fmt::Debug for L1 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("L1")
            .field("entries", &self.cache.entry_count())
            .field("degraded", &self.is_degraded())
            .finish()
    }
}

struct State {
    /// True while invalidation messages may be missed (not subscribed): entries stored then
    /// live at most `degraded_max_age`, which bounds how stale they can get.
    degraded: AtomicBool,
    // A std Mutex: held for map operations only, never across an await nor a moka call that
    // could call back into it (the eviction listener never takes it).
    book: Mutex<TagBook>,
}

#[derive(Default)]
struct TagBook {
    /// Bumped by every invalidation.
    epoch: u64,
    /// The keys in L1 carrying each tag.
    index: HashMap<TagId, Keys>,
    /// When each tag / key was last invalidated (epoch, time), for fill checks.
    tag_epochs: HashMap<TagId, (u64, Instant)>,
    key_epochs: HashMap<CacheKey, (u64, Instant)>,
    /// The epoch of the last clear.
    all_epoch: u64,
}

/// A tag as the book knows it: its hash, not a `String` per tag per entry (an identity-scoped
/// route has one tag per user). Two tags with one hash (XXH3-64; not expected among billions)
/// would make an invalidation of one remove the other's entries too, and a fill of one skip
/// storing after the other's invalidation: hit rate lost, never a wrong answer.
type TagId = u64;

fn tag_id(tag: &str) -> TagId {
    xxh3_64(tag.as_bytes())
}

/// The keys carrying one tag. Most tags (one per user) have a single key, kept inline; a key is
/// stored as two words because a `u128` would align the bucket to 16 bytes and make it 48.
enum Keys {
    One([u64; 2]),
    // Boxed: a `HashSet` inline (48 bytes) would widen every bucket of the index, most of
    // which hold `One`.
    #[allow(clippy::box_collection)]
    Many(Box<HashSet<[u64; 2]>>),
}

fn words(k: CacheKey) -> [u64; 2] {
    [(k.0 >> 64) as u64, k.0 as u64]
}

fn key_of(w: [u64; 2]) -> CacheKey {
    CacheKey((u128::from(w[0]) << 64) | u128::from(w[1]))
}

impl Keys {
    fn insert(&mut self, k: [u64; 2]) {
        match self {
            Keys::One(one) if *one == k => {}
            Keys::One(one) => *self = Keys::Many(Box::new(HashSet::from([*one, k]))),
            Keys::Many(set) => {
                set.insert(k);
            }
        }
    }

    fn for_each(&self, mut f: impl FnMut(CacheKey)) {
        match self {
            Keys::One(k) => f(key_of(*k)),
            Keys::Many(set) => set.iter().for_each(|k| f(key_of(*k))),
        }
    }

    /// Keeps the keys `keep` accepts; false when none is left.
    fn retain(&mut self, mut keep: impl FnMut(CacheKey) -> bool) -> bool {
        match self {
            Keys::One(k) => keep(key_of(*k)),
            Keys::Many(set) => {
                set.retain(|k| keep(key_of(*k)));
                !set.is_empty()
            }
        }
    }
}

/// Taken before a fill starts reading; presented when it stores.
#[derive(Debug, Clone, Copy)]
pub struct FillTicket {
    epoch: u64,
    taken: Instant,
}

/// Expires each entry when its freshness lifetime ends, or after its L1 `max_age`
/// (`degraded_max_age` if stored while degraded).
struct ByTtl {
    max_age: Duration,
    degraded_max_age: Duration,
}

impl Expiry<CacheKey, Slot> for ByTtl {
    fn expire_after_create(&self, _: &CacheKey, s: &Slot, _: Instant) -> Option<Duration> {
        let e = &s.entry;
        let age_ms = clock::now_ms().saturating_sub(e.stored_at_ms) + e.initial_age * 1000;
        let max_age = if s.degraded {
            self.degraded_max_age
        } else {
            self.max_age
        };
        Some(Duration::from_millis(e.ttl_ms.saturating_sub(age_ms)).min(max_age))
    }
}

impl TagBook {
    fn stale(&self, ticket: FillTicket, key: &CacheKey, tags: &[TagId]) -> bool {
        ticket.taken.elapsed() >= RECORD_HORIZON
            || self.all_epoch > ticket.epoch
            || self
                .key_epochs
                .get(key)
                .is_some_and(|(e, _)| *e > ticket.epoch)
            || tags.iter().any(|t| {
                self.tag_epochs
                    .get(t)
                    .is_some_and(|(e, _)| *e > ticket.epoch)
            })
    }

    fn prune(&mut self, now: Instant) {
        if self.tag_epochs.len() + self.key_epochs.len() > 4096 {
            self.tag_epochs
                .retain(|_, (_, at)| now.duration_since(*at) < RECORD_HORIZON);
            self.key_epochs
                .retain(|_, (_, at)| now.duration_since(*at) < RECORD_HORIZON);
        }
    }
}

impl L1 {
    /// `max_bytes` of budget; entries kept at most `max_age` (`degraded_max_age` while
    /// degraded); `on_removal` hears the cause of every removal (`expired`, `size`, ...).
    pub fn new(
        max_bytes: u64,
        max_age: Duration,
        degraded_max_age: Duration,
        on_removal: impl Fn(&'static str) + Send + Sync + 'static,
    ) -> L1 {
        let cache = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_, s: &Slot| weight(&s.entry))
            .expire_after(ByTtl {
                max_age,
                degraded_max_age,
            })
            .eviction_listener(move |_, _, cause| on_removal(removal_cause(cause)))
            .build();
        L1 {
            cache,
            state: Arc::new(State {
                degraded: AtomicBool::new(false),
                book: Mutex::new(TagBook::default()),
            }),
        }
    }

    /// The hit path: one map lookup.
    pub fn get(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        self.cache.get(key).map(|s| s.entry)
    }

    pub fn is_degraded(&self) -> bool {
        self.state.degraded.load(Ordering::Acquire)
    }

    /// Invalidations may have been missed from now on: drop everything, and keep what is
    /// stored from here on only `degraded_max_age`.
    pub fn enter_degraded(&self) {
        self.state.degraded.store(true, Ordering::Release);
        self.clear();
    }

    /// Subscribed again: drop what was stored while messages could be missed, and go back to
    /// the normal `max_age`.
    pub fn leave_degraded(&self) {
        self.clear();
        self.state.degraded.store(false, Ordering::Release);
    }

    pub fn begin_fill(&self) -> FillTicket {
        FillTicket {
            epoch: self.state.book.lock().expect("tag book lock").epoch,
            taken: Instant::now(),
        }
    }

    /// Stores a fill's result unless an invalidation touching it happened since `ticket`.
    /// Returns whether it was stored.
    pub fn insert_fill(&self, key: CacheKey, entry: Arc<Entry>, ticket: FillTicket) -> bool {
        let tags: Vec<TagId> = entry.tags().map(tag_id).collect();
        if self.book().stale(ticket, &key, &tags) {
            return false;
        }
        let degraded = self.is_degraded();
        self.cache.insert(key, Slot { entry, degraded });
        let mut book = self.book();
        if book.stale(ticket, &key, &tags) {
            drop(book);
            self.cache.invalidate(&key);
            return false;
        }
        for t in tags {
            book.index
                .entry(t)
                .and_modify(|keys| keys.insert(words(key)))
                .or_insert(Keys::One(words(key)));
        }
        true
    }

    /// Removes every entry carrying one of `tags`, and the `keys`; records the invalidation so
    /// that fills which started before it do not store. Returns the entries removed.
    pub fn invalidate(&self, tags: &[String], keys: &[CacheKey]) -> Vec<Arc<Entry>> {
        let now = Instant::now();
        let mut victims: HashSet<CacheKey> = keys.iter().copied().collect();
        {
            let mut book = self.book();
            book.epoch += 1;
            let epoch = book.epoch;
            for t in tags.iter().map(|t| tag_id(t)) {
                book.tag_epochs.insert(t, (epoch, now));
                if let Some(ks) = book.index.remove(&t) {
                    ks.for_each(|k| {
                        victims.insert(k);
                    });
                }
            }
            for k in keys {
                book.key_epochs.insert(*k, (epoch, now));
            }
            book.prune(now);
        }
        victims
            .iter()
            .filter_map(|k| self.cache.remove(k).map(|s| s.entry))
            .collect()
    }

    /// Drops every entry; fills that started before do not store.
    pub fn clear(&self) {
        {
            let mut book = self.book();
            book.epoch += 1;
            book.all_epoch = book.epoch;
            book.index.clear();
        }
        self.cache.invalidate_all();
    }

    /// Forgets index entries of keys that left the cache (expired, evicted). The eviction
    /// listener cannot do it without risking a re-entrant lock, so a periodic task does.
    pub fn sweep_index(&self) {
        let mut book = self.book();
        let cache = &self.cache;
        book.index
            .retain(|_, keys| keys.retain(|k| cache.contains_key(&k)));
    }

    /// (entries, bytes) after applying pending bookkeeping, for metrics and stats.
    pub fn usage(&self) -> (u64, u64) {
        self.cache.run_pending_tasks();
        (self.cache.entry_count(), self.cache.weighted_size())
    }

    fn book(&self) -> std::sync::MutexGuard<'_, TagBook> {
        self.state.book.lock().expect("tag book lock")
    }
}

/// What an entry costs L1: the entry itself, moka's node, and its tags in the book.
fn weight(entry: &Entry) -> u32 {
    let tags = entry.tags().count() * INDEX_BYTES_PER_TAG;
    entry
        .weight()
        .saturating_add((MOKA_ENTRY_BYTES + tags) as u32)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::entry::Meta;
    use http::{HeaderMap, StatusCode};

    fn entry(tags: &[&str]) -> Arc<Entry> {
        let meta = Meta {
            status: StatusCode::OK,
            last_modified: 0,
            stored_at_ms: clock::now_ms(),
            initial_age: 0,
            ttl_ms: 60_000,
        };
        Arc::new(Entry::new(meta, &HeaderMap::new(), b"x", tags, ""))
    }

    fn l1() -> L1 {
        L1::new(
            1 << 20,
            Duration::from_secs(60),
            Duration::from_secs(5),
            |_| {},
        )
    }

    #[test]
    fn tag_invalidation_removes_exactly_the_tagged_entries() {
        let c = l1();
        let t = c.begin_fill();
        assert!(c.insert_fill(CacheKey(1), entry(&["group:VIP", "group:VIP:EURUSD"]), t));
        assert!(c.insert_fill(CacheKey(2), entry(&["group:VIP", "group:VIP:GBPUSD"]), t));
        assert!(c.insert_fill(CacheKey(3), entry(&["group:STD"]), t));
        assert_eq!(c.invalidate(&["group:VIP:EURUSD".into()], &[]).len(), 1);
        assert!(c.get(&CacheKey(1)).is_none());
        assert!(c.get(&CacheKey(2)).is_some());
        assert_eq!(c.invalidate(&["group:VIP".into()], &[]).len(), 1);
        assert!(c.get(&CacheKey(3)).is_some());
        assert_eq!(c.invalidate(&[], &[CacheKey(3)]).len(), 1);
        assert!(c.get(&CacheKey(3)).is_none());
    }

    #[test]
    fn a_fill_that_started_before_an_invalidation_does_not_store() {
        let c = l1();
        let before = c.begin_fill();
        c.invalidate(&["user:live:1".into()], &[]);
        assert!(!c.insert_fill(CacheKey(1), entry(&["user:live:1"]), before));
        assert!(c.get(&CacheKey(1)).is_none());
        // Other tags are not affected, and a fill that starts afterwards stores.
        assert!(c.insert_fill(CacheKey(2), entry(&["user:live:2"]), before));
        assert!(c.insert_fill(CacheKey(1), entry(&["user:live:1"]), c.begin_fill()));
        // Key invalidation and clear count too.
        let t = c.begin_fill();
        c.invalidate(&[], &[CacheKey(5)]);
        assert!(!c.insert_fill(CacheKey(5), entry(&[]), t));
        let t = c.begin_fill();
        c.clear();
        assert!(!c.insert_fill(CacheKey(6), entry(&[]), t));
    }

    #[test]
    fn degraded_mode_drops_everything_on_entry_and_exit() {
        let c = l1();
        assert!(c.insert_fill(CacheKey(1), entry(&[]), c.begin_fill()));
        c.enter_degraded();
        assert!(c.get(&CacheKey(1)).is_none());
        assert!(c.insert_fill(CacheKey(2), entry(&[]), c.begin_fill()));
        assert!(c.get(&CacheKey(2)).is_some());
        c.leave_degraded();
        assert!(
            c.get(&CacheKey(2)).is_none(),
            "what was stored while degraded is dropped"
        );
    }
}
