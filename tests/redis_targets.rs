//! `[limits.redis]` and `[pubsub.redis]`: rate limits and pub/sub on Redis deployments of
//! their own (seed 004 keeps cache, pub/sub and limits apart), each with its own breaker and
//! `redis` metrics label; a dead limits Redis costs neither the cache nor the channel.

mod support;

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use support::redis::RedisServer;
use support::*;

fn separate(cache: &str, limits: &str, pubsub: &str) -> String {
    format!(
        r#"{l2}
[limits.redis]
url = "{limits}"
timeout = "200ms"
breaker_open = "200ms"
breaker_failures = 2

[pubsub]
heartbeat = "100ms"
[pubsub.redis]
url = "{pubsub}"
timeout = "200ms"

{ROUTE_GROUP}
[[event]]
channel = "group_updates"
tags = ["group:{{group}}"]

[[limit]]
name = "api"
match = "GET /api/groups/{{group}}/{{symbol}}"
key = "header:x-user-id"
rate = "1000/min"
"#,
        l2 = l2_standalone(cache)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_pubsub_live_on_their_own_targets() {
    let cache = Arc::new(RedisServer::start());
    let limits = Arc::new(RedisServer::start());
    let pubsub = RedisServer::start();
    let origin = Origin::start(|r| Reply::json(format!("{{\"path\":\"{}\"}}", r.uri))).await;
    let extra = separate(&cache.url(), &limits.url(), &pubsub.url());
    let a = Sidecache::start(&origin, &extra).await;
    let b = Sidecache::start(&origin, &extra).await;
    let user = [("x-user-id", "u1")];
    let path = "/api/groups/VIP/EURUSD";
    assert_eq!(a.get_with(path, &user).await.status, 200);
    let filled = eventually(Duration::from_secs(5), async || {
        b.get_with(path, &user)
            .await
            .header("cache-status")
            .contains("hit")
    })
    .await;
    assert!(filled);

    // The limit's state is on the limits Redis only; the cache's entries on the cache Redis only.
    let keys = |r: &RedisServer| r.cli(&["--scan", "--pattern", "*"]);
    let on_limits = keys(&limits);
    let on_cache = keys(&cache);
    assert!(!on_limits.is_empty(), "no limit state on the limits Redis");
    assert!(
        !on_limits.contains("}:e"),
        "cache entries on the limits Redis"
    );
    assert!(on_cache.contains("}:e"), "no entries on the cache Redis");
    assert!(
        !on_cache.lines().any(|k| on_limits.lines().any(|l| l == k)),
        "limit state on the cache Redis: {on_cache}"
    );

    // Events arrive on the pub/sub Redis: published there they invalidate, on the cache
    // Redis they are not heard.
    cache.cli(&["PUBLISH", "group_updates", r#"{"group":"VIP"}"#]);
    let m = b.metrics().await;
    assert_eq!(
        metric(&m, "sidecache_invalidations_total", &[("source", "event")]),
        0.0
    );
    pubsub.cli(&["PUBLISH", "group_updates", r#"{"group":"VIP"}"#]);
    let invalidated = eventually(Duration::from_secs(5), async || {
        metric(
            &b.metrics().await,
            "sidecache_invalidations_total",
            &[("source", "event")],
        ) >= 1.0
    })
    .await;
    assert!(invalidated, "event on the pub/sub Redis not applied");
    // A write through A reaches B over the pub/sub Redis too (heartbeats keep it live).
    let m = a.metrics().await;
    assert!(
        metric(
            &m,
            "sidecache_l2_operations_total",
            &[("redis", "pubsub"), ("op", "publish")]
        ) >= 1.0
    );

    // The limits Redis dies: its breaker opens and limits go local, while L2 keeps serving and
    // its breaker stays closed.
    let l = limits.clone();
    tokio::task::spawn_blocking(move || l.kill()).await.unwrap();
    for i in 0..10 {
        let r = a.get_with(&format!("/api/groups/VIP/k{i}"), &user).await;
        assert_eq!(r.status, 200);
    }
    let r = b.get_with("/api/groups/VIP/k3", &user).await;
    assert!(r.header("cache-status").contains("detail=l2"), "{r:?}");
    let m = a.metrics().await;
    assert_eq!(
        metric(
            &m,
            "sidecache_redis_breaker_state",
            &[("redis", "limits"), ("state", "closed")]
        ),
        0.0,
        "the limits breaker did not open"
    );
    assert_eq!(
        metric(
            &m,
            "sidecache_redis_breaker_state",
            &[("redis", "l2"), ("state", "closed")]
        ),
        1.0
    );
    assert!(
        metric(
            &m,
            "sidecache_l2_operations_total",
            &[("redis", "l2"), ("op", "put"), ("result", "ok")]
        ) >= 10.0
    );
}

#[tokio::test]
async fn without_sections_of_their_own_everything_shares_the_l2_client() {
    let cache = RedisServer::start();
    let origin = Origin::start(|_| Reply::json("{}")).await;
    let extra = format!(
        "{}[[limit]]\nmatch = \"GET /x\"\nkey = \"ip\"\nrate = \"10/s\"\n",
        l2_standalone(&cache.url())
    );
    let a = Sidecache::start(&origin, &extra).await;
    a.request(Method::GET, "/x", &[], "").await;
    let m = a.metrics().await;
    assert!(
        metric(
            &m,
            "sidecache_l2_operations_total",
            &[("redis", "l2"), ("op", "ratelimit")]
        ) >= 1.0
    );
    assert!(!m.contains("redis=\"limits\""), "{m}");
}
