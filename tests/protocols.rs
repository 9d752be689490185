//! Everything an app sends besides plain HTTP/1.1, through real servers: WebSocket tunnels,
//! h2c clients, gRPC-shaped streams to an h2c upstream, trailers both ways. (TLS: `tls.rs`.)

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sidecache::config::Config;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

use support::*;

const RECORD: &str = r#"{"group":"VIP","symbol":"EURUSD"}"#;

/// A config whose `[upstream]` section is `upstream` (TOML lines), plus `extra`.
fn config_with(upstream: &str, extra: &str) -> Config {
    config_full(upstream, "10s", extra)
}

fn config_full(upstream: &str, grace: &str, extra: &str) -> Config {
    Config::parse(&format!(
        r#"
[listen]
proxy = "127.0.0.1:0"
admin = "127.0.0.1:0"
[upstream]
connect_timeout = "1s"
timeout = "3s"
{upstream}
[shutdown]
grace_period = "{grace}"
{extra}
"#
    ))
    .unwrap_or_else(|e| panic!("test config: {e}"))
}

// === WebSocket ===

/// A WebSocket echo origin: echoes text and binary; answers `close-me` by closing itself.
async fn ws_echo_origin() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.to_text().is_ok_and(|t| t == "close-me") {
                        let _ = ws.close(None).await;
                    } else if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

async fn ws_connect(proxy: SocketAddr, path: &str) -> Ws {
    let stream = TcpStream::connect(proxy).await.unwrap();
    let (ws, resp) = tokio_tungstenite::client_async(format!("ws://{proxy}{path}"), stream)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws
}

async fn next_text(ws: &mut Ws) -> String {
    match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => t.to_string(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

async fn ws_sidecache(origin: SocketAddr, grace: &str) -> Sidecache {
    let config = config_full(&format!("url = \"http://{origin}\""), grace, ROUTE_GROUP);
    Sidecache::start_with(config).await
}

#[tokio::test]
async fn websocket_messages_pass_both_ways_and_either_side_closes() {
    let origin = ws_echo_origin().await;
    let sc = ws_sidecache(origin, "10s").await;

    let mut ws = ws_connect(sc.proxy, "/ws/prices").await;
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "hello");
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    match ws.next().await {
        Some(Ok(Message::Binary(b))) => assert_eq!(&b[..], &[0u8, 1, 2, 255]),
        other => panic!("expected binary, got {other:?}"),
    }
    // The client closes: the close handshake goes through and the stream ends.
    ws.close(None).await.unwrap();
    while let Some(Ok(msg)) = ws.next().await {
        assert!(msg.is_close(), "{msg:?}");
    }
    drop(ws);

    // The origin closes.
    let mut ws = ws_connect(sc.proxy, "/ws/prices").await;
    ws.send(Message::text("close-me")).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        Ok(Some(Ok(Message::Close(_)))) => {}
        other => panic!("expected the origin's close, got {other:?}"),
    }
    // The stream then ends (the origin closed its connection); the client closes its own.
    while let Some(Ok(_)) = ws.next().await {}
    drop(ws);

    let m = sc.metrics().await;
    assert_eq!(metric(&m, "sidecache_upgrades_total", &[]), 2.0);
    let closed = eventually(Duration::from_secs(5), async || {
        metric(&sc.metrics().await, "sidecache_tunnels_open", &[]) == 0.0
    })
    .await;
    assert!(closed, "tunnels still counted open");
}

#[tokio::test]
async fn many_concurrent_tunnels_each_get_their_own_messages() {
    let origin = ws_echo_origin().await;
    let sc = ws_sidecache(origin, "10s").await;
    let proxy = sc.proxy;
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            tokio::spawn(async move {
                let mut ws = ws_connect(proxy, &format!("/ws/{i}")).await;
                for n in 0..20 {
                    let text = format!("tunnel {i} message {n}");
                    ws.send(Message::text(text.clone())).await.unwrap();
                    assert_eq!(next_text(&mut ws).await, text);
                }
                ws.close(None).await.unwrap();
                while let Some(Ok(_)) = ws.next().await {}
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        metric(&sc.metrics().await, "sidecache_upgrades_total", &[]),
        40.0
    );
}

#[tokio::test]
async fn shutdown_waits_for_open_tunnels_within_the_grace_period() {
    let origin = ws_echo_origin().await;
    let mut sc = ws_sidecache(origin, "10s").await;
    let mut ws = ws_connect(sc.proxy, "/ws").await;
    let running = sc.running.take().unwrap();
    let started = Instant::now();
    let shutdown = tokio::spawn(running.shutdown());
    // The listener is closed, the tunnel still carries messages.
    let refused = eventually(Duration::from_secs(5), async || {
        TcpStream::connect(sc.proxy).await.is_err()
    })
    .await;
    assert!(refused, "the listener still accepts");
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "still here");
    assert!(!shutdown.is_finished());
    // Its close ends the shutdown, well before the grace period.
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    drop(ws);
    tokio::time::timeout(Duration::from_secs(5), shutdown)
        .await
        .expect("shutdown did not finish after the last tunnel closed")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(8));
}

#[tokio::test]
async fn a_tunnel_still_open_when_the_grace_period_ends_is_closed() {
    let origin = ws_echo_origin().await;
    let mut sc = ws_sidecache(origin, "300ms").await;
    let mut ws = ws_connect(sc.proxy, "/ws").await;
    ws.send(Message::text("one")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "one");
    let running = sc.running.take().unwrap();
    tokio::time::timeout(Duration::from_secs(5), running.shutdown())
        .await
        .expect("shutdown waited past the grace period");
    // The tunnel is gone: the stream ends (or errors) instead of echoing.
    let _ = ws.send(Message::text("two")).await;
    match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        Ok(None | Some(Err(_))) => {}
        Ok(Some(Ok(m))) => assert!(!matches!(m, Message::Text(_)), "echoed after close: {m:?}"),
        Err(_) => panic!("the tunnel was not closed"),
    }
}

#[tokio::test]
async fn a_declined_upgrade_is_an_ordinary_answer() {
    let origin = Origin::start(|req| {
        assert_eq!(req.headers["upgrade"], "websocket");
        Reply::json(r#"{"upgrade":"declined"}"#).status(426)
    })
    .await;
    let sc = Sidecache::start(&origin, "").await;
    let r = sc
        .get_with(
            "/ws",
            &[("connection", "upgrade"), ("upgrade", "websocket")],
        )
        .await;
    assert_eq!(r.status, 426);
    assert_eq!(r.text(), r#"{"upgrade":"declined"}"#);
    // And an Upgrade without `Connection: upgrade` is not an upgrade request: not forwarded.
    let origin = Origin::start(|req| {
        assert!(req.headers.get("upgrade").is_none());
        Reply::json("{}")
    })
    .await;
    let sc = Sidecache::start(&origin, "").await;
    assert_eq!(
        sc.get_with("/x", &[("upgrade", "websocket")]).await.status,
        200
    );
    assert_eq!(
        metric(&sc.metrics().await, "sidecache_upgrades_total", &[]),
        0.0
    );
}

// === h2c on the listener ===

async fn h2_client(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    send
}

async fn h2_get(
    send: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    addr: SocketAddr,
    path: &str,
) -> (StatusCode, String, String) {
    let req = Request::get(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let status = resp.status();
    let cs = resp
        .headers()
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, cs, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn h2c_clients_get_misses_and_hits_keyed_as_http11() {
    let origin = Origin::start(|_| Reply::json(RECORD)).await;
    let sc = Sidecache::start(&origin, ROUTE_GROUP).await;
    let mut h2 = h2_client(sc.proxy).await;
    let (status, cs, body) = h2_get(&mut h2, sc.proxy, "/api/groups/VIP/EURUSD").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, RECORD));
    assert!(cs.contains("fwd=miss"), "{cs}");
    let (_, cs, body) = h2_get(&mut h2, sc.proxy, "/api/groups/VIP/EURUSD").await;
    assert_eq!(body, RECORD);
    assert!(cs.starts_with("sidecache; hit"), "{cs}");
    // The same key over HTTP/1.1: a hit too.
    let r = sc.get("/api/groups/VIP/EURUSD").await;
    assert!(r.header("cache-status").starts_with("sidecache; hit"));
    assert_eq!(origin.hits(), 1);
    // The origin got the :authority as Host.
    assert_eq!(
        origin.requests()[0].headers["host"],
        origin.addr.to_string().as_str()
    );
    // Uncached paths pass through over h2 as well, many streams at once on one connection.
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let mut h2 = h2.clone();
            let proxy = sc.proxy;
            tokio::spawn(async move { h2_get(&mut h2, proxy, &format!("/other/{i}")).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().0, StatusCode::OK);
    }
    assert_eq!(origin.hits(), 21);
}

// === gRPC-shaped stream over an h2c upstream ===

/// An h2c origin shaped like a gRPC server: echoes each request frame at once, then ends with
/// trailers `grpc-status: 0` and what the request's trailers said.
async fn grpc_origin() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<Incoming>| async move {
                    assert_eq!(req.version(), http::Version::HTTP_2);
                    assert_eq!(req.headers()["te"], "trailers");
                    let (tx, rx) =
                        tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(8);
                    let mut body = req.into_body();
                    tokio::spawn(async move {
                        let mut client_trailer = String::from("none");
                        while let Some(Ok(frame)) = body.frame().await {
                            match frame.into_data() {
                                Ok(data) => {
                                    let _ = tx.send(Ok(Frame::data(data))).await;
                                }
                                Err(frame) => {
                                    if let Some(t) = frame.trailers_ref() {
                                        client_trailer = t
                                            .get("x-client-trailer")
                                            .map_or("missing".into(), |v| {
                                                v.to_str().unwrap().to_string()
                                            });
                                    }
                                }
                            }
                        }
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", "0".parse().unwrap());
                        trailers.insert("x-echo-trailer", client_trailer.parse().unwrap());
                        let _ = tx.send(Ok(Frame::trailers(trailers))).await;
                    });
                    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                        rx.recv().await.map(|f| (f, rx))
                    });
                    let mut resp = Response::new(StreamBody::new(stream));
                    resp.headers_mut()
                        .insert("content-type", "application/grpc".parse().unwrap());
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_grpc_stream_passes_both_ways_with_its_trailers() {
    let origin = grpc_origin().await;
    let config = config_with(
        &format!("url = \"http://{origin}\"\nprotocol = \"h2c\""),
        ROUTE_GROUP,
    );
    let sc = Sidecache::start_with(config).await;

    let stream = TcpStream::connect(sc.proxy).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(8);
    let body = StreamBody::new(Box::pin(futures_util::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|f| (f, rx)) },
    )));
    let req = Request::post(format!("http://{}/pkg.Prices/Watch", sc.proxy))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .unwrap();
    tx.send(Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\x01a"))))
        .await
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/grpc");
    let mut body = resp.into_body();
    let data =
        |f: Option<Result<Frame<Bytes>, hyper::Error>>| f.unwrap().unwrap().into_data().unwrap();
    // Each message comes back before the next is sent: streaming, not buffering.
    assert_eq!(&data(body.frame().await)[..], b"\0\0\0\0\x01a");
    tx.send(Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\x01b"))))
        .await
        .unwrap();
    assert_eq!(&data(body.frame().await)[..], b"\0\0\0\0\x01b");
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-client-trailer", "sent".parse().unwrap());
    tx.send(Ok(Frame::trailers(trailers))).await.unwrap();
    drop(tx);
    let last = body.frame().await.unwrap().unwrap();
    let trailers = last.into_trailers().expect("trailers at the end");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["x-echo-trailer"], "sent");
    assert!(body.frame().await.is_none());

    // A plain HTTP/1.1 client's request goes to the h2c upstream as well.
    let r = sc
        .request(Method::POST, "/pkg.Prices/Once", &[], "\0\0\0\0\x01c")
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, Bytes::from_static(b"\0\0\0\0\x01c"));
}

// === Trailers through an HTTP/1.1 upstream ===

/// An HTTP/1.1 origin that answers each request with a chunked body `pong` and trailers
/// (named in `Trailer`): `grpc-status: 0` and `x-echo`, the request's `x-client-trailer`.
async fn h1_trailer_origin() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<Incoming>| async move {
                    assert_eq!(req.version(), http::Version::HTTP_11);
                    let collected = req.into_body().collect().await.unwrap();
                    let echo = collected
                        .trailers()
                        .and_then(|t| t.get("x-client-trailer"))
                        .map_or("none".to_string(), |v| v.to_str().unwrap().to_string());
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", "0".parse().unwrap());
                    trailers.insert("x-echo", echo.parse().unwrap());
                    let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
                        Ok(Frame::data(Bytes::from_static(b"pong"))),
                        Ok(Frame::trailers(trailers)),
                    ];
                    let mut resp =
                        Response::new(StreamBody::new(futures_util::stream::iter(frames)));
                    resp.headers_mut()
                        .insert("trailer", "grpc-status, x-echo".parse().unwrap());
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

type Frames = futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>;

fn body_with_trailer(value: &'static str) -> StreamBody<Frames> {
    let mut t = http::HeaderMap::new();
    t.insert("x-client-trailer", value.parse().unwrap());
    StreamBody::new(futures_util::stream::iter(vec![
        Ok(Frame::data(Bytes::from_static(b"ping"))),
        Ok(Frame::trailers(t)),
    ]))
}

/// The body's data and its trailers.
async fn data_and_trailers(body: Incoming) -> (Bytes, http::HeaderMap) {
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned().unwrap_or_default();
    (collected.to_bytes(), trailers)
}

#[tokio::test]
async fn trailers_pass_both_ways_through_an_http11_upstream() {
    let origin = h1_trailer_origin().await;
    let sc = Sidecache::start_with(config_with(&format!("url = \"http://{origin}\""), "")).await;

    // An h2 client (gRPC-like).
    let stream = TcpStream::connect(sc.proxy).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::post(format!("http://{}/rpc", sc.proxy))
        .header("te", "trailers")
        .body(body_with_trailer("from-h2"))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let (data, trailers) = data_and_trailers(resp.into_body()).await;
    assert_eq!(&data[..], b"pong");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["x-echo"], "from-h2");

    // An HTTP/1.1 client that asks for trailers and sends its own.
    let stream = TcpStream::connect(sc.proxy).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::post("/rpc")
        .header("host", "app")
        .header("te", "trailers")
        .header("connection", "te")
        .header("trailer", "x-client-trailer")
        .body(body_with_trailer("from-h1"))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let (data, trailers) = data_and_trailers(resp.into_body()).await;
    assert_eq!(&data[..], b"pong");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["x-echo"], "from-h1");
}

#[tokio::test]
async fn a_declined_upgrade_leaves_no_connection_to_reuse() {
    // An origin that answers every request normally (and so declines every upgrade): after an
    // upgrade request, whatever it answered, its connection is not used again.
    let origin = hostile::Hostile::start(hostile::Mode::Honest).await;
    let sc = Sidecache::start_with(support::config(&origin.url(), "")).await;
    let upgrade = [("connection", "upgrade"), ("upgrade", "websocket")];
    assert_eq!(sc.get_with("/ws/1", &upgrade).await.status, 200);
    assert_eq!(sc.get_with("/ws/2", &upgrade).await.status, 200);
    assert_eq!(origin.connections(), 2);
    // Ordinary requests still share one kept-alive connection.
    assert_eq!(sc.get("/a").await.status, 200);
    assert_eq!(sc.get("/b").await.status, 200);
    assert_eq!(origin.connections(), 3);
}

#[tokio::test]
async fn an_h2c_request_head_over_max_header_bytes_never_reaches_the_origin() {
    let origin = Origin::start(|_| Reply::json("{}")).await;
    // The default limit (64 KiB).
    let sc = Sidecache::start(&origin, "").await;
    let mut h2 = h2_client(sc.proxy).await;
    let big = "x".repeat(80 * 1024);
    let req = Request::get(format!("http://{}/big", sc.proxy))
        .header("x-big", big.as_str())
        .body(Full::new(Bytes::new()))
        .unwrap();
    // h2 answers 431 itself, as hyper's HTTP/1.1 parser does.
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(origin.hits(), 0);
    // A head within the limit passes.
    let mut h2 = h2_client(sc.proxy).await;
    assert_eq!(h2_get(&mut h2, sc.proxy, "/small").await.0, StatusCode::OK);
}
