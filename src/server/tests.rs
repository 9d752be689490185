//! The slow-loris bound against a real listener: a raw client that sends heads as slowly as
//! the test wants.

use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

/// A server answering every request with "ok"; its address, and the sender that stops it.
async fn start(header_read_timeout: Duration) -> (SocketAddr, watch::Sender<bool>) {
    let handler = |_req: Request<Incoming>, _peer: SocketAddr| async {
        Response::new(Full::new(Bytes::from_static(b"ok")))
    };
    let (addr, stop, _) = start_with(header_read_timeout, Duration::from_secs(1), handler).await;
    (addr, stop)
}

/// [`serve`] on a port of its own with `handler`: its address, the sender that stops it, and
/// the task that ends when `serve` returns.
async fn start_with<H, F>(
    header_read_timeout: Duration,
    grace: Duration,
    handler: H,
) -> (SocketAddr, watch::Sender<bool>, tokio::task::JoinHandle<()>)
where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stop_rx) = watch::channel(false);
    let settings = ConnSettings {
        max_header_bytes: 8192,
        header_read_timeout,
        ..ConnSettings::default()
    };
    let server = tokio::spawn(serve(listener, settings, handler, stop_rx, grace));
    (addr, stop, server)
}

/// Reads one answer to `REQUEST` (its body is the last two bytes read).
async fn read_answer(sock: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    while !got.ends_with(b"\r\n\r\nok") {
        let n = sock.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8(got).unwrap()
}

/// Waits (at most 10 s) for the server to close `sock`; returns how long that took.
async fn closed_after(sock: &mut TcpStream) -> Duration {
    let started = Instant::now();
    let mut chunk = [0u8; 1024];
    loop {
        let read = tokio::time::timeout(Duration::from_secs(10), sock.read(&mut chunk))
            .await
            .expect("the server closes the connection");
        if matches!(read, Ok(0) | Err(_)) {
            return started.elapsed();
        }
    }
}

#[tokio::test]
async fn a_head_that_never_completes_is_cut_off() {
    let (addr, _stop) = start(Duration::from_millis(300)).await;
    let mut sock = TcpStream::connect(addr).await.unwrap();
    sock.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let waited = closed_after(&mut sock).await;
    assert!(
        waited >= Duration::from_millis(250),
        "closed after {waited:?}"
    );
}

#[tokio::test]
async fn the_bound_starts_again_with_every_head() {
    let (addr, _stop) = start(Duration::from_millis(600)).await;
    let mut sock = TcpStream::connect(addr).await.unwrap();
    // Four requests over 1.2 s on one connection, each head whole, 300 ms after the answer
    // before it: all are answered, though together they take longer than the bound.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        sock.write_all(REQUEST).await.unwrap();
        assert!(read_answer(&mut sock).await.starts_with("HTTP/1.1 200"));
    }
    // The bound still holds for the next head, counted from the last answer.
    sock.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    let waited = closed_after(&mut sock).await;
    assert!(
        waited >= Duration::from_millis(400),
        "closed after {waited:?}"
    );
}

#[tokio::test]
async fn stop_closes_idle_connections_at_once_and_lets_requests_in_flight_finish() {
    let slow_started = std::sync::Arc::new(tokio::sync::Notify::new());
    let started = slow_started.clone();
    let handler = move |req: Request<Incoming>, _peer: SocketAddr| {
        let started = started.clone();
        async move {
            if req.uri().path() == "/slow" {
                started.notify_one();
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Response::new(Full::new(Bytes::from_static(b"ok")))
        }
    };
    let grace = Duration::from_secs(5);
    let (addr, stop, server) = start_with(Duration::from_secs(5), grace, handler).await;

    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(REQUEST).await.unwrap();
    read_answer(&mut idle).await;
    let mut busy = TcpStream::connect(addr).await.unwrap();
    busy.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    slow_started.notified().await;

    let stopped_at = Instant::now();
    stop.send(true).unwrap();
    assert!(
        closed_after(&mut idle).await < Duration::from_secs(1),
        "an idle keep-alive connection waits for nothing"
    );
    assert!(read_answer(&mut busy).await.starts_with("HTTP/1.1 200"));
    tokio::time::timeout(grace, server)
        .await
        .expect("serve returns once the last connection ended, before the grace is over")
        .unwrap();
    assert!(stopped_at.elapsed() < Duration::from_secs(2));
}
