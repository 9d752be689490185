//! The Redis client behind L2, pub/sub and rate limits: one per configured target (`[l2]`,
//! `[limits.redis]`, `[pubsub.redis]`), each with its own connection, breaker and `redis`
//! metrics label; a section without a target of its own shares `[l2]`'s client.
//!
//! Standalone, Sentinel and Cluster deployments look the same from outside: [`Redis::exec`]
//! runs a batch of commands, grouped per cluster slot, under the configured timeout and the
//! circuit breaker. A Redis problem is returned as a [`RedisError`] for the caller to treat as
//! a miss; it is never an error response and never blocks a request beyond `timeout`.
//!
//! Connections are made in the background, so sidecache starts (and is ready) with Redis down.
//! Sentinel: the master is looked up through the sentinels, re-checked every second, and
//! re-resolved at once after a connection error or a `READONLY` reply, so a failover is
//! followed within about a second.

pub mod breaker;

use std::collections::HashMap;
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{Cmd, IntoConnectionInfo, Pipeline, Value};
use tokio::sync::Notify;

use crate::config::{RedisConfig, RedisTarget};
use crate::metrics::Metrics;
pub use breaker::{Breaker, BreakerState};

/// Why a Redis call produced no answer.
#[derive(Debug)]
pub enum RedisError {
    /// The breaker is open: the call was not made.
    Skipped,
    /// No connection yet (still connecting, or being re-established).
    NotConnected,
    /// No answer within `l2.timeout`.
    Timeout,
    /// Redis or the connection failed.
    Failed(redis::RedisError),
}

impl RedisError {
    /// The `result` label of `sidecache_l2_operations_total`.
    pub fn as_str(&self) -> &'static str {
        match self {
            RedisError::Skipped => "skipped",
            RedisError::NotConnected => "not_connected",
            RedisError::Timeout => "timeout",
            RedisError::Failed(_) => "error",
        }
    }
}

impl std::fmt::Display for RedisError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RedisError::Skipped => f.write_str("circuit breaker open"),
            RedisError::NotConnected => f.write_str("not connected"),
            RedisError::Timeout => f.write_str("timed out"),
            RedisError::Failed(e) => write!(f, "{e}"),
        }
    }
}

#[derive(Clone)]
enum Conn {
    Standalone(ConnectionManager),
    Sentinel(MultiplexedConnection),
    Cluster(ClusterConnection),
}

/// A cheap handle; clones share one connection, one breaker.
#[derive(Clone)]
pub struct Redis {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("target", &self.inner.config.target)
            .field("breaker", &self.inner.breaker.state())
            .finish()
    }
}

struct Inner {
    config: RedisConfig,
    // A std RwLock: read to clone the connection handle out, never held across an await.
    conn: RwLock<Option<Conn>>,
    breaker: Breaker,
    /// Wakes the connection keeper to re-resolve the Sentinel master now.
    reconnect: Notify,
    metrics: Arc<Metrics>,
}

impl Redis {
    /// Creates the client and starts connecting in the background.
    pub fn start(config: &RedisConfig, metrics: Arc<Metrics>) -> Redis {
        // The redis crate builds its rustls configs with the process default provider.
        #[cfg(feature = "tls")]
        crate::tls::install_provider();
        let inner = Arc::new(Inner {
            config: config.clone(),
            conn: RwLock::new(None),
            breaker: Breaker::new(config.breaker_failures, config.breaker_open),
            reconnect: Notify::new(),
            metrics,
        });
        inner
            .metrics
            .set_breaker_state(config.role, BreakerState::Closed.as_str());
        tokio::spawn(keep_connected(Arc::downgrade(&inner)));
        Redis { inner }
    }

    pub fn breaker_state(&self) -> BreakerState {
        self.inner.breaker.state()
    }

    /// The section this client serves (`l2`, `limits`, `pubsub`).
    pub fn role(&self) -> &'static str {
        self.inner.config.role
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self.inner.config.target, RedisTarget::Cluster(_))
    }

    /// Runs `cmds` (each with the key that routes it) and returns their replies in order.
    /// Standalone and Sentinel: one pipeline, one round trip. Cluster: one pipeline per hash
    /// tag, concurrently, so no batch ever spans slots.
    pub async fn exec(
        &self,
        op: &'static str,
        cmds: Vec<(String, Cmd)>,
    ) -> Result<Vec<Value>, RedisError> {
        let inner = &self.inner;
        if !inner.breaker.allow(Instant::now()) {
            inner
                .metrics
                .l2_op(inner.config.role, op, RedisError::Skipped.as_str(), None);
            return Err(RedisError::Skipped);
        }
        let conn = inner.conn.read().expect("redis conn lock").clone();
        let Some(conn) = conn else {
            // Not a Redis failure: the breaker is untouched, the caller sees a miss.
            inner.metrics.l2_op(
                inner.config.role,
                op,
                RedisError::NotConnected.as_str(),
                None,
            );
            return Err(RedisError::NotConnected);
        };
        let started = Instant::now();
        let result = match tokio::time::timeout(inner.config.timeout, run(conn, cmds)).await {
            Err(_) => Err(RedisError::Timeout),
            Ok(Err(e)) => Err(RedisError::Failed(e)),
            Ok(Ok(v)) => Ok(v),
        };
        let elapsed = started.elapsed().as_secs_f64();
        let healthy = match &result {
            Ok(_) => true,
            Err(RedisError::Failed(e)) => !is_availability_error(e),
            Err(_) => false,
        };
        let state = inner.breaker.record(healthy, Instant::now());
        inner
            .metrics
            .set_breaker_state(inner.config.role, state.as_str());
        match &result {
            Ok(_) => inner
                .metrics
                .l2_op(inner.config.role, op, "ok", Some(elapsed)),
            Err(e) => {
                inner
                    .metrics
                    .l2_op(inner.config.role, op, e.as_str(), Some(elapsed));
                tracing::warn!(redis = inner.config.role, op, error = %e, breaker = state.as_str(), "Redis call failed; treating it as a miss.");
                if let RedisError::Failed(err) = e {
                    if is_availability_error(err)
                        || err.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
                    {
                        inner.reconnect.notify_one();
                    }
                }
            }
        }
        result
    }
}

/// Errors that say Redis is unreachable (as opposed to a reply we did not like).
fn is_availability_error(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_cluster_error()
}

async fn run(conn: Conn, cmds: Vec<(String, Cmd)>) -> redis::RedisResult<Vec<Value>> {
    match conn {
        Conn::Standalone(mut c) => pipeline(&cmds).query_async(&mut c).await,
        Conn::Sentinel(mut c) => pipeline(&cmds).query_async(&mut c).await,
        Conn::Cluster(c) => {
            // Group by hash tag: keys sharing a `{tag}` share a slot.
            let mut groups: HashMap<&str, Vec<usize>> = HashMap::new();
            for (i, (key, _)) in cmds.iter().enumerate() {
                groups.entry(hash_tag(key)).or_default().push(i);
            }
            let futures = groups.into_values().map(|idx| {
                let mut c = c.clone();
                let mut p = Pipeline::with_capacity(idx.len());
                for &i in &idx {
                    p.add_command(cmds[i].1.clone());
                }
                async move {
                    let values: Vec<Value> = p.query_async(&mut c).await?;
                    Ok::<_, redis::RedisError>(idx.into_iter().zip(values).collect::<Vec<_>>())
                }
            });
            let mut out = vec![Value::Nil; cmds.len()];
            for group in futures_util::future::join_all(futures).await {
                for (i, v) in group? {
                    out[i] = v;
                }
            }
            Ok(out)
        }
    }
}

fn pipeline(cmds: &[(String, Cmd)]) -> Pipeline {
    let mut p = Pipeline::with_capacity(cmds.len());
    for (_, c) in cmds {
        p.add_command(c.clone());
    }
    p
}

/// The part of a key that picks its cluster slot: the text inside the first `{...}`, or the
/// whole key (Redis Cluster's rule).
pub fn hash_tag(key: &str) -> &str {
    if let Some(open) = key.find('{') {
        if let Some(len) = key[open + 1..].find('}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

/// Makes and keeps the connection; exits when the client is dropped.
async fn keep_connected(inner: Weak<Inner>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let config = strong.config.clone();
        drop(strong);
        match connect(&config).await {
            Ok((conn, master)) => {
                let Some(strong) = inner.upgrade() else {
                    return;
                };
                *strong.conn.write().expect("redis conn lock") = Some(conn);
                tracing::info!(target = %config.target, master = ?master, "Redis connected.");
                backoff = Duration::from_millis(50);
                let RedisTarget::Sentinel { .. } = config.target else {
                    // Standalone and Cluster connections re-establish themselves.
                    return;
                };
                // Sentinel: follow the master. Re-check every second or when a call failed.
                loop {
                    let notified = strong.reconnect.notified();
                    tokio::select! {
                        _ = notified => break,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    if sentinel_master(&config).await.ok().flatten() != master {
                        break;
                    }
                }
                tracing::info!("Redis master changed or failed; reconnecting through Sentinel.");
                *strong.conn.write().expect("redis conn lock") = None;
            }
            Err(error) => {
                tracing::warn!(target = %config.target, %error, "Redis connection failed; retrying.");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

fn with_auth(info: redis::ConnectionInfo, config: &RedisConfig) -> redis::ConnectionInfo {
    let mut settings = info.redis_settings().clone();
    if let Some(u) = &config.username {
        settings = settings.set_username(u);
    }
    if let Some(p) = &config.password {
        settings = settings.set_password(p);
    }
    info.set_redis_settings(settings)
}

/// A client for `info`, with the configured certificates (`l2.ca_file`, `l2.cert_file`) when
/// it is a `rediss://` address.
fn client(info: redis::ConnectionInfo, config: &RedisConfig) -> redis::RedisResult<redis::Client> {
    #[cfg(feature = "tls")]
    if matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. }) {
        if let Some(certs) = certificates(config)? {
            return redis::Client::build_with_tls(info, certs);
        }
    }
    #[cfg(not(feature = "tls"))]
    let _ = config;
    redis::Client::open(info)
}

/// The scheme of the master's address learnt from Sentinel: TLS when the sentinels are.
fn sentinel_scheme(config: &RedisConfig) -> &'static str {
    match &config.target {
        RedisTarget::Sentinel { nodes, .. } if nodes.iter().any(|n| n.starts_with("rediss://")) => {
            "rediss"
        }
        _ => "redis",
    }
}

/// The `l2` certificate files as the redis crate takes them, or `None` when there are none
/// (then the system roots verify the server). With `ca_file`, the redis crate trusts that
/// file's CAs only.
#[cfg(feature = "tls")]
fn certificates(config: &RedisConfig) -> redis::RedisResult<Option<redis::TlsCertificates>> {
    let files = &config.tls;
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| {
            redis::RedisError::from(std::io::Error::new(
                e.kind(),
                format!("{}: {e}", p.display()),
            ))
        })
    };
    let client_tls = match (&files.cert_file, &files.key_file) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read(cert)?,
            client_key: read(key)?,
        }),
        _ => None,
    };
    let root_cert = files.ca_file.as_deref().map(read).transpose()?;
    if client_tls.is_none() && root_cert.is_none() {
        return Ok(None);
    }
    Ok(Some(redis::TlsCertificates {
        client_tls,
        root_cert,
    }))
}

/// Connects; for Sentinel also returns the master's address it connected to.
async fn connect(config: &RedisConfig) -> redis::RedisResult<(Conn, Option<String>)> {
    match &config.target {
        RedisTarget::Standalone(url) => {
            let info = with_auth(url.as_str().into_connection_info()?, config);
            let client = client(info, config)?;
            let mgr = ConnectionManager::new_lazy_with_config(
                client,
                ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(config.connect_timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_secs(1)),
            )?;
            Ok((Conn::Standalone(mgr), None))
        }
        RedisTarget::Cluster(nodes) => {
            let mut b = ClusterClient::builder(nodes.iter().map(String::as_str))
                .connection_timeout(config.connect_timeout)
                .response_timeout(config.timeout.max(Duration::from_millis(100)))
                .retries(2)
                .min_retry_wait(10)
                .max_retry_wait(200);
            if let Some(u) = &config.username {
                b = b.username(u);
            }
            if let Some(p) = &config.password {
                b = b.password(p);
            }
            #[cfg(feature = "tls")]
            if let Some(certs) = certificates(config)? {
                b = b.certs(certs);
            }
            let conn = tokio::time::timeout(
                config.connect_timeout * 4,
                b.build()?.get_async_connection(),
            )
            .await
            .map_err(|_| {
                redis::RedisError::from((redis::ErrorKind::Io, "cluster connect timed out"))
            })??;
            Ok((Conn::Cluster(conn), None))
        }
        RedisTarget::Sentinel { .. } => {
            let master = sentinel_master(config).await?;
            let mut client = sentinel_client(config)?;
            let conn = tokio::time::timeout(config.connect_timeout, client.get_async_connection())
                .await
                .map_err(|_| {
                    redis::RedisError::from((
                        redis::ErrorKind::Io,
                        "sentinel master connect timed out",
                    ))
                })??;
            Ok((Conn::Sentinel(conn), master))
        }
    }
}

fn sentinel_client(config: &RedisConfig) -> redis::RedisResult<SentinelClient> {
    let RedisTarget::Sentinel {
        nodes,
        master_name,
        db,
    } = &config.target
    else {
        unreachable!("sentinel_client on a non-sentinel target");
    };
    #[cfg(feature = "tls")]
    if nodes.iter().any(|n| n.starts_with("rediss://")) {
        // Over TLS, to the sentinels and to the master alike (`rediss+sentinel://`).
        let addrs = nodes
            .iter()
            .map(|n| n.as_str().into_connection_info().map(|i| i.addr().clone()))
            .collect::<redis::RedisResult<Vec<_>>>()?;
        let mut b = redis::sentinel::SentinelClientBuilder::new(
            addrs,
            master_name.clone(),
            SentinelServerType::Master,
        )?
        .set_client_to_redis_db(*db)
        .set_client_to_redis_tls_mode(redis::TlsMode::Secure)
        .set_client_to_sentinel_tls_mode(redis::TlsMode::Secure);
        if let Some(u) = &config.username {
            b = b.set_client_to_redis_username(u);
        }
        if let Some(p) = &config.password {
            b = b.set_client_to_redis_password(p);
        }
        if let Some(certs) = certificates(config)? {
            b = b
                .set_client_to_redis_certificates(certs.clone())
                .set_client_to_sentinel_certificates(certs);
        }
        return b.build();
    }
    let mut settings = redis::RedisConnectionInfo::default().set_db(*db);
    if let Some(u) = &config.username {
        settings = settings.set_username(u);
    }
    if let Some(p) = &config.password {
        settings = settings.set_password(p);
    }
    SentinelClient::build(
        nodes.clone(),
        master_name.clone(),
        Some(SentinelNodeConnectionInfo::default().set_redis_connection_info(settings)),
        SentinelServerType::Master,
    )
}

/// A dedicated pub/sub connection: to the standalone server, to the current Sentinel master,
/// or to the first Cluster node that answers (classic PUBLISH reaches every node).
pub async fn pubsub_connection(config: &RedisConfig) -> redis::RedisResult<redis::aio::PubSub> {
    let urls: Vec<String> = match &config.target {
        RedisTarget::Standalone(url) => vec![url.clone()],
        RedisTarget::Cluster(nodes) => nodes.clone(),
        RedisTarget::Sentinel { .. } => match sentinel_master(config).await? {
            Some(addr) => vec![format!("{}://{addr}", sentinel_scheme(config))],
            None => return Err((redis::ErrorKind::Io, "sentinel knows no master").into()),
        },
    };
    let mut last = None;
    for url in urls {
        let info = with_auth(url.as_str().into_connection_info()?, config);
        let attempt = async { client(info, config)?.get_async_pubsub().await };
        match tokio::time::timeout(config.connect_timeout, attempt).await {
            Ok(Ok(p)) => return Ok(p),
            Ok(Err(e)) => last = Some(e),
            Err(_) => last = Some((redis::ErrorKind::Io, "pub/sub connect timed out").into()),
        }
    }
    Err(last.unwrap_or_else(|| (redis::ErrorKind::Io, "no node to subscribe on").into()))
}

/// The master's `host:port` as the first answering sentinel reports it.
async fn sentinel_master(config: &RedisConfig) -> redis::RedisResult<Option<String>> {
    let RedisTarget::Sentinel {
        nodes, master_name, ..
    } = &config.target
    else {
        return Ok(None);
    };
    let mut last_err = None;
    for node in nodes {
        let attempt = async {
            let client = client(node.as_str().into_connection_info()?, config)?;
            let mut c = client.get_multiplexed_async_connection().await?;
            let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(master_name)
                .query_async(&mut c)
                .await?;
            Ok::<_, redis::RedisError>(addr.map(|(h, p)| format!("{h}:{p}")))
        };
        match tokio::time::timeout(config.connect_timeout, attempt).await {
            Ok(Ok(addr)) => return Ok(addr),
            Ok(Err(e)) => last_err = Some(e),
            Err(_) => last_err = Some((redis::ErrorKind::Io, "sentinel timed out").into()),
        }
    }
    Err(last_err.unwrap_or_else(|| (redis::ErrorKind::Io, "no sentinel answered").into()))
}

#[cfg(test)]
mod tests {
    use super::hash_tag;

    #[test]
    fn hash_tags_follow_the_cluster_rule() {
        assert_eq!(hash_tag("sc:{t:ab}:e:1"), "t:ab");
        assert_eq!(hash_tag("sc:e:1"), "sc:e:1");
        assert_eq!(hash_tag("sc:{}:e"), "sc:{}:e");
        assert_eq!(hash_tag("a{b}{c}"), "b");
    }
}
