//! Issue 15: what a client cannot make the proxy do. Hostile and sloppy peers over raw
//! sockets: requests HTTP/1.1 forbids, CONNECT, heads at and over the limit, and more
//! connections than the budget.

mod support;

use std::sync::{Arc, Mutex};
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

/// Log lines written while the returned guard lives, on this thread (a current-thread runtime
/// runs every task of the test on it).
fn capture_logs() -> (Arc<Mutex<Vec<u8>>>, tracing::subscriber::DefaultGuard) {
    #[derive(Clone)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let out = Arc::new(Mutex::new(Vec::new()));
    let sink = Sink(out.clone());
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .with_writer(move || sink.clone())
        .finish();
    (out, tracing::subscriber::set_default(subscriber))
}

fn lines_with(logs: &Mutex<Vec<u8>>, needle: &str) -> Vec<String> {
    String::from_utf8_lossy(&logs.lock().unwrap())
        .lines()
        .filter(|l| l.contains(needle))
        .map(String::from)
        .collect()
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
