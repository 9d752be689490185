//! The foundation's behaviour end to end: a real origin on port 0, sidecache on port 0,
//! a real client.

mod support;

use std::time::Duration;

use http::Method;
use support::*;

const RECORD: &str = r#"{"group":"VIP","symbol":"EURUSD","spread":1.2,"swap_long":-0.5}"#;

#[tokio::test]
async fn miss_then_hit_touches_the_upstream_once() {
    let origin = Origin::start(|_| Reply::json(RECORD)).await;
    let sc = Sidecache::start(&origin, ROUTE_GROUP).await;

    let first = sc.get("/api/groups/VIP/EURUSD").await;
    assert_eq!(first.status, 200);
    assert_eq!(first.text(), RECORD);
    assert!(
        first.header("cache-status").contains("fwd=miss"),
        "{first:?}"
    );
    assert!(first.header("cache-status").contains("stored"));

    let second = sc.get("/api/groups/VIP/EURUSD").await;
    assert_eq!(second.status, 200);
    assert_eq!(second.text(), RECORD);
    assert!(
        second.header("cache-status").starts_with("sidecache; hit"),
        "{second:?}"
    );
    assert!(second.header("age").parse::<u64>().is_ok());
    assert_eq!(second.header("etag"), first.header("etag"));
    assert!(second.header("etag").starts_with('"'));
    assert_eq!(second.header("content-length"), RECORD.len().to_string());
    assert_eq!(origin.hits(), 1);

    // A different symbol is a different key.
    sc.get("/api/groups/VIP/GBPUSD").await;
    assert_eq!(origin.hits(), 2);

    let m = sc.metrics().await;
    assert_eq!(
        metric(
            &m,
            "sidecache_requests_total",
            &[("route", "group"), ("cache", "hit")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "sidecache_requests_total",
            &[("route", "group"), ("cache", "miss")]
        ),
        2.0
    );
    assert_eq!(metric(&m, "sidecache_l1_entries", &[]), 2.0);
    assert!(metric(&m, "sidecache_l1_bytes", &[]) > 2.0 * RECORD.len() as f64);
}

#[tokio::test]
async fn head_is_served_from_the_get_entry() {
    let origin = Origin::start(|_| Reply::json(RECORD)).await;
    let sc = Sidecache::start(&origin, ROUTE_GROUP).await;
    sc.get("/api/groups/VIP/EURUSD").await;
    let head = sc
        .request(Method::HEAD, "/api/groups/VIP/EURUSD", &[], "")
        .await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(head.header("content-length"), RECORD.len().to_string());
    assert!(head.header("cache-status").contains("hit"));
    assert_eq!(origin.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_are_coalesced_into_one_upstream_request() {
    let origin = Origin::start(|_| Reply::json(RECORD).delay(Duration::from_millis(300))).await;
    let sc = std::sync::Arc::new(Sidecache::start(&origin, ROUTE_GROUP).await);
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let sc = sc.clone();
            tokio::spawn(async move { sc.get("/api/groups/VIP/EURUSD").await })
        })
        .collect();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), RECORD);
    }
    assert_eq!(origin.hits(), 1);
    let m = sc.metrics().await;
    assert!(metric(&m, "sidecache_coalesced_waits_total", &[("route", "group")]) >= 1.0);
}

#[tokio::test]
async fn etag_and_last_modified_give_304_without_the_upstream() {
    let origin = Origin::start(|_| {
        Reply::json(RECORD).header("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT")
    })
    .await;
    let sc = Sidecache::start(&origin, ROUTE_GROUP).await;
    let first = sc.get("/api/groups/VIP/EURUSD").await;
    let etag = first.header("etag").to_string();

    let r = sc
        .get_with("/api/groups/VIP/EURUSD", &[("if-none-match", &etag)])
        .await;
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    assert_eq!(r.header("etag"), etag);
    assert!(r.header("cache-status").contains("hit"));

    let r = sc
        .get_with("/api/groups/VIP/EURUSD", &[("if-none-match", "\"other\"")])
        .await;
    assert_eq!(r.status, 200);

    let r = sc
        .get_with(
            "/api/groups/VIP/EURUSD",
            &[("if-modified-since", "Mon, 07 Nov 1994 08:49:37 GMT")],
        )
        .await;
    assert_eq!(r.status, 304);
    let r = sc
        .get_with(
            "/api/groups/VIP/EURUSD",
            &[("if-modified-since", "Sat, 05 Nov 1994 08:49:37 GMT")],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(origin.hits(), 1);
}

#[tokio::test]
async fn a_conditional_miss_fills_the_cache_and_answers_304() {
    let origin = Origin::start(|_| Reply::json(RECORD).header("etag", "\"v1\"")).await;
    let sc = Sidecache::start(&origin, ROUTE_GROUP).await;
    let r = sc
        .get_with("/api/groups/VIP/EURUSD", &[("if-none-match", "\"v1\"")])
        .await;
    assert_eq!(r.status, 304);
    // The fill asked for the full response: the conditional stayed with sidecache.
    assert!(origin.requests()[0].headers.get("if-none-match").is_none());
    let r = sc.get("/api/groups/VIP/EURUSD").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("etag"), "\"v1\"");
    assert_eq!(origin.hits(), 1);
}

#[tokio::test]
async fn responses_that_must_not_be_shared_are_not_stored() {
    let origin = Origin::start(|req| {
        let r = Reply::json(RECORD);
        match req.uri.rsplit('/').next().unwrap() {
            "cookie" => r.header("set-cookie", "session=abc"),
            "nostore" => r.header("cache-control", "no-store"),
            "private" => r.header("cache-control", "private, max-age=60"),
            "error" => r.status(500),
            _ => r,
        }
    })
    .await;
    let sc = Sidecache::start(&origin, ROUTE_GROUP).await;
    for (path, reason) in [
        ("/api/groups/VIP/cookie", "set_cookie"),
        ("/api/groups/VIP/nostore", "no_store"),
        ("/api/groups/VIP/private", "private"),
        ("/api/groups/VIP/error", "status"),
    ] {
        let before = origin.hits();
        let a = sc.get(path).await;
        let b = sc.get(path).await;
        assert_eq!(
            origin.hits() - before,
            2,
            "{path} must reach the upstream every time"
        );
        assert!(
            a.header("cache-status")
                .contains(&format!("detail={reason}")),
            "{a:?}"
        );
        assert!(b.header("cache-status").contains("fwd=miss"));
    }
    // The Set-Cookie response itself reaches its own caller.
    let r = sc.get("/api/groups/VIP/cookie").await;
    assert_eq!(r.header("set-cookie"), "session=abc");
    let m = sc.metrics().await;
    assert_eq!(
        metric(
            &m,
            "sidecache_not_stored_total",
            &[("reason", "set_cookie")]
        ),
        3.0
    );
}

#[tokio::test]
async fn identity_scope_never_serves_one_caller_to_another() {
    let origin = Origin::start(|req| {
        let who = req
            .headers
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        Reply::json(format!(r#"{{"balance_of":"{who}"}}"#))
            .header("cache-control", "private, max-age=60")
    })
    .await;
    let sc = Sidecache::start(
        &origin,
        r#"
        [[route]]
        name = "balance"
        match = "GET /api/users/{user_type}/{user_id}/balance"
        ttl = "60s"
        scope = "identity"
        "#,
    )
    .await;
    let path = "/api/users/live/42/balance";
    let alice = sc
        .get_with(path, &[("authorization", "Bearer alice")])
        .await;
    let bob = sc.get_with(path, &[("authorization", "Bearer bob")]).await;
    assert!(alice.text().contains("alice"));
    assert!(bob.text().contains("bob"), "bob got {}", bob.text());
    assert_eq!(origin.hits(), 2);
    let alice2 = sc
        .get_with(path, &[("authorization", "Bearer alice")])
        .await;
    assert!(alice2.text().contains("alice"));
    assert!(alice2.header("cache-status").contains("hit"));
    let bob2 = sc.get_with(path, &[("authorization", "Bearer bob")]).await;
    assert!(bob2.text().contains("bob"));
    assert_eq!(origin.hits(), 2);
    // No identity: never cached, never served someone else's entry.
    let anon = sc.get(path).await;
    assert_eq!(anon.text(), r#"{"balance_of":""}"#);
    assert!(anon.header("cache-status").contains("detail=no_identity"));
    sc.get(path).await;
    assert_eq!(origin.hits(), 4);
}

#[tokio::test]
async fn other_paths_and_methods_pass_through_untouched() {
    let origin = Origin::start(|req| {
        Reply::json(format!("echo:{}", String::from_utf8_lossy(&req.body)))
            .status(if req.method == Method::POST { 201 } else { 200 })
            .header("x-origin", "yes")
    })
    .await;
    let sc = Sidecache::start(&origin, ROUTE_GROUP).await;
    let r = sc
        .request(
            Method::POST,
            "/api/groups/VIP/EURUSD?x=1",
            &[
                ("x-custom", "abc"),
                ("content-type", "text/plain"),
                ("connection", "keep-alive, x-drop"),
                ("x-drop", "1"),
            ],
            "the body",
        )
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(r.text(), "echo:the body");
    assert_eq!(r.header("x-origin"), "yes");
    assert!(r.headers.get("cache-status").is_none());
    let seen = &origin.requests()[0];
    assert_eq!(seen.method, Method::POST);
    assert_eq!(seen.uri, "/api/groups/VIP/EURUSD?x=1");
    assert_eq!(seen.body, "the body");
    assert_eq!(seen.headers["x-custom"], "abc");
    assert_eq!(seen.headers["content-type"], "text/plain");
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert!(seen.headers["forwarded"]
        .to_str()
        .unwrap()
        .starts_with("for=127.0.0.1;proto=http"));
    assert!(
        seen.headers.get("x-drop").is_none(),
        "fields named in Connection are hop-by-hop"
    );
    assert_eq!(seen.headers["host"], origin.addr.to_string());

    for method in [Method::PUT, Method::DELETE, Method::PATCH] {
        let r = sc
            .request(method.clone(), "/api/groups/VIP/EURUSD", &[], "x")
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(origin.requests().last().unwrap().method, method);
    }
    // A GET on no route goes upstream every time.
    let before = origin.hits();
    sc.get("/api/other").await;
    sc.get("/api/other").await;
    assert_eq!(origin.hits() - before, 2);
}

#[tokio::test]
async fn query_strings_are_part_of_the_key_in_normalised_form() {
    let origin = Origin::start(|req| Reply::json(req.uri.clone())).await;
    let sc = Sidecache::start(&origin, ROUTE_GROUP).await;
    sc.get("/api/groups/VIP/EURUSD?a=1&b=2").await;
    let r = sc.get("/api/groups/VIP/EURUSD?b=2&a=1").await;
    assert!(r.header("cache-status").contains("hit"));
    assert_eq!(origin.hits(), 1);
    sc.get("/api/groups/VIP/EURUSD?a=2&b=2").await;
    assert_eq!(origin.hits(), 2);
}

#[tokio::test]
async fn upstream_down_is_a_502_naming_the_upstream() {
    // Bind then drop a listener: nothing listens on that port now.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let sc = Sidecache::start_with(config(&format!("http://127.0.0.1:{port}"), ROUTE_GROUP)).await;
    for path in ["/api/groups/VIP/EURUSD", "/not/a/route"] {
        let r = sc.get(path).await;
        assert_eq!(r.status, 502, "{path}");
        assert_eq!(r.header("content-type"), "application/json");
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["side"], "upstream");
        assert_eq!(v["error"], "upstream_connect");
    }
    let m = sc.metrics().await;
    assert_eq!(
        metric(
            &m,
            "sidecache_upstream_errors_total",
            &[("kind", "connect")]
        ),
        2.0
    );
}

#[tokio::test]
async fn slow_upstream_is_a_504() {
    let origin = Origin::start(|_| Reply::json(RECORD).delay(Duration::from_secs(3))).await;
    let cfg = config(&origin.url(), ROUTE_GROUP);
    let mut cfg = cfg;
    cfg.upstream.timeout = Duration::from_millis(200);
    let sc = Sidecache::start_with(cfg).await;
    let r = sc.get("/api/groups/VIP/EURUSD").await;
    assert_eq!(r.status, 504);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["side"], "upstream");
    assert_eq!(v["error"], "upstream_timeout");
    let r = sc.get("/slow/pass-through").await;
    assert_eq!(r.status, 504);
}

#[tokio::test]
async fn malformed_requests_get_4xx_and_the_proxy_keeps_serving() {
    let origin = Origin::start(|_| Reply::json(RECORD)).await;
    let sc = Sidecache::start(&origin, ROUTE_GROUP).await;
    let garbage = raw_exchange(sc.proxy, b"THIS IS NOT HTTP\r\n\r\n").await;
    assert!(garbage.starts_with("HTTP/1.1 400"), "got {garbage:?}");
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(200 * 1024)
    );
    let big = raw_exchange(sc.proxy, huge.as_bytes()).await;
    assert!(
        big.starts_with("HTTP/1.1 431"),
        "got {:?}",
        &big[..big.len().min(60)]
    );
    let r = sc.get("/api/groups/VIP/EURUSD").await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn large_bodies_stream_through_uncached() {
    let big = "x".repeat(300_000);
    let body = big.clone();
    let origin = Origin::start(move |_| Reply::json(body.clone())).await;
    let sc = Sidecache::start(
        &origin,
        &format!("[l1]\nmax_entry_bytes = \"64KiB\"\n{ROUTE_GROUP}"),
    )
    .await;
    let r = sc.get("/api/groups/VIP/EURUSD").await;
    assert_eq!(r.body.len(), big.len());
    assert!(r.header("cache-status").contains("detail=too_large"));
    sc.get("/api/groups/VIP/EURUSD").await;
    assert_eq!(origin.hits(), 2);
}

#[tokio::test]
async fn upstream_max_age_sets_the_ttl_and_entries_expire() {
    let origin = Origin::start(|_| Reply::json(RECORD).header("cache-control", "max-age=1")).await;
    let sc = Sidecache::start(&origin, ROUTE_GROUP).await;
    let r = sc.get("/api/groups/VIP/EURUSD").await;
    assert!(r.header("cache-status").contains("ttl=1"), "{r:?}");
    assert!(sc
        .get("/api/groups/VIP/EURUSD")
        .await
        .header("cache-status")
        .contains("hit"));
    assert_eq!(origin.hits(), 1);
    let expired = eventually(Duration::from_secs(5), async || {
        sc.get("/api/groups/VIP/EURUSD").await;
        origin.hits() == 2
    })
    .await;
    assert!(expired, "the entry outlived its max-age");
}

#[tokio::test]
async fn route_cache_control_is_sent_downstream() {
    let origin =
        Origin::start(|_| Reply::json(RECORD).header("cache-control", "max-age=600")).await;
    let sc = Sidecache::start(
        &origin,
        r#"
        [[route]]
        name = "group"
        match = "GET /api/groups/{group}/{symbol}"
        ttl = "1h"
        cache_control = "public, max-age=5"
        "#,
    )
    .await;
    let r = sc.get("/api/groups/VIP/EURUSD").await;
    assert_eq!(r.header("cache-control"), "public, max-age=5");
    assert!(
        r.header("cache-status").contains("ttl=600"),
        "upstream max-age is the TTL: {r:?}"
    );
}

#[tokio::test]
async fn health_readiness_and_graceful_shutdown() {
    let origin = Origin::start(|_| Reply::json(RECORD).delay(Duration::from_millis(400))).await;
    let mut sc = Sidecache::start(&origin, ROUTE_GROUP).await;
    assert_eq!(sc.admin_get("/healthz").await.status, 200);
    assert_eq!(sc.admin_get("/readyz").await.status, 200);
    assert_eq!(sc.admin_get("/nope").await.status, 404);

    let proxy = sc.proxy;
    let in_flight = tokio::spawn(async move {
        send(
            &client(),
            proxy,
            Method::GET,
            "/api/groups/VIP/EURUSD",
            &[],
            Default::default(),
        )
        .await
    });
    assert!(eventually(Duration::from_secs(5), async || origin.hits() == 1).await);
    let running = sc.running.take().unwrap();
    let health = running.health.clone();
    let stop = tokio::spawn(running.shutdown());
    assert!(eventually(Duration::from_secs(5), async || !health.is_ready()).await);
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, 200, "the in-flight request finished");
    stop.await.unwrap();
    assert!(
        tokio::net::TcpStream::connect(proxy).await.is_err(),
        "listener closed"
    );
}

#[tokio::test]
async fn chunked_request_bodies_are_framed_by_the_proxy_not_by_the_client() {
    let origin =
        Origin::start(|req| Reply::json(format!("echo:{}", String::from_utf8_lossy(&req.body))))
            .await;
    let sc = Sidecache::start(&origin, ROUTE_GROUP).await;
    // A chunked body with a Content-Length that disagrees. Had the Content-Length gone
    // upstream beside the decoded body, the pooled upstream connection would be out of step
    // and the next request on it would get a wrong answer.
    let raw = b"POST /api/orders HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\
        Content-Length: 3\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    let answer = raw_exchange(sc.proxy, raw).await;
    assert!(
        answer.starts_with("HTTP/1.1 400") || answer.ends_with("echo:hello world"),
        "got {answer:?}"
    );
    let raw = b"POST /api/orders HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\
        Connection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    let answer = raw_exchange(sc.proxy, raw).await;
    assert!(answer.ends_with("echo:hello world"), "got {answer:?}");
    for i in 0..3 {
        let r = sc
            .request(Method::POST, "/api/orders", &[], format!("next {i}"))
            .await;
        assert_eq!(r.text(), format!("echo:next {i}"));
    }
    let seen = origin.requests();
    assert!(seen
        .iter()
        .all(|r| r.headers.get("content-length").is_none_or(|v| v != "3")));
}

#[tokio::test]
async fn a_field_named_in_connection_never_picks_the_key() {
    // The origin answers by the identity it receives: none means the anonymous answer.
    let origin = Origin::start(|r| {
        let who = r
            .headers
            .get("authorization")
            .map_or("anonymous", |v| v.to_str().unwrap());
        Reply::json(format!(r#"{{"user":"{who}"}}"#))
    })
    .await;
    let sc = Sidecache::start(&origin, ROUTE_BALANCE).await;
    let path = "/api/users/1/balance";
    // `authorization` is named hop-by-hop: it is not forwarded, so it must not key either.
    let sneaky = sc
        .get_with(
            path,
            &[("authorization", "alice"), ("connection", "authorization")],
        )
        .await;
    assert_eq!(sneaky.text(), r#"{"user":"anonymous"}"#);
    assert!(!origin.requests()[0].headers.contains_key("authorization"));
    // Alice's own read is hers, not the anonymous answer stored under her key.
    let alice = sc.get_with(path, &[("authorization", "alice")]).await;
    assert_eq!(alice.text(), r#"{"user":"alice"}"#, "{alice:?}");
    assert_eq!(origin.hits(), 2);
}

#[tokio::test]
async fn an_identity_header_sent_twice_is_a_400() {
    let origin = Origin::start(|_| Reply::json("{}")).await;
    let sc = Sidecache::start(&origin, ROUTE_BALANCE).await;
    let twice = sc
        .get_with(
            "/api/users/1/balance",
            &[("authorization", "alice"), ("authorization", "bob")],
        )
        .await;
    assert_eq!(twice.status, 400, "{twice:?}");
    assert!(twice.text().contains("identity_repeated"), "{twice:?}");
    assert_eq!(origin.hits(), 0);
    let m = sc.metrics().await;
    assert_eq!(
        metric(&m, "sidecache_requests_total", &[("cache", "rejected")]),
        1.0
    );
}

#[tokio::test]
async fn a_write_whose_outcome_is_unknown_invalidates_all_the_same() {
    // The write commits, then answers too late for sidecache's timeout.
    let origin = Origin::start(|r| match r.method {
        Method::PUT => Reply::json("{}").delay(Duration::from_millis(600)),
        _ => Reply::json(RECORD),
    })
    .await;
    let config = sidecache::config::Config::parse(&format!(
        r#"
[listen]
proxy = "127.0.0.1:0"
admin = "127.0.0.1:0"
[upstream]
url = "{}"
timeout = "200ms"
{ROUTE_GROUP}
[[invalidate]]
match = "PUT /api/superadmin/groups/{{group}}/{{symbol}}"
tags = ["group:{{group}}:{{symbol}}"]
"#,
        origin.url()
    ))
    .unwrap();
    let sc = Sidecache::start_with(config).await;
    let path = "/api/groups/VIP/EURUSD";
    sc.get(path).await;
    assert!(sc.get(path).await.header("cache-status").contains("hit"));
    let write = sc
        .request(Method::PUT, "/api/superadmin/groups/VIP/EURUSD", &[], "{}")
        .await;
    assert_eq!(write.status, 504, "{write:?}");
    // It may have committed: the entry is gone before the 504 left.
    let after = sc.get(path).await;
    assert!(
        after.header("cache-status").contains("fwd=miss"),
        "{after:?}"
    );
    let m = sc.metrics().await;
    assert_eq!(
        metric(
            &m,
            "sidecache_invalidations_total",
            &[("source", "write_uncertain")]
        ),
        1.0
    );
}

#[tokio::test]
async fn a_write_whose_caller_goes_away_still_invalidates() {
    use tokio::io::AsyncWriteExt;
    // The write commits, then answers after the caller has given up and closed.
    let origin = Origin::start(|r| match r.method {
        Method::PUT => Reply::json("{}").delay(Duration::from_millis(300)),
        _ => Reply::json(RECORD),
    })
    .await;
    let extra = format!(
        "{ROUTE_GROUP}\n[[invalidate]]\nmatch = \"PUT /api/superadmin/groups/{{group}}/{{symbol}}\"\ntags = [\"group:{{group}}:{{symbol}}\"]\n"
    );
    let sc = Sidecache::start(&origin, &extra).await;
    let path = "/api/groups/VIP/EURUSD";
    sc.get(path).await;
    assert!(sc.get(path).await.header("cache-status").contains("hit"));
    let mut sock = tokio::net::TcpStream::connect(sc.proxy).await.unwrap();
    sock.write_all(
        b"PUT /api/superadmin/groups/VIP/EURUSD HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}",
    )
    .await
    .unwrap();
    let forwarded = eventually(Duration::from_secs(5), async || {
        origin.requests().iter().any(|r| r.method == Method::PUT)
    })
    .await;
    assert!(forwarded);
    drop(sock);
    let invalidated = eventually(Duration::from_secs(5), async || {
        let m = sc.metrics().await;
        metric(
            &m,
            "sidecache_invalidations_total",
            &[("source", "write_uncertain")],
        ) == 1.0
    })
    .await;
    assert!(invalidated, "the abandoned write invalidated nothing");
    let after = sc.get(path).await;
    assert!(
        after.header("cache-status").contains("fwd=miss"),
        "{after:?}"
    );
}

#[tokio::test]
async fn a_get_with_a_body_is_neither_served_from_nor_stored_in_the_cache() {
    // The origin's answer depends on the body, which the key does not see.
    let origin = Origin::start(|r| {
        Reply::json(format!(
            r#"{{"body":"{}"}}"#,
            String::from_utf8_lossy(&r.body)
        ))
    })
    .await;
    let sc = Sidecache::start(&origin, ROUTE_GROUP).await;
    let path = "/api/groups/VIP/EURUSD";
    let with_body = sc.request(Method::GET, path, &[], "x=1").await;
    assert_eq!(with_body.text(), r#"{"body":"x=1"}"#);
    assert!(
        with_body.header("cache-status").contains("request_body"),
        "{with_body:?}"
    );
    let plain = sc.get(path).await;
    assert_eq!(plain.text(), r#"{"body":""}"#, "{plain:?}");
    // And a cached entry is not the answer to a request with a body either.
    let again = sc.request(Method::GET, path, &[], "x=2").await;
    assert_eq!(again.text(), r#"{"body":"x=2"}"#);
    assert_eq!(origin.hits(), 3);
}

#[tokio::test]
async fn catch_all_routes_key_every_path_apart_and_the_most_specific_route_wins() {
    let origin = Origin::start(|r| Reply::json(format!("{{\"uri\":\"{}\"}}", r.uri))).await;
    let sc = Sidecache::start(
        &origin,
        r#"
        [[route]]
        name = "all"
        match = "GET /{*path}"
        ttl = "1h"
        tags = ["page:{path}"]
        [[route]]
        name = "group"
        match = "GET /api/groups/{group}"
        ttl = "1h"
        [[invalidate]]
        match = "PUT /pages/{*path}"
        tags = ["page:{path}"]
        "#,
    )
    .await;
    let paths = ["/a/b", "/a/b/", "/a//b", "/a", "/", "/a/b?x=1"];
    for p in paths {
        let r = sc.get(p).await;
        assert!(r.header("cache-status").contains("fwd=miss"), "{p}: {r:?}");
        assert_eq!(r.text(), format!("{{\"uri\":\"{p}\"}}"));
    }
    for p in paths {
        let r = sc.get(p).await;
        assert!(r.header("cache-status").contains("hit"), "{p}: {r:?}");
        assert_eq!(r.text(), format!("{{\"uri\":\"{p}\"}}"), "{p}");
    }
    assert_eq!(origin.hits(), paths.len());

    sc.get("/api/groups/VIP").await;
    let m = sc.metrics().await;
    let misses = |route| {
        metric(
            &m,
            "sidecache_requests_total",
            &[("route", route), ("cache", "miss")],
        )
    };
    assert_eq!(misses("group"), 1.0);
    assert_eq!(misses("all"), paths.len() as f64);

    // A tag rendered from the catch-all reaches exactly its own entry: `PUT /pages/a/b`
    // purges `page:a/b`, which is `/a/b`'s and not `/a/b/`'s.
    let put = sc.request(Method::PUT, "/pages/a/b", &[], "").await;
    assert_eq!(put.status, 200);
    let r = sc.get("/a/b").await;
    assert!(r.header("cache-status").contains("fwd=miss"), "{r:?}");
    let r = sc.get("/a/b/").await;
    assert!(r.header("cache-status").contains("hit"), "{r:?}");
}
