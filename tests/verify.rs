//! `POST /admin/verify` and `POST /admin/refresh` (issue 19, seed 001's consistency check and
//! force refresh): drift between the cache and the backend is found, reported, counted, and
//! repaired in every tier; identity-scoped entries are counted, never fetched.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Method;
use serde_json::Value;
use support::redis::RedisServer;
use support::*;

type Values = Arc<Mutex<HashMap<String, String>>>;

/// A backend whose answers the test changes behind the cache's back (no write, no event).
async fn drifting_backend() -> (Origin, Values) {
    let values: Values = Arc::default();
    let v = values.clone();
    let origin = Origin::start(move |r| {
        let value = v.lock().unwrap().get(&r.uri).cloned();
        Reply::json(value.unwrap_or_else(|| format!("{{\"path\":\"{}\",\"v\":1}}", r.uri)))
    })
    .await;
    (origin, values)
}

const ROUTES: &str = r#"
[[route]]
name = "group"
match = "GET /api/groups/{group}/{symbol}"
ttl = "1h"
tags = ["group:{group}", "group:{group}:{symbol}"]

[[route]]
name = "balance"
match = "GET /api/users/{id}/balance"
ttl = "1h"
scope = "identity"
tags = ["user:{id}", "group:VIP"]
"#;

fn token_config(redis: &RedisServer) -> String {
    let dir = std::env::temp_dir().join(format!("sidecache-verify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("token");
    std::fs::write(&token_file, "s3cret\n").unwrap();
    format!(
        "{}[pubsub]\nheartbeat = \"100ms\"\n[admin]\ntoken_file = \"{}\"\n{ROUTES}",
        l2_standalone(&redis.url()),
        token_file.display()
    )
}

async fn admin_post(pod: &Sidecache, path: &str, body: &str, token: Option<&str>) -> (u16, Value) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("authorization", a)])
        .unwrap_or_default();
    let r = send(
        &client(),
        pod.admin,
        Method::POST,
        path,
        &headers,
        body.to_string().into(),
    )
    .await;
    let v = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    (r.status, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_drift_reports_it_and_repairs_every_tier() {
    let redis = RedisServer::start();
    let (origin, values) = drifting_backend().await;
    let cfg = token_config(&redis);
    let a = Sidecache::start(&origin, &cfg).await;
    let b = Sidecache::start(&origin, &cfg).await;
    let paths: Vec<String> = (0..20).map(|i| format!("/api/groups/VIP/S{i}")).collect();
    for p in &paths {
        a.get(p).await;
        b.get(p).await;
    }
    a.get("/api/groups/STD/S0").await;
    for who in ["alice", "bob"] {
        a.get_with("/api/users/7/balance", &[("authorization", who)])
            .await;
    }
    // The backend changes three records without telling anyone.
    for p in &paths[..3] {
        values
            .lock()
            .unwrap()
            .insert(p.clone(), format!("{{\"path\":\"{p}\",\"v\":2}}"));
    }

    let body = r#"{"tag":"group:VIP"}"#;
    assert_eq!(admin_post(&a, "/admin/verify", body, None).await.0, 401);
    assert_eq!(
        admin_post(&a, "/admin/verify", body, Some("nope")).await.0,
        401
    );
    let hits = origin.hits();
    let (status, report) = admin_post(&a, "/admin/verify", body, Some("s3cret")).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["checked"], 20, "{report}");
    assert_eq!(report["identical"], 17, "{report}");
    assert_eq!(report["drifted"], 3, "{report}");
    assert_eq!(report["failed"], 0, "{report}");
    assert_eq!(report["identity_scoped"], 2, "counted only: {report}");
    assert_eq!(
        origin.hits() - hits,
        20,
        "one upstream request per shared entry"
    );
    let drifted: Vec<&str> = report["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["result"] == "drifted")
        .map(|e| e["url"].as_str().unwrap())
        .collect();
    for p in &paths[..3] {
        assert!(drifted.contains(&p.as_str()), "{p} not reported: {report}");
    }
    // Verifying changed nothing: the cache still serves the old values.
    assert!(a.get(&paths[0]).await.text().contains("\"v\":1"));
    let m = a.metrics().await;
    assert_eq!(
        metric(&m, "sidecache_verify_total", &[("result", "drifted")]),
        3.0
    );
    assert_eq!(
        metric(&m, "sidecache_verify_total", &[("result", "identity")]),
        2.0
    );

    // A route and a sample select too.
    let (_, by_route) =
        admin_post(&a, "/admin/verify", r#"{"route":"group"}"#, Some("s3cret")).await;
    assert_eq!(by_route["checked"], 21, "{by_route}");
    let (_, sample) = admin_post(&a, "/admin/verify", r#"{"sample":5}"#, Some("s3cret")).await;
    assert_eq!(
        sample["checked"].as_u64().unwrap() + sample["identity_scoped"].as_u64().unwrap(),
        5
    );
    let (status, _) = admin_post(
        &a,
        "/admin/verify",
        r#"{"tag":"x","route":"group"}"#,
        Some("s3cret"),
    )
    .await;
    assert_eq!(status, 400);

    // Repair: every tier of every pod gets the backend's value.
    let (_, repaired) = admin_post(
        &a,
        "/admin/verify",
        r#"{"tag":"group:VIP","repair":true}"#,
        Some("s3cret"),
    )
    .await;
    assert_eq!(repaired["repaired"], 3, "{repaired}");
    for p in &paths[..3] {
        let r = a.get(p).await;
        assert!(
            r.text().contains("\"v\":2"),
            "{p} on the repairing pod: {r:?}"
        );
        assert!(r.header("cache-status").contains("hit"), "{r:?}");
        let fresh = eventually(Duration::from_secs(5), async || {
            b.get(p).await.text().contains("\"v\":2")
        })
        .await;
        assert!(fresh, "{p} on the other pod");
    }
    let (_, again) = admin_post(&a, "/admin/verify", body, Some("s3cret")).await;
    assert_eq!(again["drifted"], 0, "{again}");
    assert_eq!(again["identical"], 20, "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_refetches_by_key_and_by_tag_now() {
    let redis = RedisServer::start();
    let (origin, values) = drifting_backend().await;
    let cfg = token_config(&redis);
    let a = Sidecache::start(&origin, &cfg).await;
    let b = Sidecache::start(&origin, &cfg).await;
    let one = "/api/groups/VIP/EURUSD";
    let other = "/api/groups/STD/EURUSD";
    for p in [one, other] {
        a.get(p).await;
        b.get(p).await;
    }
    for p in [one, other] {
        values
            .lock()
            .unwrap()
            .insert(p.to_string(), format!("\"{p} v2\""));
    }
    let body = format!(r#"{{"keys":["{one}"],"tags":["group:STD"]}}"#);
    assert_eq!(admin_post(&a, "/admin/refresh", &body, None).await.0, 401);
    let (status, r) = admin_post(&a, "/admin/refresh", &body, Some("s3cret")).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["fetched"], 1, "{r}");
    // The key was fetched before the answer: the next read is a hit with the new value.
    let got = a.get(one).await;
    assert!(
        got.text().contains("v2") && got.header("cache-status").contains("hit"),
        "{got:?}"
    );
    // The tag's entries are refetched in the background, here and on the other pod.
    for pod in [&a, &b] {
        for p in [one, other] {
            let ok = eventually(Duration::from_secs(5), async || {
                let r = pod.get(p).await;
                r.text().contains("v2") && r.header("cache-status").contains("hit")
            })
            .await;
            assert!(ok, "{p}");
        }
    }
    let (status, _) = admin_post(
        &a,
        "/admin/refresh",
        r#"{"keys":["/nowhere"]}"#,
        Some("s3cret"),
    )
    .await;
    assert_eq!(status, 422);
}

/// Issue 19's figure, not a check: `POST /admin/verify` over 10,000 entries, its time and its
/// upstream requests at the default concurrency. Run by `scripts/verify-figure.sh` (release).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: scripts/verify-figure.sh"]
async fn figure_verify_10000_entries() {
    let redis = RedisServer::start();
    let (origin, _) = drifting_backend().await;
    let cfg = token_config(&redis);
    let a = Arc::new(Sidecache::start(&origin, &cfg).await);
    let mut tasks = Vec::new();
    for w in 0..8 {
        let a = a.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..10_000).step_by(8) {
                a.get(&format!("/api/groups/VIP/S{i}")).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let before = origin.hits();
    let started = std::time::Instant::now();
    let (status, report) = admin_post(
        &a,
        "/admin/verify",
        r#"{"tag":"group:VIP"}"#,
        Some("s3cret"),
    )
    .await;
    let elapsed = started.elapsed();
    assert_eq!(status, 200);
    println!(
        "FIGURE verify: {} entries checked ({} identical, {} drifted, {} failed) in {:?} (server-side {} ms), {} upstream requests, concurrency {}",
        report["checked"],
        report["identical"],
        report["drifted"],
        report["failed"],
        elapsed,
        report["elapsed_ms"],
        origin.hits() - before,
        report["concurrency"],
    );
}
