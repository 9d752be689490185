//! `GET /admin/cache/explain?url=...`: route, key, scope, tags, which tier holds it, age, TTL
//! left, and why it would not be cached.

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use super::{bad_request, json_response, Admin};
use crate::cache::policy::Freshness;
use crate::cache::{clock, key, L2Read};
use crate::config::Scope;
use crate::proxy::body::Body;

impl Admin {
    pub(super) async fn explain(&self, req: &Request<Incoming>) -> Response<Body> {
        let Some(url) = req
            .uri()
            .query()
            .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("url=")))
        else {
            return bad_request("give ?url=/path/to/explain");
        };
        let url = percent_decode(url);
        let (path, query) = match url.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (url.as_str(), None),
        };
        let proxy = self.proxy.load();
        let Some(m) = proxy.router().find(&Method::GET, path) else {
            return json_response(
                StatusCode::OK,
                json!({"url": url, "route": null, "cached": false, "reason": "no cached route matches: forwarded untouched"}),
            );
        };
        let route = &m.route.config;
        let tags = crate::invalidate::uri::entry_tags(route, &m.params, path);
        let mut out = json!({
            "url": url,
            "route": route.name,
            "match": route.matcher.text,
            "scope": route.scope.as_str(),
            "ttl_seconds": route.ttl.map(|t| t.as_secs()),
            "tags": tags,
        });
        let key = match key::derive(route, m.params.as_slice(), query, req.headers()) {
            Ok(k) => k,
            Err(key::KeyError::NoIdentity) => {
                out["cached"] = json!(false);
                out["reason"] = json!(format!(
                    "identity-scoped: a request without `{}` is never cached (send it with this request to explain its entry)",
                    route.identity_header
                ));
                return json_response(StatusCode::OK, out);
            }
            Err(key::KeyError::AmbiguousIdentity) => {
                out["cached"] = json!(false);
                out["reason"] = json!(format!(
                    "identity-scoped: a request with `{}` more than once is refused (400)",
                    route.identity_header
                ));
                return json_response(StatusCode::OK, out);
            }
        };
        out["key"] = json!(key.to_string());
        let now = clock::now_ms();
        let describe = |e: &crate::cache::Entry| {
            let f = e.freshness(now);
            let mut d = json!({"present": true, "state": f.as_str(), "status": e.status().as_u16(), "bytes": e.body_len(), "etag": String::from_utf8_lossy(e.etag()), "grace_seconds": e.grace_ms() / 1000, "soft_purged": e.soft_purged(), "tags": e.tags().collect::<Vec<_>>()});
            match f {
                Freshness::Fresh {
                    age_secs,
                    ttl_left_secs,
                } => {
                    d["age_seconds"] = json!(age_secs);
                    d["ttl_left_seconds"] = json!(ttl_left_secs);
                    d["stale_served"] = json!("no: fresh");
                }
                Freshness::Stale {
                    age_secs,
                    grace_left_secs,
                    while_revalidate,
                } => {
                    d["age_seconds"] = json!(age_secs);
                    d["grace_left_seconds"] = json!(grace_left_secs);
                    d["stale_served"] = json!(if while_revalidate {
                        "yes: at once, while one refresh runs, and if the upstream fails"
                    } else {
                        "only if the upstream fails"
                    });
                }
                Freshness::Expired => {
                    d["stale_served"] = json!("no: past its grace");
                }
                Freshness::MustRevalidate => {
                    d["stale_served"] = json!("never: must be revalidated before use");
                }
            }
            d["stale"] = json!(!f.is_fresh());
            if e.grace_ms() == 0 && !e.is_marker() {
                d["stale_served"] = json!("never: no grace (route grace 0, or must-revalidate / proxy-revalidate / s-maxage / no-cache)");
            }
            if e.is_marker() {
                d["vary_marker"] = json!(true);
            }
            d
        };
        out["l1"] = self
            .l1
            .get(&key, now)
            .map_or_else(|| json!({"present": false}), |e| describe(&e));
        if let Some(l2) = self.invalidator.l2() {
            out["l2"] = match l2.key(key, &tags).await {
                None => json!({"present": null, "error": "redis unavailable"}),
                Some(k) => match l2.get(&k).await {
                    L2Read::Hit(e) => describe(&e),
                    L2Read::Miss => json!({"present": false}),
                    L2Read::Corrupt => json!({"present": false, "corrupt": true}),
                    L2Read::Unavailable => json!({"present": null, "error": "redis unavailable"}),
                },
            };
        }
        out["cached"] =
            json!(out["l1"]["present"] == json!(true) || out["l2"]["present"] == json!(true));
        if route.scope == Scope::Shared {
            out["not_stored_when"] = json!("the response has Set-Cookie, Cache-Control no-store/no-cache/private, max-age=0, a status outside the route's list, a Vary on a header not in the key, or a body over l1.max_entry_bytes");
        }
        json_response(StatusCode::OK, out)
    }
}

pub(super) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
