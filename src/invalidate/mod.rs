//! Invalidation: write-through rules, events from other services, admin purges, and the
//! cross-pod channel that carries them, with gap detection.
//!
//! ```text
//! write through this pod ─┐
//! admin purge ────────────┼─→ L2 (entries + leases) → L1 here → publish ─→ other pods: L1
//! event (every pod) ──────┘                      (events: every pod does L2 + L1, no publish)
//! pub/sub gap ───────────→ L1 dropped, degraded until subscribed again, L2 namespace re-read
//! ```
//!
//! The invalidating pod finishes all three steps before the write's response is returned, so
//! the caller reads its own write from this pod at once and from other pods once the message
//! has arrived there. Every Redis step is bounded by `l2.timeout`; if Redis does not answer,
//! L1 here is still invalidated, and the other pods' subscriptions are broken too, which they
//! treat as a gap.

pub mod events;
pub mod message;
pub mod pubsub;
pub mod rules;
pub mod uri;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use http::Method;

use crate::cache::{clock, key, CacheKey, Entry, L1, L2};
use crate::config::Scope;
use crate::metrics::Metrics;
use crate::route::Router;
use message::{Kind, Message};

/// What triggered an invalidation: the `source` label of `sidecache_invalidations_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A write passed through this pod.
    Write,
    /// A write passed through this pod whose outcome is unknown (the upstream timed out or
    /// broke the exchange): it may have committed, so its tags go all the same.
    WriteUncertain,
    /// An event from another service.
    Event,
    /// `POST /admin/purge`.
    Admin,
    /// Messages may have been missed.
    Gap,
    /// Another sidecache pod's message.
    Peer,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Write => "write",
            Source::WriteUncertain => "write_uncertain",
            Source::Event => "event",
            Source::Admin => "admin",
            Source::Gap => "gap",
            Source::Peer => "peer",
        }
    }
}

/// What to invalidate.
#[derive(Debug, Clone, Default)]
pub struct Target {
    pub tags: Vec<String>,
    /// Single entries: the key and the tags of its route (they place it in L2).
    pub keys: Vec<(CacheKey, Vec<String>)>,
    pub all: bool,
}

pub struct Invalidator {
    l1: L1,
    l2: Option<L2>,
    /// Where the pods' channel is published: `[pubsub.redis]`, else `[l2]`'s client.
    pubsub: Option<crate::redis::Redis>,
    /// The current configuration's routes (swapped on reload).
    router: ArcSwap<Router>,
    pod: String,
    channel: String,
    metrics: Arc<Metrics>,
    /// The proxy listener, through which refreshes are fetched; set once it is bound.
    proxy_addr: OnceLock<SocketAddr>,
}

impl std::fmt::Debug for Invalidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Invalidator")
            .field("pod", &self.pod)
            .finish()
    }
}

impl Invalidator {
    pub fn new(
        l1: L1,
        l2: Option<L2>,
        pubsub: Option<crate::redis::Redis>,
        pod: &str,
        channel: &str,
        metrics: Arc<Metrics>,
    ) -> Invalidator {
        Invalidator {
            l1,
            l2,
            pubsub,
            router: ArcSwap::from_pointee(Router::default()),
            pod: pod.to_string(),
            channel: channel.to_string(),
            metrics,
            proxy_addr: OnceLock::new(),
        }
    }

    pub fn set_router(&self, router: Arc<Router>) {
        self.router.store(router);
    }

    pub fn set_proxy_addr(&self, addr: SocketAddr) {
        let _ = self.proxy_addr.set(addr);
    }

    /// The proxy listener (refreshes and admin repairs fetch through it); `None` before it
    /// is bound.
    pub fn proxy_addr(&self) -> Option<SocketAddr> {
        self.proxy_addr.get().copied()
    }

    pub fn pod(&self) -> &str {
        &self.pod
    }

    pub fn l1(&self) -> &L1 {
        &self.l1
    }

    pub fn l2(&self) -> Option<&L2> {
        self.l2.as_ref()
    }

    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// This pod's invalidation (a write or an admin purge): L2, L1 here, then the other pods.
    ///
    /// L2 goes first: a read on this pod between the two steps then either still finds the
    /// old entry in L1 (the write is not acknowledged yet) or misses both tiers; the other
    /// order would let such a read copy the old L2 entry back into the just-cleared L1.
    pub async fn invalidate(&self, target: Target, source: Source, refresh: bool) {
        let ns = self.invalidate_l2(&target).await;
        let removed = self.apply_l1(&target, source);
        if self.pubsub.is_some() {
            let mut m = Message::heartbeat(&self.pod, clock::now_us());
            m.kind = Kind::Invalidate;
            m.tags = target.tags.clone();
            m.keys = target.keys.iter().map(|(k, _)| k.to_string()).collect();
            m.all = target.all;
            m.ns = ns;
            m.refresh = refresh;
            m.source = source.as_str().to_string();
            self.publish(&m).await;
        }
        if refresh {
            self.refresh(removed);
        }
    }

    /// A soft purge through this pod (admin): the entries are marked stale, not removed, in
    /// L2, in L1 here, and on the other pods; served within their grace while one refresh
    /// runs. Entries without grace are simply gone. `target.all` is not soft.
    pub async fn soft_invalidate(&self, target: Target, source: Source) {
        let now = clock::now_ms();
        if let Some(l2) = &self.l2 {
            let mut keys = Vec::with_capacity(target.keys.len());
            for (k, tags) in &target.keys {
                if let Some(l2key) = l2.key(*k, tags).await {
                    keys.push(l2key);
                }
            }
            match l2.soft_invalidate(&target.tags, &keys, now).await {
                Some(n) => self.metrics.invalidated_entries("l2", n as u64),
                None => {
                    tracing::warn!(tags = ?target.tags, "L2 soft purge got no answer from Redis.")
                }
            }
        }
        self.apply_l1_soft(&target.tags, &target.keys, source, now);
        // Told to the other pods on the pub/sub target (`[pubsub.redis]`, else `[l2]`'s).
        if self.pubsub.is_some() {
            let mut m = Message::heartbeat(&self.pod, clock::now_us());
            m.kind = Kind::Invalidate;
            m.tags = target.tags.clone();
            m.keys = target.keys.iter().map(|(k, _)| k.to_string()).collect();
            m.soft = true;
            m.source = source.as_str().to_string();
            self.publish(&m).await;
        }
    }

    fn apply_l1_soft(
        &self,
        tags: &[String],
        keys: &[(CacheKey, Vec<String>)],
        source: Source,
        now_ms: u64,
    ) {
        self.metrics.invalidation(source.as_str());
        let keys: Vec<CacheKey> = keys.iter().map(|(k, _)| *k).collect();
        let (marked, removed) = self.l1.soft_invalidate(tags, &keys, now_ms);
        self.metrics
            .invalidated_entries("l1", (marked + removed) as u64);
    }

    /// An event from another service: every pod receives it, so each does L2 and L1 itself
    /// and nobody publishes.
    pub async fn invalidate_event(&self, tags: Vec<String>, refresh: bool) {
        let target = Target {
            tags,
            ..Target::default()
        };
        self.invalidate_l2(&target).await;
        let removed = self.apply_l1(&target, Source::Event);
        if refresh {
            self.refresh(removed);
        }
    }

    /// Another pod's message: it already did L2; only L1 here is left.
    pub fn apply_peer(&self, m: &Message) {
        if let (Some(l2), Some(ns)) = (&self.l2, m.ns) {
            l2.set_namespace(ns);
        }
        let target = Target {
            tags: m.tags.clone(),
            keys: m
                .keys
                .iter()
                .filter_map(|k| u128::from_str_radix(k, 16).ok())
                .map(|k| (CacheKey(k), Vec::new()))
                .collect(),
            all: m.all,
        };
        if m.soft && !m.all {
            self.apply_l1_soft(&target.tags, &target.keys, Source::Peer, clock::now_ms());
            return;
        }
        let removed = self.apply_l1(&target, Source::Peer);
        if let (Some(l2), false) = (&self.l2, target.keys.is_empty()) {
            // The sender removed these keys from L2 under its own layout's names; a sender from
            // before issue 19 used others. Redundant (and harmless) once every pod is upgraded.
            let (l2, keys) = (
                l2.clone(),
                target.keys.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            );
            tokio::spawn(async move { l2.unlink_keys(&keys).await });
        }
        if m.refresh {
            self.refresh(removed);
        }
    }

    /// Messages may have been lost: drop L1 and keep it short-lived until subscribed again.
    pub fn gap(&self) {
        self.metrics.invalidation(Source::Gap.as_str());
        self.l1.enter_degraded();
    }

    pub async fn publish(&self, m: &Message) {
        let Some(redis) = &self.pubsub else { return };
        let mut cmd = ::redis::Cmd::new();
        cmd.arg("PUBLISH").arg(&self.channel).arg(m.encode());
        let _ = redis
            .exec("publish", vec![(self.channel.clone(), cmd)])
            .await;
    }

    fn apply_l1(&self, target: &Target, source: Source) -> Vec<Entry> {
        self.metrics.invalidation(source.as_str());
        if target.all {
            self.l1.clear();
            return Vec::new();
        }
        let keys: Vec<CacheKey> = target.keys.iter().map(|(k, _)| *k).collect();
        let removed = self.l1.invalidate(&target.tags, &keys);
        self.metrics.invalidated_entries("l1", removed.len() as u64);
        removed
    }

    /// Removes `target` from L2 (for `all`: starts a new namespace, returned).
    async fn invalidate_l2(&self, target: &Target) -> Option<u64> {
        let l2 = self.l2.as_ref()?;
        if target.all {
            return l2.bump_namespace().await;
        }
        let mut keys = Vec::with_capacity(target.keys.len());
        for (k, tags) in &target.keys {
            if let Some(l2key) = l2.key(*k, tags).await {
                keys.push(l2key);
            }
        }
        match l2.invalidate(&target.tags, &keys).await {
            Some(n) => self.metrics.invalidated_entries("l2", n as u64),
            None => tracing::warn!(
                tags = ?target.tags,
                "L2 invalidation got no answer from Redis; its entries expire by TTL, and other pods treat the broken channel as a gap."
            ),
        }
        None
    }

    /// Fetches the new values of removed shared entries once, in the background, through our
    /// own listener (the normal miss path: L2, lease, upstream, store).
    fn refresh(&self, removed: Vec<Entry>) {
        let Some(addr) = self.proxy_addr.get().copied() else {
            return;
        };
        let router = self.router.load();
        let paths: Vec<String> = removed
            .iter()
            .filter(|e| !e.path().is_empty())
            .filter(|e| {
                let path = e.path().split('?').next().unwrap_or_default();
                router
                    .find(&Method::GET, path)
                    .is_some_and(|m| m.route.config.scope == Scope::Shared)
            })
            .map(|e| e.path().to_string())
            .collect();
        if paths.is_empty() {
            return;
        }
        tokio::spawn(async move {
            crate::warmup::fetch_all(&paths, 4, addr).await;
        });
    }

    /// The key and route tags of a URL path on a shared route (admin purge by URL).
    pub fn key_of(&self, url: &str) -> Result<(CacheKey, Vec<String>), String> {
        let (path, query) = match url.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (url, None),
        };
        let router = self.router.load();
        let m = router
            .find(&Method::GET, path)
            .ok_or_else(|| format!("`{url}` matches no cached route"))?;
        let route = &m.route.config;
        if route.scope == Scope::Identity {
            return Err(format!(
                "`{url}` is on identity-scoped route `{}`: purge it by tag",
                route.name
            ));
        }
        let key = key::derive(route, m.params.as_slice(), query, &http::HeaderMap::new())
            .map_err(|_| format!("`{url}`: no key"))?;
        let tags = uri::entry_tags(route, &m.params, path);
        Ok((key, tags))
    }
}
