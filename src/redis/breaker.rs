//! A circuit breaker for Redis: after `failures` consecutive failures it opens and every call
//! is skipped (a cache miss, a local rate-limit decision) until `open_for` has passed; then one
//! probe call goes through, and its result closes or re-opens the breaker.
//!
//! Pure state transitions: `now` is a parameter, so the whole life cycle is testable.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub const ALL: [BreakerState; 3] = [Self::Closed, Self::Open, Self::HalfOpen];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// A probe is out since `since`; a probe that never reports (its caller was cancelled)
    /// is replaced after `open_for`.
    HalfOpen {
        since: Instant,
    },
}

#[derive(Debug)]
pub struct Breaker {
    // A std Mutex: held for a few instructions, never across an await.
    state: Mutex<State>,
    failures_to_open: u32,
    open_for: Duration,
}

impl Breaker {
    pub fn new(failures_to_open: u32, open_for: Duration) -> Breaker {
        Breaker {
            state: Mutex::new(State::Closed { failures: 0 }),
            failures_to_open: failures_to_open.max(1),
            open_for,
        }
    }

    /// May a call go out now? Turns an expired `Open` into `HalfOpen` (this call is the probe).
    pub fn allow(&self, now: Instant) -> bool {
        let mut s = self.state.lock().expect("breaker lock");
        match *s {
            State::Closed { .. } => true,
            State::Open { until } if now >= until => {
                *s = State::HalfOpen { since: now };
                true
            }
            State::Open { .. } => false,
            State::HalfOpen { since } if now.duration_since(since) >= self.open_for => {
                *s = State::HalfOpen { since: now };
                true
            }
            State::HalfOpen { .. } => false,
        }
    }

    /// Records a call's result; returns the state after it.
    pub fn record(&self, ok: bool, now: Instant) -> BreakerState {
        let mut s = self.state.lock().expect("breaker lock");
        *s = match (*s, ok) {
            (_, true) => State::Closed { failures: 0 },
            (State::Closed { failures }, false) if failures + 1 < self.failures_to_open => {
                State::Closed {
                    failures: failures + 1,
                }
            }
            (_, false) => State::Open {
                until: now + self.open_for,
            },
        };
        public(*s)
    }

    pub fn state(&self) -> BreakerState {
        public(*self.state.lock().expect("breaker lock"))
    }
}

fn public(s: State) -> BreakerState {
    match s {
        State::Closed { .. } => BreakerState::Closed,
        State::Open { .. } => BreakerState::Open,
        State::HalfOpen { .. } => BreakerState::HalfOpen,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_and_recovers_through_a_probe() {
        let t0 = Instant::now();
        let b = Breaker::new(3, Duration::from_secs(1));
        assert!(b.allow(t0));
        b.record(false, t0);
        b.record(true, t0); // a success resets the count
        b.record(false, t0);
        b.record(false, t0);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.record(false, t0), BreakerState::Open);
        assert!(!b.allow(t0 + Duration::from_millis(999)));
        // After open_for, exactly one probe.
        let t1 = t0 + Duration::from_secs(1);
        assert!(b.allow(t1));
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(!b.allow(t1));
        // A failed probe re-opens.
        assert_eq!(b.record(false, t1), BreakerState::Open);
        let t2 = t1 + Duration::from_secs(1);
        assert!(b.allow(t2));
        assert_eq!(b.record(true, t2), BreakerState::Closed);
        assert!(b.allow(t2));
    }

    #[test]
    fn a_lost_probe_is_replaced() {
        let t0 = Instant::now();
        let b = Breaker::new(1, Duration::from_millis(100));
        b.record(false, t0);
        let t1 = t0 + Duration::from_millis(100);
        assert!(b.allow(t1));
        assert!(!b.allow(t1 + Duration::from_millis(50)));
        assert!(b.allow(t1 + Duration::from_millis(100)));
    }
}
