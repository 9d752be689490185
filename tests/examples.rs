//! The seeds' example configs (`config/examples/*.toml`, issue 19), each loaded as shipped (only
//! addresses swapped for the test's own origin and Redis) and driven through the seed's real
//! endpoints and events: what each seed's hand-written cache did, by configuration alone.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use sidecache::config::Config;
use support::redis::{RedisCluster, RedisServer};
use support::*;

/// The example `name` with its listeners on port 0, `upstream` as the backend, and every
/// `redis://redis:6379/N` (and the Cluster seed list) pointing at the test's Redis.
fn example(name: &str, upstream: &str, redis: &str, cluster: Option<&[String]>) -> Config {
    let path = format!("{}/config/examples/{name}.toml", env!("CARGO_MANIFEST_DIR"));
    let mut text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<String> = text
        .lines()
        .map(|l| {
            if l.starts_with("proxy = ") {
                "proxy = \"127.0.0.1:0\"".to_string()
            } else if l.starts_with("admin = ") {
                "admin = \"127.0.0.1:0\"".to_string()
            } else if l.starts_with("url = \"http://") {
                format!("url = \"{upstream}\"")
            } else if l.starts_with("cluster = [") {
                let nodes: Vec<String> = cluster
                    .unwrap()
                    .iter()
                    .map(|u| format!("\"{u}\""))
                    .collect();
                format!("cluster = [{}]", nodes.join(", "))
            } else if l.starts_with("heartbeat = ") {
                "heartbeat = \"100ms\"".to_string()
            } else if l.starts_with("timeout = \"50ms\"") {
                "timeout = \"500ms\"".to_string()
            } else {
                l.replace("redis://redis:6379", redis)
            }
        })
        .collect();
    text = lines.join("\n");
    Config::parse(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// A backend whose every answer names the path and how many writes it has seen: a write (or a
/// change the test makes by hand, then announces) changes every later answer.
async fn backend() -> (Origin, Arc<AtomicUsize>) {
    let writes = Arc::new(AtomicUsize::new(0));
    let w = writes.clone();
    let origin = Origin::start(move |r| {
        if r.method != Method::GET {
            w.fetch_add(1, Ordering::SeqCst);
            return Reply::json("{\"ok\":true}");
        }
        let n = w.load(Ordering::SeqCst);
        Reply::json(format!("{{\"path\":\"{}\",\"version\":{n}}}", r.uri))
    })
    .await;
    (origin, writes)
}

fn cached(r: &Resp) -> bool {
    r.header("cache-status").contains("hit")
}

/// Waits until `pod` answers `path` (with `headers`) with something other than `old`.
async fn changes(pod: &Sidecache, path: &str, headers: &[(&str, &str)], old: &str) -> bool {
    eventually(Duration::from_secs(5), async || {
        pod.get_with(path, headers).await.text() != old
    })
    .await
}

async fn shared_l2(a: &Sidecache, b: &Sidecache, probe: &str) {
    let mut n = 0;
    let ok = eventually(Duration::from_secs(10), async || {
        n += 1;
        let p = format!("{probe}{n}");
        a.get(&p).await;
        b.get(&p).await.header("cache-status").contains("detail=l2")
    })
    .await;
    assert!(ok, "L2 never shared");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_seed_000_on_cluster() {
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3))
        .await
        .unwrap();
    let (origin, writes) = backend().await;
    let cfg = || example("groups", &origin.url(), "", Some(&cluster.urls()));
    let a = Sidecache::start_with(cfg()).await;
    let b = Sidecache::start_with(cfg()).await;
    shared_l2(&a, &b, "/api/groups/probe/").await;

    let record = "/api/groups/VIP/EURUSD";
    let fields = "/api/groups/VIP/EURUSD/fields?fields=spread,margin";
    let list = "/api/groups/VIP";
    let other = "/api/groups/STD/EURUSD";
    let mut old = Vec::new();
    for p in [record, fields, list, other] {
        old.push(a.get(p).await.text().to_string());
        let r = b.get(p).await;
        assert!(cached(&r), "{p} not shared through L2: {r:?}");
    }
    // The superadmin write through A: the record, its fields and its group's list change on
    // both pods; another group's record does not.
    let w = a
        .request(
            Method::PUT,
            "/api/superadmin/groups/VIP/EURUSD",
            &[],
            "{\"spread\":2}",
        )
        .await;
    assert_eq!(w.status, 200);
    for (p, o) in [record, fields, list].iter().zip(&old) {
        assert_ne!(a.get(p).await.text(), o, "{p} on the writing pod");
        assert!(changes(&b, p, &[], o).await, "{p} on the other pod");
    }
    assert!(cached(&b.get(other).await));

    // Another service's notification (update of one record), then a sync (everything).
    let before = b.get(record).await.text().to_string();
    writes.fetch_add(1, Ordering::SeqCst);
    cluster.cli(&[
        "PUBLISH",
        "groups_updates",
        r#"{"action":"update","group_name":"VIP","symbol":"EURUSD"}"#,
    ]);
    assert!(changes(&a, record, &[], &before).await);
    assert!(changes(&b, record, &[], &before).await);
    let before = b.get(other).await.text().to_string();
    writes.fetch_add(1, Ordering::SeqCst);
    cluster.cli(&["PUBLISH", "groups_updates", r#"{"action":"sync"}"#]);
    assert!(changes(&b, other, &[], &before).await);
    // The cache-clearing admin endpoint goes through as a write and clears every group.
    let before = a.get(other).await.text().to_string();
    let w = a
        .request(Method::DELETE, "/api/superadmin/groups/cache", &[], "")
        .await;
    assert_eq!(w.status, 200);
    assert_ne!(a.get(other).await.text(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balances_seeds_001_002() {
    let redis = RedisServer::start();
    let (origin, writes) = backend().await;
    let url = format!("redis://127.0.0.1:{}", redis.port());
    let cfg = || example("balances", &origin.url(), &url, None);
    let a = Sidecache::start_with(cfg()).await;
    let b = Sidecache::start_with(cfg()).await;
    let alice = [("authorization", "Bearer alice")];
    let mallory = [("authorization", "Bearer mallory")];
    let paths = [
        "/api/users/live/123/balance",
        "/api/users/live/123",
        "/api/users/live/123/portfolio",
        "/api/users/live/123/summary",
    ];
    for p in paths {
        a.get_with(p, &alice).await;
        let r = a.get_with(p, &alice).await;
        assert!(cached(&r), "{p}: {r:?}");
        // Another caller never gets alice's entry.
        assert!(!cached(&a.get_with(p, &mallory).await), "{p}");
    }
    // An admin deposit through B: every cached read of the user changes on both pods.
    let mut before = Vec::new();
    for p in paths {
        before.push(a.get_with(p, &alice).await.text().to_string());
    }
    let w = b
        .request(
            Method::POST,
            "/api/superadmin/users/live/123/deposit",
            &[],
            "{\"amount\":100}",
        )
        .await;
    assert_eq!(w.status, 200);
    for (p, o) in paths.iter().zip(&before) {
        assert_ne!(b.get_with(p, &alice).await.text(), o, "{p}");
        assert!(changes(&a, p, &alice, o).await, "{p} on the other pod");
    }
    // A wallet service's balance_updates (a money-request approval): balance and portfolio.
    let bal = a.get_with(paths[0], &alice).await.text().to_string();
    let acct = a.get_with(paths[1], &alice).await.text().to_string();
    writes.fetch_add(1, Ordering::SeqCst);
    redis.cli(&[
        "PUBLISH",
        "balance_updates",
        r#"{"user_type":"live","user_id":123,"wallet_balance":"10100.50"}"#,
    ]);
    assert!(changes(&a, paths[0], &alice, &bal).await);
    assert!(changes(&b, paths[2], &alice, &bal).await);
    // The account record is not balance-tagged: still served from cache.
    assert_eq!(a.get_with(paths[1], &alice).await.text(), acct);
    // An admin group change (group_updates): everything of the user.
    writes.fetch_add(1, Ordering::SeqCst);
    redis.cli(&[
        "PUBLISH",
        "group_updates",
        r#"{"user_type":"live","user_id":"123","group_changed":true}"#,
    ]);
    assert!(changes(&a, paths[1], &alice, &acct).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_tier_seed_003() {
    let redis = RedisServer::start();
    let (origin, writes) = backend().await;
    let url = format!("redis://127.0.0.1:{}", redis.port());
    let cfg = || example("multi-tier", &origin.url(), &url, None);
    let a = Sidecache::start_with(cfg()).await;
    a.wait_ready().await;
    // Startup warming filled the symbols before ready.
    let r = a.get("/api/symbols/EURUSD").await;
    assert!(cached(&r), "{r:?}");
    let b = Sidecache::start_with(cfg()).await;
    b.wait_ready().await;
    // Symbols are shared through L2; prices are per pod (L1 only).
    assert!(cached(&b.get("/api/symbols/GBPUSD").await));
    a.get("/api/prices/EURUSD").await;
    assert!(cached(&a.get("/api/prices/EURUSD").await));
    let r = b.get("/api/prices/EURUSD").await;
    assert!(!r.header("cache-status").contains("detail=l2"), "{r:?}");
    // A tick invalidates the price (and the order book) on every pod.
    let price = a.get("/api/prices/EURUSD").await.text().to_string();
    a.get("/api/orderbook/EURUSD").await;
    writes.fetch_add(1, Ordering::SeqCst);
    redis.cli(&["PUBLISH", "ticks", r#"{"symbol":"EURUSD","bid":1.095}"#]);
    assert!(changes(&a, "/api/prices/EURUSD", &[], &price).await);
    // A symbol update through B: refreshed in the background, new everywhere.
    let spec = a.get("/api/symbols/EURUSD").await.text().to_string();
    let w = b
        .request(Method::PUT, "/api/symbols/EURUSD", &[], "{}")
        .await;
    assert_eq!(w.status, 200);
    assert!(changes(&a, "/api/symbols/EURUSD", &[], &spec).await);
    // The catch-all API route keys every path below it.
    let s1 = a.get("/api/stats/daily/volume").await;
    assert!(!cached(&s1));
    assert!(cached(&a.get("/api/stats/daily/volume").await));
    assert!(!cached(&a.get("/api/stats/daily").await));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trading_api_seed_004() {
    let redis = RedisServer::start();
    let (origin, writes) = backend().await;
    let url = format!("redis://127.0.0.1:{}", redis.port());
    let cfg = || example("trading-api", &origin.url(), &url, None);
    let a = Sidecache::start_with(cfg()).await;
    let b = Sidecache::start_with(cfg()).await;
    let user = [("authorization", "Bearer u42"), ("x-user-id", "42")];
    let positions = "/api/accounts/42/positions";
    let account = "/api/accounts/42";
    a.get_with(positions, &user).await;
    a.get_with(account, &user).await;
    assert!(cached(&a.get_with(positions, &user).await));
    // Cache in DB 0, limits in DB 2: nothing of the limits is in the cache's database.
    let db = |n: &str| redis.cli(&["-n", n, "--scan", "--pattern", "*"]);
    assert!(db("0").contains("}:e"));
    assert!(!db("2").is_empty(), "no limit state in DB 2");
    assert!(!db("2").contains("}:e"));
    assert!(db("0").lines().all(|k| k.starts_with("sidecache:")));

    // An execution for account 42 (the account is only in the channel name).
    let before = a.get_with(positions, &user).await.text().to_string();
    let acct = b.get_with(account, &user).await;
    assert!(cached(&acct), "{acct:?}");
    let acct = acct.text().to_string();
    writes.fetch_add(1, Ordering::SeqCst);
    redis.cli(&[
        "PUBLISH",
        "executions:42",
        r#"{"type":"execution","order_id":67890,"symbol":"EURUSD"}"#,
    ]);
    assert!(changes(&a, positions, &user, &before).await);
    assert!(changes(&b, account, &user, &acct).await);

    // An order through B: positions change; the order limit is 10/s per account.
    let before = a.get_with(positions, &user).await.text().to_string();
    let order = || b.request(Method::POST, "/api/accounts/42/orders", &user, "{}");
    assert_eq!(order().await.status, 200);
    assert!(changes(&a, positions, &user, &before).await);
    let mut denied = 0;
    for _ in 0..20 {
        if order().await.status == 429 {
            denied += 1;
        }
    }
    assert!(denied > 0, "the order limit never bit");
    // 100/min per user across the API: another user's budget is untouched...
    let other = [("x-user-id", "7")];
    assert_eq!(a.get_with("/api/symbols/EURUSD", &other).await.status, 200);
    // ...and user 42's runs out across methods and paths.
    let mut statuses = Vec::new();
    for i in 0..110 {
        let r = a.get_with(&format!("/api/symbols/S{i}"), &user).await;
        statuses.push(r.status);
    }
    assert!(statuses.contains(&429), "the API limit never bit");
}
