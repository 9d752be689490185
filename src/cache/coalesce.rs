//! Request coalescing: at most one upstream fill per key at a time in this process.
//!
//! The first request for a missing key becomes the *leader* and fills; the others *follow* and
//! wait for its outcome. A leader that is dropped before it finishes (its client went away)
//! wakes the followers with `Abandoned`, and one of them leads the next attempt, so a cancelled
//! request never strands the rest.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{CacheKey, Entry};
use crate::error::ProxyError;

/// What followers learn from a fill.
#[derive(Debug, Clone)]
pub enum FillState {
    Pending,
    /// The fill stored this entry; serve it.
    Done(Entry),
    /// The response may not be shared (not cacheable): each follower fetches for itself.
    Pass,
    /// The upstream failed for the leader; followers answer with the same error rather than
    /// queue up behind one another against a backend that is down.
    Failed(ProxyError),
    /// The upstream answered with a server error and the leader served a stale entry
    /// within its grace (stale-if-error): followers serve it too while L1 still holds it,
    /// else fetch for themselves.
    Stale(u16),
    /// The leader went away without an answer; try again.
    Abandoned,
}

#[derive(Debug, Default)]
pub struct Coalescer {
    // A std Mutex, not a tokio one: it is held only for a map operation, never across an await.
    inflight: Mutex<HashMap<CacheKey, watch::Receiver<FillState>>>,
    /// Keys whose background refresh failed, and until when none is tried again: while the
    /// backend is down, stale answers do not each start a connection attempt.
    refresh_backoff: Mutex<HashMap<CacheKey, Instant>>,
}

/// How long a key's background refresh waits after one failed.
pub const REFRESH_BACKOFF: Duration = Duration::from_secs(1);

/// Either lead the fill of a key, or wait for the current leader.
#[derive(Debug)]
pub enum Join {
    Leader(FillGuard),
    Follower(watch::Receiver<FillState>),
}

impl Coalescer {
    pub fn join(self: &Arc<Self>, key: CacheKey) -> Join {
        let mut map = self.inflight.lock().expect("coalescer lock");
        if let Some(rx) = map.get(&key) {
            return Join::Follower(rx.clone());
        }
        let (tx, rx) = watch::channel(FillState::Pending);
        map.insert(key, rx);
        Join::Leader(FillGuard {
            owner: self.clone(),
            key,
            tx: Some(tx),
        })
    }

    /// Whether a background refresh of `key` may start at `now` (none failed just before).
    pub fn refresh_allowed(&self, key: &CacheKey, now: Instant) -> bool {
        let map = self.refresh_backoff.lock().expect("coalescer lock");
        map.get(key).is_none_or(|until| *until <= now)
    }

    /// A background refresh of `key` failed at `now`: the next waits [`REFRESH_BACKOFF`].
    pub fn refresh_failed(&self, key: CacheKey, now: Instant) {
        let mut map = self.refresh_backoff.lock().expect("coalescer lock");
        if map.len() >= 4096 {
            map.retain(|_, until| *until > now);
        }
        map.insert(key, now + REFRESH_BACKOFF);
    }

    /// Fills under way (for tests and stats).
    pub fn in_flight(&self) -> usize {
        self.inflight.lock().expect("coalescer lock").len()
    }

    fn finish(&self, key: &CacheKey) {
        self.inflight.lock().expect("coalescer lock").remove(key);
    }
}

/// Held by the leader; completing or dropping it releases the followers.
#[derive(Debug)]
pub struct FillGuard {
    owner: Arc<Coalescer>,
    key: CacheKey,
    tx: Option<watch::Sender<FillState>>,
}

impl FillGuard {
    pub fn complete(mut self, state: FillState) {
        self.release(state);
    }

    fn release(&mut self, state: FillState) {
        if let Some(tx) = self.tx.take() {
            // Remove first: a request arriving after this point must find the stored entry
            // (or lead a new fill), not join a finished one.
            self.owner.finish(&self.key);
            let _ = tx.send(state);
        }
    }
}

impl Drop for FillGuard {
    fn drop(&mut self) {
        self.release(FillState::Abandoned);
    }
}

/// Waits for the leader's outcome.
pub async fn wait(mut rx: watch::Receiver<FillState>) -> FillState {
    match rx.wait_for(|s| !matches!(s, FillState::Pending)).await {
        Ok(state) => state.clone(),
        Err(_) => FillState::Abandoned,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn followers_get_the_leaders_outcome() {
        let c = Arc::new(Coalescer::default());
        let key = CacheKey(1);
        let Join::Leader(guard) = c.join(key) else {
            panic!("first is leader")
        };
        let Join::Follower(rx) = c.join(key) else {
            panic!("second follows")
        };
        guard.complete(FillState::Pass);
        assert!(matches!(wait(rx).await, FillState::Pass));
        assert_eq!(c.in_flight(), 0);
        assert!(matches!(c.join(key), Join::Leader(_)));
    }

    #[tokio::test]
    async fn dropped_leader_releases_followers() {
        let c = Arc::new(Coalescer::default());
        let key = CacheKey(2);
        let leader = c.join(key);
        let Join::Follower(rx) = c.join(key) else {
            panic!("second follows")
        };
        drop(leader);
        assert!(matches!(wait(rx).await, FillState::Abandoned));
        assert_eq!(c.in_flight(), 0);
    }
}
