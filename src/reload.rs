//! Config reload without restart: on SIGHUP, or when the config file's content changes
//! (polled every `[reload] interval`, which also sees a Kubernetes ConfigMap update through
//! its symlink swap), the file is validated and, if valid, a new [`Proxy`] is built and
//! swapped in atomically: requests already in flight finish on the old one, new requests get
//! the new one. An invalid file keeps the old configuration running, logs every problem and
//! sets `sidecache_config_valid` to 0.
//!
//! Reloaded: routes, TTLs, tags, write-through rules, events, limits, the upstream. Needs a
//! restart (logged when changed): `[listen]`, `[runtime]`, `[l1]` sizes, `[l2]`, `[pubsub]`,
//! `[shutdown]`, `[log]`, `[admin]`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::Notify;

use crate::config::{Config, EventConfig};
use crate::metrics::Metrics;
use crate::proxy::{Proxy, Shared};

pub struct Reloader {
    pub path: PathBuf,
    pub interval: Duration,
    pub current: Config,
    pub proxy: Arc<ArcSwap<Proxy>>,
    pub shared: Shared,
    /// The event rules the subscriber follows, and the bell that makes it resubscribe.
    pub events: Arc<ArcSwap<Vec<EventConfig>>>,
    pub resubscribe: Arc<Notify>,
    pub metrics: Arc<Metrics>,
}

impl Reloader {
    /// Runs for the life of the process.
    pub async fn run(mut self) {
        let mut hup = hangup();
        let mut seen = std::fs::read(&self.path).ok();
        let polling = !self.interval.is_zero();
        let mut tick = tokio::time::interval(self.interval.max(Duration::from_millis(50)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let cause = tokio::select! {
                _ = recv(&mut hup) => "SIGHUP",
                _ = tick.tick(), if polling => {
                    let now = std::fs::read(&self.path).ok();
                    if now.is_none() || now == seen {
                        continue;
                    }
                    seen = now;
                    "file change"
                }
            };
            self.reload(cause);
        }
    }

    fn reload(&mut self, cause: &str) {
        let new = match Config::load(Some(&self.path)) {
            Ok(c) => c,
            Err(errors) => {
                for problem in &errors.0 {
                    tracing::error!(path = %self.path.display(), cause, problem = %problem, "Config reload rejected; the running config stays.");
                }
                self.metrics.config_reload(false);
                return;
            }
        };
        for section in restart_only_changes(&self.current, &new) {
            tracing::warn!(
                section,
                "This section changed but only applies after a restart."
            );
        }
        let events_changed = format!("{:?}", self.current.events) != format!("{:?}", new.events);
        self.proxy.store(Arc::new(Proxy::new(&new, &self.shared)));
        if events_changed {
            self.events.store(Arc::new(new.events.clone()));
            self.resubscribe.notify_one();
        }
        tracing::info!(
            cause,
            routes = new.routes.len(),
            limits = new.limits.rules.len(),
            "Config reloaded."
        );
        self.metrics.config_reload(true);
        self.current = new;
    }
}

/// The sections that differ between `old` and `new` and are only read at start.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut differ = |name, a: String, b: String| {
        if a != b {
            out.push(name);
        }
    };
    differ(
        "listen",
        format!("{:?}", old.listen),
        format!("{:?}", new.listen),
    );
    differ(
        "runtime",
        format!("{:?}", old.runtime),
        format!("{:?}", new.runtime),
    );
    differ(
        "l1",
        format!("{:?}", (old.l1.max_bytes, old.l1.max_age)),
        format!("{:?}", (new.l1.max_bytes, new.l1.max_age)),
    );
    // Compared as values: their `Debug` hides the password, whose change needs a restart too.
    let l2_changed = if old.l2 == new.l2 { "" } else { "changed" };
    differ("l2", String::new(), l2_changed.into());
    let limits_changed = if old.limits.redis == new.limits.redis {
        ""
    } else {
        "changed"
    };
    differ("limits.redis", String::new(), limits_changed.into());
    differ(
        "pubsub",
        format!("{:?}", old.pubsub),
        format!("{:?}", new.pubsub),
    );
    differ(
        "shutdown",
        format!("{:?}", old.shutdown),
        format!("{:?}", new.shutdown),
    );
    differ("log", format!("{:?}", old.log), format!("{:?}", new.log));
    differ(
        "admin",
        format!("{:?}", old.admin.token.is_some()),
        format!("{:?}", new.admin.token.is_some()),
    );
    out
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = ();

#[cfg(unix)]
fn hangup() -> Hangup {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
}

#[cfg(not(unix))]
fn hangup() -> Hangup {}

#[cfg(unix)]
async fn recv(h: &mut Hangup) {
    match h {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn recv(_: &mut Hangup) {
    std::future::pending().await
}
