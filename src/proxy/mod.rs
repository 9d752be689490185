//! The data path. Every request goes through these phases, in this order only:
//!
//! ```text
//! accept ─→ strip what `Connection` names ─→ refuse (no/two Host, CONNECT: 400/501)
//!   ─→ admit (rate limits) ─┬─ write rule, or unsafe method (§4.4) ─→ forward ─→ invalidate (also when the outcome is unknown) ─→ respond   (write.rs)
//!                           ├─ no cached route / not GET|HEAD ─→ forward untouched (stream both ways)
//!                           └─ cached route ─┬─ a body, or no identity ─→ forward uncached (Cache-Status says why)
//!                                            └─ key ─→ lookup L1 ─┬─ fresh ─→ respond (200|304, Age, Cache-Status)
//!                                                                 ├─ stale, in grace ─→ respond + one background refresh   (stale.rs)
//!                                                                 └─ miss ─→ coalesce ─┬─ leader ─→ forward (quiet connection) ─→ store? ─→ respond
//!                                                                                      └─ follower ─→ wait ─→ respond
//! fill fails (connect, timeout, 5xx) with a stale entry in grace in L1 ─→ respond stale (stale.rs)
//! errors anywhere ─→ rescue (502 / 504 JSON naming the failing side; 400 / 408 for the client's body)
//! ```
//!
//! The L1 hit path is a route match, a hash, a map lookup and a header-map clone: no upstream
//! I/O, no locks held across awaits, no large allocation.

pub mod body;
pub mod forward;
mod range;
mod refuse;
pub mod rescue;
pub mod respond;
mod stale;
mod write;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures_util::future::{self, Either, Ready};
use futures_util::FutureExt;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::cache::l1::FillTicket;
use crate::cache::policy::{self, Freshness};
use crate::cache::{
    clock, key, CacheKey, CacheOutcome, Coalescer, Entry, FillState, Join, L2Key, L2Read, Lease,
    Meta, NoStoreReason, L1, L2,
};
use crate::client::{Outgoing, UpstreamBody};
use crate::config::{Config, Scope};
use crate::error::{ProxyError, Side};
use crate::invalidate::rules::WriteRules;
use crate::invalidate::Invalidator;
use crate::limit::{Admit, Limiter};
use crate::metrics::{Metrics, RouteMetrics, RouteTable};
use crate::route::{Route, Router};
use body::Body;
use forward::Upstream;
use respond::{Served, CACHE_STATUS};
use write::Write;

/// Awaits a future in a box of its own, so that a request's future stays small however much
/// the network paths hold. Written `Box::pin(f).await`, the unboxed `f` also gets a slot in the
/// caller's state (a temporary lives to the end of its statement, past the await): measured,
/// that made a request's future 4,000 bytes, copied on every move (hyper moves it twice).
macro_rules! await_boxed {
    ($fut:expr) => {{
        let fut = Box::pin($fut);
        fut.await
    }};
}

/// How many times a follower whose leader went away tries again before forwarding alone.
const MAX_JOIN_ATTEMPTS: usize = 3;

/// Request fields removed from a cache fill: the fill must fetch the full representation, and
/// the client's own preconditions are then evaluated against the stored entry.
const CONDITIONAL_FIELDS: [header::HeaderName; 5] = [
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
    header::IF_RANGE,
];

pub struct Proxy {
    router: Arc<Router>,
    writes: WriteRules,
    invalidator: Arc<Invalidator>,
    limiter: Limiter,
    l1: L1,
    coalescer: Arc<Coalescer>,
    /// The shared tier; `None` without an `[l2]` section.
    l2: Option<L2>,
    upstream: Upstream,
    routes: RouteTable,
    metrics: Arc<Metrics>,
    max_entry_bytes: usize,
    access_log: bool,
    /// A catch-all route exists: unsafe methods invalidate the URIs they change (RFC 9111
    /// §4.4, `write.rs`).
    catch_all: bool,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy").finish_non_exhaustive()
    }
}

/// The result of one pass through the phases, before metrics and logging.
struct Answer {
    response: Response<Body>,
    outcome: CacheOutcome,
    route: Option<usize>,
}

/// What [`Proxy::handle`] returns: the answer, or the future of one.
pub type Handling =
    Either<Ready<Response<Body>>, Pin<Box<dyn Future<Output = Response<Body>> + Send>>>;

/// Where a request stands after the phases that need no I/O ([`Proxy::step`]).
enum Step {
    /// Answered from L1.
    Answered(Answer),
    /// No cached route: forwarded as it is.
    Pass(Outgoing<Incoming>),
    /// A write rule matched, or an unsafe method with a catch-all route configured:
    /// forwarded, then what it changed is invalidated.
    Write(Outgoing<Incoming>, Write),
    /// A cached route (its id) whose request must not use the cache (an identity scope the
    /// request does not carry, a body the key does not see): forwarded, marked with why.
    Uncached(usize, NoStoreReason, Outgoing<Incoming>),
    /// A cached route, not answered from L1.
    Miss(Request<Incoming>, Arc<Route>, CacheKey),
}

/// What outlives a configuration: the tiers, in-flight fills, the invalidator, the metrics.
/// A reload builds a new [`Proxy`] around the same `Shared`.
#[derive(Debug, Clone)]
pub struct Shared {
    pub l1: L1,
    pub l2: Option<L2>,
    pub coalescer: Arc<Coalescer>,
    pub invalidator: Arc<Invalidator>,
    pub metrics: Arc<Metrics>,
}

impl Proxy {
    /// Builds the per-configuration parts (routes, rules, limits, upstream client) around
    /// `shared`.
    pub fn new(config: &Config, shared: &Shared) -> Proxy {
        let names: Vec<&str> = config.routes.iter().map(|r| r.name.as_str()).collect();
        let router = Arc::new(Router::new(&config.routes));
        shared.invalidator.set_router(router.clone());
        let limiter = Limiter::new(
            &config.limits,
            shared.l2.as_ref().map(|l| l.redis().clone()),
            config
                .l2
                .as_ref()
                .map_or("sidecache", |c| c.prefix.as_str()),
            shared.metrics.clone(),
        );
        Proxy {
            router,
            writes: WriteRules::new(&config.invalidations),
            invalidator: shared.invalidator.clone(),
            limiter,
            l1: shared.l1.clone(),
            l2: shared.l2.clone(),
            coalescer: shared.coalescer.clone(),
            upstream: Upstream::new(&config.upstream),
            routes: shared.metrics.route_table(&names),
            metrics: shared.metrics.clone(),
            max_entry_bytes: config.l1.max_entry_bytes,
            access_log: config.log.access_log,
            catch_all: config.routes.iter().any(|r| r.matcher.is_catch_all()),
        }
    }

    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Answers one request. Never fails: every error has become a response by now.
    ///
    /// Called from hyper's service call, which hyper follows with a read of the client's
    /// socket before it polls the future returned here. What needs no I/O is done before
    /// that read: rate limits without Redis are decided, an L1 hit is answered whole, a
    /// forwarded request's head is encoded. A request head still alive at that read costs a
    /// new read buffer (an 8 KiB allocation and free per request, and glibc's consolidation
    /// of its free lists with each).
    pub fn handle(self: Arc<Self>, mut req: Request<Incoming>, client: SocketAddr) -> Handling {
        let start = Instant::now();
        // Keyed, limited and routed on what is forwarded: a field the client named in
        // `Connection` (say `Connection: authorization`) never reaches the upstream, so it
        // must not pick the cache key either (one caller's answer stored under another's).
        // The fixed hop-by-hop set can key nothing (config refuses those names): it is
        // stripped when the request is encoded, and an L1 hit pays only this lookup.
        if req.headers().contains_key(header::CONNECTION) {
            forward::strip_hop_by_hop(req.headers_mut());
        }
        let method = req.method().clone();
        let path = self.access_log.then(|| req.uri().path().to_string());
        if let Some(response) = refuse::check(&req) {
            // Before rate limits: a request that cannot be served spends no one's budget.
            let answer = Answer {
                response,
                outcome: CacheOutcome::Rejected,
                route: None,
            };
            return Either::Left(future::ready(self.finish(
                answer,
                Vec::new(),
                start,
                &method,
                path,
            )));
        }
        // Rate-limit fields (none without a `[[limit]]` that applies) go on every answer.
        // Without limits the step is taken straight: through `admitted` it cost a copy more.
        let mut limits = Vec::new();
        let step = if self.limiter.is_empty() {
            self.step(req, client, start)
        } else {
            match self.limiter.admit(
                req.method(),
                req.uri().path(),
                req.headers(),
                client,
                &self.router,
            ) {
                Admit::Decided(admission) => {
                    limits = admission.headers;
                    self.admitted(admission.denied.as_ref(), req, client, start)
                }
                Admit::Shared(pending) => {
                    return Either::Right(Box::pin(async move {
                        let admission = await_boxed!(self.limiter.decide_shared(pending));
                        let denied = admission.denied.as_ref();
                        let answer = match self.admitted(denied, req, client, start) {
                            Step::Answered(answer) => answer,
                            step => await_boxed!(self.proceed(step, client)),
                        };
                        self.finish(answer, admission.headers, start, &method, path)
                    }))
                }
            }
        };
        match step {
            Step::Answered(answer) => Either::Left(future::ready(
                self.finish(answer, limits, start, &method, path),
            )),
            // The forwarding future is all such a request holds: one box, and the encoded
            // request moved straight into it (not through `proceed`'s state first).
            Step::Pass(out) => Either::Right(Box::pin(async move {
                let answer = self.pass_through(out).await;
                self.finish(answer, limits, start, &method, path)
            })),
            // What may store an entry keeps its state in a box of its own, apart from the
            // small one made here. Measured (the bench's `memory` case): one box of the whole
            // future per fill left 1.5 MiB more RSS after 100,000 fills, 64.5 vs 63.0 MiB.
            step => Either::Right(Box::pin(async move {
                let answer = await_boxed!(self.proceed(step, client));
                self.finish(answer, limits, start, &method, path)
            })),
        }
    }

    /// A request past admission: denied (a 429, answered), or on to [`Self::step`].
    fn admitted(
        self: &Arc<Self>,
        denied: Option<&(String, u64)>,
        req: Request<Incoming>,
        client: SocketAddr,
        start: Instant,
    ) -> Step {
        match denied {
            Some((rule, retry_after)) => Step::Answered(Answer {
                response: rescue::rate_limited(rule, *retry_after),
                outcome: CacheOutcome::Limited,
                route: self
                    .router
                    .find(req.method(), req.uri().path())
                    .map(|m| m.route.id),
            }),
            None => self.step(req, client, start),
        }
    }

    /// The rate-limit fields, the metrics and the access log of an answered request.
    fn finish(
        &self,
        mut answer: Answer,
        limits: Vec<(HeaderName, HeaderValue)>,
        start: Instant,
        method: &Method,
        path: Option<String>,
    ) -> Response<Body> {
        if !limits.is_empty() {
            // One growth of the map for all of them, not one per field.
            let headers = answer.response.headers_mut();
            headers.reserve(limits.len());
            for (name, value) in limits {
                headers.insert(name, value);
            }
        }
        let status = answer.response.status().as_u16();
        let elapsed = start.elapsed().as_secs_f64();
        let rm = self.routes.get(answer.route);
        self.metrics
            .request(rm, method, status, answer.outcome, elapsed);
        if let Some(path) = path {
            tracing::info!(
                target: "sidecache::access",
                %method,
                path,
                status,
                route = answer.route.map(|i| self.router.routes()[i].config.name.as_str()),
                cache = answer.outcome.as_str(),
                micros = (elapsed * 1e6) as u64,
            );
        }
        answer.response
    }

    /// The phases that need no I/O: a write rule, the route, the key, the L1 lookup. A
    /// forwarded request's timeout runs from `start`.
    fn step(self: &Arc<Self>, req: Request<Incoming>, client: SocketAddr, start: Instant) -> Step {
        let rule = self.writes.find(req.method(), req.uri().path());
        if rule.is_some() || self.catch_all {
            let host = self.upstream.host().as_bytes();
            if let Some(write) = Write::of(&req, rule, self.catch_all, &self.router, host) {
                return Step::Write(self.upstream.encode(req, client, start), write);
            }
        }
        let found = self.router.find(req.method(), req.uri().path()).map(|m| {
            let params = m.params.as_slice();
            let route = m.route;
            let key = key::derive(&route.config, params, req.uri().query(), req.headers());
            (route, key)
        });
        let Some((route, key)) = found else {
            return Step::Pass(self.upstream.encode(req, client, start));
        };
        let uncached = |reason, req| {
            Step::Uncached(route.id, reason, self.upstream.encode(req, client, start))
        };
        if !http_body::Body::is_end_stream(req.body()) {
            // A GET with a body: the body is forwarded but not keyed, so its answer may be
            // this request's only; it is neither served from nor stored in the cache, and
            // never coalesced (one slow body would hold every waiter of the key).
            return uncached(NoStoreReason::RequestBody, req);
        }
        let key = match key {
            Ok(key) => key,
            Err(key::KeyError::NoIdentity) => return uncached(NoStoreReason::NoIdentity, req),
            Err(key::KeyError::AmbiguousIdentity) => {
                return Step::Answered(Answer {
                    response: rescue::bad_request(
                        "downstream_identity_repeated",
                        "the identity header comes more than once",
                    ),
                    outcome: CacheOutcome::Rejected,
                    route: Some(route.id),
                })
            }
        };
        let head = req.method() == Method::HEAD;
        match self.lookup(&key, req.headers(), head, Served::Hit) {
            Some((response, _)) => Step::Answered(Answer {
                response,
                outcome: CacheOutcome::Hit,
                route: Some(route.id),
            }),
            None => match self.stale_hit(route, key, &req, client) {
                Some(answer) => Step::Answered(answer),
                None => Step::Miss(req, route.clone(), key),
            },
        }
    }

    /// Whatever [`Self::step`] left to do that waits on the network.
    async fn proceed(self: &Arc<Self>, step: Step, client: SocketAddr) -> Answer {
        let (route, (response, outcome)) = match step {
            Step::Answered(answer) => return answer,
            Step::Pass(out) => return self.pass_through(out).await,
            Step::Write(out, write) => return await_boxed!(self.write(out, write)),
            Step::Uncached(route, reason, out) => {
                let rm = self.routes.get(Some(route));
                self.metrics.not_stored(rm, reason.as_str());
                let status = respond::bypassed(reason);
                (Some(route), self.pass(out, rm, Some(status)).await)
            }
            Step::Miss(req, route, key) => {
                let rm = self.routes.get(Some(route.id));
                let answer = await_boxed!(self.cached(req, client, &route, rm, key));
                (Some(route.id), answer)
            }
        };
        Answer {
            response,
            outcome,
            route,
        }
    }

    /// A request on no cached route, forwarded as it is.
    fn pass_through(&self, out: Outgoing<Incoming>) -> impl Future<Output = Answer> + '_ {
        self.pass(out, self.routes.get(None), None)
            .map(|(response, outcome)| Answer {
                response,
                outcome,
                route: None,
            })
    }

    /// After an L1 miss on a cached route: coalesce → (L2 | fill).
    async fn cached(
        self: &Arc<Self>,
        req: Request<Incoming>,
        client: SocketAddr,
        route: &Arc<Route>,
        rm: &RouteMetrics,
        key: CacheKey,
    ) -> (Response<Body>, CacheOutcome) {
        // The caller already looked in L1.
        if req.method() == Method::HEAD {
            // A HEAD miss cannot fill the cache (no body): forward it as it is.
            let status = respond::bypassed(NoStoreReason::Head);
            let out = self.upstream.encode(req, client, Instant::now());
            return await_boxed!(self.pass(out, rm, Some(status)));
        }
        for _ in 0..MAX_JOIN_ATTEMPTS {
            match self.coalescer.join(key) {
                Join::Leader(guard) => {
                    // Taken before anything is read, so an invalidation from here on is seen.
                    let ticket = self.l1.begin_fill();
                    // Re-check: a fill may have completed between our lookup and our join.
                    if let Some((resp, entry)) =
                        self.lookup(&key, req.headers(), false, Served::Hit)
                    {
                        guard.complete(FillState::Done(entry));
                        return (resp, CacheOutcome::Hit);
                    }
                    let tags = render_tags(route, &req);
                    let (found, lease, stale_now) =
                        await_boxed!(self.l2_lookup(key, &tags, ticket, req.headers()));
                    if let Some(entry) = found {
                        if let Some(answer) = self.promote(key, entry, req.headers(), ticket) {
                            guard.complete(FillState::Done(answer.1));
                            return (answer.0, CacheOutcome::HitL2);
                        }
                    }
                    if stale_now {
                        // A stale entry from L2, in its revalidate window (now in L1): answered
                        // at once, and this fill becomes its background refresh.
                        if let Some(answer) = self.stale_answer(&key, &req) {
                            self.spawn_refresh(route, key, &req, client, guard);
                            return answer;
                        }
                    }
                    let fill = Fill {
                        key,
                        tags,
                        lease,
                        guard,
                        ticket,
                    };
                    return await_boxed!(self.fill(req, client, route, rm, fill));
                }
                Join::Follower(rx) => {
                    self.metrics.coalesced_wait(rm);
                    match crate::cache::coalesce::wait(rx).await {
                        FillState::Done(entry) => {
                            let now = clock::now_ms();
                            let (age, left) = match entry.freshness(now) {
                                Freshness::Fresh {
                                    age_secs,
                                    ttl_left_secs,
                                } => (age_secs, ttl_left_secs),
                                Freshness::Stale { .. } | Freshness::Expired => {
                                    (entry.ttl_ms() / 1000, 0)
                                }
                            };
                            let served = Served::Collapsed {
                                fwd_status: entry.status().as_u16(),
                            };
                            let resp = respond::from_entry(
                                &entry,
                                req.headers(),
                                false,
                                age,
                                left,
                                served,
                            );
                            return (resp, CacheOutcome::Collapsed);
                        }
                        FillState::Failed(error) => {
                            let (status, detail) = (error.status().as_u16(), error.kind());
                            if let Some(stale) =
                                self.stale_on_error(&key, req.headers(), status, detail)
                            {
                                return stale;
                            }
                            return (rescue::rescue(&error), CacheOutcome::Error);
                        }
                        FillState::Stale(status) => {
                            let detail = "upstream_status";
                            if let Some(stale) =
                                self.stale_on_error(&key, req.headers(), status, detail)
                            {
                                return stale;
                            }
                            return await_boxed!(self.fetch_uncoalesced(req, client, route, rm));
                        }
                        FillState::Pass => {
                            return await_boxed!(self.fetch_uncoalesced(req, client, route, rm))
                        }
                        FillState::Abandoned | FillState::Pending => continue,
                    }
                }
            }
        }
        await_boxed!(self.fetch_uncoalesced(req, client, route, rm))
    }

    /// A fresh L1 entry for `key`, answered; and the entry.
    fn lookup(
        &self,
        key: &CacheKey,
        headers: &HeaderMap,
        head: bool,
        served: Served,
    ) -> Option<(Response<Body>, Entry)> {
        let now_ms = clock::now_ms();
        let entry = self.l1.get(key, now_ms)?;
        match entry.freshness(now_ms) {
            Freshness::Fresh {
                age_secs,
                ttl_left_secs,
            } => {
                let resp =
                    respond::from_entry(&entry, headers, head, age_secs, ttl_left_secs, served);
                Some((resp, entry))
            }
            Freshness::Stale { .. } | Freshness::Expired => None,
        }
    }

    /// After an L1 miss: the entry from L2, or else the fill lease (when this pod won it),
    /// or else the entry another pod's fill put in L2 while we waited.
    /// A stale entry within its grace is put in L1 (unless an invalidation since `ticket`
    /// forbids), where stale-if-error finds it should the fill fail.
    /// One that `request` may have at once (stale-while-revalidate) is returned on at once
    /// (`true`): the caller serves it from L1 and refreshes it in the background.
    async fn l2_lookup(
        &self,
        key: CacheKey,
        tags: &[String],
        ticket: FillTicket,
        request: &HeaderMap,
    ) -> (Option<Entry>, Option<(L2Key, String)>, bool) {
        let Some(l2) = &self.l2 else {
            return (None, None, false);
        };
        let Some(l2key) = l2.key(key, tags).await else {
            self.metrics.l2_lookup("unavailable");
            return (None, None, false);
        };
        let read = l2.get(&l2key).await;
        self.metrics.l2_lookup(l2_read_label(&read));
        if let L2Read::Hit(entry) = read {
            // Redis expires by its own clock: an entry a few ms past its freshness is a miss,
            // and this pod competes for the lease to refill it.
            match entry.freshness(clock::now_ms()) {
                Freshness::Fresh { .. } => return (Some(*entry), None, false),
                f @ Freshness::Stale { .. } => {
                    let stored = self.l1.insert_fill(key, *entry, ticket);
                    let now = crate::cache::stale::for_request(f, request);
                    if stored
                        && matches!(
                            now,
                            Freshness::Stale {
                                while_revalidate: true,
                                ..
                            }
                        )
                    {
                        return (None, None, true);
                    }
                }
                Freshness::Expired => {}
            }
        }
        match l2.acquire(&l2key).await {
            Lease::Acquired(token) => (None, Some((l2key, token)), false),
            Lease::Busy => {
                let filled = l2.wait_for_fill(&l2key).await;
                self.metrics.l2_lease_wait(if filled.is_some() {
                    "filled"
                } else {
                    "timeout"
                });
                (filled, None, false)
            }
            Lease::Unavailable => (None, None, false),
        }
    }

    /// Serves an entry found in L2 and promotes it to L1 with its remaining lifetime.
    fn promote(
        &self,
        key: CacheKey,
        entry: Entry,
        headers: &HeaderMap,
        ticket: FillTicket,
    ) -> Option<(Response<Body>, Entry)> {
        let Freshness::Fresh {
            age_secs,
            ttl_left_secs,
        } = entry.freshness(clock::now_ms())
        else {
            return None;
        };
        self.l1.insert_fill(key, entry.clone(), ticket);
        let resp = respond::from_entry(
            &entry,
            headers,
            false,
            age_secs,
            ttl_left_secs,
            Served::HitL2,
        );
        Some((resp, entry))
    }

    /// The leader's fill: forward, decide, buffer, store, answer.
    async fn fill<B>(
        &self,
        req: Request<B>,
        client: SocketAddr,
        route: &Arc<Route>,
        rm: &RouteMetrics,
        fill: Fill,
    ) -> (Response<Body>, CacheOutcome)
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: std::fmt::Display,
    {
        let Fill {
            key,
            tags,
            lease,
            guard,
            ticket,
        } = fill;
        // Kept for refresh after an invalidation, which only shared entries get (there is no
        // caller to fetch an identity-scoped one as): those store none (~30 bytes each).
        let path = match (route.config.scope, req.uri().path_and_query()) {
            (Scope::Shared, Some(pq)) => pq.as_str().to_string(),
            _ => String::new(),
        };
        // Whatever happens below, a lease this fill does not use is handed back.
        let mut lease = LeaseGuard {
            l2: self.l2.clone(),
            lease,
        };
        let (mut parts, body) = req.into_parts();
        let client_headers = parts.headers.clone();
        for name in CONDITIONAL_FIELDS {
            parts.headers.remove(name);
        }
        parts.headers.remove(header::RANGE);
        let started = Instant::now();
        let upstream_req = Request::from_parts(parts, body);
        let out = self
            .upstream
            .encode(upstream_req, client, started)
            .to_be_stored();
        let resp = match self.forward(out, rm).await {
            Ok(resp) => resp,
            Err(error) => {
                let (status, detail) = (error.status().as_u16(), error.kind());
                guard.complete(FillState::Failed(error.clone()));
                if let Some(stale) = self.stale_on_error(&key, &client_headers, status, detail) {
                    return stale;
                }
                return (rescue::rescue(&error), CacheOutcome::Error);
            }
        };
        let (mut parts, body) = resp.into_parts();
        let status = parts.status.as_u16();
        if status >= 500 {
            if let Some(stale) =
                self.stale_on_error(&key, &client_headers, status, "upstream_status")
            {
                guard.complete(FillState::Stale(status));
                return stale;
            }
        }

        let ttl = policy::storability(&route.config, status, &parts.headers).and_then(|ttl| {
            match content_length(&parts.headers) {
                Some(n) if n > self.max_entry_bytes as u64 => Err(NoStoreReason::TooLarge),
                _ => Ok(ttl),
            }
        });
        let ttl = match ttl {
            Ok(ttl) => ttl,
            Err(reason) => {
                guard.complete(FillState::Pass);
                stale::strip_fields(&route.config, &mut parts.headers);
                self.metrics.not_stored(rm, reason.as_str());
                parts
                    .headers
                    .insert(CACHE_STATUS, respond::not_stored(status, reason));
                return (
                    Response::from_parts(parts, Body::Upstream(body)),
                    CacheOutcome::Uncacheable,
                );
            }
        };

        let deadline = self.upstream.timeout().saturating_sub(started.elapsed());
        let collected =
            match tokio::time::timeout(deadline, collect_limited(body, self.max_entry_bytes)).await
            {
                Err(_) => Err(ProxyError::UpstreamTimeout),
                Ok(r) => r,
            };
        let body = match collected {
            Ok(Collected::Complete(bytes)) => bytes,
            Ok(Collected::TooLarge { prefix, rest }) => {
                guard.complete(FillState::Pass);
                self.metrics
                    .not_stored(rm, NoStoreReason::TooLarge.as_str());
                parts.headers.insert(
                    CACHE_STATUS,
                    respond::not_stored(status, NoStoreReason::TooLarge),
                );
                let body = Body::Prefixed {
                    prefix: Some(prefix),
                    rest,
                };
                return (Response::from_parts(parts, body), CacheOutcome::Uncacheable);
            }
            Err(error) => {
                self.metrics.upstream_error(rm, error.kind());
                tracing::warn!(route = %route.config.name, %error, "Upstream body failed.");
                let (status, detail) = (error.status().as_u16(), error.kind());
                guard.complete(FillState::Failed(error.clone()));
                if let Some(stale) = self.stale_on_error(&key, &client_headers, status, detail) {
                    return stale;
                }
                return (rescue::rescue(&error), CacheOutcome::Error);
            }
        };

        let now = clock::now_ms();
        let (tags, l1_only) = stale::with_origin_tags(&route.config, &parts.headers, tags);
        let entry = build_entry(route, path, parts, body, ttl, tags, now);
        if !self.l1.insert_fill(key, entry.clone(), ticket) {
            // An invalidation overlapped this fill, so what it read may predate a write. This
            // request was under way before the write was acknowledged and may have the answer;
            // a follower may have come after it, so each fetches its own, and L2 gets nothing.
            self.metrics
                .not_stored(rm, NoStoreReason::Invalidated.as_str());
            guard.complete(FillState::Pass);
            let served = Served::Invalidated { fwd_status: status };
            let resp = respond::from_entry(&entry, &client_headers, false, 0, 0, served);
            return (resp, CacheOutcome::Uncacheable);
        }
        guard.complete(FillState::Done(entry.clone()));
        // Tags the lease did not register keep an entry out of L2 (`with_origin_tags`); the
        // lease guard gives the lease back.
        if let (Some(l2), false) = (&self.l2, l1_only) {
            if let Some((l2key, token)) = lease.take() {
                l2.put(&l2key, &token, &entry, now).await;
            }
        }
        let left = entry.ttl_left_ms(now) / 1000;
        let served = Served::Stored { fwd_status: status };
        let resp = respond::from_entry(
            &entry,
            &client_headers,
            false,
            entry.initial_age(),
            left,
            served,
        );
        (resp, CacheOutcome::Miss)
    }

    /// Forwards a cached-route request on its own (the shared fill was not shareable); the
    /// answer says why it was not stored.
    async fn fetch_uncoalesced(
        &self,
        req: Request<Incoming>,
        client: SocketAddr,
        route: &Arc<Route>,
        rm: &RouteMetrics,
    ) -> (Response<Body>, CacheOutcome) {
        match self
            .forward(self.upstream.encode(req, client, Instant::now()), rm)
            .await
        {
            Ok(resp) => {
                let (mut parts, body) = resp.into_parts();
                let status = parts.status.as_u16();
                let reason = policy::storability(&route.config, status, &parts.headers)
                    .err()
                    .unwrap_or(NoStoreReason::TooLarge);
                parts
                    .headers
                    .insert(CACHE_STATUS, respond::not_stored(status, reason));
                (
                    Response::from_parts(parts, Body::Upstream(body)),
                    CacheOutcome::Uncacheable,
                )
            }
            Err(error) => (rescue::rescue(&error), CacheOutcome::Error),
        }
    }

    /// Forwards a request whose answer is not stored, marking the answer with `cache_status`
    /// when given. Like [`Self::forward`], a combinator
    /// and not an `async fn`: the future holds the client's future once, without the request
    /// beside it (a request's future is copied whole when it moves).
    fn pass<'a>(
        &'a self,
        out: Outgoing<Incoming>,
        rm: &'a RouteMetrics,
        cache_status: Option<HeaderValue>,
    ) -> impl Future<Output = (Response<Body>, CacheOutcome)> + 'a {
        self.forward(out, rm).map(move |forwarded| match forwarded {
            Ok(resp) => {
                let mut resp = resp.map(Body::Upstream);
                if let Some(v) = cache_status {
                    resp.headers_mut().insert(CACHE_STATUS, v);
                }
                (resp, CacheOutcome::Bypass)
            }
            Err(error) => (rescue::rescue(&error), CacheOutcome::Error),
        })
    }

    /// Streams a request to the upstream and returns its response head, counting duration
    /// and errors.
    fn forward<'a, B>(
        &'a self,
        out: Outgoing<B>,
        rm: &'a RouteMetrics,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, ProxyError>> + 'a
    where
        B: http_body::Body<Data = Bytes> + 'a,
        B::Error: std::fmt::Display,
    {
        let started = out.started();
        let sent = self.upstream.send(out);
        sent.map(move |result| {
            match &result {
                Ok(_) => self
                    .metrics
                    .upstream_duration(rm, started.elapsed().as_secs_f64()),
                Err(error) if error.side() == Side::Upstream => {
                    self.metrics.upstream_error(rm, error.kind());
                    tracing::warn!(route = rm.name(), %error, "Upstream request failed.");
                }
                Err(error) => {
                    tracing::debug!(route = rm.name(), %error, "Client request failed.");
                }
            }
            result
        })
    }
}

fn render_tags<B>(route: &Route, req: &Request<B>) -> Vec<String> {
    let m = &route.config.matcher;
    let path = req.uri().path();
    crate::route::match_segments(&m.segments, path.strip_prefix('/').unwrap_or_default())
        .map(|params| crate::invalidate::uri::entry_tags(&route.config, &params, path))
        .unwrap_or_default()
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// What the leader of a fill holds: the key, its rendered tags, the L2 lease (if this pod
/// won it) and the coalescing guard that releases the followers.
struct Fill {
    key: CacheKey,
    tags: Vec<String>,
    lease: Option<(L2Key, String)>,
    guard: crate::cache::coalesce::FillGuard,
    ticket: FillTicket,
}

/// A fill lease not yet used: released in the background when the fill ends without a put.
struct LeaseGuard {
    l2: Option<L2>,
    lease: Option<(L2Key, String)>,
}

impl LeaseGuard {
    fn take(&mut self) -> Option<(L2Key, String)> {
        self.lease.take()
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        if let (Some(l2), Some((key, token))) = (self.l2.take(), self.lease.take()) {
            tokio::spawn(async move { l2.release(&key, &token).await });
        }
    }
}

fn l2_read_label(r: &L2Read) -> &'static str {
    match r {
        L2Read::Hit(_) => "hit",
        L2Read::Miss => "miss",
        L2Read::Corrupt => "corrupt",
        L2Read::Unavailable => "unavailable",
    }
}

enum Collected {
    Complete(Bytes),
    TooLarge { prefix: Bytes, rest: UpstreamBody },
}

/// Buffers a body of at most `limit` bytes; a longer one is handed back with what was read.
/// (The entry copies what it keeps into its own buffer, so the result may share the
/// connection's read buffer.)
async fn collect_limited(body: UpstreamBody, limit: usize) -> Result<Collected, ProxyError> {
    let mut body = match body.into_buffered() {
        Ok(whole) if whole.len() <= limit => return Ok(Collected::Complete(whole)),
        Ok(whole) => UpstreamBody::from(whole),
        Err(streaming) => streaming,
    };
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ProxyError::UpstreamProtocol(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            buf.extend_from_slice(&data);
            if buf.len() > limit {
                return Ok(Collected::TooLarge {
                    prefix: buf.freeze(),
                    rest: body,
                });
            }
        }
    }
    Ok(Collected::Complete(buf.freeze()))
}

/// Turns a fetched response into an entry: the headers a hit will send, validators, timing.
fn build_entry(
    route: &Route,
    path: String,
    parts: http::response::Parts,
    body: Bytes,
    ttl: std::time::Duration,
    tags: Vec<String>,
    now_ms: u64,
) -> Entry {
    let mut headers = parts.headers;
    let initial_age = headers
        .remove(header::AGE)
        .and_then(|v| v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()))
        .unwrap_or(0);
    let http_date = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .and_then(|s| httpdate::parse_http_date(s).ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
    };
    let last_modified = http_date(header::LAST_MODIFIED)
        .or_else(|| http_date(header::DATE))
        .unwrap_or(now_ms / 1000);
    let (grace_ms, swr_ms) = crate::cache::stale::grace(&route.config, &headers);
    stale::strip_fields(&route.config, &mut headers);
    if let Some(cc) = &route.config.cache_control {
        headers.insert(header::CACHE_CONTROL, cc.clone());
    }
    headers.insert(header::CONTENT_LENGTH, respond::number(body.len() as u64));
    let meta = Meta {
        status: parts.status,
        last_modified,
        stored_at_ms: now_ms,
        initial_age,
        ttl_ms: ttl.as_millis() as u64,
        grace_ms,
        swr_ms,
        soft_purged: false,
    };
    // The entry copies what it keeps into one buffer of its own, so no slice of hyper's read
    // buffer stays alive (measured: 100,000 small entries once held ~690 MiB that way); it
    // adds a strong ETag if the upstream sent none.
    Entry::new(meta, &headers, &body, &tags, &path)
}
