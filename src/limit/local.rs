//! The local fallback: the same GCRA per rule, in memory, at `rate / replicas`, used while
//! Redis is slow, down or behind an open breaker.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use super::gcra::{decide, Verdict};

/// Keys kept before idle ones (whose TAT is in the past) are swept.
const SWEEP_AT: usize = 100_000;

#[derive(Debug, Default)]
pub struct LocalBuckets {
    start: Started,
    // A std Mutex: one map operation per decision, never held across an await.
    tats: Mutex<HashMap<u128, u64>>,
}

/// The clock origin of the buckets: TATs are microseconds since it.
#[derive(Debug)]
struct Started(Instant);

impl Default for Started {
    fn default() -> Started {
        Started(Instant::now())
    }
}

impl LocalBuckets {
    pub fn decide(&self, key: u128, interval_us: u64, burst: u32) -> Verdict {
        let now = self.start.0.elapsed().as_micros() as u64;
        let mut tats = self.tats.lock().expect("local limiter lock");
        if tats.len() >= SWEEP_AT {
            tats.retain(|_, tat| *tat > now);
        }
        let (verdict, tat) = decide(tats.get(&key).copied(), now, interval_us, burst);
        tats.insert(key, tat);
        verdict
    }
}
