//! RFC 9111 §4.4 across two pods sharing a real Redis: on catch-all routes, a successful unsafe
//! request (any method but GET/HEAD/OPTIONS/TRACE, extension methods included) invalidates
//! every entry of its target path (all query strings, all identities) and of the same-origin
//! `Location`/`Content-Location` its answer names, in L1 and L2 here and on the other pod,
//! before its answer leaves; an error status invalidates nothing.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Method;
use support::redis::RedisServer;
use support::*;

type Values = Arc<Mutex<HashMap<String, String>>>;

/// An origin with one value per path (the query aside): GET answers `value@query` (with the
/// caller's `authorization`); any other method sets the path's value to the body and answers
/// 200, unless the request asks for another status with `x-status` (then nothing changes).
/// `x-location` / `x-content-location` come back as `Location` / `Content-Location`.
fn origin_handler(values: Values) -> impl Fn(&Recorded) -> Reply {
    move |req: &Recorded| {
        let (path, query) = req.uri.split_once('?').unwrap_or((&req.uri, ""));
        let header = |name: &str| {
            req.headers
                .get(name)
                .map(|v| v.to_str().unwrap().to_string())
        };
        let mut map = values.lock().unwrap();
        if req.method == Method::GET {
            let value = map.get(path).cloned().unwrap_or_else(|| "v1".into());
            let who = header("authorization").unwrap_or_default();
            return Reply::json(format!("{value}@{query}{who}"));
        }
        let mut reply = Reply::json("done");
        if let Some(status) = header("x-status") {
            reply = reply.status(status.parse().unwrap());
        } else {
            map.insert(
                path.to_string(),
                String::from_utf8_lossy(&req.body).into_owned(),
            );
        }
        if let Some(l) = header("x-location") {
            reply = reply.header("location", &l);
        }
        if let Some(l) = header("x-content-location") {
            reply = reply.header("content-location", &l);
        }
        reply
    }
}

const ROUTES: &str = r#"
[pubsub]
heartbeat = "100ms"

[[route]]
name = "items"
match = "GET /api/{*rest}"
ttl = "1h"

[[route]]
name = "group"
match = "GET /api/groups/{group}"
ttl = "1h"

[[route]]
name = "me"
match = "GET /me/{*rest}"
ttl = "1h"
scope = "identity"
"#;

fn hit(r: &Resp) -> bool {
    r.header("cache-status").contains("hit")
}

/// GETs `path` on `pod` until it answers `want`, for the pub/sub propagation bound.
async fn sees(pod: &Sidecache, path: &str, want: &str) -> bool {
    eventually(Duration::from_secs(5), async || {
        pod.get(path).await.text() == want
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_methods_invalidate_their_uris_on_every_pod() {
    let redis = RedisServer::start();
    let values: Values = Arc::default();
    let origin = Origin::start(origin_handler(values.clone())).await;
    let l2 = l2_standalone(&redis.url());
    let config = format!("{l2}{ROUTES}");
    let a = Sidecache::start(&origin, &config).await;
    let b = Sidecache::start(&origin, &config).await;
    let paths = [
        "/api/items/1",
        "/api/items/1?page=2",
        "/api/items/2",
        "/api/items/3",
        "/api/items/4",
        "/api/items/5",
        "/api/items/6",
        "/api/groups/VIP",
    ];
    // Stored by A, read into B's L1 from L2; hits on both.
    for pod in [&a, &b, &a, &b] {
        for p in paths {
            assert_eq!(pod.get(p).await.status, 200);
        }
    }
    for pod in [&a, &b] {
        for p in paths {
            assert!(hit(&pod.get(p).await), "{p} is not a hit");
        }
    }

    // POST through A: its path goes, every query string of it, on both pods; A at once.
    let w = a.request(Method::POST, "/api/items/1", &[], "v2").await;
    assert_eq!(w.status, 200);
    assert_eq!(a.get("/api/items/1").await.text(), "v2@");
    assert_eq!(a.get("/api/items/1?page=2").await.text(), "v2@page=2");
    assert!(
        sees(&b, "/api/items/1", "v2@").await,
        "B serves the old value"
    );
    assert!(sees(&b, "/api/items/1?page=2", "v2@page=2").await);
    // Another path is untouched.
    assert!(hit(&a.get("/api/items/2").await));
    assert!(hit(&b.get("/api/items/2").await));

    // An extension method through B.
    let m_search = Method::from_bytes(b"M-SEARCH").unwrap();
    let w = b.request(m_search, "/api/items/2", &[], "v3").await;
    assert_eq!(w.status, 200);
    assert_eq!(b.get("/api/items/2").await.text(), "v3@");
    assert!(
        sees(&a, "/api/items/2", "v3@").await,
        "A serves the old value"
    );

    // An error status changes nothing, and invalidates nothing.
    let w = a
        .request(Method::DELETE, "/api/items/3", &[("x-status", "409")], "")
        .await;
    assert_eq!(w.status, 409);
    assert!(hit(&a.get("/api/items/3").await));

    // Location and Content-Location on this origin go as well (the upstream's authority is
    // the origin's as much as the Host the client used); another origin's do not.
    values
        .lock()
        .unwrap()
        .insert("/api/items/4".into(), "v4".into());
    values
        .lock()
        .unwrap()
        .insert("/api/items/5".into(), "v5".into());
    values
        .lock()
        .unwrap()
        .insert("/api/items/6".into(), "v6".into());
    let upstream = origin.addr.to_string();
    let content_location = format!("http://{upstream}/api/items/5?x=1");
    let w = a
        .request(
            Method::PUT,
            "/api/items/new",
            &[
                ("x-location", "4"),
                ("x-content-location", &content_location),
            ],
            "new",
        )
        .await;
    assert_eq!(w.status, 200);
    assert_eq!(a.get("/api/items/4").await.text(), "v4@");
    assert_eq!(a.get("/api/items/5").await.text(), "v5@");
    assert!(sees(&b, "/api/items/4", "v4@").await);
    assert!(sees(&b, "/api/items/5", "v5@").await);
    let w = a
        .request(
            Method::POST,
            "/api/items/other",
            &[("x-location", "http://elsewhere.example/api/items/6")],
            "x",
        )
        .await;
    assert_eq!(w.status, 200);
    assert_eq!(
        a.get("/api/items/6").await.text(),
        "v1@",
        "another origin's"
    );

    // An exact route is not a §4.4 target: its paths are named by `[[invalidate]]` rules.
    let w = a.request(Method::POST, "/api/groups/VIP", &[], "g2").await;
    assert_eq!(w.status, 200);
    assert!(hit(&a.get("/api/groups/VIP").await));

    // A: the POST, the PUT and the POST with a foreign Location (its own target goes);
    // not the 409, nor the POST on the exact route. B: those three from A.
    let m = a.metrics().await;
    assert_eq!(
        metric(&m, "sidecache_invalidations_total", &[("source", "write")]),
        3.0
    );
    let peer = eventually(Duration::from_secs(5), async || {
        let m = b.metrics().await;
        metric(&m, "sidecache_invalidations_total", &[("source", "peer")]) >= 3.0
    })
    .await;
    assert!(peer);
}

/// On an identity-scoped catch-all route, a write by one caller invalidates the path for
/// every caller: the target URI is the resource, whoever read it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsafe_method_invalidates_every_identity_of_its_uri() {
    let redis = RedisServer::start();
    let values: Values = Arc::default();
    let origin = Origin::start(origin_handler(values.clone())).await;
    let config = format!("{}{ROUTES}", l2_standalone(&redis.url()));
    let a = Sidecache::start(&origin, &config).await;
    let b = Sidecache::start(&origin, &config).await;
    let alice = [("authorization", "alice")];
    let bob = [("authorization", "bob")];
    for pod in [&a, &b, &a, &b] {
        for who in [&alice, &bob] {
            assert_eq!(pod.get_with("/me/profile", who).await.status, 200);
        }
    }
    for pod in [&a, &b] {
        for who in [&alice, &bob] {
            assert!(hit(&pod.get_with("/me/profile", who).await));
        }
    }
    let w = a.request(Method::PATCH, "/me/profile", &alice, "p2").await;
    assert_eq!(w.status, 200);
    assert_eq!(a.get_with("/me/profile", &alice).await.text(), "p2@alice");
    assert_eq!(a.get_with("/me/profile", &bob).await.text(), "p2@bob");
    let seen = eventually(Duration::from_secs(5), async || {
        b.get_with("/me/profile", &bob).await.text() == "p2@bob"
    })
    .await;
    assert!(seen, "B serves bob the old value");
}

/// A write whose outcome is unknown (the upstream timed out: sidecache's 504) may have
/// committed: its target goes all the same. Without Redis too (L1 only).
#[tokio::test]
async fn an_unsafe_method_with_an_unknown_outcome_invalidates_its_target() {
    let values: Values = Arc::default();
    let handler = origin_handler(values.clone());
    let origin = Origin::start(move |req| {
        let reply = handler(req);
        if req.method == Method::DELETE {
            // Committed, but answered after sidecache's 2 s timeout.
            return reply.delay(Duration::from_secs(3));
        }
        reply
    })
    .await;
    let sc = Sidecache::start(&origin, ROUTES).await;
    sc.get("/api/items/9").await;
    assert!(hit(&sc.get("/api/items/9").await));
    let w = sc
        .request(Method::DELETE, "/api/items/9", &[], "gone")
        .await;
    assert_eq!(w.status, 504);
    assert_eq!(sc.get("/api/items/9").await.text(), "gone@");
    let m = sc.metrics().await;
    assert_eq!(
        metric(
            &m,
            "sidecache_invalidations_total",
            &[("source", "write_uncertain")]
        ),
        1.0
    );
}
