//! Warm start (and refresh after invalidation): fetch the configured paths through our own proxy listener at start, so they
//! land in L1 (from L2 when another pod already filled them, else from the upstream) before
//! real traffic arrives. Going through the listener means warmup takes exactly the path a
//! real request takes: route, key, L2, coalescing, store.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Semaphore;

use crate::config::WarmupConfig;

/// Fetches every configured path; returns (ok, failed) counts.
pub async fn run(config: &WarmupConfig, proxy: SocketAddr) -> (usize, usize) {
    fetch_all(&config.paths, config.concurrency, proxy).await
}

/// GETs every path through the proxy listener with at most `concurrency` in flight (warmup,
/// and refresh after invalidation); returns (ok, failed) counts.
pub async fn fetch_all(paths: &[String], concurrency: usize, proxy: SocketAddr) -> (usize, usize) {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for path in paths {
        let (client, permits) = (client.clone(), permits.clone());
        let uri = format!("http://{proxy}{path}");
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await.expect("semaphore open");
            let Ok(uri) = uri.parse::<http::Uri>() else {
                return false;
            };
            match client.get(uri.clone()).await {
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
