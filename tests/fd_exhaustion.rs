//! Out of file descriptors (EMFILE): the accept loop backs off instead of spinning, logs
//! once a second, counts every failure, and serves again once descriptors are free.
//!
//! A test binary of its own: it exhausts this process's descriptors, which would break any
//! test running beside it.

mod support;

use std::time::Duration;

use sidecache::app::App;
use support::*;

#[tokio::test]
async fn accept_errors_back_off_and_the_proxy_recovers() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    // A current-thread runtime: every task of the test logs through this thread's default.
    let (logs, _guard) = capture_logs();

    let origin = Origin::start(|_| Reply::json("ok")).await;
    let app = App::build(config(&origin.url(), ""));
    let metrics = app.admin.metrics.clone();
    let running = app.start().await.unwrap();
    let errors = || {
        metric(
            &metrics.render(),
            "sidecache_accept_errors_total",
            &[("listener", "proxy")],
        )
    };

    // Every descriptor taken but one, which the client's socket takes: the proxy's accept
    // then fails with EMFILE, and keeps failing while the hoard is held.
    let mut hoard = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        hoard.push(f);
    }
    assert!(!hoard.is_empty());
    hoard.pop();
    let mut client = tokio::net::TcpStream::connect(running.proxy_addr)
        .await
        .expect("a descriptor was left for the client");
    let failing = eventually(Duration::from_secs(5), async || errors() >= 1.0).await;
    // Not a synchronisation: the window over which the failures are counted. Backing off
    // 10, 20, 40, 80, 160 ms fails about 5 times in it; retrying every 10 ms, about 50.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let in_window = errors();
    drop(hoard);
    assert!(
        failing,
        "accept never failed with the descriptors exhausted"
    );
    assert!(
        in_window <= 12.0,
        "{in_window} accept failures in 500 ms: no backoff"
    );
    let lines = lines_with(&logs, "Accept failed");
    assert!(
        (1..=2).contains(&lines.len()),
        "{} lines for {in_window} failures:\n{}",
        lines.len(),
        lines.join("\n")
    );

    // Descriptors are back: the waiting connection is accepted (within the 1 s backoff cap)
    // and served.
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut answer))
        .await
        .expect("served once descriptors were free")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    running.shutdown().await;
}
