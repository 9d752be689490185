//! Invalidation across pods, measured: publish-to-apply lag between two pods on loopback, and a
//! consistency run (one writer changing a value through pod A, readers on pods A and B) that
//! counts reads of a value older than the last acknowledged write.
//!
//! `cargo bench --bench consistency` (needs `redis-server`; starts its own on a free port).
//! `DURATION=10` sets the run length in seconds. Results are recorded in `benches/RESULTS.md`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::Method;
use support::redis::RedisServer;
use support::*;

/// Other pods may serve the old value for at most this long after the write is acknowledged.
const BOUND: Duration = Duration::from_millis(5);

const CONFIG: &str = r#"
[pubsub]
heartbeat = "1s"
[[route]]
name = "group"
match = "GET /api/groups/{group}/{symbol}"
ttl = "1h"
tags = ["group:{group}:{symbol}"]
[[invalidate]]
match = "PUT /api/superadmin/groups/{group}/{symbol}"
tags = ["group:{group}:{symbol}"]
"#;

fn main() {
    let secs: u64 = std::env::var("DURATION")
        .ok()
        .and_then(|d| d.parse().ok())
        .unwrap_or(10);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(Duration::from_secs(secs)));
}

async fn run(span: Duration) {
    let redis = RedisServer::start();
    let value = Arc::new(AtomicU64::new(0));
    let v = value.clone();
    let origin = Origin::start(move |req| {
        if req.method == Method::PUT {
            v.store(
                String::from_utf8_lossy(&req.body).parse().unwrap(),
                Ordering::SeqCst,
            );
            Reply::json("ok")
        } else {
            Reply::json(v.load(Ordering::SeqCst).to_string())
        }
    })
    .await;
    let cfg = format!("{}{CONFIG}", l2_standalone(&redis.url()));
    let a = Arc::new(Sidecache::start(&origin, &cfg).await);
    let b = Arc::new(Sidecache::start(&origin, &cfg).await);
    let path = "/api/groups/VIP/EURUSD";

    // Acknowledged writes: (value, time the PUT returned).
    let acks: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::new(Mutex::new(vec![(0, Instant::now())]));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (a, acks, stop) = (a.clone(), acks.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                a.request(
                    Method::PUT,
                    "/api/superadmin/groups/VIP/EURUSD",
                    &[],
                    n.to_string(),
                )
                .await;
                acks.lock().unwrap().push((n, Instant::now()));
                // A write every 2 ms: readers see hits between writes.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            n
        })
    };
    let reader = |pod: Arc<Sidecache>, bound: Duration| {
        let (acks, stop) = (acks.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut reads, mut stale, mut hits) = (0u64, 0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                // The newest write acknowledged at least `bound` before this read started.
                let floor = acks
                    .lock()
                    .unwrap()
                    .iter()
                    .rev()
                    .find(|(_, at)| *at + bound <= started)
                    .map_or(0, |(v, _)| *v);
                let r = pod.get(path).await;
                let got: u64 = r.text().parse().unwrap();
                reads += 1;
                hits += u64::from(r.header("cache-status").contains("; hit"));
                if got < floor {
                    stale += 1;
                }
            }
            (reads, stale, hits)
        })
    };
    let on_a = reader(a.clone(), Duration::ZERO);
    let on_b = reader(b.clone(), BOUND);
    tokio::time::sleep(span).await;
    stop.store(true, Ordering::Relaxed);
    let writes = writer.await.unwrap();
    let (ra, sa, ha) = on_a.await.unwrap();
    let (rb, sb, hb) = on_b.await.unwrap();

    let m = b.metrics().await;
    let count = metric(&m, "sidecache_pubsub_lag_seconds_count", &[]);
    let buckets: Vec<(f64, f64)> = m
        .lines()
        .filter(|l| l.starts_with("sidecache_pubsub_lag_seconds_bucket"))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect();
    let quantile = |q: f64| {
        buckets
            .iter()
            .find(|(_, c)| *c >= q * count)
            .map_or(f64::NAN, |(le, _)| *le * 1000.0)
    };
    println!(
        "## Invalidation across pods ({}s, loopback, 2 pods, standalone Redis)",
        span.as_secs()
    );
    println!();
    println!("| figure | value |");
    println!("|---|---:|");
    println!("| acknowledged writes through pod A | {writes} |");
    println!("| peer messages applied on pod B | {count} |");
    println!(
        "| publish-to-apply lag p50 (bucket bound) | <= {} ms |",
        quantile(0.5)
    );
    println!(
        "| publish-to-apply lag p99 (bucket bound) | <= {} ms |",
        quantile(0.99)
    );
    println!("| reads on pod A / stale (older than the last acked write) | {ra} / {sa} |");
    println!(
        "| reads on pod B / stale (older than the last write acked {} ms before) | {rb} / {sb} |",
        BOUND.as_millis()
    );
    println!(
        "| hit share of reads on A / B | {:.0}% / {:.0}% |",
        100.0 * ha as f64 / ra.max(1) as f64,
        100.0 * hb as f64 / rb.max(1) as f64
    );
    assert_eq!(
        sa, 0,
        "pod A served a value older than its own acknowledged write"
    );
    assert_eq!(sb, 0, "pod B served a value older than the bound");
    assert!(quantile(0.99) <= 5.0, "lag p99 over 5 ms");
}
