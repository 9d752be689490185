//! The state of a stored entry at an instant (RFC 9111 §4.2), how long the tiers keep it, and
//! whether a request's directives accept it (§5.2.1).

use super::{flags, validate, RequestDirectives};

/// How long an entry that can be revalidated is kept past its freshness lifetime, so that a
/// later request revalidates it (a `304`) instead of fetching it whole. L1 keeps it at most
/// its `max_age` all the same.
pub const KEEP_MS: u64 = 600_000;

/// How an entry stands at `now`: the one state enum of a stored entry. [`Freshness::as_str`]
/// feeds logs and the admin API's `explain`; the answers it leads to carry their own
/// `Cache-Status` and metric outcome (`hit`, `stale`, `stale_error`, `revalidated`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Usable: its `Age` and the seconds of freshness left.
    Fresh { age_secs: u64, ttl_left_secs: u64 },
    /// Past its freshness lifetime but within its grace: served when the origin fails
    /// (stale-if-error) and, if `while_revalidate`, at once while one refresh runs
    /// (stale-while-revalidate). Otherwise revalidated like an expired one.
    Stale {
        age_secs: u64,
        grace_left_secs: u64,
        while_revalidate: bool,
    },
    /// Past its lifetime and its grace (or it had none): revalidated (or refetched) before
    /// use; served stale only where a request's `max-stale` allows.
    Expired,
    /// Past its lifetime (or `no-cache`) and never served without revalidation
    /// (`must-revalidate`, `proxy-revalidate`, `s-maxage`, `no-cache`): no grace, no
    /// `max-stale`.
    MustRevalidate,
}

impl Freshness {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fresh { .. } => "fresh",
            Self::Stale {
                while_revalidate: true,
                ..
            } => "stale_while_revalidate",
            Self::Stale { .. } => "stale_if_error",
            Self::Expired => "expired",
            Self::MustRevalidate => "must_revalidate",
        }
    }

    pub fn is_fresh(self) -> bool {
        matches!(self, Self::Fresh { .. })
    }

    /// Within the grace's revalidate window: answered at once while one refresh runs.
    pub fn serves_at_once(self) -> bool {
        matches!(
            self,
            Self::Stale {
                while_revalidate: true,
                ..
            }
        )
    }
}

/// The age in milliseconds at `now_ms` of an entry stored at `stored_at_ms`, already
/// `initial_age` seconds old then.
pub fn age_ms(stored_at_ms: u64, initial_age: u64, now_ms: u64) -> u64 {
    now_ms
        .saturating_sub(stored_at_ms)
        .saturating_add(initial_age.saturating_mul(1000))
}

/// Freshness of an entry stored at `stored_at_ms` (already `initial_age` old then) with a
/// lifetime of `ttl_ms` and `flags`, kept `grace_ms` past it (served at once, while
/// refreshing, during the first `swr_ms` of that), seen at `now_ms`.
pub fn freshness(
    stored_at_ms: u64,
    initial_age: u64,
    ttl_ms: u64,
    flags: u16,
    grace: (u64, u64),
    now_ms: u64,
) -> Freshness {
    let (grace_ms, swr_ms) = grace;
    let age_ms = age_ms(stored_at_ms, initial_age, now_ms);
    if age_ms < ttl_ms {
        return Freshness::Fresh {
            age_secs: age_ms / 1000,
            ttl_left_secs: (ttl_ms - age_ms) / 1000,
        };
    }
    if flags & (flags::MUST_REVALIDATE | flags::NO_CACHE) != 0 {
        return Freshness::MustRevalidate;
    }
    let past = age_ms - ttl_ms;
    if past < grace_ms {
        Freshness::Stale {
            age_secs: age_ms / 1000,
            grace_left_secs: (grace_ms - past) / 1000,
            while_revalidate: past < swr_ms,
        }
    } else {
        Freshness::Expired
    }
}

/// How long past `stored_at_ms - initial_age` an entry is kept in the tiers: its lifetime,
/// then its grace or, when it can be revalidated and that is longer, [`KEEP_MS`].
pub fn retention_ms(ttl_ms: u64, flags: u16, grace_ms: u64) -> u64 {
    let keep = if validate::has_validator(flags) {
        KEEP_MS
    } else {
        0
    };
    ttl_ms.saturating_add(keep.max(grace_ms))
}

/// Whether a request with directives `rd` may be answered by an entry of age `age_ms`,
/// lifetime `ttl_ms` and `flags` without contacting the origin (RFC 9111 §5.2.1).
pub fn satisfies(rd: &RequestDirectives, age_ms: u64, ttl_ms: u64, flags: u16) -> bool {
    if rd.no_cache {
        return false;
    }
    if rd
        .max_age
        .is_some_and(|max| age_ms > max.saturating_mul(1000))
    {
        return false;
    }
    let left = i128::from(ttl_ms) - i128::from(age_ms);
    if rd
        .min_fresh
        .is_some_and(|min| left < i128::from(min.saturating_mul(1000)))
    {
        return false;
    }
    if left > 0 {
        return true;
    }
    if flags & (flags::MUST_REVALIDATE | flags::NO_CACHE) != 0 {
        return false;
    }
    match rd.max_stale {
        Some(None) => true,
        Some(Some(s)) => -left <= i128::from(s.saturating_mul(1000)),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::super::cache_control;
    use super::*;
    use http::{HeaderMap, HeaderValue};

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    const NONE: (u64, u64) = (0, 0);

    #[test]
    fn freshness_over_time() {
        assert_eq!(
            freshness(1_000, 0, 60_000, 0, NONE, 1_000),
            Freshness::Fresh {
                age_secs: 0,
                ttl_left_secs: 60
            }
        );
        assert_eq!(
            freshness(1_000, 5, 60_000, 0, NONE, 11_000),
            Freshness::Fresh {
                age_secs: 15,
                ttl_left_secs: 45
            }
        );
        assert_eq!(
            freshness(1_000, 0, 60_000, 0, NONE, 61_000),
            Freshness::Expired
        );
        assert_eq!(
            freshness(1_000, 0, 60_000, flags::MUST_REVALIDATE, NONE, 61_000),
            Freshness::MustRevalidate
        );
        assert_eq!(
            freshness(1_000, 0, 0, flags::NO_CACHE, NONE, 1_000),
            Freshness::MustRevalidate
        );
        // An Age too large to represent makes an entry stale under any lifetime.
        assert_eq!(
            freshness(
                1_000,
                cache_control::DELTA_MAX,
                cache_control::DELTA_MAX * 1000,
                0,
                NONE,
                1_000
            ),
            Freshness::Expired
        );
        // Within grace: stale; within the revalidate window, served at once.
        let grace = (30_000, 10_000);
        assert_eq!(
            freshness(1_000, 0, 60_000, 0, grace, 65_000),
            Freshness::Stale {
                age_secs: 64,
                grace_left_secs: 26,
                while_revalidate: true
            }
        );
        assert_eq!(
            freshness(1_000, 0, 60_000, 0, grace, 75_000).as_str(),
            "stale_if_error"
        );
        assert_eq!(
            freshness(1_000, 0, 60_000, 0, grace, 91_000),
            Freshness::Expired
        );
        // Never stale, whatever grace it claims, once it must be revalidated.
        for strict in [flags::MUST_REVALIDATE, flags::NO_CACHE] {
            assert_eq!(
                freshness(1_000, 0, 60_000, strict, grace, 65_000),
                Freshness::MustRevalidate
            );
        }
        // A clock that steps back never makes an entry younger than its initial age.
        assert_eq!(
            freshness(10_000, 2, 60_000, 0, NONE, 5_000),
            Freshness::Fresh {
                age_secs: 2,
                ttl_left_secs: 58
            }
        );
    }

    #[test]
    fn request_directives_choose_what_may_be_served() {
        let rd =
            |text: &'static str| RequestDirectives::parse(&headers(&[("cache-control", text)]));
        // Age 10 s of a 60 s lifetime.
        let ok = |text, flags| satisfies(&rd(text), 10_000, 60_000, flags);
        assert!(ok("max-age=10", 0));
        assert!(!ok("max-age=9", 0));
        assert!(ok("min-fresh=50", 0));
        assert!(!ok("min-fresh=51", 0));
        assert!(!ok("no-cache", 0));
        assert!(ok("only-if-cached", 0));
        // Stale by 5 s.
        let stale = |text, flags| satisfies(&rd(text), 65_000, 60_000, flags);
        assert!(!stale("max-age=100", 0));
        assert!(stale("max-stale", 0));
        assert!(stale("max-stale=5", 0));
        assert!(!stale("max-stale=4", 0));
        assert!(!stale("max-stale", flags::MUST_REVALIDATE));
        assert!(!satisfies(&rd("max-stale"), 0, 0, flags::NO_CACHE));
    }

    #[test]
    fn retention_keeps_what_can_be_revalidated() {
        assert_eq!(retention_ms(5_000, flags::ETAG_DERIVED, 0), 5_000);
        assert_eq!(retention_ms(5_000, 0, 0), 5_000 + KEEP_MS);
        assert_eq!(
            retention_ms(0, flags::ETAG_DERIVED | flags::LAST_MODIFIED, 0),
            KEEP_MS
        );
        // Grace: kept for it, or for the revalidation keep if that is longer.
        assert_eq!(retention_ms(5_000, flags::ETAG_DERIVED, 30_000), 35_000);
        assert_eq!(retention_ms(5_000, 0, 30_000), 5_000 + KEEP_MS);
        assert_eq!(retention_ms(5_000, 0, KEEP_MS + 1), 5_000 + KEEP_MS + 1);
    }
}
