//! The L2 entry format: compact, binary, versioned.
//!
//! ```text
//! "SC" version:u8=3
//! status:u16 stored_at_ms:u64 initial_age:u64 ttl_ms:u64 last_modified:u64 flags:u16
//! grace_ms:u64 swr_ms:u64
//! etag:(u16 len, bytes)
//! headers:u16 count, each (u16 name len, name, u32 value len, value)
//! tags:u16 count, each (u16 len, bytes)
//! path:(u16 len, bytes)
//! body:(u32 len, bytes)
//! ```
//! All integers big-endian. A reader meets an unknown version or any inconsistency as a
//! [`DecodeError`] and treats the value as a miss; the next fill overwrites it.
//!
//! Version 3 has `flags` (`policy::flags`, soft purge among them) and the grace. Older
//! versions are read as misses: version 1 entries, whose ETag may be a derived one claimed
//! strong and whose `last_modified` may be a `Date`, and both forms of version 2 (flags
//! without grace, or grace with a one-byte flags field), which were never one format.
//!
//! The format does not follow L1's packed layout (`entry.rs`): it is the contract between pods
//! of different versions sharing one Redis, and rebuilding the packed form costs one copy of a
//! decoded entry, which an L2 hit pays anyway.

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use super::{policy, Entry, Meta};

const MAGIC: &[u8; 2] = b"SC";
pub const VERSION: u8 = 3;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    NotAnEntry,
    UnknownVersion(u8),
    Truncated,
    Invalid(&'static str),
}

pub fn encode(e: &Entry) -> Bytes {
    let body = e.body();
    let mut b = BytesMut::with_capacity(body.len() + 64 * (e.headers().count() + 1));
    b.put_slice(MAGIC);
    b.put_u8(VERSION);
    b.put_u16(e.status().as_u16());
    b.put_u64(e.stored_at_ms());
    b.put_u64(e.initial_age());
    b.put_u64(e.ttl_ms());
    b.put_u64(e.last_modified());
    b.put_u16(e.flags());
    b.put_u64(e.grace_ms());
    b.put_u64(e.swr_ms());
    put16(&mut b, e.etag());
    // What every answer adds (`Age`, `Cache-Status`) is not stored.
    b.put_u16(e.headers().count() as u16);
    for (k, v) in e.headers() {
        put16(&mut b, k.as_str().as_bytes());
        b.put_u32(v.len() as u32);
        b.put_slice(v.as_bytes());
    }
    b.put_u16(e.tags().count() as u16);
    for t in e.tags() {
        put16(&mut b, t.as_bytes());
    }
    put16(&mut b, e.path().as_bytes());
    b.put_u32(body.len() as u32);
    b.put_slice(&body);
    b.freeze()
}

fn put16(b: &mut BytesMut, s: &[u8]) {
    let s = &s[..s.len().min(u16::MAX as usize)];
    b.put_u16(s.len() as u16);
    b.put_slice(s);
}

struct Reader {
    buf: Bytes,
    pos: usize,
}

impl Reader {
    fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        if self.buf.len() - self.pos < n {
            return Err(DecodeError::Truncated);
        }
        let out = self.buf.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(out)
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(
            self.take(2)?[..].try_into().expect("2 bytes"),
        ))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(
            self.take(4)?[..].try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(
            self.take(8)?[..].try_into().expect("8 bytes"),
        ))
    }

    fn bytes16(&mut self) -> Result<Bytes, DecodeError> {
        let n = self.u16()? as usize;
        self.take(n)
    }
}

pub fn decode(buf: Bytes) -> Result<Entry, DecodeError> {
    if buf.len() < 3 || &buf[..2] != MAGIC {
        return Err(DecodeError::NotAnEntry);
    }
    if buf[2] != VERSION {
        return Err(DecodeError::UnknownVersion(buf[2]));
    }
    let mut r = Reader { buf, pos: 3 };
    let status = StatusCode::from_u16(r.u16()?).map_err(|_| DecodeError::Invalid("status"))?;
    let stored_at_ms = r.u64()?;
    let initial_age = r.u64()?;
    let ttl_ms = r.u64()?;
    let last_modified = r.u64()?;
    let flags = r.u16()?;
    let (grace_ms, swr_ms) = (r.u64()?, r.u64()?);
    if flags & !policy::flags::ALL != 0 {
        return Err(DecodeError::Invalid("flags"));
    }
    // A hostile or broken writer's grace: a revalidate window past the grace, or grace on an
    // entry that may never be served stale.
    let strict = policy::flags::MUST_REVALIDATE | policy::flags::NO_CACHE;
    if swr_ms > grace_ms || (grace_ms > 0 && flags & strict != 0) {
        return Err(DecodeError::Invalid("grace"));
    }
    let etag =
        HeaderValue::from_maybe_shared(r.bytes16()?).map_err(|_| DecodeError::Invalid("etag"))?;
    let n = r.u16()? as usize;
    let mut headers = HeaderMap::with_capacity(n);
    for _ in 0..n {
        let name = HeaderName::from_bytes(&r.bytes16()?)
            .map_err(|_| DecodeError::Invalid("header name"))?;
        let len = r.u32()? as usize;
        let value = HeaderValue::from_maybe_shared(r.take(len)?)
            .map_err(|_| DecodeError::Invalid("header value"))?;
        headers.append(name, value);
    }
    let n = r.u16()? as usize;
    let mut tags = Vec::with_capacity(n);
    for _ in 0..n {
        let t = r.bytes16()?;
        tags.push(String::from_utf8(t.to_vec()).map_err(|_| DecodeError::Invalid("tag"))?);
    }
    let path = r.bytes16()?;
    let path = std::str::from_utf8(&path).map_err(|_| DecodeError::Invalid("path"))?;
    let len = r.u32()? as usize;
    let body = r.take(len)?;
    if r.pos != r.buf.len() {
        return Err(DecodeError::Invalid("trailing bytes"));
    }
    // The stored fields hold the ETag; a writer that kept it only apart is trusted for it.
    if !headers.contains_key(http::header::ETAG) {
        headers.insert(http::header::ETAG, etag);
    }
    let meta = Meta {
        status,
        last_modified,
        stored_at_ms,
        initial_age,
        ttl_ms,
        flags,
        grace_ms,
        swr_ms,
    };
    Ok(Entry::new(meta, &headers, &body, &tags, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.append("x-multi", HeaderValue::from_static("a"));
        headers.append("x-multi", HeaderValue::from_static("b"));
        headers.insert("etag", HeaderValue::from_static("\"abc\""));
        let meta = Meta {
            status: StatusCode::OK,
            last_modified: 1_700_000_000,
            stored_at_ms: 1_700_000_000_123,
            initial_age: 3,
            ttl_ms: 60_000,
            flags: crate::cache::policy::flags::SOFT_PURGED
                | crate::cache::policy::flags::LAST_MODIFIED,
            grace_ms: 30_000,
            swr_ms: 10_000,
        };
        let tags = ["group:VIP", "group:VIP:EURUSD"];
        Entry::new(
            meta,
            &headers,
            b"{\"a\":1}",
            &tags,
            "/api/groups/VIP/EURUSD?x=1",
        )
    }

    fn fields(e: &Entry) -> Vec<(HeaderName, HeaderValue)> {
        e.headers().map(|(n, v)| (n.clone(), v)).collect()
    }

    #[test]
    fn round_trip() {
        let e = entry();
        let d = decode(encode(&e)).unwrap();
        assert_eq!(d.meta(), e.meta());
        assert_eq!(fields(&d), fields(&e));
        assert_eq!(d.body(), e.body());
        assert_eq!(d.etag(), b"\"abc\"");
        assert!(d.tags().eq(["group:VIP", "group:VIP:EURUSD"]));
        assert_eq!(d.path(), "/api/groups/VIP/EURUSD?x=1");
        // Flags and grace come back as they went.
        assert!(d.soft_purged());
        assert_eq!(
            d.flags() & policy::flags::LAST_MODIFIED,
            policy::flags::LAST_MODIFIED
        );
        assert_eq!((d.grace_ms(), d.swr_ms()), (30_000, 10_000));
    }

    /// Version 1 entries (before `flags`) are misses, never misread.
    #[test]
    fn version_1_is_not_read() {
        let mut b = BytesMut::new();
        b.put_slice(b"SC\x01");
        b.put_u16(200);
        assert_eq!(
            decode(b.freeze()).unwrap_err(),
            DecodeError::UnknownVersion(1)
        );
    }

    /// Version 2 entries (either form: `flags` alone, or grace without `flags`) are misses.
    #[test]
    fn version_2_is_not_read() {
        let mut v = encode(&entry()).to_vec();
        v[2] = 2;
        assert_eq!(
            decode(Bytes::from(v)).unwrap_err(),
            DecodeError::UnknownVersion(2)
        );
    }

    #[test]
    fn garbage_and_other_versions_are_rejected() {
        assert_eq!(
            decode(Bytes::from_static(b"hello")).unwrap_err(),
            DecodeError::NotAnEntry
        );
        let mut v = encode(&entry()).to_vec();
        v[2] = 9;
        assert_eq!(
            decode(Bytes::from(v)).unwrap_err(),
            DecodeError::UnknownVersion(9)
        );
        let full = encode(&entry());
        for cut in [3, 10, 40, full.len() - 1] {
            assert!(decode(full.slice(..cut)).is_err(), "cut at {cut}");
        }
        let mut extra = full.to_vec();
        extra.push(0);
        assert!(decode(Bytes::from(extra)).is_err());
        // A hostile or broken writer's grace: a revalidate window past the grace, grace on an
        // entry that is never served stale, or unknown flags, is not an entry.
        const FLAGS_AT: usize = 3 + 2 + 8 * 4;
        const SWR_AT: usize = FLAGS_AT + 2 + 8;
        let mut bad = full.to_vec();
        bad[SWR_AT] = 0xff; // swr_ms's high byte: now longer than grace_ms
        assert_eq!(
            decode(Bytes::from(bad)).unwrap_err(),
            DecodeError::Invalid("grace")
        );
        let mut strict = full.to_vec();
        strict[FLAGS_AT + 1] |= policy::flags::MUST_REVALIDATE as u8;
        assert_eq!(
            decode(Bytes::from(strict)).unwrap_err(),
            DecodeError::Invalid("grace")
        );
        let mut flags = full.to_vec();
        flags[FLAGS_AT] = 0x80;
        assert_eq!(
            decode(Bytes::from(flags)).unwrap_err(),
            DecodeError::Invalid("flags")
        );
    }
}
