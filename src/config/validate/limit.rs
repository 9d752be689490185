//! `[limits]` and `[[limit]]`.

use std::time::Duration;

use super::check;
use crate::config::{
    file, KeySource, LimitConfig, LimitScope, LimitsConfig, MatchTemplate, RouteConfig,
    ENV_REPLICAS,
};

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

pub(super) fn validate_all(
    f: file::LimitsFile,
    rules: Vec<file::LimitFile>,
    routes: &[RouteConfig],
    env: &impl Fn(&str) -> Option<String>,
    e: &mut Vec<String>,
) -> LimitsConfig {
    let replicas = match env(ENV_REPLICAS) {
        Some(v) => check(
            e,
            ENV_REPLICAS,
            v.parse::<u32>()
                .map_err(|_| format!("`{v}` is not a number")),
            1,
        ),
        None => f.replicas.unwrap_or(1),
    };
    if replicas == 0 {
        e.push("limits.replicas: at least 1".into());
    }
    let mut limit_rules: Vec<LimitConfig> = Vec::new();
    for (i, r) in rules.into_iter().enumerate() {
        if let Some(rule) = validate_limit(i, r, routes, e) {
            if limit_rules.iter().any(|x| x.name == rule.name) {
                e.push(format!("limit[{i}].name: `{}` is used twice", rule.name));
            }
            limit_rules.push(rule);
        }
    }
    LimitsConfig {
        replicas: replicas.max(1),
        rules: limit_rules,
        redis: f
            .redis
            .map(|r| super::l2::validate_redis("limits", "limits.redis", r, env, e)),
    }
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
        (Some(m), None) => match MatchTemplate::parse_limit(&m) {
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
            Some(KeySource::Header(super::route::header_name(
                e,
                &format!("{at}.key"),
                h,
            )))
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
