//! The upstream as an attacker or a broken server would behave (`support::hostile`), and
//! sidecache in front of it: every request carries its own id and identity, the origin echoes
//! them, and each answer is checked against its own request. Nothing here may ever see another
//! caller's answer, delivered or stored, where the stray bytes came before the connection was
//! reused, or after an early answer; with duplicates up to 10 ms late under load, no
//! identity entry is ever stored from another request's answer.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http_body_util::{BodyExt, Full};
use support::hostile::{Hostile, Mode};
use support::*;

async fn start(mode: Mode) -> (Hostile, Sidecache) {
    let origin = Hostile::start(mode).await;
    let sc = Sidecache::start_with(config(&origin.url(), ROUTE_BALANCE)).await;
    (origin, sc)
}

/// Behind an origin that leaves Nagle's algorithm on (see [`Hostile::start_with_nagle`]).
async fn start_with_nagle(mode: Mode) -> (Hostile, Sidecache) {
    let origin = Hostile::start_with_nagle(mode).await;
    let sc = Sidecache::start_with(config(&origin.url(), ROUTE_BALANCE)).await;
    (origin, sc)
}

/// What came back for one request: its status and the request id, user and path its body
/// names (empty when the body names none), or the transport error.
#[derive(Debug)]
struct Got {
    status: u16,
    id: String,
    user: String,
    path: String,
    cache: String,
}

fn field(body: &str, name: &str) -> String {
    let key = format!("\"{name}\":\"");
    body.split_once(&key)
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(v, _)| v.to_string())
        .unwrap_or_default()
}

async fn ask(
    sc: &Sidecache,
    method: Method,
    path: &str,
    id: &str,
    user: &str,
    body: &'static [u8],
) -> Result<Got, String> {
    let client = support::client();
    let req = http::Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", sc.proxy))
        .header("x-request-id", id)
        .header("authorization", user)
        .body(Full::new(Bytes::from_static(body)))
        .unwrap();
    let resp = client.request(req).await.map_err(|e| e.to_string())?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    let text = String::from_utf8_lossy(&body);
    Ok(Got {
        status: parts.status.as_u16(),
        id: field(&text, "id"),
        user: field(&text, "user"),
        path: field(&text, "path"),
        cache: parts
            .headers
            .get("cache-status")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default(),
    })
}

async fn get(sc: &Sidecache, path: &str, id: &str, user: &str) -> Got {
    ask(sc, Method::GET, path, id, user, b"").await.unwrap()
}

/// Asserts that an answer that names a request names this one.
fn own(got: &Got, id: &str, user: &str) {
    assert!(
        got.id.is_empty() || (got.id == id && got.user == user),
        "request {id} of {user} got another's answer: {got:?}"
    );
}

async fn strays_reach(origin: &Hostile, n: usize) {
    let ok = eventually(Duration::from_secs(5), async || origin.strays() >= n).await;
    assert!(ok, "the origin never sent stray {n}");
}

#[tokio::test]
async fn late_duplicates_that_arrive_while_idle_are_never_read_as_an_answer() {
    let (origin, sc) = start(Mode::LateDuplicate {
        every: 1,
        late: Duration::from_millis(5),
        spread: false,
    })
    .await;
    for i in 0..30 {
        let (id, user) = (i.to_string(), format!("user-{}", i % 3));
        // Pass-through and identity fills in turn, each after the last duplicate has come.
        let path = match i % 2 {
            0 => format!("/pass/{i}"),
            _ => format!("/api/users/{i}/balance"),
        };
        let got = get(&sc, &path, &id, &user).await;
        assert_eq!(got.status, 200, "{got:?}");
        assert_eq!(
            (got.id.as_str(), got.user.as_str()),
            (id.as_str(), user.as_str())
        );
        strays_reach(&origin, i + 1).await;
    }
    // Every stored entry is its own request's.
    for i in (1..30).step_by(2) {
        let user = format!("user-{}", i % 3);
        let got = get(&sc, &format!("/api/users/{i}/balance"), "again", &user).await;
        assert!(got.cache.contains("hit"), "{got:?}");
        assert_eq!((got.id, got.user), (i.to_string(), user));
    }
}

#[tokio::test]
async fn an_answer_to_a_request_with_content_never_lets_a_smuggled_answer_through() {
    let (origin, sc) = start(Mode::EarlyAnswer(401)).await;
    const SMUGGLED: &[u8] =
        b"GET /smuggled HTTP/1.1\r\nx-request-id: smuggled\r\nauthorization: evil\r\n\r\n";
    for i in 0..30 {
        let id = format!("post-{i}");
        let got = ask(&sc, Method::POST, "/api/orders", &id, "alice", SMUGGLED)
            .await
            .unwrap();
        assert_eq!(got.status, 401, "{got:?}");
        own(&got, &id, "alice");
        // At once, no wait for the smuggled answer: the refused connection must already be
        // out of the pool.
        let id = format!("get-{i}");
        let got = get(&sc, &format!("/pass/{i}"), &id, "bob").await;
        assert_eq!(got.status, 200, "{got:?}");
        own(&got, &id, "bob");
        assert_eq!(got.id, id);
    }
    // The origin did answer the smuggled requests: none of those answers was delivered.
    assert!(origin.strays() > 0);
}

/// A body shaped like half a request head, answered 200 or 302 without being read: the
/// upstream then sends nothing and waits for the rest of "its" request. Whatever comes next on
/// that connection would complete it, and get the smuggled request's answer; a fill would
/// store it for every caller. No check of the socket can see it: the connection must go.
#[tokio::test]
async fn a_half_request_in_an_ignored_body_never_captures_the_next_request() {
    const HALF: &[u8] = b"GET /api/users/42/balance HTTP/1.1\r\nx-request-id: smuggled\r\nauthorization: victim\r\nx-pad: ";
    for status in [200, 302] {
        let (origin, sc) = start(Mode::EarlyAnswer(status)).await;
        for i in 0..10 {
            let id = format!("post-{i}");
            let got = ask(&sc, Method::POST, "/api/orders", &id, "mallory", HALF)
                .await
                .unwrap();
            assert_eq!(got.status, status, "{got:?}");
            // After the fill's quiet period, so that only rule 1 can keep it off that
            // connection.
            tokio::time::sleep(Duration::from_millis(60)).await;
            let id = format!("fill-{i}");
            let path = format!("/api/users/{i}/balance");
            let got = get(&sc, &path, &id, "alice").await;
            assert_eq!(
                (got.status, got.id.as_str(), got.path.as_str()),
                (200, id.as_str(), path.as_str()),
                "{got:?}"
            );
            let got = get(&sc, &format!("/pass/{i}"), &format!("pass-{i}"), "bob").await;
            assert_eq!(got.id, format!("pass-{i}"), "{got:?}");
        }
        drop(origin);
    }
}

#[tokio::test]
async fn bodies_after_head_204_and_304_never_reach_the_next_caller() {
    for late in [None, Some(Duration::from_millis(5))] {
        let (origin, sc) = start(Mode::StrayBody { late }).await;
        let mut strays = 0;
        for i in 0..6 {
            let (method, path) = match i % 3 {
                0 => (Method::HEAD, "/pass/head".to_string()),
                1 => (Method::GET, "/status/204".to_string()),
                _ => (Method::GET, "/status/304".to_string()),
            };
            let got = ask(&sc, method, &path, &format!("empty-{i}"), "alice", b"")
                .await
                .unwrap();
            assert!(got.id.is_empty(), "an empty answer got a body: {got:?}");
            strays += 1;
            strays_reach(&origin, strays).await;
            let id = format!("next-{i}");
            let got = get(&sc, &format!("/pass/{i}"), &id, "bob").await;
            assert_eq!(got.status, 200, "{late:?}: {got:?}");
            assert_eq!(got.id, id, "{late:?}");
        }
    }
}

#[tokio::test]
async fn an_unsolicited_408_on_an_idle_connection_is_not_the_next_answer() {
    let (origin, sc) = start(Mode::Unsolicited408(Duration::from_millis(20))).await;
    for i in 0..5 {
        let id = i.to_string();
        let got = get(&sc, &format!("/pass/{i}"), &id, "alice").await;
        assert_eq!((got.status, got.id.as_str()), (200, id.as_str()), "{got:?}");
        strays_reach(&origin, i + 1).await;
    }
}

#[tokio::test]
async fn a_second_answer_in_the_same_segment_closes_the_connection() {
    let (origin, sc) = start(Mode::SurplusSameSegment).await;
    for i in 0..20 {
        let id = i.to_string();
        let path = match i % 2 {
            0 => format!("/pass/{i}"),
            _ => format!("/api/users/{i}/balance"),
        };
        let got = get(&sc, &path, &id, "alice").await;
        assert_eq!((got.status, got.id.as_str()), (200, id.as_str()), "{got:?}");
    }
    assert_eq!(
        origin.connections(),
        20,
        "a connection with surplus bytes was reused"
    );
}

/// Each broken framing: what a pass-through and an identity fill get, and that nothing wrong
/// is stored (the next read as the same caller is its own answer, from cache or not).
#[tokio::test]
async fn broken_framings_are_errors_and_store_nothing() {
    // (mode, pass-through answered whole, fill stored)
    let cases = [
        (Mode::ConflictingLength, false, false),
        (Mode::ClTe, true, true),
        (Mode::BadChunk, false, false),
        (Mode::CloseDelimited, true, true),
        (Mode::Interim, true, true),
        (Mode::MidBodyClose, false, false),
        (Mode::SlowDrip, true, true),
    ];
    for (mode, whole, stored) in cases {
        let (origin, sc) = start(mode).await;
        let pass = ask(&sc, Method::GET, "/pass/1", "p1", "alice", b"").await;
        match (&pass, whole) {
            (Ok(got), true) => {
                assert_eq!((got.status, got.id.as_str()), (200, "p1"), "{mode:?}")
            }
            // A broken answer: a 502, or a body cut short (its head had gone out already).
            (Ok(got), false) => assert_eq!(got.status, 502, "{mode:?}: {got:?}"),
            (Err(_), false) => {}
            (Err(e), true) => panic!("{mode:?}: {e}"),
        }
        let fill = get(&sc, "/api/users/7/balance", "f1", "alice").await;
        if stored {
            assert_eq!((fill.status, fill.id.as_str()), (200, "f1"), "{mode:?}");
            assert!(fill.cache.contains("stored"), "{mode:?}: {fill:?}");
        } else {
            assert_eq!(fill.status, 502, "{mode:?}: {fill:?}");
        }
        let again = get(&sc, "/api/users/7/balance", "f2", "alice").await;
        match stored {
            true => assert_eq!(again.id, "f1", "{mode:?}: {again:?}"),
            false => assert!(
                again.status == 502 || again.id == "f2",
                "{mode:?}: {again:?}"
            ),
        }
        let bob = get(&sc, "/api/users/7/balance", "b1", "bob").await;
        own(&bob, "b1", "bob");
        drop(origin);
    }
}

/// Under load, a duplicate can land after a reused connection's next request was written;
/// HTTP/1.1 cannot tell it from the real answer. Fills that will be stored never ride such a
/// connection: with duplicates up to 10 ms late, no identity entry is another request's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_fills_are_never_poisoned_by_late_duplicates_under_load() {
    let (_origin, sc) = start_with_nagle(Mode::LateDuplicate {
        every: 3,
        late: Duration::from_millis(10),
        spread: true,
    })
    .await;
    let sc = Arc::new(sc);
    let mut tasks = tokio::task::JoinSet::new();
    for u in 0..16 {
        let sc = sc.clone();
        tasks.spawn(async move {
            let user = format!("user-{u}");
            let mut wrong_passes = 0;
            for k in 0..40 {
                let id = format!("{u}-{k}");
                // Pass-through keeps connections busy (and strays flying).
                let got = get(&sc, &format!("/pass/{id}"), &id, &user).await;
                if got.id != id {
                    wrong_passes += 1;
                }
                let got = get(&sc, &format!("/api/users/{id}/balance"), &id, &user).await;
                assert_eq!(got.status, 200, "{got:?}");
                assert_eq!(
                    (got.id.as_str(), got.user.as_str()),
                    (id.as_str(), user.as_str())
                );
            }
            wrong_passes
        });
    }
    let wrong_passes: usize = tasks.join_all().await.into_iter().sum();
    // Every entry, read back by its owner, is its own request's.
    for u in 0..16 {
        let user = format!("user-{u}");
        for k in 0..40 {
            let id = format!("{u}-{k}");
            let path = format!("/api/users/{id}/balance");
            let got = get(&sc, &path, "check", &user).await;
            assert!(got.cache.contains("hit"), "{got:?}");
            assert_eq!(
                (got.id.as_str(), got.path.as_str()),
                (id.as_str(), path.as_str())
            );
        }
    }
    // Not asserted (HTTP/1.1 cannot prevent it): printed for the record.
    println!("pass-through answers that were another request's: {wrong_passes} of 640");
}

/// A client's own broken body is the client's fault: a 400, not a 502 blamed on the upstream.
#[tokio::test]
async fn a_malformed_request_body_is_a_400_from_the_client_side() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_origin, sc) = start(Mode::Honest).await;
    let mut sock = tokio::net::TcpStream::connect(sc.proxy).await.unwrap();
    sock.write_all(
        b"POST /api/orders HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("\"side\":\"downstream\""), "{text}");
}

/// Interim answers (100, 103) are skipped, whatever framing fields they carry and however
/// their bytes arrive: each caller gets its own final answer, without the hints' fields (hyper's
/// server cannot relay a 1xx), and the connection stays in step, so it is reused.
#[tokio::test]
async fn interim_answers_are_skipped_and_the_connection_stays_in_step() {
    let (origin, sc) = start(Mode::InterimFramed).await;
    for i in 0..6 {
        let id = format!("p{i}");
        let got = sc
            .get_with(
                &format!("/pass/{i}"),
                &[("x-request-id", &id), ("authorization", "alice")],
            )
            .await;
        assert_eq!(got.status, 200, "{got:?}");
        assert_eq!(field(got.text(), "id"), id, "{got:?}");
        assert!(got.headers.get("link").is_none(), "{got:?}");
    }
    // One connection, reused five times: every interim answer was consumed exactly.
    assert_eq!(origin.connections(), 1);
    let fill = get(&sc, "/api/users/7/balance", "f1", "alice").await;
    assert_eq!((fill.status, fill.id.as_str()), (200, "f1"), "{fill:?}");
    assert!(fill.cache.contains("stored"), "{fill:?}");
    let again = get(&sc, "/api/users/7/balance", "f2", "alice").await;
    assert!(again.cache.contains("hit"), "{again:?}");
    assert_eq!(again.id, "f1");
    let bob = get(&sc, "/api/users/7/balance", "b1", "bob").await;
    assert_eq!((bob.status, bob.id.as_str()), (200, "b1"), "{bob:?}");
}

/// A transfer coding sidecache cannot undo (anything but a lone `chunked`) is a 502 at once,
/// not a wait for the upstream timeout (2 s here) on a connection the upstream keeps open;
/// nothing is stored and the connection is never reused.
#[tokio::test]
async fn unsupported_transfer_codings_are_a_502_at_once_and_never_reused() {
    for codings in [
        "gzip",
        "gzip, chunked",
        "chunked, gzip",
        "x-custom, chunked",
    ] {
        let (origin, sc) = start(Mode::Coded(codings)).await;
        let started = std::time::Instant::now();
        let pass = get(&sc, "/pass/1", "p1", "alice").await;
        assert_eq!(pass.status, 502, "{codings}: {pass:?}");
        let fill = get(&sc, "/api/users/7/balance", "f1", "alice").await;
        assert_eq!(fill.status, 502, "{codings}: {fill:?}");
        let again = get(&sc, "/api/users/7/balance", "f2", "alice").await;
        assert_eq!(
            again.status, 502,
            "{codings}: nothing was stored: {again:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{codings}: waited {:?}",
            started.elapsed()
        );
        assert_eq!(
            origin.connections(),
            3,
            "{codings}: a connection was reused"
        );
    }
    // The one coding that is undone works, and its connection is reused.
    let (origin, sc) = start(Mode::Coded("chunked")).await;
    for i in 0..3 {
        let id = format!("c{i}");
        let got = get(&sc, &format!("/pass/{i}"), &id, "alice").await;
        assert_eq!((got.status, got.id.as_str()), (200, id.as_str()), "{got:?}");
    }
    assert_eq!(origin.connections(), 1);
}
