//! Validation: the file's sections, each deserialized on its own, then checked one section per
//! file into the typed [`Config`]. Every check pushes `key: message` and goes on, so that one
//! run lists every problem.

mod admin;
mod invalidate;
mod l1;
mod l2;
pub(super) mod limit;
mod listen;
mod process;
mod pubsub;
pub(super) mod route;
mod upstream;
mod warmup;

use std::time::Duration;

use serde::de::DeserializeOwned;

use super::{file, units, Config, LimitsConfig};

/// The file's sections, each deserialized on its own so one bad section does not hide the
/// problems of the next.
#[derive(Default)]
pub(super) struct Sections {
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
    /// Keys reported with a type error and left out; validation's "required" for them is
    /// dropped, since the key is there, only wrong.
    bad_keys: Vec<String>,
}

impl Sections {
    pub(super) fn read(mut table: toml::Table, errors: &mut Vec<String>) -> Sections {
        let mut bad = Vec::new();
        let mut s = Sections {
            listen: section(&mut table, "listen", errors, &mut bad),
            upstream: section(&mut table, "upstream", errors, &mut bad),
            l1: section(&mut table, "l1", errors, &mut bad),
            runtime: section(&mut table, "runtime", errors, &mut bad),
            shutdown: section(&mut table, "shutdown", errors, &mut bad),
            log: section(&mut table, "log", errors, &mut bad),
            l2: table
                .contains_key("l2")
                .then(|| section(&mut table, "l2", errors, &mut bad)),
            warmup: section(&mut table, "warmup", errors, &mut bad),
            pubsub: section(&mut table, "pubsub", errors, &mut bad),
            admin: section(&mut table, "admin", errors, &mut bad),
            routes: Vec::new(),
            invalidations: Vec::new(),
            events: Vec::new(),
            limits: section(&mut table, "limits", errors, &mut bad),
            limit_rules: Vec::new(),
            reload: section(&mut table, "reload", errors, &mut bad),
            bad_keys: Vec::new(),
        };
        s.limit_rules = array(&mut table, "limit", errors, &mut bad);
        s.routes = array(&mut table, "route", errors, &mut bad);
        s.invalidations = array(&mut table, "invalidate", errors, &mut bad);
        s.events = array(&mut table, "event", errors, &mut bad);
        s.bad_keys = bad;
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
    bad: &mut Vec<String>,
) -> T {
    match table.remove(key) {
        None => T::default(),
        Some(value) => by_key(value, key, errors, bad).unwrap_or_default(),
    }
}

fn array<T: DeserializeOwned + Default>(
    table: &mut toml::Table,
    key: &str,
    errors: &mut Vec<String>,
    bad: &mut Vec<String>,
) -> Vec<T> {
    match table.remove(key) {
        None => Vec::new(),
        Some(toml::Value::Array(items)) => items
            .into_iter()
            .enumerate()
            .filter_map(|(i, v)| by_key(v, &format!("{key}[{i}]"), errors, bad))
            .collect(),
        Some(_) => {
            errors.push(format!("{key}: must be an array of tables, `[[{key}]]`"));
            Vec::new()
        }
    }
}

/// Deserializes one table (a section or an array item). When the whole fails, each key is tried
/// on its own: serde stops at the first bad field, which would hide the rest of the table and,
/// with the table dropped, make every field look missing. Each bad key is reported as `at.key`
/// and remembered in `bad`; the table is then read without them so the other keys still get
/// validated.
fn by_key<T: DeserializeOwned + Default>(
    value: toml::Value,
    at: &str,
    errors: &mut Vec<String>,
    bad: &mut Vec<String>,
) -> Option<T> {
    let table = match value {
        toml::Value::Table(t) => t,
        other => {
            return match other.try_into() {
                Ok(v) => Some(v),
                Err(e) => {
                    let e: toml::de::Error = e;
                    errors.push(format!("{at}: {}", e.message()));
                    None
                }
            };
        }
    };
    // The usual case, a good table, costs one deserialization (and a clone at load time).
    if let Ok(v) = toml::Value::Table(table.clone()).try_into() {
        return Some(v);
    }
    let mut good = toml::Table::new();
    for (key, v) in table {
        let one = toml::Table::from_iter([(key.clone(), v)]);
        match toml::Value::Table(one.clone()).try_into::<T>() {
            Ok(_) => good.extend(one),
            Err(e) => {
                errors.push(format!("{at}.{key}: {}", e.message()));
                bad.push(format!("{at}.{key}"));
            }
        }
    }
    match toml::Value::Table(good).try_into() {
        Ok(v) => Some(v),
        Err(e) => {
            // Keys that pass alone but not together; say so rather than lose the table.
            let e: toml::de::Error = e;
            errors.push(format!("{at}: {}", e.message()));
            Some(T::default())
        }
    }
}

/// Whether `message` (`key: text`, pushed by validation) only restates that a key reported
/// with a type error is missing: the key itself or one below it (`route[0] (a).ttl: required`
/// after `route[0].ttl: invalid type`), or its table naming it in backticks
/// (`` l2: give exactly one of `url`, ... `` after `l2.url: invalid type`). Validation names
/// array items with the item's name in parentheses; the type check cannot, so those go.
fn shadowed(message: &str, bad: &[String]) -> bool {
    let Some((key, text)) = message.split_once(": ") else {
        return false;
    };
    let mut plain = String::with_capacity(key.len());
    let mut depth = 0usize;
    for c in key.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            _ if depth == 0 => plain.push(c),
            _ => {}
        }
    }
    let plain = plain.replace(" .", ".");
    let plain = plain.trim();
    bad.iter().any(|b| {
        let field = b.rsplit('.').next().unwrap_or(b);
        plain == b
            || plain
                .strip_prefix(b.as_str())
                .is_some_and(|r| r.starts_with('.'))
            || (b.strip_suffix(field).and_then(|p| p.strip_suffix('.')) == Some(plain)
                && text.contains(&format!("`{field}`")))
    })
}

/// Checks one value, recording the error under `key` and returning `default` so validation
/// goes on to find the next problem.
pub(super) fn check<T>(
    errors: &mut Vec<String>,
    key: &str,
    result: Result<T, String>,
    default: T,
) -> T {
    result.unwrap_or_else(|e| {
        errors.push(format!("{key}: {e}"));
        default
    })
}

pub(super) fn duration(
    errors: &mut Vec<String>,
    key: &str,
    v: Option<String>,
    default: &str,
) -> Duration {
    let text = v.unwrap_or_else(|| default.to_string());
    check(errors, key, units::parse_duration(&text), Duration::ZERO)
}

pub(super) fn size(errors: &mut Vec<String>, key: &str, v: Option<String>, default: &str) -> u64 {
    let text = v.unwrap_or_else(|| default.to_string());
    check(errors, key, units::parse_size(&text), 0)
}

pub(super) fn validate(
    s: Sections,
    env: &impl Fn(&str) -> Option<String>,
    errors: &mut Vec<String>,
) -> Option<Config> {
    let e = errors;
    let read = e.len();
    // Upstream first: the default connection budget leaves room for its idle pool.
    let upstream = upstream::validate(s.upstream, env, e);
    let listen = listen::validate(s.listen, upstream.pool_max_idle, env, e);
    let l1 = l1::validate(s.l1, e);
    let runtime = process::runtime(s.runtime, e);
    let shutdown = process::shutdown(s.shutdown, e);
    let log = process::log(s.log, env, e);
    let l2 = s.l2.map(|l2| l2::validate(l2, env, e));
    let warmup = warmup::validate(s.warmup, e);
    let routes = route::validate_all(s.routes, e);
    let mut warnings = route::warnings(&routes);
    warnings.extend(route::grace_warnings(&routes, l1.max_age));
    let has_l2 = l2.is_some();
    let prefix = l2.as_ref().map_or("sidecache", |l| l.prefix.as_str());
    let pubsub = pubsub::validate(s.pubsub, prefix, env, e);
    let admin = admin::validate(s.admin, env, e);
    let invalidations = invalidate::validate_invalidations(s.invalidations, e);
    let events = invalidate::validate_events(s.events, e);
    let limits: LimitsConfig = limit::validate_all(s.limits, s.limit_rules, &routes, env, e);
    if !has_l2 && pubsub.redis.is_none() && !events.is_empty() {
        e.push(
            "event: [[event]] rules need an [l2] or a [pubsub.redis] section (the Redis they arrive on)"
                .into(),
        );
    }
    for r in &routes {
        if !has_l2 && r.tiers.l2 && !r.tiers.l1 {
            e.push(format!(
                "route `{}`.tiers: [\"l2\"] needs an [l2] section (without it the route would cache nowhere)",
                r.name
            ));
        }
    }
    if let Some(l2) = &l2 {
        let shared = limits.redis.as_ref().is_none_or(|r| r.target == l2.target);
        if shared && !limits.rules.is_empty() {
            warnings.push(
                "limits: the rate limits share the cache's Redis ([l2]); a cache Redis evicting under maxmemory-policy allkeys-lru evicts limit state too. Give [limits.redis] its own target (or a noeviction database)."
                    .into(),
            );
        }
    }

    let reload_interval = duration(e, "reload.interval", s.reload.interval, "2s");
    let mut i = 0;
    e.retain(|m| {
        i += 1;
        i <= read || !shadowed(m, &s.bad_keys)
    });
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
        reload_interval,
        warnings,
    })
}
