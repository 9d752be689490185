//! `POST /admin/purge` and `POST /admin/refresh` (bearer token): invalidation by URL, tag or
//! everything, here, in L2 and on every pod; refresh fetches the new values at once.

use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;

use super::{bad_request, json_response, Admin, MAX_ADMIN_BODY};
use crate::invalidate::{Source, Target};
use crate::proxy::body::Body;

/// `POST /admin/purge` body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Purge {
    #[serde(default)]
    keys: Vec<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    all: bool,
    /// Mark stale instead of removing (keys and tags only).
    #[serde(default)]
    soft: bool,
}

/// `POST /admin/refresh` body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Refresh {
    #[serde(default)]
    keys: Vec<String>,
    #[serde(default)]
    tags: Vec<String>,
}

impl Admin {
    /// Invalidates like a purge, then fetches at once: the URLs given, and every shared entry
    /// the tags removed here; the other pods refetch what they held (the message says so).
    pub(super) async fn refresh(&self, req: Request<Incoming>) -> Response<Body> {
        if let Some(denied) = self.refused(req.headers()) {
            return denied;
        }
        let body = match Limited::new(req.into_body(), MAX_ADMIN_BODY)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(_) => return bad_request("body unreadable or over 64KiB"),
        };
        let ask: Refresh = match serde_json::from_slice(&body) {
            Ok(p) => p,
            Err(e) => return bad_request(&format!("body is not a refresh request: {e}")),
        };
        if ask.keys.is_empty() && ask.tags.is_empty() {
            return bad_request("give at least one of `keys`, `tags`");
        }
        let mut target = Target {
            tags: ask.tags,
            ..Target::default()
        };
        let mut errors = Vec::new();
        for url in &ask.keys {
            match self.invalidator.key_of(url) {
                Ok(k) => target.keys.push(k),
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return json_response(
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"error": "bad_keys", "problems": errors}),
            );
        }
        let tags = target.tags.len();
        self.invalidator
            .invalidate(target, Source::Admin, true)
            .await;
        let (fetched, failed) = match self.invalidator.proxy_addr() {
            Some(addr) if !ask.keys.is_empty() => {
                crate::warmup::fetch_all(&ask.keys, 4, addr).await
            }
            _ => (0, 0),
        };
        json_response(
            StatusCode::OK,
            json!({"refreshed": {"keys": ask.keys.len(), "tags": tags}, "fetched": fetched, "failed": failed}),
        )
    }

    pub(super) async fn purge(&self, req: Request<Incoming>) -> Response<Body> {
        if let Some(denied) = self.refused(req.headers()) {
            return denied;
        }
        let body = match Limited::new(req.into_body(), MAX_ADMIN_BODY)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(_) => return bad_request("body unreadable or over 64KiB"),
        };
        let purge: Purge = match serde_json::from_slice(&body) {
            Ok(p) => p,
            Err(e) => return bad_request(&format!("body is not a purge request: {e}")),
        };
        if purge.keys.is_empty() && purge.tags.is_empty() && !purge.all {
            return bad_request("give at least one of `keys`, `tags`, `all`");
        }
        if purge.soft && purge.all {
            return bad_request("`soft` takes `keys` or `tags`, not `all`");
        }
        let mut target = Target {
            tags: purge.tags,
            keys: Vec::new(),
            all: purge.all,
        };
        let mut errors = Vec::new();
        for url in &purge.keys {
            match self.invalidator.key_of(url) {
                Ok(k) => target.keys.push(k),
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return json_response(
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"error": "bad_keys", "problems": errors}),
            );
        }
        let summary = json!({"purged": {"keys": target.keys.len(), "tags": target.tags.len(), "all": target.all, "soft": purge.soft}});
        if purge.soft {
            self.invalidator
                .soft_invalidate(target, Source::Admin)
                .await;
        } else {
            self.invalidator
                .invalidate(target, Source::Admin, false)
                .await;
        }
        json_response(StatusCode::OK, summary)
    }
}
