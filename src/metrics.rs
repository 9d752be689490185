//! Every metric family, registered in one place. Labels are low-cardinality by construction:
//! route *names* (or `none`), method from a fixed set, status class, cache outcome.
//!
//! Hot-path counters are resolved lazily once per label combination and then kept, so a
//! request costs a few atomic adds, not a label hash and a lock.

use std::sync::OnceLock;

use http::Method;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The `route` label of requests that match no cached route.
pub const NO_ROUTE: &str = crate::config::RESERVED_ROUTE_NAME;

const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "OTHER",
];
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
/// Room for the variants of the `cache` label (see [`LabelSet`]).
const OUTCOMES: usize = 13;
const BREAKER_STATES: [&str; 3] = ["closed", "open", "half_open"];

/// A closed set of label values, such as the cache outcome, whose variants index
/// preallocated handles. Implemented by the enums that own the values, so this module
/// imports none of them.
pub trait LabelSet: Copy {
    fn index(self) -> usize;
    fn as_str(self) -> &'static str;
}

/// Latency buckets from 50µs (an L1 hit) to 10s (a slow upstream).
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    upstream_duration: HistogramVec,
    upstream_errors: IntCounterVec,
    not_stored: IntCounterVec,
    coalesced_waits: IntCounterVec,
    l1_entries: IntGauge,
    l1_bytes: IntGauge,
    l1_evictions: IntCounterVec,
    l2_operations: IntCounterVec,
    l2_duration: HistogramVec,
    l2_lease_waits: IntCounterVec,
    l2_lookups: IntCounterVec,
    breaker_state: IntGaugeVec,
    invalidations: IntCounterVec,
    invalidated_entries: IntCounterVec,
    pubsub_connected: IntGauge,
    pubsub_messages: IntCounterVec,
    pubsub_lag: Histogram,
    ratelimit: IntCounterVec,
    verify: IntCounterVec,
    config_reloads: IntCounterVec,
    config_valid: IntGauge,
    connections: IntGaugeVec,
    accept_errors: IntCounterVec,
    upgrades: IntCounter,
    tunnels_open: IntGauge,
}

/// One listener's connection handles (`proxy` or `admin`).
#[derive(Debug, Clone)]
pub struct ListenerMetrics {
    /// Connections open now.
    pub open: IntGauge,
    /// Failed `accept` calls (EMFILE, ENFILE, ...).
    pub accept_errors: IntCounter,
}

/// The per-route handles of one configuration's routes (rebuilt on reload; the counters behind
/// them carry on, since the same labels give the same series).
pub struct RouteTable {
    routes: Vec<RouteMetrics>,
}

impl RouteTable {
    /// Handles of route number `id`, or of unrouted traffic for `None`.
    pub fn get(&self, id: Option<usize>) -> &RouteMetrics {
        let last = self.routes.len() - 1;
        &self.routes[id.map_or(last, |i| i.min(last))]
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// The per-route handles, resolved on first use.
pub struct RouteMetrics {
    name: String,
    requests: Box<[OnceLock<IntCounter>]>,
    durations: [OnceLock<Histogram>; OUTCOMES],
    upstream: OnceLock<Histogram>,
    coalesced: OnceLock<IntCounter>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers every family.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "sidecache_requests_total",
                "Requests answered, by route, method, status class and cache outcome.",
            ),
            &["route", "method", "status_class", "cache"],
        )
        .unwrap();
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "sidecache_request_duration_seconds",
                "Time from request head to response head, by route and cache outcome.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route", "cache"],
        )
        .unwrap();
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new(
                "sidecache_upstream_duration_seconds",
                "Time the upstream took to answer with a response head, by route.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route"],
        )
        .unwrap();
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "sidecache_upstream_errors_total",
                "Upstream failures by route and kind (connect, timeout, protocol).",
            ),
            &["route", "kind"],
        )
        .unwrap();
        let not_stored = IntCounterVec::new(
            Opts::new(
                "sidecache_not_stored_total",
                "Responses on cached routes that were not stored, by route and reason.",
            ),
            &["route", "reason"],
        )
        .unwrap();
        let coalesced_waits = IntCounterVec::new(
            Opts::new("sidecache_coalesced_waits_total", "Requests that waited for another request's fill of the same key instead of going upstream."),
            &["route"],
        )
        .unwrap();
        let l1_entries = IntGauge::new("sidecache_l1_entries", "Entries in the L1 cache.").unwrap();
        let l1_bytes = IntGauge::new(
            "sidecache_l1_bytes",
            "Bytes held by the L1 cache (bodies, headers, bookkeeping).",
        )
        .unwrap();
        let l1_evictions = IntCounterVec::new(
            Opts::new(
                "sidecache_l1_evictions_total",
                "Entries removed from L1, by cause (expired, size, explicit, replaced).",
            ),
            &["cause"],
        )
        .unwrap();
        let l2_operations = IntCounterVec::new(
            Opts::new("sidecache_l2_operations_total", "Redis operations by redis target (l2, limits, pubsub), op (get, lease, put, release, ratelimit, publish, ...) and result (ok, error, timeout, skipped, not_connected)."),
            &["redis", "op", "result"],
        )
        .unwrap();
        let l2_duration = HistogramVec::new(
            HistogramOpts::new(
                "sidecache_l2_duration_seconds",
                "Time of Redis round trips, by redis target and op.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["redis", "op"],
        )
        .unwrap();
        let l2_lease_waits = IntCounterVec::new(
            Opts::new("sidecache_l2_lease_waits_total", "Misses that waited for another pod's fill (the lease holder) instead of asking the upstream, by result (filled, timeout)."),
            &["result"],
        )
        .unwrap();
        let l2_lookups = IntCounterVec::new(
            Opts::new(
                "sidecache_l2_lookups_total",
                "L2 lookups after an L1 miss, by result (hit, miss, corrupt, unavailable).",
            ),
            &["result"],
        )
        .unwrap();
        let breaker_state = IntGaugeVec::new(
            Opts::new("sidecache_redis_breaker_state", "1 for each Redis target's (l2, limits, pubsub) circuit breaker's current state (closed, open, half_open), 0 for the others."),
            &["redis", "state"],
        )
        .unwrap();
        let invalidations = IntCounterVec::new(
            Opts::new(
                "sidecache_invalidations_total",
                "Invalidations applied, by source (write, write_uncertain, event, admin, peer, gap).",
            ),
            &["source"],
        )
        .unwrap();
        let invalidated_entries = IntCounterVec::new(
            Opts::new(
                "sidecache_invalidated_entries_total",
                "Entries removed by invalidations, by tier (l1, l2).",
            ),
            &["tier"],
        )
        .unwrap();
        let pubsub_connected = IntGauge::new(
            "sidecache_pubsub_connected",
            "1 while subscribed to the invalidation channel, 0 during a gap.",
        )
        .unwrap();
        let pubsub_messages = IntCounterVec::new(
            Opts::new("sidecache_pubsub_messages_total", "Pub/sub messages received, by kind (peer, event) and result (applied, ignored, rejected)."),
            &["kind", "result"],
        )
        .unwrap();
        let pubsub_lag = Histogram::with_opts(
            HistogramOpts::new(
                "sidecache_pubsub_lag_seconds",
                "Time from another pod publishing an invalidation to this pod applying it.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .unwrap();
        let verify = IntCounterVec::new(
            Opts::new(
                "sidecache_verify_total",
                "Entries checked by POST /admin/verify against the upstream, by result (identical, drifted, failed, identity: identity-scoped entries, counted only).",
            ),
            &["result"],
        )
        .unwrap();
        let ratelimit = IntCounterVec::new(
            Opts::new("sidecache_ratelimit_decisions_total", "Rate-limit decisions by rule, outcome (allowed, denied, shadow_denied) and backend (redis, local)."),
            &["rule", "outcome", "backend"],
        )
        .unwrap();
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "sidecache_config_reloads_total",
                "Config reload attempts by result (applied, rejected).",
            ),
            &["result"],
        )
        .unwrap();
        let connections = IntGaugeVec::new(
            Opts::new(
                "sidecache_connections",
                "Client connections open now, by listener (proxy, admin).",
            ),
            &["listener"],
        )
        .unwrap();
        let accept_errors = IntCounterVec::new(
            Opts::new("sidecache_accept_errors_total", "Failed accepts (e.g. EMFILE: out of file descriptors), by listener; each backs off 10ms, doubling to 1s."),
            &["listener"],
        )
        .unwrap();
        let upgrades = IntCounter::new(
            "sidecache_upgrades_total",
            "Upgraded connections (WebSocket and other Upgrade protocols) tunnelled to the upstream after its 101.",
        )
        .unwrap();
        let tunnels_open =
            IntGauge::new("sidecache_tunnels_open", "Upgraded connections open now.").unwrap();
        let config_valid = IntGauge::new("sidecache_config_valid", "1 if the last config load or reload was valid, 0 if a reload was rejected (the previous config keeps running).").unwrap();
        config_valid.set(1);
        let build_info = IntGaugeVec::new(
            Opts::new(
                "sidecache_build_info",
                "Always 1; the version label says which build runs.",
            ),
            &["version"],
        )
        .unwrap();
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);

        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(request_duration.clone()),
            Box::new(upstream_duration.clone()),
            Box::new(upstream_errors.clone()),
            Box::new(not_stored.clone()),
            Box::new(coalesced_waits.clone()),
            Box::new(l1_entries.clone()),
            Box::new(l1_bytes.clone()),
            Box::new(l1_evictions.clone()),
            Box::new(l2_operations.clone()),
            Box::new(l2_duration.clone()),
            Box::new(l2_lease_waits.clone()),
            Box::new(l2_lookups.clone()),
            Box::new(breaker_state.clone()),
            Box::new(invalidations.clone()),
            Box::new(invalidated_entries.clone()),
            Box::new(pubsub_connected.clone()),
            Box::new(pubsub_messages.clone()),
            Box::new(pubsub_lag.clone()),
            Box::new(ratelimit.clone()),
            Box::new(verify.clone()),
            Box::new(config_reloads.clone()),
            Box::new(config_valid.clone()),
            Box::new(connections.clone()),
            Box::new(accept_errors.clone()),
            Box::new(upgrades.clone()),
            Box::new(tunnels_open.clone()),
            Box::new(build_info),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        // The standard `process_*` families (CPU, RSS, open and max fds, start time), read
        // from /proc at scrape time only, so they cost the request path nothing.
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("process metrics register once per registry");

        Metrics {
            registry,
            requests,
            request_duration,
            upstream_duration,
            upstream_errors,
            not_stored,
            coalesced_waits,
            l1_entries,
            l1_bytes,
            l1_evictions,
            l2_operations,
            l2_duration,
            l2_lease_waits,
            l2_lookups,
            breaker_state,
            invalidations,
            invalidated_entries,
            pubsub_connected,
            pubsub_messages,
            pubsub_lag,
            ratelimit,
            verify,
            config_reloads,
            config_valid,
            connections,
            accept_errors,
            upgrades,
            tunnels_open,
        }
    }

    /// The upgrade counter and the open-tunnel gauge (`server::Tunnels`).
    pub fn tunnel_handles(&self) -> (IntCounter, IntGauge) {
        (self.upgrades.clone(), self.tunnels_open.clone())
    }

    /// The connection handles of `listener` (`proxy` or `admin`).
    pub fn listener(&self, listener: &str) -> ListenerMetrics {
        ListenerMetrics {
            open: self.connections.with_label_values(&[listener]),
            accept_errors: self.accept_errors.with_label_values(&[listener]),
        }
    }

    /// Handles for `route_names` (the configured routes, in order) plus unrouted traffic.
    pub fn route_table(&self, route_names: &[&str]) -> RouteTable {
        RouteTable {
            routes: route_names
                .iter()
                .copied()
                .chain(std::iter::once(NO_ROUTE))
                .map(RouteMetrics::new)
                .collect(),
        }
    }

    /// Counts one answered request.
    pub fn request(
        &self,
        route: &RouteMetrics,
        method: &Method,
        status: u16,
        outcome: impl LabelSet,
        seconds: f64,
    ) {
        let m = method_index(method);
        let s = (status / 100).clamp(1, 5) as usize - 1;
        let o = outcome.index();
        assert!(o < OUTCOMES, "more cache outcomes than metric slots");
        let slot = (m * OUTCOMES + o) * STATUS_CLASSES.len() + s;
        route.requests[slot]
            .get_or_init(|| {
                self.requests.with_label_values(&[
                    route.name.as_str(),
                    METHODS[m],
                    STATUS_CLASSES[s],
                    outcome.as_str(),
                ])
            })
            .inc();
        route.durations[o]
            .get_or_init(|| {
                self.request_duration
                    .with_label_values(&[route.name.as_str(), outcome.as_str()])
            })
            .observe(seconds);
    }

    pub fn upstream_duration(&self, route: &RouteMetrics, seconds: f64) {
        route
            .upstream
            .get_or_init(|| {
                self.upstream_duration
                    .with_label_values(&[route.name.as_str()])
            })
            .observe(seconds);
    }

    pub fn upstream_error(&self, route: &RouteMetrics, kind: &str) {
        self.upstream_errors
            .with_label_values(&[route.name.as_str(), kind])
            .inc();
    }

    /// One entry checked by `POST /admin/verify`.
    pub fn verified(&self, result: &str) {
        self.verify.with_label_values(&[result]).inc();
    }

    pub fn not_stored(&self, route: &RouteMetrics, reason: &str) {
        self.not_stored
            .with_label_values(&[route.name.as_str(), reason])
            .inc();
    }

    pub fn coalesced_wait(&self, route: &RouteMetrics) {
        route
            .coalesced
            .get_or_init(|| {
                self.coalesced_waits
                    .with_label_values(&[route.name.as_str()])
            })
            .inc();
    }

    pub fn l1_removed(&self, cause: &str, n: u64) {
        self.l1_evictions.with_label_values(&[cause]).inc_by(n);
    }

    /// Counts one L2 operation; `seconds` when a round trip was made.
    pub fn l2_op(&self, redis: &str, op: &str, result: &str, seconds: Option<f64>) {
        self.l2_operations
            .with_label_values(&[redis, op, result])
            .inc();
        if let Some(s) = seconds {
            self.l2_duration.with_label_values(&[redis, op]).observe(s);
        }
    }

    pub fn l2_lookup(&self, result: &str) {
        self.l2_lookups.with_label_values(&[result]).inc();
    }

    pub fn l2_lease_wait(&self, result: &str) {
        self.l2_lease_waits.with_label_values(&[result]).inc();
    }

    /// Marks `state` (`closed`, `open` or `half_open`) as the breaker's current state.
    pub fn set_breaker_state(&self, redis: &str, state: &str) {
        for s in BREAKER_STATES {
            self.breaker_state
                .with_label_values(&[redis, s])
                .set(i64::from(s == state));
        }
    }

    pub fn invalidation(&self, source: &str) {
        self.invalidations.with_label_values(&[source]).inc();
    }

    pub fn invalidated_entries(&self, tier: &str, n: u64) {
        self.invalidated_entries
            .with_label_values(&[tier])
            .inc_by(n);
    }

    pub fn set_pubsub_connected(&self, connected: bool) {
        self.pubsub_connected.set(i64::from(connected));
    }

    pub fn pubsub_message(&self, kind: &str, result: &str) {
        self.pubsub_messages
            .with_label_values(&[kind, result])
            .inc();
    }

    pub fn pubsub_lag(&self, seconds: f64) {
        self.pubsub_lag.observe(seconds);
    }

    pub fn ratelimit(&self, rule: &str, outcome: &str, backend: &str) {
        self.ratelimit
            .with_label_values(&[rule, outcome, backend])
            .inc();
    }

    pub fn config_reload(&self, applied: bool) {
        let result = if applied { "applied" } else { "rejected" };
        self.config_reloads.with_label_values(&[result]).inc();
        self.config_valid.set(i64::from(applied));
    }

    pub fn set_l1_usage(&self, entries: u64, bytes: u64) {
        self.l1_entries.set(entries as i64);
        self.l1_bytes.set(bytes as i64);
    }

    /// Sums of the counter family `name` by the value of `label` (admin stats).
    pub fn totals(&self, name: &str, label: &str) -> std::collections::BTreeMap<String, u64> {
        let mut out = std::collections::BTreeMap::new();
        for family in self.registry.gather().iter().filter(|f| f.name() == name) {
            for m in family.get_metric() {
                if let Some(l) = m.get_label().iter().find(|l| l.name() == label) {
                    *out.entry(l.value().to_string()).or_insert(0) +=
                        m.get_counter().get_value() as u64;
                }
            }
        }
        out
    }

    /// Every family as `/metrics` renders it (for the admin status page, which must show the
    /// same numbers).
    pub fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.registry.gather()
    }

    /// The Prometheus text exposition of every family.
    pub fn render(&self) -> String {
        let mut out = Vec::with_capacity(16 * 1024);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        String::from_utf8(out).expect("prometheus text is UTF-8")
    }
}

impl RouteMetrics {
    /// The route label (`none` for unrouted traffic).
    pub fn name(&self) -> &str {
        &self.name
    }

    fn new(name: &str) -> RouteMetrics {
        RouteMetrics {
            name: name.to_string(),
            requests: (0..METHODS.len() * OUTCOMES * STATUS_CLASSES.len())
                .map(|_| OnceLock::new())
                .collect(),
            durations: Default::default(),
            upstream: OnceLock::new(),
            coalesced: OnceLock::new(),
        }
    }
}

fn method_index(m: &Method) -> usize {
    match *m {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::PATCH => 4,
        Method::DELETE => 5,
        Method::OPTIONS => 6,
        _ => 7,
    }
}
