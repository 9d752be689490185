//! `POST /admin/purge` and `POST /admin/refresh` (bearer token): invalidation by URL, tag or
//! everything, here, in L2 and on every pod; refresh fetches the new values at once.

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;

use super::{bad_request, json_response, Admin};
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
        let ask: Refresh = match self.authorized_json(req, "refresh").await {
            Ok(v) => v,
            Err(refused) => return *refused,
        };
        if ask.keys.is_empty() && ask.tags.is_empty() {
            return bad_request("give at least one of `keys`, `tags`");
        }
        let keys = match self.keys_of(&ask.keys) {
            Ok(keys) => keys,
            Err(refused) => return *refused,
        };
        let target = Target {
            tags: ask.tags,
            keys,
            ..Target::default()
        };
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
        let purge: Purge = match self.authorized_json(req, "purge").await {
            Ok(v) => v,
            Err(refused) => return *refused,
        };
        if purge.keys.is_empty() && purge.tags.is_empty() && !purge.all {
            return bad_request("give at least one of `keys`, `tags`, `all`");
        }
        if purge.soft && purge.all {
            return bad_request("`soft` takes `keys` or `tags`, not `all`");
        }
        let keys = match self.keys_of(&purge.keys) {
            Ok(keys) => keys,
            Err(refused) => return *refused,
        };
        let target = Target {
            tags: purge.tags,
            keys,
            all: purge.all,
        };
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
