//! `POST /admin/verify` (bearer token): do the cached entries still say what the backend says?
//! Seed 001's consistency check, for any route: the entries of a tag, of a route, or a sample
//! are fetched again from the upstream (never through the cache), at most `concurrency` at a
//! time, and compared by status and body. `"repair": true` replaces the drifted ones in every
//! tier (invalidated here, in L2 and on every pod, then fetched once through the proxy).
//!
//! Identity-scoped entries are counted, never fetched: there is no caller to fetch them as.
//! Verification reads the cache and asks the upstream; it never stores what it fetched itself.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Semaphore;

use super::{bad_request, json_response, Admin};
use crate::cache::{clock, Entry};
use crate::client::{Client, ClientConfig};
use crate::config::UpstreamConfig;
use crate::invalidate::{Source, Target};
use crate::proxy::body::Body;

/// Entries checked in one call unless `limit` says otherwise, and at most.
const DEFAULT_LIMIT: usize = 10_000;
const MAX_LIMIT: usize = 100_000;
/// Upstream requests in flight unless `concurrency` says otherwise, and at most.
const DEFAULT_CONCURRENCY: usize = 8;
const MAX_CONCURRENCY: usize = 64;
/// Entries listed one by one in the report (the counts are always complete).
const MAX_LISTED: usize = 1_000;
/// Largest upstream body read for a comparison.
const MAX_COMPARED_BODY: usize = 16 << 20;

/// `POST /admin/verify` body: exactly one of `tag`, `route`, `sample`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyRequest {
    tag: Option<String>,
    route: Option<String>,
    sample: Option<usize>,
    #[serde(default)]
    repair: bool,
    concurrency: Option<usize>,
    limit: Option<usize>,
}

/// What one entry's check found: the `result` label of `sidecache_verify_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Identical,
    Drifted,
    /// The upstream did not answer (or not completely): nothing is known.
    Failed,
    /// Identity-scoped: counted only.
    Identity,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Identical => "identical",
            Verdict::Drifted => "drifted",
            Verdict::Failed => "failed",
            Verdict::Identity => "identity",
        }
    }
}

/// Compares a cached entry with the upstream's answer now (pure).
pub fn compare(entry: &Entry, status: u16, body: &[u8]) -> Verdict {
    if entry.status().as_u16() == status && entry.body().as_ref() == body {
        Verdict::Identical
    } else {
        Verdict::Drifted
    }
}

struct Checked {
    url: String,
    verdict: Verdict,
    age_secs: u64,
    upstream_status: Option<u16>,
}

impl Admin {
    pub(super) async fn verify(&self, req: Request<Incoming>) -> Response<Body> {
        let ask: VerifyRequest = match self.authorized_json(req, "verify").await {
            Ok(v) => v,
            Err(refused) => return *refused,
        };
        let given = [ask.tag.is_some(), ask.route.is_some(), ask.sample.is_some()];
        if given.iter().filter(|g| **g).count() != 1 {
            return bad_request("give exactly one of `tag`, `route`, `sample`");
        }
        let limit = ask
            .sample
            .or(ask.limit)
            .unwrap_or(DEFAULT_LIMIT)
            .min(MAX_LIMIT);
        let concurrency = ask
            .concurrency
            .unwrap_or(DEFAULT_CONCURRENCY)
            .clamp(1, MAX_CONCURRENCY);
        let started = Instant::now();
        let entries = match self.entries_to_verify(&ask, limit).await {
            Ok(e) => e,
            Err(resp) => return resp,
        };
        let checked = check_all(&self.upstream, entries, concurrency).await;
        let mut counts = [0usize; 4];
        let mut drifted = Vec::new();
        let mut listed = Vec::new();
        for c in &checked {
            self.metrics.verified(c.verdict.as_str());
            counts[c.verdict as usize] += 1;
            if c.verdict == Verdict::Drifted {
                drifted.push(c.url.clone());
            }
            if c.verdict != Verdict::Identity && listed.len() < MAX_LISTED {
                listed.push(json!({
                    "url": c.url,
                    "result": c.verdict.as_str(),
                    "age_seconds": c.age_secs,
                    "upstream_status": c.upstream_status,
                }));
            }
        }
        let upstream_requests = checked
            .iter()
            .filter(|c| c.verdict != Verdict::Identity)
            .count();
        let mut report = json!({
            "checked": upstream_requests,
            "identical": counts[Verdict::Identical as usize],
            "drifted": counts[Verdict::Drifted as usize],
            "failed": counts[Verdict::Failed as usize],
            "identity_scoped": counts[Verdict::Identity as usize],
            "upstream_requests": upstream_requests,
            "concurrency": concurrency,
            "entries": listed,
        });
        if ask.repair && !drifted.is_empty() {
            report["repaired"] = json!(self.repair(&drifted, concurrency).await);
        }
        report["elapsed_ms"] = json!(started.elapsed().as_millis() as u64);
        json_response(StatusCode::OK, report)
    }

    /// The entries `ask` names, deduplicated: this pod's L1, and for a tag also L2's set.
    async fn entries_to_verify(
        &self,
        ask: &VerifyRequest,
        limit: usize,
    ) -> Result<Vec<Entry>, Response<Body>> {
        // Deduplicated by key: a tag's entry is often both in L1 here and in L2.
        let mut found = if let Some(tag) = &ask.tag {
            let mut e = self.l1.entries(limit, |e| e.tags().any(|t| t == tag));
            if let Some(l2) = self.invalidator.l2() {
                match l2.entries_of_tag(tag, limit).await {
                    Some(more) => e.extend(more),
                    None => tracing::warn!(%tag, "Verify: L2 did not answer; checking L1 only."),
                }
            }
            e
        } else if let Some(name) = &ask.route {
            let proxy = self.proxy.load();
            let router = proxy.router();
            if !router.routes().iter().any(|r| &r.config.name == name) {
                return Err(bad_request(&format!("no route is named `{name}`")));
            }
            self.l1.entries(limit, |e| {
                let path = e.path().split('?').next().unwrap_or_default();
                !path.is_empty()
                    && router
                        .find(&Method::GET, path)
                        .is_some_and(|m| &m.route.config.name == name)
            })
        } else {
            self.l1.entries(limit, |_| true)
        };
        let mut seen = HashSet::new();
        found.retain(|(k, _)| seen.insert(*k));
        found.truncate(limit);
        Ok(found.into_iter().map(|(_, e)| e).collect())
    }

    /// Drops `urls` everywhere (here, L2, other pods), then fetches each once through the
    /// proxy so every tier holds the backend's value again. Returns how many were fetched.
    async fn repair(&self, urls: &[String], concurrency: usize) -> usize {
        let mut target = Target::default();
        for url in urls {
            if let Ok(k) = self.invalidator.key_of(url) {
                target.keys.push(k);
            }
        }
        self.invalidator
            .invalidate(target, Source::Admin, false)
            .await;
        match self.invalidator.proxy_addr() {
            Some(addr) => crate::warmup::fetch_all(urls, concurrency, addr).await.0,
            None => 0,
        }
    }
}

/// Fetches every shared entry's URL from the upstream, `concurrency` at a time.
async fn check_all(
    upstream: &UpstreamConfig,
    entries: Vec<Entry>,
    concurrency: usize,
) -> Vec<Checked> {
    let authority = upstream
        .url
        .authority()
        .expect("validated upstream url has an authority");
    let host = HeaderValue::from_str(authority.as_str()).expect("authority is a header value");
    let client = Client::new(ClientConfig {
        host: authority.host().trim_matches(['[', ']']).to_string(),
        port: authority
            .port_u16()
            .unwrap_or(if upstream.tls.is_some() { 443 } else { 80 }),
        connect_timeout: upstream.connect_timeout,
        timeout: upstream.timeout,
        body_timeout: upstream.timeout,
        pool_max_idle: concurrency,
        pool_idle_timeout: Duration::from_secs(5),
        // Read to compare, never stored.
        fill_quiet: Duration::ZERO,
        // The upstream as the proxy reaches it: TLS and HTTP/2 when configured.
        tls: crate::proxy::forward::tls_client(upstream),
        http2: upstream.protocol.is_h2(),
    });
    let permits = Arc::new(Semaphore::new(concurrency));
    let now = clock::now_ms();
    let mut tasks = tokio::task::JoinSet::new();
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let age_secs = now.saturating_sub(entry.stored_at_ms()) / 1000 + entry.initial_age();
        if entry.path().is_empty() {
            out.push(Checked {
                url: String::new(),
                verdict: Verdict::Identity,
                age_secs,
                upstream_status: None,
            });
            continue;
        }
        let (client, permits, host) = (client.clone(), permits.clone(), host.clone());
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await.expect("semaphore open");
            let url = entry.path().to_string();
            let answer = fetch(&client, &url, host).await;
            let (verdict, upstream_status) = match answer {
                Some((status, body)) => (compare(&entry, status, &body), Some(status)),
                None => (Verdict::Failed, None),
            };
            Checked {
                url,
                verdict,
                age_secs,
                upstream_status,
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        if let Ok(c) = r {
            out.push(c);
        }
    }
    out
}

async fn fetch(client: &Client, url: &str, host: HeaderValue) -> Option<(u16, Bytes)> {
    let req = Request::get(url)
        .header(header::HOST, host)
        .body(Empty::<Bytes>::new())
        .ok()?;
    let resp = client.send(req).await.ok()?;
    let status = resp.status().as_u16();
    let body = Limited::new(resp.into_body(), MAX_COMPARED_BODY)
        .collect()
        .await
        .ok()?
        .to_bytes();
    Some((status, body))
}
