//! GCRA (the generic cell rate algorithm), the one algorithm behind both the Redis script and
//! the local fallback.
//!
//! Why GCRA rather than an exact sliding window: the state is one number per key (the
//! "theoretical arrival time", TAT), updated in O(1) by one single-key script, so it costs
//! one small key in Redis and works on Redis Cluster as is. A sliding-window log needs a
//! sorted set with one member per request in the window (100 members for 100/min per user),
//! and a sliding-window counter is an approximation anyway. GCRA enforces the steady rate
//! exactly and allows a configured burst on top, which is what `rate` + `burst` promise.
//!
//! With emission interval `T = period / count` and burst `b`: a request at `now` is allowed
//! iff `max(tat, now) + T - now <= b * T`; then `tat = max(tat, now) + T`.

/// A decision, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// Requests still allowed right now after this one.
    pub remaining: u32,
    /// When denied: how long until a request would be allowed.
    pub retry_after_us: u64,
    /// How long until the burst is fully available again.
    pub reset_us: u64,
}

/// Decides a request at `now_us` against stored `tat_us`; returns the verdict and the TAT to
/// store (unchanged when denied).
pub fn decide(tat_us: Option<u64>, now_us: u64, interval_us: u64, burst: u32) -> (Verdict, u64) {
    let tat = tat_us.unwrap_or(now_us).max(now_us);
    let limit = interval_us * u64::from(burst);
    let new_tat = tat + interval_us;
    if new_tat - now_us > limit {
        let verdict = Verdict {
            allowed: false,
            remaining: 0,
            retry_after_us: new_tat - now_us - limit,
            reset_us: tat - now_us,
        };
        return (verdict, tat);
    }
    let verdict = Verdict {
        allowed: true,
        remaining: ((limit - (new_tat - now_us)) / interval_us) as u32,
        retry_after_us: 0,
        reset_us: new_tat - now_us,
    };
    (verdict, new_tat)
}

/// The same algorithm as a Redis script, with Redis `TIME` as the clock so that pod clocks
/// do not matter. KEYS[1]: the TAT key. ARGV: interval (µs), burst.
/// Returns {allowed, remaining, retry_after_us, reset_us}.
pub const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local limit = interval * tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
if new_tat - now > limit then
  return {0, 0, new_tat - now - limit, tat - now}
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, math.floor((limit - (new_tat - now)) / interval), 0, new_tat - now}
";

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 100_000; // 10/s

    #[test]
    fn steady_rate_with_burst() {
        // Burst 3: three at once, the fourth waits one interval.
        let mut tat = None;
        for expected_remaining in [2, 1, 0] {
            let (v, t) = decide(tat, 0, T, 3);
            assert!(v.allowed);
            assert_eq!(v.remaining, expected_remaining);
            tat = Some(t);
        }
        let (v, t) = decide(tat, 0, T, 3);
        assert!(!v.allowed);
        assert_eq!(v.retry_after_us, T);
        assert_eq!(t, tat.unwrap(), "a denial does not consume");
        let (v, _) = decide(tat, T, T, 3);
        assert!(v.allowed, "one interval later one more is allowed");
    }

    #[test]
    fn over_time_the_rate_holds() {
        // Hammering every millisecond for 5 s at 10/s with burst 1 admits 50 (+1 at t=0).
        let mut tat = None;
        let mut admitted = 0;
        for now in (0..5_000_000).step_by(1_000) {
            let (v, t) = decide(tat, now, T, 1);
            tat = Some(t);
            admitted += u32::from(v.allowed);
        }
        assert_eq!(admitted, 50);
    }

    #[test]
    fn idle_keys_refill() {
        let (_, t) = decide(None, 0, T, 2);
        let (_, t) = decide(Some(t), 0, T, 2);
        let (v, _) = decide(Some(t), 10 * T, T, 2);
        assert!(v.allowed);
        assert_eq!(v.remaining, 1);
    }
}
