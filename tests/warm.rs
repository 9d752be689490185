//! Warm start from what is hot (issue 19): each pod records a sampled top-k of its keys in L2;
//! a new pod loads those entries from L2 into L1 before `/readyz` turns ready; and scheduled
//! warming (`[warmup] every`) fills expired paths again.

mod support;

use std::time::Duration;

use support::redis::RedisServer;
use support::*;

const ROUTES: &str = r#"
[[route]]
name = "group"
match = "GET /api/groups/{group}/{symbol}"
ttl = "1h"
tags = ["group:{group}"]

[[route]]
name = "spec"
match = "GET /api/specs/{symbol}"
ttl = "1h"
tiers = ["l2"]
"#;

fn tier(r: &Resp) -> &'static str {
    let cs = r.header("cache-status");
    if cs.contains("detail=l2") {
        "l2"
    } else if cs.contains("; hit") {
        "l1"
    } else {
        "upstream"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_pod_loads_the_hot_entries_into_l1_before_it_is_ready() {
    let redis = RedisServer::start();
    let origin = Origin::start(|r| Reply::json(format!("{{\"path\":\"{}\"}}", r.uri))).await;
    let cfg = format!(
        "{}[warmup]\nhot_keys = 5\nhot_keys_every = \"100ms\"\n{ROUTES}",
        l2_standalone(&redis.url())
    );
    let a = Sidecache::start(&origin, &cfg).await;
    // Five hot keys, read often; a cold tail read once each; an L2-only route read as often
    // as a hot key. One use in 16 is sampled.
    for round in 0..200 {
        for s in 0..5 {
            a.get(&format!("/api/groups/VIP/HOT{s}")).await;
        }
        if round % 5 == 0 {
            a.get(&format!("/api/groups/VIP/cold{round}")).await;
        }
        a.get("/api/specs/EURUSD").await;
    }
    let published = eventually(Duration::from_secs(5), async || {
        !redis
            .cli(&["--scan", "--pattern", "sidecache:*{hot}*"])
            .is_empty()
    })
    .await;
    assert!(published, "no hot keys in L2");

    let hits = origin.hits();
    let b = Sidecache::start(&origin, &cfg).await;
    b.wait_ready().await;
    let m = b.metrics().await;
    assert_eq!(metric(&m, "sidecache_l1_entries", &[]), 5.0, "{m}");
    for s in 0..5 {
        let r = b.get(&format!("/api/groups/VIP/HOT{s}")).await;
        assert_eq!(tier(&r), "l1", "HOT{s} was not loaded: {r:?}");
    }
    // The tail and the L2-only route were not loaded into L1.
    assert_eq!(tier(&b.get("/api/groups/VIP/cold5").await), "l2");
    assert_eq!(tier(&b.get("/api/specs/EURUSD").await), "l2");
    assert_eq!(origin.hits(), hits, "warm start costs the backend nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidated_hot_entry_is_not_loaded() {
    let redis = RedisServer::start();
    let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let origin = Origin::start(move |r| {
        let i = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Reply::json(format!("{{\"path\":\"{}\",\"n\":{i}}}", r.uri))
    })
    .await;
    let cfg = format!(
        "{}[pubsub]\nheartbeat = \"100ms\"\n[warmup]\nhot_keys = 5\nhot_keys_every = \"100ms\"\n{ROUTES}\n[[invalidate]]\nmatch = \"PUT /api/groups/{{group}}\"\ntags = [\"group:{{group}}\"]\n",
        l2_standalone(&redis.url())
    );
    let a = Sidecache::start(&origin, &cfg).await;
    for _ in 0..40 {
        a.get("/api/groups/VIP/HOT").await;
    }
    assert!(
        eventually(Duration::from_secs(5), async || {
            !redis
                .cli(&["--scan", "--pattern", "sidecache:*{hot}*"])
                .is_empty()
        })
        .await
    );
    let old = a.get("/api/groups/VIP/HOT").await.text().to_string();
    a.request(http::Method::PUT, "/api/groups/VIP", &[], "{}")
        .await;
    let b = Sidecache::start(&origin, &cfg).await;
    b.wait_ready().await;
    let r = b.get("/api/groups/VIP/HOT").await;
    assert_ne!(
        r.text(),
        old,
        "an invalidated entry came back through warm start"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_warming_fills_expired_paths_again() {
    let origin = Origin::start(|r| Reply::json(format!("{{\"path\":\"{}\"}}", r.uri))).await;
    let cfg = r#"
[warmup]
paths = ["/api/prices/EURUSD"]
every = "1s"

[[route]]
name = "price"
match = "GET /api/prices/{symbol}"
ttl = "500ms"
"#;
    let a = Sidecache::start(&origin, cfg).await;
    a.wait_ready().await;
    // Nobody asks; the scheduled runs fetch the expired path again.
    let refilled = eventually(Duration::from_secs(5), async || origin.hits() >= 3).await;
    assert!(refilled, "hits: {}", origin.hits());
    let m = a.metrics().await;
    assert!(metric(&m, "sidecache_requests_total", &[("cache", "miss")]) >= 3.0);
}
