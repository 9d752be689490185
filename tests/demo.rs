//! `sidecache demo` does what it tells a new user to try: every step of its printed script,
//! sent as the same requests to a real demo (the embedded default config and the example
//! backend, on free ports), has the outcome the script promises; and after that traffic the
//! admin status page's numbers are those of `/metrics`.

mod support;

use std::collections::BTreeMap;

use bytes::Bytes;
use http::Method;
use sidecache::config::{Config, EMBEDDED};
use sidecache::demo::backend::group_etag;
use sidecache::demo::script::{self, Call};
use sidecache::demo::Demo;
use support::{client, metric, send, Resp};

async fn start_demo() -> Demo {
    let mut config = Config::parse(EMBEDDED).unwrap();
    config.listen.proxy = "127.0.0.1:0".parse().unwrap();
    config.listen.admin = "127.0.0.1:0".parse().unwrap();
    config.upstream.url = "http://127.0.0.1:0".parse().unwrap();
    Demo::start(config).await.unwrap()
}

/// Sends `call` as printed (each repetition of a burst), returning every response.
async fn run(demo: &Demo, call: &Call) -> Vec<Resp> {
    let client = client();
    let headers: Vec<(&str, &str)> = call.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut out = Vec::new();
    for _ in 0..call.repeat.max(1) {
        out.push(
            send(
                &client,
                demo.running.proxy_addr,
                Method::from_bytes(call.method.as_bytes()).unwrap(),
                call.path,
                &headers,
                Bytes::from_static(call.body.unwrap_or("").as_bytes()),
            )
            .await,
        );
    }
    out
}

fn json(r: &Resp) -> serde_json::Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.text()))
}

#[tokio::test]
async fn every_step_of_the_printed_script_does_what_it_says() {
    let demo = start_demo().await;
    let printed = demo.script();
    let mut seen = BTreeMap::new();
    for step in script::steps() {
        let mut responses = Vec::new();
        for call in &step.calls {
            assert!(
                printed.contains(&call.curl(demo.running.proxy_addr)),
                "the script does not print {call:?}:\n{printed}"
            );
            responses.extend(run(&demo, call).await);
        }
        let cs = |i: usize| responses[i].header("cache-status").to_string();
        match step.name {
            "miss_then_hit" => {
                let (miss, hit) = (&responses[0], &responses[1]);
                assert_eq!(miss.status, 200, "{}", miss.text());
                assert!(
                    cs(0).contains("fwd=miss") && cs(0).contains("stored"),
                    "{}",
                    cs(0)
                );
                assert_eq!(hit.status, 200);
                assert!(cs(1).starts_with("sidecache; hit"), "{}", cs(1));
                assert!(hit.header("age").parse::<u64>().is_ok(), "no Age");
                assert_eq!(miss.body, hit.body);
                assert_eq!(json(hit)["symbol"], "EURUSD");
            }
            "not_modified" => {
                let r = &responses[0];
                assert_eq!(r.status, 304, "{:?}", r.headers);
                assert!(r.body.is_empty());
                assert_eq!(r.header("etag"), group_etag("VIP", "EURUSD"));
                assert!(cs(0).starts_with("sidecache; hit"), "{}", cs(0));
            }
            "read_your_write" => {
                assert!(cs(0).contains("fwd=miss"), "{}", cs(0));
                assert_eq!(json(&responses[0])["balance"], "1000.00");
                assert!(cs(1).starts_with("sidecache; hit"), "{}", cs(1));
                assert_eq!(responses[0].body, responses[1].body);
                assert_eq!(responses[2].status, 200, "{}", responses[2].text());
                assert_eq!(json(&responses[2])["balance"], "1100.00");
                assert!(cs(3).contains("fwd=miss"), "after the deposit: {}", cs(3));
                assert_eq!(json(&responses[3])["balance"], "1100.00");
            }
            "identity" => {
                let (bob_on_alice, bob, anonymous) = (&responses[0], &responses[1], &responses[2]);
                assert_eq!(bob_on_alice.status, 403, "{}", bob_on_alice.text());
                assert!(!bob_on_alice.text().contains("balance\":"));
                assert_eq!(bob.status, 200);
                assert_eq!(json(bob)["user_id"], "43");
                assert_eq!(json(bob)["balance"], "250.00");
                assert_eq!(anonymous.status, 401);
                assert!(cs(2).contains("fwd=bypass"), "{}", cs(2));
            }
            "rate_limit" => {
                let burst = &responses[..script::BURST as usize];
                let codes: Vec<u16> = burst.iter().map(|r| r.status).collect();
                // Burst 10: the first ten pass; the loop is far faster than the refill of
                // one every 100ms, so most of the rest are denied.
                assert!(codes[..10].iter().all(|c| *c == 200), "{codes:?}");
                let denied = codes.iter().filter(|c| **c == 429).count();
                assert!(denied >= 3, "{codes:?}");
                for r in &responses {
                    assert_eq!(r.header("ratelimit-policy"), "\"prices\";q=10;w=1");
                    assert!(
                        r.header("ratelimit").starts_with("\"prices\";r="),
                        "{:?}",
                        r.headers
                    );
                    if r.status == 429 {
                        assert!(r.header("retry-after").parse::<u64>().is_ok());
                    }
                }
            }
            other => panic!("step {other} has no test"),
        }
        seen.insert(step.name, responses.len());
    }
    assert_eq!(seen.len(), 5, "{seen:?}");
}

/// The status page and its JSON: served without a token, self-contained, and the same numbers
/// as `/metrics` after the demo's traffic. (`scripts/admin_page_check.py` checks the page as a
/// browser renders it.)
#[tokio::test]
async fn the_status_page_shows_what_metrics_shows() {
    let demo = start_demo().await;
    for step in script::steps() {
        for call in &step.calls {
            run(&demo, call).await;
        }
    }
    let client = client();
    let admin = demo.running.admin_addr;
    let get = |path: &'static str| send(&client, admin, Method::GET, path, &[], Bytes::new());
    let page = get("/").await;
    assert_eq!(page.status, 200);
    assert!(page.header("content-type").starts_with("text/html"));
    assert!(page
        .header("content-security-policy")
        .contains("default-src 'none'"));
    assert!(page.text().contains("status.json"));
    for external in ["http://", "https://", "src=\"//", "<link"] {
        assert!(
            !page.text().contains(external),
            "the page refers to {external}"
        );
    }
    let status = json(&get("/status.json").await);
    let metrics = get("/metrics").await.text().to_string();
    let routes = status["routes"].as_array().unwrap();
    let names: Vec<&str> = routes
        .iter()
        .map(|r| r["route"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "group",
            "group_symbols",
            "balance",
            "account",
            "price",
            "none"
        ]
    );
    for r in routes {
        let route = r["route"].as_str().unwrap();
        assert_eq!(
            r["requests"].as_f64().unwrap(),
            metric(&metrics, "sidecache_requests_total", &[("route", route)]),
            "{route}"
        );
    }
    assert!(routes[0]["hit_ratio_l1"].as_f64().unwrap() > 0.0);
    assert!(routes[0]["p99_seconds"].as_f64().unwrap() > 0.0);
    assert_eq!(
        status["l1"]["entries"].as_f64().unwrap(),
        metric(&metrics, "sidecache_l1_entries", &[])
    );
    let denied = &[("rule", "prices"), ("outcome", "denied")];
    assert_eq!(
        status["ratelimit"][0]["denied"].as_f64().unwrap(),
        metric(&metrics, "sidecache_ratelimit_decisions_total", denied)
    );
    assert!(status["ratelimit"][0]["denied"].as_f64().unwrap() >= 1.0);
    assert_eq!(
        status["invalidations"]["by_source"]["write"]
            .as_f64()
            .unwrap(),
        metric(
            &metrics,
            "sidecache_invalidations_total",
            &[("source", "write")]
        )
    );
    assert_eq!(status["config"]["valid"], true);
    assert_eq!(status["l2"]["configured"], false);
    assert!(status["process"]["open_fds"].as_f64().unwrap() > 0.0);
}
