//! The L2 entry format: compact, binary, versioned.
//!
//! ```text
//! "SC" version:u8=2
//! status:u16 stored_at_ms:u64 initial_age:u64 ttl_ms:u64 last_modified:u64
//! grace_ms:u64 swr_ms:u64 flags:u8 (bit 0: soft purged)          (version 2 only)
//! etag:(u16 len, bytes)
//! headers:u16 count, each (u16 name len, name, u32 value len, value)
//! tags:u16 count, each (u16 len, bytes)
//! path:(u16 len, bytes)
//! body:(u32 len, bytes)
//! ```
//! All integers big-endian. A reader meets an unknown version or any inconsistency as a
//! [`DecodeError`] and treats the value as a miss; the next fill overwrites it. Version 1
//! (no grace) is still read, as an entry without grace; pods that only know version 1 read
//! version 2 as a miss.
//!
//! The format does not follow L1's packed layout (`entry.rs`): it is the contract between pods
//! of different versions sharing one Redis, and rebuilding the packed form costs one copy of a
//! decoded entry, which an L2 hit pays anyway.

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use super::{Entry, Meta};

const MAGIC: &[u8; 2] = b"SC";
pub const VERSION: u8 = 2;
/// The format before grace: read, never written.
const VERSION_1: u8 = 1;

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
    b.put_u64(e.grace_ms());
    b.put_u64(e.swr_ms());
    b.put_u8(u8::from(e.soft_purged()));
    put16(&mut b, e.etag());
    // What every answer adds (`Age`, `Cache-Status`) is not stored, as in version 1's writers.
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
    let version = buf[2];
    if version != VERSION && version != VERSION_1 {
        return Err(DecodeError::UnknownVersion(version));
    }
    let mut r = Reader { buf, pos: 3 };
    let status = StatusCode::from_u16(r.u16()?).map_err(|_| DecodeError::Invalid("status"))?;
    let stored_at_ms = r.u64()?;
    let initial_age = r.u64()?;
    let ttl_ms = r.u64()?;
    let last_modified = r.u64()?;
    let (grace_ms, swr_ms, flags) = if version == VERSION {
        let (g, w) = (r.u64()?, r.u64()?);
        (g, w, r.take(1)?[0])
    } else {
        (0, 0, 0)
    };
    if swr_ms > grace_ms || flags > 1 {
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
        grace_ms,
        swr_ms,
        soft_purged: flags & 1 != 0,
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
            grace_ms: 30_000,
            swr_ms: 10_000,
            soft_purged: true,
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
    }

    /// Version 1 as the writers before the packed entry wrote it: `Age` and `Cache-Status`
    /// slots among the fields, which an answer replaces anyway.
    #[test]
    fn reads_what_earlier_writers_wrote() {
        let mut b = BytesMut::new();
        b.put_slice(b"SC\x01");
        b.put_u16(200);
        for n in [5u64, 0, 60_000, 7] {
            b.put_u64(n);
        }
        put16(&mut b, b"\"e\"");
        let fields: [(&str, &str); 4] = [
            ("etag", "\"e\""),
            ("content-length", "2"),
            ("age", "0"),
            ("cache-status", "sidecache"),
        ];
        b.put_u16(fields.len() as u16);
        for (n, v) in fields {
            put16(&mut b, n.as_bytes());
            b.put_u32(v.len() as u32);
            b.put_slice(v.as_bytes());
        }
        b.put_u16(1);
        put16(&mut b, b"t");
        put16(&mut b, b"/p");
        b.put_u32(2);
        b.put_slice(b"ok");
        let d = decode(b.freeze()).unwrap();
        assert_eq!(d.stored_at_ms(), 5);
        assert_eq!((d.grace_ms(), d.swr_ms(), d.soft_purged()), (0, 0, false));
        assert_eq!(d.last_modified(), 7);
        assert_eq!(d.etag(), b"\"e\"");
        assert_eq!(&d.body()[..], b"ok");
        assert_eq!(d.headers().count(), 2);
        assert!(d.tags().eq(["t"]));
        assert_eq!(d.path(), "/p");
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
        // A hostile or broken writer's grace: a revalidate window past the grace, or unknown
        // flags, is not an entry.
        let mut bad = full.to_vec();
        bad[3 + 2 + 8 * 5] = 0xff; // swr_ms's high byte: now longer than grace_ms
        assert_eq!(
            decode(Bytes::from(bad)).unwrap_err(),
            DecodeError::Invalid("grace")
        );
        let mut flags = full.to_vec();
        flags[3 + 2 + 8 * 6] = 4;
        assert_eq!(
            decode(Bytes::from(flags)).unwrap_err(),
            DecodeError::Invalid("grace")
        );
    }
}
