//! Rate limiting, shared by every pod through Redis, before the cache lookup (so a flood of
//! cache hits is limited too).
//!
//! Each matching `[[limit]]` rule is decided by one GCRA script call (all rules of a request
//! in one batch: at most one Redis round trip). When Redis is slow, down or behind the open
//! breaker, each pod decides locally at `rate / replicas`, and goes back to Redis by itself
//! once the breaker closes. Without `[l2]` every decision is local, and made before the
//! request's future exists (no I/O to wait for). Every limited response carries `RateLimit-Policy` and `RateLimit`
//! (draft-ietf-httpapi-ratelimit-headers); a denial is a 429 with `Retry-After`.

pub mod gcra;
pub mod local;

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

use ::redis::{Cmd, Value};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method};
use xxhash_rust::xxh3::Xxh3;

use crate::config::{KeySource, LimitConfig, LimitScope, LimitsConfig};
use crate::metrics::Metrics;
use crate::redis::{Redis, RedisError};
use crate::route::{match_segments, Router};
use gcra::Verdict;
use local::LocalBuckets;

pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

struct Rule {
    config: LimitConfig,
    interval_us: u64,
    local: LocalBuckets,
    /// `RateLimit-Policy` item, prebuilt.
    policy: String,
    /// The same as a whole field value, for the usual request that one rule applies to.
    policy_value: Option<HeaderValue>,
}

/// Admission as far as it goes without I/O.
pub enum Admit {
    /// Decided: no rule applies, or this pod's buckets decided every rule (no Redis).
    Decided(Admission),
    /// Rules to decide in Redis, shared by every pod: [`Limiter::decide_shared`].
    Shared(Pending),
}

/// The rules (by index) that apply to a request, with its client's key under each.
pub struct Pending(Vec<(usize, u128)>);

/// The outcome of admission for one request.
#[derive(Debug, Default)]
pub struct Admission {
    /// Set when an enforcing rule denied the request: (rule name, retry after in seconds).
    pub denied: Option<(String, u64)>,
    /// `RateLimit-Policy` and `RateLimit` values to add to the response.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

pub struct Limiter {
    rules: Vec<Rule>,
    redis: Option<Redis>,
    prefix: String,
    replicas: u32,
    metrics: Arc<Metrics>,
    script_sha: String,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("rules", &self.rules.len())
            .finish()
    }
}

impl Limiter {
    pub fn new(
        config: &LimitsConfig,
        redis: Option<Redis>,
        prefix: &str,
        metrics: Arc<Metrics>,
    ) -> Limiter {
        let rules = config
            .rules
            .iter()
            .map(|c| {
                let policy = format!("\"{}\";q={};w={}", c.name, c.count, c.period.as_secs());
                Rule {
                    interval_us: (c.period.as_micros() as u64 / u64::from(c.count)).max(1),
                    local: LocalBuckets::default(),
                    policy_value: HeaderValue::from_str(&policy).ok(),
                    policy,
                    config: c.clone(),
                }
            })
            .collect();
        Limiter {
            rules,
            redis,
            prefix: prefix.to_string(),
            replicas: config.replicas.max(1),
            metrics,
            script_sha: ::redis::Script::new(gcra::SCRIPT).get_hash().to_string(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Admission as far as it goes without I/O: the rules that apply and their clients'
    /// keys, decided here by this pod's buckets when there is no Redis to share them. The
    /// caller skips it when there are no rules at all ([`Self::is_empty`]).
    pub fn admit(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        peer: SocketAddr,
        router: &Router,
    ) -> Admit {
        let applicable = self.applicable(method, path, headers, peer, router);
        if applicable.is_empty() {
            return Admit::Decided(Admission::default());
        }
        match self.redis {
            Some(_) => Admit::Shared(Pending(applicable)),
            None => {
                let verdicts = self.decide_local(&applicable);
                Admit::Decided(self.admission(&applicable, verdicts, "local"))
            }
        }
    }

    /// Decides what [`Self::admit`] left to Redis: one batch for all its rules, or this
    /// pod's buckets when Redis is slow, down or behind the open breaker.
    pub async fn decide_shared(&self, pending: Pending) -> Admission {
        let rules = pending.0;
        if let Some(redis) = &self.redis {
            match self.decide_redis(redis, &rules).await {
                Ok(verdicts) => return self.admission(&rules, verdicts, "redis"),
                Err(error) => tracing::debug!(%error, "Rate limit falls back to local decisions."),
            }
        }
        let verdicts = self.decide_local(&rules);
        self.admission(&rules, verdicts, "local")
    }

    /// Every rule that applies to the request (by index), with its client's key.
    fn applicable(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        peer: SocketAddr,
        router: &Router,
    ) -> Vec<(usize, u128)> {
        let route = router.find(method, path);
        let mut applicable = Vec::new();
        for (index, rule) in self.rules.iter().enumerate() {
            let trimmed = path.strip_prefix('/').unwrap_or(path);
            let params = match &rule.config.scope {
                LimitScope::Match(t) if t.allows(method) => {
                    match_segments(&t.segments, trimmed).map(|p| (t.params.as_slice(), p))
                }
                LimitScope::Match(_) => None,
                LimitScope::Route(name) => route
                    .filter(|m| &m.route.config.name == name)
                    .map(|m| (m.route.config.matcher.params.as_slice(), m.params)),
            };
            let Some((names, params)) = params else {
                continue;
            };
            let identity =
                route.map_or(&header::AUTHORIZATION, |m| &m.route.config.identity_header);
            let value = |source: &KeySource| -> Option<Cow<'_, [u8]>> {
                match source {
                    KeySource::Header(h) => headers.get(h).map(|v| Cow::Borrowed(v.as_bytes())),
                    KeySource::Identity => {
                        headers.get(identity).map(|v| Cow::Borrowed(v.as_bytes()))
                    }
                    KeySource::Ip => Some(client_ip(headers, peer)),
                    KeySource::Param(p) => names
                        .iter()
                        .position(|n| n == p)
                        .map(|i| Cow::Borrowed(params.as_slice()[i].as_bytes())),
                }
            };
            // A request without the key's parts is not this rule's client (e.g. no user id).
            let Some(key) = client_key(&rule.config, value) else {
                continue;
            };
            applicable.push((index, key));
        }
        applicable
    }

    /// The verdicts as counted metrics, the denial (if any) and the response fields.
    fn admission(
        &self,
        rules: &[(usize, u128)],
        verdicts: Vec<Verdict>,
        backend: &'static str,
    ) -> Admission {
        // Sized up front: growing these step by step was half of this function's cost.
        let mut admission = Admission {
            denied: None,
            headers: Vec::with_capacity(2),
        };
        let mut states = String::with_capacity(rules.len() * 48);
        for (&(index, _), v) in rules.iter().zip(verdicts) {
            let rule = &self.rules[index];
            let outcome = match (v.allowed, rule.config.shadow) {
                (true, _) => "allowed",
                (false, true) => "shadow_denied",
                (false, false) => "denied",
            };
            self.metrics.ratelimit(&rule.config.name, outcome, backend);
            if !v.allowed && !rule.config.shadow && admission.denied.is_none() {
                let secs = v.retry_after_us.div_ceil(1_000_000).max(1);
                admission.denied = Some((rule.config.name.clone(), secs));
            }
            // `"name";r=remaining;t=reset`, without the formatting machinery (per request).
            let mut n = itoa::Buffer::new();
            if !states.is_empty() {
                states.push_str(", ");
            }
            states.push('"');
            states.push_str(&rule.config.name);
            states.push_str("\";r=");
            states.push_str(n.format(v.remaining));
            states.push_str(";t=");
            states.push_str(n.format(v.reset_us.div_ceil(1_000_000)));
        }
        let policy = match rules {
            [(index, _)] => self.rules[*index].policy_value.clone(),
            // Several rules (rare): their items joined.
            _ => {
                let items: Vec<&str> = rules
                    .iter()
                    .map(|&(i, _)| self.rules[i].policy.as_str())
                    .collect();
                HeaderValue::from_str(&items.join(", ")).ok()
            }
        };
        for (name, value) in [
            (RATELIMIT_POLICY, policy),
            (RATELIMIT, HeaderValue::from_str(&states).ok()),
        ] {
            if let Some(v) = value {
                admission.headers.push((name, v));
            }
        }
        admission
    }

    /// This pod's buckets, at `rate / replicas`.
    fn decide_local(&self, rules: &[(usize, u128)]) -> Vec<Verdict> {
        rules
            .iter()
            .map(|&(index, key)| {
                let rule = &self.rules[index];
                let interval = rule.interval_us * u64::from(self.replicas);
                rule.local.decide(key, interval, rule.config.burst)
            })
            .collect()
    }

    async fn decide_redis(
        &self,
        redis: &Redis,
        rules: &[(usize, u128)],
    ) -> Result<Vec<Verdict>, RedisError> {
        let cmds = |op: &str| -> Vec<(String, Cmd)> {
            rules
                .iter()
                .map(|&(index, key)| {
                    let rule = &self.rules[index];
                    let k = format!("{}:rl:{}:{{{key:032x}}}", self.prefix, rule.config.name);
                    let mut c = Cmd::new();
                    c.arg(op);
                    if op == "EVALSHA" {
                        c.arg(&self.script_sha);
                    } else {
                        c.arg(gcra::SCRIPT);
                    }
                    c.arg(1)
                        .arg(&k)
                        .arg(rule.interval_us)
                        .arg(rule.config.burst);
                    (k, c)
                })
                .collect()
        };
        let replies = match redis.exec("ratelimit", cmds("EVALSHA")).await {
            Err(RedisError::Failed(e))
                if e.kind() == ::redis::ErrorKind::Server(::redis::ServerErrorKind::NoScript) =>
            {
                // A restarted or failed-over Redis forgot the script: EVAL loads it again.
                redis.exec("ratelimit", cmds("EVAL")).await?
            }
            other => other?,
        };
        Ok(replies.iter().map(verdict).collect())
    }
}

fn verdict(v: &Value) -> Verdict {
    let n = |i: usize| match v {
        Value::Array(items) => match items.get(i) {
            Some(Value::Int(n)) => (*n).max(0) as u64,
            _ => 0,
        },
        _ => 0,
    };
    Verdict {
        allowed: n(0) == 1,
        remaining: n(1) as u32,
        retry_after_us: n(2),
        reset_us: n(3),
    }
}

/// The hashed key of a client under `rule`; `None` when a part is missing.
fn client_key<'v>(
    rule: &LimitConfig,
    value: impl Fn(&KeySource) -> Option<Cow<'v, [u8]>>,
) -> Option<u128> {
    let mut h = Xxh3::new();
    h.update(rule.name.as_bytes());
    for source in &rule.key {
        let v = value(source)?;
        h.update(&(v.len() as u32).to_le_bytes());
        h.update(&v);
    }
    Some(h.digest128())
}

/// The client address: the first `X-Forwarded-For` entry (set by the ingress in front of the
/// app, since the sidecar's own peer is the app on loopback), else the peer.
fn client_ip(headers: &HeaderMap, peer: SocketAddr) -> Cow<'_, [u8]> {
    headers
        .get(&X_FORWARDED_FOR)
        .and_then(|v| v.as_bytes().split(|&b| b == b',').next())
        .map(<[u8]>::trim_ascii)
        .filter(|v| !v.is_empty())
        .map_or_else(
            || Cow::Owned(crate::net::ip_text(peer.ip()).into_bytes()),
            Cow::Borrowed,
        )
}
