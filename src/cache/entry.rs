//! A stored response. Immutable once built; a handle of two reference-counted pointers,
//! cloned cheaply between the tiers and every request that hits it.
//!
//! # Memory
//!
//! L1 holds hundreds of thousands of these, most with a body of a few hundred bytes, so an
//! entry is one allocation: a buffer with its timing, its layout and everything variable,
//!
//! ```text
//! [stored_at_ms: u64] [ttl_ms: u64] [last_modified: u32] [initial_age: u32] [status: u16]
//! [etag: u16] [path_at: u32] [body_at: u32] [flags: u16] [grace_ms: u64] [swr_ms: u64]
//! [value ends: u32 each] [field values] [tags: (u16 len, bytes) each] [path] [body]
//! ```
//!
//! (little-endian; the tags start where the values end), held by L1's map slot directly, with
//! no `Arc<Entry>` or `Bytes` control block of its own. The field *names* are in a [`Shape`]
//! shared with every entry that has the same names. A hit turns the buffer into one [`Bytes`]
//! ([`Entry::parts`]: one small allocation) and hands out slices of it, the body and the field
//! values, without copying.
//! Measured on 103,000 entries (3000 x 611-byte and 100,000 x 216-byte bodies): an owned
//! `HeaderMap` per entry came to ~2.2 KiB; the previous packed layout, with the timing in an
//! `Arc<Entry>` and a `Bytes` buffer, to ~540 bytes of heap before L1's own slot.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;

use super::policy;
use super::shape::{self, Shape};

/// The timing and status of a stored response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub status: StatusCode,
    /// Unix seconds compared against `If-Modified-Since`: the upstream's `Last-Modified`, else
    /// its `Date`, else the time it was stored (RFC 9111 §4.3.2).
    pub last_modified: u64,
    /// Unix milliseconds when the response arrived from the upstream.
    pub stored_at_ms: u64,
    /// The upstream's `Age` on arrival, in seconds.
    pub initial_age: u64,
    /// Freshness lifetime in milliseconds, counted from `stored_at_ms - initial_age`.
    pub ttl_ms: u64,
    /// `policy::flags` bits: how it may be served and revalidated (a soft purge among them).
    pub flags: u16,
    /// How long past `ttl_ms` the entry is kept and may be served stale (stale-if-error);
    /// 0: never stale (always 0 with `MUST_REVALIDATE` or `NO_CACHE`). See `cache::stale`.
    pub grace_ms: u64,
    /// The first part of the grace in which it is also served at once while one refresh runs
    /// (stale-while-revalidate); at most `grace_ms`.
    pub swr_ms: u64,
}

#[derive(Clone)]
pub struct Entry {
    /// The names of the stored fields.
    shape: Arc<Shape>,
    /// The fixed head, then value ends, values, tags, path and body; see the module doc.
    data: Arc<[u8]>,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("meta", &self.meta())
            .field("path", &self.path())
            .field("body_len", &self.body_len())
            .finish()
    }
}

/// Offsets in the fixed head.
const STORED_AT: usize = 0;
const TTL: usize = 8;
const LAST_MODIFIED: usize = 16;
const INITIAL_AGE: usize = 20;
const STATUS: usize = 24;
const ETAG: usize = 26;
const PATH_AT: usize = 28;
const BODY_AT: usize = 32;
const FLAGS: usize = 36;
const GRACE: usize = 38;
const SWR: usize = 46;
/// Where the value ends begin.
const HEAD: usize = 54;

/// Every allocation costs malloc's chunk header and rounding on top of what was asked for
/// (glibc: 8 bytes of header, 16-byte granularity).
pub const MALLOC_OVERHEAD: usize = 16;

/// The buffer's reference counts and its chunk overhead (the handle itself sits inline in
/// L1's map slot, which L1 charges).
const FIXED_BYTES: usize = 16 + MALLOC_OVERHEAD;

impl Entry {
    /// Stores `headers` (the fields every answer from this entry carries: hop-by-hop fields
    /// already removed), less `Age` and `Cache-Status`, which each answer sets anew. The
    /// origin's `ETag` is kept as it is (weak or strong); without one, a weak one computed
    /// from the body is stored and `flags::ETAG_DERIVED` set.
    pub fn new(
        meta: Meta,
        headers: &HeaderMap,
        body: &[u8],
        tags: &[impl AsRef<str>],
        path: &str,
    ) -> Entry {
        let mut meta = meta;
        // A refreshed entry keeps its derived ETag among its fields: the bit is kept then.
        let computed_etag = match headers.get(header::ETAG) {
            Some(_) => None,
            None => {
                meta.flags |= policy::flags::ETAG_DERIVED;
                Some(policy::body_etag(body))
            }
        };
        let fields: Vec<(&HeaderName, &HeaderValue)> = headers
            .iter()
            .filter(|(n, _)| {
                **n != header::AGE
                    && **n != shape::CACHE_STATUS
                    && !(computed_etag.is_some() && **n == header::ETAG)
            })
            .chain(computed_etag.as_ref().map(|e| (&header::ETAG, e)))
            .collect();
        // The order of a map built from these is the order of `fields` only if equal names
        // are adjacent; `HeaderMap::iter` groups them, and the computed ETag is the only one.
        let names: Vec<HeaderName> = fields.iter().map(|(n, _)| (*n).clone()).collect();
        let shape = shape::intern(&names);
        let etag = fields
            .iter()
            .position(|(n, _)| **n == header::ETAG)
            .expect("an ETag is stored") as u16;

        let values_len: usize = fields.iter().map(|(_, v)| v.len()).sum();
        let tags_len: usize = tags.iter().map(|t| 2 + tag_bytes(t).len()).sum();
        let total = HEAD + 4 * fields.len() + values_len + tags_len + path.len() + body.len();
        let mut buf = vec![0u8; HEAD];
        buf.reserve_exact(total - HEAD);
        let mut end = 0u32;
        for (_, v) in &fields {
            end += v.len() as u32;
            buf.extend_from_slice(&end.to_le_bytes());
        }
        for (_, v) in &fields {
            buf.extend_from_slice(v.as_bytes());
        }
        for t in tags {
            let t = tag_bytes(t);
            buf.extend_from_slice(&(t.len() as u16).to_le_bytes());
            buf.extend_from_slice(t);
        }
        let path_at = buf.len() as u32;
        buf.extend_from_slice(path.as_bytes());
        let body_at = buf.len() as u32;
        buf.extend_from_slice(body);
        debug_assert_eq!(buf.len(), total);
        // Seconds: a u32 holds ages past a century, and Unix times until 2106.
        let initial_age = meta.initial_age.min(u64::from(u32::MAX)) as u32;
        let last_modified = meta.last_modified.min(u64::from(u32::MAX)) as u32;
        put(&mut buf, STORED_AT, &meta.stored_at_ms.to_le_bytes());
        put(&mut buf, TTL, &meta.ttl_ms.to_le_bytes());
        put(&mut buf, LAST_MODIFIED, &last_modified.to_le_bytes());
        put(&mut buf, INITIAL_AGE, &initial_age.to_le_bytes());
        put(&mut buf, STATUS, &meta.status.as_u16().to_le_bytes());
        put(&mut buf, ETAG, &etag.to_le_bytes());
        put(&mut buf, PATH_AT, &path_at.to_le_bytes());
        put(&mut buf, BODY_AT, &body_at.to_le_bytes());
        put(&mut buf, FLAGS, &meta.flags.to_le_bytes());
        // An entry that may never be served stale has no grace, whatever built it.
        let strict = policy::flags::MUST_REVALIDATE | policy::flags::NO_CACHE;
        let grace_ms = if meta.flags & strict != 0 {
            0
        } else {
            meta.grace_ms
        };
        put(&mut buf, GRACE, &grace_ms.to_le_bytes());
        put(&mut buf, SWR, &meta.swr_ms.min(grace_ms).to_le_bytes());
        Entry {
            shape,
            // One exactly sized copy: the vector's allocation goes, the entry's stays.
            data: Arc::from(buf),
        }
    }

    pub fn meta(&self) -> Meta {
        Meta {
            status: self.status(),
            last_modified: self.last_modified(),
            stored_at_ms: self.stored_at_ms(),
            initial_age: self.initial_age(),
            ttl_ms: self.ttl_ms(),
            flags: self.flags(),
            grace_ms: self.grace_ms(),
            swr_ms: self.swr_ms(),
        }
    }

    /// See [`Meta::flags`].
    pub fn flags(&self) -> u16 {
        self.u16_at(FLAGS)
    }

    /// A Vary marker, never served (see `policy::vary`).
    pub fn is_marker(&self) -> bool {
        self.flags() & policy::flags::VARY_MARKER != 0
    }

    /// See [`Meta`].
    pub fn grace_ms(&self) -> u64 {
        self.u64_at(GRACE)
    }

    pub fn swr_ms(&self) -> u64 {
        self.u64_at(SWR)
    }

    /// Marked stale by a soft purge.
    pub fn soft_purged(&self) -> bool {
        self.flags() & policy::flags::SOFT_PURGED != 0
    }

    /// A copy marked stale at `now_ms` (a soft purge): its freshness ends now if later, its
    /// grace ends no later than before (repeated soft purges never lengthen a life), and all
    /// of what is left of it serves while one refresh runs. `None` when it has no grace
    /// left (or is a Vary marker, whose variants are marked instead): then it is simply gone.
    pub fn soft_purged_at(&self, now_ms: u64) -> Option<Entry> {
        if self.is_marker() {
            return None;
        }
        let age = policy::age_ms(self.stored_at_ms(), self.initial_age(), now_ms);
        let grace_end = self.ttl_ms().saturating_add(self.grace_ms());
        let ttl_ms = self.ttl_ms().min(age);
        let grace_ms = grace_end.min(age.saturating_add(self.grace_ms())) - ttl_ms;
        if ttl_ms + grace_ms <= age {
            return None;
        }
        let mut data = self.data.to_vec();
        put(&mut data, TTL, &ttl_ms.to_le_bytes());
        put(&mut data, GRACE, &grace_ms.to_le_bytes());
        put(&mut data, SWR, &grace_ms.to_le_bytes());
        let flags = self.flags() | policy::flags::SOFT_PURGED;
        put(&mut data, FLAGS, &flags.to_le_bytes());
        Some(Entry {
            shape: self.shape.clone(),
            data: Arc::from(data),
        })
    }

    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.u16_at(STATUS)).expect("a stored status is valid")
    }

    /// See [`Meta`].
    pub fn last_modified(&self) -> u64 {
        u64::from(self.u32_at(LAST_MODIFIED))
    }

    pub fn stored_at_ms(&self) -> u64 {
        self.u64_at(STORED_AT)
    }

    pub fn initial_age(&self) -> u64 {
        u64::from(self.u32_at(INITIAL_AGE))
    }

    pub fn ttl_ms(&self) -> u64 {
        self.u64_at(TTL)
    }

    /// Whether it may be served at `now_ms` (wall-clock ms), and its age.
    pub fn freshness(&self, now_ms: u64) -> policy::Freshness {
        policy::freshness(
            self.stored_at_ms(),
            self.initial_age(),
            self.ttl_ms(),
            self.flags(),
            (self.grace_ms(), self.swr_ms()),
            now_ms,
        )
    }

    pub fn age_ms(&self, now_ms: u64) -> u64 {
        policy::age_ms(self.stored_at_ms(), self.initial_age(), now_ms)
    }

    /// Milliseconds of freshness left at `now_ms`; 0 once stale.
    pub fn ttl_left_ms(&self, now_ms: u64) -> u64 {
        self.ttl_ms().saturating_sub(self.age_ms(now_ms))
    }

    /// Milliseconds the tiers keep it from `now_ms` (`policy::retention_ms`); 0 once past.
    pub fn retain_left_ms(&self, now_ms: u64) -> u64 {
        policy::retention_ms(self.ttl_ms(), self.flags(), self.grace_ms())
            .saturating_sub(self.age_ms(now_ms))
    }

    /// The buffer as [`Bytes`], to slice the body and field values from: one small allocation
    /// (the owner's reference count), then only reference counts.
    pub fn parts(&self) -> Parts<'_> {
        Parts {
            entry: self,
            bytes: Bytes::from_owner(self.data.clone()),
        }
    }

    /// The body (see [`Entry::parts`] to take several slices for one allocation).
    pub fn body(&self) -> Bytes {
        self.parts().body()
    }

    /// The body as a slice of the entry (no reference count taken).
    pub fn body_bytes(&self) -> &[u8] {
        &self.data[self.body_at()..]
    }

    pub fn body_len(&self) -> usize {
        self.data.len() - self.body_at()
    }

    /// The validator, also among the stored fields: the origin's, or a derived weak one.
    pub fn etag(&self) -> &[u8] {
        &self.data[self.value_range(self.u16_at(ETAG) as usize)]
    }

    /// The rendered tags of this entry (`group:VIP`, ...), for invalidation.
    pub fn tags(&self) -> impl Iterator<Item = &str> {
        let tags_at = self.value_range(self.shape.len() - 1).end;
        let mut rest = &self.data[tags_at..self.u32_at(PATH_AT) as usize];
        std::iter::from_fn(move || {
            let (len, tail) = rest.split_first_chunk::<2>()?;
            let (tag, tail) = tail.split_at(u16::from_le_bytes(*len) as usize);
            rest = tail;
            Some(std::str::from_utf8(tag).unwrap_or_default())
        })
    }

    /// The request path and query that produced a shared entry, which a refresh after an
    /// invalidation fetches again; empty for an identity-scoped one, which is never refreshed.
    /// Not part of any Redis key.
    pub fn path(&self) -> &str {
        std::str::from_utf8(&self.data[self.u32_at(PATH_AT) as usize..self.body_at()])
            .unwrap_or_default()
    }

    /// The stored fields, in order.
    pub fn headers(&self) -> impl Iterator<Item = (&HeaderName, HeaderValue)> {
        let parts = self.parts();
        self.shape
            .names()
            .enumerate()
            .map(move |(i, name)| (name, parts.value(i)))
    }

    /// Bytes this entry holds, as charged against `l1.max_bytes` (L1 adds its own per-entry
    /// bookkeeping, the handle's slot among it): its buffer with the allocation's overhead,
    /// and its shape if that is not shared.
    pub fn weight(&self) -> u32 {
        let bytes = FIXED_BYTES + self.data.len() + self.shape.charged_bytes();
        bytes.min(u32::MAX as usize) as u32
    }

    fn body_at(&self) -> usize {
        self.u32_at(BODY_AT) as usize
    }

    fn value_range(&self, i: usize) -> std::ops::Range<usize> {
        let values_at = HEAD + 4 * self.shape.len();
        let end_of = |j: usize| self.u32_at(HEAD + 4 * j) as usize;
        let start = if i == 0 { 0 } else { end_of(i - 1) };
        values_at + start..values_at + end_of(i)
    }

    fn u16_at(&self, at: usize) -> u16 {
        u16::from_le_bytes(self.data[at..at + 2].try_into().expect("2 bytes"))
    }

    fn u32_at(&self, at: usize) -> u32 {
        u32::from_le_bytes(self.data[at..at + 4].try_into().expect("4 bytes"))
    }

    fn u64_at(&self, at: usize) -> u64 {
        u64::from_le_bytes(self.data[at..at + 8].try_into().expect("8 bytes"))
    }
}

/// An entry with its buffer as [`Bytes`]: what a hit slices its answer from.
pub struct Parts<'a> {
    entry: &'a Entry,
    bytes: Bytes,
}

impl Parts<'_> {
    pub fn body(&self) -> Bytes {
        self.bytes.slice(self.entry.body_at()..)
    }

    /// The header map of a full answer: the stored fields, then `age` and `cache_status`.
    pub fn response_headers(&self, age: HeaderValue, cache_status: HeaderValue) -> HeaderMap {
        let values = (0..self.entry.shape.len()).map(|i| self.value(i));
        self.entry.shape.fill(values, age, cache_status)
    }

    fn value(&self, i: usize) -> HeaderValue {
        // A slice of the shared buffer: a reference count, no copy.
        HeaderValue::from_maybe_shared(self.bytes.slice(self.entry.value_range(i)))
            .expect("stored values were valid header values")
    }
}

fn put(buf: &mut [u8], at: usize, bytes: &[u8]) {
    buf[at..at + bytes.len()].copy_from_slice(bytes);
}

/// A tag as stored: longer than a `u16` length can say is cut (tags are short names; the
/// invalidation of a cut tag still matches, since both sides cut alike).
fn tag_bytes(t: &impl AsRef<str>) -> &[u8] {
    let t = t.as_ref().as_bytes();
    &t[..t.len().min(u16::MAX as usize)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handle_stays_small() {
        // Two pointers and a length: L1's map slot holds it inline.
        assert_eq!(std::mem::size_of::<Entry>(), 24);
    }

    fn meta() -> Meta {
        Meta {
            status: StatusCode::OK,
            last_modified: 1,
            stored_at_ms: 2,
            initial_age: 3,
            ttl_ms: 4,
            flags: policy::flags::MUST_REVALIDATE,
            grace_ms: 0,
            swr_ms: 0,
        }
    }

    #[test]
    fn soft_purge_cuts_the_lifetime_and_never_lengthens_the_grace() {
        let m = Meta {
            stored_at_ms: 1_000,
            initial_age: 0,
            ttl_ms: 60_000,
            grace_ms: 30_000,
            swr_ms: 0,
            flags: 0,
            ..meta()
        };
        let e = Entry::new(m, &HeaderMap::new(), b"x", &["t"], "/p");
        // Purged while fresh, 10 s in: stale now, 30 s of grace from now, all of it SWR.
        let p = e.soft_purged_at(11_000).unwrap();
        assert_eq!(
            (p.ttl_ms(), p.grace_ms(), p.swr_ms()),
            (10_000, 30_000, 30_000)
        );
        assert!(p.soft_purged() && !e.soft_purged());
        assert_eq!(&p.body()[..], b"x");
        assert!(p.tags().eq(["t"]));
        // Purged again 20 s later: the grace still ends at 41 s, not later.
        let q = p.soft_purged_at(31_000).unwrap();
        assert_eq!(q.retain_left_ms(31_000), 10_000);
        // Purged past its grace (or with none): gone.
        assert!(e.soft_purged_at(91_000).is_none());
        let none = Entry::new(
            Meta { grace_ms: 0, ..m },
            &HeaderMap::new(),
            b"x",
            &["t"],
            "",
        );
        assert!(none.soft_purged_at(2_000).is_none());
        // An entry that is never served stale gets no grace, whatever its builder said.
        let strict = Entry::new(
            Meta {
                flags: policy::flags::NO_CACHE,
                ..m
            },
            &HeaderMap::new(),
            b"x",
            &["t"],
            "",
        );
        assert_eq!((strict.grace_ms(), strict.swr_ms()), (0, 0));
        assert!(strict.soft_purged_at(2_000).is_none());
    }

    #[test]
    fn parts_read_back() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        h.insert(header::ETAG, HeaderValue::from_static("\"v1\""));
        h.insert(header::AGE, HeaderValue::from_static("9"));
        h.append("x-entry-test", HeaderValue::from_static("a"));
        h.append("x-entry-test", HeaderValue::from_static("b"));
        let e = Entry::new(meta(), &h, b"body", &["t:1", "t:2"], "/p?q=1");
        assert_eq!(e.meta(), meta());
        assert_eq!(e.flags(), policy::flags::MUST_REVALIDATE);
        assert_eq!(&e.body()[..], b"body");
        assert_eq!(e.body_len(), 4);
        assert_eq!(e.etag(), b"\"v1\"");
        assert_eq!(e.tags().collect::<Vec<_>>(), ["t:1", "t:2"]);
        assert_eq!(e.path(), "/p?q=1");
        h.remove(header::AGE);
        let stored: HeaderMap = e.headers().map(|(n, v)| (n.clone(), v)).collect();
        assert_eq!(stored.len(), 4);
        let mut expected = h.clone();
        expected.insert(header::AGE, HeaderValue::from_static("5"));
        expected.insert(shape::CACHE_STATUS, HeaderValue::from_static("hit"));
        let answer = e.parts().response_headers(
            HeaderValue::from_static("5"),
            HeaderValue::from_static("hit"),
        );
        assert_eq!(answer, expected);
    }

    #[test]
    fn the_origins_etag_is_kept_and_a_missing_one_derived_weak() {
        let mut h = HeaderMap::new();
        h.insert(header::ETAG, HeaderValue::from_static("W/\"weak\""));
        let e = Entry::new(meta(), &h, b"x", &[] as &[&str], "");
        assert_eq!(e.etag(), b"W/\"weak\"");
        assert_eq!(e.flags() & policy::flags::ETAG_DERIVED, 0);
        assert_eq!(e.headers().count(), 1);
        let none = Entry::new(meta(), &HeaderMap::new(), b"x", &[] as &[&str], "");
        assert_eq!(none.etag(), policy::body_etag(b"x").as_bytes());
        assert!(none.etag().starts_with(b"W/"));
        assert_eq!(
            none.flags(),
            policy::flags::ETAG_DERIVED | policy::flags::MUST_REVALIDATE
        );
        assert_eq!(none.tags().count(), 0);
    }
}
