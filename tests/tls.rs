//! TLS, through real servers: HTTPS upstreams with certificates made by the test (rcgen),
//! mutual TLS, HTTP/2 over TLS with ALPN, and L2 over TLS (`redis-server --tls-port`).
#![cfg(feature = "tls")]

#[path = "support/tls.rs"]
mod pki;
mod support;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sidecache::config::Config;
use tokio::net::TcpListener;

use pki::{HttpsOrigin, Pki};
use support::redis::{free_port, RedisServer};
use support::*;

/// A config whose `[upstream]` section is `upstream` (TOML lines), plus `extra`.
fn config_with(upstream: &str, extra: &str) -> Config {
    Config::parse(&format!(
        r#"
[listen]
proxy = "127.0.0.1:0"
admin = "127.0.0.1:0"
[upstream]
connect_timeout = "1s"
timeout = "3s"
{upstream}
{extra}
"#
    ))
    .unwrap_or_else(|e| panic!("test config: {e}"))
}

// === HTTPS upstreams ===

fn https_upstream(port: u16, extra: &str) -> String {
    format!("url = \"https://localhost:{port}\"\n{extra}")
}

#[tokio::test]
async fn an_https_upstream_is_verified_with_ca_file_and_pooled() {
    let pki = Pki::new();
    let origin = HttpsOrigin::start(pki.server_config(false, &[b"http/1.1"])).await;
    let config = config_with(
        &https_upstream(origin.port, &format!("ca_file = \"{}\"", pki.ca.display())),
        ROUTE_GROUP,
    );
    let sc = Sidecache::start_with(config).await;
    for i in 0..5 {
        let r = sc.get(&format!("/plain/{i}")).await;
        assert_eq!(
            (r.status, r.text()),
            (200, format!("secure /plain/{i}").as_str())
        );
    }
    // Sequential requests reuse one TLS connection (the pool's rules hold over TLS).
    assert_eq!(origin.connections(), 1);
    let r = sc.get("/api/groups/VIP/EURUSD").await;
    assert_eq!(r.text(), "secure /api/groups/VIP/EURUSD");
    let r = sc.get("/api/groups/VIP/EURUSD").await;
    assert!(r.header("cache-status").starts_with("sidecache; hit"));
    assert_eq!(origin.requests(), 6);
}

#[tokio::test]
async fn an_unverifiable_certificate_is_a_502_naming_upstream_tls() {
    let pki = Pki::new();
    let origin = HttpsOrigin::start(pki.server_config(false, &[b"http/1.1"])).await;
    // No ca_file: the test CA is not among the system roots.
    let sc = Sidecache::start_with(config_with(&https_upstream(origin.port, ""), "")).await;
    let r = sc.get("/x").await;
    assert_eq!(r.status, 502);
    assert!(
        r.text().contains(r#""error":"upstream_tls""#),
        "{}",
        r.text()
    );
    assert_eq!(origin.requests(), 0);
    // The right CA but the wrong name: refused as well.
    let config = config_with(
        &https_upstream(
            origin.port,
            &format!(
                "ca_file = \"{}\"\ntls_server_name = \"other.example\"",
                pki.ca.display()
            ),
        ),
        "",
    );
    let sc = Sidecache::start_with(config).await;
    let r = sc.get("/x").await;
    assert_eq!(r.status, 502);
    assert!(r.text().contains("upstream_tls"), "{}", r.text());
    assert_eq!(origin.requests(), 0);
}

#[tokio::test]
async fn mutual_tls_presents_the_client_certificate() {
    let pki = Pki::new();
    let origin = HttpsOrigin::start(pki.server_config(true, &[b"http/1.1"])).await;
    let ca = format!("ca_file = \"{}\"", pki.ca.display());
    let without = Sidecache::start_with(config_with(&https_upstream(origin.port, &ca), "")).await;
    let r = without.get("/x").await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(origin.requests(), 0);
    let with = Sidecache::start_with(config_with(
        &https_upstream(
            origin.port,
            &format!(
                "{ca}\ncert_file = \"{}\"\nkey_file = \"{}\"",
                pki.client_cert.display(),
                pki.client_key.display()
            ),
        ),
        "",
    ))
    .await;
    let r = with.get("/x").await;
    assert_eq!((r.status, r.text()), (200, "secure /x"));
}

#[tokio::test]
async fn an_h2_upstream_over_tls_is_negotiated_with_alpn() {
    let pki = Pki::new();
    let config = pki.server_config(false, &[b"h2"]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = service_fn(|req: Request<Incoming>| async move {
                    let v = format!("{:?} {}", req.version(), req.uri().path());
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(v))))
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    let sc = Sidecache::start_with(config_with(
        &https_upstream(
            port,
            &format!("protocol = \"h2\"\nca_file = \"{}\"", pki.ca.display()),
        ),
        "",
    ))
    .await;
    let r = sc.get("/over/h2").await;
    assert_eq!((r.status, r.text()), (200, "HTTP/2.0 /over/h2"));
}

#[test]
fn check_refuses_missing_or_mismatched_certificate_files() {
    let pki = Pki::new();
    let text = |upstream: &str| {
        format!(
            "[listen]\nproxy = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n[upstream]\n{upstream}\n"
        )
    };
    let err = Config::parse(&text(
        "url = \"https://localhost:1\"\nca_file = \"/nonexistent/ca.pem\"\ncert_file = \"/nonexistent/c.pem\"",
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("upstream.ca_file"), "{err}");
    assert!(
        err.contains("upstream.key_file: required with cert_file"),
        "{err}"
    );
    // A key that is not the certificate's.
    let err = Config::parse(&text(&format!(
        "url = \"https://localhost:1\"\ncert_file = \"{}\"\nkey_file = \"{}\"",
        pki.client_cert.display(),
        pki.server_key.display()
    )))
    .unwrap_err()
    .to_string();
    assert!(err.contains("upstream.key_file"), "{err}");
    // TLS files on a plain URL, h2 without TLS.
    let err = Config::parse(&text(&format!(
        "url = \"http://localhost:1\"\nca_file = \"{}\"\nprotocol = \"h2\"",
        pki.ca.display()
    )))
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("upstream.ca_file: only for an https:// url"),
        "{err}"
    );
    assert!(err.contains("upstream.protocol"), "{err}");
    // rediss:// with a CA file that is not PEM.
    let err = Config::parse(&format!(
        "{}[l2]\nurl = \"rediss://localhost:1\"\nca_file = \"{}\"\n",
        text("url = \"http://localhost:1\""),
        pki.server_key.display()
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("l2.ca_file"), "{err}");
    // Accepted: rediss for standalone, cluster and sentinel.
    for l2 in [
        "url = \"rediss://localhost:6380\"".to_string(),
        "cluster = [\"rediss://a:6380\", \"rediss://b:6380\"]".to_string(),
        "url = \"rediss+sentinel://a:26379,b:26379/mymaster\"".to_string(),
    ] {
        Config::parse(&format!(
            "{}[l2]\n{l2}\nca_file = \"{}\"\n",
            text("url = \"http://localhost:1\""),
            pki.ca.display()
        ))
        .unwrap_or_else(|e| panic!("{l2}: {e}"));
    }
}

// === L2 over TLS ===

/// A standalone Redis that also listens with TLS (certificates from `pki`); returns the
/// server and its TLS port.
fn redis_with_tls(pki: &Pki) -> (RedisServer, u16) {
    let tls_port = free_port();
    let lines = [
        format!("tls-port {tls_port}"),
        format!("tls-cert-file {}", pki.server_cert.display()),
        format!("tls-key-file {}", pki.server_key.display()),
        format!("tls-ca-cert-file {}", pki.ca.display()),
        "tls-auth-clients optional".to_string(),
    ];
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    (RedisServer::start_with(&refs), tls_port)
}

#[tokio::test]
async fn l2_hits_and_events_work_over_rediss() {
    let pki = Pki::new();
    let (redis, tls_port) = redis_with_tls(&pki);
    let origin = Origin::start(|req| Reply::json(format!(r#"{{"uri":"{}"}}"#, req.uri))).await;
    let l2 = format!(
        "{}ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        l2_standalone(&format!("rediss://localhost:{tls_port}")),
        pki.ca.display(),
        pki.client_cert.display(),
        pki.client_key.display()
    );
    let extra = format!(
        "{l2}{ROUTE_GROUP}\n[[event]]\nchannel = \"group_updates\"\ntags = [\"group:{{group}}\"]\n"
    );
    let a = Sidecache::start(&origin, &extra).await;
    let b = Sidecache::start(&origin, &extra).await;
    let r = a.get("/api/groups/VIP/EURUSD").await;
    assert!(r.header("cache-status").contains("fwd=miss"));
    let r = b.get("/api/groups/VIP/EURUSD").await;
    assert!(r.header("cache-status").contains("detail=l2"), "{r:?}");
    assert_eq!(origin.hits(), 1);
    // The entry sits in Redis, written over TLS.
    assert!(!redis
        .cli(&["--scan", "--pattern", "sidecache:*"])
        .is_empty());
    // An event published on the plain port reaches both pods' subscriptions (over TLS).
    redis.cli(&["PUBLISH", "group_updates", r#"{"group":"VIP"}"#]);
    let refetched = eventually(Duration::from_secs(5), async || {
        b.get("/api/groups/VIP/EURUSD")
            .await
            .header("cache-status")
            .contains("fwd=miss")
    })
    .await;
    assert!(refetched, "the event did not invalidate over rediss://");
}
