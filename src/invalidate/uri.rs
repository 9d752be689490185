//! RFC 9111 §4.4: a successful unsafe request invalidates its target URI, and the same-origin
//! URIs its answer names in `Location` and `Content-Location`.
//!
//! Every entry of a catch-all route (`{*rest}`) carries an implicit tag of its request path,
//! hashed: `uri:<xxh3 of the path>`. Invalidating a URI is then invalidating that tag, and the
//! tag machinery does the rest (L2, L1 here, the other pods), for every entry of the path on
//! the route: all query strings, identities and variants. The tag is added when an entry is
//! stored, so a hit pays nothing. Routes without a catch-all name their paths exactly and
//! are invalidated by `[[invalidate]]` rules, as before; they get no such tag.
//!
//! Only catch-all routes take part: what this computes is only ever a tag to invalidate, so a
//! URI that no catch-all route serves is skipped, and a miss here costs hit rate, never
//! correctness.

use http::header::{self, HeaderMap, HeaderValue};
use http::Method;

use crate::config::RouteConfig;
use crate::route::{Params, Router};

/// The prefix of the implicit URI tags. Tags a config renders could take the same form; the
/// worst that does is invalidate more.
pub const TAG_PREFIX: &str = "uri:";

/// The implicit tag of the entries stored for `path` on a catch-all route. Hashed: a path is
/// client input of any length, and every entry keeps its tags (20 bytes this way).
pub fn tag(path: &str) -> String {
    format!(
        "{TAG_PREFIX}{:016x}",
        xxhash_rust::xxh3::xxh3_64(path.as_bytes())
    )
}

/// Whether a method is unsafe (RFC 9110 §9.2.1): any but GET, HEAD, OPTIONS and TRACE,
/// extension methods (`M-SEARCH`, `PURGE`...) included.
pub fn is_unsafe(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// The tags of an entry stored for `path` on `route`: the route's own (their first places
/// the entry in L2), then the URI tag on a catch-all route.
pub fn entry_tags(route: &RouteConfig, params: &Params<'_>, path: &str) -> Vec<String> {
    let mut tags = crate::route::render_tags(&route.tags, &route.matcher.params, params);
    if route.matcher.is_catch_all() {
        tags.push(tag(path));
    }
    tags
}

/// The URI tag of `path` when a catch-all route would serve a GET of it.
pub fn served_tag(router: &Router, path: &str) -> Option<String> {
    router
        .find(&Method::GET, path)
        .filter(|m| m.route.config.matcher.is_catch_all())
        .map(|_| tag(path))
}

/// The origin of a request as this proxy sees it: the authorities that name it. A URI in an
/// answer is same-origin (RFC 9110 §4.3.1: scheme, host and port) when it is `http` and its
/// authority is one of these: the request's `Host` (the target URI's), or the upstream's
/// (the `Host` the origin was asked with, unless it was preserved).
#[derive(Debug, Clone, Default)]
pub struct Origin {
    authorities: Vec<(String, u16)>,
}

impl Origin {
    pub fn new<'a>(authorities: impl IntoIterator<Item = &'a [u8]>) -> Origin {
        Origin {
            authorities: authorities
                .into_iter()
                .filter_map(|a| authority(std::str::from_utf8(a).ok()?))
                .collect(),
        }
    }

    fn contains(&self, a: &(String, u16)) -> bool {
        self.authorities.contains(a)
    }
}

/// `host[:port]` with the host lowercased and the port defaulted (http: 80); `None` if not an
/// authority this can compare (userinfo, an empty host, a bad port).
fn authority(text: &str) -> Option<(String, u16)> {
    if text.is_empty() || text.contains('@') {
        return None;
    }
    let (host, port) = match text.rsplit_once(':') {
        // An IPv6 literal's colons are inside its brackets.
        Some((h, p)) if !p.contains(']') => (h, if p.is_empty() { 80 } else { p.parse().ok()? }),
        _ => (text, 80),
    };
    (!host.is_empty()).then(|| (host.to_ascii_lowercase(), port))
}

/// The URI tags the answer to an unsafe request for `target` (its path) names in `Location`
/// and `Content-Location`: same-origin references only, each when a catch-all route serves it.
pub fn location_tags(
    router: &Router,
    origin: &Origin,
    target: &str,
    answer: &HeaderMap,
) -> Vec<String> {
    let mut tags = Vec::new();
    for name in [header::LOCATION, header::CONTENT_LOCATION] {
        for value in answer.get_all(name) {
            let Some(path) = same_origin_path(value, target, origin) else {
                continue;
            };
            if let Some(t) = served_tag(router, &path) {
                if !tags.contains(&t) {
                    tags.push(t);
                }
            }
        }
    }
    tags
}

/// The path a URI reference in an answer names, resolved against the request's `base` path
/// (RFC 3986 §5.2), when it is on `origin`; without its query and fragment, which a URI tag
/// does not see.
pub fn same_origin_path(value: &HeaderValue, base: &str, origin: &Origin) -> Option<String> {
    let text = value.to_str().ok()?.trim();
    let text = text.split(['#', '?']).next().unwrap_or_default();
    if text.is_empty() {
        // A same-document reference: the target itself.
        return Some(remove_dot_segments(base));
    }
    let scheme_end = text
        .find(':')
        .filter(|&i| {
            let s = &text[..i];
            s.starts_with(|c: char| c.is_ascii_alphabetic())
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        })
        .filter(|&i| !text[..i].contains('/'));
    let rest = match scheme_end {
        Some(i) if text[..i].eq_ignore_ascii_case("http") => &text[i + 1..],
        // Another scheme (https, mailto...): another origin.
        Some(_) => return None,
        None => text,
    };
    let path = if let Some(net) = rest.strip_prefix("//") {
        let (auth, path) = match net.find('/') {
            Some(i) => (&net[..i], &net[i..]),
            None => (net, "/"),
        };
        if !origin.contains(&authority(auth)?) {
            return None;
        }
        path.to_string()
    } else if scheme_end.is_some() {
        // `http:path` without an authority: not a form an origin sends.
        return None;
    } else if rest.starts_with('/') {
        rest.to_string()
    } else {
        // Relative to the directory of the base path.
        let dir = &base[..base.rfind('/').map_or(0, |i| i + 1)];
        format!("{}{rest}", if dir.is_empty() { "/" } else { dir })
    };
    Some(remove_dot_segments(&path))
}

/// RFC 3986 §5.2.4, for an absolute path: `.` and `..` segments resolved.
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." | ".." => {
                if *seg == ".." {
                    out.pop();
                }
                // A trailing dot segment leaves a directory: `/a/b/..` is `/a/`.
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use proptest::prelude::*;

    fn router() -> Router {
        let c = Config::parse(
            r#"
            [upstream]
            url = "http://127.0.0.1:1"
            [[route]]
            name = "api"
            match = "GET /api/{*rest}"
            ttl = "1s"
            [[route]]
            name = "group"
            match = "GET /api/groups/{group}"
            ttl = "1s"
            tags = ["group:{group}"]
            "#,
        )
        .unwrap();
        Router::new(&c.routes)
    }

    fn origin() -> Origin {
        Origin::new([&b"app:8080"[..], b"Backend.svc"])
    }

    fn resolve(value: &str, base: &str) -> Option<String> {
        same_origin_path(&HeaderValue::from_str(value).unwrap(), base, &origin())
    }

    #[test]
    fn unsafe_methods_are_all_but_the_four_safe_ones() {
        for m in ["GET", "HEAD", "OPTIONS", "TRACE"] {
            assert!(
                !is_unsafe(&Method::from_bytes(m.as_bytes()).unwrap()),
                "{m}"
            );
        }
        for m in [
            "POST", "PUT", "DELETE", "PATCH", "M-SEARCH", "PURGE", "LOCK",
        ] {
            assert!(is_unsafe(&Method::from_bytes(m.as_bytes()).unwrap()), "{m}");
        }
    }

    #[test]
    fn only_catch_all_routes_tag_and_serve_uris() {
        let r = router();
        let m = r.find(&Method::GET, "/api/orders/5").unwrap();
        let tags = entry_tags(&m.route.config, &m.params, "/api/orders/5");
        assert_eq!(tags, [tag("/api/orders/5")]);
        assert_eq!(
            served_tag(&r, "/api/orders/5").as_deref(),
            Some(tags[0].as_str())
        );
        // An exact route keeps its own tags only, and is no §4.4 target.
        let m = r.find(&Method::GET, "/api/groups/VIP").unwrap();
        assert_eq!(
            entry_tags(&m.route.config, &m.params, "/api/groups/VIP"),
            ["group:VIP"]
        );
        assert_eq!(served_tag(&r, "/api/groups/VIP"), None);
        assert_eq!(served_tag(&r, "/other"), None);
        assert_ne!(tag("/api/a"), tag("/api/b"));
        assert_eq!(tag("/api/a").len(), 20);
    }

    #[test]
    fn references_resolve_on_the_same_origin_only() {
        let base = "/api/orders/5";
        assert_eq!(resolve("/api/x?q=1#f", base).as_deref(), Some("/api/x"));
        assert_eq!(
            resolve("http://app:8080/api/x", base).as_deref(),
            Some("/api/x")
        );
        assert_eq!(
            resolve("HTTP://APP:8080/api/x", base).as_deref(),
            Some("/api/x")
        );
        assert_eq!(
            resolve("http://backend.svc/api/x", base).as_deref(),
            Some("/api/x")
        );
        assert_eq!(
            resolve("http://backend.svc:80/api/x", base).as_deref(),
            Some("/api/x")
        );
        assert_eq!(resolve("//app:8080/api/x", base).as_deref(), Some("/api/x"));
        assert_eq!(resolve("http://app:8080", base).as_deref(), Some("/"));
        // Relative references, dot segments.
        assert_eq!(resolve("6", base).as_deref(), Some("/api/orders/6"));
        assert_eq!(resolve("../items/1", base).as_deref(), Some("/api/items/1"));
        assert_eq!(resolve("./", base).as_deref(), Some("/api/orders/"));
        assert_eq!(resolve("/a/b/../../../c", base).as_deref(), Some("/c"));
        assert_eq!(resolve("/a/b/..", base).as_deref(), Some("/a/"));
        assert_eq!(resolve("", base).as_deref(), Some(base));
        assert_eq!(resolve("?q", "/a/./b/..").as_deref(), Some("/a/"));
        assert_eq!(resolve("x", "").as_deref(), Some("/x"));
        // Other origins: another host, port or scheme, userinfo, no authority.
        for other in [
            "http://evil/api/x",
            "http://app:8081/api/x",
            "http://app/api/x",
            "https://app:8080/api/x",
            "//evil/api/x",
            "http://user@app:8080/api/x",
            "http:/api/x",
            "mailto:a@b",
            "http://:80/x",
        ] {
            assert_eq!(resolve(other, base), None, "{other}");
        }
    }

    #[test]
    fn location_tags_name_catch_all_paths_once() {
        let r = router();
        let mut h = HeaderMap::new();
        h.append(header::LOCATION, HeaderValue::from_static("/api/orders/6"));
        h.append(
            header::CONTENT_LOCATION,
            HeaderValue::from_static("http://app:8080/api/orders/6?v=2"),
        );
        h.append(
            header::CONTENT_LOCATION,
            HeaderValue::from_static("http://evil/api/orders/7"),
        );
        assert_eq!(
            location_tags(&r, &origin(), "/api/orders", &h),
            [tag("/api/orders/6")]
        );
        let mut h = HeaderMap::new();
        h.append(
            header::LOCATION,
            HeaderValue::from_static("/api/groups/VIP"),
        );
        h.append(header::LOCATION, HeaderValue::from_static("/elsewhere"));
        assert!(location_tags(&r, &origin(), "/api/orders", &h).is_empty());
    }

    proptest! {
        /// Whatever an answer says, resolution never panics and only ever yields an absolute
        /// path without dot segments.
        #[test]
        fn resolution_is_total(value in "[ -~]{0,40}", base in "/[a-z./]{0,12}") {
            if let Ok(v) = HeaderValue::from_str(&value) {
                if let Some(p) = same_origin_path(&v, &base, &origin()) {
                    prop_assert!(p.starts_with('/'), "{p}");
                    prop_assert!(!p.split('/').any(|s| s == "." || s == ".."), "{p}");
                }
            }
        }
    }
}
