//! Wiring only: builds each component from its config section, binds the listeners, and owns
//! the start and stop order.
//!
//! Start: metrics → L1, L2 → invalidator → proxy → admin listener → proxy listener →
//!        subscriber, reloader → warmup → ready.
//! Stop:  not ready → `drain_delay` → proxy listener closes → in-flight requests get
//!        `grace_period` → admin listener closes.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use arc_swap::ArcSwap;
use tokio::sync::Notify;

use crate::admin::{Admin, Health};
use crate::cache::{Coalescer, L1, L2};
use crate::config::Config;
use crate::invalidate::pubsub::Subscriber;
use crate::invalidate::Invalidator;
use crate::metrics::Metrics;
use crate::proxy::{Proxy, Shared};
use crate::redis::Redis;
use crate::reload::Reloader;
use crate::server::{self, ConnSettings};

/// The components built from a config, not yet listening.
#[derive(Debug)]
pub struct App {
    config: Config,
    /// The current configuration's proxy; a reload swaps it.
    pub proxy: Arc<ArcSwap<Proxy>>,
    pub admin: Admin,
    shared: Shared,
    /// Where the config came from, for reloads; `None` for the embedded default.
    config_path: Option<PathBuf>,
}

/// A running sidecache: its bound addresses and the handle to stop it.
#[derive(Debug)]
pub struct Running {
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub health: Arc<Health>,
    drain_delay: Duration,
    stop_proxy: watch::Sender<bool>,
    stop_admin: watch::Sender<bool>,
    proxy_task: JoinHandle<()>,
    admin_task: JoinHandle<()>,
}

impl App {
    pub fn build(config: Config) -> App {
        let metrics = Arc::new(Metrics::new());
        let l1 = {
            let metrics = metrics.clone();
            let degraded_max_age = config.pubsub.degraded_max_age;
            L1::new(
                config.l1.max_bytes,
                config.l1.max_entry_bytes as u64,
                config.l1.max_age,
                degraded_max_age,
                move |cause, n| metrics.l1_removed(cause, n),
            )
        };
        let pod_id = pod_id();
        let l2_redis = config
            .l2
            .as_ref()
            .map(|c| Redis::start(&c.redis("l2"), metrics.clone()));
        let l2 = l2_redis
            .clone()
            .zip(config.l2.as_ref())
            .map(|(redis, c)| L2::new(redis, c, &pod_id));
        // A section with a target of its own gets its own client (connection, breaker,
        // metrics label); otherwise it shares [l2]'s.
        let own = |c: &Option<crate::config::RedisConfig>| {
            c.as_ref().map(|c| Redis::start(c, metrics.clone()))
        };
        let pubsub_redis = own(&config.pubsub.redis).or_else(|| l2_redis.clone());
        let limits_redis = own(&config.limits.redis).or_else(|| l2_redis.clone());
        if pubsub_redis.is_some() {
            // Until the subscription is up, invalidations from other pods cannot arrive.
            l1.enter_degraded();
        }
        let invalidator = Arc::new(Invalidator::new(
            l1.clone(),
            l2.clone(),
            pubsub_redis,
            &pod_id,
            &config.pubsub.channel,
            metrics.clone(),
        ));
        let shared = Shared {
            l1: l1.clone(),
            hot: Arc::new(crate::cache::hot::HotKeys::new(if l2.is_some() {
                config.warmup.hot_keys
            } else {
                0
            })),
            l2,
            limits_redis,
            coalescer: Arc::new(Coalescer::default()),
            invalidator: invalidator.clone(),
            metrics: metrics.clone(),
            tunnels: {
                let (upgrades, open) = metrics.tunnel_handles();
                crate::server::Tunnels::new(Some(upgrades), Some(open))
            },
        };
        let proxy = Arc::new(ArcSwap::from_pointee(Proxy::new(&config, &shared)));
        let admin = Admin {
            health: Arc::new(Health::default()),
            metrics,
            l1,
            invalidator,
            proxy: proxy.clone(),
            token: config.admin.token.clone(),
            upstream: config.upstream.clone(),
        };
        App {
            config,
            proxy,
            admin,
            shared,
            config_path: None,
        }
    }

    /// Watches `path` (the file the config was loaded from) and reloads it on change or
    /// SIGHUP.
    pub fn reload_from(mut self, path: PathBuf) -> App {
        self.config_path = Some(path);
        self
    }

    /// Background work that lives as long as the process: the pub/sub subscriber (with L2),
    /// the config reloader (with a config file), and the periodic sweep of L1 (expired entries and
    /// the tag index).
    fn spawn_background(&self) {
        let l1 = self.admin.l1.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(30));
            loop {
                tick.tick().await;
                l1.sweep();
            }
        });
        let events = Arc::new(ArcSwap::from_pointee(self.config.events.clone()));
        let resubscribe = Arc::new(Notify::new());
        let pubsub_target = self
            .config
            .pubsub
            .redis
            .clone()
            .or_else(|| self.config.l2.as_ref().map(|c| c.redis("pubsub")));
        if let Some(redis) = pubsub_target {
            let subscriber = Subscriber {
                invalidator: self.admin.invalidator.clone(),
                events: events.clone(),
                resubscribe: resubscribe.clone(),
                pubsub: self.config.pubsub.clone(),
                redis,
                metrics: self.admin.metrics.clone(),
            };
            tokio::spawn(subscriber.run());
        }
        if let (Some(l2), true) = (&self.shared.l2, self.shared.hot.enabled()) {
            let (l2, hot) = (l2.clone(), self.shared.hot.clone());
            let every = self.config.warmup.hot_keys_every;
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    crate::cache::hot::publish(&hot, &l2).await;
                }
            });
        }
        if let Some(path) = &self.config_path {
            let reloader = Reloader {
                path: path.clone(),
                interval: self.config.reload_interval,
                current: self.config.clone(),
                proxy: self.proxy.clone(),
                shared: self.shared.clone(),
                events,
                resubscribe,
                metrics: self.admin.metrics.clone(),
            };
            tokio::spawn(reloader.run());
        }
    }

    /// Binds both listeners and starts serving; `/readyz` turns 200 once both accept.
    pub async fn start(self) -> io::Result<Running> {
        let settings = ConnSettings {
            max_header_bytes: self.config.listen.max_header_bytes,
            header_read_timeout: Duration::from_secs(30),
            // Outside the proxy's budget: probes are answered whatever the proxy's load.
            max_connections: None,
            metrics: Some(self.admin.metrics.listener("admin")),
            tunnels: None,
        };
        let grace = self.config.shutdown.grace_period;

        let admin_listener = bind(self.config.listen.admin, "listen.admin").await?;
        let admin_addr = admin_listener.local_addr()?;
        let (stop_admin, admin_rx) = watch::channel(false);
        let admin = self.admin.clone();
        let admin_task = tokio::spawn(server::serve(
            admin_listener,
            settings.clone(),
            move |req, _| {
                let admin = admin.clone();
                async move { admin.handle(req).await }
            },
            admin_rx,
            Duration::from_secs(1),
        ));

        let proxy_listener = bind(self.config.listen.proxy, "listen.proxy").await?;
        let proxy_addr = proxy_listener.local_addr()?;
        self.admin.invalidator.set_proxy_addr(proxy_addr);
        self.spawn_background();
        let (stop_proxy, proxy_rx) = watch::channel(false);
        let proxy = self.proxy.clone();
        let proxy_h2 = self.proxy.clone();
        let proxy_settings = ConnSettings {
            max_connections: Some(self.config.listen.max_connections),
            metrics: Some(self.admin.metrics.listener("proxy")),
            tunnels: Some(self.shared.tunnels.clone()),
            ..settings
        };
        let proxy_task = tokio::spawn(server::serve_each(
            proxy_listener,
            proxy_settings,
            move |req, peer| {
                // The configuration current when the request arrived serves all of it.
                proxy.load_full().handle(req, peer)
            },
            // The same for HTTP/2, as a handler of its own (see `server::serve_each`).
            move |req, peer| proxy_h2.load_full().handle(req, peer),
            proxy_rx,
            grace,
        ));

        let warmup = self.config.warmup.clone();
        // Hot keys from L2 hold readiness (at most `hot_keys_timeout`), warmup paths only when
        // they gate it (at most `timeout`).
        let hot_load = self.shared.l2.clone().filter(|_| self.shared.hot.enabled());
        let gated = hot_load.is_some() || (warmup.gate_readiness && !warmup.paths.is_empty());
        let health = self.admin.health.clone();
        if !gated {
            health.set_ready();
        }
        if gated || !warmup.paths.is_empty() {
            let l1 = self.admin.l1.clone();
            let proxy = self.proxy.clone();
            tokio::spawn(async move {
                if let Some(l2) = hot_load {
                    let load = async {
                        // Loaded before the subscription is up, entries would be dropped by it
                        // (what was stored before may have missed invalidations).
                        while l1.is_degraded() {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        let keys = crate::cache::hot::read(&l2, warmup.hot_keys).await;
                        let proxy = proxy.load();
                        let router = proxy.router();
                        let in_l1 = |e: &crate::cache::Entry| {
                            let path = e.path().split('?').next().unwrap_or_default();
                            router
                                .find(&http::Method::GET, path)
                                .is_some_and(|m| m.route.config.tiers.l1)
                        };
                        let n = crate::cache::hot::load(&l1, &l2, &keys, in_l1).await;
                        (keys.len(), n)
                    };
                    match tokio::time::timeout(warmup.hot_keys_timeout, load).await {
                        Ok((hot, loaded)) => {
                            tracing::info!(hot, loaded, "Hot keys loaded from L2 into L1.")
                        }
                        Err(_) => {
                            tracing::warn!(timeout = ?warmup.hot_keys_timeout, "Loading hot keys timed out; going on.")
                        }
                    }
                    if !warmup.gate_readiness || warmup.paths.is_empty() {
                        health.set_ready();
                    }
                }
                if !warmup.paths.is_empty() {
                    let work = async {
                        while l1.is_degraded() {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        crate::warmup::run(&warmup, proxy_addr).await
                    };
                    match tokio::time::timeout(warmup.timeout, work).await {
                        Ok((ok, failed)) => tracing::info!(ok, failed, "Warmup finished."),
                        Err(_) => {
                            tracing::warn!(timeout = ?warmup.timeout, "Warmup timed out; going ready anyway.")
                        }
                    }
                }
                health.set_ready();
                // Scheduled warming: expired entries are filled again before a request misses.
                if !warmup.every.is_zero() && !warmup.paths.is_empty() {
                    let mut tick = tokio::time::interval(warmup.every);
                    tick.tick().await;
                    loop {
                        tick.tick().await;
                        let (ok, failed) = crate::warmup::run(&warmup, proxy_addr).await;
                        tracing::debug!(ok, failed, "Scheduled warmup ran.");
                    }
                }
            });
        }
        for warning in &self.config.warnings {
            tracing::warn!(%warning, "Config warning.");
        }
        tracing::info!(proxy = %proxy_addr, admin = %admin_addr, upstream = %self.config.upstream.url,
            routes = self.config.routes.len(), "sidecache is ready.");
        Ok(Running {
            proxy_addr,
            admin_addr,
            health: self.admin.health.clone(),
            drain_delay: self.config.shutdown.drain_delay,
            stop_proxy,
            stop_admin,
            proxy_task,
            admin_task,
        })
    }
}

/// This process's identity among the pods: the pod name (`HOSTNAME` in Kubernetes) plus a
/// random suffix, so that two processes never share lease tokens or message origins.
fn pod_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "sidecache".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let seed = format!("{host}:{}:{nanos}", std::process::id());
    format!(
        "{host}-{:08x}",
        xxhash_rust::xxh3::xxh3_64(seed.as_bytes()) as u32
    )
}

async fn bind(addr: SocketAddr, key: &str) -> io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("{key} = {addr}: {e}")))
}

impl Running {
    /// The shutdown sequence; returns when every in-flight request finished or the grace
    /// period ran out.
    pub async fn shutdown(self) {
        self.health.start_draining();
        tracing::info!(drain_delay = ?self.drain_delay, "Draining: readiness is off.");
        tokio::time::sleep(self.drain_delay).await;
        let _ = self.stop_proxy.send(true);
        let _ = self.proxy_task.await;
        let _ = self.stop_admin.send(true);
        let _ = self.admin_task.await;
        tracing::info!("Stopped.");
    }

    /// Runs until SIGTERM or SIGINT, then shuts down.
    pub async fn run_until_signal(self) {
        wait_for_signal().await;
        self.shutdown().await;
    }
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received."),
        _ = int.recv() => tracing::info!("SIGINT received."),
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}
