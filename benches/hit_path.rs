//! Micro-benchmarks of the L1 hit path, through the crate's public API only.
//!
//! Run: `cargo bench --bench hit_path` (about 30 s). Results: `benches/RESULTS.md`.
//!
//! - `router_find`: `Router::find` of `GET /api/groups/VIP/EURUSD` against the documented route
//!   table (the group route is the first of five).
//! - `key_derive`: `cache::key::derive` for that match (shared scope, no query).
//! - `l1_get`: `L1::get` of a stored `Entry` (map lookup under a shard read lock, deadline check, `Arc` clone).
//! - `respond_from_entry`: `respond::from_entry` alone (the entry's shape template cloned, its
//!   values, `Age` and `Cache-Status` written in), for attribution.
//! - `hit_path_full`: find + derive + L1 get + `policy::freshness` + `respond::from_entry`,
//!   i.e. what `Proxy::lookup` does for a fresh hit, minus hyper's parse/serialise and metrics.

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};

use sidecache::cache::policy::{self, Freshness};
use sidecache::cache::{clock, key, Entry, Meta, L1};
use sidecache::config::Config;
use sidecache::proxy::respond::{self, Served};
use sidecache::route::Router;

const CONFIG: &str = r#"
[listen]
proxy = "127.0.0.1:0"
admin = "127.0.0.1:0"

[upstream]
url = "http://127.0.0.1:8081"

[l1]
max_bytes = "64MiB"

[[route]]
name = "group"
match = "GET /api/groups/{group}/{symbol}"
ttl = "1h"
tags = ["group:{group}", "group:{group}:{symbol}"]

[[route]]
name = "group_symbols"
match = "GET /api/groups/{group}"
ttl = "1h"
tags = ["group:{group}"]

[[route]]
name = "balance"
match = "GET /api/users/{user_type}/{user_id}/balance"
ttl = "60s"
scope = "identity"
tags = ["user:{user_type}:{user_id}"]

[[route]]
name = "account"
match = "GET /api/users/{user_type}/{user_id}"
ttl = "5m"
scope = "identity"
tags = ["user:{user_type}:{user_id}"]

[[route]]
name = "price"
match = "GET /api/prices/{symbol}"
ttl = "1s"
tags = ["price:{symbol}"]
ignore_query = ["_"]
"#;

const PATH: &str = "/api/groups/VIP/EURUSD";

/// A ~600-byte JSON group record, like the one the load test's origin serves.
fn group_body() -> Bytes {
    let body = concat!(
        r#"{"group":"VIP","symbol":"EURUSD","description":"Euro vs US Dollar","digits":5,"#,
        r#""contract_size":100000,"margin_currency":"EUR","profit_currency":"USD","#,
        r#""spread":{"type":"floating","markup_points":2,"min_points":0,"max_points":50},"#,
        r#""commission":{"type":"per_lot","value":3.5,"currency":"USD","charge":"open_close"},"#,
        r#""swap":{"long":-6.91,"short":1.23,"triple_day":"wednesday","mode":"points"},"#,
        r#""margin":{"initial":0.01,"maintenance":0.005,"hedged":0.5,"leverage":100},"#,
        r#""volume":{"min":0.01,"max":100.0,"step":0.01,"limit":1000.0},"#,
        r#""trade_mode":"full","execution":"market","#,
        r#""updated_at":"2025-01-15T09:30:00Z","version":42}"#
    );
    Bytes::from_static(body.as_bytes())
}

/// The entry a fill from an nginx origin would have stored: hop-by-hop fields gone,
/// `Content-Length` and a strong `ETag` present.
fn group_entry() -> Entry {
    let body = group_body();
    let etag = policy::body_etag(&body);
    let mut h = HeaderMap::new();
    h.insert(header::SERVER, HeaderValue::from_static("nginx/1.22.1"));
    h.insert(
        header::DATE,
        HeaderValue::from_static("Wed, 15 Jan 2025 09:30:00 GMT"),
    );
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CONTENT_LENGTH, respond::number(body.len() as u64));
    h.insert(
        header::LAST_MODIFIED,
        HeaderValue::from_static("Wed, 15 Jan 2025 09:00:00 GMT"),
    );
    h.insert(header::ETAG, etag);
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    let meta = Meta {
        status: StatusCode::OK,
        last_modified: 1_736_931_600,
        stored_at_ms: clock::now_ms(),
        initial_age: 0,
        ttl_ms: 3_600_000,
        flags: policy::flags::LAST_MODIFIED,
        grace_ms: 0,
        swr_ms: 0,
    };
    let tags = ["group:VIP", "group:VIP:EURUSD"];
    Entry::new(meta, &h, &body, &tags, PATH)
}

/// Request headers as wrk sends them (Host only) plus what a typical client adds.
fn request_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
    h.insert(header::USER_AGENT, HeaderValue::from_static("app/1.0"));
    h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
    h
}

fn benches(c: &mut Criterion) {
    let config = Config::parse(CONFIG).expect("bench config is valid");
    let router = Router::new(&config.routes);
    let req_headers = request_headers();
    let l1 = L1::new(
        config.l1.max_bytes,
        config.l1.max_entry_bytes as u64,
        config.l1.max_age,
        config.pubsub.degraded_max_age,
        |_, _| {},
    );

    let m = router
        .find(&Method::GET, PATH)
        .expect("group route matches");
    assert_eq!(m.route.config.name, "group");
    let key = key::derive(&m.route.config, m.params.as_slice(), None, &req_headers).unwrap();
    let entry = group_entry();
    assert!(
        (550..=650).contains(&entry.body_len()),
        "{}",
        entry.body_len()
    );
    assert!(l1.insert_fill(key, entry.clone(), l1.begin_fill()));
    assert!(l1.get(&key, clock::now_ms()).is_some());

    let mut g = c.benchmark_group("hit_path");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));

    g.bench_function("router_find", |b| {
        b.iter(|| {
            let m = router.find(black_box(&Method::GET), black_box(PATH));
            black_box(m.map(|m| m.params.as_slice().len()))
        })
    });

    let route = &m.route.config;
    let params = m.params.as_slice();
    g.bench_function("key_derive", |b| {
        b.iter(|| {
            key::derive(
                black_box(route),
                black_box(params),
                black_box(None),
                black_box(&req_headers),
            )
        })
    });

    let now_ms = clock::now_ms();
    g.bench_function("l1_get", |b| b.iter(|| l1.get(black_box(&key), now_ms)));

    g.bench_function("respond_from_entry", |b| {
        b.iter(|| {
            respond::from_entry(
                black_box(&entry),
                black_box(&req_headers),
                false,
                black_box(12),
                black_box(3588),
                Served::Hit,
            )
        })
    });

    g.bench_function("hit_path_full", |b| {
        b.iter(|| {
            let m = router.find(black_box(&Method::GET), black_box(PATH))?;
            let key = key::derive(&m.route.config, m.params.as_slice(), None, &req_headers).ok()?;
            let now_ms = clock::now_ms();
            let entry = l1.get(&key, now_ms)?;
            if entry.is_marker() {
                return None;
            }
            match entry.freshness(now_ms) {
                Freshness::Fresh {
                    age_secs,
                    ttl_left_secs,
                } => Some(respond::from_entry(
                    &entry,
                    &req_headers,
                    false,
                    age_secs,
                    ttl_left_secs,
                    Served::Hit,
                )),
                _ => None,
            }
        })
    });

    g.finish();
}

criterion_group!(hit_path, benches);
criterion_main!(hit_path);
