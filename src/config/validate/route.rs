//! `[[route]]`: the cached read endpoints.

use std::time::Duration;

use http::header::HeaderName;
use http::{HeaderValue, Method};

use super::check;
use crate::config::{
    file, units, MatchTemplate, RouteConfig, Scope, Template, Tiers, RESERVED_ROUTE_NAME,
};

pub(super) fn validate_all(rules: Vec<file::RouteFile>, e: &mut Vec<String>) -> Vec<RouteConfig> {
    let mut routes: Vec<RouteConfig> = Vec::new();
    for (i, r) in rules.into_iter().enumerate() {
        if let Some(route) = validate_route(i, r, e) {
            if routes.iter().any(|x| x.name == route.name) {
                e.push(format!("route[{i}].name: `{}` is used twice", route.name));
            }
            routes.push(route);
        }
    }
    routes
}

/// Doubtful but legal route settings: pairs of routes that match exactly the same requests
/// (the first in the file serves them all, the second never).
pub(super) fn warnings(routes: &[RouteConfig]) -> Vec<String> {
    let mut w = Vec::new();
    for (i, a) in routes.iter().enumerate() {
        for b in &routes[i + 1..] {
            if a.matcher.ambiguous_with(&b.matcher) {
                w.push(format!(
                    "route `{}` and route `{}` match the same requests (`{}`, `{}`): `{}` serves them all",
                    a.name, b.name, a.matcher.text, b.matcher.text, a.name
                ));
            }
        }
        if !a.scope_explicit {
            w.push(format!(
                "route `{}`: `scope` is not set; requests with `Authorization` are stored only when the response says `public`, `s-maxage` or `must-revalidate` (set `scope = \"shared\"` to vouch for them, or `\"identity\"`)",
                a.name
            ));
        }
    }
    w
}

/// Grace longer than L1 keeps anything: the rest of it is served from L2 only (or, without
/// L2, not at all).
pub(super) fn grace_warnings(routes: &[RouteConfig], l1_max_age: Duration) -> Vec<String> {
    routes
        .iter()
        .filter(|r| r.grace > l1_max_age)
        .map(|r| {
            format!(
                "route `{}`: grace {:?} is longer than l1.max_age {:?}: L1 keeps no entry longer, the rest of the grace is served from L2 only",
                r.name, r.grace, l1_max_age
            )
        })
        .collect()
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
    let ttl = r.ttl.map(|t| {
        check(
            e,
            &format!("{at}.ttl"),
            units::parse_duration(&t),
            Duration::ZERO,
        )
    });
    if ttl.is_some_and(|t| t.is_zero()) && e.len() == before {
        e.push(format!("{at}.ttl: must be greater than zero"));
    }
    let scope_explicit = r.scope.is_some();
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
    let statuses = r.statuses.unwrap_or_else(|| match ttl {
        Some(_) => vec![200, 203, 204, 300, 301, 308],
        None => (200..600).filter(|s| !UNSTORABLE.contains(s)).collect(),
    });
    for s in &statuses {
        if !(200..600).contains(s) || UNSTORABLE.contains(s) {
            e.push(format!(
                "{at}.statuses: {s} cannot be stored (a final status other than 206 and 304)"
            ));
        }
    }
    let heuristic = r.heuristic.unwrap_or(0.1);
    if !(0.0..=1.0).contains(&heuristic) {
        e.push(format!(
            "{at}.heuristic: {heuristic} is not a fraction from 0 to 1"
        ));
    }
    let heuristic_max = match r.heuristic_max {
        Some(t) => check(
            e,
            &format!("{at}.heuristic_max"),
            units::parse_duration(&t),
            Duration::ZERO,
        ),
        None => Duration::from_secs(86_400),
    };
    let max_variants = r.max_variants.unwrap_or(16);
    if max_variants == 0 {
        e.push(format!("{at}.max_variants: must be at least 1"));
    }
    let vary = r
        .vary
        .unwrap_or_default()
        .iter()
        .map(|h| header_name(e, &format!("{at}.vary"), h))
        .collect();

    let mut tiers = Tiers {
        l1: false,
        l2: false,
    };
    match r.tiers {
        None => tiers = Tiers::default(),
        Some(list) => {
            for t in &list {
                let slot = match t.as_str() {
                    "l1" => &mut tiers.l1,
                    "l2" => &mut tiers.l2,
                    other => {
                        e.push(format!("{at}.tiers: `{other}` is not \"l1\" or \"l2\""));
                        continue;
                    }
                };
                if std::mem::replace(slot, true) {
                    e.push(format!("{at}.tiers: `{t}` is listed twice"));
                }
            }
            if list.is_empty() {
                e.push(format!(
                    "{at}.tiers: name at least one of \"l1\", \"l2\" (a route that caches nowhere is no route)"
                ));
            }
        }
    }
    let grace = check(
        e,
        &format!("{at}.grace"),
        units::parse_duration(r.grace.as_deref().unwrap_or("0s")),
        Duration::ZERO,
    );
    let max_grace = check(
        e,
        &format!("{at}.max_grace"),
        units::parse_duration(r.max_grace.as_deref().unwrap_or("5m")),
        Duration::ZERO,
    );
    let optional_name = |e: &mut Vec<String>, key: &str, text: Option<String>, default: &str| {
        let text = text.unwrap_or_else(|| default.to_string());
        (!text.is_empty()).then(|| header_name(e, &format!("{at}.{key}"), &text))
    };
    let targeted_cache_control = optional_name(
        e,
        "targeted_cache_control",
        r.targeted_cache_control,
        "sidecache-cache-control",
    );
    let surrogate_key = optional_name(e, "surrogate_key", r.surrogate_key, "surrogate-key");

    let matcher = matcher?;
    Some(RouteConfig {
        name,
        tiers,
        honor_request: r.honor_request.unwrap_or(matcher.is_catch_all()),
        matcher,
        ttl,
        scope,
        scope_explicit,
        identity_header,
        tags,
        honor_upstream: r.honor_upstream.unwrap_or(true),
        cache_control,
        statuses,
        vary,
        ignore_query: r.ignore_query.unwrap_or_default(),
        heuristic,
        heuristic_max,
        max_variants,
        grace,
        max_grace,
        grace_while_revalidate: r.grace_while_revalidate.unwrap_or(true),
        targeted_cache_control,
        strip_targeted: r.strip_targeted.unwrap_or(false),
        surrogate_key,
        strip_surrogate_key: r.strip_surrogate_key.unwrap_or(true),
    })
}

/// Statuses never stored: a partial answer (206) and one without a body of its own (304).
const UNSTORABLE: [u16; 2] = [206, 304];

/// The fields that describe a connection, never reach the upstream, and so can never key an
/// entry or a limit (RFC 9110 §7.6.1; the fixed set of `client::wire::HOP_BY_HOP`).
pub const HOP_BY_HOP_NAMES: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// A header a route or a limit keys on: a valid name, and not a hop-by-hop one (a field the
/// upstream never sees must not tell two callers' entries apart; the proxy only strips the
/// fields a request names in `Connection` before keying, the fixed set at forwarding).
pub(super) fn header_name(e: &mut Vec<String>, key: &str, text: &str) -> HeaderName {
    let name = text.to_ascii_lowercase();
    let parsed = match HeaderName::from_bytes(name.as_bytes()) {
        _ if HOP_BY_HOP_NAMES.contains(&name.as_str()) => Err(format!(
            "`{text}` is a hop-by-hop field: it never reaches the upstream, so it cannot key"
        )),
        Ok(h) => Ok(h),
        Err(_) => Err(format!("`{text}` is not a header name")),
    };
    check(e, key, parsed, HeaderName::from_static("x-invalid"))
}
