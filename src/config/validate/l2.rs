//! `[l2]` and `[l2.sentinel]`: which Redis holds the shared tier.

use super::{check, duration};
use crate::config::{file, redact_url, L2Config, RedisConfig, RedisTarget, TlsFiles};

fn redis_url(e: &mut Vec<String>, key: &str, text: &str) {
    use redis::IntoConnectionInfo;
    if cfg!(not(feature = "tls")) && text.starts_with("rediss://") {
        e.push(format!(
            "{key}: `rediss://` (TLS) needs the `tls` feature, which this binary was built without"
        ));
    } else if let Err(err) = text.into_connection_info() {
        let shown = redact_url(text);
        e.push(format!("{key}: `{shown}` is not a Redis URL: {err}"));
    }
}

/// `redis+sentinel://host:port,host:port/master_name[/db]`.
fn sentinel_url(url: &str) -> Result<RedisTarget, String> {
    // Errors show the URL without its password.
    let text = redact_url(url);
    // `rediss+sentinel://`: the sentinels and the master are both reached over TLS.
    let (rest, scheme) = match url.strip_prefix("rediss+sentinel://") {
        Some(rest) if cfg!(feature = "tls") => (rest, "rediss"),
        Some(_) => {
            return Err(format!(
                "`{text}`: TLS needs the `tls` feature, which this binary was built without"
            ))
        }
        None => (
            url.strip_prefix("redis+sentinel://")
                .ok_or_else(|| format!("`{text}` is not a redis+sentinel:// URL"))?,
            "redis",
        ),
    };
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
        .map(|h| format!("{scheme}://{h}"))
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

pub(super) fn validate(
    f: file::L2File,
    env: &impl Fn(&str) -> Option<String>,
    e: &mut Vec<String>,
) -> L2Config {
    let conn = file::RedisFile {
        url: f.url,
        cluster: f.cluster,
        sentinel: f.sentinel,
        timeout: f.timeout,
        connect_timeout: f.connect_timeout,
        username_env: f.username_env,
        password_env: f.password_env,
        breaker_failures: f.breaker_failures,
        breaker_open: f.breaker_open,
        ca_file: f.ca_file,
        cert_file: f.cert_file,
        key_file: f.key_file,
    };
    let redis = validate_redis("l2", "l2", conn, env, e);
    let prefix = f.prefix.unwrap_or_else(|| "sidecache".into());
    if prefix.is_empty() || prefix.contains(['{', '}', ' ']) {
        e.push(format!(
            "l2.prefix: `{prefix}` must be non-empty, without braces or spaces"
        ));
    }
    let lease = duration(e, "l2.lease", f.lease, "2s");
    let lease_wait = duration(e, "l2.lease_wait", f.lease_wait, "500ms");
    if lease_wait > lease {
        e.push("l2.lease_wait: must not exceed l2.lease".into());
    }
    L2Config {
        target: redis.target,
        timeout: redis.timeout,
        connect_timeout: redis.connect_timeout,
        prefix,
        username: redis.username,
        password: redis.password,
        lease,
        lease_wait,
        breaker_failures: redis.breaker_failures,
        breaker_open: redis.breaker_open,
        tls: redis.tls,
    }
}

/// One Redis deployment: `[l2]`'s connection keys, `[limits.redis]`, `[pubsub.redis]`. `at` is
/// the section's name in messages (`l2`, `limits.redis`).
pub(super) fn validate_redis(
    role: &'static str,
    at: &str,
    f: file::RedisFile,
    env: &impl Fn(&str) -> Option<String>,
    e: &mut Vec<String>,
) -> RedisConfig {
    let given = [f.url.is_some(), f.cluster.is_some(), f.sentinel.is_some()]
        .iter()
        .filter(|x| **x)
        .count();
    if given != 1 {
        e.push(format!(
            "{at}: give exactly one of `url`, `cluster` or `[{at}.sentinel]`"
        ));
    }
    let target = if let Some(url) = f.url {
        if url.starts_with("redis+sentinel://") || url.starts_with("rediss+sentinel://") {
            check(
                e,
                &format!("{at}.url"),
                sentinel_url(&url),
                RedisTarget::Cluster(Vec::new()),
            )
        } else {
            redis_url(e, &format!("{at}.url"), &url);
            RedisTarget::Standalone(url)
        }
    } else if let Some(nodes) = f.cluster {
        if nodes.is_empty() {
            e.push(format!("{at}.cluster: list at least one node"));
        }
        for (i, n) in nodes.iter().enumerate() {
            redis_url(e, &format!("{at}.cluster[{i}]"), n);
        }
        RedisTarget::Cluster(nodes)
    } else if let Some(s) = f.sentinel {
        let nodes = s.nodes.unwrap_or_default();
        if nodes.is_empty() {
            e.push(format!("{at}.sentinel.nodes: list at least one sentinel"));
        }
        for (i, n) in nodes.iter().enumerate() {
            redis_url(e, &format!("{at}.sentinel.nodes[{i}]"), n);
        }
        let master_name = s.master_name.unwrap_or_else(|| {
            e.push(format!("{at}.sentinel.master_name: required"));
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
    let username_env = f
        .username_env
        .unwrap_or_else(|| "SIDECACHE_REDIS_USERNAME".into());
    let password_env = f
        .password_env
        .unwrap_or_else(|| "SIDECACHE_REDIS_PASSWORD".into());
    let timeout = duration(e, &format!("{at}.timeout"), f.timeout, "50ms");
    if timeout.is_zero() {
        e.push(format!("{at}.timeout: must be greater than zero"));
    }
    let breaker_failures = f.breaker_failures.unwrap_or(5);
    if breaker_failures == 0 {
        // Zero would mean "open before the first failure": a breaker that never lets a call
        // through. Refused rather than silently raised to 1, so the file says what runs.
        e.push(format!("{at}.breaker_failures: must be at least 1"));
    }
    let tls = TlsFiles {
        ca_file: f.ca_file.map(Into::into),
        cert_file: f.cert_file.map(Into::into),
        key_file: f.key_file.map(Into::into),
    };
    let uses_tls = match &target {
        RedisTarget::Standalone(url) => url.starts_with("rediss://"),
        RedisTarget::Cluster(nodes) | RedisTarget::Sentinel { nodes, .. } => {
            nodes.iter().any(|n| n.starts_with("rediss://"))
        }
    };
    if uses_tls {
        #[cfg(feature = "tls")]
        crate::tls::check_files(at, &tls, e);
    } else if tls != TlsFiles::default() {
        e.push(format!(
            "{at}.ca_file, {at}.cert_file, {at}.key_file: only for rediss:// URLs"
        ));
    }
    RedisConfig {
        role,
        tls,
        target,
        timeout,
        connect_timeout: duration(
            e,
            &format!("{at}.connect_timeout"),
            f.connect_timeout,
            "500ms",
        ),
        username: env(&username_env).filter(|v| !v.is_empty()),
        password: env(&password_env).filter(|v| !v.is_empty()),
        breaker_failures,
        breaker_open: duration(e, &format!("{at}.breaker_open"), f.breaker_open, "1s"),
    }
}
