//! The config file format, exactly as an operator writes it. Every struct denies unknown keys
//! and every field says its unit and default. Values stay in their written form (strings for
//! durations and sizes) so that `validate` can report every bad value at once; the validated
//! form lives in `config::Config`.

use serde::Deserialize;

/// `[listen]`: where sidecache accepts connections. Changing these needs a restart.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenFile {
    /// Address the application sends its backend calls to. Default `"127.0.0.1:8080"`.
    /// Env override: `SIDECACHE_LISTEN_PROXY`.
    pub proxy: Option<String>,
    /// Address of the admin listener (`/healthz`, `/readyz`, `/metrics`, `/admin/*`).
    /// Default `"127.0.0.1:9901"`. Env override: `SIDECACHE_LISTEN_ADMIN`.
    pub admin: Option<String>,
    /// Largest request head (request line + headers) accepted from a client; bigger → 431.
    /// Default `"64KiB"`.
    pub max_header_bytes: Option<String>,
    /// Client connections the proxy listener keeps open at once (a count, at least 1); past it
    /// new connections wait in the kernel's backlog until one closes. The admin listener is
    /// not counted, so probes are always answered. Default: derived from the open-files soft
    /// limit (`ulimit -n`): half of what is left after 96 descriptors (admin connections,
    /// Redis, the process itself) and `upstream.pool_max_idle`, since each client connection
    /// may hold one upstream connection; at least 16.
    pub max_connections: Option<usize>,
}

/// `[upstream]`: the backend every request is forwarded to.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    /// Base URL, `http://host:port`. Required. Env override: `SIDECACHE_UPSTREAM_URL`.
    pub url: Option<String>,
    /// Time to establish a TCP connection. Default `"500ms"`.
    pub connect_timeout: Option<String>,
    /// Time from the end of the request body to having the response head; for cache fills,
    /// also the time to read the whole body. Default `"5s"`.
    pub timeout: Option<String>,
    /// Longest wait for the next piece of a request body from the client while it is
    /// forwarded; past it the client gets a 408. Default `"30s"`.
    pub client_body_timeout: Option<String>,
    /// A fill whose answer will be stored goes on a pooled connection only if that one has
    /// been idle this long, else on a new one: an answer still on its way on a busy
    /// connection (a broken upstream's duplicate) can never be stored as another request's.
    /// `"0s"` turns it off. Default `"50ms"`: a 10ms-late duplicate that an upstream with
    /// Nagle's algorithm holds until our delayed ACK (~40ms on Linux) still arrives within it.
    pub fill_quiet: Option<String>,
    /// How long an idle pooled connection is kept. Default `"90s"`.
    pub pool_idle_timeout: Option<String>,
    /// Idle connections kept per upstream host. Default `256`.
    pub pool_max_idle: Option<usize>,
    /// Forward the client's `Host` header instead of the upstream's authority. Default `false`.
    pub preserve_host: Option<bool>,
    /// `"http/1.1"` (default), `"h2c"` (HTTP/2 with prior knowledge, `http://` URLs: gRPC
    /// backends) or `"h2"` (HTTP/2 over TLS with ALPN, `https://` URLs).
    pub protocol: Option<String>,
    /// `https://` only: a PEM file of CA certificates trusted besides the system roots.
    pub ca_file: Option<String>,
    /// `https://` only: the name sent as SNI and checked in the certificate. Default: the
    /// URL's host.
    pub tls_server_name: Option<String>,
    /// `https://` only: a PEM client certificate (chain) for backends that require mutual TLS;
    /// needs `key_file`.
    pub cert_file: Option<String>,
    /// `https://` only: the PEM private key of `cert_file`.
    pub key_file: Option<String>,
}

/// `[l1]`: the in-process cache.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct L1File {
    /// Memory budget for stored responses (bodies + headers + bookkeeping). Default `"128MiB"`.
    pub max_bytes: Option<String>,
    /// Largest response body that is stored; bigger bodies stream through uncached.
    /// Default `"1MiB"`.
    pub max_entry_bytes: Option<String>,
    /// Hard upper bound on how long an entry stays in L1, whatever its TTL: the bound on any
    /// staleness that a lost invalidation could cause. L2 keeps the full TTL. Default `"5m"`.
    pub max_age: Option<String>,
}

/// `[runtime]`: the async runtime.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeFile {
    /// Worker threads. Default: the number of CPU cores. `1` runs a single-threaded runtime.
    pub worker_threads: Option<usize>,
}

/// `[shutdown]`: what SIGTERM / SIGINT does.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownFile {
    /// Time between `/readyz` turning 503 and the listener closing, so that load balancers
    /// stop sending new requests first. Default `"0s"`.
    pub drain_delay: Option<String>,
    /// Time in-flight requests get to finish after the listener closes. Default `"25s"`.
    pub grace_period: Option<String>,
}

/// `[log]`: logging.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogFile {
    /// `"human"` (default) or `"json"`. Env override: `SIDECACHE_LOG_FORMAT`.
    pub format: Option<String>,
    /// A `tracing` filter such as `"info"` or `"sidecache=debug"`. Default `"info"`.
    /// Env override: `SIDECACHE_LOG`.
    pub level: Option<String>,
    /// One log line per request (target `sidecache::access`). Default `false`.
    pub access_log: Option<bool>,
}

/// `[[route]]`: a cached read endpoint.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    /// Unique name; used in metrics labels, logs and the admin API.
    pub name: Option<String>,
    /// `"GET /path/{param}/..."`. Only GET routes are cached (HEAD is served from them).
    #[serde(rename = "match")]
    pub match_: Option<String>,
    /// Freshness lifetime when the upstream's `Cache-Control` gives none (or always, with
    /// `honor_upstream = false`). Without it, freshness comes from the response alone
    /// (RFC 9111 §4.2.1): `s-maxage`, `max-age`, `Expires` - `Date`, then the heuristic below.
    /// Default: unset.
    pub ttl: Option<String>,
    /// Where entries are kept: `["l1"]` (this pod only: no Redis write per fill), `["l1",
    /// "l2"]` (default), or `["l2"]` (Redis only: one copy for every pod, no pod memory).
    pub tiers: Option<Vec<String>>,
    /// `"shared"` (default): one entry for every caller. `"identity"`: the caller identity is
    /// part of the key, so one caller's response is never served to another. Left unset, a
    /// request with `Authorization` is stored only when the response says `public`,
    /// `s-maxage` or `must-revalidate` (RFC 9111 §3.5), and `check` warns.
    pub scope: Option<String>,
    /// Header holding the caller identity for `scope = "identity"`. Default `"authorization"`.
    pub identity_header: Option<String>,
    /// Tag templates over the path params, e.g. `"group:{group}"`. Invalidation uses them.
    pub tags: Option<Vec<String>>,
    /// Use the upstream's `Cache-Control` max-age / s-maxage as the TTL when present.
    /// `no-store`, `private` and `Set-Cookie` are honoured either way. Default `true`.
    pub honor_upstream: Option<bool>,
    /// `Cache-Control` sent to the client on responses of this route; by default the
    /// upstream's is passed on.
    pub cache_control: Option<String>,
    /// Response statuses that may be stored: any final status but 206 and 304. Those outside
    /// `[200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501]` need explicit freshness from
    /// the upstream (or the route's `ttl`). Default: `[200, 203, 204, 300, 301, 308]` with a
    /// `ttl`; every storable status without.
    pub statuses: Option<Vec<u16>>,
    /// Request headers whose values are part of the key (e.g. `"accept-language"`), for
    /// upstreams that vary without saying `Vary`. A response whose `Vary` names other headers
    /// is stored as one of several variants. Default `[]`.
    pub vary: Option<Vec<String>>,
    /// Query parameters left out of the key (e.g. tracking parameters). Default `[]`.
    pub ignore_query: Option<Vec<String>>,
    /// Honour the request's `Cache-Control` (`no-store`, `no-cache`, `max-age`, `min-fresh`,
    /// `max-stale`, `only-if-cached`). Default `true` on a catch-all route (`{*name}`),
    /// `false` otherwise.
    pub honor_request: Option<bool>,
    /// Heuristic freshness for a response without explicit freshness but with
    /// `Last-Modified`: this fraction of `Date - Last-Modified` (RFC 9111 §4.2.2), from 0 to 1.
    /// Only without `ttl`. Default `0.1`.
    pub heuristic: Option<f64>,
    /// The longest heuristic freshness. Default `"1d"`.
    pub heuristic_max: Option<String>,
    /// Variants of one resource (responses with `Vary`) kept at most; storing one more starts
    /// a new generation, and the older variants are dropped. Default `16`.
    pub max_variants: Option<u16>,
    /// How long past its freshness an entry is kept to be served stale: at once while one
    /// background refresh runs (stale-while-revalidate), and when the upstream fails
    /// (stale-if-error). Never for invalidated entries, nor for responses with
    /// `must-revalidate`, `proxy-revalidate`, `no-cache` or `s-maxage`. Default `"0s"`.
    pub grace: Option<String>,
    /// Cap on the origin's own `stale-while-revalidate` / `stale-if-error` windows (used when
    /// longer than `grace`; only with `honor_upstream`). `"0s"` ignores them. Default `"5m"`.
    pub max_grace: Option<String>,
    /// Whether the route's `grace` also serves stale at once while one refresh runs
    /// (stale-while-revalidate). `false`: only when the upstream fails, which RFC 9111
    /// §4.2.4 allows without the origin's leave (the origin's own `stale-while-revalidate`
    /// still counts). Default `true`.
    pub grace_while_revalidate: Option<bool>,
    /// The field targeted at sidecache (RFC 9213): when the response carries it, its
    /// directives replace `Cache-Control` (and `CDN-Cache-Control`, `Surrogate-Control`, which
    /// come next in that order) for storing. `""` turns it off.
    /// Default `"Sidecache-Cache-Control"`.
    pub targeted_cache_control: Option<String>,
    /// Remove the targeted field, `CDN-Cache-Control` and `Surrogate-Control` from this
    /// route's answers to the app. Default `false` (passed on).
    pub strip_targeted: Option<bool>,
    /// Response field whose space- or comma-separated values add tags to the entry (purge
    /// them by tag like the route's own), e.g. `"Cache-Tag"`. `""` turns it off.
    /// Default `"Surrogate-Key"`.
    pub surrogate_key: Option<String>,
    /// Remove that field from this route's answers to the app. Default `true`.
    pub strip_surrogate_key: Option<bool>,
}

/// `[l2]`: the shared tier in Redis. Without this section sidecache runs L1-only.
/// Exactly one of `url`, `cluster` or `[l2.sentinel]` names the Redis deployment.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct L2File {
    /// A standalone Redis, `redis://host:port/db`, or Sentinel as
    /// `redis+sentinel://host:port,host:port/master_name`.
    pub url: Option<String>,
    /// Redis Cluster seed nodes, e.g. `["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"]`.
    pub cluster: Option<Vec<String>>,
    /// Redis Sentinel: the master name and the sentinel nodes.
    pub sentinel: Option<SentinelFile>,
    /// Time every Redis call gets; past it the call counts as a miss. Default `"50ms"`.
    pub timeout: Option<String>,
    /// Time to establish a connection. Default `"500ms"`.
    pub connect_timeout: Option<String>,
    /// Prefix of every key sidecache writes. Default `"sidecache"`.
    pub prefix: Option<String>,
    /// Environment variable holding the Redis username. Default `"SIDECACHE_REDIS_USERNAME"`.
    pub username_env: Option<String>,
    /// Environment variable holding the Redis password. Default `"SIDECACHE_REDIS_PASSWORD"`.
    pub password_env: Option<String>,
    /// How long a pod may hold the fill lease of a key (`SET NX PX`): others wait for L2 at
    /// most this long if the holder dies. Default `"2s"`.
    pub lease: Option<String>,
    /// How long a pod that lost the lease race waits for the winner's fill to appear in L2
    /// before it asks the upstream itself. Default `"500ms"`, at most `lease`.
    pub lease_wait: Option<String>,
    /// Consecutive failures that open the circuit breaker; at least `1`. Default `5`.
    pub breaker_failures: Option<u32>,
    /// How long the breaker stays open before one probe call is let through. Default `"1s"`.
    pub breaker_open: Option<String>,
    /// `rediss://` only: a PEM file of CA certificates trusted besides the system roots.
    pub ca_file: Option<String>,
    /// `rediss://` only: a PEM client certificate for mutual TLS; needs `key_file`.
    pub cert_file: Option<String>,
    /// `rediss://` only: the PEM private key of `cert_file`.
    pub key_file: Option<String>,
}

/// `[limits.redis]`, `[pubsub.redis]`: a Redis of its own for rate limits or pub/sub (the
/// same forms as `[l2]`). Exactly one of `url`, `cluster` or `[<section>.redis.sentinel]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisFile {
    /// A standalone Redis, `redis://host:port/db`, or Sentinel as
    /// `redis+sentinel://host:port,host:port/master_name[/db]`.
    pub url: Option<String>,
    /// Redis Cluster seed nodes.
    pub cluster: Option<Vec<String>>,
    /// Redis Sentinel: the master name and the sentinel nodes.
    pub sentinel: Option<SentinelFile>,
    /// Time every Redis call gets. Default `"50ms"`.
    pub timeout: Option<String>,
    /// Time to establish a connection. Default `"500ms"`.
    pub connect_timeout: Option<String>,
    /// Environment variable holding the username. Default `"SIDECACHE_REDIS_USERNAME"`.
    pub username_env: Option<String>,
    /// Environment variable holding the password. Default `"SIDECACHE_REDIS_PASSWORD"`.
    pub password_env: Option<String>,
    /// Consecutive failures that open this target's circuit breaker; at least `1`. Default `5`.
    pub breaker_failures: Option<u32>,
    /// How long the breaker stays open before one probe call is let through. Default `"1s"`.
    pub breaker_open: Option<String>,
    /// `rediss://` only: a PEM file of the CAs that verify the server (then only these).
    pub ca_file: Option<String>,
    /// `rediss://` only: a PEM client certificate for mutual TLS; needs `key_file`.
    pub cert_file: Option<String>,
    /// `rediss://` only: the PEM private key of `cert_file`.
    pub key_file: Option<String>,
}

/// `[l2.sentinel]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SentinelFile {
    /// The monitored master's name, e.g. `"mymaster"`. Required.
    pub master_name: Option<String>,
    /// Sentinel nodes, e.g. `["redis://10.0.0.1:26379"]`. Required.
    pub nodes: Option<Vec<String>>,
    /// Database number on the master. Default `0`.
    pub db: Option<i64>,
}

/// `[warmup]`: URLs fetched through the proxy at start, so the first real requests hit.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmupFile {
    /// Paths (with query) of cached routes, e.g. `["/api/groups/VIP/EURUSD"]`.
    pub paths: Option<Vec<String>>,
    /// Warmup requests in flight at once. Default `4`.
    pub concurrency: Option<usize>,
    /// Hold `/readyz` at 503 until warmup is done (or `timeout` passed). Default `false`.
    pub gate_readiness: Option<bool>,
    /// Longest time warmup may hold readiness. Default `"30s"`.
    pub timeout: Option<String>,
    /// Fetch `paths` again this often (seed 003's scheduled warming): entries that expired
    /// are filled again before a request misses them. Default `"0s"`: only at start.
    pub every: Option<String>,
    /// With `[l2]`: how many of its hottest keys (a sampled top-k) each pod records in L2, and
    /// how many a starting pod loads from L2 into L1 before `/readyz` turns ready. `0` turns
    /// both off. Default `100`.
    pub hot_keys: Option<usize>,
    /// How often a pod adds its hot keys to L2. Default `"30s"`.
    pub hot_keys_every: Option<String>,
    /// Longest time loading hot keys may hold readiness (Redis down: ready after this).
    /// Default `"2s"`.
    pub hot_keys_timeout: Option<String>,
}

/// `[pubsub]`: how pods tell each other about invalidations (needs `[l2]`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PubsubFile {
    /// The channel sidecache pods publish invalidations and heartbeats on.
    /// Default `"<l2.prefix>:invalidate"`.
    pub channel: Option<String>,
    /// How often each pod publishes a heartbeat to itself; three missed heartbeats count as a
    /// gap (messages may have been lost). Default `"1s"`.
    pub heartbeat: Option<String>,
    /// While not subscribed (Redis down, reconnecting), L1 keeps entries at most this long:
    /// the staleness bound while invalidations cannot arrive. Default `"5s"`.
    pub degraded_max_age: Option<String>,
    /// A Redis of its own for the channel and the events (seed 004 keeps pub/sub apart from
    /// the cache). Default: `[l2]`'s target.
    pub redis: Option<RedisFile>,
}

/// `[[invalidate]]`: a write that invalidates tags when it passes through and succeeds.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvalidateFile {
    /// `"PUT /api/superadmin/groups/{group}/{symbol}"` (any method but GET/HEAD).
    #[serde(rename = "match")]
    pub match_: Option<String>,
    /// Tag templates over the path params. Required.
    pub tags: Option<Vec<String>>,
    /// Upstream statuses that count as success. Default: every 2xx.
    pub statuses: Option<Vec<u16>>,
    /// `"evict"` (default) or `"refresh"`: after evicting, fetch the new value once in the
    /// background so that the next read is a hit.
    pub action: Option<String>,
}

/// `[[event]]`: a pub/sub channel of another service whose JSON messages invalidate tags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventFile {
    /// Channel name, e.g. `"balance_updates"`. One of `channel` / `pattern` is required.
    pub channel: Option<String>,
    /// Channel pattern (PSUBSCRIBE), e.g. `"user_*"`.
    pub pattern: Option<String>,
    /// Tag templates filled from payload fields; dotted paths reach nested fields
    /// (`"group:{updated_fields.group}"`). Required.
    pub tags: Option<Vec<String>>,
    /// Payload fields that must equal these values for the event to apply, e.g.
    /// `{ group_changed = true }`. Default: always apply.
    pub when: Option<toml::Table>,
    /// `"evict"` (default) or `"refresh"`.
    pub action: Option<String>,
}

/// `[admin]`: the admin API.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    /// File holding the bearer token for mutating endpoints (`POST /admin/purge`). The
    /// `SIDECACHE_ADMIN_TOKEN` environment variable takes precedence. Without either, mutating
    /// endpoints answer 403.
    pub token_file: Option<String>,
}

/// `[limits]`: settings shared by every `[[limit]]` rule.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// How many sidecache replicas share each limit. When Redis is unavailable each pod
    /// enforces `rate / replicas` on its own. Default `1`. Env override: `SIDECACHE_REPLICAS`.
    pub replicas: Option<u32>,
    /// A Redis of its own for the limits' state, so that a cache Redis evicting under
    /// `maxmemory-policy allkeys-lru` cannot evict it. Default: `[l2]`'s target.
    pub redis: Option<RedisFile>,
}

/// `[[limit]]`: a rate limit shared by every pod through Redis.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitFile {
    /// Name in metrics and in the `RateLimit-Policy` header. Default `limit<N>`.
    pub name: Option<String>,
    /// `"POST /api/orders"` (method + path template). One of `match` / `route` is required.
    #[serde(rename = "match")]
    pub match_: Option<String>,
    /// The name of a `[[route]]` whose requests this limit applies to.
    pub route: Option<String>,
    /// What identifies a client: `"header:x-user-id"`, `"identity"` (the Authorization
    /// header, hashed), `"ip"` (first `X-Forwarded-For` address, else the peer), or
    /// `"param:{user_id}"`; a list combines them. Required.
    pub key: Option<KeySpec>,
    /// `"100/min"`, `"10/s"`, `"5000/h"`, `"10000/day"`. Required.
    pub rate: Option<String>,
    /// Requests allowed at once on top of the steady rate. Default: the rate's count.
    pub burst: Option<u32>,
    /// `"enforce"` (default) or `"shadow"`: count and report, never block.
    pub mode: Option<String>,
}

/// One key source or several.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum KeySpec {
    One(String),
    Many(Vec<String>),
}

/// `[reload]`: picking up config changes without a restart (only with `--config FILE`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadFile {
    /// How often the config file is checked for changes; `"0s"` turns polling off (SIGHUP
    /// still reloads). Default `"2s"`.
    pub interval: Option<String>,
}
