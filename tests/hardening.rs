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
