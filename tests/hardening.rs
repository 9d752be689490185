//! Issue 15: what a client cannot make the proxy do. Hostile and sloppy peers over raw
//! sockets: requests HTTP/1.1 forbids, CONNECT, heads at and over the limit, and more
//! connections than the budget.

mod support;

use std::time::Duration;

use support::redis::RedisServer;
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

#[tokio::test]
async fn a_flood_of_bad_events_is_counted_exactly_and_logged_sparingly() {
    let (logs, _guard) = capture_logs();
    let redis = RedisServer::start();
    let origin = Origin::start(|_| Reply::json(RECORD)).await;
    let extra = format!(
        "{}[[event]]\nchannel = \"balance_updates\"\ntags = [\"user:{{user_type}}:{{user_id}}\"]\n",
        l2_standalone(&redis.url())
    );
    let sc = Sidecache::start(&origin, &extra).await;
    let client = ::redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    const FLOOD: usize = 300;
    for i in 0..FLOOD {
        // Two reasons, interleaved: each is throttled on its own.
        let payload = if i % 2 == 0 {
            "not json"
        } else {
            r#"{"user_type":"live"}"#
        };
        let _: i64 = ::redis::cmd("PUBLISH")
            .arg("balance_updates")
            .arg(payload)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let rejected = async || {
        metric(
            &sc.metrics().await,
            "sidecache_pubsub_messages_total",
            &[("kind", "event"), ("result", "rejected")],
        )
    };
    let counted = eventually(Duration::from_secs(10), async || {
        rejected().await == FLOOD as f64
    })
    .await;
    assert!(counted, "rejected = {}, not {FLOOD}", rejected().await);
    let lines = lines_with(&logs, "Event rejected.");
    // One line per reason per second: the flood took at most a few seconds.
    assert!(
        (2..=8).contains(&lines.len()),
        "{} lines for {FLOOD} rejections:\n{}",
        lines.len(),
        lines.join("\n")
    );
    // A later line says how many were left out: poll with one more bad event at a time until
    // the throttle lets a line through.
    let told = eventually(Duration::from_secs(5), async || {
        let _: i64 = ::redis::cmd("PUBLISH")
            .arg("balance_updates")
            .arg("not json")
            .query_async(&mut conn)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        lines_with(&logs, "Event rejected.")
            .iter()
            .any(|l| l.contains("not JSON") && !l.contains("suppressed=0"))
    })
    .await;
    assert!(
        told,
        "no line with a suppressed count:\n{}",
        lines_with(&logs, "Event rejected.").join("\n")
    );
}

/// Sends a keep-alive GET on `sock` and reads its whole answer (head, then `Content-Length`
/// bytes of body); the connection stays open.
async fn keep_alive_get(sock: &mut tokio::net::TcpStream) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    sock.write_all(b"GET /api/groups/VIP/EURUSD HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse().unwrap())
                })
                .expect("a content-length");
            if got.len() >= end + 4 + length {
                return text;
            }
        }
        let n = sock.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed after {text:?}");
        got.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn over_the_connection_budget_accept_waits_and_admin_still_answers() {
    let origin = Origin::start(|_| Reply::json(RECORD)).await;
    let config = sidecache::config::Config::parse(&format!(
        "[listen]\nproxy = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nmax_connections = 2\n\
         [upstream]\nurl = \"{}\"\n{ROUTE_GROUP}",
        origin.url()
    ))
    .unwrap();
    assert_eq!(config.listen.max_connections, 2);
    let sc = Sidecache::start_with(config).await;
    let open = async || {
        metric(
            &sc.metrics().await,
            "sidecache_connections",
            &[("listener", "proxy")],
        )
    };

    let mut first = tokio::net::TcpStream::connect(sc.proxy).await.unwrap();
    let mut second = tokio::net::TcpStream::connect(sc.proxy).await.unwrap();
    assert!(keep_alive_get(&mut first).await.starts_with("HTTP/1.1 200"));
    assert!(keep_alive_get(&mut second)
        .await
        .starts_with("HTTP/1.1 200"));
    assert_eq!(open().await, 2.0);

    // The third connects (the kernel's backlog takes it) but is not served while two are open.
    let mut third = tokio::net::TcpStream::connect(sc.proxy).await.unwrap();
    let answer = tokio::spawn(async move {
        let answer = keep_alive_get(&mut third).await;
        (answer, third)
    });
    // Not a synchronisation: the window in which the third must stay unanswered.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !answer.is_finished(),
        "a third connection was served over the budget of 2"
    );
    // The admin listener is outside the proxy's budget.
    assert_eq!(sc.admin_get("/healthz").await.status, 200);
    assert_eq!(sc.admin_get("/readyz").await.status, 200);
    assert!(!answer.is_finished());
    assert_eq!(open().await, 2.0);

    drop(first);
    let (served, _third) = tokio::time::timeout(Duration::from_secs(5), answer)
        .await
        .expect("the third connection is served once the first closed")
        .unwrap();
    assert!(served.starts_with("HTTP/1.1 200"), "{served}");
    // The second is still open and still served.
    assert!(keep_alive_get(&mut second)
        .await
        .starts_with("HTTP/1.1 200"));
    let settled = eventually(Duration::from_secs(5), async || open().await == 2.0).await;
    assert!(settled, "open connections: {}", open().await);
}
