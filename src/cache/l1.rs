//! L1: the in-process tier, a bounded map weighted by bytes with a per-entry expiry, plus the
//! tag book that makes invalidation exact and fills safe.
//!
//! # Why not moka
//!
//! DESIGN.md named moka for this tier. moka keeps ~400 bytes and 7 allocations of its own per
//! entry (heaptrack, 103,000 entries: entry info, value node, deque-node cell, timer-wheel node,
//! access-order node, the key's `Arc`, the bucket), more than the ~380-byte balance record it
//! holds, and a lookup cost 134 ns. The map here is `quick_cache` (S3-FIFO-like CLOCK-PRO
//! eviction, scan resistant, hit rates comparable to moka's TinyLFU): one slab slot and one
//! 4-byte table index per entry, no allocation of its own, a lookup under a shard read lock.
//! Expiry, which quick_cache does not have, is a deadline kept beside the entry: checked on
//! every lookup, and swept out with the tag index.
//!
//! Whether an entry may be *served* is still decided by `policy::freshness` with an explicit
//! `now`; the deadline here only bounds how long L1 keeps it (the retention: the freshness
//! lifetime, longer for an entry that can be revalidated; capped by the hard `max_age`).
//!
//! # No stale write-back
//!
//! A fill takes a [`FillTicket`] (the invalidation epoch) *before* it reads L2 or the
//! upstream. [`L1::insert_fill`] stores its result only if no invalidation of the entry's key,
//! of one of its tags, or of everything happened since the ticket; it checks before the insert
//! and again after (an invalidation may run between), so an invalidation is always either seen
//! by the fill or sees the fill's entry in the index and removes it.

use std::cell::Cell;
use std::collections::{hash_map, HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quick_cache::sync::{Cache, EntryAction, EntryResult};
use quick_cache::{Lifecycle, OptionsBuilder, Weighter};
use xxhash_rust::xxh3::xxh3_64;

use super::{clock, CacheKey, Entry};

/// What the map holds per key: the entry and the wall-clock millisecond after which L1 no
/// longer returns it.
#[derive(Clone)]
struct Slot {
    entry: Entry,
    expires_ms: u64,
}

/// What the map keeps per entry: a slab slot (key, [`Slot`] with the entry's handle, eviction
/// state and links: 64 B), its 4-byte index and control byte in the table at hashbrown's load
/// factor (~10 B), and a share of the ghost slots that remember recently evicted keys (at most
/// half as many as entries). No allocation of its own.
const MAP_ENTRY_BYTES: usize = 64 + 10 + 32;

/// What the tag book keeps per tag of an entry: a 24-byte bucket and its control byte at
/// hashbrown's load factor, or an element of a shared tag's key set.
const INDEX_BYTES_PER_TAG: usize = 32;

/// Invalidation records are kept this long; a fill older than this is not stored at all,
/// since the records it would need to be checked against may be gone.
const RECORD_HORIZON: Duration = Duration::from_secs(60);

/// The map's shards each get an equal part of `max_bytes`, and an entry larger than about its
/// shard's part is not kept: every shard can hold at least this many of the largest entries.
const LARGEST_ENTRIES_PER_SHARD: u64 = 4;

type Map = Cache<MapKey, Slot, ByWeight, KeyHash, Evicted>;

#[derive(Clone)]
pub struct L1 {
    map: Arc<Map>,
    state: Arc<State>,
}

impl std::fmt::Debug for L1 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("L1")
            .field("entries", &self.map.len())
            .field("degraded", &self.is_degraded())
            .finish()
    }
}

struct State {
    /// True while invalidation messages may be missed (not subscribed): entries stored then
    /// live at most `degraded_max_age`, which bounds how stale they can get.
    degraded: AtomicBool,
    max_age: Duration,
    degraded_max_age: Duration,
    on_removal: Box<dyn Fn(&'static str, u64) + Send + Sync>,
    // A std Mutex: held for map operations only, never across an await nor a call into the
    // map that could call back into it (the map's eviction hook never takes it).
    book: Mutex<TagBook>,
}

#[derive(Default)]
struct TagBook {
    /// Bumped by every invalidation.
    epoch: u64,
    /// The keys in L1 carrying each tag.
    index: TagIndex,
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

/// The keys in L1 carrying each tag. Most tags (one per user) have a single key: those are in
/// `one`, whose 24-byte buckets hold the key inline; the few tags several keys share (a group
/// and its symbols) are in `many`. One map of an enum of both would make every bucket 32 bytes.
#[derive(Default)]
struct TagIndex {
    one: HashMap<TagId, MapKey>,
    many: HashMap<TagId, HashSet<MapKey>>,
}

impl TagIndex {
    fn insert(&mut self, tag: TagId, key: MapKey) {
        if let Some(keys) = self.many.get_mut(&tag) {
            keys.insert(key);
            return;
        }
        match self.one.entry(tag) {
            hash_map::Entry::Vacant(slot) => {
                slot.insert(key);
            }
            hash_map::Entry::Occupied(slot) if *slot.get() == key => {}
            hash_map::Entry::Occupied(slot) => {
                let first = slot.remove();
                self.many.insert(tag, HashSet::from([first, key]));
            }
        }
    }

    /// Forgets `tag`, handing each of its keys to `f`.
    fn take(&mut self, tag: TagId, mut f: impl FnMut(MapKey)) {
        if let Some(key) = self.one.remove(&tag) {
            f(key);
        }
        if let Some(keys) = self.many.remove(&tag) {
            keys.into_iter().for_each(f);
        }
    }

    /// Keeps the keys `keep` accepts, and the tags that still have one.
    fn retain(&mut self, keep: impl Fn(&MapKey) -> bool) {
        self.one.retain(|_, key| keep(key));
        self.many.retain(|_, keys| {
            keys.retain(|key| keep(key));
            !keys.is_empty()
        });
    }

    fn clear(&mut self) {
        self.one.clear();
        self.many.clear();
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.one.len() + self.many.len()
    }
}

fn words(k: CacheKey) -> [u64; 2] {
    [(k.0 >> 64) as u64, k.0 as u64]
}

/// A key as the map holds it: two words, so that the map's slots align to 8 bytes (a `u128`
/// would align them to 16, and pad each slot to the next multiple of 16).
#[derive(Clone, Copy, PartialEq, Eq)]
struct MapKey([u64; 2]);

impl MapKey {
    fn of(k: &CacheKey) -> MapKey {
        MapKey(words(*k))
    }
}

impl std::hash::Hash for MapKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // A `CacheKey` is already a uniform hash: its low word is the map's hash as it is.
        state.write_u64(self.0[1]);
    }
}

/// Taken before a fill starts reading; presented when it stores.
#[derive(Debug, Clone, Copy)]
pub struct FillTicket {
    epoch: u64,
    taken: Instant,
}

/// An entry's weight is what it costs in memory; see [`weight`].
#[derive(Clone)]
struct ByWeight;

impl Weighter<MapKey, Slot> for ByWeight {
    fn weight(&self, _: &MapKey, slot: &Slot) -> u64 {
        u64::from(weight(&slot.entry))
    }
}

/// Hashes a [`MapKey`] to its low word.
#[derive(Clone, Default)]
struct KeyHash;

struct KeyHasher(u64);

impl BuildHasher for KeyHash {
    type Hasher = KeyHasher;

    fn build_hasher(&self) -> KeyHasher {
        KeyHasher(0)
    }
}

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, word: u64) {
        self.0 = word;
    }

    fn write(&mut self, bytes: &[u8]) {
        // `MapKey` hashes through `write_u64`; anything else is folded in whole.
        self.0 = xxh3_64(bytes) ^ self.0.rotate_left(5);
    }
}

/// Collects the entries the map evicts for room during one insert, so that they are counted,
/// and freed after its shard lock is released.
#[derive(Clone)]
struct Evicted;

impl Lifecycle<MapKey, Slot> for Evicted {
    type RequestState = Vec<Slot>;

    fn on_evict(&self, evicted: &mut Vec<Slot>, _: MapKey, slot: Slot) {
        evicted.push(slot);
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
    /// `max_bytes` of budget, for entries of at most `max_entry_bytes`; entries kept at most
    /// `max_age` (`degraded_max_age` while degraded); `on_removal` hears the cause (`expired`,
    /// `size`, `explicit`, `replaced`) and count of removals.
    pub fn new(
        max_bytes: u64,
        max_entry_bytes: u64,
        max_age: Duration,
        degraded_max_age: Duration,
        on_removal: impl Fn(&'static str, u64) + Send + Sync + 'static,
    ) -> L1 {
        let options = OptionsBuilder::new()
            .shards(shards(max_bytes, max_entry_bytes))
            .weight_capacity(max_bytes)
            // A guess that only sizes the first tables: they grow as entries come.
            .estimated_items_capacity((max_bytes / 4096).clamp(1024, 1 << 20) as usize)
            .build()
            .expect("L1 map options are valid");
        L1 {
            map: Arc::new(Cache::with_options(options, ByWeight, KeyHash, Evicted)),
            state: Arc::new(State {
                degraded: AtomicBool::new(false),
                max_age,
                degraded_max_age,
                on_removal: Box::new(on_removal),
                book: Mutex::new(TagBook::default()),
            }),
        }
    }

    /// The hit path: one map lookup, if the entry is still within the time L1 keeps it at
    /// `now_ms` (wall-clock milliseconds, as `clock::now_ms`).
    pub fn get(&self, key: &CacheKey, now_ms: u64) -> Option<Entry> {
        let key = MapKey::of(key);
        let slot = self.map.get(&key)?;
        if slot.expires_ms > now_ms {
            return Some(slot.entry);
        }
        if self
            .map
            .remove_if(&key, |s| s.expires_ms <= now_ms)
            .is_some()
        {
            (self.state.on_removal)("expired", 1);
        }
        None
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
            epoch: self.book().epoch,
            taken: Instant::now(),
        }
    }

    /// Stores a fill's result unless an invalidation touching it happened since `ticket`.
    /// Returns whether it was stored. (An entry too large for its shard of L1 is dropped by
    /// the map at once and counted as a `size` removal; that still counts as stored here:
    /// nothing superseded it.)
    pub fn insert_fill(&self, key: CacheKey, entry: Entry, ticket: FillTicket) -> bool {
        let tags: Vec<TagId> = entry.tags().map(tag_id).collect();
        if self.book().stale(ticket, &key, &tags) {
            return false;
        }
        let expires_ms = self.expires_ms(&entry, clock::now_ms());
        let map_key = MapKey::of(&key);
        if self.map.contains_key(&map_key) {
            (self.state.on_removal)("replaced", 1);
        }
        let mut evicted = Vec::new();
        self.map
            .insert_with_lifecycle(map_key, Slot { entry, expires_ms }, &mut evicted);
        if !evicted.is_empty() {
            (self.state.on_removal)("size", evicted.len() as u64);
        }
        let mut book = self.book();
        if book.stale(ticket, &key, &tags) {
            drop(book);
            self.map.remove(&map_key);
            return false;
        }
        for t in tags {
            book.index.insert(t, map_key);
        }
        true
    }

    /// Whether an invalidation touching `key` or `entry`'s tags happened since `ticket`: what a
    /// fill that keeps nothing here (an `["l2"]` route) asks before it stores elsewhere.
    pub fn superseded(&self, key: &CacheKey, entry: &Entry, ticket: FillTicket) -> bool {
        let tags: Vec<TagId> = entry.tags().map(tag_id).collect();
        self.book().stale(ticket, key, &tags)
    }

    /// Removes every entry carrying one of `tags`, and the `keys`; records the invalidation so
    /// that fills which started before it do not store. Returns the entries removed.
    pub fn invalidate(&self, tags: &[String], keys: &[CacheKey]) -> Vec<Entry> {
        let now = Instant::now();
        let mut victims: HashSet<MapKey> = keys.iter().map(MapKey::of).collect();
        {
            let mut book = self.book();
            book.epoch += 1;
            let epoch = book.epoch;
            for t in tags.iter().map(|t| tag_id(t)) {
                book.tag_epochs.insert(t, (epoch, now));
                book.index.take(t, |k| {
                    victims.insert(k);
                });
            }
            for k in keys {
                book.key_epochs.insert(*k, (epoch, now));
            }
            book.prune(now);
        }
        let removed: Vec<Entry> = victims
            .iter()
            .filter_map(|k| self.map.remove(k).map(|(_, s)| s.entry))
            .collect();
        if !removed.is_empty() {
            (self.state.on_removal)("explicit", removed.len() as u64);
        }
        removed
    }

    /// A soft purge: every entry carrying one of `tags`, and the `keys`, is marked stale at
    /// `now_ms` ([`Entry::soft_purged_at`]; one without grace left is removed). Fills that
    /// started before do not store (what they read may predate the change). Returns the
    /// entries marked, and the number removed.
    pub fn soft_invalidate(
        &self,
        tags: &[String],
        keys: &[CacheKey],
        now_ms: u64,
    ) -> (usize, usize) {
        let now = Instant::now();
        let mut victims: HashSet<MapKey> = keys.iter().map(MapKey::of).collect();
        {
            let mut book = self.book();
            book.epoch += 1;
            let epoch = book.epoch;
            for t in tags.iter().map(|t| tag_id(t)) {
                book.tag_epochs.insert(t, (epoch, now));
                // The keys stay indexed: their marked copies still carry the tag.
                if let Some(k) = book.index.one.get(&t) {
                    victims.insert(*k);
                }
                if let Some(ks) = book.index.many.get(&t) {
                    victims.extend(ks.iter().copied());
                }
            }
            for k in keys {
                book.key_epochs.insert(*k, (epoch, now));
            }
            book.prune(now);
        }
        let (mut marked, mut removed) = (0, 0);
        for k in victims {
            // In place, under the map's shard lock: a hard invalidation racing this one
            // removes either the old entry or the marked copy, never sees one come back.
            let result = self.map.entry(&k, Some(Duration::ZERO), |_, slot| {
                match slot.entry.soft_purged_at(now_ms) {
                    Some(entry) => {
                        slot.expires_ms =
                            slot.expires_ms.min(now_ms + entry.retain_left_ms(now_ms));
                        slot.entry = entry;
                        EntryAction::Retain(())
                    }
                    None => EntryAction::Remove,
                }
            });
            match result {
                EntryResult::Retained(()) => marked += 1,
                EntryResult::Removed(..) => removed += 1,
                _ => {}
            }
        }
        if removed > 0 {
            (self.state.on_removal)("explicit", removed as u64);
        }
        (marked, removed)
    }

    /// Drops every entry; fills that started before do not store.
    pub fn clear(&self) {
        {
            let mut book = self.book();
            book.epoch += 1;
            book.all_epoch = book.epoch;
            book.index.clear();
        }
        let n = self.map.len() as u64;
        self.map.clear();
        if n > 0 {
            (self.state.on_removal)("explicit", n);
        }
    }

    /// Drops the entries past the time L1 keeps them, and forgets the index entries of keys
    /// that left the map (expired, evicted). Run periodically: the map's eviction hook cannot
    /// take the book's lock without risking a re-entrant lock.
    pub fn sweep(&self) {
        let now_ms = clock::now_ms();
        let expired = Cell::new(0u64);
        self.map.retain(|_, s| {
            let keep = s.expires_ms > now_ms;
            expired.set(expired.get() + u64::from(!keep));
            keep
        });
        if expired.get() > 0 {
            (self.state.on_removal)("expired", expired.get());
        }
        let mut book = self.book();
        let map = &self.map;
        book.index.retain(|k| map.contains_key(k));
    }

    /// Up to `limit` live entries that `keep` accepts, in no particular order (a sample when
    /// `keep` takes all): for `POST /admin/verify`, never on a request's path.
    pub fn entries(
        &self,
        limit: usize,
        mut keep: impl FnMut(&Entry) -> bool,
    ) -> Vec<(CacheKey, Entry)> {
        let now_ms = clock::now_ms();
        self.map
            .iter()
            .filter(|(_, s)| s.expires_ms > now_ms)
            .map(|(k, s)| {
                (
                    CacheKey((u128::from(k.0[0]) << 64) | u128::from(k.0[1])),
                    s.entry,
                )
            })
            .filter(|(_, e)| keep(e))
            .take(limit)
            .collect()
    }

    /// (entries, bytes), for metrics and stats.
    pub fn usage(&self) -> (u64, u64) {
        (self.map.len() as u64, self.map.weight())
    }

    /// Until when L1 keeps `entry`, stored at `now_ms`: the end of its retention (its
    /// freshness lifetime, then its grace or longer when it can be revalidated:
    /// `policy::retention_ms`), or `max_age` (`degraded_max_age` while degraded) if sooner:
    /// grace never extends the bound on what a lost invalidation could leave behind.
    fn expires_ms(&self, entry: &Entry, now_ms: u64) -> u64 {
        let max_age = if self.is_degraded() {
            self.state.degraded_max_age
        } else {
            self.state.max_age
        };
        let keep_ms = entry.retain_left_ms(now_ms).min(max_age.as_millis() as u64);
        now_ms.saturating_add(keep_ms)
    }

    fn book(&self) -> std::sync::MutexGuard<'_, TagBook> {
        self.state.book.lock().expect("tag book lock")
    }
}

/// How many shards the map gets: a few per CPU (a lookup takes its shard's read lock, an
/// insert its write lock), but never so many that a shard's part of `max_bytes` cannot hold
/// [`LARGEST_ENTRIES_PER_SHARD`] entries of `max_entry_bytes`.
fn shards(max_bytes: u64, max_entry_bytes: u64) -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let by_size = max_bytes / (LARGEST_ENTRIES_PER_SHARD * max_entry_bytes.max(1));
    let wanted = (4 * cpus as u64).min(by_size).max(1);
    // A power of two, rounded down so that the size bound holds.
    1 << wanted.ilog2()
}

/// What an entry costs L1: the entry itself, its slot in the map, and its tags in the book.
fn weight(entry: &Entry) -> u32 {
    let tags = entry.tags().count() * INDEX_BYTES_PER_TAG;
    entry
        .weight()
        .saturating_add((MAP_ENTRY_BYTES + tags) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::entry::Meta;
    use http::{HeaderMap, StatusCode};

    fn entry(tags: &[&str]) -> Entry {
        let meta = Meta {
            status: StatusCode::OK,
            last_modified: 0,
            stored_at_ms: clock::now_ms(),
            initial_age: 0,
            ttl_ms: 60_000,
            flags: 0,
            grace_ms: 0,
            swr_ms: 0,
        };
        Entry::new(meta, &HeaderMap::new(), b"x", tags, "")
    }

    fn l1() -> L1 {
        L1::new(
            1 << 20,
            1 << 16,
            Duration::from_secs(60),
            Duration::from_secs(5),
            |_, _| {},
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
        assert!(c.get(&CacheKey(1), clock::now_ms()).is_none());
        assert!(c.get(&CacheKey(2), clock::now_ms()).is_some());
        assert_eq!(c.invalidate(&["group:VIP".into()], &[]).len(), 1);
        assert!(c.get(&CacheKey(3), clock::now_ms()).is_some());
        assert_eq!(c.invalidate(&[], &[CacheKey(3)]).len(), 1);
        assert!(c.get(&CacheKey(3), clock::now_ms()).is_none());
    }

    #[test]
    fn a_fill_that_started_before_an_invalidation_does_not_store() {
        let c = l1();
        let before = c.begin_fill();
        c.invalidate(&["user:live:1".into()], &[]);
        assert!(!c.insert_fill(CacheKey(1), entry(&["user:live:1"]), before));
        assert!(c.get(&CacheKey(1), clock::now_ms()).is_none());
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
        assert!(c.get(&CacheKey(1), clock::now_ms()).is_none());
        assert!(c.insert_fill(CacheKey(2), entry(&[]), c.begin_fill()));
        assert!(c.get(&CacheKey(2), clock::now_ms()).is_some());
        c.leave_degraded();
        assert!(
            c.get(&CacheKey(2), clock::now_ms()).is_none(),
            "what was stored while degraded is dropped"
        );
    }

    /// Removals heard by `on_removal`, by cause.
    fn counted() -> (L1, Arc<Mutex<HashMap<&'static str, u64>>>) {
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let log = seen.clone();
        let c = L1::new(
            1 << 20,
            1 << 16,
            Duration::from_secs(60),
            Duration::from_secs(5),
            move |cause, n| *log.lock().unwrap().entry(cause).or_insert(0) += n,
        );
        (c, seen)
    }

    #[test]
    fn an_entry_is_kept_until_its_freshness_ends_or_max_age_whichever_is_first() {
        let (c, seen) = counted();
        let now = clock::now_ms();
        // A 60 s lifetime under a 60 s max_age.
        assert!(c.insert_fill(CacheKey(1), entry(&[]), c.begin_fill()));
        assert!(c.get(&CacheKey(1), now + 59_000).is_some());
        assert!(c.get(&CacheKey(1), now + 61_000).is_none());
        assert_eq!(seen.lock().unwrap().get("expired"), Some(&1));
        assert_eq!(
            c.usage().0,
            0,
            "an expired entry found by a lookup is removed"
        );
        // Stored while degraded: 5 s.
        c.enter_degraded();
        let now = clock::now_ms();
        assert!(c.insert_fill(CacheKey(2), entry(&[]), c.begin_fill()));
        assert!(c.get(&CacheKey(2), now + 4_000).is_some());
        assert!(c.get(&CacheKey(2), now + 6_000).is_none());
    }

    #[test]
    fn sweep_drops_expired_entries_and_their_index() {
        let (c, seen) = counted();
        let mut old = entry(&["user:1"]).meta();
        // Stored 59.9 s ago with a 60 s lifetime: kept ~100 ms more.
        old.stored_at_ms -= 59_900;
        let expires = old.stored_at_ms + 60_000;
        let old = Entry::new(old, &HeaderMap::new(), b"x", &["user:1"], "");
        assert!(c.insert_fill(CacheKey(1), old, c.begin_fill()));
        assert!(c.insert_fill(CacheKey(2), entry(&["user:2"]), c.begin_fill()));
        let deadline = Instant::now() + Duration::from_secs(5);
        while clock::now_ms() <= expires {
            assert!(Instant::now() < deadline, "the clock stands still");
            std::thread::yield_now();
        }
        assert_eq!(c.usage().0, 2, "nothing looked the expired entry up");
        c.sweep();
        assert_eq!(c.usage().0, 1);
        assert_eq!(
            c.book().index.len(),
            1,
            "the expired entry's tag left the index"
        );
        assert_eq!(seen.lock().unwrap().get("expired"), Some(&1));
    }

    #[test]
    fn a_full_l1_evicts_for_room_and_counts_it() {
        let seen = Arc::new(Mutex::new(0));
        let log = seen.clone();
        let max_bytes = 64 * 1024;
        let c = L1::new(
            max_bytes,
            4096,
            Duration::from_secs(60),
            Duration::from_secs(5),
            move |cause, n| {
                if cause == "size" {
                    *log.lock().unwrap() += n;
                }
            },
        );
        for k in 0..1000 {
            assert!(c.insert_fill(CacheKey(k), entry(&[]), c.begin_fill()));
        }
        let (entries, bytes) = c.usage();
        assert!(bytes <= max_bytes, "{bytes} bytes held");
        assert!(entries > 10 && entries < 1000, "{entries} entries held");
        assert_eq!(*seen.lock().unwrap(), 1000 - entries);
        // A lookup still finds what is held.
        let held = (0..1000)
            .filter(|k| c.get(&CacheKey(*k), clock::now_ms()).is_some())
            .count();
        assert_eq!(held as u64, entries);
    }

    #[test]
    fn shards_never_get_too_small_for_the_largest_entry() {
        for (max_bytes, max_entry) in [(128 << 20, 1 << 20), (1 << 20, 1 << 20), (4 << 20, 1)] {
            let n = shards(max_bytes, max_entry) as u64;
            assert!(n.is_power_of_two());
            assert!(n == 1 || max_bytes / n >= LARGEST_ENTRIES_PER_SHARD * max_entry);
        }
    }
}
