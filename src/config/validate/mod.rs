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
mod route;
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
}

impl Sections {
    pub(super) fn read(mut table: toml::Table, errors: &mut Vec<String>) -> Sections {
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
    let listen = listen::validate(s.listen, env, e);
    let upstream = upstream::validate(s.upstream, env, e);
    let l1 = l1::validate(s.l1, e);
    let runtime = process::runtime(s.runtime, e);
    let shutdown = process::shutdown(s.shutdown, e);
    let log = process::log(s.log, env, e);
    let l2 = s.l2.map(|l2| l2::validate(l2, env, e));
    let warmup = warmup::validate(s.warmup, e);
    let routes = route::validate_all(s.routes, e);
    let has_l2 = l2.is_some();
    let prefix = l2.as_ref().map_or("sidecache", |l| l.prefix.as_str());
    let pubsub = pubsub::validate(s.pubsub, prefix, e);
    let admin = admin::validate(s.admin, env, e);
    let invalidations = invalidate::validate_invalidations(s.invalidations, e);
    let events = invalidate::validate_events(s.events, e);
    let limits: LimitsConfig = limit::validate_all(s.limits, s.limit_rules, &routes, env, e);
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
