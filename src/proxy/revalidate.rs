//! The revalidate phase (RFC 9111 §4.3): a stored entry the request may not use as it is
//! (stale, `no-cache`, or not fresh enough for the request's directives) is asked about with
//! a conditional request built from its own validators (the fill adds them, see
//! [`add_validators`]); a `304` about it refreshes it: its fields merged with the 304's
//! (§3.2), a new freshness lifetime, stored again in L1 and L2 and served, counted as
//! `revalidated`. Any other answer is an ordinary fill. Coalesced like a fill: it *is* the
//! fill of its key.
//!
//! A HEAD answer that describes a stored entry freshens it the same way (§4.3.5).
//!
//! An invalidation that overlaps a revalidation wins: the refreshed entry is stored under the
//! fill's ticket and lease like any fill, so it is dropped if either was overtaken.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderMap};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use super::body::Body;
use super::respond::{self, Served, CACHE_STATUS};
use super::{rescue, LeaseGuard, Looked, Proxy, Target};
use crate::cache::coalesce::FillGuard;
use crate::cache::l1::FillTicket;
use crate::cache::policy::{self, flags, validate, vary::Marker};
use crate::cache::{clock, CacheKey, CacheOutcome, Entry, FillState, Meta, NoStoreReason};
use crate::client::UpstreamBody;
use crate::error::ProxyError;
use crate::metrics::RouteMetrics;
use crate::route::Route;

/// Adds `stale`'s validators to a fill's request; whether it had any to add (a derived ETag
/// is never sent, and without `Last-Modified` nothing is).
pub(super) fn add_validators(headers: &mut HeaderMap, stale: &Entry) -> bool {
    if !validate::has_validator(stale.flags()) {
        return false;
    }
    let fields = validate::conditional_fields(stale.etag(), stale.last_modified(), stale.flags());
    let any = !fields.is_empty();
    for (name, value) in fields {
        headers.insert(name, value);
    }
    any
}

/// What a conditional fill hands the revalidate phase.
pub(super) struct Done {
    pub(super) target: Target,
    pub(super) tags: Vec<String>,
    pub(super) path: String,
    pub(super) guard: FillGuard,
    pub(super) ticket: FillTicket,
}

impl Proxy {
    /// A `304` to a conditional fill: the stored entry refreshed, stored and served.
    pub(super) async fn revalidated(
        &self,
        resp: Response<UpstreamBody>,
        done: Done,
        route: &Arc<Route>,
        rm: &RouteMetrics,
        client_headers: &HeaderMap,
        lease: &mut LeaseGuard,
    ) -> (Response<Body>, CacheOutcome) {
        let Done {
            target,
            tags,
            path,
            guard,
            ticket,
        } = done;
        let stale = target
            .stale
            .clone()
            .expect("a conditional fill holds the entry it revalidates");
        // A 304 has no body: its head is all there is.
        let (parts, _) = resp.into_parts();
        if !validate::describes_entry(
            &parts.headers,
            stale.etag(),
            stale.last_modified(),
            stale.flags(),
        ) {
            // A 304 about another representation than the one held (§4.3.4): nothing to
            // update or serve, and what is held is no longer current.
            guard.complete(FillState::Pass);
            self.l1.invalidate(&[], &[target.key]);
            let error = ProxyError::UpstreamProtocol(
                "a 304 for a representation this cache does not hold".into(),
            );
            return (rescue::rescue(&error), CacheOutcome::Error);
        }
        let now = clock::now_ms();
        // The refreshed entry keeps every tag the stored one had (the origin's
        // `Surrogate-Key` tags too: a purge by them must still reach it), and the 304 may add
        // its own. Tags the fill's lease did not register keep it out of L2, as on a fill.
        let route_tags = tags.len();
        let mut tags = tags;
        for t in stale.tags() {
            if !tags.iter().any(|x| x == t) {
                tags.push(t.to_string());
            }
        }
        let inherited = tags.len() > route_tags;
        let (tags, added) = super::stale::with_origin_tags(&route.config, &parts.headers, tags);
        let l1_only = inherited || added;
        let (entry, storable) = refreshed(
            route,
            &target,
            &stale,
            &parts.headers,
            client_headers,
            tags,
            path,
            now,
        );
        let stored = storable
            .and_then(|s| self.store_l1(route, &target, &entry, &s.vary, client_headers, ticket));
        let age = entry.initial_age();
        match stored {
            Ok(write) => {
                guard.complete(FillState::Done(entry.clone()));
                if !l1_only {
                    self.store_l2(lease, write, now).await;
                }
                let left = entry.ttl_left_ms(now) / 1000;
                let resp = respond::from_entry(
                    &entry,
                    client_headers,
                    false,
                    age,
                    left,
                    Served::Revalidated,
                );
                (resp, CacheOutcome::Revalidated)
            }
            Err(reason) => {
                // No longer storable as it is (the 304 said `no-store`, changed `Vary`, an
                // invalidation overlapped): the stored entry goes, this answer is served.
                guard.complete(FillState::Pass);
                if reason != NoStoreReason::Invalidated {
                    self.l1.invalidate(&[], &[target.key]);
                }
                self.metrics.not_stored(rm, reason.as_str());
                let mut resp =
                    respond::from_entry(&entry, client_headers, false, age, 0, Served::Revalidated);
                resp.headers_mut().insert(
                    CACHE_STATUS,
                    respond::not_stored(StatusCode::NOT_MODIFIED.as_u16(), reason),
                );
                (resp, CacheOutcome::Revalidated)
            }
        }
    }

    /// A HEAD the cache could not answer: forwarded as it is (it cannot fill the cache, having
    /// no body); a 200 that describes the stored GET response freshens it in L1 (§4.3.5).
    pub(super) async fn head(
        &self,
        req: Request<Incoming>,
        client: SocketAddr,
        route: &Arc<Route>,
        rm: &RouteMetrics,
        primary: CacheKey,
    ) -> (Response<Body>, CacheOutcome) {
        let target = match self.lookup(&primary, req.headers(), true, Served::Hit, None) {
            Looked::Answered(resp, _) => return (resp, CacheOutcome::Hit),
            Looked::Unusable(target) => target,
        };
        let ticket = self.l1.begin_fill();
        let client_headers = target.stale.as_ref().map(|_| req.headers().clone());
        let status = respond::bypassed(NoStoreReason::Head);
        let out = self.upstream.encode(req, client, Instant::now());
        let (resp, outcome) = self.pass(out, rm, Some(status)).await;
        if let (Some(stale), Some(client_headers)) = (&target.stale, client_headers) {
            if resp.status() == StatusCode::OK && head_describes(resp.headers(), stale) {
                let tags: Vec<String> = stale.tags().map(str::to_string).collect();
                let path = stale.path().to_string();
                let now = clock::now_ms();
                let (entry, storable) = refreshed(
                    route,
                    &target,
                    stale,
                    resp.headers(),
                    &client_headers,
                    tags,
                    path,
                    now,
                );
                if let Ok(s) = storable {
                    // L1 only: the L2 copy is refreshed by the next revalidation.
                    let _ = self.store_l1(route, &target, &entry, &s.vary, &client_headers, ticket);
                }
            }
        }
        (resp, outcome)
    }
}

/// `stale` updated by the fields of a 304 or HEAD answer (`update`) at `now_ms`, and whether
/// it may be stored so (its freshness recomputed from the merged fields; a `Vary` that
/// changed makes it unstorable: the variants known no longer match, undici#5732).
#[allow(clippy::too_many_arguments)]
fn refreshed(
    route: &Route,
    target: &Target,
    stale: &Entry,
    update: &HeaderMap,
    client_headers: &HeaderMap,
    tags: Vec<String>,
    path: String,
    now_ms: u64,
) -> (Entry, Result<policy::Storable, NoStoreReason>) {
    let mut merged = validate::merge_fields(stale.headers(), update);
    let mut policy_fields = merged.clone();
    if route.config.cache_control.is_some() && !update.contains_key(header::CACHE_CONTROL) {
        // The stored Cache-Control is the route's, not the origin's.
        policy_fields.remove(header::CACHE_CONTROL);
    }
    let status = stale.status();
    let storable = policy::storability(
        &route.config,
        client_headers,
        status.as_u16(),
        &policy_fields,
        now_ms,
    )
    .and_then(|s| {
        let names = target
            .marker
            .as_ref()
            .and_then(|m| Marker::decode(m.body_bytes()))
            .map(|m| m.names)
            .unwrap_or_default();
        let was_variant = stale.flags() & flags::VARIANT != 0;
        match (was_variant, s.vary.is_empty()) {
            (false, true) => Ok(s),
            (true, false) if s.vary == names => Ok(s),
            _ => Err(NoStoreReason::Vary),
        }
    });
    if let Some(cc) = &route.config.cache_control {
        merged.insert(header::CACHE_CONTROL, cc.clone());
    }
    // A soft purge's mark goes: the origin has just vouched for the entry.
    let (ttl_ms, new_flags, grace_ms, swr_ms) = match &storable {
        Ok(s) => (s.ttl_ms, s.flags, s.grace_ms, s.swr_ms),
        Err(_) => (
            0,
            stale.flags() & !(flags::LAST_MODIFIED | flags::SOFT_PURGED),
            0,
            0,
        ),
    };
    let last_modified = match merged
        .get(header::LAST_MODIFIED)
        .and_then(|v| v.to_str().ok())
        .and_then(validate::http_date)
    {
        Some(lm) if new_flags & flags::LAST_MODIFIED != 0 => lm,
        _ => stale.last_modified(),
    };
    let meta = Meta {
        status,
        last_modified,
        stored_at_ms: now_ms,
        initial_age: policy::initial_age(&route.config, update, now_ms),
        ttl_ms,
        flags: new_flags | (stale.flags() & (flags::ETAG_DERIVED | flags::VARIANT)),
        grace_ms,
        swr_ms,
    };
    merged.remove(header::AGE);
    // What the app must not see stays out of the stored copy, as on a fill.
    super::stale::strip_fields(&route.config, &mut merged);
    let entry = Entry::new(meta, &merged, stale.body_bytes(), &tags, &path);
    (entry, storable)
}

/// Whether a HEAD answer describes the stored entry (§4.3.5): a validator of the origin's that
/// matches, and no other length.
fn head_describes(fields: &HeaderMap, stale: &Entry) -> bool {
    let length_ok = fields
        .get(header::CONTENT_LENGTH)
        .is_none_or(|v| v.as_bytes() == stale.body_len().to_string().as_bytes());
    let has_validator = (fields.contains_key(header::ETAG)
        && stale.flags() & flags::ETAG_DERIVED == 0)
        || (!fields.contains_key(header::ETAG)
            && fields.contains_key(header::LAST_MODIFIED)
            && stale.flags() & flags::LAST_MODIFIED != 0);
    length_ok
        && has_validator
        && validate::describes_entry(fields, stale.etag(), stale.last_modified(), stale.flags())
}
