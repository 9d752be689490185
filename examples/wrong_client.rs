//! The adversarial origin of `tests/upstream_adversarial.rs` as a process, and a load client
//! that checks every answer against its own request, for `scripts/wrong-client.sh`: the same
//! hostile origin behind sidecache and behind nginx, the same load, wrong answers counted.
//!
//! ```text
//! wrong_client origin PORT (late-dup|early) [nagle]   # serve until killed
//! wrong_client load HOST:PORT CLIENTS REQUESTS        # GETs, one connection per client
//! wrong_client smuggle HOST:PORT ROUNDS               # a POST refused early, then a GET
//! ```
//!
//! Each prints one line: `requests=N wrong=N errors=N` (for `smuggle`, `smuggled` counts the
//! GETs answered with the smuggled request's answer).

#[path = "../tests/support/hostile.rs"]
#[allow(dead_code, unreachable_pub)] // the tests use the rest
mod hostile;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use hostile::{Hostile, Mode};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or_default();
    match arg(0) {
        "origin" => {
            let mode = match arg(2) {
                // As in the issue's measurement: 1 answer in 7 sent again 5 ms later.
                "late-dup" => Mode::LateDuplicate {
                    every: 7,
                    late: Duration::from_millis(5),
                    spread: false,
                },
                "early" => Mode::EarlyAnswer(401),
                other => panic!("unknown mode {other:?}"),
            };
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", arg(1).parse().unwrap()))
                .await
                .unwrap();
            let _origin = Hostile::serve(listener, mode, arg(3) != "nagle");
            std::future::pending::<()>().await;
        }
        "load" => {
            let (clients, requests) = (arg(2).parse().unwrap(), arg(3).parse().unwrap());
            let mut tasks = tokio::task::JoinSet::new();
            for c in 0..clients {
                let target = arg(1).to_string();
                tasks.spawn(async move { client(&target, c, requests).await });
            }
            let (mut wrong, mut errors) = (0, 0);
            for (w, e) in tasks.join_all().await {
                wrong += w;
                errors += e;
            }
            println!(
                "requests={} wrong={wrong} errors={errors}",
                clients * requests
            );
        }
        "smuggle" => {
            let (target, rounds): (&str, usize) = (arg(1), arg(2).parse().unwrap());
            let mut smuggled = 0;
            for i in 0..rounds {
                let body = "GET /smuggled HTTP/1.1\r\nx-request-id: smuggled\r\nauthorization: evil\r\n\r\n";
                let _ = once(
                    target,
                    "POST",
                    &format!("/post/{i}"),
                    &format!("post-{i}"),
                    body,
                )
                .await;
                if let Ok((_, text)) =
                    once(target, "GET", &format!("/get/{i}"), &format!("get-{i}"), "").await
                {
                    if text.contains("\"id\":\"smuggled\"") {
                        smuggled += 1;
                    }
                }
            }
            println!("rounds={rounds} smuggled={smuggled}");
        }
        _ => panic!("usage: wrong_client origin|load|smuggle ..."),
    }
}

/// `requests` GETs on one kept-alive connection (a new one after an error): (wrong, errors).
async fn client(target: &str, c: usize, requests: usize) -> (usize, usize) {
    let (mut wrong, mut errors) = (0, 0);
    let mut conn = None;
    for k in 0..requests {
        let id = format!("{c}-{k}");
        if conn.is_none() {
            conn = connect(target).await;
        }
        let Some(sender) = conn.as_mut() else {
            errors += 1;
            continue;
        };
        match send(sender, target, "GET", &format!("/pass/{id}"), &id, "").await {
            Ok((status, text)) if (200..300).contains(&status) => {
                if !text.contains(&format!("\"id\":\"{id}\"")) {
                    wrong += 1;
                }
            }
            Ok(_) => errors += 1,
            Err(_) => {
                errors += 1;
                conn = None;
            }
        }
    }
    (wrong, errors)
}

type Sender = http1::SendRequest<Full<Bytes>>;

async fn connect(target: &str) -> Option<Sender> {
    let io = TcpStream::connect(target).await.ok()?;
    let (sender, conn) = http1::handshake(TokioIo::new(io)).await.ok()?;
    tokio::spawn(conn);
    Some(sender)
}

async fn send(
    sender: &mut Sender,
    target: &str,
    method: &str,
    path: &str,
    id: &str,
    body: &'static str,
) -> Result<(u16, String), String> {
    sender.ready().await.map_err(|e| e.to_string())?;
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", target)
        .header("x-request-id", id)
        .header("authorization", "user")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

/// One request on a connection of its own (each round's callers are distinct clients).
async fn once(
    target: &str,
    method: &str,
    path: &str,
    id: &str,
    body: &'static str,
) -> Result<(u16, String), String> {
    let mut sender = connect(target).await.ok_or("connect failed")?;
    send(&mut sender, target, method, path, id, body).await
}
