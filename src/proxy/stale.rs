//! The stale phases: an entry past its freshness but within its grace (see
//! `cache::stale` for who gets one) is
//!
//! - served at once while exactly one background refresh runs (stale-while-revalidate): one
//!   per key in this pod (the refresh leads the key's coalescing), one across pods (it holds
//!   the key's L2 fill lease; a pod that finds the lease taken leaves the refresh to its
//!   holder and keeps serving stale);
//! - served when a fill or a refresh fails (stale-if-error): connect error, timeout, broken
//!   exchange, or a 5xx from the origin.
//!
//! A stale answer only ever comes from L1, looked up when it is sent: every invalidation
//! (write, event, another pod's message, admin purge, gap, purge-all) removes the entry from
//! L1 before it returns, and a fill or refresh that overlapped one stores nothing, so an
//! invalidated value is never served, not even as stale. (A soft purge keeps a marked copy:
//! that is what it asks for.)
//!
//! The refresh is the fill of the stale entry's key (`Proxy::fill`, without a client
//! request): a conditional request with the entry's own validators, so that a `304`
//! refreshes it as the revalidate phase does (counted `revalidated`), and any other answer
//! is an ordinary fill. For a `Vary` resource each variant is its own entry: a stale answer
//! comes from the variant the request's fields select (through the marker in L1, never the
//! marker itself), and its refresh fills that variant.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::HeaderMap;
use http::{Request, Response, Uri};
use http_body_util::Empty;
use hyper::body::Incoming;

use super::body::Body;
use super::respond::{self, Served};
use super::{render_tags, Answer, Fill, Proxy, Target};
use crate::cache::coalesce::FillGuard;
use crate::cache::policy::{self, vary::Marker, Freshness};
use crate::cache::{clock, stale, CacheKey, CacheOutcome, Entry, Join, L2Read, Lease};
use crate::config::RouteConfig;
use crate::route::Route;

/// Most tags a response's `Surrogate-Key` adds, and their longest: a hostile backend cannot
/// grow an entry's tag book without bound.
const MAX_ORIGIN_TAGS: usize = 64;
const MAX_ORIGIN_TAG_BYTES: usize = 256;

/// Where the L2 side of a refresh stands.
enum RefreshLease {
    /// Another pod refreshed already: its entry (promoted to L1) is the refresh.
    Fresh(Entry),
    /// Another pod holds the lease: it refreshes, not us.
    Busy,
    /// Refresh here (with the lease, or without L2).
    Go(Option<(crate::cache::L2Key, String)>),
}

impl Proxy {
    /// After an L1 lookup found nothing usable (`target`): an entry within its grace that
    /// this request may have at once (stale-while-revalidate), answered, with its refresh
    /// started.
    pub(super) fn stale_hit(
        self: &Arc<Self>,
        route: &Arc<Route>,
        target: Target,
        req: &Request<Incoming>,
        client: SocketAddr,
    ) -> Option<Answer> {
        // Only what L1 held just now (`lookup`), a variant rather than a marker.
        let entry = target.stale.as_ref().filter(|e| !e.is_marker())?;
        let head = req.method() == http::Method::HEAD;
        let (response, outcome) = self.stale_response(entry, req.headers(), head)?;
        self.refresh_in_background(route, target, req, client);
        Some(Answer {
            response,
            outcome,
            route: Some(route.id),
        })
    }

    /// The answer from L1's entry for `primary` (through its Vary marker) if a request with
    /// `headers` may have it stale at once.
    pub(super) fn stale_answer(
        &self,
        primary: &CacheKey,
        headers: &HeaderMap,
        head: bool,
    ) -> Option<(Response<Body>, CacheOutcome)> {
        let entry = self.l1_entry(primary, headers)?;
        self.stale_response(&entry, headers, head)
    }

    fn stale_response(
        &self,
        entry: &Entry,
        headers: &HeaderMap,
        head: bool,
    ) -> Option<(Response<Body>, CacheOutcome)> {
        let now = clock::now_ms();
        let Freshness::Stale {
            age_secs,
            while_revalidate: true,
            ..
        } = stale::for_request(entry.freshness(now), headers)
        else {
            return None;
        };
        let soft_purged = entry.soft_purged();
        let response = respond::from_entry(
            entry,
            headers,
            head,
            age_secs,
            0,
            Served::Stale { soft_purged },
        );
        let outcome = if soft_purged {
            CacheOutcome::SoftPurged
        } else {
            CacheOutcome::Stale
        };
        Some((response, outcome))
    }

    /// What L1 holds for a request with `headers` at `primary`: the entry, or the variant its
    /// Vary marker selects; never a marker. Read when the answer is sent: an invalidation
    /// removes from L1 before it returns, so nothing invalidated comes back from here.
    fn l1_entry(&self, primary: &CacheKey, headers: &HeaderMap) -> Option<Entry> {
        let now = clock::now_ms();
        let entry = self.l1.get(primary, now)?;
        if !entry.is_marker() {
            return Some(entry);
        }
        let marker = Marker::decode(entry.body_bytes())?;
        let variant = self.l1.get(&marker.secondary(*primary, headers), now)?;
        (!variant.is_marker()).then_some(variant)
    }

    /// The answer when the upstream failed (`fwd_status`: what it answered, or what
    /// sidecache would; `detail`: why): the entry of `primary` for these `headers` if L1
    /// holds it within its grace now (stale-if-error), else `None` and the error goes out.
    /// Never an entry that must be revalidated (it has no grace: `Freshness::MustRevalidate`).
    pub(super) fn stale_on_error(
        &self,
        primary: &CacheKey,
        headers: &HeaderMap,
        fwd_status: u16,
        detail: &'static str,
    ) -> Option<(Response<Body>, CacheOutcome)> {
        let now = clock::now_ms();
        let entry = self.l1_entry(primary, headers)?;
        let Freshness::Stale { age_secs, .. } = entry.freshness(now) else {
            return None;
        };
        tracing::debug!(key = %primary, fwd_status, detail, "Upstream failed; serving stale.");
        let served = Served::StaleError { fwd_status, detail };
        let resp = respond::from_entry(&entry, headers, false, age_secs, 0, served);
        Some((resp, CacheOutcome::StaleError))
    }

    /// Starts the one refresh of `target` in this pod, unless a fill or refresh of it is under
    /// way already.
    fn refresh_in_background(
        self: &Arc<Self>,
        route: &Arc<Route>,
        target: Target,
        req: &Request<Incoming>,
        client: SocketAddr,
    ) {
        if !self.coalescer.refresh_allowed(&target.key, Instant::now()) {
            return;
        }
        let Join::Leader(guard) = self.coalescer.join(target.key) else {
            return;
        };
        self.spawn_refresh(route, target, req, client, guard);
    }

    /// Runs the refresh of `target` that `guard` (the lead of its coalescing) allows, in a
    /// task of its own.
    pub(super) fn spawn_refresh(
        self: &Arc<Self>,
        route: &Arc<Route>,
        target: Target,
        req: &Request<Incoming>,
        client: SocketAddr,
        guard: FillGuard,
    ) {
        // The request's own fields: they make the same key (identity, Vary fields), so the
        // refresh fetches what this caller would (the fill strips its conditionals and Range).
        // Not its cache directives: the refresh is the cache's, and a caller's `no-store`
        // must not keep the refresh from storing (which would drop the entry).
        let (uri, mut headers) = (req.uri().clone(), req.headers().clone());
        headers.remove(http::header::CACHE_CONTROL);
        headers.remove(http::header::PRAGMA);
        let (this, route) = (self.clone(), route.clone());
        tokio::spawn(async move {
            this.refresh(route, target, uri, headers, client, guard)
                .await;
        });
    }

    /// One background refresh: L2 first (another pod may have refreshed, or be refreshing),
    /// then a fill under the lease, conditional on the stale entry's validators. The stale
    /// entry stays until the fill replaces it; an answer that may not be stored (other than a
    /// server error) removes it.
    async fn refresh(
        self: Arc<Self>,
        route: Arc<Route>,
        mut target: Target,
        uri: Uri,
        headers: HeaderMap,
        client: SocketAddr,
        guard: FillGuard,
    ) {
        // Taken before anything is read: an invalidation from here on keeps the result out.
        let ticket = self.l1.begin_fill();
        let mut req = Request::new(Empty::<Bytes>::new());
        *req.uri_mut() = uri;
        *req.headers_mut() = headers;
        let tags = render_tags(&route, &req);
        let lease = match self
            .refresh_lease(&route, &mut target, &tags, req.headers())
            .await
        {
            RefreshLease::Fresh(entry) => {
                let promoted =
                    self.promote(&target, entry, req.headers(), ticket, route.config.tiers.l1);
                match promoted {
                    Some((_, state)) => guard.complete(state),
                    None => drop(guard),
                }
                return;
            }
            RefreshLease::Busy => {
                // Whoever waits on this key tries again (and waits for the holder's fill).
                drop(guard);
                return;
            }
            RefreshLease::Go(lease) => lease,
        };
        let rm = self.routes.get(Some(route.id));
        let key = target.key;
        let fill = Fill {
            target,
            tags,
            lease,
            guard,
            ticket,
        };
        let (resp, outcome) = self.fill(req, client, &route, rm, fill).await;
        let status = resp.status().as_u16();
        match outcome {
            CacheOutcome::Uncacheable if status < 500 => {
                // The origin answered, with something that may not be stored: the stale
                // entry no longer stands for it.
                self.l1.invalidate(&[], &[key]);
            }
            CacheOutcome::Error | CacheOutcome::StaleError | CacheOutcome::Uncacheable => {
                self.coalescer.refresh_failed(key, Instant::now());
            }
            _ => {}
        }
        tracing::debug!(route = %route.config.name, %key, status, outcome = outcome.as_str(), "Background refresh done.");
    }

    /// The L2 side of a refresh of `target`: the lease, unless another pod holds it or has
    /// just put a newer usable entry (the variant the request selects, for a Vary resource).
    async fn refresh_lease(
        &self,
        route: &Route,
        target: &mut Target,
        tags: &[String],
        headers: &HeaderMap,
    ) -> RefreshLease {
        // A route kept out of Redis (`tiers = ["l1"]`) refreshes without it.
        let Some(l2) = self.l2.as_ref().filter(|_| route.config.tiers.l2) else {
            return RefreshLease::Go(None);
        };
        let Some(l2key) = l2.key(target.primary, tags).await else {
            return RefreshLease::Go(None);
        };
        match l2.acquire(&l2key).await {
            Lease::Acquired(token) => {
                // Read after taking the lease: a pod that refreshed just before has put its
                // entry and given the lease back, and its entry is our refresh.
                if let L2Read::Hit(e) = l2.get(&l2key).await {
                    let stale_at = target.stale.as_ref().map_or(0, Entry::stored_at_ms);
                    let mut seen = target.clone();
                    let found = self.l2_variant(l2, &l2key, &mut seen, *e, headers).await;
                    if let Some(v) = found.filter(|v| {
                        v.stored_at_ms() > stale_at && v.freshness(clock::now_ms()).is_fresh()
                    }) {
                        l2.release(&l2key, &token).await;
                        *target = seen;
                        return RefreshLease::Fresh(v);
                    }
                }
                RefreshLease::Go(Some((l2key, token)))
            }
            Lease::Busy => RefreshLease::Busy,
            Lease::Unavailable => RefreshLease::Go(None),
        }
    }
}

/// `tags` and the tags of the response's surrogate-key field (`Surrogate-Key: a b`, or a
/// comma-separated `Cache-Tag`), and whether it added any. An entry with tags of its own is
/// kept in L1 only: its L2 lease registered the route's tags before the upstream was asked,
/// which is what keeps an invalidation racing the fill from leaving an old value in L2, and
/// these were not known then. Invalidating them reaches every pod's L1 all the same.
pub(super) fn with_origin_tags(
    route: &RouteConfig,
    headers: &HeaderMap,
    mut tags: Vec<String>,
) -> (Vec<String>, bool) {
    let Some(field) = &route.surrogate_key else {
        return (tags, false);
    };
    let mut added = 0;
    for value in headers.get_all(field) {
        let Ok(text) = value.to_str() else { continue };
        for t in text.split([' ', ',', '\t']).filter(|t| !t.is_empty()) {
            if added == MAX_ORIGIN_TAGS {
                break;
            }
            if t.len() <= MAX_ORIGIN_TAG_BYTES && !tags.iter().any(|x| x == t) {
                tags.push(t.to_string());
                added += 1;
            }
        }
    }
    (tags, added > 0)
}

/// Removes what the route says the app must not see: the targeted cache fields (RFC 9213),
/// the surrogate-key field.
pub(super) fn strip_fields(route: &RouteConfig, headers: &mut HeaderMap) {
    if route.strip_targeted {
        if let Some(f) = &route.targeted_cache_control {
            headers.remove(f);
        }
        headers.remove(policy::CDN_CACHE_CONTROL);
        headers.remove(policy::SURROGATE_CONTROL);
    }
    if let (true, Some(f)) = (route.strip_surrogate_key, &route.surrogate_key) {
        headers.remove(f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use http::HeaderValue;

    fn route(extra: &str) -> RouteConfig {
        Config::parse(&format!(
            "[upstream]\nurl = \"http://127.0.0.1:1\"\n[[route]]\nname = \"r\"\nmatch = \"GET /r\"\nttl = \"60s\"\ntags = [\"r\"]\n{extra}"
        ))
        .unwrap()
        .routes
        .remove(0)
    }

    #[test]
    fn origin_tags_are_added_bounded_and_stripped() {
        let r = route("");
        let mut h = HeaderMap::new();
        h.append("surrogate-key", HeaderValue::from_static("a  b r"));
        h.append("surrogate-key", HeaderValue::from_static("c,a"));
        let (tags, added) = with_origin_tags(&r, &h, vec!["r".into()]);
        assert_eq!(tags, ["r", "a", "b", "c"]);
        assert!(added);
        let (tags, added) = with_origin_tags(&r, &HeaderMap::new(), vec!["r".into()]);
        assert_eq!((tags.len(), added), (1, false));
        let many = (0..500)
            .map(|i| format!("t{i}"))
            .collect::<Vec<_>>()
            .join(" ");
        h.insert("surrogate-key", HeaderValue::from_str(&many).unwrap());
        assert_eq!(
            with_origin_tags(&r, &h, Vec::new()).0.len(),
            MAX_ORIGIN_TAGS
        );
        let off = route("surrogate_key = \"\"");
        assert!(!with_origin_tags(&off, &h, Vec::new()).1);

        h.insert("cdn-cache-control", HeaderValue::from_static("max-age=5"));
        let mut kept = h.clone();
        strip_fields(&r, &mut kept);
        assert!(!kept.contains_key("surrogate-key") && kept.contains_key("cdn-cache-control"));
        let strict = route("strip_targeted = true\nstrip_surrogate_key = false");
        strip_fields(&strict, &mut h);
        assert!(h.contains_key("surrogate-key") && !h.contains_key("cdn-cache-control"));
    }
}
