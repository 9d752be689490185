//! Secrets kept out of everything that may be printed: Redis URLs lose their password
//! (`redis://user:***@host:6379`), and the config's `Debug` (logs, reload diffs) shows neither
//! the Redis password nor the admin token. Redaction happens where a value is shown, never
//! where it is used: the connection still gets the real URL.

use std::borrow::Cow;
use std::fmt;

use super::{AdminConfig, L2Config, RedisConfig, RedisTarget};

/// `url` with the password of its userinfo replaced by `***`: `redis://user:***@host:6379`,
/// `redis://:***@host`. A userinfo without `:` may be a bare password (some clients read it so),
/// so it is replaced whole: `redis://***@host`. URLs without userinfo come back unchanged.
pub fn redact_url(url: &str) -> Cow<'_, str> {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return Cow::Borrowed(url);
    };
    let rest = &url[scheme_end..];
    // The authority ends at the path, query or fragment; its last `@` ends the userinfo
    // (a password may itself contain `@` when not percent-encoded).
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let Some(at) = authority.rfind('@') else {
        return Cow::Borrowed(url);
    };
    let userinfo = &authority[..at];
    let shown = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None => "***".to_string(),
    };
    Cow::Owned(format!("{}{shown}{}", &url[..scheme_end], &rest[at..]))
}

impl RedisTarget {
    /// The target as an operator wrote it, passwords redacted: for logs, errors and JSON.
    pub fn redacted(&self) -> String {
        match self {
            RedisTarget::Standalone(url) => redact_url(url).into_owned(),
            RedisTarget::Cluster(nodes) => nodes
                .iter()
                .map(|n| redact_url(n))
                .collect::<Vec<_>>()
                .join(","),
            RedisTarget::Sentinel {
                nodes,
                master_name,
                db,
            } => format!(
                "sentinel {} master {master_name} db {db}",
                nodes
                    .iter()
                    .map(|n| redact_url(n))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        }
    }
}

impl fmt::Display for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

// Written out rather than derived: a derived `Debug` prints the URLs whole, and `?target`
// in a log line is the easiest thing to write.
impl fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RedisTarget::Standalone(url) => {
                f.debug_tuple("Standalone").field(&redact_url(url)).finish()
            }
            RedisTarget::Cluster(nodes) => f
                .debug_tuple("Cluster")
                .field(&nodes.iter().map(|n| redact_url(n)).collect::<Vec<_>>())
                .finish(),
            RedisTarget::Sentinel {
                nodes,
                master_name,
                db,
            } => f
                .debug_struct("Sentinel")
                .field(
                    "nodes",
                    &nodes.iter().map(|n| redact_url(n)).collect::<Vec<_>>(),
                )
                .field("master_name", master_name)
                .field("db", db)
                .finish(),
        }
    }
}

/// `Some("***")` for a set secret, so a `Debug` still says whether there is one.
fn secret(v: &Option<String>) -> Option<&'static str> {
    v.as_ref().map(|_| "***")
}

impl fmt::Debug for L2Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("L2Config")
            .field("target", &self.target)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("prefix", &self.prefix)
            .field("username", &self.username)
            .field("password", &secret(&self.password))
            .field("lease", &self.lease)
            .field("lease_wait", &self.lease_wait)
            .field("breaker_failures", &self.breaker_failures)
            .field("breaker_open", &self.breaker_open)
            .field("tls", &self.tls)
            .finish()
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("role", &self.role)
            .field("target", &self.target)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("username", &self.username)
            .field("password", &secret(&self.password))
            .field("breaker_failures", &self.breaker_failures)
            .field("breaker_open", &self.breaker_open)
            .finish()
    }
}

impl fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminConfig")
            .field("token", &secret(&self.token))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        for (url, shown) in [
            (
                "redis://user:secret@host:6379",
                "redis://user:***@host:6379",
            ),
            ("redis://:secret@host:6379/2", "redis://:***@host:6379/2"),
            ("redis://secret@host", "redis://***@host"),
            ("redis://user:p@ss@host:6379", "redis://user:***@host:6379"),
            ("redis://host:6379/0", "redis://host:6379/0"),
            ("redis://host:6379/0?x=a@b", "redis://host:6379/0?x=a@b"),
            ("not a url", "not a url"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
        let target = RedisTarget::Sentinel {
            nodes: vec!["redis://u:secret@10.0.0.1:26379".into()],
            master_name: "mymaster".into(),
            db: 0,
        };
        assert!(!format!("{target:?} {target}").contains("secret"));
        assert!(format!("{target:?}").contains("redis://u:***@10.0.0.1:26379"));
    }
}
