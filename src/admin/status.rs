//! The admin status page for people: `GET /` is one self-contained HTML page (inline CSS and a
//! little inline JS, no external assets) that polls `GET /status.json`, built here.
//!
//! Every number is read from the Prometheus registry that `/metrics` renders, at the moment
//! the admin listener is asked, so the page and a scrape never disagree and the proxy's hit
//! path does no work for it. Percentiles are computed from the histogram buckets the way
//! PromQL's `histogram_quantile` does, over everything since start. Nothing secret is shown:
//! no Redis URL, no token, no header value.

use std::collections::BTreeMap;

use prometheus::proto::{Metric, MetricFamily};
use serde_json::{json, Map, Value};

/// The page. Its script reads `status.json` every two seconds; the per-second rates and the
/// log of recent changes are differences between two reads.
pub const PAGE: &str = include_str!("status.html");

/// What the page needs besides the registry.
#[derive(Debug)]
pub struct Context<'a> {
    pub pod: &'a str,
    pub ready: bool,
    pub l1_degraded: bool,
    pub l2_configured: bool,
    /// The configured routes, in config order: they are listed even before any traffic.
    pub routes: Vec<RouteInfo<'a>>,
}

#[derive(Debug)]
pub struct RouteInfo<'a> {
    pub name: &'a str,
    pub matches: &'a str,
    pub scope: &'a str,
    /// `None`: freshness from the response alone.
    pub ttl_seconds: Option<u64>,
}

/// The registry's families by name.
struct Families(BTreeMap<String, MetricFamily>);

impl Families {
    fn new(gathered: Vec<MetricFamily>) -> Families {
        Families(
            gathered
                .into_iter()
                .map(|f| (f.name().to_string(), f))
                .collect(),
        )
    }

    fn metrics(&self, name: &str) -> &[Metric] {
        self.0.get(name).map_or(&[], |f| f.get_metric())
    }

    /// The value of an unlabelled counter or gauge (0 when absent).
    fn single(&self, name: &str) -> Option<f64> {
        self.metrics(name).first().map(value)
    }

    /// Sums of a counter or gauge family by the value of `label`.
    fn by(&self, name: &str, label: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for m in self.metrics(name) {
            if let Some(v) = label_of(m, label) {
                *out.entry(v.to_string()).or_insert(0.0) += value(m);
            }
        }
        out
    }

    /// A histogram family's buckets merged over the series `keep` accepts.
    fn histogram(&self, name: &str, keep: impl Fn(&Metric) -> bool) -> Buckets {
        let mut b = Buckets::default();
        for m in self.metrics(name).iter().filter(|m| keep(m)) {
            let h = m.get_histogram();
            b.count += h.get_sample_count();
            for bucket in h.get_bucket() {
                let bound = bucket.upper_bound();
                match b.bounds.iter_mut().find(|(ub, _)| *ub == bound) {
                    Some((_, c)) => *c += bucket.cumulative_count(),
                    None => b.bounds.push((bound, bucket.cumulative_count())),
                }
            }
        }
        b.bounds.sort_by(|a, b| a.0.total_cmp(&b.0));
        b
    }
}

fn value(m: &Metric) -> f64 {
    // A series is a counter or a gauge; the other part is zero.
    m.get_counter().get_value() + m.get_gauge().get_value()
}

fn label_of<'m>(m: &'m Metric, name: &str) -> Option<&'m str> {
    m.get_label()
        .iter()
        .find(|l| l.name() == name)
        .map(|l| l.value())
}

/// Cumulative histogram buckets: (upper bound, observations at or below it), and the total.
#[derive(Debug, Default)]
struct Buckets {
    bounds: Vec<(f64, u64)>,
    count: u64,
}

impl Buckets {
    /// PromQL's `histogram_quantile(q, ...)` over these buckets: linear interpolation inside
    /// the bucket holding the rank (the first bucket starts at 0), the highest finite bound
    /// when the rank falls in `+Inf`. `None` without observations.
    fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = q * self.count as f64;
        let (mut lower, mut below) = (0.0, 0u64);
        for &(upper, cumulative) in &self.bounds {
            if upper.is_infinite() {
                break;
            }
            if cumulative as f64 >= rank {
                let inside = (cumulative - below) as f64;
                if inside == 0.0 {
                    return Some(upper);
                }
                return Some(lower + (upper - lower) * (rank - below as f64) / inside);
            }
            lower = upper;
            below = cumulative;
        }
        // In the +Inf bucket (implicit in the gathered buckets): the highest finite bound, as
        // PromQL answers.
        Some(lower)
    }
}

/// `status.json`: what the page shows.
pub fn snapshot(gathered: Vec<MetricFamily>, ctx: &Context<'_>) -> Value {
    let f = Families::new(gathered);
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "pod": ctx.pod,
        "ready": ctx.ready,
        "process": process(&f),
        "routes": routes(&f, ctx),
        "l1": {
            "entries": f.single("sidecache_l1_entries").unwrap_or(0.0),
            "bytes": f.single("sidecache_l1_bytes").unwrap_or(0.0),
            "degraded": ctx.l1_degraded,
            "removed_by_cause": f.by("sidecache_l1_evictions_total", "cause"),
        },
        "l2": {
            "configured": ctx.l2_configured,
            "breaker": f.metrics("sidecache_redis_breaker_state")
                .iter()
                .find(|m| label_of(m, "redis") == Some("l2") && value(m) == 1.0)
                .and_then(|m| label_of(m, "state")),
            "lookups": f.by("sidecache_l2_lookups_total", "result"),
        },
        "pubsub": pubsub(&f, ctx),
        "invalidations": {
            "by_source": f.by("sidecache_invalidations_total", "source"),
            "entries_by_tier": f.by("sidecache_invalidated_entries_total", "tier"),
        },
        "config": {
            "valid": f.single("sidecache_config_valid") == Some(1.0),
            "reloads": f.by("sidecache_config_reloads_total", "result"),
        },
        "ratelimit": ratelimit(&f),
    })
}

fn process(f: &Families) -> Value {
    json!({
        "start_time_seconds": f.single("process_start_time_seconds"),
        "cpu_seconds": f.single("process_cpu_seconds_total"),
        "resident_memory_bytes": f.single("process_resident_memory_bytes"),
        "open_fds": f.single("process_open_fds"),
        "max_fds": f.single("process_max_fds"),
    })
}

/// Per route: requests by cache outcome, hit ratio per tier (hits over the route's requests
/// less the rate-limited ones, as the dashboard computes it), 5xx, p50 and p99.
fn routes(f: &Families, ctx: &Context<'_>) -> Vec<Value> {
    let mut by_route: BTreeMap<&str, (BTreeMap<&str, f64>, f64)> = BTreeMap::new();
    for m in f.metrics("sidecache_requests_total") {
        let (Some(route), Some(cache)) = (label_of(m, "route"), label_of(m, "cache")) else {
            continue;
        };
        let entry = by_route.entry(route).or_default();
        *entry.0.entry(cache).or_insert(0.0) += value(m);
        if label_of(m, "status_class") == Some("5xx") {
            entry.1 += value(m);
        }
    }
    // Configured routes first, in config order, then any other label seen (`none`, and
    // routes a reload removed).
    let mut names: Vec<&str> = ctx.routes.iter().map(|r| r.name).collect();
    let others: Vec<&str> = by_route
        .keys()
        .copied()
        .filter(|n| !names.contains(n))
        .collect();
    names.extend(others);
    names
        .into_iter()
        .map(|name| {
            let (outcomes, errors) = by_route.remove(name).unwrap_or_default();
            let requests = outcomes.values().fold(0.0, |a, b| a + b);
            let get = |k: &str| outcomes.get(k).copied().unwrap_or(0.0);
            let cacheable = requests - get("limited");
            let ratio = |hits: f64| (cacheable > 0.0).then(|| hits / cacheable);
            let latency = f.histogram("sidecache_request_duration_seconds", |m| {
                label_of(m, "route") == Some(name)
            });
            let info = ctx.routes.iter().find(|r| r.name == name);
            let mut v = Map::new();
            v.insert("route".into(), json!(name));
            v.insert("match".into(), json!(info.map(|r| r.matches)));
            v.insert("scope".into(), json!(info.map(|r| r.scope)));
            v.insert(
                "ttl_seconds".into(),
                json!(info.and_then(|r| r.ttl_seconds)),
            );
            v.insert("requests".into(), json!(requests));
            v.insert("outcomes".into(), json!(outcomes));
            v.insert("errors_5xx".into(), json!(errors));
            let cached_route = name != crate::metrics::NO_ROUTE;
            v.insert(
                "hit_ratio_l1".into(),
                json!(ratio(get("hit")).filter(|_| cached_route)),
            );
            v.insert(
                "hit_ratio_l2".into(),
                json!(ratio(get("hit_l2")).filter(|_| cached_route)),
            );
            v.insert("p50_seconds".into(), json!(latency.quantile(0.5)));
            v.insert("p99_seconds".into(), json!(latency.quantile(0.99)));
            Value::Object(v)
        })
        .collect()
}

fn pubsub(f: &Families, ctx: &Context<'_>) -> Value {
    let lag = f.histogram("sidecache_pubsub_lag_seconds", |_| true);
    json!({
        // Only a pod with [l2] subscribes; without it there is nothing to be connected to.
        "configured": ctx.l2_configured,
        "connected": f.single("sidecache_pubsub_connected") == Some(1.0),
        "messages": f.by("sidecache_pubsub_messages_total", "result"),
        "lag_count": lag.count,
        "lag_p50_seconds": lag.quantile(0.5),
        "lag_p99_seconds": lag.quantile(0.99),
    })
}

/// Decisions per rule: outcome → count, and which backend decided.
fn ratelimit(f: &Families) -> Vec<Value> {
    /// Per rule: (count by outcome, count by backend).
    type Counts<'a> = BTreeMap<&'a str, f64>;
    let mut rules: BTreeMap<&str, (Counts<'_>, Counts<'_>)> = BTreeMap::new();
    for m in f.metrics("sidecache_ratelimit_decisions_total") {
        let (Some(rule), Some(outcome), Some(backend)) = (
            label_of(m, "rule"),
            label_of(m, "outcome"),
            label_of(m, "backend"),
        ) else {
            continue;
        };
        let r = rules.entry(rule).or_default();
        *r.0.entry(outcome).or_insert(0.0) += value(m);
        *r.1.entry(backend).or_insert(0.0) += value(m);
    }
    rules
        .into_iter()
        .map(|(rule, (outcomes, backends))| {
            let get = |k: &str| outcomes.get(k).copied().unwrap_or(0.0);
            json!({
                "rule": rule,
                "allowed": get("allowed"),
                "denied": get("denied"),
                "shadow_denied": get("shadow_denied"),
                "backends": backends,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buckets(bounds: &[(f64, u64)], count: u64) -> Buckets {
        Buckets {
            bounds: bounds.to_vec(),
            count,
        }
    }

    #[test]
    fn quantiles_as_promql_computes_them() {
        let b = buckets(
            &[(0.001, 50), (0.01, 90), (0.1, 100), (f64::INFINITY, 100)],
            100,
        );
        assert_eq!(b.quantile(0.5), Some(0.001));
        // Rank 99: 9 of the 10 observations in (0.01, 0.1].
        let p99 = b.quantile(0.99).unwrap();
        assert!((p99 - (0.01 + 0.09 * 0.9)).abs() < 1e-12, "{p99}");
        assert_eq!(b.quantile(0.25), Some(0.0005));
        assert_eq!(buckets(&[], 0).quantile(0.5), None);
        // Everything above the last finite bound: that bound.
        let over = buckets(&[(0.1, 0), (f64::INFINITY, 4)], 4);
        assert_eq!(over.quantile(0.99), Some(0.1));
    }

    #[test]
    fn snapshot_reads_the_registry() {
        let metrics = crate::metrics::Metrics::new();
        let table = metrics.route_table(&["group"]);
        #[derive(Clone, Copy)]
        struct Hit;
        impl crate::metrics::LabelSet for Hit {
            fn index(self) -> usize {
                0
            }
            fn as_str(self) -> &'static str {
                "hit"
            }
        }
        for _ in 0..3 {
            metrics.request(table.get(Some(0)), &http::Method::GET, 200, Hit, 0.0002);
        }
        metrics.ratelimit("prices", "denied", "local");
        metrics.set_l1_usage(2, 4096);
        let ctx = Context {
            pod: "p",
            ready: true,
            l1_degraded: false,
            l2_configured: false,
            routes: vec![
                RouteInfo {
                    name: "group",
                    matches: "GET /api/groups/{group}/{symbol}",
                    scope: "shared",
                    ttl_seconds: Some(3600),
                },
                RouteInfo {
                    name: "price",
                    matches: "GET /api/prices/{symbol}",
                    scope: "shared",
                    ttl_seconds: Some(1),
                },
            ],
        };
        let s = snapshot(metrics.gather(), &ctx);
        assert_eq!(s["routes"][0]["route"], "group");
        assert_eq!(s["routes"][0]["requests"], 3.0);
        assert_eq!(s["routes"][0]["hit_ratio_l1"], 1.0);
        let p50 = s["routes"][0]["p50_seconds"].as_f64().unwrap();
        assert!(p50 > 0.0001 && p50 <= 0.00025, "{p50}");
        assert_eq!(s["routes"][1]["route"], "price");
        assert_eq!(s["routes"][1]["requests"], 0.0);
        assert!(s["routes"][1]["hit_ratio_l1"].is_null());
        assert_eq!(s["l1"]["entries"], 2.0);
        assert_eq!(s["l1"]["bytes"], 4096.0);
        assert_eq!(s["ratelimit"][0]["denied"], 1.0);
        assert_eq!(s["config"]["valid"], true);
        assert!(s["l2"]["breaker"].is_null());
    }
}
