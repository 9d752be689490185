//! The `sidecache` binary: `check` lists every problem; `--version`; the shipped configs pass.

use std::process::Command;

fn sidecache(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sidecache"))
        .args(args)
        .env_remove("SIDECACHE_CONFIG")
        .output()
        .unwrap()
}

#[test]
fn check_lists_every_problem_and_fails() {
    let dir = std::env::temp_dir().join(format!("sidecache-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        r#"
[listen]
proxy = "not-an-address"
[upstream]
url = "ftp://backend"
timeout = "soon"
[l1]
max_bytes = "a lot"
[[route]]
name = "group"
match = "GET /api/groups/{group}/{symbol}"
ttl = "60"
tags = ["group:{grp}"]
scope = "sometimes"
[[route]]
name = "group"
match = "PUT /x"
typo_key = true
"#,
    )
    .unwrap();
    let out = sidecache(&["check", "--config", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for key in [
        "listen.proxy",
        "upstream.url",
        "upstream.timeout",
        "l1.max_bytes",
        "route[0] (group).ttl",
        "route[0] (group).tags[0]",
        "route[0] (group).scope",
        "route[1].typo_key: unknown field `typo_key`",
        // The unknown key no longer hides the rest of its route.
        "route[1] (group).match: only GET routes are cached",
    ] {
        assert!(err.contains(key), "`{key}` missing from:\n{err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn shipped_configs_pass_check() {
    let out = sidecache(&["check"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = |d: &str| std::fs::read_dir(format!("{}/{d}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let examples: Vec<_> = dir("config/examples").collect();
    assert!(examples.len() >= 4, "the seeds' example configs");
    for entry in dir("config").chain(examples) {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let out = sidecache(&["check", "--config", path.to_str().unwrap()]);
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

#[test]
fn version_is_printed() {
    let out = sidecache(&["--version"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn log_format_flag_is_validated() {
    let out = sidecache(&["--log-format", "yaml", "check"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("possible values: human, json"));
    assert!(sidecache(&["--log-format", "json", "check"])
        .status
        .success());
}

#[test]
fn redis_passwords_are_never_printed() {
    use std::io::{BufRead, BufReader};
    use std::sync::mpsc;
    use std::time::Duration;

    let dir = std::env::temp_dir().join(format!("sidecache-redact-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // `check` of a URL that does not parse names it without the password.
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[upstream]\nurl = \"http://127.0.0.1:1\"\n[l2]\nurl = \"redis://app:s3cr3t-pw@redis:notaport\"\n",
    )
    .unwrap();
    let out = sidecache(&["check", "--config", bad.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("l2.url: `redis://app:***@redis:notaport`"),
        "{err}"
    );
    assert!(!err.contains("s3cr3t-pw"), "{err}");

    // A running sidecache logs its Redis target when it connects (and at every failed retry).
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    let good = dir.join("good.toml");
    std::fs::write(
        &good,
        format!(
            "[listen]\nproxy = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\
             [upstream]\nurl = \"http://127.0.0.1:1\"\n\
             [l2]\nurl = \"redis://app:s3cr3t-pw@127.0.0.1:{port}\"\nconnect_timeout = \"100ms\"\n"
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sidecache"))
        .args(["--config", good.to_str().unwrap()])
        .env("SIDECACHE_LOG", "debug")
        .env("SIDECACHE_REDIS_PASSWORD", "env-s3cr3t")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let logs = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(logs).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => {
                let done = line.contains("Redis connect");
                seen.push(line);
                if done {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    child.kill().unwrap();
    let _ = child.wait();
    let log = seen.join("\n");
    assert!(
        log.contains("Redis connect"),
        "no Redis target logged:\n{log}"
    );
    assert!(log.contains("redis://app:***@127.0.0.1"), "{log}");
    assert!(!log.contains("s3cr3t"), "a password was logged:\n{log}");
    std::fs::remove_dir_all(&dir).unwrap();
}
