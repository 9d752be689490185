//! Configuration: load the TOML file (or the embedded default), apply environment overrides,
//! and validate it into [`Config`]. Validation collects *every* problem, each named by its key,
//! so that `sidecache check` and a refused start list them all at once. Nothing downstream of
//! this module ever sees an unchecked value.

pub mod file;
pub mod template;
pub mod units;

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http::header::HeaderName;
use http::{HeaderValue, Method, Uri};
use serde::de::DeserializeOwned;

pub use template::{MatchTemplate, Segment, Template, MAX_PARAMS};

/// The documented example config, compiled in: `sidecache` without `--config` runs it.
pub const EMBEDDED: &str = include_str!("../../config/sidecache.toml");

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: ListenConfig,
    pub upstream: UpstreamConfig,
    pub l1: L1Config,
    pub runtime: RuntimeConfig,
    pub shutdown: ShutdownConfig,
    pub log: LogConfig,
    /// `None`: no `[l2]` section, L1 only.
    pub l2: Option<L2Config>,
    pub warmup: WarmupConfig,
    pub pubsub: PubsubConfig,
    pub admin: AdminConfig,
    pub routes: Vec<RouteConfig>,
    pub invalidations: Vec<InvalidateConfig>,
    pub events: Vec<EventConfig>,
    pub limits: LimitsConfig,
    /// How often the config file is polled for changes; zero: only on SIGHUP.
    pub reload_interval: Duration,
}

/// Where a rate-limit key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Header(HeaderName),
    /// The route's identity header (or `Authorization`), hashed.
    Identity,
    /// The first `X-Forwarded-For` address, else the peer address.
    Ip,
    /// A path parameter of the limit's match.
    Param(String),
}

/// Which requests a limit applies to.
#[derive(Debug, Clone)]
pub enum LimitScope {
    Match(MatchTemplate),
    Route(String),
}

#[derive(Debug, Clone)]
pub struct LimitConfig {
    pub name: String,
    pub scope: LimitScope,
    pub key: Vec<KeySource>,
    /// Requests per `period`.
    pub count: u32,
    pub period: Duration,
    pub burst: u32,
    pub shadow: bool,
}

#[derive(Debug, Clone, Default)]
pub struct LimitsConfig {
    pub replicas: u32,
    pub rules: Vec<LimitConfig>,
}

/// Parses `"10/s"`, `"100/min"`, `"5000/h"`, `"10000/day"` into (count, period).
pub fn parse_rate(text: &str) -> Result<(u32, Duration), String> {
    let (n, unit) = text
        .trim()
        .split_once('/')
        .ok_or_else(|| format!("`{text}` is not a rate; write e.g. \"10/s\" or \"100/min\""))?;
    let count: u32 = n
        .trim()
        .parse()
        .map_err(|_| format!("`{text}`: `{n}` is not a whole number of requests"))?;
    if count == 0 {
        return Err(format!("`{text}`: the count must be at least 1"));
    }
    let period = match unit.trim() {
        "s" | "sec" | "second" => Duration::from_secs(1),
        "m" | "min" | "minute" => Duration::from_secs(60),
        "h" | "hour" => Duration::from_secs(3600),
        "d" | "day" => Duration::from_secs(86_400),
        other => {
            return Err(format!(
                "`{text}`: unknown period `{other}` (use s, min, h or day)"
            ))
        }
    };
    Ok((count, period))
}

#[derive(Debug, Clone)]
pub struct PubsubConfig {
    pub channel: String,
    pub heartbeat: Duration,
    pub degraded_max_age: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct AdminConfig {
    /// The bearer token of mutating admin endpoints; `None` disables them.
    pub token: Option<String>,
}

/// What happens to invalidated entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Evict,
    /// Evict, then fetch the new value once in the background.
    Refresh,
}

#[derive(Debug, Clone)]
pub struct InvalidateConfig {
    pub matcher: MatchTemplate,
    pub tags: Vec<Template>,
    /// Empty: every 2xx.
    pub statuses: Vec<u16>,
    pub action: Action,
}

#[derive(Debug, Clone)]
pub enum Subscription {
    Channel(String),
    Pattern(String),
}

#[derive(Debug, Clone)]
pub struct EventConfig {
    pub subscription: Subscription,
    pub tags: Vec<Template>,
    /// (dotted field path, required JSON value)
    pub when: Vec<(String, serde_json::Value)>,
    pub action: Action,
}

/// Which Redis deployment holds L2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// `redis://host:port/db`.
    Standalone(String),
    /// Sentinel nodes and the master name; the master is looked up and followed on failover.
    Sentinel {
        nodes: Vec<String>,
        master_name: String,
        db: i64,
    },
    /// Cluster seed nodes.
    Cluster(Vec<String>),
}

#[derive(Debug, Clone)]
pub struct L2Config {
    pub target: RedisTarget,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub prefix: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub lease: Duration,
    pub lease_wait: Duration,
    pub breaker_failures: u32,
    pub breaker_open: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct WarmupConfig {
    pub paths: Vec<String>,
    pub concurrency: usize,
    pub gate_readiness: bool,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct ListenConfig {
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub max_header_bytes: usize,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// `http://authority`; requests keep their own path and query.
    pub url: Uri,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub client_body_timeout: Duration,
    pub fill_quiet: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle: usize,
    pub preserve_host: bool,
}

#[derive(Debug, Clone)]
pub struct L1Config {
    pub max_bytes: u64,
    pub max_entry_bytes: usize,
    pub max_age: Duration,
}

#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub worker_threads: usize,
}

#[derive(Debug, Clone)]
pub struct ShutdownConfig {
    pub drain_delay: Duration,
    pub grace_period: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
    pub access_log: bool,
}

/// Who shares a cached response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every caller gets the same entry.
    Shared,
    /// The caller identity (a header, hashed) is part of the key.
    Identity,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Shared => "shared",
            Scope::Identity => "identity",
        }
    }
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: String,
    pub matcher: MatchTemplate,
    pub ttl: Duration,
    pub scope: Scope,
    pub identity_header: HeaderName,
    pub tags: Vec<Template>,
    pub honor_upstream: bool,
    pub cache_control: Option<HeaderValue>,
    pub statuses: Vec<u16>,
    pub vary: Vec<HeaderName>,
    pub ignore_query: Vec<String>,
}

/// Every problem found in a config, each as `key: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} problem(s) in the config:", self.0.len())?;
        for e in &self.0 {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The route name that labels unrouted traffic in metrics; no route may take it.
pub const RESERVED_ROUTE_NAME: &str = "none";

/// Environment variables that override file values (names as in the docs).
pub const ENV_UPSTREAM_URL: &str = "SIDECACHE_UPSTREAM_URL";
pub const ENV_LISTEN_PROXY: &str = "SIDECACHE_LISTEN_PROXY";
pub const ENV_LISTEN_ADMIN: &str = "SIDECACHE_LISTEN_ADMIN";
pub const ENV_LOG_FORMAT: &str = "SIDECACHE_LOG_FORMAT";
pub const ENV_LOG: &str = "SIDECACHE_LOG";
pub const ENV_ADMIN_TOKEN: &str = "SIDECACHE_ADMIN_TOKEN";
pub const ENV_REPLICAS: &str = "SIDECACHE_REPLICAS";

impl Config {
    /// Reads `path` (or the embedded default when `None`) and applies environment overrides.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigErrors> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p)
                .map_err(|e| ConfigErrors(vec![format!("{}: cannot read: {e}", p.display())]))?,
            None => EMBEDDED.to_string(),
        };
        Self::parse_with_env(&text, |k| std::env::var(k).ok())
    }

    /// Parses config text with no environment overrides (tests, `check` of a string).
    pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
        Self::parse_with_env(text, |_| None)
    }

    /// Parses config text, taking overrides from `env`.
    pub fn parse_with_env(
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigErrors> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigErrors(vec![format!("syntax: {e}")]))?;
        let mut errors = Vec::new();
        let sections = Sections::read(table, &mut errors);
        let config = validate(sections, &env, &mut errors);
        if errors.is_empty() {
            Ok(config.expect("validated config without errors"))
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

/// The file's sections, each deserialized on its own so one bad section does not hide the
/// problems of the next.
#[derive(Default)]
struct Sections {
    listen: file::ListenFile,
    upstream: file::UpstreamFile,
    l1: file::L1File,
    runtime: file::RuntimeFile,
    shutdown: file::ShutdownFile,
    log: file::LogFile,
    l2: Option<file::L2File>,
    warmup: file::WarmupFile,
    pubsub: file::PubsubFile,
    admin: file::AdminFile,
    routes: Vec<file::RouteFile>,
    invalidations: Vec<file::InvalidateFile>,
    events: Vec<file::EventFile>,
    limits: file::LimitsFile,
    limit_rules: Vec<file::LimitFile>,
    reload: file::ReloadFile,
}

impl Sections {
    fn read(mut table: toml::Table, errors: &mut Vec<String>) -> Sections {
        let mut s = Sections {
            listen: section(&mut table, "listen", errors),
            upstream: section(&mut table, "upstream", errors),
            l1: section(&mut table, "l1", errors),
            runtime: section(&mut table, "runtime", errors),
            shutdown: section(&mut table, "shutdown", errors),
            log: section(&mut table, "log", errors),
            l2: table
                .contains_key("l2")
                .then(|| section(&mut table, "l2", errors)),
            warmup: section(&mut table, "warmup", errors),
            pubsub: section(&mut table, "pubsub", errors),
            admin: section(&mut table, "admin", errors),
            routes: Vec::new(),
            invalidations: Vec::new(),
            events: Vec::new(),
            limits: section(&mut table, "limits", errors),
            limit_rules: Vec::new(),
            reload: section(&mut table, "reload", errors),
        };
        s.limit_rules = array(&mut table, "limit", errors);
        s.routes = array(&mut table, "route", errors);
        s.invalidations = array(&mut table, "invalidate", errors);
        s.events = array(&mut table, "event", errors);
        for key in table.keys() {
            errors.push(format!(
                "{key}: unknown section (known: listen, upstream, l1, l2, pubsub, runtime, shutdown, log, warmup, admin, limits, reload, route, invalidate, event, limit)"
            ));
        }
        s
    }
}

fn section<T: DeserializeOwned + Default>(
    table: &mut toml::Table,
    key: &str,
    errors: &mut Vec<String>,
) -> T {
    match table.remove(key) {
        None => T::default(),
        Some(value) => value.try_into().unwrap_or_else(|e: toml::de::Error| {
            errors.push(format!("{key}: {}", e.message()));
            T::default()
        }),
    }
}

fn array<T: DeserializeOwned>(
    table: &mut toml::Table,
    key: &str,
    errors: &mut Vec<String>,
) -> Vec<T> {
    match table.remove(key) {
        None => Vec::new(),
        Some(toml::Value::Array(items)) => items
            .into_iter()
            .enumerate()
            .filter_map(|(i, v)| match v.try_into() {
                Ok(t) => Some(t),
                Err(e) => {
                    let e: toml::de::Error = e;
                    errors.push(format!("{key}[{i}]: {}", e.message()));
                    None
                }
            })
            .collect(),
        Some(_) => {
            errors.push(format!("{key}: must be an array of tables, `[[{key}]]`"));
            Vec::new()
        }
    }
}

/// Checks one value, recording the error under `key` and returning `default` so validation
/// goes on to find the next problem.
fn check<T>(errors: &mut Vec<String>, key: &str, result: Result<T, String>, default: T) -> T {
    result.unwrap_or_else(|e| {
        errors.push(format!("{key}: {e}"));
        default
    })
}

fn duration(errors: &mut Vec<String>, key: &str, v: Option<String>, default: &str) -> Duration {
    let text = v.unwrap_or_else(|| default.to_string());
    check(errors, key, units::parse_duration(&text), Duration::ZERO)
}

fn size(errors: &mut Vec<String>, key: &str, v: Option<String>, default: &str) -> u64 {
    let text = v.unwrap_or_else(|| default.to_string());
    check(errors, key, units::parse_size(&text), 0)
}

fn socket_addr(errors: &mut Vec<String>, key: &str, text: &str) -> SocketAddr {
    check(
        errors,
        key,
        text.parse()
            .map_err(|_| format!("`{text}` is not an address like \"127.0.0.1:8080\"")),
        SocketAddr::from(([127, 0, 0, 1], 0)),
    )
}

fn upstream_url(text: &str) -> Result<Uri, String> {
    let uri: Uri = text
        .parse()
        .map_err(|e| format!("`{text}` is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(other) => {
            return Err(format!(
                "`{text}`: scheme `{other}` is not supported (use http://; TLS to the backend belongs to the mesh)"
            ))
        }
        None => return Err(format!("`{text}`: write it as http://host:port")),
    }
    if uri.authority().is_none() {
        return Err(format!("`{text}`: no host"));
    }
    if uri.path() != "/" && !uri.path().is_empty() {
        return Err(format!(
            "`{text}`: a path prefix is not supported; requests keep their own path"
        ));
    }
    Ok(uri)
}

fn validate(
    s: Sections,
    env: &impl Fn(&str) -> Option<String>,
    errors: &mut Vec<String>,
) -> Option<Config> {
    let e = errors;

    let proxy = env(ENV_LISTEN_PROXY)
        .or(s.listen.proxy)
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let admin = env(ENV_LISTEN_ADMIN)
        .or(s.listen.admin)
        .unwrap_or_else(|| "127.0.0.1:9901".into());
    let listen = ListenConfig {
        proxy: socket_addr(e, "listen.proxy", &proxy),
        admin: socket_addr(e, "listen.admin", &admin),
        max_header_bytes: size(
            e,
            "listen.max_header_bytes",
            s.listen.max_header_bytes,
            "64KiB",
        ) as usize,
    };
    if listen.max_header_bytes < 8192 {
        e.push("listen.max_header_bytes: must be at least 8KiB".into());
    }
    if listen.proxy == listen.admin && listen.proxy.port() != 0 {
        e.push("listen.admin: must differ from listen.proxy".into());
    }

    let url = match env(ENV_UPSTREAM_URL).or(s.upstream.url) {
        Some(text) => check(e, "upstream.url", upstream_url(&text), Uri::default()),
        None => {
            e.push(format!(
                "upstream.url: required (or set {ENV_UPSTREAM_URL}), e.g. \"http://backend:80\""
            ));
            Uri::default()
        }
    };
    let upstream = UpstreamConfig {
        url,
        connect_timeout: duration(
            e,
            "upstream.connect_timeout",
            s.upstream.connect_timeout,
            "500ms",
        ),
        timeout: duration(e, "upstream.timeout", s.upstream.timeout, "5s"),
        client_body_timeout: duration(
            e,
            "upstream.client_body_timeout",
            s.upstream.client_body_timeout,
            "30s",
        ),
        fill_quiet: duration(e, "upstream.fill_quiet", s.upstream.fill_quiet, "50ms"),
        pool_idle_timeout: duration(
            e,
            "upstream.pool_idle_timeout",
            s.upstream.pool_idle_timeout,
            "90s",
        ),
        pool_max_idle: s.upstream.pool_max_idle.unwrap_or(256),
        preserve_host: s.upstream.preserve_host.unwrap_or(false),
    };
    for (key, d) in [
        ("upstream.connect_timeout", upstream.connect_timeout),
        ("upstream.timeout", upstream.timeout),
        ("upstream.client_body_timeout", upstream.client_body_timeout),
    ] {
        if d.is_zero() && !e.iter().any(|x| x.starts_with(key)) {
            e.push(format!("{key}: must be greater than zero"));
        }
    }

    let l1 = L1Config {
        max_bytes: size(e, "l1.max_bytes", s.l1.max_bytes, "128MiB"),
        max_entry_bytes: size(e, "l1.max_entry_bytes", s.l1.max_entry_bytes, "1MiB") as usize,
        max_age: duration(e, "l1.max_age", s.l1.max_age, "5m"),
    };
    if l1.max_age.is_zero() {
        e.push("l1.max_age: must be greater than zero".into());
    }
    if l1.max_entry_bytes as u64 > l1.max_bytes && l1.max_bytes > 0 {
        e.push("l1.max_entry_bytes: larger than l1.max_bytes".into());
    }
    if l1.max_entry_bytes as u64 > u32::MAX as u64 / 2 {
        e.push("l1.max_entry_bytes: at most 2GiB".into());
    }

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = RuntimeConfig {
        worker_threads: s.runtime.worker_threads.unwrap_or(cores),
    };
    if runtime.worker_threads == 0 || runtime.worker_threads > 256 {
        e.push("runtime.worker_threads: must be between 1 and 256".into());
    }

    let shutdown = ShutdownConfig {
        drain_delay: duration(e, "shutdown.drain_delay", s.shutdown.drain_delay, "0s"),
        grace_period: duration(e, "shutdown.grace_period", s.shutdown.grace_period, "25s"),
    };

    let format = match env(ENV_LOG_FORMAT).or(s.log.format).as_deref() {
        None | Some("human") => LogFormat::Human,
        Some("json") => LogFormat::Json,
        Some(other) => {
            e.push(format!(
                "log.format: `{other}` is not \"human\" or \"json\""
            ));
            LogFormat::Human
        }
    };
    let log = LogConfig {
        format,
        level: env(ENV_LOG)
            .or(s.log.level)
            .unwrap_or_else(|| "info".into()),
        access_log: s.log.access_log.unwrap_or(false),
    };

    let l2 = s.l2.map(|l2| validate_l2(l2, env, e));
    let warmup = WarmupConfig {
        paths: s.warmup.paths.unwrap_or_default(),
        concurrency: s.warmup.concurrency.unwrap_or(4).max(1),
        gate_readiness: s.warmup.gate_readiness.unwrap_or(false),
        timeout: duration(e, "warmup.timeout", s.warmup.timeout, "30s"),
    };
    for (i, p) in warmup.paths.iter().enumerate() {
        if !p.starts_with('/') || p.parse::<http::uri::PathAndQuery>().is_err() {
            e.push(format!(
                "warmup.paths[{i}]: `{p}` is not a path like \"/api/items/1\""
            ));
        }
    }

    let mut routes: Vec<RouteConfig> = Vec::new();
    for (i, r) in s.routes.into_iter().enumerate() {
        if let Some(route) = validate_route(i, r, e) {
            if routes.iter().any(|x| x.name == route.name) {
                e.push(format!("route[{i}].name: `{}` is used twice", route.name));
            }
            routes.push(route);
        }
    }

    let has_l2 = l2.is_some();
    let prefix = l2.as_ref().map_or("sidecache", |l| l.prefix.as_str());
    let pubsub = PubsubConfig {
        channel: s
            .pubsub
            .channel
            .unwrap_or_else(|| format!("{prefix}:invalidate")),
        heartbeat: duration(e, "pubsub.heartbeat", s.pubsub.heartbeat, "1s"),
        degraded_max_age: duration(
            e,
            "pubsub.degraded_max_age",
            s.pubsub.degraded_max_age,
            "5s",
        ),
    };
    if pubsub.heartbeat < Duration::from_millis(10) {
        e.push("pubsub.heartbeat: at least 10ms".into());
    }
    let admin = AdminConfig {
        token: env(ENV_ADMIN_TOKEN)
            .or_else(|| {
                let path = s.admin.token_file?;
                match std::fs::read_to_string(&path) {
                    Ok(t) => Some(t.trim().to_string()),
                    Err(err) => {
                        e.push(format!("admin.token_file: cannot read `{path}`: {err}"));
                        None
                    }
                }
            })
            .filter(|t| !t.is_empty()),
    };
    let invalidations: Vec<InvalidateConfig> = s
        .invalidations
        .into_iter()
        .enumerate()
        .filter_map(|(i, r)| validate_invalidate(i, r, e))
        .collect();
    let events: Vec<EventConfig> = s
        .events
        .into_iter()
        .enumerate()
        .filter_map(|(i, r)| validate_event(i, r, e))
        .collect();
    let replicas = match env(ENV_REPLICAS) {
        Some(v) => check(
            e,
            ENV_REPLICAS,
            v.parse::<u32>()
                .map_err(|_| format!("`{v}` is not a number")),
            1,
        ),
        None => s.limits.replicas.unwrap_or(1),
    };
    if replicas == 0 {
        e.push("limits.replicas: at least 1".into());
    }
    let mut limit_rules: Vec<LimitConfig> = Vec::new();
    for (i, r) in s.limit_rules.into_iter().enumerate() {
        if let Some(rule) = validate_limit(i, r, &routes, e) {
            if limit_rules.iter().any(|x| x.name == rule.name) {
                e.push(format!("limit[{i}].name: `{}` is used twice", rule.name));
            }
            limit_rules.push(rule);
        }
    }
    let limits = LimitsConfig {
        replicas: replicas.max(1),
        rules: limit_rules,
    };
    if !has_l2 && !events.is_empty() {
        e.push("event: [[event]] rules need an [l2] section (the Redis they arrive on)".into());
    }

    Some(Config {
        listen,
        upstream,
        l1,
        runtime,
        shutdown,
        log,
        l2,
        warmup,
        pubsub,
        admin,
        routes,
        invalidations,
        events,
        limits,
        reload_interval: duration(e, "reload.interval", s.reload.interval, "2s"),
    })
}

fn validate_limit(
    i: usize,
    r: file::LimitFile,
    routes: &[RouteConfig],
    e: &mut Vec<String>,
) -> Option<LimitConfig> {
    let name = r.name.unwrap_or_else(|| format!("limit{i}"));
    let at = format!("limit[{i}] ({name})");
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        e.push(format!(
            "{at}.name: letters, digits, `_` or `-` only (it is a metric label)"
        ));
    }
    let mut params: Vec<String> = Vec::new();
    let scope = match (r.match_, r.route) {
        (Some(m), None) => match MatchTemplate::parse(&m) {
            Ok(t) => {
                params = t.params.clone();
                Some(LimitScope::Match(t))
            }
            Err(msg) => {
                e.push(format!("{at}.match: {msg}"));
                None
            }
        },
        (None, Some(route)) => match routes.iter().find(|x| x.name == route) {
            Some(x) => {
                params = x.matcher.params.clone();
                Some(LimitScope::Route(route))
            }
            None => {
                e.push(format!("{at}.route: no [[route]] is named `{route}`"));
                None
            }
        },
        _ => {
            e.push(format!("{at}: give exactly one of `match` or `route`"));
            None
        }
    };
    let specs = match r.key {
        Some(file::KeySpec::One(k)) => vec![k],
        Some(file::KeySpec::Many(ks)) => ks,
        None => Vec::new(),
    };
    if specs.is_empty() {
        e.push(format!("{at}.key: required, e.g. \"header:x-user-id\", \"identity\", \"ip\" or \"param:{{user_id}}\""));
    }
    let mut key = Vec::new();
    for spec in &specs {
        let source = if spec == "identity" {
            Some(KeySource::Identity)
        } else if spec == "ip" {
            Some(KeySource::Ip)
        } else if let Some(h) = spec.strip_prefix("header:") {
            Some(KeySource::Header(header_name(e, &format!("{at}.key"), h)))
        } else if let Some(p) = spec.strip_prefix("param:") {
            let p = p.trim_start_matches('{').trim_end_matches('}').to_string();
            if scope.is_some() && !params.contains(&p) {
                e.push(format!(
                    "{at}.key: `{spec}` names no path parameter of this limit's match"
                ));
            }
            Some(KeySource::Param(p))
        } else {
            e.push(format!(
                "{at}.key: `{spec}` is not header:NAME, identity, ip or param:{{name}}"
            ));
            None
        };
        key.extend(source);
    }
    let (count, period) = match r.rate.as_deref().map(parse_rate) {
        Some(Ok(r)) => r,
        Some(Err(msg)) => {
            e.push(format!("{at}.rate: {msg}"));
            (1, Duration::from_secs(1))
        }
        None => {
            e.push(format!("{at}.rate: required, e.g. \"10/s\""));
            (1, Duration::from_secs(1))
        }
    };
    let burst = r.burst.unwrap_or(count);
    if burst == 0 {
        e.push(format!("{at}.burst: at least 1"));
    }
    let shadow = match r.mode.as_deref() {
        None | Some("enforce") => false,
        Some("shadow") => true,
        Some(other) => {
            e.push(format!(
                "{at}.mode: `{other}` is not \"enforce\" or \"shadow\""
            ));
            false
        }
    };
    Some(LimitConfig {
        name,
        scope: scope?,
        key,
        count,
        period,
        burst: burst.max(1),
        shadow,
    })
}

fn action(e: &mut Vec<String>, key: &str, v: Option<&str>) -> Action {
    match v {
        None | Some("evict") => Action::Evict,
        Some("refresh") => Action::Refresh,
        Some(other) => {
            e.push(format!("{key}: `{other}` is not \"evict\" or \"refresh\""));
            Action::Evict
        }
    }
}

fn tag_templates(e: &mut Vec<String>, at: &str, tags: Option<Vec<String>>) -> Vec<Template> {
    let tags = tags.unwrap_or_default();
    if tags.is_empty() {
        e.push(format!("{at}.tags: list at least one tag template"));
    }
    tags.iter()
        .enumerate()
        .filter_map(|(j, t)| {
            Template::parse(t)
                .map_err(|msg| e.push(format!("{at}.tags[{j}]: {msg}")))
                .ok()
        })
        .collect()
}

fn validate_invalidate(
    i: usize,
    r: file::InvalidateFile,
    e: &mut Vec<String>,
) -> Option<InvalidateConfig> {
    let at = format!("invalidate[{i}]");
    let matcher = match r.match_.as_deref().map(MatchTemplate::parse) {
        Some(Ok(m)) if m.method == Method::GET || m.method == Method::HEAD => {
            e.push(format!(
                "{at}.match: a {} never changes data; invalidate on writes",
                m.method
            ));
            None
        }
        Some(Ok(m)) => Some(m),
        Some(Err(msg)) => {
            e.push(format!("{at}.match: {msg}"));
            None
        }
        None => {
            e.push(format!(
                "{at}.match: required, e.g. \"PUT /api/items/{{id}}\""
            ));
            None
        }
    };
    let tags = tag_templates(e, &at, r.tags);
    if let Some(m) = &matcher {
        for (j, t) in tags.iter().enumerate() {
            for f in t.fields() {
                if !m.params.iter().any(|p| p == f) {
                    e.push(format!(
                        "{at}.tags[{j}]: `{{{f}}}` is not a parameter of `{}`",
                        m.text
                    ));
                }
            }
        }
    }
    let statuses = r.statuses.unwrap_or_default();
    for st in &statuses {
        if !(100..600).contains(st) {
            e.push(format!("{at}.statuses: {st} is not an HTTP status"));
        }
    }
    let action = action(e, &format!("{at}.action"), r.action.as_deref());
    Some(InvalidateConfig {
        matcher: matcher?,
        tags,
        statuses,
        action,
    })
}

fn validate_event(i: usize, r: file::EventFile, e: &mut Vec<String>) -> Option<EventConfig> {
    let at = format!("event[{i}]");
    let subscription = match (r.channel, r.pattern) {
        (Some(c), None) if !c.is_empty() => Some(Subscription::Channel(c)),
        (None, Some(p)) if !p.is_empty() => Some(Subscription::Pattern(p)),
        _ => {
            e.push(format!("{at}: give exactly one of `channel` or `pattern`"));
            None
        }
    };
    let tags = tag_templates(e, &at, r.tags);
    let when = r
        .when
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(k, v)| match serde_json::to_value(&v) {
            Ok(json) => Some((k, json)),
            Err(err) => {
                e.push(format!("{at}.when.{k}: {err}"));
                None
            }
        })
        .collect();
    let action = action(e, &format!("{at}.action"), r.action.as_deref());
    Some(EventConfig {
        subscription: subscription?,
        tags,
        when,
        action,
    })
}

fn redis_url(e: &mut Vec<String>, key: &str, text: &str) {
    use redis::IntoConnectionInfo;
    if text.starts_with("rediss://") {
        e.push(format!(
            "{key}: `rediss://` (TLS) is not built into this binary; terminate TLS in the mesh or use redis://"
        ));
    } else if let Err(err) = text.into_connection_info() {
        e.push(format!("{key}: `{text}` is not a Redis URL: {err}"));
    }
}

/// `redis+sentinel://host:port,host:port/master_name[/db]`.
fn sentinel_url(text: &str) -> Result<RedisTarget, String> {
    let rest = text
        .strip_prefix("redis+sentinel://")
        .ok_or_else(|| format!("`{text}` is not a redis+sentinel:// URL"))?;
    let (hosts, path) = rest.split_once('/').ok_or_else(|| {
        format!("`{text}`: write redis+sentinel://host:port,host:port/master_name")
    })?;
    let mut path = path.split('/');
    let master_name = path
        .next()
        .filter(|m| !m.is_empty())
        .ok_or_else(|| format!("`{text}`: the master name is missing after the hosts"))?;
    let db = match path.next() {
        None | Some("") => 0,
        Some(d) => d
            .parse()
            .map_err(|_| format!("`{text}`: `{d}` is not a database number"))?,
    };
    let nodes: Vec<String> = hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(|h| format!("redis://{h}"))
        .collect();
    if nodes.is_empty() {
        return Err(format!("`{text}`: no sentinel hosts"));
    }
    Ok(RedisTarget::Sentinel {
        nodes,
        master_name: master_name.to_string(),
        db,
    })
}

fn validate_l2(
    f: file::L2File,
    env: &impl Fn(&str) -> Option<String>,
    e: &mut Vec<String>,
) -> L2Config {
    let given = [f.url.is_some(), f.cluster.is_some(), f.sentinel.is_some()]
        .iter()
        .filter(|x| **x)
        .count();
    if given != 1 {
        e.push("l2: give exactly one of `url`, `cluster` or `[l2.sentinel]`".into());
    }
    let target = if let Some(url) = f.url {
        if url.starts_with("redis+sentinel://") {
            check(
                e,
                "l2.url",
                sentinel_url(&url),
                RedisTarget::Cluster(Vec::new()),
            )
        } else {
            redis_url(e, "l2.url", &url);
            RedisTarget::Standalone(url)
        }
    } else if let Some(nodes) = f.cluster {
        if nodes.is_empty() {
            e.push("l2.cluster: list at least one node".into());
        }
        for (i, n) in nodes.iter().enumerate() {
            redis_url(e, &format!("l2.cluster[{i}]"), n);
        }
        RedisTarget::Cluster(nodes)
    } else if let Some(s) = f.sentinel {
        let nodes = s.nodes.unwrap_or_default();
        if nodes.is_empty() {
            e.push("l2.sentinel.nodes: list at least one sentinel".into());
        }
        for (i, n) in nodes.iter().enumerate() {
            redis_url(e, &format!("l2.sentinel.nodes[{i}]"), n);
        }
        let master_name = s.master_name.unwrap_or_else(|| {
            e.push("l2.sentinel.master_name: required".into());
            String::new()
        });
        RedisTarget::Sentinel {
            nodes,
            master_name,
            db: s.db.unwrap_or(0),
        }
    } else {
        RedisTarget::Cluster(Vec::new())
    };
    let prefix = f.prefix.unwrap_or_else(|| "sidecache".into());
    if prefix.is_empty() || prefix.contains(['{', '}', ' ']) {
        e.push(format!(
            "l2.prefix: `{prefix}` must be non-empty, without braces or spaces"
        ));
    }
    let username_env = f
        .username_env
        .unwrap_or_else(|| "SIDECACHE_REDIS_USERNAME".into());
    let password_env = f
        .password_env
        .unwrap_or_else(|| "SIDECACHE_REDIS_PASSWORD".into());
    let lease = duration(e, "l2.lease", f.lease, "2s");
    let lease_wait = duration(e, "l2.lease_wait", f.lease_wait, "500ms");
    if lease_wait > lease {
        e.push("l2.lease_wait: must not exceed l2.lease".into());
    }
    let timeout = duration(e, "l2.timeout", f.timeout, "50ms");
    if timeout.is_zero() {
        e.push("l2.timeout: must be greater than zero".into());
    }
    L2Config {
        target,
        timeout,
        connect_timeout: duration(e, "l2.connect_timeout", f.connect_timeout, "500ms"),
        prefix,
        username: env(&username_env).filter(|v| !v.is_empty()),
        password: env(&password_env).filter(|v| !v.is_empty()),
        lease,
        lease_wait,
        breaker_failures: f.breaker_failures.unwrap_or(5).max(1),
        breaker_open: duration(e, "l2.breaker_open", f.breaker_open, "1s"),
    }
}

fn validate_route(i: usize, r: file::RouteFile, e: &mut Vec<String>) -> Option<RouteConfig> {
    let name = match r.name {
        Some(n)
            if !n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') =>
        {
            n
        }
        Some(n) => {
            e.push(format!(
                "route[{i}].name: `{n}` must be non-empty letters, digits, `_` or `-` (it is a metric label)"
            ));
            format!("route{i}")
        }
        None => {
            e.push(format!("route[{i}].name: required"));
            format!("route{i}")
        }
    };
    if name == RESERVED_ROUTE_NAME {
        e.push(format!(
            "route[{i}].name: `{name}` is reserved for unrouted traffic in metrics"
        ));
    }
    let at = format!("route[{i}] ({name})");
    let before = e.len();

    let matcher = match r.match_ {
        Some(m) => match MatchTemplate::parse(&m) {
            Ok(t) if t.method == Method::GET => Some(t),
            Ok(t) => {
                e.push(format!(
                    "{at}.match: only GET routes are cached, not {} (writes belong in [[invalidate]])",
                    t.method
                ));
                None
            }
            Err(msg) => {
                e.push(format!("{at}.match: {msg}"));
                None
            }
        },
        None => {
            e.push(format!(
                "{at}.match: required, e.g. \"GET /api/items/{{id}}\""
            ));
            None
        }
    };
    let ttl = match r.ttl {
        Some(t) => check(
            e,
            &format!("{at}.ttl"),
            units::parse_duration(&t),
            Duration::ZERO,
        ),
        None => {
            e.push(format!("{at}.ttl: required, e.g. \"60s\""));
            Duration::ZERO
        }
    };
    if ttl.is_zero() && e.len() == before {
        e.push(format!("{at}.ttl: must be greater than zero"));
    }
    let scope = match r.scope.as_deref() {
        None | Some("shared") => Scope::Shared,
        Some("identity") => Scope::Identity,
        Some(other) => {
            e.push(format!(
                "{at}.scope: `{other}` is not \"shared\" or \"identity\""
            ));
            Scope::Shared
        }
    };
    let identity_header = header_name(
        e,
        &format!("{at}.identity_header"),
        r.identity_header.as_deref().unwrap_or("authorization"),
    );
    let mut tags = Vec::new();
    for (j, text) in r.tags.unwrap_or_default().iter().enumerate() {
        match Template::parse(text) {
            Ok(t) => {
                if let Some(m) = &matcher {
                    for f in t.fields() {
                        if !m.params.iter().any(|p| p == f) {
                            e.push(format!(
                                "{at}.tags[{j}]: `{{{f}}}` is not a parameter of `{}`",
                                m.text
                            ));
                        }
                    }
                }
                tags.push(t);
            }
            Err(msg) => e.push(format!("{at}.tags[{j}]: {msg}")),
        }
    }
    let cache_control = r.cache_control.and_then(|v| {
        HeaderValue::from_str(&v)
            .map_err(|_| e.push(format!("{at}.cache_control: not a valid header value")))
            .ok()
    });
    let statuses = r
        .statuses
        .unwrap_or_else(|| vec![200, 203, 204, 300, 301, 308]);
    for s in &statuses {
        if !(200..400).contains(s) {
            e.push(format!("{at}.statuses: {s} is not a 2xx or 3xx status"));
        }
    }
    let vary = r
        .vary
        .unwrap_or_default()
        .iter()
        .map(|h| header_name(e, &format!("{at}.vary"), h))
        .collect();

    Some(RouteConfig {
        name,
        matcher: matcher?,
        ttl,
        scope,
        identity_header,
        tags,
        honor_upstream: r.honor_upstream.unwrap_or(true),
        cache_control,
        statuses,
        vary,
        ignore_query: r.ignore_query.unwrap_or_default(),
    })
}

fn header_name(e: &mut Vec<String>, key: &str, text: &str) -> HeaderName {
    check(
        e,
        key,
        HeaderName::from_bytes(text.to_ascii_lowercase().as_bytes())
            .map_err(|_| format!("`{text}` is not a header name")),
        HeaderName::from_static("x-invalid"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::parse(EMBEDDED).unwrap();
        assert!(!c.routes.is_empty());
    }

    #[test]
    fn every_problem_is_listed() {
        let bad = r#"
            [listen]
            proxy = "nowhere"
            [upstream]
            url = "ftp://x"
            timeout = "5 parsecs"
            [l1]
            max_bytes = "lots"
            [[route]]
            name = "a"
            match = "GET /a/{id}"
            ttl = "60"
            tags = ["a:{nope}"]
            scope = "everyone"
            [[route]]
            match = "POST /b"
            bogus = 1
        "#;
        let errs = Config::parse(bad).unwrap_err().0;
        let all = errs.join("\n");
        for needle in [
            "listen.proxy",
            "upstream.url",
            "upstream.timeout",
            "l1.max_bytes",
            "route[0] (a).ttl",
            "route[0] (a).tags[0]",
            "route[0] (a).scope",
            "route[1]: unknown field `bogus`",
        ] {
            assert!(all.contains(needle), "missing {needle} in:\n{all}");
        }
    }

    #[test]
    fn l2_targets() {
        let base = "[upstream]\nurl = \"http://127.0.0.1:1\"\n";
        let c = Config::parse(&format!("{base}[l2]\nurl = \"redis://127.0.0.1:6379\"")).unwrap();
        assert_eq!(
            c.l2.unwrap().target,
            RedisTarget::Standalone("redis://127.0.0.1:6379".into())
        );
        let c = Config::parse(&format!(
            "{base}[l2]\nurl = \"redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/mymaster\""
        ))
        .unwrap();
        assert_eq!(
            c.l2.unwrap().target,
            RedisTarget::Sentinel {
                nodes: vec![
                    "redis://10.0.0.1:26379".into(),
                    "redis://10.0.0.2:26379".into()
                ],
                master_name: "mymaster".into(),
                db: 0
            }
        );
        let errs = Config::parse(&format!(
            "{base}[l2]\nurl = \"redis://x\"\ncluster = [\"redis://y\"]\nlease = \"1s\"\nlease_wait = \"2s\""
        ))
        .unwrap_err()
        .0
        .join("\n");
        assert!(errs.contains("exactly one of"), "{errs}");
        assert!(errs.contains("l2.lease_wait"), "{errs}");
        let c = Config::parse_with_env(
            &format!("{base}[l2]\ncluster = [\"redis://127.0.0.1:7000\"]"),
            |k| (k == "SIDECACHE_REDIS_PASSWORD").then(|| "s3cret".to_string()),
        )
        .unwrap();
        assert_eq!(c.l2.unwrap().password.as_deref(), Some("s3cret"));
        assert!(Config::parse(base).unwrap().l2.is_none());
    }

    #[test]
    fn rates_and_limits() {
        assert_eq!(parse_rate("10/s").unwrap(), (10, Duration::from_secs(1)));
        assert_eq!(
            parse_rate("100/min").unwrap(),
            (100, Duration::from_secs(60))
        );
        assert!(parse_rate("ten").unwrap_err().contains("not a rate"));
        assert!(parse_rate("ten/s").is_err());
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("5/fortnight").is_err());
        let errs = Config::parse(
            r#"
            [upstream]
            url = "http://127.0.0.1:1"
            [[limit]]
            match = "POST /api/orders/{account}"
            key = ["header:x-user-id", "param:{nope}"]
            rate = "ten"
            mode = "maybe"
            [[limit]]
            route = "missing"
            key = "ip"
            rate = "1/s"
            "#,
        )
        .unwrap_err()
        .0
        .join("\n");
        for needle in [
            "limit[0] (limit0).rate",
            "limit[0] (limit0).key",
            "limit[0] (limit0).mode",
            "limit[1] (limit1).route",
        ] {
            assert!(errs.contains(needle), "{needle} missing in {errs}");
        }
    }

    #[test]
    fn env_overrides_file() {
        let c = Config::parse_with_env(EMBEDDED, |k| match k {
            ENV_UPSTREAM_URL => Some("http://10.1.2.3:81".into()),
            ENV_LISTEN_PROXY => Some("127.0.0.1:18080".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.upstream.url.authority().unwrap().as_str(), "10.1.2.3:81");
        assert_eq!(c.listen.proxy.port(), 18080);
    }
}
