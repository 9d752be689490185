//! Per-route tiers (issue 19): `["l1"]` keeps entries in the pod only (seed 003's prices and
//! positions: no Redis write per fill), `["l2"]` in Redis only; either way the route's entries
//! are invalidated (writes, events, peer messages) and coalesced.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use support::redis::RedisServer;
use support::*;

const ROUTES: &str = r#"
[pubsub]
heartbeat = "100ms"

[[route]]
name = "price"
match = "GET /api/prices/{symbol}"
ttl = "1h"
tiers = ["l1"]
tags = ["price:{symbol}"]

[[route]]
name = "spec"
match = "GET /api/specs/{symbol}"
ttl = "1h"
tiers = ["l2"]
tags = ["spec:{symbol}"]

[[invalidate]]
match = "PUT /api/specs/{symbol}"
tags = ["spec:{symbol}"]

[[event]]
channel = "market_data"
tags = ["price:{symbol}"]
"#;

fn tier(r: &Resp) -> &'static str {
    let cs = r.header("cache-status");
    if cs.contains("detail=l2") {
        "l2"
    } else if cs.contains("; hit") {
        "l1"
    } else if cs.contains("collapsed") {
        "collapsed"
    } else {
        "upstream"
    }
}

/// An origin whose answers change with every fetch (`n` counts them), after `delay`.
async fn counting_origin(delay: Duration) -> (Origin, Arc<AtomicUsize>) {
    let n = Arc::new(AtomicUsize::new(0));
    let c = n.clone();
    let origin = Origin::start(move |r| {
        let i = c.fetch_add(1, Ordering::SeqCst);
        Reply::json(format!("{{\"path\":\"{}\",\"n\":{i}}}", r.uri)).delay(delay)
    })
    .await;
    (origin, n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l1_only_routes_never_touch_redis_yet_are_invalidated_and_coalesced() {
    let redis = RedisServer::start();
    let (origin, _) = counting_origin(Duration::from_millis(200)).await;
    let cfg = format!("{}{ROUTES}", l2_standalone(&redis.url()));
    let a = Arc::new(Sidecache::start(&origin, &cfg).await);
    let b = Sidecache::start(&origin, &cfg).await;

    // Ten concurrent readers on A: one upstream fetch.
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let a = a.clone();
        tasks.push(tokio::spawn(
            async move { a.get("/api/prices/EURUSD").await },
        ));
    }
    let first: Vec<Resp> = futures_util::future::join_all(tasks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(origin.hits(), 1, "coalesced");
    assert!(first.iter().all(|r| r.text() == first[0].text()));
    assert_eq!(tier(&a.get("/api/prices/EURUSD").await), "l1");
    // Nothing went to Redis: B fetches its own.
    assert_eq!(tier(&b.get("/api/prices/EURUSD").await), "upstream");
    assert_eq!(origin.hits(), 2);
    let m = a.metrics().await;
    for op in ["get", "lease", "put"] {
        assert_eq!(
            metric(&m, "sidecache_l2_operations_total", &[("op", op)]),
            0.0,
            "{op}"
        );
    }
    assert!(redis
        .cli(&["--scan", "--pattern", "sidecache:*}:e"])
        .is_empty());

    // An event reaches both pods' L1.
    redis.cli(&["PUBLISH", "market_data", r#"{"symbol":"EURUSD"}"#]);
    for pod in [&*a, &b] {
        let gone = eventually(Duration::from_secs(5), async || {
            tier(&pod.get("/api/prices/EURUSD").await) == "upstream"
        })
        .await;
        assert!(gone, "the event did not reach an L1-only entry");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l2_only_routes_keep_nothing_in_the_pod() {
    let redis = RedisServer::start();
    let (origin, _) = counting_origin(Duration::ZERO).await;
    let cfg = format!("{}{ROUTES}", l2_standalone(&redis.url()));
    let a = Sidecache::start(&origin, &cfg).await;
    let b = Sidecache::start(&origin, &cfg).await;
    let first = a.get("/api/specs/EURUSD").await;
    assert_eq!(tier(&first), "upstream");
    // Every later read, on either pod, is one L2 read: the pod keeps no copy.
    for pod in [&a, &b, &a] {
        let r = pod.get("/api/specs/EURUSD").await;
        assert_eq!(tier(&r), "l2", "{r:?}");
        assert_eq!(r.text(), first.text());
    }
    assert_eq!(origin.hits(), 1);
    assert_eq!(metric(&a.metrics().await, "sidecache_l1_entries", &[]), 0.0);
    // A write through B removes it for everyone at once.
    let w = b.request(Method::PUT, "/api/specs/EURUSD", &[], "{}").await;
    assert_eq!(w.status, 200);
    let r = a.get("/api/specs/EURUSD").await;
    assert_eq!(tier(&r), "upstream");
    assert_ne!(r.text(), first.text());
}

#[test]
fn tiers_are_checked() {
    let base = "[upstream]\nurl = \"http://127.0.0.1:1\"\n";
    let route = |tiers: &str| {
        format!(
            "{base}[[route]]\nname = \"r\"\nmatch = \"GET /r\"\nttl = \"1s\"\ntiers = {tiers}\n"
        )
    };
    let err = |cfg: String| {
        sidecache::config::Config::parse(&cfg)
            .unwrap_err()
            .to_string()
    };
    assert!(err(route("[\"l3\"]")).contains("`l3` is not"));
    assert!(err(route("[]")).contains("at least one"));
    assert!(err(route("[\"l1\", \"l1\"]")).contains("twice"));
    assert!(err(route("[\"l2\"]")).contains("needs an [l2]"));
    assert!(sidecache::config::Config::parse(&route("[\"l1\"]")).is_ok());
}
