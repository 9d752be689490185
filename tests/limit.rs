//! Rate limits shared through a real Redis by three sidecache instances, the local fallback
//! with Redis killed, shadow mode, and the standard headers.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Method;
use support::redis::RedisServer;
use support::*;

fn limits(l2: &str, mode: &str) -> String {
    format!(
        r#"{l2}
[limits]
replicas = 3

[[limit]]
name = "orders"
match = "POST /api/orders"
key = "header:x-user-id"
rate = "10/s"
burst = 1
mode = "{mode}"

[[limit]]
name = "api"
match = "GET /api/users/{{user_id}}"
key = "param:{{user_id}}"
rate = "100/min"
"#
    )
}

/// Sends POST /api/orders as `user` round-robin over `pods` for `span`; returns (admitted, denied).
async fn hammer(pods: &[Arc<Sidecache>], user: &'static str, span: Duration) -> (usize, usize) {
    let admitted = Arc::new(AtomicUsize::new(0));
    let denied = Arc::new(AtomicUsize::new(0));
    let end = Instant::now() + span;
    let mut tasks = Vec::new();
    // Two clients per pod.
    for pod in pods.iter().cycle().take(pods.len() * 2) {
        let (pod, admitted, denied) = (pod.clone(), admitted.clone(), denied.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < end {
                let r = pod
                    .request(Method::POST, "/api/orders", &[("x-user-id", user)], "{}")
                    .await;
                match r.status {
                    200 => admitted.fetch_add(1, Ordering::Relaxed),
                    429 => denied.fetch_add(1, Ordering::Relaxed),
                    s => panic!("unexpected status {s}"),
                };
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (
        admitted.load(Ordering::Relaxed),
        denied.load(Ordering::Relaxed),
    )
}

/// Two POST /api/orders as `user` under the `orders` rule (burst 1): the first is allowed,
/// the second denied with `Retry-After`; both carry the policy. Returns both answers.
async fn one_order_then_denied(pod: &Sidecache, user: &str) -> (Resp, Resp) {
    let headers = [("x-user-id", user)];
    let order = || pod.request(Method::POST, "/api/orders", &headers, "{}");
    let ok = order().await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("ratelimit-policy"), "\"orders\";q=10;w=1");
    let no = order().await;
    assert_eq!(no.status, 429);
    assert_eq!(no.header("retry-after"), "1");
    assert_eq!(no.header("ratelimit-policy"), "\"orders\";q=10;w=1");
    (ok, no)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_pods_share_one_limit_through_redis() {
    let redis = RedisServer::start();
    let origin = Origin::start(|_| Reply::json("{}")).await;
    let cfg = limits(&l2_standalone(&redis.url()), "enforce");
    let mut pods = Vec::new();
    for _ in 0..3 {
        pods.push(Arc::new(Sidecache::start(&origin, &cfg).await));
    }
    let (admitted, denied) = hammer(&pods, "alice", Duration::from_secs(5)).await;
    eprintln!("10/s for 5 s over 3 pods: admitted {admitted}, denied {denied}");
    // 50 at the steady rate, plus the burst of 1.
    assert!(
        (46..=57).contains(&admitted),
        "admitted {admitted}, expected 51 ± 10%"
    );
    assert!(denied > admitted, "the hammering really exceeded the limit");
    // Another key is not affected by alice's exhaustion.
    let r = pods[0]
        .request(Method::POST, "/api/orders", &[("x-user-id", "bob")], "{}")
        .await;
    assert_eq!(r.status, 200);
    let m = pods[1].metrics().await;
    assert!(
        metric(
            &m,
            "sidecache_ratelimit_decisions_total",
            &[
                ("rule", "orders"),
                ("outcome", "denied"),
                ("backend", "redis")
            ]
        ) > 0.0
    );
    assert_eq!(
        metric(
            &m,
            "sidecache_ratelimit_decisions_total",
            &[("backend", "local")]
        ),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_tell_clients_where_they_stand() {
    let redis = RedisServer::start();
    let origin = Origin::start(|_| Reply::json("{}")).await;
    let pod = Sidecache::start(&origin, &limits(&l2_standalone(&redis.url()), "enforce")).await;
    let (ok, no) = one_order_then_denied(&pod, "carol").await;
    assert_eq!(ok.header("ratelimit"), "\"orders\";r=0;t=1");
    let v: serde_json::Value = serde_json::from_slice(&no.body).unwrap();
    assert_eq!(v["error"], "rate_limited");
    assert_eq!(v["rule"], "orders");
    // A burst rule counts down.
    let a = pod.get("/api/users/7").await;
    let b = pod.get("/api/users/7").await;
    assert_eq!(a.header("ratelimit"), "\"api\";r=99;t=1");
    assert_eq!(b.header("ratelimit"), "\"api\";r=98;t=2");
    // No key, no limit: requests without the header are not this rule's clients.
    let anon = pod.request(Method::POST, "/api/orders", &[], "{}").await;
    assert_eq!(anon.status, 200);
    assert!(anon.headers.get("ratelimit").is_none());
    // Paths no rule matches carry no rate-limit fields.
    assert!(pod
        .get("/elsewhere")
        .await
        .headers
        .get("ratelimit-policy")
        .is_none());
}

/// Without `[l2]` every decision is this pod's own, made before anything else about the
/// request: for forwarded requests, for L1 hits on a limited route and for denials alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_each_pod_decides_alone_on_every_path() {
    let origin =
        Origin::start(|_| Reply::json("{\"v\":1}").header("cache-control", "max-age=60")).await;
    // `limits` without `[l2]`, a route-scoped rule on a cached route, and a second rule on
    // one of its paths (two rules, one decision each, their fields joined).
    let extra = limits("", "enforce")
        + r#"
[[route]]
name = "group"
match = "GET /api/groups/{group}"
ttl = "1h"

[[limit]]
name = "groups"
route = "group"
key = "ip"
rate = "3/min"
burst = 3

[[limit]]
name = "vip"
match = "GET /api/groups/vip"
key = "ip"
rate = "30/min"
burst = 5
"#;
    let pod = Sidecache::start(&origin, &extra).await;
    // A forwarded request: 10/s over 3 replicas locally, burst 1.
    one_order_then_denied(&pod, "gina").await;
    // A cached route: the miss, then L1 hits, all counted against the same client.
    let seen: Vec<_> = [
        pod.get("/api/groups/vip").await,
        pod.get("/api/groups/vip").await,
        pod.get("/api/groups/vip").await,
    ]
    .into_iter()
    .map(|r| {
        (
            r.status,
            r.header("cache-status").to_string(),
            r.header("ratelimit").to_string(),
        )
    })
    .collect();
    // Burst 3 at 3/min over 3 replicas (1/min here): each request takes one of the three,
    // 60 s more until all are back. `vip`: burst 5 at 10/min here, 6 s more each.
    let expect = [
        (200, "stored", "\"groups\";r=2;t=60, \"vip\";r=4;t=6"),
        (200, "; hit;", "\"groups\";r=1;t=120, \"vip\";r=3;t=12"),
        (200, "; hit;", "\"groups\";r=0;t=180, \"vip\";r=2;t=18"),
    ];
    for ((status, cache, limit), (want_status, want_cache, want_limit)) in seen.iter().zip(expect) {
        assert_eq!(*status, want_status, "{seen:?}");
        assert!(cache.contains(want_cache), "{seen:?}");
        assert_eq!(limit, want_limit, "{seen:?}");
    }
    let denied = pod.get("/api/groups/vip").await;
    assert_eq!(denied.status, 429, "a hit over the limit is denied too");
    assert_eq!(
        denied.header("ratelimit-policy"),
        "\"groups\";q=3;w=60, \"vip\";q=30;w=60"
    );
    assert_eq!(origin.hits(), 2, "one POST and one fill reached the origin");
    let m = pod.metrics().await;
    let decisions =
        |labels: &[(&str, &str)]| metric(&m, "sidecache_ratelimit_decisions_total", labels);
    assert_eq!(
        decisions(&[("backend", "local"), ("outcome", "denied")]),
        2.0
    );
    assert_eq!(
        decisions(&[("backend", "local"), ("outcome", "allowed")]),
        8.0
    );
    assert_eq!(decisions(&[("backend", "redis")]), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_request_costs_one_redis_round_trip() {
    let redis = RedisServer::start();
    let origin = Origin::start(|_| Reply::json("{}")).await;
    let pod = Sidecache::start(&origin, &limits(&l2_standalone(&redis.url()), "enforce")).await;
    // Ready: the warm start's reads of L2's hot keys are done and counted before the reset.
    pod.wait_ready().await;
    pod.get("/api/users/0").await; // loads the script
    redis.cli(&["CONFIG", "RESETSTAT"]);
    for i in 1..=20 {
        assert_eq!(pod.get(&format!("/api/users/{i}")).await.status, 200);
    }
    let stats = redis.cli(&["INFO", "commandstats"]);
    let calls = |cmd: &str| -> u64 {
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:calls=")))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse().unwrap())
    };
    // One EVALSHA per request; inside it the script's TIME, GET and SET.
    assert_eq!(calls("evalsha"), 20, "{stats}");
    assert_eq!(calls("eval"), 0, "the script stayed loaded: {stats}");
    let commands: Vec<&str> = stats
        .lines()
        .filter_map(|l| l.strip_prefix("cmdstat_")?.split(':').next())
        .filter(|c| {
            !matches!(
                *c,
                "evalsha" | "time" | "get" | "set" | "publish" | "info" | "config|resetstat"
            )
        })
        .collect();
    assert!(commands.is_empty(), "unexpected commands {commands:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_mode_counts_but_never_blocks() {
    let redis = RedisServer::start();
    let origin = Origin::start(|_| Reply::json("{}")).await;
    let pod =
        Arc::new(Sidecache::start(&origin, &limits(&l2_standalone(&redis.url()), "shadow")).await);
    let (admitted, denied) = hammer(
        std::slice::from_ref(&pod),
        "dave",
        Duration::from_millis(500),
    )
    .await;
    assert_eq!(denied, 0);
    assert!(admitted > 20);
    let m = pod.metrics().await;
    let shadow = metric(
        &m,
        "sidecache_ratelimit_decisions_total",
        &[("outcome", "shadow_denied")],
    );
    assert!(
        shadow as usize >= admitted - 10,
        "shadow denials {shadow} of {admitted}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_falls_back_to_local_limits_and_recovers() {
    let redis = Arc::new(RedisServer::start());
    let origin = Origin::start(|_| Reply::json("{}")).await;
    let pod =
        Arc::new(Sidecache::start(&origin, &limits(&l2_standalone(&redis.url()), "enforce")).await);
    let r = redis.clone();
    tokio::task::spawn_blocking(move || r.kill()).await.unwrap();
    // Each pod enforces 10/s / 3 replicas locally: about 3.3/s.
    let (admitted, denied) =
        hammer(std::slice::from_ref(&pod), "erin", Duration::from_secs(3)).await;
    eprintln!("local fallback, 3 s: admitted {admitted}, denied {denied}");
    assert!(
        (8..=13).contains(&admitted),
        "admitted {admitted}, expected ~10 + 1"
    );
    let m = pod.metrics().await;
    assert!(
        metric(
            &m,
            "sidecache_ratelimit_decisions_total",
            &[("backend", "local")]
        ) > 0.0
    );
    let r = redis.clone();
    tokio::task::spawn_blocking(move || r.restart())
        .await
        .unwrap();
    // Back to Redis by itself once the breaker closes (the script is loaded again on NOSCRIPT).
    let back = eventually(Duration::from_secs(10), async || {
        pod.request(Method::POST, "/api/orders", &[("x-user-id", "frank")], "{}")
            .await;
        metric(
            &pod.metrics().await,
            "sidecache_ratelimit_decisions_total",
            &[("rule", "orders"), ("backend", "redis")],
        ) > 0.0
    })
    .await;
    assert!(back, "never went back to Redis");
}

#[test]
fn bad_limit_config_is_rejected_by_check() {
    let dir = std::env::temp_dir().join(format!("sidecache-limit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(
        &file,
        "[upstream]\nurl = \"http://127.0.0.1:1\"\n[[limit]]\nname = \"orders\"\nmatch = \"POST /api/orders\"\nkey = \"header:x-user-id\"\nrate = \"ten\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sidecache"))
        .args(["check", "--config", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("limit[0] (orders).rate: `ten` is not a rate"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Seed 004's limits: 100/min per user across the API (`* /api/{*rest}`: any method, any path
/// under /api/), and 10/s on POST /api/orders; both apply to an order.
const SEED_004_LIMITS: &str = r#"
[[limit]]
name = "api"
match = "* /api/{*rest}"
key = "header:x-user-id"
rate = "100/min"
burst = 5

[[limit]]
name = "orders"
match = "POST /api/orders"
key = "header:x-user-id"
rate = "10/s"
burst = 2
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_wide_limit_covers_every_method_and_path_under_its_prefix() {
    let redis = RedisServer::start();
    let origin = Origin::start(|_| Reply::json("{}")).await;
    let cfg = format!("{}{SEED_004_LIMITS}", l2_standalone(&redis.url()));
    let a = Sidecache::start(&origin, &cfg).await;
    let b = Sidecache::start(&origin, &cfg).await;
    let alice = [("x-user-id", "alice")];
    // Five requests of any method, any depth, on either pod use alice's whole API burst...
    let calls = [
        (Method::GET, "/api/groups/VIP/EURUSD"),
        (Method::PUT, "/api/superadmin/groups/VIP/EURUSD"),
        (Method::DELETE, "/api/x"),
        (Method::GET, "/api/"),
        (Method::POST, "/api/orders"),
    ];
    for (i, (m, p)) in calls.iter().enumerate() {
        let pod = if i % 2 == 0 { &a } else { &b };
        let r = pod.request(m.clone(), p, &alice, "{}").await;
        assert_eq!(r.status, 200, "{m} {p}");
        assert!(r.header("ratelimit-policy").contains("\"api\""), "{r:?}");
    }
    // ...the order carried both policies.
    // The sixth is denied by the API-wide rule, whatever the method.
    let r = b.request(Method::PATCH, "/api/users/7", &alice, "{}").await;
    assert_eq!(r.status, 429, "{r:?}");
    // Outside the prefix, and for another user, nothing is limited.
    assert_eq!(
        a.request(Method::GET, "/health", &alice, "").await.status,
        200
    );
    assert_eq!(
        a.request(Method::GET, "/apix", &alice, "").await.status,
        200
    );
    let bob = [("x-user-id", "bob")];
    let r = a.request(Method::POST, "/api/orders", &bob, "{}").await;
    assert_eq!(r.status, 200);
    let policies = r.header("ratelimit-policy");
    assert!(
        policies.contains("\"api\"") && policies.contains("\"orders\""),
        "{policies}"
    );
    // The orders rule bites on its own: bob's orders burst is 2.
    assert_eq!(
        a.request(Method::POST, "/api/orders", &bob, "{}")
            .await
            .status,
        200
    );
    let r = a.request(Method::POST, "/api/orders", &bob, "{}").await;
    assert_eq!(r.status, 429);
    let m = a.metrics().await;
    assert!(
        metric(
            &m,
            "sidecache_ratelimit_decisions_total",
            &[("rule", "orders"), ("outcome", "denied")]
        ) >= 1.0
    );
}
