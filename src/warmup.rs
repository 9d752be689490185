//! Warm start (and refresh after invalidation): fetch the configured paths through our own proxy listener at start, so they
//! land in L1 (from L2 when another pod already filled them, else from the upstream) before
//! real traffic arrives. Going through the listener means warmup takes exactly the path a
//! real request takes: route, key, L2, coalescing, store.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use tokio::sync::Semaphore;

use crate::client::{Client, ClientConfig};
use crate::config::WarmupConfig;

/// Fetches every configured path; returns (ok, failed) counts.
pub async fn run(config: &WarmupConfig, proxy: SocketAddr) -> (usize, usize) {
    fetch_all(&config.paths, config.concurrency, proxy).await
}

/// GETs every path through the proxy listener with at most `concurrency` in flight (warmup,
/// and refresh after invalidation); returns (ok, failed) counts.
pub async fn fetch_all(paths: &[String], concurrency: usize, proxy: SocketAddr) -> (usize, usize) {
    let client = Client::new(ClientConfig {
        host: proxy.ip().to_string(),
        port: proxy.port(),
        connect_timeout: Duration::from_secs(5),
        // The proxy answers within its own upstream timeout; this only ends a hung exchange.
        timeout: Duration::from_secs(60),
        body_timeout: Duration::from_secs(60),
        pool_max_idle: concurrency.max(1),
        pool_idle_timeout: Duration::from_secs(30),
        // Its answers are read, not stored: the proxy it talks to stores its own fills.
        fill_quiet: Duration::ZERO,
        tls: None,
        http2: false,
    });
    let host =
        http::HeaderValue::from_str(&proxy.to_string()).expect("an address is a header value");
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for path in paths {
        let (client, permits, host) = (client.clone(), permits.clone(), host.clone());
        let uri = path.clone();
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await.expect("semaphore open");
            let Ok(req) = http::Request::get(uri.as_str())
                .header(http::header::HOST, host)
                .body(Empty::<Bytes>::new())
            else {
                return false;
            };
            match client.send(req).await {
                Ok(resp) => {
                    let ok = resp.status().is_success();
                    let _ = resp.into_body().collect().await;
                    if !ok {
                        tracing::warn!(%uri, "Warmup request was not answered with 2xx.");
                    }
                    ok
                }
                Err(error) => {
                    tracing::warn!(%uri, %error, "Warmup request failed.");
                    false
                }
            }
        });
    }
    let (mut ok, mut failed) = (0, 0);
    while let Some(r) = tasks.join_next().await {
        if r.unwrap_or(false) {
            ok += 1;
        } else {
            failed += 1;
        }
    }
    (ok, failed)
}
