//! Serving stale when the backend is slow or down (grace, stale-while-revalidate,
//! stale-if-error, soft purge), and never after an invalidation; RFC 9213 targeted fields and
//! origin tags. Real origins (killed for real), real Redis.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Method;
use sidecache::config::Config;
use support::redis::RedisServer;
use support::*;

/// What the origin does with a GET.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Up,
    /// 503 for every GET (writes still succeed).
    Failing,
    /// Answers after this long.
    Slow(Duration),
}

/// An origin whose GETs answer the current value of their path (`v1` until written) with
/// `cache_control`, in the current mode; any other method stores its body as the value.
struct Backend {
    values: Mutex<std::collections::HashMap<String, String>>,
    mode: Mutex<Mode>,
    cache_control: Mutex<String>,
    gets: AtomicUsize,
}

impl Backend {
    fn new(cache_control: &str) -> Arc<Backend> {
        Arc::new(Backend {
            values: Mutex::default(),
            mode: Mutex::new(Mode::Up),
            cache_control: Mutex::new(cache_control.into()),
            gets: AtomicUsize::new(0),
        })
    }

    fn set_mode(&self, m: Mode) {
        *self.mode.lock().unwrap() = m;
    }

    fn set(&self, path: &str, v: &str) {
        self.values.lock().unwrap().insert(path.into(), v.into());
    }

    fn gets(&self) -> usize {
        self.gets.load(Ordering::SeqCst)
    }

    async fn origin(self: &Arc<Self>) -> Origin {
        let b = self.clone();
        Origin::start(move |req| {
            if req.method != Method::GET {
                let v = String::from_utf8_lossy(&req.body).into_owned();
                b.set(&req.uri.replace("/superadmin", ""), &v);
                return Reply::json("ok");
            }
            b.gets.fetch_add(1, Ordering::SeqCst);
            let value = b.values.lock().unwrap().get(&req.uri).cloned();
            let reply = Reply::json(value.unwrap_or_else(|| "v1".into()));
            let cc = b.cache_control.lock().unwrap().clone();
            let reply = if cc.is_empty() {
                reply
            } else {
                reply.header("cache-control", &cc)
            };
            match *b.mode.lock().unwrap() {
                Mode::Up => reply,
                Mode::Failing => Reply::json("down").status(503),
                Mode::Slow(d) => reply.delay(d),
            }
        })
        .await
    }
}

const PATH: &str = "/api/groups/VIP/EURUSD";

fn route(ttl: &str, grace: &str) -> String {
    format!(
        r#"
[[route]]
name = "group"
match = "GET /api/groups/{{group}}/{{symbol}}"
ttl = "{ttl}"
grace = "{grace}"
tags = ["group:{{group}}", "group:{{group}}:{{symbol}}"]

[[invalidate]]
match = "PUT /api/superadmin/groups/{{group}}/{{symbol}}"
tags = ["group:{{group}}:{{symbol}}"]
"#
    )
}

/// `[admin]` with the token `s3cret` in a file of this test's own.
fn admin_token(test: &str) -> String {
    let dir = std::env::temp_dir().join(format!("sidecache-stale-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("token");
    std::fs::write(&file, "s3cret\n").unwrap();
    format!("[admin]\ntoken_file = \"{}\"\n", file.display())
}

async fn purge(sc: &Sidecache, body: &str) -> Resp {
    send(
        &client(),
        sc.admin,
        Method::POST,
        "/admin/purge",
        &[
            ("content-type", "application/json"),
            ("authorization", "Bearer s3cret"),
        ],
        body.to_string().into(),
    )
    .await
}

/// The L1 state `explain` reports for `path` (`fresh`, `stale_while_revalidate`,
/// `stale_if_error`, `expired`, or `absent`).
async fn state(sc: &Sidecache, path: &str) -> String {
    let r = sc
        .admin_get(&format!("/admin/cache/explain?url={path}"))
        .await;
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    v["l1"]["state"].as_str().unwrap_or("absent").to_string()
}

async fn wait_state(sc: &Sidecache, path: &str, want: &str) {
    let ok = eventually(Duration::from_secs(10), async || {
        state(sc, path).await == want
    })
    .await;
    assert!(
        ok,
        "{path} never became {want} (now {})",
        state(sc, path).await
    );
}

fn outcome(m: &str, cache: &str) -> f64 {
    metric(m, "sidecache_requests_total", &[("cache", cache)])
}

#[tokio::test]
async fn origin_killed_stale_within_grace_then_502() {
    // The origin allows stale-if-error only: no serving stale before it fails.
    let backend = Backend::new("max-age=1, stale-if-error=2");
    let origin = backend.origin().await;
    let sc = Sidecache::start(&origin, &route("1h", "0s")).await;
    assert_eq!(sc.get(PATH).await.text(), "v1");
    origin.kill().await;
    wait_state(&sc, PATH, "stale_if_error").await;
    let r = sc.get(PATH).await;
    assert_eq!((r.status, r.text()), (200, "v1"), "{r:?}");
    let cs = r.header("cache-status");
    assert!(
        cs.contains("hit; fwd=stale; fwd-status=502; detail=stale-if-error-connect"),
        "{cs}"
    );
    assert!(
        r.headers.get("warning").is_none(),
        "RFC 9111 dropped Warning"
    );
    assert!(outcome(&sc.metrics().await, "stale_error") >= 1.0);
    // Past the grace: the error goes out, and stays.
    let gone = eventually(Duration::from_secs(10), async || {
        sc.get(PATH).await.status == 502
    })
    .await;
    assert!(gone, "stale served past its grace");
    assert_eq!(sc.get(PATH).await.status, 502);
}

#[tokio::test]
async fn a_server_error_or_a_slow_origin_gets_the_stale_entry() {
    let backend = Backend::new("max-age=1, stale-if-error=60");
    let origin = backend.origin().await;
    let config = Config::parse(&format!(
        "[listen]\nproxy = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n[upstream]\nurl = \"{}\"\ntimeout = \"300ms\"\n{}",
        origin.url(),
        route("1h", "0s")
    ))
    .unwrap();
    let sc = Sidecache::start_with(config).await;
    assert_eq!(sc.get(PATH).await.text(), "v1");
    wait_state(&sc, PATH, "stale_if_error").await;
    backend.set_mode(Mode::Slow(Duration::from_secs(2)));
    let r = sc.get(PATH).await;
    assert_eq!((r.status, r.text()), (200, "v1"));
    assert!(
        r.header("cache-status")
            .contains("fwd-status=504; detail=stale-if-error-timeout"),
        "{r:?}"
    );
    backend.set_mode(Mode::Failing);
    let r = sc.get(PATH).await;
    assert_eq!((r.status, r.text()), (200, "v1"));
    assert!(
        r.header("cache-status")
            .contains("fwd-status=503; detail=stale-if-error-upstream_status"),
        "{r:?}"
    );
    // Up again: the next request refreshes.
    backend.set_mode(Mode::Up);
    backend.set(PATH, "v2");
    assert_eq!(sc.get(PATH).await.text(), "v2");
    assert_eq!(outcome(&sc.metrics().await, "stale_error"), 2.0);
}

#[tokio::test]
async fn stale_while_revalidate_is_one_upstream_request_for_100_concurrent_reads() {
    let backend = Backend::new("");
    let origin = backend.origin().await;
    let sc = Arc::new(Sidecache::start(&origin, &route("300ms", "30s")).await);
    assert_eq!(sc.get(PATH).await.text(), "v1");
    wait_state(&sc, PATH, "stale_while_revalidate").await;
    backend.set(PATH, "v2");
    // The refresh takes a while: every read is answered before it is done.
    backend.set_mode(Mode::Slow(Duration::from_secs(1)));
    let reads = (0..100).map(|_| {
        let sc = sc.clone();
        tokio::spawn(async move { sc.get(PATH).await })
    });
    for r in futures_util::future::join_all(reads).await {
        let r = r.unwrap();
        assert_eq!((r.status, r.text()), (200, "v1"));
        assert_eq!(
            r.header("cache-status"),
            "sidecache; hit; fwd=stale; detail=stale-while-revalidate"
        );
    }
    assert_eq!(
        state(&sc, PATH).await,
        "stale_while_revalidate",
        "the reads did not wait for the refresh"
    );
    let refreshed = eventually(Duration::from_secs(5), async || {
        sc.get(PATH).await.text() == "v2"
    })
    .await;
    assert!(refreshed);
    assert_eq!(backend.gets(), 2, "one fill, one refresh");
    let m = sc.metrics().await;
    assert!(outcome(&m, "stale") >= 100.0);
}

#[tokio::test]
async fn two_pods_share_one_refresh_through_the_lease() {
    let redis = RedisServer::start();
    let backend = Backend::new("");
    let origin = backend.origin().await;
    let extra = format!("{}{}", l2_standalone(&redis.url()), route("1s", "30s"));
    let a = Arc::new(Sidecache::start(&origin, &extra).await);
    let b = Arc::new(Sidecache::start(&origin, &extra).await);
    assert_eq!(a.get(PATH).await.text(), "v1");
    assert!(b.get(PATH).await.header("cache-status").contains("l2"));
    // Redis keeps the entry through its grace.
    let keys = redis.cli(&["--scan", "--pattern", "sidecache:*}:e"]);
    let pttl: i64 = redis
        .cli(&["PTTL", keys.lines().next().unwrap()])
        .parse()
        .unwrap();
    assert!(pttl > 25_000, "L2 TTL {pttl} ms does not include the grace");
    wait_state(&a, PATH, "stale_while_revalidate").await;
    wait_state(&b, PATH, "stale_while_revalidate").await;
    backend.set(PATH, "v2");
    backend.set_mode(Mode::Slow(Duration::from_millis(500)));
    let reads = (0..20).map(|i| {
        let pod = if i % 2 == 0 { a.clone() } else { b.clone() };
        tokio::spawn(async move { pod.get(PATH).await.status })
    });
    for s in futures_util::future::join_all(reads).await {
        assert_eq!(s.unwrap(), 200);
    }
    for pod in [&a, &b] {
        let refreshed = eventually(Duration::from_secs(5), async || {
            pod.get(PATH).await.text() == "v2"
        })
        .await;
        assert!(refreshed);
    }
    assert_eq!(backend.gets(), 2, "one fill, one refresh across both pods");
}

/// Every invalidation path ends the grace of what it invalidates: a write through this pod,
/// an admin purge, an event, and each of them seen on another pod.
#[tokio::test]
async fn an_entry_invalidated_during_its_grace_is_never_served_again() {
    let redis = RedisServer::start();
    let backend = Backend::new("");
    let origin = backend.origin().await;
    let extra = format!(
        "{}[pubsub]\nheartbeat = \"100ms\"\n{}{}\n[[event]]\nchannel = \"group_updates\"\ntags = [\"group:{{group}}\"]\n",
        l2_standalone(&redis.url()),
        admin_token("invalidated"),
        route("300ms", "1h"),
    );
    let a = Sidecache::start(&origin, &extra).await;
    let b = Sidecache::start(&origin, &extra).await;
    let paths = [
        "/api/groups/VIP/EURUSD",
        "/api/groups/STD/EURUSD",
        "/api/groups/GLD/EURUSD",
    ];
    for p in paths {
        assert_eq!(a.get(p).await.text(), "v1");
        assert_eq!(b.get(p).await.text(), "v1");
    }
    for p in paths {
        wait_state(&a, p, "stale_while_revalidate").await;
        wait_state(&b, p, "stale_while_revalidate").await;
    }
    backend.set_mode(Mode::Failing);
    for p in paths {
        for pod in [&a, &b] {
            let r = pod.get(p).await;
            assert_eq!((r.status, r.text()), (200, "v1"), "served stale before");
        }
    }
    // A write through A, a purge, an event.
    let w = a
        .request(Method::PUT, "/api/superadmin/groups/VIP/EURUSD", &[], "v2")
        .await;
    assert_eq!(w.status, 200);
    assert_eq!(
        purge(&a, r#"{"tags":["group:STD:EURUSD"]}"#).await.status,
        200
    );
    redis.cli(&["PUBLISH", "group_updates", r#"{"group":"GLD"}"#]);
    // Gone here at once (the write and the purge), everywhere after propagation; then never
    // again, though the origin keeps failing.
    for p in &paths[..2] {
        let r = a.get(p).await;
        assert_ne!(
            r.text(),
            "v1",
            "{p} served stale after its invalidation: {r:?}"
        );
    }
    for pod in [&a, &b] {
        for p in paths {
            let gone = eventually(Duration::from_secs(5), async || {
                pod.get(p).await.text() != "v1"
            })
            .await;
            assert!(gone, "{p} still served stale");
            for _ in 0..5 {
                let r = pod.get(p).await;
                assert_eq!(r.status, 503, "{p}: {r:?}");
            }
        }
    }
}

#[tokio::test]
async fn must_revalidate_is_never_served_stale() {
    let backend = Backend::new("max-age=1, must-revalidate, stale-if-error=60");
    let origin = backend.origin().await;
    let sc = Sidecache::start(&origin, &route("1h", "1h")).await;
    assert_eq!(sc.get(PATH).await.text(), "v1");
    let r = sc
        .admin_get(&format!("/admin/cache/explain?url={PATH}"))
        .await;
    assert!(r.text().contains("never: no grace"), "{}", r.text());
    backend.set_mode(Mode::Failing);
    let expired = eventually(Duration::from_secs(5), async || {
        sc.get(PATH).await.status == 503
    })
    .await;
    assert!(expired);
    let m = sc.metrics().await;
    assert_eq!(outcome(&m, "stale") + outcome(&m, "stale_error"), 0.0);
}

#[tokio::test]
async fn soft_purge_serves_stale_while_one_refresh_runs() {
    let backend = Backend::new("");
    let origin = backend.origin().await;
    let extra = format!("{}{}", admin_token("soft"), route("1h", "30s"));
    let sc = Arc::new(Sidecache::start(&origin, &extra).await);
    assert_eq!(sc.get(PATH).await.text(), "v1");
    backend.set(PATH, "v2");
    backend.set_mode(Mode::Slow(Duration::from_millis(500)));
    let r = purge(&sc, r#"{"tags":["group:VIP"],"soft":true}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(state(&sc, PATH).await, "stale_while_revalidate");
    let reads = (0..20).map(|_| {
        let sc = sc.clone();
        tokio::spawn(async move { sc.get(PATH).await })
    });
    for r in futures_util::future::join_all(reads).await {
        let r = r.unwrap();
        assert_eq!(r.text(), "v1");
        assert!(r.header("cache-status").contains("detail=soft-purged"));
    }
    let refreshed = eventually(Duration::from_secs(5), async || {
        sc.get(PATH).await.text() == "v2"
    })
    .await;
    assert!(refreshed);
    assert_eq!(backend.gets(), 2, "one fill, one refresh");
    assert!(outcome(&sc.metrics().await, "soft_purged") >= 20.0);
    // `soft` with `all` is refused; a hard purge is still a purge.
    assert_eq!(purge(&sc, r#"{"all":true,"soft":true}"#).await.status, 400);
}

#[tokio::test]
async fn targeted_cache_control_and_surrogate_keys() {
    let origin = Origin::start(|req| {
        let reply = Reply::json("x")
            .header("cache-control", "no-store")
            .header("surrogate-key", "feed-7 prices");
        if req.uri.contains("own") {
            reply
                .header("cdn-cache-control", "max-age=60")
                .header("sidecache-cache-control", "no-store")
        } else {
            reply.header("cdn-cache-control", "max-age=60")
        }
    })
    .await;
    let extra = format!("{}{}", admin_token("targeted"), route("1h", "0s"));
    let sc = Sidecache::start(&origin, &extra).await;
    let first = sc.get(PATH).await;
    assert!(first.header("cache-status").contains("stored"), "{first:?}");
    assert_eq!(first.header("cdn-cache-control"), "max-age=60", "passed on");
    assert!(first.headers.get("surrogate-key").is_none(), "stripped");
    assert!(sc.get(PATH).await.header("cache-status").contains("hit"));
    // The targeted field beats CDN-Cache-Control.
    let own = "/api/groups/VIP/own";
    assert!(sc
        .get(own)
        .await
        .header("cache-status")
        .contains("no_store"));
    // The origin's tags purge it.
    assert_eq!(purge(&sc, r#"{"tags":["feed-7"]}"#).await.status, 200);
    assert!(sc.get(PATH).await.header("cache-status").contains("stored"));
    assert_eq!(origin.hits(), 3);
}

/// A stale identity-scoped entry is its caller's only: the key holds the identity, so another
/// caller never gets it, not even when the origin is down.
#[tokio::test]
async fn identity_scoped_stale_entries_go_to_their_own_caller_only() {
    let origin = Origin::start(|req| {
        let who = req.headers["authorization"].to_str().unwrap().to_string();
        Reply::json(format!("balance of {who}"))
            .header("cache-control", "max-age=1, stale-if-error=60")
    })
    .await;
    let extra = r#"
[[route]]
name = "balance"
match = "GET /api/users/{id}/balance"
ttl = "1h"
scope = "identity"
"#;
    let sc = Sidecache::start(&origin, extra).await;
    let path = "/api/users/7/balance";
    let alice = [("authorization", "Bearer alice")];
    let bob = [("authorization", "Bearer bob")];
    assert_eq!(
        sc.get_with(path, &alice).await.text(),
        "balance of Bearer alice"
    );
    origin.kill().await;
    let stale = eventually(Duration::from_secs(5), async || {
        sc.get_with(path, &alice)
            .await
            .header("cache-status")
            .contains("stale-if-error")
    })
    .await;
    assert!(stale);
    let r = sc.get_with(path, &alice).await;
    assert_eq!(r.text(), "balance of Bearer alice");
    let r = sc.get_with(path, &bob).await;
    assert_eq!(r.status, 502, "{r:?}");
    assert!(!r.text().contains("alice"));
}

/// A soft purge reaches the other pods and Redis: every pod serves the marked entry while one
/// refresh (across both pods) runs.
#[tokio::test]
async fn soft_purge_reaches_every_pod_and_refreshes_once() {
    let redis = RedisServer::start();
    let backend = Backend::new("");
    let origin = backend.origin().await;
    let extra = format!(
        "{}[pubsub]\nheartbeat = \"100ms\"\n{}{}",
        l2_standalone(&redis.url()),
        admin_token("soft-pods"),
        route("1h", "30s"),
    );
    let a = Sidecache::start(&origin, &extra).await;
    let b = Sidecache::start(&origin, &extra).await;
    assert_eq!(a.get(PATH).await.text(), "v1");
    assert!(b.get(PATH).await.header("cache-status").contains("l2"));
    backend.set(PATH, "v2");
    backend.set_mode(Mode::Slow(Duration::from_millis(500)));
    let r = purge(&a, r#"{"keys":["/api/groups/VIP/EURUSD"],"soft":true}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let marked = eventually(Duration::from_secs(5), async || {
        state(&b, PATH).await == "stale_while_revalidate"
    })
    .await;
    assert!(marked, "the other pod never marked its copy");
    for pod in [&a, &b] {
        let r = pod.get(PATH).await;
        assert!(
            r.text() == "v2" || r.header("cache-status").contains("soft-purged"),
            "{r:?}"
        );
    }
    for pod in [&a, &b] {
        let refreshed = eventually(Duration::from_secs(5), async || {
            pod.get(PATH).await.text() == "v2"
        })
        .await;
        assert!(refreshed);
    }
    assert_eq!(backend.gets(), 2, "one fill, one refresh across both pods");
}

/// A background refresh that read the old value before a write was acknowledged must not
/// store it afterwards: the write's invalidation wins, and only the new value is served.
#[tokio::test]
async fn a_refresh_racing_a_write_stores_nothing() {
    let backend = Backend::new("");
    let origin = backend.origin().await;
    let sc = Sidecache::start(&origin, &route("300ms", "1h")).await;
    assert_eq!(sc.get(PATH).await.text(), "v1");
    wait_state(&sc, PATH, "stale_while_revalidate").await;
    // The origin reads the value when the request arrives and answers 800 ms later.
    backend.set_mode(Mode::Slow(Duration::from_millis(800)));
    assert_eq!(sc.get(PATH).await.text(), "v1", "stale, refresh started");
    let arrived = eventually(Duration::from_secs(5), async || backend.gets() == 2).await;
    assert!(arrived, "the refresh never reached the origin");
    let w = sc
        .request(Method::PUT, "/api/superadmin/groups/VIP/EURUSD", &[], "v2")
        .await;
    assert_eq!(w.status, 200);
    // From here on only v2: the read right after the write, and after the refresh (which
    // carries v1) has come back.
    assert_eq!(sc.get(PATH).await.text(), "v2");
    let done = eventually(Duration::from_secs(5), async || {
        state(&sc, PATH).await != "absent" || backend.gets() >= 3
    })
    .await;
    assert!(done);
    backend.set_mode(Mode::Up);
    for _ in 0..5 {
        assert_eq!(sc.get(PATH).await.text(), "v2");
    }
}

/// In Redis, a soft purge leaves a marked copy (a pod that never saw the entry serves it when
/// the origin fails); a hard purge leaves nothing.
#[tokio::test]
async fn redis_keeps_a_soft_purged_copy_and_no_hard_purged_one() {
    let redis = RedisServer::start();
    let backend = Backend::new("");
    let origin = backend.origin().await;
    let extra = format!(
        "{}[pubsub]\nheartbeat = \"100ms\"\n{}{}",
        l2_standalone(&redis.url()),
        admin_token("soft-l2"),
        route("1h", "30s"),
    );
    let a = Sidecache::start(&origin, &extra).await;
    let other = "/api/groups/STD/EURUSD";
    assert_eq!(a.get(PATH).await.text(), "v1");
    assert_eq!(a.get(other).await.text(), "v1");
    backend.set_mode(Mode::Failing);
    assert_eq!(
        purge(&a, r#"{"tags":["group:VIP"],"soft":true}"#)
            .await
            .status,
        200
    );
    assert_eq!(purge(&a, r#"{"tags":["group:STD"]}"#).await.status, 200);
    let b = Sidecache::start(&origin, &extra).await;
    let r = b.get(PATH).await;
    assert_eq!((r.status, r.text()), (200, "v1"), "{r:?}");
    assert!(r.header("cache-status").contains("fwd=stale"), "{r:?}");
    let r = b.get(other).await;
    assert_eq!(r.status, 503, "{r:?}");
    let r = a.get(other).await;
    assert_eq!(r.status, 503, "{r:?}");
}

/// A pod that only finds the entry in Redis, past its freshness but in its grace, answers it
/// at once and refreshes it in the background; the other pod then takes the refresh from
/// Redis instead of asking the origin again.
#[tokio::test]
async fn a_stale_entry_found_in_redis_is_answered_at_once_and_refreshed_once() {
    let redis = RedisServer::start();
    let backend = Backend::new("");
    let origin = backend.origin().await;
    let extra = format!("{}{}", l2_standalone(&redis.url()), route("300ms", "30s"));
    let a = Sidecache::start(&origin, &extra).await;
    let b = Sidecache::start(&origin, &extra).await;
    assert_eq!(a.get(PATH).await.text(), "v1");
    wait_state(&a, PATH, "stale_while_revalidate").await;
    backend.set(PATH, "v2");
    backend.set_mode(Mode::Slow(Duration::from_millis(800)));
    let r = b.get(PATH).await;
    assert_eq!((r.status, r.text()), (200, "v1"), "{r:?}");
    assert_eq!(
        r.header("cache-status"),
        "sidecache; hit; fwd=stale; detail=stale-while-revalidate"
    );
    for pod in [&b, &a] {
        let refreshed = eventually(Duration::from_secs(5), async || {
            pod.get(PATH).await.text() == "v2"
        })
        .await;
        assert!(refreshed);
    }
    assert_eq!(backend.gets(), 2, "one fill, one refresh");
}

/// A 304 keeps the origin's tags, and an entry with tags of its own stays out of Redis after
/// a revalidation as after a fill: a purge by a `Surrogate-Key` tag must reach every copy
/// (the refreshed copy once carried the route's tags only and went to L2, where no purge by
/// the origin's tag could find it).
#[tokio::test]
async fn a_revalidated_entry_keeps_its_origin_tags_and_stays_out_of_l2() {
    let redis = RedisServer::start();
    let origin = Origin::start(|req| {
        if req.headers.get("if-none-match").map(|v| v.as_bytes()) == Some(b"\"v1\"") {
            return Reply::json("").status(304).header("etag", "\"v1\"");
        }
        Reply::json("v1")
            .header("etag", "\"v1\"")
            .header("cache-control", "max-age=1")
            .header("surrogate-key", "product-42")
    })
    .await;
    let extra = format!(
        "{}{}{}",
        l2_standalone(&redis.url()),
        admin_token("revalidated-tags"),
        route("1s", "0s")
    );
    let a = Sidecache::start(&origin, &extra).await;
    let b = Sidecache::start(&origin, &extra).await;
    assert!(a.get(PATH).await.header("cache-status").contains("stored"));
    let revalidated = eventually(Duration::from_secs(5), async || {
        a.get(PATH)
            .await
            .header("cache-status")
            .contains("fwd-status=304")
    })
    .await;
    assert!(revalidated, "the entry was never revalidated");
    assert_eq!(purge(&a, r#"{"tags":["product-42"]}"#).await.status, 200);
    for pod in [&a, &b] {
        let r = pod.get(PATH).await;
        assert!(
            !r.header("cache-status").starts_with("sidecache; hit"),
            "purged by its origin tag, yet served: {r:?}"
        );
    }
}

/// A route kept out of Redis (`tiers = ["l1"]`) stays out of it when a stale entry is
/// refreshed in the background (the refresh once took the Redis lease and stored there).
#[tokio::test]
async fn a_background_refresh_of_an_l1_only_route_never_writes_redis() {
    let redis = RedisServer::start();
    let backend = Backend::new("");
    let origin = backend.origin().await;
    let extra = format!(
        "{}{}",
        l2_standalone(&redis.url()),
        route("1s", "30s").replacen("grace = \"30s\"", "grace = \"30s\"\ntiers = [\"l1\"]", 1)
    );
    let sc = Sidecache::start(&origin, &extra).await;
    assert_eq!(sc.get(PATH).await.text(), "v1");
    wait_state(&sc, PATH, "stale_while_revalidate").await;
    backend.set(PATH, "v2");
    let r = sc.get(PATH).await;
    assert!(r.header("cache-status").contains("fwd=stale"), "{r:?}");
    let refreshed = eventually(Duration::from_secs(5), async || {
        sc.get(PATH).await.text() == "v2"
    })
    .await;
    assert!(refreshed);
    let keys = redis.cli(&["--scan", "--pattern", "sidecache:*}:[el]"]);
    assert!(keys.trim().is_empty(), "entries or leases in Redis: {keys}");
}
