//! Vary (RFC 9111 §4.1): which stored variant a request may get.
//!
//! A response that varies on request fields the route does not key on is stored as a
//! *variant* under a secondary key, and the primary key holds a *marker*: an entry that is
//! never served, recording the `Vary` field names, a salt, and how many variants were stored
//! under it. A lookup that finds a marker derives the secondary key from the request's values
//! of those fields (case- and whitespace-normalised) and looks again.
//!
//! The salt is drawn when a marker is first made and kept by later fills: removing the marker
//! (an invalidation of its tags or its key) makes every variant made under it unreachable,
//! even a copy that outlives it in another tier, because the next marker draws a new salt.

use std::sync::atomic::{AtomicU64, Ordering};

use http::{header, HeaderMap, HeaderName};
use xxhash_rust::xxh3::Xxh3;

use crate::cache::CacheKey;

/// A `Vary` that no variant can satisfy: `*`, or a name that is not a field name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsatisfiable;

/// The `Vary` field names of a response beyond `keyed` (the route's own `vary`, already in the
/// primary key): lowercased, sorted, deduplicated. `Err` for `Vary: *` or an unreadable name:
/// such a response is never stored.
pub fn names(headers: &HeaderMap, keyed: &[HeaderName]) -> Result<Vec<HeaderName>, Unsatisfiable> {
    let mut out: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(header::VARY) {
        let Ok(text) = value.to_str() else {
            return Err(Unsatisfiable);
        };
        for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "*" {
                return Err(Unsatisfiable);
            }
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| Unsatisfiable)?;
            if !keyed.contains(&name) && !out.contains(&name) {
                out.push(name);
            }
        }
    }
    out.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    Ok(out)
}

/// A marker's contents: the names a variant is chosen by, its salt, the variants stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    pub names: Vec<HeaderName>,
    pub salt: u64,
    pub variants: u16,
}

impl Marker {
    /// A new marker for `names`, with a salt no earlier marker of this process had.
    pub fn new(names: Vec<HeaderName>, primary: CacheKey) -> Marker {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let mut h = Xxh3::new();
        h.update(&primary.0.to_le_bytes());
        h.update(&crate::cache::clock::now_us().to_le_bytes());
        h.update(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
        h.update(&std::process::id().to_le_bytes());
        Marker {
            names,
            salt: h.digest(),
            variants: 0,
        }
    }

    /// As stored in the marker entry's body: salt, count, then the names, comma-separated.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(10 + 16 * self.names.len());
        b.extend_from_slice(&self.salt.to_le_bytes());
        b.extend_from_slice(&self.variants.to_le_bytes());
        for (i, n) in self.names.iter().enumerate() {
            if i > 0 {
                b.push(b',');
            }
            b.extend_from_slice(n.as_str().as_bytes());
        }
        b
    }

    pub fn decode(body: &[u8]) -> Option<Marker> {
        let (salt, rest) = body.split_first_chunk::<8>()?;
        let (variants, rest) = rest.split_first_chunk::<2>()?;
        let names = rest
            .split(|b| *b == b',')
            .filter(|n| !n.is_empty())
            .map(HeaderName::from_bytes)
            .collect::<Result<Vec<_>, _>>()
            .ok()?;
        Some(Marker {
            names,
            salt: u64::from_le_bytes(*salt),
            variants: u16::from_le_bytes(*variants),
        })
    }

    /// The key of the variant that `request` selects.
    pub fn secondary(&self, primary: CacheKey, request: &HeaderMap) -> CacheKey {
        let mut h = Xxh3::new();
        h.update(b"variant");
        h.update(&primary.0.to_le_bytes());
        h.update(&self.salt.to_le_bytes());
        for name in &self.names {
            field(&mut h, name.as_str().as_bytes());
            let value = normalised(request, name);
            h.update(&[u8::from(value.is_some())]);
            field(&mut h, value.as_deref().unwrap_or_default());
        }
        CacheKey(h.digest128())
    }
}

/// A request field's value as a variant is chosen by it: every line joined with `,`, each
/// list member trimmed, runs of whitespace made one space, lowercased (the fields commonly
/// varied on, `Accept-Encoding`, `Accept-Language`, `Accept`, compare case-insensitively).
/// `None` when the field is absent (which differs from an empty value).
fn normalised(request: &HeaderMap, name: &HeaderName) -> Option<Vec<u8>> {
    let mut values = request.get_all(name).iter().peekable();
    values.peek()?;
    let mut out = Vec::new();
    for v in values {
        for member in v.as_bytes().split(|b| *b == b',') {
            let member = member.trim_ascii();
            if member.is_empty() {
                continue;
            }
            if !out.is_empty() {
                out.push(b',');
            }
            let mut space = false;
            for &b in member {
                if b == b' ' || b == b'\t' {
                    space = true;
                    continue;
                }
                if space {
                    out.push(b' ');
                    space = false;
                }
                out.push(b.to_ascii_lowercase());
            }
        }
    }
    Some(out)
}

fn field(h: &mut Xxh3, bytes: &[u8]) {
    h.update(&(bytes.len() as u32).to_le_bytes());
    h.update(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn names_are_normalised() {
        let got = names(
            &h(&[
                ("vary", "Accept-Language, accept-encoding"),
                ("vary", "ACCEPT-ENCODING,,x-a"),
            ]),
            &[HeaderName::from_static("x-a")],
        )
        .unwrap();
        assert_eq!(got, ["accept-encoding", "accept-language"]);
        assert!(names(&h(&[("vary", "accept, *")]), &[]).is_err());
        assert!(names(&h(&[("vary", "bad name")]), &[]).is_err());
        assert!(names(&h(&[]), &[]).unwrap().is_empty());
    }

    #[test]
    fn secondary_keys_follow_normalised_values() {
        let m = Marker::new(
            vec![HeaderName::from_static("accept-encoding")],
            CacheKey(1),
        );
        let k = |pairs| m.secondary(CacheKey(1), &h(pairs));
        assert_eq!(
            k(&[("accept-encoding", "gzip,  Br")]),
            k(&[("accept-encoding", "GZIP"), ("accept-encoding", " br")])
        );
        assert_ne!(
            k(&[("accept-encoding", "gzip")]),
            k(&[("accept-encoding", "br")])
        );
        assert_ne!(k(&[]), k(&[("accept-encoding", "")]));
        assert_ne!(k(&[]), m.secondary(CacheKey(2), &h(&[])));
        // Another marker for the same key and names: other variants.
        let other = Marker::new(m.names.clone(), CacheKey(1));
        assert_ne!(other.secondary(CacheKey(1), &h(&[])), k(&[]));
    }

    #[test]
    fn marker_round_trip() {
        let mut m = Marker::new(
            vec![
                HeaderName::from_static("accept"),
                HeaderName::from_static("x-b"),
            ],
            CacheKey(3),
        );
        m.variants = 7;
        assert_eq!(Marker::decode(&m.encode()), Some(m));
        assert_eq!(Marker::decode(b"short"), None);
    }
}
