//! Serving stale (grace, stale-while-revalidate, stale-if-error) together with RFC 9111
//! validation and Vary: the background refresh is a conditional request whose 304 refreshes
//! the entry; each variant has its own stale copy; entries that must be revalidated are
//! never served stale, whatever the route's grace.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::*;

fn header<'a>(r: &'a Recorded, name: &str) -> Option<&'a str> {
    r.headers.get(name).map(|v| v.to_str().unwrap())
}

fn outcome(m: &str, cache: &str) -> f64 {
    metric(m, "sidecache_requests_total", &[("cache", cache)])
}

/// A catch-all route without `ttl` (freshness from the response), and `extra`.
fn all(extra: &str) -> String {
    format!("[[route]]\nname = \"all\"\nmatch = \"GET /{{*path}}\"\nscope = \"shared\"\n{extra}\n")
}

#[tokio::test]
async fn a_background_refresh_sends_the_stored_validators_and_a_304_refreshes_the_entry() {
    let origin = Origin::start(|r| {
        if header(r, "if-none-match") == Some("\"v1\"") {
            // The 304 gives a new, longer freshness: the refreshed entry is fresh after it.
            Reply::json("")
                .status(304)
                .header("etag", "\"v1\"")
                .header("cache-control", "max-age=600")
                .header("x-revalidated", "yes")
        } else {
            Reply::json("{\"v\":1}")
                .header("etag", "\"v1\"")
                .header("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT")
                .header("cache-control", "max-age=1, stale-while-revalidate=60")
                .header("x-revalidated", "no")
        }
    })
    .await;
    let sc = Sidecache::start(&origin, &all("")).await;
    assert!(sc
        .get("/doc")
        .await
        .header("cache-status")
        .contains("stored"));
    // Fresh hits until it expires; then the first read is answered stale at once.
    let mut stale = None;
    let seen = eventually(Duration::from_secs(10), async || {
        let r = sc.get("/doc").await;
        let hit = r
            .header("cache-status")
            .contains("detail=stale-while-revalidate");
        if hit {
            stale = Some(r);
        }
        hit
    })
    .await;
    assert!(seen, "never answered stale-while-revalidate");
    let stale = stale.unwrap();
    assert_eq!((stale.status, stale.text()), (200, "{\"v\":1}"));
    assert_eq!(stale.header("x-revalidated"), "no");
    // The refresh: one conditional request with the entry's own validators.
    assert!(
        eventually(Duration::from_secs(5), async || origin.requests().len()
            == 2)
        .await
    );
    let seen = origin.requests();
    assert_eq!(header(&seen[1], "if-none-match"), Some("\"v1\""));
    assert_eq!(
        header(&seen[1], "if-modified-since"),
        Some("Sun, 06 Nov 1994 08:49:37 GMT")
    );
    // Its 304 refreshed the entry: a fresh hit with the 304's fields merged.
    let refreshed = eventually(Duration::from_secs(5), async || {
        let r = sc.get("/doc").await;
        r.header("x-revalidated") == "yes"
            && r.header("cache-status").starts_with("sidecache; hit; ttl=")
    })
    .await;
    assert!(refreshed, "the 304 did not refresh the entry");
    let r = sc.get("/doc").await;
    assert_eq!(r.text(), "{\"v\":1}", "the stored body, kept");
    assert_eq!(
        origin.requests().len(),
        2,
        "no request beyond the one refresh"
    );
    let m = sc.metrics().await;
    assert!(outcome(&m, "stale") >= 1.0);
}

#[tokio::test]
async fn a_vary_route_with_grace_serves_each_variant_its_own_stale_copy() {
    let failing = Arc::new(AtomicBool::new(false));
    let down = failing.clone();
    let origin = Origin::start(move |r| {
        if down.load(Ordering::SeqCst) {
            return Reply::json("down").status(503);
        }
        let lang = header(r, "accept-language").unwrap_or("none").to_string();
        Reply::json(lang.clone())
            .header("vary", "Accept-Language")
            .header("etag", &format!("\"{lang}\""))
            .header("cache-control", "max-age=1")
    })
    .await;
    let sc = Sidecache::start(&origin, &all("grace = \"30s\"")).await;
    for lang in ["en", "fr"] {
        let r = sc.get_with("/page", &[("accept-language", lang)]).await;
        assert_eq!(r.text(), lang);
    }
    assert_eq!(origin.requests().len(), 2);
    failing.store(true, Ordering::SeqCst);
    // Each variant, once expired, is answered from its own stale copy while its refresh runs
    // (and fails): never the other's.
    for lang in ["en", "fr"] {
        let stale = eventually(Duration::from_secs(10), async || {
            let r = sc.get_with("/page", &[("accept-language", lang)]).await;
            assert_eq!((r.status, r.text()), (200, lang), "{r:?}");
            r.header("cache-status").contains("fwd=stale")
        })
        .await;
        assert!(stale, "{lang} never answered stale");
    }
    // A request that refuses stale before the refresh waits for it; the upstream fails, and
    // it gets its own variant stale-if-error.
    for lang in ["fr", "en"] {
        let r = sc
            .get_with(
                "/page",
                &[("accept-language", lang), ("cache-control", "no-cache")],
            )
            .await;
        assert_eq!((r.status, r.text()), (200, lang), "{r:?}");
        assert!(
            r.header("cache-status")
                .contains("fwd-status=503; detail=stale-if-error"),
            "{r:?}"
        );
    }
    // A variant never stored has no stale copy: the origin's error.
    let r = sc.get_with("/page", &[("accept-language", "de")]).await;
    assert_eq!((r.status, r.text()), (503, "down"), "{r:?}");
    let m = sc.metrics().await;
    assert_eq!(outcome(&m, "stale_error"), 2.0);
}

#[tokio::test]
async fn must_revalidate_and_no_cache_entries_are_never_served_stale_even_with_route_grace() {
    let failing = Arc::new(AtomicBool::new(false));
    let down = failing.clone();
    let origin = Origin::start(move |r| {
        if down.load(Ordering::SeqCst) {
            return Reply::json("down").status(503);
        }
        let cc = match r.uri.as_str() {
            "/mr" => "max-age=1, must-revalidate, stale-if-error=60",
            "/pr" => "max-age=1, proxy-revalidate",
            "/sm" => "s-maxage=1, stale-while-revalidate=60",
            _ => "no-cache, stale-if-error=60",
        };
        Reply::json("v1")
            .header("etag", "\"v1\"")
            .header("cache-control", cc)
    })
    .await;
    let sc = Sidecache::start(&origin, &all("grace = \"30s\"")).await;
    let paths = ["/mr", "/pr", "/sm", "/nc"];
    for p in paths {
        assert!(
            sc.get(p).await.header("cache-status").contains("stored"),
            "{p}"
        );
    }
    failing.store(true, Ordering::SeqCst);
    for p in paths {
        // Hits while fresh (no-cache: never), then the origin's answer: never the entry.
        let failed = eventually(Duration::from_secs(10), async || {
            let r = sc.get(p).await;
            assert!(
                !r.header("cache-status").contains("fwd=stale; "),
                "{p}: {r:?}"
            );
            if r.status == 200 {
                assert!(
                    r.header("cache-status").starts_with("sidecache; hit; ttl="),
                    "{p}: {r:?}"
                );
                return false;
            }
            assert_eq!((r.status, r.text()), (503, "down"), "{p}: {r:?}");
            true
        })
        .await;
        assert!(failed, "{p} was served from the cache past its freshness");
    }
    let m = sc.metrics().await;
    assert_eq!(outcome(&m, "stale") + outcome(&m, "stale_error"), 0.0);
}

#[tokio::test]
async fn a_pod_that_finds_a_stale_variant_only_in_redis_serves_that_variant() {
    let redis = support::redis::RedisServer::start();
    let failing = Arc::new(AtomicBool::new(false));
    let down = failing.clone();
    let origin = Origin::start(move |r| {
        if down.load(Ordering::SeqCst) {
            return Reply::json("down").status(503);
        }
        let lang = header(r, "accept-language").unwrap_or("none").to_string();
        Reply::json(lang.clone())
            .header("vary", "Accept-Language")
            .header("etag", &format!("\"{lang}\""))
            .header("cache-control", "max-age=1")
    })
    .await;
    let extra = format!("{}{}", l2_standalone(&redis.url()), all("grace = \"30s\""));
    let a = Sidecache::start(&origin, &extra).await;
    let b = Sidecache::start(&origin, &extra).await;
    // `en` last: once it is stale, so is `fr`.
    for lang in ["fr", "en"] {
        let r = a.get_with("/page", &[("accept-language", lang)]).await;
        assert_eq!(r.text(), lang);
    }
    failing.store(true, Ordering::SeqCst);
    let stale = eventually(Duration::from_secs(10), async || {
        let r = a.get_with("/page", &[("accept-language", "en")]).await;
        r.header("cache-status").contains("fwd=stale")
    })
    .await;
    assert!(stale);
    // Pod b has nothing in L1: the marker and each variant come from Redis, in their grace.
    for lang in ["fr", "en"] {
        let r = b.get_with("/page", &[("accept-language", lang)]).await;
        assert_eq!((r.status, r.text()), (200, lang), "{r:?}");
        assert!(r.header("cache-status").contains("fwd=stale"), "{r:?}");
    }
    let r = b.get_with("/page", &[("accept-language", "de")]).await;
    assert_eq!((r.status, r.text()), (503, "down"), "{r:?}");
}

#[tokio::test]
async fn a_soft_purged_entry_is_revalidated_and_a_304_clears_the_mark() {
    let origin = Origin::start(|r| {
        let reply = if header(r, "if-none-match") == Some("\"v1\"") {
            Reply::json("").status(304).header("x-revalidated", "yes")
        } else {
            Reply::json("v1").header("x-revalidated", "no")
        };
        reply
            .header("etag", "\"v1\"")
            .header("cache-control", "max-age=600")
    })
    .await;
    let dir = std::env::temp_dir().join(format!("sidecache-stale9111-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token = dir.join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let extra = format!(
        "[admin]\ntoken_file = \"{}\"\n{}",
        token.display(),
        all("grace = \"30s\"")
    );
    let sc = Sidecache::start(&origin, &extra).await;
    assert_eq!(sc.get("/doc").await.text(), "v1");
    let r = send(
        &client(),
        sc.admin,
        http::Method::POST,
        "/admin/purge",
        &[
            ("content-type", "application/json"),
            ("authorization", "Bearer s3cret"),
        ],
        r#"{"keys":["/doc"],"soft":true}"#.to_string().into(),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = sc.get("/doc").await;
    assert_eq!(r.text(), "v1");
    assert!(
        r.header("cache-status").contains("detail=soft-purged"),
        "{r:?}"
    );
    // Its refresh asks with the entry's validator; the 304 makes it fresh and unmarked.
    let refreshed = eventually(Duration::from_secs(5), async || {
        let r = sc.get("/doc").await;
        r.header("x-revalidated") == "yes"
            && r.header("cache-status").starts_with("sidecache; hit; ttl=")
    })
    .await;
    assert!(refreshed);
    let seen = origin.requests();
    assert_eq!(seen.len(), 2, "one fill, one refresh");
    assert_eq!(header(&seen[1], "if-none-match"), Some("\"v1\""));
    let explain = sc.admin_get("/admin/cache/explain?url=/doc").await;
    let v: serde_json::Value = serde_json::from_slice(&explain.body).unwrap();
    assert_eq!(v["l1"]["soft_purged"], serde_json::json!(false), "{v}");
    assert_eq!(v["l1"]["state"], serde_json::json!("fresh"), "{v}");
}
