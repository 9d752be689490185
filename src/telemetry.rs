//! Logging setup: human-readable by default, JSON for log pipelines.

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber; a second call (tests) is a no-op.
pub fn init(config: &LogConfig) {
    let filter = EnvFilter::try_new(&config.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true);
    let _ = match config.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Human => builder.try_init(),
    };
}

/// One log line per `every` for an event that can repeat without bound (a flood of bad
/// messages, accept failing under EMFILE), with the count of those not logged. Counters stay
/// exact; only the lines are thinned. Time is passed in, so the rule is tested without sleeps.
#[derive(Debug, Clone)]
pub struct Throttle {
    every: std::time::Duration,
    last: Option<std::time::Instant>,
    suppressed: u64,
}

impl Throttle {
    pub const fn new(every: std::time::Duration) -> Throttle {
        Throttle {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// Whether an occurrence at `now` gets a line: `Some(n)`, with `n` occurrences left unlogged
    /// since the last line; `None`: stay quiet (it is counted for the next line).
    pub fn admit(&mut self, now: std::time::Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// A [`Throttle`] per reason (a small fixed set of `&'static str`s, so a list, not a map).
#[derive(Debug, Clone)]
pub struct Throttles {
    every: std::time::Duration,
    by_reason: Vec<(&'static str, Throttle)>,
}

impl Throttles {
    pub const fn new(every: std::time::Duration) -> Throttles {
        Throttles {
            every,
            by_reason: Vec::new(),
        }
    }

    /// [`Throttle::admit`] for `reason`.
    pub fn admit(&mut self, reason: &'static str, now: std::time::Instant) -> Option<u64> {
        let i = match self.by_reason.iter().position(|(r, _)| *r == reason) {
            Some(i) => i,
            None => {
                self.by_reason.push((reason, Throttle::new(self.every)));
                self.by_reason.len() - 1
            }
        };
        self.by_reason[i].1.admit(now)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn one_line_per_period_with_the_count_of_the_rest() {
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let mut t = Throttle::new(Duration::from_secs(1));
        assert_eq!(t.admit(at(0)), Some(0));
        for ms in 1..1000 {
            assert_eq!(t.admit(at(ms)), None, "{ms}");
        }
        assert_eq!(t.admit(at(1000)), Some(999));
        assert_eq!(t.admit(at(1500)), None);
        assert_eq!(t.admit(at(5000)), Some(1));
        // Reasons are throttled apart.
        let mut ts = Throttles::new(Duration::from_secs(1));
        assert_eq!(ts.admit("not_json", at(0)), Some(0));
        assert_eq!(ts.admit("missing_field", at(1)), Some(0));
        assert_eq!(ts.admit("not_json", at(2)), None);
        assert_eq!(ts.admit("missing_field", at(3)), None);
        assert_eq!(ts.admit("not_json", at(1001)), Some(1));
    }
}
