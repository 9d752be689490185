//! The shared L2 tier against real Redis processes: standalone, a 3-master Cluster, and
//! Sentinel with a replica.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::redis::{RedisCluster, RedisSentinel, RedisServer};
use support::*;

const RECORD: &str = r#"{"group":"VIP","symbol":"EURUSD","spread":1.2}"#;

fn counting_origin_reply(req: &Recorded) -> Reply {
    Reply::json(format!(r#"{{"path":"{}"}}"#, req.uri))
}

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

#[tokio::test]
async fn a_second_pod_serves_the_first_pods_fill_from_l2() {
    let redis = RedisServer::start();
    let origin = Origin::start(|_| Reply::json(RECORD)).await;
    let extra = format!("{}{ROUTE_GROUP}", l2_standalone(&redis.url()));
    let a = Sidecache::start(&origin, &extra).await;
    let b = Sidecache::start(&origin, &extra).await;

    let r = a.get("/api/groups/VIP/EURUSD").await;
    assert_eq!(tier(&r), "upstream");
    let r = b.get("/api/groups/VIP/EURUSD").await;
    assert_eq!(r.text(), RECORD);
    assert_eq!(tier(&r), "l2", "{r:?}");
    // Promoted: B's next answer comes from its own L1.
    let r = b.get("/api/groups/VIP/EURUSD").await;
    assert_eq!(tier(&r), "l1", "{r:?}");
    assert_eq!(origin.hits(), 1);

    // Every key sidecache wrote has a TTL, and none contains the raw group name.
    let keys = redis.cli(&["--scan", "--pattern", "sidecache:*"]);
    assert!(!keys.is_empty());
    for key in keys.lines() {
        let pttl: i64 = redis.cli(&["PTTL", key]).parse().unwrap();
        assert!(pttl > 0, "{key} has no TTL ({pttl})");
        assert!(!key.contains("VIP"), "raw input in {key}");
    }
    let m = b.metrics().await;
    assert_eq!(
        metric(&m, "sidecache_requests_total", &[("cache", "hit_l2")]),
        1.0
    );
    assert_eq!(
        metric(&m, "sidecache_l2_lookups_total", &[("result", "hit")]),
        1.0
    );
}

#[tokio::test]
async fn an_l2_hit_is_one_get_and_a_fill_one_pipelined_write() {
    let redis = RedisServer::start();
    let origin = Origin::start(|_| Reply::json(RECORD)).await;
    let extra = format!("{}{ROUTE_GROUP}", l2_standalone(&redis.url()));
    let a = Sidecache::start(&origin, &extra).await;
    let b = Sidecache::start(&origin, &extra).await;
    // Let both connections settle (the lazy connection sends its handshake on first use).
    a.get("/warm/nothing").await;
    redis.cli(&["CONFIG", "RESETSTAT"]);
    a.get("/api/groups/VIP/EURUSD").await;
    let fill = commandstats(&redis);
    redis.cli(&["CONFIG", "RESETSTAT"]);
    let r = b.get("/api/groups/VIP/EURUSD").await;
    assert_eq!(tier(&r), "l2");
    let hit = commandstats(&redis);
    eprintln!("fill: {fill:?}\nl2 hit: {hit:?}");
    // The fill, in three round trips: the lookup (GET), the lease batch (SET NX, and SADD +
    // PEXPIRE NX for each of the two tags), and the put batch (SADD + PEXPIRE NX + GT for each
    // tag, then EVAL of the put script, whose GET/SET/DEL commandstats counts too).
    let expected: std::collections::BTreeMap<String, u64> = [
        ("get", 2),
        ("set", 2),
        ("sadd", 4),
        ("pexpire", 6),
        ("eval", 1),
        ("del", 1),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(fill, expected);
    // B's L2 hit: exactly one GET (plus at most the connection handshake).
    let non_handshake: u64 = hit
        .iter()
        .filter(|(c, _)| {
            !matches!(
                c.as_str(),
                "hello" | "client|setinfo" | "client|setname" | "ping" | "select"
            )
        })
        .map(|(_, n)| n)
        .sum();
    assert_eq!(hit.get("get"), Some(&1), "{hit:?}");
    assert_eq!(non_handshake, 1, "{hit:?}");
}

/// `INFO commandstats` as command → calls.
fn commandstats(redis: &RedisServer) -> std::collections::BTreeMap<String, u64> {
    redis
        .cli(&["INFO", "commandstats"])
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("cmdstat_")?;
            let (name, stats) = rest.split_once(':')?;
            let calls = stats.split(',').find_map(|kv| kv.strip_prefix("calls="))?;
            Some((name.to_string(), calls.parse().ok()?))
        })
        // Heartbeats are pub/sub traffic, and hot keys warm-start traffic: not cache operations.
        .filter(|(name, _)| {
            !matches!(
                name.as_str(),
                "info"
                    | "config|resetstat"
                    | "publish"
                    | "zrevrange"
                    | "zincrby"
                    | "zremrangebyrank"
                    | "expire"
            )
        })
        .collect()
}

#[tokio::test]
async fn l2_promotion_keeps_the_remaining_ttl_and_both_tiers_expire() {
    let redis = RedisServer::start();
    let origin = Origin::start(|_| Reply::json(RECORD).header("cache-control", "max-age=2")).await;
    let extra = format!("{}{ROUTE_GROUP}", l2_standalone(&redis.url()));
    let a = Sidecache::start(&origin, &extra).await;
    let b = Sidecache::start(&origin, &extra).await;
    a.get("/api/groups/VIP/EURUSD").await;
    // Time passing is what is under test here.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = b.get("/api/groups/VIP/EURUSD").await;
    assert_eq!(tier(&r), "l2");
    assert!(r.header("age").parse::<u64>().unwrap() >= 1, "{r:?}");
    assert!(
        r.header("cache-status").ends_with("ttl=0"),
        "promoted with the remaining TTL: {r:?}"
    );
    // The Redis key expires with the entry, and both pods go back to the upstream.
    let expired = eventually(Duration::from_secs(5), async || {
        b.get("/api/groups/VIP/EURUSD").await;
        origin.hits() >= 2
    })
    .await;
    assert!(expired);
    assert_eq!(
        redis
            .cli(&["--scan", "--pattern", "sidecache:*:e*"])
            .lines()
            .count(),
        1,
        "re-filled once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_costs_hit_rate_never_availability() {
    let redis = Arc::new(RedisServer::start());
    let origin = Origin::start(counting_origin_reply).await;
    let extra = format!("{}{ROUTE_GROUP}", l2_standalone(&redis.url()));
    let a = Sidecache::start(&origin, &extra).await;
    let b = Sidecache::start(&origin, &extra).await;
    a.get("/api/groups/VIP/S0").await;

    let r2 = redis.clone();
    tokio::task::spawn_blocking(move || r2.kill())
        .await
        .unwrap();
    // Every request is still answered: L1 hits, and misses from the upstream.
    for i in 0..20 {
        assert_eq!(a.get("/api/groups/VIP/S0").await.status, 200);
        let r = a.get(&format!("/api/groups/VIP/down{i}")).await;
        assert_eq!(r.status, 200);
        assert_eq!(tier(&r), "upstream");
    }
    let m = a.metrics().await;
    assert_eq!(
        metric(&m, "sidecache_redis_breaker_state", &[("state", "closed")]),
        0.0,
        "breaker opened"
    );
    assert!(
        metric(
            &m,
            "sidecache_l2_operations_total",
            &[("result", "skipped")]
        ) > 0.0
    );

    let r2 = redis.clone();
    tokio::task::spawn_blocking(move || r2.restart())
        .await
        .unwrap();
    // After Redis returns, the breaker closes and L2 is shared again.
    let mut n = 0;
    let recovered = eventually(Duration::from_secs(10), async || {
        n += 1;
        let path = format!("/api/groups/VIP/back{n}");
        a.get(&path).await;
        tier(&b.get(&path).await) == "l2"
    })
    .await;
    assert!(recovered, "L2 was not used again after Redis came back");
    let m = a.metrics().await;
    assert_eq!(
        metric(&m, "sidecache_redis_breaker_state", &[("state", "closed")]),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pods_racing_on_one_cold_key_fetch_it_once() {
    let redis = RedisServer::start();
    let origin = Origin::start(|_| Reply::json(RECORD).delay(Duration::from_millis(300))).await;
    let extra = format!(
        "[l2]\nurl = \"{}\"\ntimeout = \"200ms\"\nlease = \"3s\"\nlease_wait = \"2s\"\n{ROUTE_GROUP}",
        redis.url()
    );
    let a = Arc::new(Sidecache::start(&origin, &extra).await);
    let b = Arc::new(Sidecache::start(&origin, &extra).await);
    let mut tasks = Vec::new();
    for i in 0..20 {
        let pod = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            pod.get("/api/groups/VIP/EURUSD").await
        }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), RECORD);
    }
    assert_eq!(origin.hits(), 1, "one upstream fetch across both pods");
    let waits = metric(
        &a.metrics().await,
        "sidecache_l2_lease_waits_total",
        &[("result", "filled")],
    ) + metric(
        &b.metrics().await,
        "sidecache_l2_lease_waits_total",
        &[("result", "filled")],
    );
    assert_eq!(waits, 1.0, "the losing pod waited for the winner's fill");
}

#[tokio::test]
async fn garbage_under_a_sidecache_key_is_a_miss_and_is_overwritten() {
    let redis = RedisServer::start();
    let origin = Origin::start(|_| Reply::json(RECORD)).await;
    let extra = format!("{}{ROUTE_GROUP}", l2_standalone(&redis.url()));
    let a = Sidecache::start(&origin, &extra).await;
    a.get("/api/groups/VIP/EURUSD").await;
    let key = redis.cli(&["--scan", "--pattern", "sidecache:*:e*"]);
    assert_eq!(key.lines().count(), 1);
    redis.cli(&["SET", &key, "definitely not an entry", "PX", "60000"]);

    let b = Sidecache::start(&origin, &extra).await;
    let r = b.get("/api/groups/VIP/EURUSD").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), RECORD);
    assert_eq!(tier(&r), "upstream");
    assert_eq!(origin.hits(), 2);
    assert_eq!(
        metric(
            &b.metrics().await,
            "sidecache_l2_lookups_total",
            &[("result", "corrupt")]
        ),
        1.0
    );
    // B's fill replaced the garbage: a third pod reads a real entry.
    let c = Sidecache::start(&origin, &extra).await;
    assert_eq!(tier(&c.get("/api/groups/VIP/EURUSD").await), "l2");
    // A wrong-typed key (a hash where a string should be) is a miss too, never an error.
    redis.cli(&["DEL", &key]);
    redis.cli(&["HSET", &key, "f", "v"]);
    let d = Sidecache::start(&origin, &extra).await;
    assert_eq!(d.get("/api/groups/VIP/EURUSD").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_shares_entries_without_crossslot_errors() {
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3))
        .await
        .unwrap();
    let origin = Origin::start(counting_origin_reply).await;
    let nodes: Vec<String> = cluster.urls().iter().map(|u| format!("\"{u}\"")).collect();
    let extra = format!(
        "[l2]\ncluster = [{}]\ntimeout = \"500ms\"\n{ROUTE_GROUP}
[[route]]
name = \"untagged\"
match = \"GET /api/prices/{{symbol}}\"
ttl = \"1h\"
",
        nodes.join(", ")
    );
    let a = Sidecache::start(&origin, &extra).await;
    let b = Sidecache::start(&origin, &extra).await;
    let mut paths = Vec::new();
    for g in 0..10 {
        for s in 0..3 {
            paths.push(format!("/api/groups/G{g}/S{s}"));
        }
        paths.push(format!("/api/prices/P{g}"));
    }
    // The cluster connection is made in the background: wait until A writes to L2.
    let mut n = 0;
    let connected = eventually(Duration::from_secs(10), async || {
        n += 1;
        let probe = format!("/api/groups/probe/{n}");
        a.get(&probe).await;
        tier(&b.get(&probe).await) == "l2"
    })
    .await;
    assert!(connected, "cluster L2 never became usable");
    let before = origin.hits();
    for p in &paths {
        assert_eq!(a.get(p).await.status, 200);
    }
    for p in &paths {
        let r = b.get(p).await;
        assert_eq!(tier(&r), "l2", "{p}: {r:?}");
    }
    assert_eq!(origin.hits() - before, paths.len());
    for pod in [&a, &b] {
        let m = pod.metrics().await;
        assert_eq!(
            metric(&m, "sidecache_l2_operations_total", &[("result", "error")]),
            0.0,
            "{m}"
        );
    }
    // Entries really are spread over the masters.
    let holding = cluster
        .nodes
        .iter()
        .filter(|n| n.cli(&["DBSIZE"]).parse::<u64>().unwrap() > 0)
        .count();
    assert!(holding >= 2, "all keys on one node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_is_followed() {
    let sentinel = tokio::task::spawn_blocking(RedisSentinel::start)
        .await
        .unwrap();
    let origin = Origin::start(counting_origin_reply).await;
    let nodes: Vec<String> = sentinel
        .sentinel_urls()
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect();
    let extra = format!(
        "[l2]\ntimeout = \"300ms\"\nbreaker_open = \"200ms\"\n[l2.sentinel]\nmaster_name = \"{}\"\nnodes = [{}]\n{ROUTE_GROUP}",
        sentinel.master_name,
        nodes.join(", ")
    );
    let a = Sidecache::start(&origin, &extra).await;
    let b = Sidecache::start(&origin, &extra).await;
    let mut n = 0;
    let mut shared = async || {
        n += 1;
        let path = format!("/api/groups/VIP/s{n}");
        a.get(&path).await;
        tier(&b.get(&path).await) == "l2"
    };
    assert!(
        eventually(Duration::from_secs(10), &mut shared).await,
        "sentinel L2 never usable"
    );

    let sentinel = tokio::task::spawn_blocking(move || {
        let mut s = sentinel;
        s.failover();
        s
    })
    .await
    .unwrap();
    assert!(
        eventually(Duration::from_secs(15), &mut shared).await,
        "L2 not shared again after the failover"
    );
    // The writes after the failover landed on the new master.
    let new_master = &sentinel.master;
    assert!(new_master.cli(&["DBSIZE"]).parse::<u64>().unwrap() > 0);
    sentinel.wait_replica_synced();
}

#[tokio::test]
async fn warmup_fills_before_ready() {
    let redis = RedisServer::start();
    let origin = Origin::start(counting_origin_reply).await;
    let extra = format!(
        "{}[warmup]\npaths = [\"/api/groups/VIP/A\", \"/api/groups/VIP/B\", \"/api/groups/VIP/C\"]\ngate_readiness = true\n{ROUTE_GROUP}",
        l2_standalone(&redis.url())
    );
    let a = Sidecache::start(&origin, &extra).await;
    a.wait_ready().await;
    assert_eq!(origin.hits(), 3);
    assert_eq!(tier(&a.get("/api/groups/VIP/B").await), "l1");
    // A second pod warms from L2, not from the upstream.
    let b = Sidecache::start(&origin, &extra).await;
    b.wait_ready().await;
    assert_eq!(origin.hits(), 3);
    assert_eq!(
        metric(
            &b.metrics().await,
            "sidecache_requests_total",
            &[("cache", "hit_l2")]
        ),
        3.0
    );
}

/// Issue 19's figure: 10,000 group entries over 100 groups, every one sharing its group's tag
/// first, spread over the 3 masters by their own keys (no master holds more than 40%); and the
/// round trips of a fill and of an L2 hit on Cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_spreads_entries_that_share_a_tag_over_every_master() {
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3))
        .await
        .unwrap();
    let origin = Origin::start(counting_origin_reply).await;
    let nodes: Vec<String> = cluster.urls().iter().map(|u| format!("\"{u}\"")).collect();
    let extra = format!(
        "[l2]\ncluster = [{}]\ntimeout = \"2s\"\n{ROUTE_GROUP}
[[invalidate]]
match = \"PUT /api/superadmin/groups/{{group}}\"
tags = [\"group:{{group}}\"]
",
        nodes.join(", ")
    );
    let a = Arc::new(Sidecache::start(&origin, &extra).await);
    let b = Sidecache::start(&origin, &extra).await;
    // A fresh path each time: one filled before the connection was up stays out of L2.
    let mut n = 0;
    let connected = eventually(Duration::from_secs(10), async || {
        n += 1;
        let probe = format!("/api/groups/probe/{n}");
        a.get(&probe).await;
        tier(&b.get(&probe).await) == "l2"
    })
    .await;
    assert!(connected, "cluster L2 never became usable");

    // Round trips of one fill and one L2 hit, counted as Redis calls by operation.
    let ops = |m: &str| -> Vec<(String, f64)> {
        ["get", "lease", "put_tags", "put"]
            .iter()
            .map(|op| {
                let n = metric(m, "sidecache_l2_operations_total", &[("op", op)]);
                (op.to_string(), n)
            })
            .collect()
    };
    let before = ops(&a.metrics().await);
    a.get("/api/groups/G0/probe").await;
    let after = ops(&a.metrics().await);
    let fill: Vec<(String, f64)> = after
        .iter()
        .zip(&before)
        .map(|((op, x), (_, y))| (op.clone(), x - y))
        .collect();
    let before = ops(&b.metrics().await);
    assert_eq!(tier(&b.get("/api/groups/G0/probe").await), "l2");
    let after = ops(&b.metrics().await);
    let hit: f64 = after
        .iter()
        .zip(&before)
        .map(|((_, x), (_, y))| x - y)
        .sum();
    eprintln!("cluster fill round trips by op: {fill:?}; L2 hit: {hit}");
    assert_eq!(hit, 1.0, "an L2 hit is one GET");
    let fill_total: f64 = fill.iter().map(|(_, n)| n).sum();
    assert_eq!(fill_total, 4.0, "lookup, lease, tag sets, put: {fill:?}");

    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for w in 0..16 {
        let a = a.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..10_000).step_by(16) {
                let r = a
                    .get(&format!("/api/groups/G{}/S{}", i % 100, i / 100))
                    .await;
                assert_eq!(r.status, 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    eprintln!("10,000 fills in {:?}", started.elapsed());
    let m = a.metrics().await;
    assert_eq!(
        metric(&m, "sidecache_l2_operations_total", &[("result", "error")]),
        0.0
    );
    let per_master: Vec<usize> = cluster
        .nodes
        .iter()
        .map(|n| {
            n.cli(&["--scan", "--pattern", "sidecache:*}:e"])
                .lines()
                .filter(|k| k.contains("}:e"))
                .count()
        })
        .collect();
    let total: usize = per_master.iter().sum();
    let max = *per_master.iter().max().unwrap();
    eprintln!(
        "entries per master: {per_master:?} of {total}; largest share {:.1}%",
        100.0 * max as f64 / total as f64
    );
    assert!(total >= 10_001, "{per_master:?}");
    assert!(max * 100 <= total * 40, "a hot shard: {per_master:?}");

    // Invalidating one group's tag on Cluster reaches every entry of the group, wherever each
    // lives: the 100 entries of G7 go, nothing else does.
    let w = a
        .request(http::Method::PUT, "/api/superadmin/groups/G7", &[], "x")
        .await;
    assert_eq!(w.status, 200);
    let left: usize = cluster
        .nodes
        .iter()
        .map(|n| {
            n.cli(&["--scan", "--pattern", "sidecache:*}:e"])
                .lines()
                .filter(|k| k.contains("}:e"))
                .count()
        })
        .sum();
    assert_eq!(left, total - 100);
    let c = Sidecache::start(&origin, &extra).await;
    // A new pod's Cluster connection comes up in the background: probe with entries that are
    // in L2 (group G9's) until one is read from there.
    let mut k = 0;
    let connected = eventually(Duration::from_secs(10), async || {
        k += 1;
        tier(&c.get(&format!("/api/groups/G9/S{k}")).await) == "l2"
    })
    .await;
    assert!(connected, "the new pod never read from the cluster");
    let hits = origin.hits();
    assert_eq!(tier(&c.get("/api/groups/G7/S42").await), "upstream");
    assert_eq!(tier(&c.get("/api/groups/G8/S42").await), "l2");
    assert_eq!(origin.hits(), hits + 1);
}

/// A tag set that cannot take the entry's name (a key of another type where the set should
/// be) means the entry would be unreachable from that tag: it is not kept in L2, whether the
/// set turned bad before the fill (the lease batch fails: no L2 for this fill) or during it
/// (the put's tag step fails: what the script stored is removed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_whose_tag_set_refuses_it_is_not_kept() {
    let redis = RedisServer::start();
    let origin = Origin::start(|r| {
        let slow = r.uri.ends_with("/SLOW");
        Reply::json(format!("{{\"path\":\"{}\"}}", r.uri)).delay(if slow {
            Duration::from_millis(400)
        } else {
            Duration::ZERO
        })
    })
    .await;
    let extra = format!("{}{ROUTE_GROUP}", l2_standalone(&redis.url()));
    let a = Arc::new(Sidecache::start(&origin, &extra).await);
    a.get("/api/groups/VIP/A").await;
    a.get("/api/groups/VIP/B").await;
    let group_set = redis
        .cli(&["--scan", "--pattern", "sidecache:*:keys"])
        .lines()
        .find(|k| redis.cli(&["SCARD", k]) == "2")
        .expect("the group's set")
        .to_string();
    let spoil = || {
        redis.cli(&["DEL", &group_set]);
        redis.cli(&["SET", &group_set, "not a set", "PX", "60000"]);
    };
    // During a fill: the lease is taken, then the set goes bad before the put.
    let hits = origin.hits();
    let a2 = a.clone();
    let slow = tokio::spawn(async move { a2.get("/api/groups/VIP/SLOW").await });
    assert!(eventually(Duration::from_secs(5), async || origin.hits() > hits).await);
    spoil();
    assert_eq!(slow.await.unwrap().status, 200);
    // Before a fill.
    assert_eq!(a.get("/api/groups/VIP/C").await.status, 200);
    let b = Sidecache::start(&origin, &extra).await;
    assert_eq!(tier(&b.get("/api/groups/VIP/SLOW").await), "upstream");
    assert_eq!(tier(&b.get("/api/groups/VIP/C").await), "upstream");
    assert_eq!(tier(&b.get("/api/groups/VIP/A").await), "l2");
}

/// A rolling upgrade from the layout that placed entries by their first tag: an old pod
/// invalidating a URL removes only its own names from L2, then tells the pods. The new pods
/// remove the entry under the new names too, so no pod serves it from L2 afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_invalidation_from_a_pod_of_the_earlier_layout_reaches_l2() {
    let redis = RedisServer::start();
    let origin = Origin::start(counting_origin_reply).await;
    let extra = format!("{}{ROUTE_GROUP}", l2_standalone(&redis.url()));
    let a = Sidecache::start(&origin, &extra).await;
    a.get("/api/groups/VIP/EURUSD").await;
    let entry = redis.cli(&["--scan", "--pattern", "sidecache:*}:e"]);
    let entry = entry.lines().next().expect("the entry").to_string();
    let key = &entry[entry.find('{').unwrap() + 1..entry.find('}').unwrap()];
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros();
    let message = format!(
        r#"{{"v":1,"kind":"invalidate","origin":"old-pod","ts":{ts},"keys":["{key}"],"source":"admin"}}"#
    );
    redis.cli(&["PUBLISH", "sidecache:invalidate", &message]);
    let gone = eventually(Duration::from_secs(5), async || {
        redis.cli(&["EXISTS", &entry]) == "0"
    })
    .await;
    assert!(gone, "{entry} outlived the old pod's invalidation");
}
