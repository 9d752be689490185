//! A stored response. Immutable once built and shared as `Arc<Entry>` between the tiers and
//! every request that hits it.
//!
//! # Memory
//!
//! L1 holds hundreds of thousands of these, most with a body of a few hundred bytes, so an
//! entry is two allocations besides its `Arc`: one buffer with everything variable in it,
//!
//! ```text
//! [value ends: u32 each] [field values] [tags: (u16 len, bytes) each] [path] [body]
//! ```
//!
//! and the `Bytes` control block that lets a hit hand out slices of it (the body, the field
//! values) without copying. The field *names* are in a [`Shape`] shared with every entry that
//! has the same names. Measured on 103,000 entries (3000 x 611-byte and 100,000 x 216-byte
//! bodies), the owned `HeaderMap`, per-value and per-tag allocations this replaces came to
//! ~2.2 KiB per entry.

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
}

#[derive(Debug)]
pub struct Entry {
    pub status: StatusCode,
    /// See [`Meta`].
    pub last_modified: u64,
    pub stored_at_ms: u64,
    pub initial_age: u64,
    pub ttl_ms: u64,
    /// The names of the stored fields.
    shape: Arc<Shape>,
    /// Value ends, values, tags, path and body; see the module doc.
    data: Bytes,
    tags_at: u32,
    path_at: u32,
    body_at: u32,
    /// Which stored value is the `ETag` (a `HeaderMap` holds at most 32,768). A `u16` keeps
    /// the struct at 88 bytes, its `Arc` allocation in glibc's 112-byte chunk rather than 128.
    etag: u16,
}

/// Every allocation costs malloc's chunk header and rounding on top of what was asked for
/// (glibc: 8 bytes of header, 16-byte granularity).
pub const MALLOC_OVERHEAD: usize = 16;

/// The `Arc`'s counters, the `Bytes` control block of `data` (a promoted vector: pointer,
/// capacity, count), and one chunk overhead for each of the three allocations.
const FIXED_BYTES: usize = 16 + 24 + 3 * MALLOC_OVERHEAD;

impl Entry {
    /// Stores `headers` (the fields every answer from this entry carries: hop-by-hop fields
    /// already removed), less `Age` and `Cache-Status`, which each answer sets anew. Without a
    /// strong `ETag` among them, one computed from the body is stored instead of theirs.
    pub fn new(
        meta: Meta,
        headers: &HeaderMap,
        body: &[u8],
        tags: &[impl AsRef<str>],
        path: &str,
    ) -> Entry {
        let computed_etag = match headers.get(header::ETAG) {
            Some(e) if policy::is_strong_etag(e) => None,
            _ => Some(policy::body_etag(body)),
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
        let total = 4 * fields.len() + values_len + tags_len + path.len() + body.len();
        let mut buf = Vec::with_capacity(total);
        let mut end = 0u32;
        for (_, v) in &fields {
            end += v.len() as u32;
            buf.extend_from_slice(&end.to_le_bytes());
        }
        for (_, v) in &fields {
            buf.extend_from_slice(v.as_bytes());
        }
        let tags_at = buf.len() as u32;
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
        Entry {
            status: meta.status,
            last_modified: meta.last_modified,
            stored_at_ms: meta.stored_at_ms,
            initial_age: meta.initial_age,
            ttl_ms: meta.ttl_ms,
            shape,
            // Exactly sized, so `Bytes` keeps the vector's allocation as it is.
            data: Bytes::from(buf),
            tags_at,
            path_at,
            body_at,
            etag,
        }
    }

    pub fn meta(&self) -> Meta {
        Meta {
            status: self.status,
            last_modified: self.last_modified,
            stored_at_ms: self.stored_at_ms,
            initial_age: self.initial_age,
            ttl_ms: self.ttl_ms,
        }
    }

    pub fn body(&self) -> Bytes {
        self.data.slice(self.body_at as usize..)
    }

    pub fn body_len(&self) -> usize {
        self.data.len() - self.body_at as usize
    }

    /// The strong validator, also among the stored fields.
    pub fn etag(&self) -> &[u8] {
        &self.data[self.value_range(self.etag as usize)]
    }

    /// The rendered tags of this entry (`group:VIP`, ...), for invalidation.
    pub fn tags(&self) -> impl Iterator<Item = &str> {
        let mut rest = &self.data[self.tags_at as usize..self.path_at as usize];
        std::iter::from_fn(move || {
            let (len, tail) = rest.split_first_chunk::<2>()?;
            let (tag, tail) = tail.split_at(u16::from_le_bytes(*len) as usize);
            rest = tail;
            Some(std::str::from_utf8(tag).unwrap_or_default())
        })
    }

    /// The request path and query that produced it: refresh-after-invalidation fetches it
    /// again, and `explain` shows it. Not part of any Redis key.
    pub fn path(&self) -> &str {
        std::str::from_utf8(&self.data[self.path_at as usize..self.body_at as usize])
            .unwrap_or_default()
    }

    /// The stored fields, in order.
    pub fn headers(&self) -> impl Iterator<Item = (&HeaderName, HeaderValue)> {
        self.shape
            .names()
            .enumerate()
            .map(|(i, name)| (name, self.value(i)))
    }

    /// The header map of a full answer: the stored fields, then `age` and `cache_status`.
    pub fn response_headers(&self, age: HeaderValue, cache_status: HeaderValue) -> HeaderMap {
        let values = (0..self.shape.len()).map(|i| self.value(i));
        self.shape.fill(values, age, cache_status)
    }

    /// Bytes this entry holds, as charged against `l1.max_bytes` (L1 adds its own per-entry
    /// bookkeeping): the struct, its buffer, their allocations' overhead, and its shape if
    /// that is not shared.
    pub fn weight(&self) -> u32 {
        let bytes = std::mem::size_of::<Entry>()
            + FIXED_BYTES
            + self.data.len()
            + self.shape.charged_bytes();
        bytes.min(u32::MAX as usize) as u32
    }

    fn value(&self, i: usize) -> HeaderValue {
        // A slice of the shared buffer: a reference count, no copy.
        HeaderValue::from_maybe_shared(self.data.slice(self.value_range(i)))
            .expect("stored values were valid header values")
    }

    fn value_range(&self, i: usize) -> std::ops::Range<usize> {
        let values_at = 4 * self.shape.len();
        let end_of = |j: usize| {
            let at = 4 * j;
            u32::from_le_bytes(self.data[at..at + 4].try_into().expect("4 bytes")) as usize
        };
        let start = if i == 0 { 0 } else { end_of(i - 1) };
        values_at + start..values_at + end_of(i)
    }
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
    fn the_struct_stays_small() {
        assert!(std::mem::size_of::<Entry>() <= 88);
    }

    fn meta() -> Meta {
        Meta {
            status: StatusCode::OK,
            last_modified: 1,
            stored_at_ms: 2,
            initial_age: 3,
            ttl_ms: 4,
        }
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
        let answer = e.response_headers(
            HeaderValue::from_static("5"),
            HeaderValue::from_static("hit"),
        );
        assert_eq!(answer, expected);
    }

    #[test]
    fn a_weak_or_missing_etag_is_replaced_by_the_body_hash() {
        let mut h = HeaderMap::new();
        h.insert(header::ETAG, HeaderValue::from_static("W/\"weak\""));
        let e = Entry::new(meta(), &h, b"x", &[] as &[&str], "");
        assert_eq!(e.etag(), policy::body_etag(b"x").as_bytes());
        assert_eq!(e.headers().count(), 1);
        let none = Entry::new(meta(), &HeaderMap::new(), b"x", &[] as &[&str], "");
        assert_eq!(none.etag(), e.etag());
        assert_eq!(none.tags().count(), 0);
    }
}
