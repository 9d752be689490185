//! Serving stale, decided purely: how long past its freshness an entry is kept (its *grace*),
//! and whether a request may be answered from a stale entry. No clock is read here.
//!
//! The rules (README "When the backend fails"):
//! - grace is the route's `grace`, or the origin's `stale-while-revalidate` /
//!   `stale-if-error` up to the route's `max_grace`, whichever is longer;
//! - `must-revalidate`, `proxy-revalidate`, `no-cache` and `s-maxage` (which implies
//!   `proxy-revalidate` in a shared cache, RFC 9111 §5.2.2.10) give no grace at all (§4.2.4);
//! - an invalidated entry is gone from every tier, so it has no grace to be served in (the
//!   tiers and the proxy see to that; nothing here can bring it back);
//! - a request with `Cache-Control: no-cache` is never answered stale *before* the refresh;
//!   it waits for it (and still gets the stale entry if the origin fails).

use std::time::Duration;

use http::{header, HeaderMap};

use super::policy::{effective_cache_control, CacheControl, Freshness, RequestDirectives};
use crate::config::RouteConfig;

/// How long past its freshness lifetime an entry stored for `route` from a response with
/// `headers` is kept: `(grace_ms, swr_ms)`, where the first `swr_ms` of the grace may serve it
/// at once while refreshing (stale-while-revalidate), and all of it when the origin fails
/// (stale-if-error). `swr_ms <= grace_ms`.
pub fn grace(route: &RouteConfig, headers: &HeaderMap) -> (u64, u64) {
    let cc = effective_cache_control(route.targeted_cache_control.as_ref(), headers);
    grace_of(route, &cc)
}

/// [`grace`] from already parsed directives.
pub fn grace_of(route: &RouteConfig, cc: &CacheControl) -> (u64, u64) {
    if cc.must_revalidate || cc.proxy_revalidate || cc.no_cache || cc.s_maxage.is_some() {
        return (0, 0);
    }
    let ms = |d: Duration| d.as_millis().min(u128::from(u64::MAX)) as u64;
    let route_grace = ms(route.grace);
    let origin = |secs: Option<u64>| match secs {
        Some(s) if route.honor_upstream => ms(Duration::from_secs(s).min(route.max_grace)),
        _ => 0,
    };
    let route_swr = if route.grace_while_revalidate {
        route_grace
    } else {
        0
    };
    let swr = route_swr.max(origin(cc.stale_while_revalidate));
    let sie = route_grace.max(origin(cc.stale_if_error));
    (swr.max(sie), swr)
}

/// What `request` allows of an entry standing at `f`: a request whose directives refuse a
/// stale answer (`no-cache`, a `max-age` the entry's age exceeds, any `min-fresh`; RFC 9111
/// §5.2.1) is not answered stale before the refresh is tried (it still may be if the upstream
/// fails). Read whether or not the route honours request directives: it only ever refuses.
pub fn for_request(f: Freshness, request: &HeaderMap) -> Freshness {
    match f {
        Freshness::Stale {
            age_secs,
            grace_left_secs,
            while_revalidate: true,
        } if request.contains_key(header::CACHE_CONTROL) && {
            let rd = RequestDirectives::parse(request);
            rd.no_cache || rd.min_fresh.is_some() || rd.max_age.is_some_and(|m| age_secs > m)
        } =>
        {
            Freshness::Stale {
                age_secs,
                grace_left_secs,
                while_revalidate: false,
            }
        }
        f => f,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use http::HeaderValue;
    use proptest::prelude::*;

    fn route(extra: &str) -> RouteConfig {
        Config::parse(&format!(
            "[upstream]\nurl = \"http://127.0.0.1:1\"\n[[route]]\nname = \"r\"\nmatch = \"GET /r\"\nttl = \"60s\"\n{extra}"
        ))
        .unwrap()
        .routes
        .remove(0)
    }

    fn cc(v: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static(v));
        h
    }

    #[test]
    fn grace_rules() {
        let none = route("");
        assert_eq!(grace(&none, &HeaderMap::new()), (0, 0));
        let g = route("grace = \"30s\"\nmax_grace = \"1m\"");
        assert_eq!(grace(&g, &HeaderMap::new()), (30_000, 30_000));
        // Origin windows, capped by max_grace, never below the route's grace.
        assert_eq!(
            grace(
                &g,
                &cc("max-age=5, stale-while-revalidate=10, stale-if-error=3600")
            ),
            (60_000, 30_000)
        );
        assert_eq!(
            grace(&none, &cc("max-age=5, stale-if-error=20")),
            (20_000, 0),
            "the default max_grace honours the origin's windows"
        );
        for strict in [
            "max-age=5, must-revalidate",
            "max-age=5, proxy-revalidate",
            "s-maxage=5",
            "no-cache",
        ] {
            assert_eq!(grace(&g, &cc(strict)), (0, 0), "{strict}");
        }
        let on_error = route("grace = \"30s\"\ngrace_while_revalidate = false");
        assert_eq!(grace(&on_error, &HeaderMap::new()), (30_000, 0));
        assert_eq!(
            grace(&on_error, &cc("max-age=5, stale-while-revalidate=10")),
            (30_000, 10_000),
            "the origin's own window still counts"
        );
        let fixed = route("grace = \"5s\"\nhonor_upstream = false");
        assert_eq!(grace(&fixed, &cc("stale-if-error=600")), (5_000, 5_000));
        assert_eq!(grace(&fixed, &cc("must-revalidate")), (0, 0));
    }

    #[test]
    fn targeted_fields_take_precedence() {
        let g = route("grace = \"30s\"");
        let mut h = cc("max-age=5, must-revalidate");
        h.insert("cdn-cache-control", HeaderValue::from_static("max-age=60"));
        assert_eq!(grace(&g, &h), (30_000, 30_000));
        h.insert(
            "sidecache-cache-control",
            HeaderValue::from_static("max-age=60, must-revalidate"),
        );
        assert_eq!(grace(&g, &h), (0, 0));
    }

    #[test]
    fn a_no_cache_request_waits_for_the_refresh() {
        let s = Freshness::Stale {
            age_secs: 1,
            grace_left_secs: 2,
            while_revalidate: true,
        };
        assert_eq!(for_request(s, &HeaderMap::new()), s);
        assert_eq!(for_request(s, &cc("no-cache")).as_str(), "stale_if_error");
        assert_eq!(for_request(s, &cc("max-age=0")).as_str(), "stale_if_error");
        assert_eq!(
            for_request(s, &cc("min-fresh=0")).as_str(),
            "stale_if_error"
        );
        assert_eq!(
            for_request(s, &cc("max-age=1")),
            s,
            "age 1 s is within max-age=1"
        );
        assert_eq!(for_request(s, &cc("max-stale")), s);
        assert_eq!(
            for_request(Freshness::Expired, &cc("no-cache")),
            Freshness::Expired
        );
    }

    proptest! {
        /// Whatever the directives, the revalidate window is within the grace, the origin
        /// never gets past max_grace unless the route's own grace is longer, and the strict
        /// directives always give none.
        #[test]
        fn grace_is_bounded(
            swr in proptest::option::of(0u64..1_000_000),
            sie in proptest::option::of(0u64..1_000_000),
            strict in any::<bool>(),
            route_grace in 0u64..100,
            max_grace in 0u64..100,
        ) {
            let r = route(&format!("grace = \"{route_grace}s\"\nmax_grace = \"{max_grace}s\""));
            let c = CacheControl {
                stale_while_revalidate: swr,
                stale_if_error: sie,
                must_revalidate: strict,
                ..CacheControl::default()
            };
            let (g, w) = grace_of(&r, &c);
            prop_assert!(w <= g);
            prop_assert!(g <= route_grace.max(max_grace) * 1000);
            if strict {
                prop_assert_eq!((g, w), (0, 0));
            } else {
                prop_assert!(g >= route_grace * 1000);
            }
        }

        #[test]
        fn stale_only_within_grace(
            age in 0u64..10_000_000,
            ttl in 1u64..1_000_000,
            grace in 0u64..1_000_000,
            swr_part in 0u64..=100,
        ) {
            let swr = grace * swr_part / 100;
            let f = crate::cache::policy::freshness(0, 0, ttl, 0, (grace, swr), age);
            match f {
                Freshness::Fresh { .. } => prop_assert!(age < ttl),
                Freshness::Stale { while_revalidate, .. } => {
                    prop_assert!(age >= ttl && age < ttl + grace);
                    prop_assert_eq!(while_revalidate, age < ttl + swr);
                }
                Freshness::Expired => prop_assert!(age >= ttl + grace),
                Freshness::MustRevalidate => prop_assert!(false, "no strict flags given"),
            }
        }
    }
}
