//! The client against real sockets: a scripted upstream on 127.0.0.1:0 that answers each
//! request with the bytes a test gives it, so framings and broken connections can be exact.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full, StreamBody};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

/// What the scripted upstream does with request `n` (0-based, over all connections).
#[derive(Clone)]
enum Script {
    /// Write these bytes and keep the connection.
    Answer(&'static str),
    /// Write these bytes in two parts with a pause between them, keep the connection.
    Split(&'static str, &'static str),
    /// Write these bytes and close.
    AnswerClose(&'static str),
    /// Never answer; keep the connection.
    Silent,
}

struct Upstream {
    port: u16,
    connections: Arc<AtomicUsize>,
    /// Every request as received (head and body, raw).
    requests: Arc<Mutex<Vec<String>>>,
}

async fn upstream(script: Vec<Script>) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(Mutex::new(Vec::new()));
    let next = Arc::new(AtomicUsize::new(0));
    let (c, r) = (connections.clone(), requests.clone());
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            c.fetch_add(1, Ordering::SeqCst);
            let (script, requests, next) = (script.clone(), r.clone(), next.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let Some(request) = read_request(&mut sock, &mut buf).await else {
                        return;
                    };
                    requests.lock().unwrap().push(request);
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    match script[n.min(script.len() - 1)].clone() {
                        Script::Answer(a) => sock.write_all(a.as_bytes()).await.unwrap(),
                        Script::Split(a, b) => {
                            sock.write_all(a.as_bytes()).await.unwrap();
                            sock.flush().await.unwrap();
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            sock.write_all(b.as_bytes()).await.unwrap();
                        }
                        Script::AnswerClose(a) => {
                            sock.write_all(a.as_bytes()).await.unwrap();
                            return;
                        }
                        Script::Silent => {}
                    }
                }
            });
        }
    });
    Upstream {
        port,
        connections,
        requests,
    }
}

/// Reads one request: the head, then a body by Content-Length or chunked (up to `0\r\n\r\n`).
async fn read_request(sock: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    let complete = |b: &[u8]| -> Option<usize> {
        let end = b.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        let head = String::from_utf8_lossy(&b[..end]).to_lowercase();
        if let Some(i) = head.find("content-length: ") {
            let n: usize = head[i + 16..].split("\r\n").next()?.parse().ok()?;
            return (b.len() >= end + n).then_some(end + n);
        }
        if head.contains("transfer-encoding: chunked") {
            let rest = &b[end..];
            return rest
                .windows(5)
                .position(|w| w == b"0\r\n\r\n")
                .map(|i| end + i + 5);
        }
        Some(end)
    };
    loop {
        if let Some(n) = complete(buf) {
            let request = String::from_utf8_lossy(&buf[..n]).into_owned();
            buf.drain(..n);
            return Some(request);
        }
        let mut chunk = [0u8; 4096];
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn client(port: u16) -> Client {
    Client::new(ClientConfig {
        host: "127.0.0.1".into(),
        port,
        connect_timeout: Duration::from_secs(2),
        timeout: Duration::from_secs(10),
        body_timeout: Duration::from_secs(10),
        pool_max_idle: 8,
        pool_idle_timeout: Duration::from_secs(60),
        fill_quiet: Duration::from_millis(50),
        tls: None,
        http2: false,
    })
}

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", "upstream")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

async fn text(resp: Response<UpstreamBody>) -> String {
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

const OK_HELLO: &str = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";

#[tokio::test]
async fn a_kept_alive_connection_serves_the_next_request() {
    let up = upstream(vec![Script::Answer(OK_HELLO)]).await;
    let c = client(up.port);
    for _ in 0..3 {
        let resp = c.send(get("/a?b=1")).await.unwrap();
        assert_eq!(resp.status(), 200);
        // Arrived with its head: handed over whole.
        assert_eq!(resp.into_body().into_buffered().unwrap(), "hello");
    }
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
    assert_eq!(c.pool.idle(), 1);
    let first = up.requests.lock().unwrap()[0].clone();
    assert!(
        first.starts_with("GET /a?b=1 HTTP/1.1\r\nhost: upstream\r\n"),
        "{first}"
    );
}

#[tokio::test]
async fn bodies_that_arrive_later_are_streamed_then_the_connection_is_reused() {
    let up = upstream(vec![
        Script::Split(
            "HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello",
            " world",
        ),
        Script::Split(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
            "6\r\n world\r\n0\r\n\r\n",
        ),
        Script::Answer(OK_HELLO),
    ])
    .await;
    let c = client(up.port);
    let resp = c.send(get("/length")).await.unwrap();
    let Err(streaming) = resp.into_body().into_buffered() else {
        panic!("the rest of the body had not arrived with the head");
    };
    let bytes = streaming.collect().await.unwrap().to_bytes();
    assert_eq!(bytes, "hello world");
    assert_eq!(c.pool.idle(), 1);
    let resp = c.send(get("/chunked")).await.unwrap();
    assert_eq!(text(resp).await, "hello world");
    assert_eq!(text(c.send(get("/again")).await.unwrap()).await, "hello");
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_close_delimited_body_runs_to_the_close_and_is_not_pooled() {
    let up = upstream(vec![Script::AnswerClose(
        "HTTP/1.1 200 OK\r\n\r\nuntil the end",
    )])
    .await;
    let c = client(up.port);
    let resp = c.send(get("/")).await.unwrap();
    assert_eq!(text(resp).await, "until the end");
    assert_eq!(c.pool.idle(), 0);
}

#[tokio::test]
async fn a_pooled_connection_closed_by_the_upstream_is_replaced() {
    // The upstream closes after each answer without saying so: the pooled connection is dead.
    let up = upstream(vec![Script::AnswerClose(OK_HELLO)]).await;
    let c = client(up.port);
    assert_eq!(text(c.send(get("/1")).await.unwrap()).await, "hello");
    assert_eq!(c.pool.idle(), 1);
    // Idempotent, no body: retried on a new connection.
    assert_eq!(text(c.send(get("/2")).await.unwrap()).await, "hello");
    // A POST is never replayed; the dead connection is noticed before it is used.
    let post = Request::post("/3")
        .header("host", "upstream")
        .body(Full::new(Bytes::from_static(b"payload")))
        .unwrap();
    assert_eq!(text(c.send(post).await.unwrap()).await, "hello");
    assert_eq!(up.connections.load(Ordering::SeqCst), 3);
    let last = up.requests.lock().unwrap().last().unwrap().clone();
    assert!(
        last.contains("content-length: 7\r\n") && last.ends_with("\r\n\r\npayload"),
        "{last}"
    );
}

#[tokio::test]
async fn interim_responses_are_skipped_and_bodies_of_unknown_length_are_chunked() {
    let up = upstream(vec![Script::Answer(
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
    )])
    .await;
    let c = client(up.port);
    let chunks: Vec<Result<http_body::Frame<Bytes>, std::convert::Infallible>> = vec![
        Ok(http_body::Frame::data(Bytes::from_static(b"abc"))),
        Ok(http_body::Frame::data(Bytes::from_static(b"defgh"))),
    ];
    let body = StreamBody::new(futures_util::stream::iter(chunks));
    let req = Request::put("/up")
        .header("host", "upstream")
        .body(body)
        .unwrap();
    let resp = c.send(req).await.unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(text(resp).await, "ok");
    let request = up.requests.lock().unwrap()[0].clone();
    assert!(
        request.contains("transfer-encoding: chunked\r\n")
            && request.ends_with("\r\n\r\n3\r\nabc\r\n5\r\ndefgh\r\n0\r\n\r\n"),
        "{request}"
    );
}

#[tokio::test]
async fn broken_answers_and_refused_connections_are_errors_of_the_right_kind() {
    let up = upstream(vec![Script::AnswerClose(
        "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
    )])
    .await;
    let c = client(up.port);
    let resp = c.send(get("/")).await.unwrap();
    let err = resp.into_body().collect().await.unwrap_err();
    assert!(err.to_string().contains("middle of the body"), "{err}");

    let up = upstream(vec![Script::AnswerClose("SMTP ready\r\n\r\n")]).await;
    let err = client(up.port).send(get("/")).await.unwrap_err();
    assert_eq!(err.kind(), "protocol", "{err:?}");

    // A port that was just free: nothing listens there.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let err = client(port).send(get("/")).await.unwrap_err();
    assert_eq!(err.kind(), "connect", "{err:?}");
}

#[tokio::test]
async fn idle_connections_expire() {
    let up = upstream(vec![Script::Answer(OK_HELLO)]).await;
    let c = Client::new(ClientConfig {
        pool_idle_timeout: Duration::from_millis(1),
        ..client(up.port).config.as_ref().clone()
    });
    assert_eq!(text(c.send(get("/1")).await.unwrap()).await, "hello");
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(text(c.send(get("/2")).await.unwrap()).await, "hello");
    assert_eq!(up.connections.load(Ordering::SeqCst), 2);
}

fn with_timeout(port: u16, timeout: Duration) -> Client {
    Client::new(ClientConfig {
        timeout,
        ..client(port).config.as_ref().clone()
    })
}

#[tokio::test]
async fn each_request_on_a_pooled_connection_gets_its_own_deadline() {
    let up = upstream(vec![Script::Answer(OK_HELLO)]).await;
    let c = with_timeout(up.port, Duration::from_millis(300));
    for path in ["/1", "/2", "/3"] {
        assert_eq!(text(c.send(get(path)).await.unwrap()).await, "hello");
        // Longer than the timeout: a deadline left over from this request would have passed.
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_answer_later_than_the_timeout_is_a_timeout() {
    let up = upstream(vec![Script::Answer(OK_HELLO), Script::Silent]).await;
    let c = with_timeout(up.port, Duration::from_millis(300));
    assert_eq!(text(c.send(get("/1")).await.unwrap()).await, "hello");
    let started = Instant::now();
    match c.send(get("/2")).await {
        Err(ProxyError::UpstreamTimeout) => {}
        other => panic!("expected a timeout, got {:?}", other.map(|r| r.status())),
    }
    assert!(started.elapsed() >= Duration::from_millis(250));
    // The silent connection is not pooled: the next request connects anew.
    let _ = c.send(get("/3")).await;
    assert_eq!(up.connections.load(Ordering::SeqCst), 2);
}

/// The server's read buffer can be reused in place only when no request holds a slice of it:
/// an encoded request keeps nothing of the head it came from.
#[test]
fn an_encoded_request_holds_nothing_of_the_head() {
    let raw = Bytes::copy_from_slice(b"/orders/1?x=2 upstream v");
    let mut req = Request::new(Full::new(Bytes::new()));
    *req.uri_mut() = http::Uri::from_maybe_shared(raw.slice(0..13)).unwrap();
    let headers = req.headers_mut();
    headers.insert(
        http::header::HOST,
        http::HeaderValue::from_maybe_shared(raw.slice(14..22)).unwrap(),
    );
    headers.insert(
        "x-v",
        http::HeaderValue::from_maybe_shared(raw.slice(23..24)).unwrap(),
    );
    assert!(!raw.is_unique());
    let out = client(1).encode(req, wire::Added::default(), Instant::now());
    assert!(
        raw.is_unique(),
        "the encoded request still shares the head's buffer"
    );
    let head = std::str::from_utf8(&out.head).unwrap();
    assert_eq!(
        head,
        "GET /orders/1?x=2 HTTP/1.1\r\nhost: upstream\r\nx-v: v\r\n\r\n"
    );
}

/// An upstream that answers as soon as it has a request's head (never, for `None`) and then
/// reads nothing more.
async fn early_answerer(answer: Option<&'static str>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if sock.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                if let Some(answer) = answer {
                    sock.write_all(answer.as_bytes()).await.unwrap();
                }
                // Holds the connection open without reading: the body fills the buffers.
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    port
}

/// A POST of far more than the socket buffers hold.
fn big_upload() -> Request<Full<Bytes>> {
    Request::post("/upload")
        .header("host", "upstream")
        .body(Full::new(Bytes::from(vec![b'x'; 64 << 20])))
        .unwrap()
}

#[tokio::test]
async fn an_answer_before_the_body_is_sent_stops_the_upload_and_closes_the_connection() {
    let port = early_answerer(Some(
        "HTTP/1.1 413 Too Large\r\nContent-Length: 3\r\n\r\nbig",
    ))
    .await;
    let c = with_timeout(port, Duration::from_secs(10));
    // Without watching for the answer, the write would wait for the upstream until the
    // timeout.
    let req = big_upload();
    let started = Instant::now();
    let resp = c.send(req).await.unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(text(resp).await, "big");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        c.pool.idle(),
        0,
        "a connection whose request was cut short was pooled"
    );
}

#[tokio::test]
async fn a_request_body_that_stalls_is_the_clients_timeout() {
    use futures_util::StreamExt;
    let up = upstream(vec![Script::Answer(OK_HELLO)]).await;
    let c = Client::new(ClientConfig {
        body_timeout: Duration::from_millis(100),
        ..client(up.port).config.as_ref().clone()
    });
    // One chunk, then nothing for longer than the body timeout.
    let chunks = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(
        http_body::Frame::data(Bytes::from_static(b"abc")),
    )])
    .chain(futures_util::stream::pending());
    let req = Request::post("/slow")
        .header("host", "upstream")
        .body(StreamBody::new(chunks))
        .unwrap();
    match c.send(req).await {
        Err(ProxyError::ClientBodyTimeout) => {}
        other => panic!(
            "expected the client's timeout, got {:?}",
            other.map(|r| r.status())
        ),
    }
}

#[tokio::test]
async fn any_answer_to_a_request_with_content_closes_the_connection() {
    let up = upstream(vec![Script::Answer(
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno",
    )])
    .await;
    let c = client(up.port);
    let post = Request::post("/p")
        .header("host", "upstream")
        .body(Full::new(Bytes::from_static(b"x")))
        .unwrap();
    assert_eq!(text(c.send(post).await.unwrap()).await, "no");
    assert_eq!(c.pool.idle(), 0);
    // An empty body is no content: the connection stays.
    let post = Request::post("/p")
        .header("host", "upstream")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(text(c.send(post).await.unwrap()).await, "no");
    // A GET reuses it.
    assert_eq!(text(c.send(get("/g")).await.unwrap()).await, "no");
    assert_eq!(c.pool.idle(), 1);
    assert_eq!(up.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn fills_to_be_stored_take_only_a_quiet_connection() {
    let up = upstream(vec![Script::Answer(OK_HELLO)]).await;
    // `client` has fill_quiet = 50ms.
    let c = client(up.port);
    assert_eq!(text(c.send(get("/1")).await.unwrap()).await, "hello");
    // Just used: a fill does not take it, and connects anew.
    let fill = c.encode(get("/fill"), wire::Added::default(), Instant::now());
    let resp = c.send_encoded(fill.to_be_stored()).await.unwrap();
    assert_eq!(text(resp).await, "hello");
    assert_eq!(up.connections.load(Ordering::SeqCst), 2);
    assert_eq!(c.pool.idle(), 2);
    // Once both have been quiet for 50ms, a fill takes one of them.
    tokio::time::sleep(Duration::from_millis(60)).await;
    let fill = c.encode(get("/fill"), wire::Added::default(), Instant::now());
    let resp = c.send_encoded(fill.to_be_stored()).await.unwrap();
    assert_eq!(text(resp).await, "hello");
    assert_eq!(up.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_idle_connection_that_turned_readable_is_never_used() {
    let up = upstream(vec![Script::Split(
        OK_HELLO,
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nSTRAY",
    )])
    .await;
    let c = client(up.port);
    // The first part is the whole answer; the rest comes 20ms later, unasked.
    assert_eq!(text(c.send(get("/1")).await.unwrap()).await, "hello");
    assert_eq!(c.pool.idle(), 1);
    let arrived = async {
        loop {
            let stray = {
                let mut idle = c.pool.idle.lock().unwrap();
                idle.back_mut().is_some_and(|(conn, _)| !conn.is_silent())
            };
            if stray {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), arrived)
        .await
        .unwrap();
    // Its stray answer is not read as this request's: a new connection carries it.
    assert_eq!(text(c.send(get("/2")).await.unwrap()).await, "hello");
    assert_eq!(up.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_upstream_that_neither_reads_the_body_nor_answers_is_a_timeout() {
    let port = early_answerer(None).await;
    let c = with_timeout(port, Duration::from_millis(300));
    let req = big_upload();
    let started = Instant::now();
    match c.send(req).await {
        Err(ProxyError::UpstreamTimeout) => {}
        other => panic!("expected a timeout, got {:?}", other.map(|r| r.status())),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
}
