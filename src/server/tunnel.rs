//! Upgraded connections (WebSocket and other `Upgrade` protocols) after the `101`: counted,
//! and closed at the end of the grace period on shutdown.
//!
//! After the upgrade hyper's connection is over: the bytes flow in a task of the tunnel's
//! own, which the listener's [`super::drain`] no longer sees. A listener given
//! [`Tunnels`] waits for them after its connections, within the same grace period, and then
//! closes those still open (a byte tunnel has no "finish the current request"; an app's
//! WebSocket client reconnects, to another pod).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use prometheus::{IntCounter, IntGauge};
use tokio::sync::{watch, Notify};

/// The open tunnels of one listener.
#[derive(Debug, Clone)]
pub struct Tunnels {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    open: AtomicUsize,
    /// Notified when a tunnel closes.
    closed: Notify,
    /// Turns true when the remaining tunnels must close.
    close: watch::Sender<bool>,
    upgrades: Option<IntCounter>,
    gauge: Option<IntGauge>,
}

/// A tunnel's place in [`Tunnels`]: counted while it lives.
#[derive(Debug)]
pub struct TunnelGuard {
    shared: Arc<Shared>,
    close: watch::Receiver<bool>,
}

impl Default for Tunnels {
    fn default() -> Tunnels {
        Tunnels::new(None, None)
    }
}

impl Tunnels {
    /// `upgrades` counts tunnels opened, `gauge` those open now.
    pub fn new(upgrades: Option<IntCounter>, gauge: Option<IntGauge>) -> Tunnels {
        Tunnels {
            shared: Arc::new(Shared {
                open: AtomicUsize::new(0),
                closed: Notify::new(),
                close: watch::channel(false).0,
                upgrades,
                gauge,
            }),
        }
    }

    /// Registers a new tunnel.
    pub fn open(&self) -> TunnelGuard {
        self.shared.open.fetch_add(1, Ordering::SeqCst);
        if let Some(c) = &self.shared.upgrades {
            c.inc();
        }
        if let Some(g) = &self.shared.gauge {
            g.inc();
        }
        TunnelGuard {
            shared: self.shared.clone(),
            close: self.shared.close.subscribe(),
        }
    }

    /// Tunnels open now.
    pub fn len(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until no tunnel is open.
    pub async fn wait_closed(&self) {
        loop {
            let closed = self.shared.closed.notified();
            tokio::pin!(closed);
            closed.as_mut().enable();
            if self.is_empty() {
                return;
            }
            closed.await;
        }
    }

    /// Tells every open tunnel to close now.
    pub fn close_all(&self) {
        self.shared.close.send_replace(true);
    }
}

impl TunnelGuard {
    /// Resolves when the tunnel must close (the grace period of a shutdown ran out).
    pub async fn closing(&mut self) {
        let _ = self.close.wait_for(|c| *c).await;
    }
}

impl Drop for TunnelGuard {
    fn drop(&mut self) {
        if let Some(g) = &self.shared.gauge {
            g.dec();
        }
        self.shared.open.fetch_sub(1, Ordering::SeqCst);
        self.shared.closed.notify_waiters();
    }
}
