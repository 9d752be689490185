//! Cache keys: route name + path params + normalised query + (for identity scope) the caller
//! identity + the values of the route's `vary` headers, hashed with XXH3-128.
//!
//! The key is a hash, never raw input: it is safe to put into a Redis key and reveals neither
//! identities nor paths. The route *name* (not its position) goes in, so keys stay stable when
//! routes are reordered and are the same on every pod.

use std::fmt;

use http::HeaderMap;
use xxhash_rust::xxh3::Xxh3;

use crate::config::{RouteConfig, Scope};

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey(pub u128);

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({self})")
    }
}

/// Why a request on a cached route gets no key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    /// `scope = "identity"` and the identity header is missing: nothing safe to key on.
    NoIdentity,
    /// `scope = "identity"` and the identity header comes more than once: which value the
    /// upstream uses is unknown, so none is keyed on (the request gets a 400).
    AmbiguousIdentity,
}

/// Derives the key of a request on `route`.
pub fn derive(
    route: &RouteConfig,
    params: &[&str],
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<CacheKey, KeyError> {
    let mut h = Xxh3::new();
    // Every variable-length field is length-prefixed so that no two inputs can collide by
    // shifting bytes between fields.
    field(&mut h, route.name.as_bytes());
    h.update(&[params.len() as u8]);
    for p in params {
        field(&mut h, p.as_bytes());
    }
    match query.filter(|q| !q.is_empty()) {
        None => h.update(&[0]),
        Some(q) => {
            h.update(&[1]);
            let mut pairs: Vec<&str> = q
                .split('&')
                .filter(|p| !p.is_empty())
                .filter(|p| !route.ignore_query.iter().any(|i| i == name(p)))
                .collect();
            // By name only, and stable: the values of a repeated name keep their order
            // (`a=1&a=2` is not `a=2&a=1` to an upstream that takes the first or the last).
            pairs.sort_by(|a, b| name(a).cmp(name(b)));
            h.update(&(pairs.len() as u32).to_le_bytes());
            for p in pairs {
                field(&mut h, p.as_bytes());
            }
        }
    }
    if route.scope == Scope::Identity {
        let mut ids = headers.get_all(&route.identity_header).iter();
        let id = ids
            .next()
            .filter(|v| !v.is_empty())
            .ok_or(KeyError::NoIdentity)?;
        if ids.next().is_some() {
            return Err(KeyError::AmbiguousIdentity);
        }
        h.update(&[2]);
        field(&mut h, id.as_bytes());
    }
    for name in &route.vary {
        h.update(&[3]);
        let mut values = headers.get_all(name).iter().peekable();
        if values.peek().is_none() {
            h.update(&[0]);
        }
        for v in values {
            field(&mut h, v.as_bytes());
        }
    }
    Ok(CacheKey(h.digest128()))
}

/// The name of a query pair (`name=value`, or a bare `name`).
fn name(pair: &str) -> &str {
    pair.split_once('=').map_or(pair, |(n, _)| n)
}

fn field(h: &mut Xxh3, bytes: &[u8]) {
    h.update(&(bytes.len() as u32).to_le_bytes());
    h.update(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use http::HeaderValue;

    fn routes() -> Vec<RouteConfig> {
        Config::parse(
            r#"
            [upstream]
            url = "http://127.0.0.1:1"
            [[route]]
            name = "group"
            match = "GET /g/{a}/{b}"
            ttl = "1h"
            ignore_query = ["_"]
            [[route]]
            name = "balance"
            match = "GET /u/{id}"
            ttl = "1h"
            scope = "identity"
            "#,
        )
        .unwrap()
        .routes
    }

    #[test]
    fn query_is_normalised() {
        let r = &routes()[0];
        let h = HeaderMap::new();
        let k = |q| derive(r, &["a", "b"], q, &h).unwrap();
        assert_eq!(k(Some("x=1&y=2")), k(Some("y=2&x=1")));
        assert_eq!(k(Some("x=1&&y=2&_=123")), k(Some("y=2&x=1")));
        assert_ne!(k(Some("x=1")), k(Some("x=2")));
        assert_eq!(k(None), k(Some("")));
        assert_ne!(k(None), k(Some("x")));
        // A repeated name keeps the order of its values.
        assert_ne!(k(Some("a=1&a=2")), k(Some("a=2&a=1")));
        assert_eq!(k(Some("a=1&b=0&a=2")), k(Some("b=0&a=1&a=2")));
    }

    #[test]
    fn params_cannot_shift() {
        let r = &routes()[0];
        let h = HeaderMap::new();
        assert_ne!(
            derive(r, &["ab", "c"], None, &h),
            derive(r, &["a", "bc"], None, &h)
        );
    }

    #[test]
    fn identity_is_in_the_key() {
        let r = &routes()[1];
        let mut a = HeaderMap::new();
        a.insert("authorization", HeaderValue::from_static("Bearer alice"));
        let mut b = HeaderMap::new();
        b.insert("authorization", HeaderValue::from_static("Bearer bob"));
        assert_ne!(derive(r, &["1"], None, &a), derive(r, &["1"], None, &b));
        assert_eq!(
            derive(r, &["1"], None, &HeaderMap::new()),
            Err(KeyError::NoIdentity)
        );
    }
}
