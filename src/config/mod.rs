//! Configuration: load the TOML file (or the embedded default), apply environment overrides,
//! and validate it into [`Config`]. Validation collects *every* problem, each named by its key,
//! so that `sidecache check` and a refused start list them all at once. Nothing downstream of
//! this module ever sees an unchecked value.

pub mod file;
mod redact;
pub mod template;
pub mod units;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http::header::HeaderName;
use http::{HeaderValue, Uri};

pub use redact::redact_url;
pub use template::{MatchTemplate, Segment, Template, MAX_PARAMS};
pub use validate::limit::parse_rate;
pub use validate::route::HOP_BY_HOP_NAMES;

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
    /// Legal but doubtful settings, each as `key: message`: `check` prints them and the
    /// process logs them at start; they never stop it.
    pub warnings: Vec<String>,
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
    /// `[limits.redis]`; `None`: the limits share `[l2]`'s client.
    pub redis: Option<RedisConfig>,
}

#[derive(Debug, Clone)]
pub struct PubsubConfig {
    pub channel: String,
    pub heartbeat: Duration,
    pub degraded_max_age: Duration,
    /// `[pubsub.redis]`; `None`: pub/sub goes through `[l2]`'s target.
    pub redis: Option<RedisConfig>,
}

/// `Debug` in `redact.rs`: it never shows the token.
#[derive(Clone, Default)]
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
/// `Debug` and `Display` in `redact.rs`: they never show a password.
#[derive(Clone, PartialEq, Eq)]
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

/// One Redis deployment and how to talk to it: `[l2]`'s connection part, `[limits.redis]`,
/// `[pubsub.redis]`. `Debug` in `redact.rs`: it never shows the password.
#[derive(Clone, PartialEq)]
pub struct RedisConfig {
    /// Which section it comes from (`l2`, `limits`, `pubsub`): the `redis` label of the Redis
    /// metrics and the name in logs.
    pub role: &'static str,
    pub target: RedisTarget,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub username: Option<String>,
    pub password: Option<String>,
    pub breaker_failures: u32,
    pub breaker_open: Duration,
    /// Certificate files for `rediss://` (unused with `redis://`).
    pub tls: TlsFiles,
}

impl L2Config {
    /// The connection part, labelled `role`.
    pub fn redis(&self, role: &'static str) -> RedisConfig {
        RedisConfig {
            role,
            target: self.target.clone(),
            timeout: self.timeout,
            connect_timeout: self.connect_timeout,
            username: self.username.clone(),
            password: self.password.clone(),
            breaker_failures: self.breaker_failures,
            breaker_open: self.breaker_open,
            tls: self.tls.clone(),
        }
    }
}

/// `Debug` in `redact.rs`: it never shows the password.
#[derive(Clone, PartialEq)]
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
    /// Certificate files for `rediss://` (unused with `redis://`).
    pub tls: TlsFiles,
}

#[derive(Debug, Clone, Default)]
pub struct WarmupConfig {
    pub paths: Vec<String>,
    pub concurrency: usize,
    pub gate_readiness: bool,
    pub timeout: Duration,
    /// Re-run `paths` this often (zero: only at start).
    pub every: Duration,
    /// Hot keys recorded in L2 and loaded at start (zero: off).
    pub hot_keys: usize,
    /// How often this pod adds its hot keys to L2.
    pub hot_keys_every: Duration,
    /// Longest time loading hot keys may hold readiness.
    pub hot_keys_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct ListenConfig {
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub max_header_bytes: usize,
    /// Client connections open at once on the proxy listener.
    pub max_connections: usize,
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
    /// HTTP/1.1 (the default), or HTTP/2 (`h2c` in the clear, `h2` over TLS with ALPN).
    pub protocol: UpstreamProtocol,
    /// `Some` for an `https://` URL.
    pub tls: Option<UpstreamTls>,
}

/// The upstream's HTTP version (`upstream.protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamProtocol {
    /// `"http/1.1"`: sidecache's own pooled client.
    #[default]
    Http1,
    /// `"h2c"`: HTTP/2 with prior knowledge over plain TCP (gRPC backends).
    H2c,
    /// `"h2"`: HTTP/2 over TLS, negotiated with ALPN.
    H2,
}

impl UpstreamProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamProtocol::Http1 => "http/1.1",
            UpstreamProtocol::H2c => "h2c",
            UpstreamProtocol::H2 => "h2",
        }
    }

    pub fn is_h2(self) -> bool {
        self != UpstreamProtocol::Http1
    }
}

/// TLS to an `https://` upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    pub files: TlsFiles,
    /// The name sent as SNI and checked against the certificate: the URL's host unless
    /// `tls_server_name` says otherwise.
    pub server_name: String,
}

/// Certificate files of a TLS client (`ca_file` is added to the system roots; `cert_file` and
/// `key_file` are a client certificate for mutual TLS).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca_file: Option<std::path::PathBuf>,
    pub cert_file: Option<std::path::PathBuf>,
    pub key_file: Option<std::path::PathBuf>,
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
    /// The route's freshness lifetime; `None`: from the response alone (RFC 9111 §4.2.1).
    pub ttl: Option<Duration>,
    pub scope: Scope,
    /// Whether `scope` was written in the file (an unset shared scope is careful with
    /// `Authorization`, RFC 9111 §3.5).
    pub scope_explicit: bool,
    pub identity_header: HeaderName,
    pub tags: Vec<Template>,
    pub honor_upstream: bool,
    pub cache_control: Option<HeaderValue>,
    pub statuses: Vec<u16>,
    pub vary: Vec<HeaderName>,
    pub ignore_query: Vec<String>,
    /// Honour the request's `Cache-Control` (RFC 9111 §5.2.1).
    pub honor_request: bool,
    /// Heuristic freshness: this fraction of `Date - Last-Modified` (RFC 9111 §4.2.2)...
    pub heuristic: f64,
    /// ... at most this long.
    pub heuristic_max: Duration,
    /// Variants (responses with `Vary`) kept per primary key at most.
    pub max_variants: u16,
    /// How long past its freshness an entry may be served stale (see `stale.rs`).
    pub grace: Duration,
    /// Cap on the origin's `stale-while-revalidate` / `stale-if-error`.
    pub max_grace: Duration,
    /// The route's grace also serves stale while revalidating (else only on errors).
    pub grace_while_revalidate: bool,
    /// RFC 9213 field that takes precedence over `CDN-Cache-Control` and `Cache-Control`.
    pub targeted_cache_control: Option<HeaderName>,
    pub strip_targeted: bool,
    /// Field carrying origin-provided tags (`Surrogate-Key`, `Cache-Tag`).
    pub surrogate_key: Option<HeaderName>,
    pub strip_surrogate_key: bool,
    /// Which tiers hold this route's entries.
    pub tiers: Tiers,
}

/// `tiers = ["l1"]`, `["l1", "l2"]` (default) or `["l2"]`. Whatever the tiers, a route's
/// entries take part in invalidation (L1's tag index, L2's tag sets) and in coalescing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tiers {
    /// Kept in this pod's memory (per-pod, e.g. prices: hot and short-lived).
    pub l1: bool,
    /// Kept in Redis, shared by the pods (when `[l2]` exists).
    pub l2: bool,
}

impl Default for Tiers {
    fn default() -> Tiers {
        Tiers { l1: true, l2: true }
    }
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
        let sections = validate::Sections::read(table, &mut errors);
        let config = validate::validate(sections, &env, &mut errors);
        if errors.is_empty() {
            Ok(config.expect("validated config without errors"))
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

#[cfg(test)]
mod tests;
