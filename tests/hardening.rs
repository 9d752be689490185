//! Issue 15: what a client cannot make the proxy do. Hostile and sloppy peers over raw
//! sockets: requests HTTP/1.1 forbids, CONNECT, heads at and over the limit, and more
//! connections than the budget.

mod support;

use support::*;

const RECORD: &str = r#"{"group":"VIP","symbol":"EURUSD"}"#;

/// The status code of a raw answer, `0` if there was none.
fn status(answer: &str) -> u16 {
    answer
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| answer.strip_prefix("HTTP/1.0 "))
        .and_then(|r| r.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn http11_needs_exactly_one_host() {
    let origin = Origin::start(|_| Reply::json(RECORD)).await;
    let sc = Sidecache::start(&origin, ROUTE_GROUP).await;
    let path = "/api/groups/VIP/EURUSD";
    // RFC 9112 §3.2: an HTTP/1.1 request without Host, or any request with two, is a 400.
    for (what, head) in [
        (
            "no Host",
            format!("GET {path} HTTP/1.1\r\nConnection: close\r\n\r\n"),
        ),
        (
            "two Hosts",
            format!("GET {path} HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n"),
        ),
        (
            "two Hosts, HTTP/1.0",
            format!("GET {path} HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n"),
        ),
    ] {
        let answer = raw_exchange(sc.proxy, head.as_bytes()).await;
        assert_eq!(status(&answer), 400, "{what}: {answer:?}");
        assert!(
            answer.contains("\"side\":\"downstream\""),
            "{what}: {answer:?}"
        );
        assert!(
            answer.contains("Host"),
            "{what}: the body says why: {answer:?}"
        );
    }
    assert_eq!(origin.hits(), 0, "a refused request reached the origin");
    // HTTP/1.0 predates Host: still served.
    let answer = raw_exchange(sc.proxy, format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes()).await;
    assert_eq!(status(&answer), 200, "{answer:?}");
    assert!(answer.ends_with(RECORD), "{answer:?}");
    let answer = raw_exchange(
        sc.proxy,
        format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
}

#[tokio::test]
async fn connect_gets_a_status_not_a_silent_close() {
    let origin = Origin::start(|_| Reply::json(RECORD)).await;
    let sc = Sidecache::start(&origin, ROUTE_GROUP).await;
    let answer = raw_exchange(
        sc.proxy,
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    )
    .await;
    assert_eq!(status(&answer), 501, "{answer:?}");
    let lower = answer.to_ascii_lowercase();
    assert!(
        lower.contains("content-type: application/json"),
        "{answer:?}"
    );
    // Bytes after a CONNECT head are tunnel data, not a next request: the connection ends.
    assert!(lower.contains("connection: close"), "{answer:?}");
    let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["error"], "downstream_method_not_supported", "{v}");
    assert_eq!(origin.hits(), 0);
    // The proxy keeps serving.
    assert_eq!(sc.get("/api/groups/VIP/EURUSD").await.status, 200);
}

/// A request head of exactly `len` bytes (`Connection: close`, so the answer ends the read).
fn request_head(len: usize) -> String {
    let start = "GET /api/groups/VIP/EURUSD HTTP/1.1\r\nHost: a\r\nConnection: close\r\nX-Pad: ";
    let head = format!("{start}{}\r\n\r\n", "a".repeat(len - start.len() - 4));
    assert_eq!(head.len(), len);
    head
}

#[tokio::test]
async fn head_limits_are_exact() {
    let origin = Origin::start(|req| {
        if req.uri.contains("big") {
            // A head just over 64 KiB with the origin's own fields.
            Reply::json(RECORD).header("x-big", &"b".repeat(64 * 1024))
        } else {
            Reply::json(RECORD)
        }
    })
    .await;
    // The default limit, 64 KiB.
    let sc = Sidecache::start(&origin, ROUTE_GROUP).await;
    let limit = 64 * 1024;
    // Written whole, in one segment: the server reads past the limit in one go.
    let at = raw_exchange(sc.proxy, request_head(limit).as_bytes()).await;
    assert_eq!(
        status(&at),
        200,
        "a head of exactly the limit: {:?}",
        &at[..at.len().min(80)]
    );
    for len in [limit + 1, limit + limit / 2, 2 * limit - 100] {
        let over = raw_exchange(sc.proxy, request_head(len).as_bytes()).await;
        assert_eq!(status(&over), 431, "a head of {len} bytes, limit {limit}");
    }
    assert_eq!(origin.hits(), 1);

    let r = sc.get("/big").await;
    assert_eq!(r.status, 502, "{:?}", &r.text()[..r.text().len().min(200)]);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["side"], "upstream", "{v}");
    assert!(v["message"].as_str().unwrap().contains("head over"), "{v}");
}
