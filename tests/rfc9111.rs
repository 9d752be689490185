//! RFC 9111 end to end, against a scripted counting origin that checks the conditional
//! headers it receives: freshness from the response alone, validation (304 merge, `no-cache`,
//! client conditionals, weak ETags, HEAD freshening), Vary variants, Authorization (§3.5),
//! request directives, `Age` parsing; in L1 and through L2 (real Redis).

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::Method;
use support::redis::RedisServer;
use support::*;

/// The catch-all route of `config/rfc9111.toml` (no ttl), with an explicit scope.
const ALL: &str = r#"
[[route]]
name = "all"
match = "GET /{*path}"
scope = "shared"
"#;

fn header<'a>(r: &'a Recorded, name: &str) -> Option<&'a str> {
    r.headers.get(name).map(|v| v.to_str().unwrap())
}

fn outcome(m: &str, cache: &str) -> f64 {
    metric(m, "sidecache_requests_total", &[("cache", cache)])
}

/// An origin whose representation is `"v1"` (ETag and Last-Modified) and stale at once:
/// it answers a matching `If-None-Match` with a 304 carrying an updated field.
fn validating_origin(cache_control: &'static str) -> impl Fn(&Recorded) -> Reply {
    move |r| {
        if header(r, "if-none-match") == Some("\"v1\"") {
            Reply::json("")
                .status(304)
                .header("etag", "\"v1\"")
                .header("cache-control", cache_control)
                .header("x-revalidated", "yes")
        } else {
            Reply::json("{\"v\":1}")
                .header("etag", "\"v1\"")
                .header("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT")
                .header("cache-control", cache_control)
                .header("x-revalidated", "no")
        }
    }
}

#[tokio::test]
async fn a_stale_entry_is_revalidated_with_its_validators_and_a_304_refreshes_it() {
    let origin = Origin::start(validating_origin("max-age=0")).await;
    let sc = Sidecache::start(&origin, ALL).await;
    let first = sc.get("/doc").await;
    assert_eq!(first.text(), "{\"v\":1}");
    assert!(first.header("cache-status").contains("stored"), "{first:?}");
    let second = sc.get("/doc").await;
    assert_eq!(second.status, 200);
    assert_eq!(second.text(), "{\"v\":1}", "the stored body, refreshed");
    assert_eq!(
        second.header("x-revalidated"),
        "yes",
        "the 304's fields merged"
    );
    assert_eq!(second.header("etag"), "\"v1\"");
    assert!(
        second
            .header("cache-status")
            .contains("fwd=stale; fwd-status=304"),
        "{second:?}"
    );
    let seen = origin.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(header(&seen[0], "if-none-match"), None);
    assert_eq!(header(&seen[1], "if-none-match"), Some("\"v1\""));
    assert_eq!(
        header(&seen[1], "if-modified-since"),
        Some("Sun, 06 Nov 1994 08:49:37 GMT")
    );
    assert_eq!(outcome(&sc.metrics().await, "revalidated"), 1.0);
}

#[tokio::test]
async fn no_cache_is_stored_but_revalidated_on_every_use() {
    let origin = Origin::start(validating_origin("no-cache")).await;
    let sc = Sidecache::start(&origin, ALL).await;
    for _ in 0..3 {
        assert_eq!(sc.get("/doc").await.text(), "{\"v\":1}");
    }
    let seen = origin.requests();
    assert_eq!(seen.len(), 3, "every use asks the origin");
    assert!(seen[1..]
        .iter()
        .all(|r| header(r, "if-none-match") == Some("\"v1\"")));
    assert_eq!(outcome(&sc.metrics().await, "revalidated"), 2.0);
}

#[tokio::test]
async fn client_conditionals_are_answered_from_the_entry_fresh_or_revalidated() {
    let origin = Origin::start(validating_origin("max-age=0")).await;
    let sc = Sidecache::start(&origin, ALL).await;
    sc.get("/doc").await;
    // Stale: revalidated with the entry's validator, then the client's evaluated.
    let r = sc.get_with("/doc", &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(r.status, 304, "{r:?}");
    let r = sc.get_with("/doc", &[("if-none-match", "\"other\"")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "{\"v\":1}");
    let seen = origin.requests();
    assert_eq!(seen.len(), 3);
    // The client's own validators never reach the origin on a fill.
    assert!(seen
        .iter()
        .all(|r| header(r, "if-none-match") != Some("\"other\"")));
}

#[tokio::test]
async fn the_origins_weak_etag_is_kept_and_compared_weakly() {
    let origin = Origin::start(|_| {
        Reply::json("{}")
            .header("etag", "W/\"w1\"")
            .header("cache-control", "max-age=600")
    })
    .await;
    let sc = Sidecache::start(&origin, ALL).await;
    assert_eq!(sc.get("/w").await.header("etag"), "W/\"w1\"");
    for inm in ["W/\"w1\"", "\"w1\"", "\"x\", W/\"w1\""] {
        let r = sc.get_with("/w", &[("if-none-match", inm)]).await;
        assert_eq!(r.status, 304, "{inm}");
        assert_eq!(r.header("etag"), "W/\"w1\"");
    }
    assert_eq!(origin.hits(), 1);
}

#[tokio::test]
async fn freshness_comes_from_expires_or_the_heuristic_without_a_route_ttl() {
    let origin = Origin::start(|r| {
        let now = httpdate::fmt_http_date(std::time::SystemTime::now());
        let later = httpdate::fmt_http_date(
            std::time::SystemTime::now() + std::time::Duration::from_secs(600),
        );
        match r.uri.as_str() {
            "/expires" => Reply::json("e")
                .header("date", &now)
                .header("expires", &later),
            "/expired" => Reply::json("x").header("date", &now).header("expires", "0"),
            "/heuristic" => Reply::json("h")
                .header("date", &now)
                .header("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
            "/nothing" => Reply::json("n"),
            "/gone" => Reply::json("g")
                .status(410)
                .header("cache-control", "max-age=60"),
            "/teapot" => Reply::json("t")
                .status(418)
                .header("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
            "/error" => Reply::json("5")
                .status(503)
                .header("cache-control", "max-age=60"),
            _ => Reply::json("?").status(404),
        }
    })
    .await;
    let sc = Sidecache::start(&origin, ALL).await;
    let hits_for = async |path: &str| {
        let before = origin.hits();
        sc.get(path).await;
        sc.get(path).await;
        origin.hits() - before
    };
    assert_eq!(hits_for("/expires").await, 1, "Expires - Date");
    assert_eq!(hits_for("/expired").await, 2, "an invalid Expires is stale");
    assert_eq!(
        hits_for("/heuristic").await,
        1,
        "10% of Date - Last-Modified"
    );
    assert_eq!(hits_for("/nothing").await, 2, "no freshness, no validator");
    assert_eq!(hits_for("/gone").await, 1, "410 with explicit freshness");
    assert_eq!(hits_for("/error").await, 1, "503 with explicit freshness");
    assert_eq!(
        hits_for("/teapot").await,
        2,
        "418 is not heuristically cacheable"
    );
    let r = sc.get("/gone").await;
    assert_eq!((r.status, r.text()), (410, "g"));
}

#[tokio::test]
async fn an_age_list_counts_by_its_first_member_and_junk_is_ignored() {
    let origin = Origin::start(|r| {
        let age = match r.uri.as_str() {
            "/old-first" => "7200, 0",
            "/young-first" => "0, 7200",
            "/huge" => "2147483648",
            _ => "abc",
        };
        Reply::json("a")
            .header("cache-control", "max-age=3600")
            .header("age", age)
    })
    .await;
    let sc = Sidecache::start(&origin, ALL).await;
    for (path, stored) in [
        ("/old-first", false),
        ("/young-first", true),
        ("/huge", false),
        ("/junk", true),
    ] {
        sc.get(path).await;
        let before = origin.hits();
        let r = sc.get(path).await;
        assert_eq!(origin.hits() == before, stored, "{path}: {r:?}");
    }
}

#[tokio::test]
async fn vary_stores_one_variant_per_normalised_value() {
    let origin = Origin::start(|r| {
        let lang = header(r, "accept-language").unwrap_or("none").to_string();
        Reply::json(lang)
            .header("vary", "Accept-Language")
            .header("cache-control", "max-age=600")
    })
    .await;
    let sc = Sidecache::start(&origin, ALL).await;
    let get = async |lang: Option<&str>| {
        let headers: Vec<(&str, &str)> = lang.map(|l| ("accept-language", l)).into_iter().collect();
        sc.get_with("/v", &headers).await.text().to_string()
    };
    assert_eq!(get(Some("en")).await, "en");
    assert_eq!(get(Some("fr")).await, "fr");
    assert_eq!(get(None).await, "none");
    assert_eq!(origin.hits(), 3);
    // Hits: case and whitespace do not make another variant.
    assert_eq!(get(Some("en")).await, "en");
    assert_eq!(get(Some("EN ")).await, "en");
    assert_eq!(get(Some("fr")).await, "fr");
    assert_eq!(get(None).await, "none");
    assert_eq!(origin.hits(), 3);
}

#[tokio::test]
async fn vary_star_is_never_stored_and_variants_are_capped() {
    let origin = Origin::start(|r| {
        let vary = if r.uri == "/star" { "*" } else { "x-v" };
        Reply::json(header(r, "x-v").unwrap_or("-").to_string())
            .header("vary", vary)
            .header("cache-control", "max-age=600")
    })
    .await;
    let extra = format!("{ALL}max_variants = 2\n");
    let sc = Sidecache::start(&origin, &extra).await;
    sc.get("/star").await;
    let r = sc.get("/star").await;
    assert!(r.header("cache-status").contains("detail=vary"), "{r:?}");
    assert_eq!(origin.hits(), 2);
    for v in ["1", "2", "1", "2"] {
        assert_eq!(sc.get_with("/capped", &[("x-v", v)]).await.text(), v);
    }
    assert_eq!(origin.hits(), 2 + 2, "two variants stored");
    // A third starts a new generation: it is kept, the first two are dropped.
    for v in ["3", "3"] {
        assert_eq!(sc.get_with("/capped", &[("x-v", v)]).await.text(), v);
    }
    assert_eq!(origin.hits(), 5);
    assert_eq!(sc.get_with("/capped", &[("x-v", "1")]).await.text(), "1");
    assert_eq!(origin.hits(), 6);
}

#[tokio::test]
async fn an_invalidation_by_tag_reaches_every_variant() {
    let origin = Origin::start(|r| {
        let n = header(r, "x-n").unwrap_or("-").to_string();
        Reply::json(format!("{n}@{}", r.uri))
            .header("vary", "x-n")
            .header("cache-control", "max-age=600")
    })
    .await;
    let extra = r#"
[[route]]
name = "items"
match = "GET /items/{id}"
scope = "shared"
tags = ["item:{id}"]
[[invalidate]]
match = "PUT /items/{id}"
tags = ["item:{id}"]
"#;
    let sc = Sidecache::start(&origin, extra).await;
    for n in ["a", "b"] {
        sc.get_with("/items/1", &[("x-n", n)]).await;
    }
    assert_eq!(origin.hits(), 2);
    sc.request(Method::PUT, "/items/1", &[], "x").await;
    assert_eq!(origin.hits(), 3);
    for n in ["a", "b"] {
        let r = sc.get_with("/items/1", &[("x-n", n)]).await;
        assert!(r.header("cache-status").contains("fwd=miss"), "{n}: {r:?}");
    }
    assert_eq!(origin.hits(), 5);
}

#[tokio::test]
async fn authorization_is_stored_only_on_the_origins_word_without_an_explicit_scope() {
    let origin = Origin::start(|r| {
        let cc = if r.uri == "/public" {
            "public, max-age=600"
        } else {
            "max-age=600"
        };
        Reply::json(header(r, "authorization").unwrap_or("-").to_string())
            .header("cache-control", cc)
    })
    .await;
    let implicit = r#"
[[route]]
name = "all"
match = "GET /{*path}"
"#;
    let sc = Sidecache::start(&origin, implicit).await;
    let a = sc
        .get_with("/private", &[("authorization", "Bearer a")])
        .await;
    let b = sc
        .get_with("/private", &[("authorization", "Bearer b")])
        .await;
    assert_eq!((a.text(), b.text()), ("Bearer a", "Bearer b"));
    assert!(
        a.header("cache-status").contains("detail=authorization"),
        "{a:?}"
    );
    assert_eq!(origin.hits(), 2);
    sc.get_with("/public", &[("authorization", "Bearer a")])
        .await;
    sc.get_with("/public", &[("authorization", "Bearer b")])
        .await;
    assert_eq!(origin.hits(), 3, "public: stored and shared");
}

#[tokio::test]
async fn request_directives_are_honoured_on_a_catch_all_route() {
    let origin = Origin::start(validating_origin("max-age=600")).await;
    let sc = Sidecache::start(&origin, ALL).await;
    let r = sc
        .get_with("/doc", &[("cache-control", "only-if-cached")])
        .await;
    assert_eq!(r.status, 504);
    assert_eq!(origin.hits(), 0);
    sc.get("/doc").await;
    assert_eq!(origin.hits(), 1);
    let r = sc
        .get_with("/doc", &[("cache-control", "only-if-cached")])
        .await;
    assert_eq!(r.status, 200);
    // no-cache, or more freshness than there is: revalidated with the stored validators.
    // (`max-age=N` accepts an age of up to N seconds, 0 included: see the policy's tests.)
    for cc in ["no-cache", "min-fresh=100000"] {
        let r = sc.get_with("/doc", &[("cache-control", cc)]).await;
        assert_eq!(r.status, 200, "{cc}");
        assert_eq!(r.header("x-revalidated"), "yes", "{cc}");
    }
    assert_eq!(origin.hits(), 3);
    assert!(origin.requests()[1..]
        .iter()
        .all(|r| header(r, "if-none-match") == Some("\"v1\"")));
    // A plain request is a hit again.
    sc.get("/doc").await;
    assert_eq!(origin.hits(), 3);
    // no-store: the answer is not stored.
    let r = sc
        .get_with("/fresh", &[("cache-control", "no-store")])
        .await;
    assert!(
        r.header("cache-status").contains("detail=no_store"),
        "{r:?}"
    );
    sc.get("/fresh").await;
    assert_eq!(origin.hits(), 5);
}

#[tokio::test]
async fn max_stale_serves_a_stale_entry_unless_it_must_be_revalidated() {
    let origin = Origin::start(|r| {
        let cc = if r.uri == "/strict" {
            "max-age=0, must-revalidate"
        } else {
            "max-age=0"
        };
        Reply::json("s")
            .header("cache-control", cc)
            .header("etag", "\"s\"")
    })
    .await;
    let sc = Sidecache::start(&origin, ALL).await;
    sc.get("/loose").await;
    let r = sc
        .get_with("/loose", &[("cache-control", "max-stale")])
        .await;
    assert!(
        r.header("cache-status").contains("detail=max-stale"),
        "{r:?}"
    );
    assert_eq!(origin.hits(), 1);
    sc.get("/strict").await;
    sc.get_with("/strict", &[("cache-control", "max-stale")])
        .await;
    assert_eq!(origin.hits(), 3);
}

#[tokio::test]
async fn a_routes_request_directives_are_ignored_unless_it_honours_them() {
    let origin = Origin::start(|_| Reply::json("x")).await;
    let sc = Sidecache::start(&origin, ROUTE_GROUP).await;
    sc.get("/api/groups/VIP/EURUSD").await;
    let r = sc
        .get_with("/api/groups/VIP/EURUSD", &[("cache-control", "no-cache")])
        .await;
    assert!(r.header("cache-status").contains("hit"), "{r:?}");
    assert_eq!(origin.hits(), 1);
}

#[tokio::test]
async fn a_head_answer_freshens_the_stored_response() {
    let origin = Origin::start(|r| {
        let reply = Reply::json("{\"v\":1}").header("etag", "\"v1\"").header(
            "cache-control",
            if r.method == Method::HEAD {
                "max-age=600"
            } else {
                "max-age=0"
            },
        );
        if r.method == Method::HEAD {
            reply.header("x-head", "1")
        } else {
            reply
        }
    })
    .await;
    let sc = Sidecache::start(&origin, ALL).await;
    sc.get("/h").await;
    let r = sc.request(Method::HEAD, "/h", &[], "").await;
    assert_eq!(r.status, 200);
    let r = sc.get("/h").await;
    assert_eq!(r.header("x-head"), "1", "{r:?}");
    assert!(r.header("cache-status").contains("hit"), "{r:?}");
    assert_eq!(origin.hits(), 2);
}

#[tokio::test]
async fn concurrent_revalidations_are_coalesced_into_one_conditional_request() {
    let conditional = Arc::new(AtomicUsize::new(0));
    let seen = conditional.clone();
    let origin = Origin::start(move |r| {
        if header(r, "if-none-match").is_some() {
            seen.fetch_add(1, Ordering::SeqCst);
        }
        validating_origin("max-age=0")(r).delay(std::time::Duration::from_millis(100))
    })
    .await;
    let sc = Arc::new(Sidecache::start(&origin, ALL).await);
    sc.get("/doc").await;
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let sc = sc.clone();
            tokio::spawn(async move { sc.get("/doc").await })
        })
        .collect();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.text(), "{\"v\":1}");
    }
    // One leader revalidates at a time; its waiters are served the refreshed entry.
    assert!(
        conditional.load(Ordering::SeqCst) < 8,
        "{}",
        conditional.load(Ordering::SeqCst)
    );
}

#[tokio::test]
async fn l2_revalidation_and_variants_across_two_pods() {
    let redis = RedisServer::start();
    let origin = Origin::start(|r| {
        if r.uri == "/doc" {
            return validating_origin("max-age=0")(r);
        }
        let lang = header(r, "accept-language").unwrap_or("none").to_string();
        Reply::json(lang)
            .header("vary", "Accept-Language")
            .header("cache-control", "max-age=600")
    })
    .await;
    let extra = format!("{}{ALL}", l2_standalone(&redis.url()));
    let a = Sidecache::start(&origin, &extra).await;
    let b = Sidecache::start(&origin, &extra).await;
    // A stale entry A stored is revalidated by B from L2: a conditional request, a 304.
    a.get("/doc").await;
    let r = b.get("/doc").await;
    assert_eq!(r.text(), "{\"v\":1}");
    assert_eq!(r.header("x-revalidated"), "yes", "{r:?}");
    assert_eq!(
        header(&origin.requests()[1], "if-none-match"),
        Some("\"v1\"")
    );
    // Variants A stored are found by B through the marker in L2.
    assert_eq!(
        a.get_with("/v", &[("accept-language", "en")]).await.text(),
        "en"
    );
    assert_eq!(
        a.get_with("/v", &[("accept-language", "fr")]).await.text(),
        "fr"
    );
    let hits = origin.hits();
    let r = b.get_with("/v", &[("accept-language", "fr")]).await;
    assert_eq!(r.text(), "fr");
    assert!(r.header("cache-status").contains("detail=l2"), "{r:?}");
    let r = b.get_with("/v", &[("accept-language", "En")]).await;
    assert_eq!(r.text(), "en");
    assert_eq!(origin.hits(), hits);
}

#[tokio::test]
async fn a_hostile_304_never_updates_or_serves_what_it_does_not_describe() {
    let origin = Origin::start(|r| match (r.uri.as_str(), header(r, "if-none-match")) {
        // A 304 naming another representation than the one asked about.
        ("/other", Some(_)) => Reply::json("").status(304).header("etag", "\"v2\""),
        ("/other", None) => Reply::json("body1")
            .header("etag", "\"v1\"")
            .header("cache-control", "max-age=0"),
        // A 304 to a request that asked nothing conditional.
        ("/unasked", _) => Reply::json("")
            .status(304)
            .header("cache-control", "max-age=600"),
        _ => Reply::json("?").status(404),
    })
    .await;
    let sc = Sidecache::start(&origin, ALL).await;
    assert_eq!(sc.get("/other").await.text(), "body1");
    let r = sc.get("/other").await;
    assert_eq!(r.status, 502, "{r:?}");
    assert!(
        r.header("cache-status").contains("upstream_protocol"),
        "{r:?}"
    );
    // What was held is gone: the next fill asks unconditionally.
    assert_eq!(sc.get("/other").await.text(), "body1");
    let seen = origin.requests();
    assert_eq!(header(&seen[1], "if-none-match"), Some("\"v1\""));
    assert_eq!(header(&seen[2], "if-none-match"), None);

    let r = sc.get("/unasked").await;
    assert_eq!(r.status, 304);
    assert!(r.header("cache-status").contains("detail=status"), "{r:?}");
    sc.get("/unasked").await;
    assert_eq!(origin.hits(), 5, "a stray 304 is never stored");
}

#[tokio::test]
async fn an_old_date_ages_the_response_on_arrival() {
    let origin = Origin::start(|_| {
        let hour_ago = httpdate::fmt_http_date(
            std::time::SystemTime::now() - std::time::Duration::from_secs(3600),
        );
        Reply::json("d")
            .header("date", &hour_ago)
            .header("cache-control", "max-age=600")
    })
    .await;
    let sc = Sidecache::start(&origin, ALL).await;
    sc.get("/dated").await;
    sc.get("/dated").await;
    assert_eq!(
        origin.hits(),
        2,
        "an hour old with ten minutes of freshness: stale"
    );
}

#[tokio::test]
async fn concurrent_callers_each_get_their_own_identity_and_variant() {
    let origin = Origin::start(|r| {
        let who = header(r, "authorization").unwrap_or("-");
        let lang = header(r, "accept-language").unwrap_or("-");
        Reply::json(format!("{who}|{lang}"))
            .header("vary", "Accept-Language")
            .header("cache-control", "max-age=600")
            .delay(std::time::Duration::from_millis(5))
    })
    .await;
    let extra = r#"
[[route]]
name = "mine"
match = "GET /me/{*rest}"
scope = "identity"
"#;
    let sc = Arc::new(Sidecache::start(&origin, extra).await);
    let tasks: Vec<_> = (0..60)
        .map(|i| {
            let sc = sc.clone();
            tokio::spawn(async move {
                let who = format!("Bearer u{}", i % 5);
                let lang = ["en", "fr", "de"][i % 3];
                let r = sc
                    .get_with(
                        "/me/profile",
                        &[("authorization", &who), ("accept-language", lang)],
                    )
                    .await;
                assert_eq!(r.text(), format!("{who}|{lang}"), "{r:?}");
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    // 15 identity x language pairs, each fetched at least once and served its own after.
    assert!(origin.hits() >= 15);
    for i in 0..15 {
        let who = format!("Bearer u{}", i % 5);
        let lang = ["en", "fr", "de"][i % 3];
        let r = sc
            .get_with(
                "/me/profile",
                &[("authorization", &who), ("accept-language", lang)],
            )
            .await;
        assert_eq!(r.text(), format!("{who}|{lang}"));
    }
}
