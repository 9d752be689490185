//! The data path. Every request goes through these phases, in this order only:
//!
//! ```text
//! accept ─→ strip what `Connection` names ─→ refuse (no/two Host, CONNECT: 400/501)
//!   ─→ admit (rate limits) ─┬─ write rule, or unsafe method (§4.4) ─→ forward ─→ invalidate (also when the outcome is unknown) ─→ respond   (write.rs)
//!                           ├─ no cached route / not GET|HEAD ─→ forward untouched (stream both ways)
//!                           └─ cached route ─┬─ a body, or no identity ─→ forward uncached (Cache-Status says why)
//!                                            └─ key ─→ lookup L1 (a Vary marker ─→ the variant's key)
//!                                                 ├─ usable (fresh, or as the request's directives allow) ─→ respond (200|304, Age, Cache-Status)
//!                                                 ├─ stale, in its grace's revalidate window ─→ respond stale + one background refresh (conditional, through fill)   (stale.rs)
//!                                                 ├─ nothing usable, `only-if-cached` ─→ 504
//!                                                 ├─ HEAD ─→ forward ─→ freshen the stored GET response (revalidate.rs)
//!                                                 └─ miss / stale / no-cache ─→ coalesce ─┬─ leader ─→ L2 (marker, variant) ─┬─ usable ─→ promote ─→ respond
//!                                                                                         │                                  ├─ stale, in its revalidate window ─→ promote ─→ respond stale + this fill in the background
//!                                                                                         │                                  └─ else ─→ fill
//!                                                                                         └─ follower ─→ wait ─→ respond (a variant: look again; the leader's failure: stale if in grace)
//! fill: forward (quiet connection; the stored entry's validators when it has one)
//!   ├─ fails (connect, timeout, 5xx) with a stale entry in grace in L1 ─→ respond stale (stale.rs)
//!   ├─ 304 ─→ revalidate: merge fields, new freshness ─→ store ─→ respond (`revalidated`)   (revalidate.rs)
//!   └─ else ─→ storable? ─→ buffer ─→ store (L1 under the ticket, then L2 under the lease; a variant with its marker) ─→ respond   (store.rs)
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
mod revalidate;
mod stale;
mod store;
mod upgrade;
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
use crate::cache::policy::vary::Marker;
use crate::cache::policy::{self, flags, Freshness, RequestDirectives};
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

/// Copies an HTTP/2 request's `:authority` into `Host` when it has none (RFC 9113 §8.3.1:
/// a proxy forwarding to HTTP/1.1 makes `Host` from `:authority`).
fn h2_host(req: &mut Request<Incoming>) {
    if req.headers().contains_key(header::HOST) {
        return;
    }
    if let Some(value) = req
        .uri()
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        req.headers_mut().insert(header::HOST, value);
    }
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
    hot: Arc<crate::cache::hot::HotKeys>,
    upstream: Upstream,
    tunnels: crate::server::Tunnels,
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
    /// A cached route, not answered from L1: its primary key, and the request's directives
    /// where the route honours them.
    Miss(
        Request<Incoming>,
        Arc<Route>,
        CacheKey,
        Option<Box<RequestDirectives>>,
    ),
    /// An upgrade request (WebSocket): forwarded, and tunnelled after a `101`. Boxed, so that
    /// a rare variant does not make every step (an L1 hit's too) larger to move.
    Upgrade(Box<(Outgoing<Incoming>, HeaderValue, hyper::upgrade::OnUpgrade)>),
}

/// What outlives a configuration: the tiers, in-flight fills, the invalidator, the metrics.
/// A reload builds a new [`Proxy`] around the same `Shared`.
#[derive(Debug, Clone)]
pub struct Shared {
    pub l1: L1,
    pub l2: Option<L2>,
    /// The rate limits' Redis: `[limits.redis]`, else `[l2]`'s client.
    pub limits_redis: Option<crate::redis::Redis>,
    /// This pod's sampled hot keys (warm start of other pods).
    pub hot: Arc<crate::cache::hot::HotKeys>,
    pub coalescer: Arc<Coalescer>,
    pub invalidator: Arc<Invalidator>,
    pub metrics: Arc<Metrics>,
    /// Upgraded connections, drained by the proxy listener on shutdown.
    pub tunnels: crate::server::Tunnels,
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
            shared.limits_redis.clone(),
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
            hot: shared.hot.clone(),
            coalescer: shared.coalescer.clone(),
            upstream: Upstream::new(&config.upstream),
            tunnels: shared.tunnels.clone(),
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
    // Inlined into each protocol's handler (`server::serve_each`): called from two places, it
    // was otherwise left out of line, and an L1 hit paid the call and a copy of its answer
    // (callgrind: +160 instructions).
    #[inline(always)]
    pub fn handle(self: Arc<Self>, mut req: Request<Incoming>, client: SocketAddr) -> Handling {
        let start = Instant::now();
        // Keyed, limited and routed on what is forwarded: a field the client named in
        // `Connection` (say `Connection: authorization`) never reaches the upstream, so it
        // must not pick the cache key either (one caller's answer stored under another's).
        // The fixed hop-by-hop set can key nothing (config refuses those names): it is
        // stripped when the request is encoded, and an L1 hit pays only this lookup.
        if req.headers().contains_key(header::CONNECTION) {
            // Before the strip: `Connection: upgrade` is one of the fields it removes.
            upgrade::mark(&mut req);
            if forward::strip_hop_by_hop(req.headers_mut()) {
                // Kept for the forward, which passes trailers on (and strips it again).
                req.headers_mut()
                    .insert(header::TE, HeaderValue::from_static("trailers"));
            }
        }
        if req.version() == http::Version::HTTP_2 {
            // `:authority` as `Host`, so that keys, rules and the forwarded head see the same
            // request over either protocol.
            h2_host(&mut req);
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
    fn step(
        self: &Arc<Self>,
        mut req: Request<Incoming>,
        client: SocketAddr,
        start: Instant,
    ) -> Step {
        if upgrade::asked(&req) {
            if let Some((asked, on_upgrade)) = upgrade::take(&mut req) {
                let out = self
                    .upstream
                    .encode_upgrade(req, client, start, asked.clone());
                return Step::Upgrade(Box::new((out, asked, on_upgrade)));
            }
        }
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
        let in_l1 = route.config.tiers.l1;
        // Sampled hot keys warm other pods' L1: only keys whose route keeps entries there.
        if in_l1 && crate::cache::hot::sampled() {
            self.hot.record(key);
        }
        // Request directives, where the route honours them: parsed only when sent.
        let rd = (route.config.honor_request && req.headers().contains_key(header::CACHE_CONTROL))
            .then(|| Box::new(RequestDirectives::parse(req.headers())));
        let looked = if in_l1 {
            self.lookup(&key, req.headers(), head, Served::Hit, rd.as_deref())
        } else {
            Looked::Unusable(Target::new(key))
        };
        match looked {
            Looked::Answered(response, _) => Step::Answered(Answer {
                response,
                outcome: CacheOutcome::Hit,
                route: Some(route.id),
            }),
            Looked::Unusable(target) => {
                if let Some(answer) = self.stale_hit(route, target, &req, client) {
                    return Step::Answered(answer);
                }
                if rd.as_ref().is_some_and(|rd| rd.only_if_cached) {
                    return Step::Answered(Answer {
                        response: respond::only_if_cached(),
                        outcome: CacheOutcome::Miss,
                        route: Some(route.id),
                    });
                }
                Step::Miss(req, route.clone(), key, rd)
            }
        }
    }

    /// Whatever [`Self::step`] left to do that waits on the network.
    async fn proceed(self: &Arc<Self>, step: Step, client: SocketAddr) -> Answer {
        let (route, (response, outcome)) = match step {
            Step::Answered(answer) => return answer,
            Step::Pass(out) => return self.pass_through(out).await,
            Step::Upgrade(upgrade) => {
                let (out, asked, on_upgrade) = *upgrade;
                let mut answer = self.pass_through(out).await;
                answer.response =
                    upgrade::answer(answer.response, asked, on_upgrade, &self.tunnels);
                return answer;
            }
            Step::Write(out, write) => return await_boxed!(self.write(out, write)),
            Step::Uncached(route, reason, out) => {
                let rm = self.routes.get(Some(route));
                self.metrics.not_stored(rm, reason.as_str());
                let status = respond::bypassed(reason);
                (Some(route), self.pass(out, rm, Some(status)).await)
            }
            Step::Miss(req, route, key, rd) => {
                let rm = self.routes.get(Some(route.id));
                let answer = await_boxed!(self.cached(req, client, &route, rm, key, rd));
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

    /// After L1 had nothing usable on a cached route: coalesce → (L2 | fill | revalidate).
    async fn cached(
        self: &Arc<Self>,
        req: Request<Incoming>,
        client: SocketAddr,
        route: &Arc<Route>,
        rm: &RouteMetrics,
        primary: CacheKey,
        rd: Option<Box<RequestDirectives>>,
    ) -> (Response<Body>, CacheOutcome) {
        // The caller already looked in L1.
        if req.method() == Method::HEAD {
            return await_boxed!(self.head(req, client, route, rm, primary));
        }
        let rd = rd.as_deref();
        for _ in 0..MAX_JOIN_ATTEMPTS {
            // Looked up again on every attempt: a marker may have appeared (see `Target`).
            let target = match self.lookup(&primary, req.headers(), false, Served::Hit, rd) {
                Looked::Answered(resp, _) => return (resp, CacheOutcome::Hit),
                Looked::Unusable(target) => target,
            };
            match self.coalescer.join(target.key) {
                Join::Leader(guard) => {
                    // Taken before anything is read, so an invalidation from here on is seen.
                    let ticket = self.l1.begin_fill();
                    // Re-check: a fill may have completed between our lookup and our join.
                    let mut target =
                        match self.lookup(&primary, req.headers(), false, Served::Hit, rd) {
                            Looked::Answered(resp, entry) => {
                                guard.complete(FillState::Done(entry));
                                return (resp, CacheOutcome::Hit);
                            }
                            Looked::Unusable(t) if t.key == target.key => t,
                            Looked::Unusable(_) => target,
                        };
                    let tags = render_tags(route, &req);
                    let (found, lease, stale_now) = if route.config.tiers.l2 {
                        await_boxed!(self.l2_lookup(&mut target, &tags, req.headers(), rd, ticket))
                    } else {
                        (None, None, false)
                    };
                    if let Some(entry) = found {
                        let l1 = route.config.tiers.l1;
                        if let Some(answer) =
                            self.promote(&target, entry, req.headers(), ticket, l1)
                        {
                            guard.complete(answer.1);
                            return (answer.0, CacheOutcome::HitL2);
                        }
                    }
                    if stale_now {
                        // A stale entry from L2, in its revalidate window (now in L1): answered
                        // from L1 at once, and this fill becomes its background refresh.
                        let head = req.method() == Method::HEAD;
                        if let Some(answer) = self.stale_answer(&primary, req.headers(), head) {
                            self.spawn_refresh(route, target, &req, client, guard);
                            return answer;
                        }
                    }
                    let fill = Fill {
                        target,
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
                        // A variant was chosen by the leader's request fields: look again.
                        FillState::Done(entry) if entry.flags() & flags::VARIANT != 0 => continue,
                        FillState::Done(entry) => {
                            let now = clock::now_ms();
                            let (age, left) = match entry.freshness(now) {
                                Freshness::Fresh {
                                    age_secs,
                                    ttl_left_secs,
                                } => (age_secs, ttl_left_secs),
                                _ => (entry.age_ms(now) / 1000, 0),
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
                                self.stale_on_error(&primary, req.headers(), status, detail)
                            {
                                return stale;
                            }
                            return (rescue::rescue(&error), CacheOutcome::Error);
                        }
                        FillState::Stale(status) => {
                            let detail = "upstream_status";
                            if let Some(stale) =
                                self.stale_on_error(&primary, req.headers(), status, detail)
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

    /// The L1 entry for `primary` (through its Vary marker, if it has one), answered if the
    /// request may use it; else where a fill stands.
    fn lookup(
        &self,
        primary: &CacheKey,
        headers: &HeaderMap,
        head: bool,
        served: Served,
        rd: Option<&RequestDirectives>,
    ) -> Looked {
        let now_ms = clock::now_ms();
        let Some(mut entry) = self.l1.get(primary, now_ms) else {
            return Looked::Unusable(Target::new(*primary));
        };
        let mut target = Target::new(*primary);
        if entry.is_marker() {
            let Some(marker) = Marker::decode(entry.body_bytes()) else {
                return Looked::Unusable(target);
            };
            target.key = marker.secondary(*primary, headers);
            target.marker = Some(entry);
            match self.l1.get(&target.key, now_ms) {
                Some(variant) => entry = variant,
                None => return Looked::Unusable(target),
            }
        }
        let accepted = |e: &Entry| {
            rd.is_none_or(|rd| policy::satisfies(rd, e.age_ms(now_ms), e.ttl_ms(), e.flags()))
        };
        match entry.freshness(now_ms) {
            Freshness::Fresh {
                age_secs,
                ttl_left_secs,
            } if accepted(&entry) => {
                let resp =
                    respond::from_entry(&entry, headers, head, age_secs, ttl_left_secs, served);
                Looked::Answered(resp, entry)
            }
            // Within its revalidate window it is served stale-while-revalidate instead, which
            // also starts its refresh (`stale.rs`).
            f @ (Freshness::Stale { .. } | Freshness::Expired)
                if rd.is_some() && !f.serves_at_once() && accepted(&entry) =>
            {
                let age = entry.age_ms(now_ms) / 1000;
                let resp = respond::from_entry(&entry, headers, head, age, 0, Served::MaxStale);
                Looked::Answered(resp, entry)
            }
            _ => {
                target.stale = Some(entry);
                Looked::Unusable(target)
            }
        }
    }

    /// After L1 had nothing usable: the entry from L2 if the request may use it, or else the
    /// fill lease (when this pod won it), or else the entry another pod's fill put in L2
    /// while we waited. Updates `target` with what L2 knows (its marker, a stale entry).
    /// A stale entry within its grace is put in L1 (unless an invalidation since `ticket`
    /// forbids), where stale-if-error finds it should the fill fail; one the request may
    /// have at once (stale-while-revalidate) returns `true` before any lease is taken: the
    /// caller serves it from L1 and makes its fill the background refresh.
    async fn l2_lookup(
        &self,
        target: &mut Target,
        tags: &[String],
        headers: &HeaderMap,
        rd: Option<&RequestDirectives>,
        ticket: FillTicket,
    ) -> (Option<Entry>, Option<(L2Key, String)>, bool) {
        let Some(l2) = &self.l2 else {
            return (None, None, false);
        };
        let Some(l2key) = l2.key(target.primary, tags).await else {
            self.metrics.l2_lookup("unavailable");
            return (None, None, false);
        };
        let read = l2.get(&l2key).await;
        self.metrics.l2_lookup(l2_read_label(&read));
        let found = match read {
            L2Read::Hit(entry) => self.l2_variant(l2, &l2key, target, *entry, headers).await,
            _ => None,
        };
        if let Some(entry) = found {
            // Redis expires by its own clock, and keeps what may be revalidated or served
            // stale: an entry the request may not use is a candidate for revalidation, and
            // this pod competes for the lease to refresh it.
            let now_ms = clock::now_ms();
            if usable(&entry, rd, now_ms) {
                return (Some(entry), None, false);
            }
            if target
                .stale
                .as_ref()
                .is_none_or(|s| s.stored_at_ms() < entry.stored_at_ms())
            {
                if let f @ Freshness::Stale { .. } = entry.freshness(now_ms) {
                    // In its grace: into L1 (with its marker), where the stale phases look.
                    let stored = target
                        .marker
                        .as_ref()
                        .is_none_or(|m| self.l1.insert_fill(target.primary, m.clone(), ticket))
                        && self.l1.insert_fill(target.key, entry.clone(), ticket);
                    let now = crate::cache::stale::for_request(f, headers);
                    if stored && now.serves_at_once() {
                        target.stale = Some(entry);
                        return (None, None, true);
                    }
                }
                target.stale = Some(entry);
            }
        }
        match l2.acquire(&l2key).await {
            Lease::Acquired(token) => (None, Some((l2key, token)), false),
            Lease::Busy => {
                let after = target.stale.as_ref().map_or(0, Entry::stored_at_ms);
                let filled = l2.wait_for_fill(&l2key, after).await;
                self.metrics.l2_lease_wait(if filled.is_some() {
                    "filled"
                } else {
                    "timeout"
                });
                let filled = match filled {
                    Some(entry) => self.l2_variant(l2, &l2key, target, entry, headers).await,
                    None => None,
                };
                (
                    filled.filter(|e| usable(e, rd, clock::now_ms())),
                    None,
                    false,
                )
            }
            Lease::Unavailable => (None, None, false),
        }
    }

    /// What L2 holds for the request: `entry` itself, or, when it is a Vary marker, the
    /// variant beside it that the request's fields select. `target` learns which.
    async fn l2_variant(
        &self,
        l2: &L2,
        l2key: &L2Key,
        target: &mut Target,
        entry: Entry,
        headers: &HeaderMap,
    ) -> Option<Entry> {
        if !entry.is_marker() {
            target.key = target.primary;
            target.marker = None;
            if target
                .stale
                .as_ref()
                .is_some_and(|s| s.flags() & flags::VARIANT != 0)
            {
                // L1's variant is not what L2 now holds at the primary key.
                target.stale = None;
            }
            return Some(entry);
        }
        let marker = Marker::decode(entry.body_bytes())?;
        let secondary = marker.secondary(target.primary, headers);
        if secondary != target.key {
            // Another marker than L1's (or none there): L1's stale variant is not this one.
            target.stale = None;
        }
        target.key = secondary;
        target.marker = Some(entry);
        match l2.get_variant(&L2::variant(l2key, secondary)).await {
            L2Read::Hit(variant) if !variant.is_marker() => Some(*variant),
            _ => None,
        }
    }

    /// Serves an entry found in L2 and promotes it to L1 (with its marker, for a variant).
    fn promote(
        &self,
        target: &Target,
        entry: Entry,
        headers: &HeaderMap,
        ticket: FillTicket,
        into_l1: bool,
    ) -> Option<(Response<Body>, FillState)> {
        let now = clock::now_ms();
        let (age_secs, ttl_left_secs, served) = match entry.freshness(now) {
            Freshness::Fresh {
                age_secs,
                ttl_left_secs,
            } => (age_secs, ttl_left_secs, Served::HitL2),
            // Stale, but the request's max-stale accepted it (see `usable`).
            _ => (entry.age_ms(now) / 1000, 0, Served::MaxStale),
        };
        let kept = if into_l1 {
            target
                .marker
                .as_ref()
                .is_none_or(|m| self.l1.insert_fill(target.primary, m.clone(), ticket))
                && self.l1.insert_fill(target.key, entry.clone(), ticket)
        } else {
            !self.l1.superseded(&target.key, &entry, ticket)
        };
        let resp = respond::from_entry(&entry, headers, false, age_secs, ttl_left_secs, served);
        // An invalidation overtook the read: this request began before it and may have the
        // answer, but a waiter may have come after the write, so each looks for itself.
        let state = if kept {
            FillState::Done(entry)
        } else {
            FillState::Pass
        };
        Some((resp, state))
    }

    /// The leader's fill: forward (conditionally, when it holds an entry to revalidate),
    /// decide, buffer, store, answer. A `304` goes to the revalidate phase. Generic over the
    /// request body: a background refresh sends none.
    async fn fill<B>(
        &self,
        req: Request<B>,
        client: SocketAddr,
        route: &Arc<Route>,
        rm: &RouteMetrics,
        fill: Fill,
    ) -> (Response<Body>, CacheOutcome)
    where
        B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: std::fmt::Display + Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let Fill {
            target,
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
        // The stored entry's own validators, never the client's: a 304 must be about what
        // this cache holds (RFC 9111 §4.3.1).
        let conditional = target
            .stale
            .as_ref()
            .is_some_and(|stale| revalidate::add_validators(&mut parts.headers, stale));
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
                if let Some(stale) =
                    self.stale_on_error(&target.primary, &client_headers, status, detail)
                {
                    return stale;
                }
                return (rescue::rescue(&error), CacheOutcome::Error);
            }
        };
        if conditional && resp.status() == http::StatusCode::NOT_MODIFIED {
            let done = revalidate::Done {
                target,
                tags,
                path,
                guard,
                ticket,
            };
            return self
                .revalidated(resp, done, route, rm, &client_headers, &mut lease)
                .await;
        }
        let (mut parts, body) = resp.into_parts();
        let status = parts.status.as_u16();
        if status >= 500 {
            if let Some(stale) =
                self.stale_on_error(&target.primary, &client_headers, status, "upstream_status")
            {
                guard.complete(FillState::Stale(status));
                return stale;
            }
        }

        let now = clock::now_ms();
        let storable =
            policy::storability(&route.config, &client_headers, status, &parts.headers, now)
                .and_then(|storable| match content_length(&parts.headers) {
                    Some(n) if n > self.max_entry_bytes as u64 => Err(NoStoreReason::TooLarge),
                    _ => Ok(storable),
                });
        let storable = match storable {
            Ok(storable) => storable,
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
                if let Some(stale) =
                    self.stale_on_error(&target.primary, &client_headers, status, detail)
                {
                    return stale;
                }
                return (rescue::rescue(&error), CacheOutcome::Error);
            }
        };

        let now = clock::now_ms();
        let (tags, l1_only) = stale::with_origin_tags(&route.config, &parts.headers, tags);
        let entry = build_entry(route, path, parts, body, &storable, tags, now);
        let write = match self.store_l1(
            route,
            &target,
            &entry,
            &storable.vary,
            &client_headers,
            ticket,
        ) {
            Ok(write) => write,
            Err(reason) => {
                // An invalidation overlapped this fill, so what it read may predate a write.
                // This request was under way before the write was acknowledged and may have
                // the answer; a follower may have come after it, so each fetches its own, and
                // L2 gets nothing.
                self.metrics.not_stored(rm, reason.as_str());
                guard.complete(FillState::Pass);
                let served = Served::Invalidated { fwd_status: status };
                let mut resp = respond::from_entry(&entry, &client_headers, false, 0, 0, served);
                if reason != NoStoreReason::Invalidated {
                    resp.headers_mut()
                        .insert(CACHE_STATUS, respond::not_stored(status, reason));
                }
                return (resp, CacheOutcome::Uncacheable);
            }
        };
        guard.complete(FillState::Done(entry.clone()));
        // Tags the lease did not register keep an entry out of L2 (`with_origin_tags`); the
        // lease guard gives the lease back.
        if !l1_only {
            self.store_l2(&mut lease, write, now).await;
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
        let request_headers = req.headers().clone();
        match self
            .forward(self.upstream.encode(req, client, Instant::now()), rm)
            .await
        {
            Ok(resp) => {
                let (mut parts, body) = resp.into_parts();
                let status = parts.status.as_u16();
                let reason = policy::storability(
                    &route.config,
                    &request_headers,
                    status,
                    &parts.headers,
                    clock::now_ms(),
                )
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
        B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: std::fmt::Display + Into<Box<dyn std::error::Error + Send + Sync>>,
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
    target: Target,
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

/// Whether a request with directives `rd` may be answered by `e` at `now_ms` (fresh, or
/// stale within its `max-stale`).
fn usable(e: &Entry, rd: Option<&RequestDirectives>, now_ms: u64) -> bool {
    if e.is_marker() {
        return false;
    }
    match rd {
        None => matches!(e.freshness(now_ms), Freshness::Fresh { .. }),
        Some(rd) => policy::satisfies(rd, e.age_ms(now_ms), e.ttl_ms(), e.flags()),
    }
}

/// What a lookup found.
enum Looked {
    /// A usable entry, answered.
    Answered(Response<Body>, Entry),
    /// Nothing the request may use: where a fill stands.
    Unusable(Target),
}

/// Where a fill stands before it asks the upstream.
#[derive(Clone)]
pub(crate) struct Target {
    /// The request's key (route, params, query, identity, the route's `vary`).
    primary: CacheKey,
    /// The key a fill is coalesced under and a variant found at: `primary`, or the
    /// secondary key its Vary marker selects.
    key: CacheKey,
    /// The Vary marker stored at `primary`, if any.
    marker: Option<Entry>,
    /// The entry found that the request may not use as it is (stale, `no-cache`, or not
    /// fresh enough for the request): what a fill revalidates.
    stale: Option<Entry>,
}

impl Target {
    fn new(primary: CacheKey) -> Target {
        Target {
            primary,
            key: primary,
            marker: None,
            stale: None,
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
    storable: &policy::Storable,
    tags: Vec<String>,
    now_ms: u64,
) -> Entry {
    let mut headers = parts.headers;
    let initial_age = policy::initial_age(&route.config, &headers, now_ms);
    headers.remove(header::AGE);
    let http_date = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .and_then(policy::validate::http_date)
    };
    let last_modified = http_date(header::LAST_MODIFIED)
        .filter(|_| storable.flags & flags::LAST_MODIFIED != 0)
        .or_else(|| http_date(header::DATE))
        .unwrap_or(now_ms / 1000);
    stale::strip_fields(&route.config, &mut headers);
    if let Some(cc) = &route.config.cache_control {
        headers.insert(header::CACHE_CONTROL, cc.clone());
    }
    headers.insert(header::CONTENT_LENGTH, respond::number(body.len() as u64));
    let variant = if storable.vary.is_empty() {
        0
    } else {
        flags::VARIANT
    };
    let meta = Meta {
        status: parts.status,
        last_modified,
        stored_at_ms: now_ms,
        initial_age,
        ttl_ms: storable.ttl_ms,
        flags: storable.flags | variant,
        grace_ms: storable.grace_ms,
        swr_ms: storable.swr_ms,
    };
    // The entry copies what it keeps into one buffer of its own, so no slice of hyper's read
    // buffer stays alive (measured: 100,000 small entries once held ~690 MiB that way); it
    // adds a weak derived ETag if the upstream sent none.
    Entry::new(meta, &headers, &body, &tags, &path)
}

#[cfg(test)]
mod size_tests {
    /// What every answer and every step is moved as: no larger than before HTTP/2 and
    /// upgrades (rare variants are boxed), since a larger one turns inline moves on the hit
    /// path into `memcpy` calls (measured: +260 instructions per L1 hit).
    #[test]
    fn hot_types_stay_small() {
        assert!(std::mem::size_of::<crate::client::UpstreamBody>() <= 40);
        assert!(std::mem::size_of::<super::Body>() <= 72);
        assert!(std::mem::size_of::<super::Step>() <= 304);
    }
}
