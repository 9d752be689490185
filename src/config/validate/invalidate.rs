//! `[[invalidate]]` and `[[event]]`: what removes entries.

use http::Method;

use crate::config::{
    file, Action, EventConfig, InvalidateConfig, MatchTemplate, Subscription, Template,
};

pub(super) fn validate_invalidations(
    rules: Vec<file::InvalidateFile>,
    e: &mut Vec<String>,
) -> Vec<InvalidateConfig> {
    rules
        .into_iter()
        .enumerate()
        .filter_map(|(i, r)| validate_invalidate(i, r, e))
        .collect()
}

pub(super) fn validate_events(
    rules: Vec<file::EventFile>,
    e: &mut Vec<String>,
) -> Vec<EventConfig> {
    rules
        .into_iter()
        .enumerate()
        .filter_map(|(i, r)| validate_event(i, r, e))
        .collect()
}

fn action(e: &mut Vec<String>, key: &str, v: Option<&str>) -> Action {
    match v {
        None | Some("evict") => Action::Evict,
        Some("refresh") => Action::Refresh,
        Some(other) => {
            e.push(format!("{key}: `{other}` is not \"evict\" or \"refresh\""));
            Action::Evict
        }
    }
}

fn tag_templates(e: &mut Vec<String>, at: &str, tags: Option<Vec<String>>) -> Vec<Template> {
    let tags = tags.unwrap_or_default();
    if tags.is_empty() {
        e.push(format!("{at}.tags: list at least one tag template"));
    }
    tags.iter()
        .enumerate()
        .filter_map(|(j, t)| {
            Template::parse(t)
                .map_err(|msg| e.push(format!("{at}.tags[{j}]: {msg}")))
                .ok()
        })
        .collect()
}

fn validate_invalidate(
    i: usize,
    r: file::InvalidateFile,
    e: &mut Vec<String>,
) -> Option<InvalidateConfig> {
    let at = format!("invalidate[{i}]");
    let matcher = match r.match_.as_deref().map(MatchTemplate::parse) {
        Some(Ok(m)) if m.method == Method::GET || m.method == Method::HEAD => {
            e.push(format!(
                "{at}.match: a {} never changes data; invalidate on writes",
                m.method
            ));
            None
        }
        Some(Ok(m)) => Some(m),
        Some(Err(msg)) => {
            e.push(format!("{at}.match: {msg}"));
            None
        }
        None => {
            e.push(format!(
                "{at}.match: required, e.g. \"PUT /api/items/{{id}}\""
            ));
            None
        }
    };
    let tags = tag_templates(e, &at, r.tags);
    if let Some(m) = &matcher {
        for (j, t) in tags.iter().enumerate() {
            for f in t.fields() {
                if !m.params.iter().any(|p| p == f) {
                    e.push(format!(
                        "{at}.tags[{j}]: `{{{f}}}` is not a parameter of `{}`",
                        m.text
                    ));
                }
            }
        }
    }
    let statuses = r.statuses.unwrap_or_default();
    for st in &statuses {
        if !(100..600).contains(st) {
            e.push(format!("{at}.statuses: {st} is not an HTTP status"));
        }
    }
    let action = action(e, &format!("{at}.action"), r.action.as_deref());
    Some(InvalidateConfig {
        matcher: matcher?,
        tags,
        statuses,
        action,
    })
}

fn validate_event(i: usize, r: file::EventFile, e: &mut Vec<String>) -> Option<EventConfig> {
    let at = format!("event[{i}]");
    let subscription = match (r.channel, r.pattern) {
        (Some(c), None) if !c.is_empty() => Some(Subscription::Channel(c)),
        (None, Some(p)) if !p.is_empty() => Some(Subscription::Pattern(p)),
        _ => {
            e.push(format!("{at}: give exactly one of `channel` or `pattern`"));
            None
        }
    };
    let tags = tag_templates(e, &at, r.tags);
    let when = r
        .when
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(k, v)| match serde_json::to_value(&v) {
            Ok(json) => Some((k, json)),
            Err(err) => {
                e.push(format!("{at}.when.{k}: {err}"));
                None
            }
        })
        .collect();
    let action = action(e, &format!("{at}.action"), r.action.as_deref());
    Some(EventConfig {
        subscription: subscription?,
        tags,
        when,
        action,
    })
}
