//! Running it as a sidecar: config reload (file change and SIGHUP) and drain on shutdown,
//! in-process and through the real binary.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use http::Method;
use sidecache::app::App;
use sidecache::config::Config;
use support::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sidecache-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const PRICE_ROUTE: &str =
    "[[route]]\nname = \"price\"\nmatch = \"GET /api/prices/{symbol}\"\nttl = \"1h\"\n";

/// Swaps in a new file whole, as a ConfigMap update does. Written in place, the poller can read
/// it truncated: seen in CI, an empty read rejected on the way to the good file, which then
/// made the wait for the bad file's rejection end early.
fn replace_file(file: &std::path::Path, text: &str) {
    let next = file.with_extension("next");
    std::fs::write(&next, text).unwrap();
    std::fs::rename(&next, file).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_config_file_is_reloaded_and_a_bad_one_keeps_the_old() {
    let origin = Origin::start(|_| Reply::json("{}")).await;
    let dir = temp_dir("reload");
    let file = dir.join("sidecache.toml");
    let base = format!(
        "[listen]\nproxy = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n[upstream]\nurl = \"{}\"\n[reload]\ninterval = \"50ms\"\n{ROUTE_GROUP}",
        origin.url()
    );
    std::fs::write(&file, &base).unwrap();
    let config = Config::load(Some(&file)).unwrap();
    let running = App::build(config)
        .reload_from(file.clone())
        .start()
        .await
        .unwrap();
    let client = client();
    let get = async |path: &str| {
        send(
            &client,
            running.proxy_addr,
            Method::GET,
            path,
            &[],
            Default::default(),
        )
        .await
    };
    let metrics = async || {
        send(
            &client,
            running.admin_addr,
            Method::GET,
            "/metrics",
            &[],
            Default::default(),
        )
        .await
        .text()
        .to_string()
    };

    get("/api/prices/EURUSD").await;
    assert!(
        get("/api/prices/EURUSD")
            .await
            .headers
            .get("cache-status")
            .is_none(),
        "no price route yet"
    );

    replace_file(&file, &format!("{base}{PRICE_ROUTE}"));
    let reloaded = eventually(Duration::from_secs(5), async || {
        get("/api/prices/EURUSD").await;
        get("/api/prices/EURUSD")
            .await
            .header("cache-status")
            .starts_with("sidecache; hit")
    })
    .await;
    assert!(reloaded, "the new route was not picked up");
    assert_eq!(
        metric(
            &metrics().await,
            "sidecache_config_reloads_total",
            &[("result", "applied")]
        ),
        1.0
    );

    // A broken file is refused; the running config (with the price route) stays.
    replace_file(
        &file,
        &format!("{base}{PRICE_ROUTE}[[route]]\nname = \"bad\"\nttl = \"soon\"\n"),
    );
    let refused = eventually(Duration::from_secs(5), async || {
        metric(
            &metrics().await,
            "sidecache_config_reloads_total",
            &[("result", "rejected")],
        ) == 1.0
    })
    .await;
    assert!(refused);
    assert_eq!(metric(&metrics().await, "sidecache_config_valid", &[]), 0.0);
    assert!(get("/api/prices/EURUSD")
        .await
        .header("cache-status")
        .starts_with("sidecache; hit"));
    // Fixing it applies again.
    replace_file(&file, &base);
    let fixed = eventually(Duration::from_secs(5), async || {
        metric(&metrics().await, "sidecache_config_valid", &[]) == 1.0
    })
    .await;
    assert!(fixed);
    assert!(
        get("/api/prices/GBPUSD")
            .await
            .headers
            .get("cache-status")
            .is_none(),
        "route removed again"
    );
    running.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_fails_readiness_first_and_cuts_no_request_in_flight() {
    let origin = Origin::start(|_| Reply::json("slow").delay(Duration::from_millis(600))).await;
    let mut cfg = config(&origin.url(), ROUTE_GROUP);
    cfg.shutdown.drain_delay = Duration::from_millis(400);
    let sc = Sidecache::start_with(cfg).await;
    let proxy = sc.proxy;
    let in_flight: Vec<_> = (0..5)
        .map(|i| {
            tokio::spawn(async move {
                send(
                    &client(),
                    proxy,
                    Method::GET,
                    &format!("/slow/{i}"),
                    &[],
                    Default::default(),
                )
                .await
            })
        })
        .collect();
    assert!(eventually(Duration::from_secs(5), async || origin.hits() == 5).await);
    let mut sc = sc;
    let running = sc.running.take().unwrap();
    let stop = tokio::spawn(running.shutdown());
    // Readiness fails at once...
    assert!(
        eventually(Duration::from_secs(2), async || sc
            .admin_get("/readyz")
            .await
            .status
            == 503)
        .await
    );
    // ...while the listener still takes new requests during drain_delay.
    let late = send(
        &client(),
        proxy,
        Method::GET,
        "/late",
        &[],
        Default::default(),
    )
    .await;
    assert_eq!(late.status, 200);
    for t in in_flight {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200, "a request in flight was cut");
        assert_eq!(r.text(), "slow");
    }
    stop.await.unwrap();
    assert!(
        tokio::net::TcpStream::connect(proxy).await.is_err(),
        "listener closed after the drain"
    );
}

/// The real binary with a config file; its stderr is drained so it never blocks.
struct Binary {
    child: Child,
    proxy: u16,
    admin: u16,
}

impl Binary {
    fn start(file: &std::path::Path, proxy: u16, admin: u16) -> Binary {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sidecache"))
            .args(["--config", file.to_str().unwrap()])
            .env_remove("SIDECACHE_CONFIG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || for _ in BufReader::new(stderr).lines() {});
        Binary {
            child,
            proxy,
            admin,
        }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_reloads_on_sighup_and_drains_on_sigterm() {
    let origin = Origin::start(|req| {
        let r = Reply::json("{}");
        if req.uri.starts_with("/slow") {
            r.delay(Duration::from_millis(500))
        } else {
            r
        }
    })
    .await;
    let dir = temp_dir("sighup");
    let file = dir.join("sidecache.toml");
    let (proxy, admin) = (free_port(), free_port());
    let base = format!(
        "[listen]\nproxy = \"127.0.0.1:{proxy}\"\nadmin = \"127.0.0.1:{admin}\"\n[upstream]\nurl = \"{}\"\n[reload]\ninterval = \"0s\"\n[shutdown]\ndrain_delay = \"200ms\"\ngrace_period = \"5s\"\n{ROUTE_GROUP}",
        origin.url()
    );
    std::fs::write(&file, &base).unwrap();
    let mut bin = Binary::start(&file, proxy, admin);
    let client = client();
    let admin_addr = format!("127.0.0.1:{}", bin.admin).parse().unwrap();
    let proxy_addr: std::net::SocketAddr = format!("127.0.0.1:{}", bin.proxy).parse().unwrap();
    let up = eventually(Duration::from_secs(10), async || {
        tokio::net::TcpStream::connect(admin_addr).await.is_ok()
            && send(
                &client,
                admin_addr,
                Method::GET,
                "/readyz",
                &[],
                Default::default(),
            )
            .await
            .status
                == 200
    })
    .await;
    assert!(up, "the binary never became ready");

    // Polling is off: the new file only applies on SIGHUP.
    std::fs::write(&file, format!("{base}{PRICE_ROUTE}")).unwrap();
    bin.signal("-HUP");
    let reloaded = eventually(Duration::from_secs(5), async || {
        let m = send(
            &client,
            admin_addr,
            Method::GET,
            "/metrics",
            &[],
            Default::default(),
        )
        .await;
        metric(
            m.text(),
            "sidecache_config_reloads_total",
            &[("result", "applied")],
        ) == 1.0
    })
    .await;
    assert!(reloaded, "SIGHUP did not reload");
    send(
        &client,
        proxy_addr,
        Method::GET,
        "/api/prices/X",
        &[],
        Default::default(),
    )
    .await;
    let hit = send(
        &client,
        proxy_addr,
        Method::GET,
        "/api/prices/X",
        &[],
        Default::default(),
    )
    .await;
    assert!(hit.header("cache-status").starts_with("sidecache; hit"));

    // SIGTERM with a request in flight: it completes, then the process exits cleanly.
    let before = origin.hits();
    let slow = tokio::spawn(async move {
        send(
            &support::client(),
            proxy_addr,
            Method::GET,
            "/slow/1",
            &[],
            Default::default(),
        )
        .await
    });
    assert!(eventually(Duration::from_secs(5), async || origin.hits() > before).await);
    bin.signal("-TERM");
    let r = slow.await.unwrap();
    assert_eq!(r.status, 200, "SIGTERM cut a request in flight");
    let status = tokio::task::spawn_blocking(move || {
        let s = bin.child.wait().unwrap();
        drop(bin);
        s
    })
    .await
    .unwrap();
    assert!(status.success(), "exit status {status}");
    std::fs::remove_dir_all(&dir).unwrap();
}
