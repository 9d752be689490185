//! sidecache: a sidecar caching proxy for Kubernetes.
//!
//! The application in the pod sends its backend calls to sidecache on `127.0.0.1`; sidecache
//! forwards them to the real backend and serves the configured read routes from memory.
//!
//! # Layout
//!
//! Dependencies point one way: `main → app → {proxy, admin, server} → {limit, invalidate, route, cache, warmup}
//! → {redis, client} → {config, metrics, error}`.
//!
//! - [`config`]: the file format, environment overrides, and validation that lists every problem.
//! - [`route`]: method + path templates → the route policy and its parameters.
//! - [`proxy`]: the request phases (route → key → lookup → coalesce → forward → store →
//!   respond) and the one place errors become responses.
//! - [`cache`]: keys, pure freshness, grace and storability policy, entries, L1, coalescing.
//! - [`invalidate`]: write-through rules, the URI tags of unsafe methods (RFC 9111 §4.4),
//!   events, admin purges, the cross-pod channel and gaps.
//! - [`limit`]: rate limits shared through Redis (GCRA), with a local fallback.
//! - [`admin`]: `/healthz`, `/readyz`, `/metrics` and `/admin/*` on their own port.
//! - [`metrics`]: every Prometheus family, registered in one place.
//! - [`server`]: HTTP/1.1 serving with graceful shutdown, for both listeners.
//! - [`redis`]: one Redis client (standalone, Sentinel, Cluster) with timeouts and a breaker.
//! - [`client`]: the HTTP/1.1 client to the upstream: kept-alive connections read by the
//!   request's own task.
//! - `tls`: rustls client settings (ring, system roots + `ca_file`) for HTTPS upstreams and
//!   `rediss://` (the `tls` feature, on by default).
//! - [`warmup`]: fetching configured paths through the proxy at start.
//! - [`reload`]: config reload on file change or SIGHUP, swapping the proxy atomically.
//! - [`app`]: wiring and the start/stop order.
//! - [`demo`]: `sidecache demo`, the proxy plus an example backend (outside the data path).
//!
//! # The life of a request
//!
//! ```text
//! accept → route ─┬─ not cached ─→ forward untouched (streamed) ─→ respond
//!                 └─ cached ─→ key → L1 ─┬─ fresh hit ─→ respond 200/304 (+ Age, ETag, Cache-Status)
//!                                        ├─ stale, in grace (its revalidate window) ─→ respond stale + one background refresh (conditional)
//!                                        ├─ stale / no-cache ─→ coalesce ─→ conditional request → 304: refresh → respond
//!                                        └─ miss ─→ coalesce ─→ forward → store if cacheable → respond
//!                                                        (upstream fails, stale in grace: respond stale)
//! ```

pub mod admin;
pub mod app;
pub mod cache;
pub mod client;
pub mod config;
pub mod demo;
pub mod error;
pub mod invalidate;
pub mod limit;
pub mod metrics;
pub mod net;
pub mod proxy;
pub mod redis;
pub mod reload;
pub mod route;
pub mod server;
pub mod telemetry;
#[cfg(feature = "tls")]
pub mod tls;
pub mod warmup;
