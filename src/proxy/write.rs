//! The write phase: a request an `[[invalidate]]` rule matched, or an unsafe request (RFC 9111
//! §4.4) while a catch-all route is configured, is forwarded, then what it invalidates goes
//! (L2, L1 here, the other pods) before the answer leaves, so the caller reads its own write.
//! A rule's tags; and for an unsafe method, the URI tag of its target and of the same-origin
//! `Location`/`Content-Location` its answer names, where a catch-all route serves them (see
//! `invalidate::uri`).
//!
//! A write whose outcome is unknown invalidates all the same: it may have committed. That
//! includes a write whose caller went away mid-exchange (hyper then drops this future): a
//! guard armed before the request is sent invalidates from its own task if the phase never
//! completes.

use std::sync::Arc;

use http::{HeaderMap, Request};

use crate::cache::CacheOutcome;
use crate::client::Outgoing;
use crate::invalidate::rules::Matched;
use crate::invalidate::uri;
use crate::invalidate::{Invalidator, Source, Target};
use crate::route::Router;
use hyper::body::Incoming;

use super::{Answer, Proxy};

/// What a write may invalidate, known before it is forwarded.
pub(super) struct Write {
    /// The `[[invalidate]]` rule that matched, if one did.
    rule: Option<Matched>,
    /// For an unsafe method: what §4.4 needs once the answer is in (boxed: a request's
    /// `Step` stays as small as before).
    unsafe_method: Option<Box<Unsafe>>,
}

/// An unsafe request's target, for §4.4.
struct Unsafe {
    /// The request path, against which relative references resolve.
    path: String,
    /// The URI tag of the target, when a catch-all route serves it.
    target: Option<String>,
    origin: uri::Origin,
}

impl Write {
    /// The write phase of `req`, if it has one: a rule matched, or the method is unsafe and
    /// `catch_all` (a catch-all route exists, so a URI may be cached under its tag).
    pub(super) fn of<B>(
        req: &Request<B>,
        rule: Option<Matched>,
        catch_all: bool,
        router: &Router,
        upstream_host: &[u8],
    ) -> Option<Write> {
        let unsafe_method = (catch_all && uri::is_unsafe(req.method())).then(|| {
            let path = req.uri().path();
            let host = req.headers().get(http::header::HOST);
            Box::new(Unsafe {
                path: path.to_string(),
                target: uri::served_tag(router, path),
                origin: uri::Origin::new(
                    host.map(|h| h.as_bytes())
                        .into_iter()
                        .chain([upstream_host]),
                ),
            })
        });
        (rule.is_some() || unsafe_method.is_some()).then_some(Write {
            rule,
            unsafe_method,
        })
    }

    /// What goes if the outcome is unknown: the rule's tags and the target's.
    fn uncertain_tags(&self) -> Vec<String> {
        let rule = self.rule.iter().flat_map(|r| r.tags.iter().cloned());
        let target = self.unsafe_method.iter().filter_map(|u| u.target.clone());
        rule.chain(target).collect()
    }
}

/// Which invalidation an answer calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Decision {
    source: Source,
    refresh: bool,
    /// The rule's tags go.
    rule: bool,
    /// The target URI goes (§4.4).
    target: bool,
    /// The URIs the answer names go (§4.4): only from a real answer.
    locations: bool,
}

/// The decision for an answer with `status`: the rule's own on the statuses it calls success
/// (refreshed if it says so), the URIs on any 2xx or 3xx to an unsafe method (RFC 9111 §4.4:
/// "a non-error status code"); an uncertain one on a 502/504 (sidecache's for an upstream
/// that broke or timed out, or a gateway's in front of the backend): the rule's tags and the
/// target, no refresh (what to fetch is unknown); none when the upstream said the write
/// failed, or the client's own request was at fault (sidecache's 400/408).
fn invalidation(
    outcome: CacheOutcome,
    status: u16,
    rule: Option<&Matched>,
    unsafe_method: bool,
) -> Option<Decision> {
    let answered = outcome != CacheOutcome::Error;
    let rule_ok = answered && rule.is_some_and(|r| r.succeeded(status));
    let uri_ok = answered && unsafe_method && (200..400).contains(&status);
    if rule_ok || uri_ok {
        return Some(Decision {
            source: Source::Write,
            refresh: rule_ok && rule.is_some_and(Matched::refresh),
            rule: rule_ok,
            target: uri_ok,
            locations: uri_ok,
        });
    }
    matches!(status, 502 | 504).then_some(Decision {
        source: Source::WriteUncertain,
        refresh: false,
        rule: true,
        target: true,
        locations: false,
    })
}

/// Invalidates `tags` as an uncertain write from a task of its own if dropped armed.
struct Armed {
    invalidator: Arc<Invalidator>,
    tags: Option<Vec<String>>,
}

impl Drop for Armed {
    fn drop(&mut self) {
        let (Some(tags), Ok(runtime)) = (self.tags.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        if tags.is_empty() {
            return;
        }
        let invalidator = self.invalidator.clone();
        runtime.spawn(async move {
            let target = Target {
                tags,
                ..Target::default()
            };
            invalidator
                .invalidate(target, Source::WriteUncertain, false)
                .await;
        });
    }
}

impl Proxy {
    pub(super) async fn write(&self, out: Outgoing<Incoming>, write: Write) -> Answer {
        let mut armed = Armed {
            invalidator: self.invalidator.clone(),
            tags: Some(write.uncertain_tags()),
        };
        let answer = self.pass_through(out).await;
        let status = answer.response.status().as_u16();
        let decision = invalidation(
            answer.outcome,
            status,
            write.rule.as_ref(),
            write.unsafe_method.is_some(),
        );
        if let Some(d) = decision {
            let tags = self.write_tags(write, d, answer.response.headers());
            if !tags.is_empty() {
                let target = Target {
                    tags,
                    ..Target::default()
                };
                // Before the response leaves: the caller must read its own write afterwards.
                Box::pin(self.invalidator.invalidate(target, d.source, d.refresh)).await;
            }
        }
        armed.tags = None;
        answer
    }

    /// The tags `decision` invalidates for `write`, whose answer carries `headers`.
    fn write_tags(&self, write: Write, decision: Decision, headers: &HeaderMap) -> Vec<String> {
        let mut tags = match write.rule {
            Some(rule) if decision.rule => rule.tags,
            _ => Vec::new(),
        };
        if let Some(u) = write.unsafe_method {
            if decision.locations {
                let router = &self.router;
                for t in uri::location_tags(router, &u.origin, &u.path, headers) {
                    if !tags.contains(&t) {
                        tags.push(t);
                    }
                }
            }
            if let Some(t) = u.target.filter(|t| decision.target && !tags.contains(t)) {
                tags.push(t);
            }
        }
        tags
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::invalidate::rules::WriteRules;
    use http::Method;

    fn rule(statuses: &str) -> Matched {
        let c = Config::parse(&format!(
            "[upstream]\nurl = \"http://127.0.0.1:1\"\n[[invalidate]]\nmatch = \"POST /x\"\n\
             tags = [\"t\"]\naction = \"refresh\"\n{statuses}"
        ))
        .unwrap();
        WriteRules::new(&c.invalidations)
            .find(&Method::POST, "/x")
            .unwrap()
    }

    fn decide(status: u16, rule: Option<&Matched>, unsafe_method: bool) -> Option<Decision> {
        invalidation(CacheOutcome::Bypass, status, rule, unsafe_method)
    }

    #[test]
    fn unsafe_methods_invalidate_uris_on_any_non_error_status() {
        for status in [200, 201, 204, 301, 303, 308] {
            let d = decide(status, None, true).unwrap();
            assert_eq!((d.source, d.refresh), (Source::Write, false));
            assert!(d.target && d.locations && !d.rule, "{status}");
        }
        for status in [100, 400, 404, 409, 500, 503] {
            assert_eq!(decide(status, None, true), None, "{status}");
        }
        // Uncertain: the target goes, not what an answer we did not get would name.
        for status in [502, 504] {
            let d = decide(status, None, true).unwrap();
            assert_eq!(d.source, Source::WriteUncertain);
            assert!(d.target && !d.locations && !d.refresh);
        }
        let d = invalidation(CacheOutcome::Error, 200, None, true);
        assert_eq!(d, None, "sidecache's own error is never a success");
    }

    #[test]
    fn a_rule_and_an_unsafe_method_decide_apart() {
        let default = rule("");
        // Both succeed: both go, refreshed as the rule says.
        let d = decide(201, Some(&default), true).unwrap();
        assert!(d.rule && d.target && d.refresh);
        // A 3xx is no success for the default rule, but is a non-error status.
        let d = decide(303, Some(&default), true).unwrap();
        assert!(!d.rule && d.target && !d.refresh);
        // A rule's own success status that is an error for §4.4.
        let odd = rule("statuses = [409]");
        let d = decide(409, Some(&odd), true).unwrap();
        assert!(d.rule && !d.target && !d.locations);
        assert_eq!(decide(409, Some(&default), true), None);
        // A rule alone, as before.
        let d = decide(204, Some(&default), false).unwrap();
        assert!(d.rule && !d.target);
        assert_eq!(decide(500, Some(&default), false), None);
        let d = decide(504, Some(&default), false).unwrap();
        assert_eq!(d.source, Source::WriteUncertain);
    }
}
