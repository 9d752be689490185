//! The subscriber: one classic SUBSCRIBE connection per pod (classic pub/sub reaches every
//! node of a Cluster) for the sidecache channel and the configured event channels.
//!
//! Pub/sub is at-most-once, so every sign that a message may have been lost counts as a gap:
//! the connection failing or closing, or this pod's own heartbeat (published through the
//! normal Redis connection every `heartbeat`) not coming back within three intervals. On a
//! gap L1 is dropped and stays short-lived (`degraded_max_age`) until the subscription is
//! back; then L1 is dropped once more and the L2 namespace re-read, since anything may have
//! happened in between.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use futures_util::StreamExt;
use tokio::sync::Notify;

use super::events::{listens, tags_for_on};
use super::message::{Kind, Message};
use super::Invalidator;
use crate::cache::clock;
use crate::config::{Action, EventConfig, PubsubConfig, RedisConfig, Subscription};
use crate::metrics::Metrics;
use crate::telemetry::Throttles;

/// Heartbeats missed before the subscription counts as broken.
const MISSED_HEARTBEATS: u32 = 3;

/// At most one WARN line per reason in this long: a publisher flooding a channel with bad
/// payloads must not flood the log too. The `rejected` counter stays exact.
const REJECTION_LOG_EVERY: Duration = Duration::from_secs(1);

pub struct Subscriber {
    pub invalidator: Arc<Invalidator>,
    /// The event rules (swapped by a reload, which then rings `resubscribe`).
    pub events: Arc<ArcSwap<Vec<EventConfig>>>,
    pub resubscribe: Arc<Notify>,
    pub pubsub: PubsubConfig,
    /// `[pubsub.redis]`, else `[l2]`'s target.
    pub redis: RedisConfig,
    pub metrics: Arc<Metrics>,
}

impl Subscriber {
    /// Runs for the life of the process.
    pub async fn run(self) {
        let mut backoff = Duration::from_millis(50);
        // Kept across reconnects, so that a reconnect does not reopen the log to a flood.
        let mut quiet = Throttles::new(REJECTION_LOG_EVERY);
        loop {
            self.metrics.set_pubsub_connected(false);
            let conn = crate::redis::pubsub_connection(&self.redis).await;
            let mut pubsub = match conn {
                Ok(p) => p,
                Err(error) => {
                    tracing::warn!(%error, "Pub/sub connection failed; L1 stays degraded. Retrying.");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            if let Err(error) = self.subscribe(&mut pubsub).await {
                tracing::warn!(%error, "Subscribing failed; retrying.");
                tokio::time::sleep(backoff).await;
                continue;
            }
            backoff = Duration::from_millis(50);
            // Subscribed: from here on nothing is missed. What happened before may have been.
            if let Some(l2) = self.invalidator.l2() {
                l2.reload_namespace().await;
            }
            self.invalidator.l1().leave_degraded();
            self.metrics.set_pubsub_connected(true);
            tracing::info!(
                channel = self.invalidator.channel(),
                "Subscribed; L1 is live."
            );
            let why = self.listen(pubsub, &mut quiet).await;
            tracing::warn!(why, "Pub/sub gap: dropping L1 until subscribed again.");
            self.invalidator.gap();
        }
    }

    async fn subscribe(&self, pubsub: &mut ::redis::aio::PubSub) -> ::redis::RedisResult<()> {
        pubsub.subscribe(self.invalidator.channel()).await?;
        for e in self.events.load().iter() {
            match &e.subscription {
                Subscription::Channel(c) => pubsub.subscribe(c).await?,
                Subscription::Pattern(p) => pubsub.psubscribe(p).await?,
            }
        }
        Ok(())
    }

    /// Handles messages until the subscription is (or may be) broken; returns why.
    async fn listen(&self, pubsub: ::redis::aio::PubSub, quiet: &mut Throttles) -> &'static str {
        let mut stream = pubsub.into_on_message();
        let beat = self.pubsub.heartbeat;
        let mut tick = tokio::time::interval(beat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_own = Instant::now();
        loop {
            tokio::select! {
                _ = self.resubscribe.notified() => return "event channels changed",
                msg = stream.next() => {
                    let Some(msg) = msg else { return "disconnected" };
                    if self.handle(&msg, quiet) {
                        last_own = Instant::now();
                    }
                }
                _ = tick.tick() => {
                    if last_own.elapsed() > beat * MISSED_HEARTBEATS {
                        return "missed heartbeats";
                    }
                    let inv = self.invalidator.clone();
                    // Published in its own task so a slow Redis never stalls message handling.
                    tokio::spawn(async move {
                        inv.publish(&Message::heartbeat(inv.pod(), clock::now_us())).await;
                    });
                }
            }
        }
    }

    /// Applies one message; returns true for this pod's own heartbeat.
    fn handle(&self, msg: &::redis::Msg, quiet: &mut Throttles) -> bool {
        let channel = msg.get_channel_name();
        let payload = msg.get_payload_bytes();
        if channel == self.invalidator.channel() {
            return self.handle_peer(payload, quiet);
        }
        let pattern: Option<String> = msg.get_pattern().ok();
        let events = self.events.load();
        for rule in events
            .iter()
            .filter(|r| listens(r, channel, pattern.as_deref()))
        {
            match tags_for_on(rule, Some(channel), payload) {
                Ok(Some(tags)) => {
                    self.metrics.pubsub_message("event", "applied");
                    let inv = self.invalidator.clone();
                    let refresh = rule.action == Action::Refresh;
                    tokio::spawn(async move { inv.invalidate_event(tags, refresh).await });
                }
                Ok(None) => self.metrics.pubsub_message("event", "ignored"),
                Err(rejection) => {
                    self.metrics.pubsub_message("event", "rejected");
                    if let Some(suppressed) = quiet.admit(rejection.reason(), Instant::now()) {
                        tracing::warn!(channel, %rejection, suppressed, "Event rejected.");
                    }
                }
            }
        }
        false
    }

    fn handle_peer(&self, payload: &[u8], quiet: &mut Throttles) -> bool {
        let m = match Message::decode(payload) {
            Ok(m) => m,
            Err(error) => {
                self.metrics.pubsub_message("peer", "rejected");
                if let Some(suppressed) = quiet.admit("unreadable_peer", Instant::now()) {
                    tracing::warn!(%error, suppressed, "Unreadable message on the sidecache channel.");
                }
                return false;
            }
        };
        if m.origin == self.invalidator.pod() {
            return m.kind == Kind::Heartbeat;
        }
        if m.kind == Kind::Invalidate {
            let lag_us = clock::now_us().saturating_sub(m.ts);
            self.metrics.pubsub_lag(lag_us as f64 / 1e6);
            self.invalidator.apply_peer(&m);
            self.metrics.pubsub_message("peer", "applied");
        }
        false
    }
}
