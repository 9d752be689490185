//! The Kubernetes deliverables under `k8s/` and the `Dockerfile` agree with the binary:
//!
//! - every `sidecache_*` name in the dashboards, alerts and manifests is a metric family the
//!   binary registers (read from `src/metrics.rs`, cross-checked against `Metrics::render`),
//!   with label names that family has;
//! - every `.toml` under `k8s/` passes `sidecache check` without any `SIDECACHE_*` env var;
//! - the manifests keep the invariants the config relies on: sidecache is a native sidecar
//!   (init container with `restartPolicy: Always`), the config is mounted as a directory (never
//!   `subPath`), probes hit `/readyz` / `/healthz` on the admin port, the ports are the
//!   config's, the termination budget covers `[shutdown]`, the memory limit covers `[l1]`,
//!   the overlays take their Redis password and admin token from Secrets.
//!
//! Schema validation of the rendered manifests is `scripts/validate-k8s.sh`; this test needs
//! nothing but the repository. YAML is read by the small parser at the bottom (the subset the
//! manifests use), so no dependency is added for it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Every file under `dir` (recursively) whose name ends with one of `exts`, sorted.
fn files_under(dir: &Path, exts: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if exts
                .iter()
                .any(|x| path.to_string_lossy().ends_with(&format!(".{x}")))
            {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

// === metric families ======================================================================

#[derive(Debug)]
struct Family {
    histogram: bool,
    labels: Vec<String>,
}

/// The families `src/metrics.rs` registers: every `"sidecache_..."` literal passed straight to a
/// `::new(` (`Opts::new`, `HistogramOpts::new`, `IntGauge::new`...), with the label names of
/// the `&[...]` that follows it in the same statement.
fn registered_families() -> BTreeMap<String, Family> {
    let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/metrics.rs"))
        .expect("src/metrics.rs");
    let mut out = BTreeMap::new();
    let mut from = 0;
    while let Some(at) = src[from..].find("\"sidecache_") {
        let start = from + at + 1;
        let len = src[start..].find('"').expect("closing quote");
        let name = &src[start..start + len];
        from = start + len;
        let before = src[..start - 1].trim_end();
        if !before.ends_with("::new(") {
            continue;
        }
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "odd metric name {name:?} in src/metrics.rs"
        );
        let statement = &src[from..from + src[from..].find(';').unwrap_or(src.len() - from)];
        let labels = statement
            .find("&[")
            .map(|i| {
                let list = &statement[i + 2..i + 2 + statement[i + 2..].find(']').unwrap()];
                list.split(',')
                    .map(|l| l.trim().trim_matches('"').to_string())
                    .filter(|l| !l.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let histogram = before.ends_with("HistogramOpts::new(");
        let old = out.insert(name.to_string(), Family { histogram, labels });
        assert!(old.is_none(), "{name} registered twice in src/metrics.rs");
    }
    out
}

/// The grep above must not miss what the binary prints: every family the running binary
/// shows on `/metrics` after serving a little traffic is in it, with its type. (Families
/// with labels appear only once used, so the grep stays the complete list.)
#[test]
fn metric_family_list_matches_the_running_binary() {
    let families = registered_families();
    assert!(
        families.len() >= 20,
        "only {} families found in src/metrics.rs: {:?}",
        families.len(),
        families.keys()
    );
    let rendered = running_binary_metrics();
    let mut seen = BTreeSet::new();
    for line in rendered.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').unwrap();
        if name.starts_with("process_") {
            // The prometheus crate's process collector, not a `sidecache_` family.
            seen.insert(name);
            continue;
        }
        let family = families.get(name).unwrap_or_else(|| {
            panic!("the binary exports {name}, which this test did not find in src/metrics.rs")
        });
        assert_eq!(family.histogram, kind == "histogram", "{name}: type {kind}");
        seen.insert(name);
    }
    for used in [
        "sidecache_requests_total",
        "sidecache_upstream_errors_total",
    ]
    .iter()
    .chain(&PROCESS_FAMILIES)
    {
        assert!(seen.contains(used), "no {used} after traffic:\n{rendered}");
    }
}

/// Standard process families the binary exports on Linux (the dashboard's CPU, RSS and fds
/// panels and the fds alert read them), among the others of the process collector.
const PROCESS_FAMILIES: [&str; 5] = [
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
];

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.1 GET with `Connection: close`; the whole response as text.
fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// Starts the binary on free ports in front of an upstream that refuses connections, sends
/// two requests (a cached route and a pass-through; both get 502) and returns `/metrics`.
fn running_binary_metrics() -> String {
    use std::io::BufRead;
    let (proxy, admin, dead) = (free_port(), free_port(), free_port());
    let dir = std::env::temp_dir().join(format!("sidecache-k8s-assets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("sidecache.toml");
    std::fs::write(
        &file,
        format!(
            "[listen]\nproxy = \"127.0.0.1:{proxy}\"\nadmin = \"127.0.0.1:{admin}\"\n\
             [upstream]\nurl = \"http://127.0.0.1:{dead}\"\nconnect_timeout = \"200ms\"\n\
             [runtime]\nworker_threads = 1\n\
             [[route]]\nname = \"group\"\nmatch = \"GET /api/groups/{{group}}/{{symbol}}\"\n\
             ttl = \"1h\"\ntags = [\"group:{{group}}\"]\n"
        ),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sidecache"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SIDECACHE_") {
            cmd.env_remove(key);
        }
    }
    let mut child = cmd
        .arg("--config")
        .arg(&file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stderr = child.stderr.take().unwrap();
    let child = Kill(child);
    // Its log lines are the events to poll on; the channel's timeout bounds each wait.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut log = Vec::new();
    loop {
        if http_get(admin, "/readyz").is_ok_and(|r| r.starts_with("HTTP/1.1 200")) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sidecache never became ready:\n{}",
            log.join("\n")
        );
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            log.push(line);
        }
    }
    for path in ["/api/groups/VIP/EURUSD", "/api/other"] {
        let r = http_get(proxy, path).unwrap();
        assert!(r.starts_with("HTTP/1.1 502"), "{path}: {r}");
    }
    let metrics = http_get(admin, "/metrics").unwrap();
    drop(child);
    let _ = std::fs::remove_dir_all(&dir);
    metrics
}

/// Labels every scraped series carries besides its own: the PodMonitor's target labels.
const TARGET_LABELS: [&str; 7] = [
    "namespace",
    "pod",
    "container",
    "instance",
    "job",
    "endpoint",
    "service",
];

/// `(name, label names of its {...} selector, where)` for every `sidecache_*` token in `text`.
fn metric_references(text: &str, file: &str) -> Vec<(String, Vec<String>, String)> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(at) = text[from..].find("sidecache_") {
        let start = from + at;
        from = start + "sidecache_".len();
        let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
        if start > 0 && ident(bytes[start - 1]) {
            continue;
        }
        let end = start
            + text[start..]
                .bytes()
                .take_while(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_')
                .count();
        from = end;
        let name = &text[start..end];
        let line = text[..start].lines().count().max(1);
        let mut labels = Vec::new();
        if bytes.get(end) == Some(&b'{') {
            let close = end + text[end..].find('}').expect("unclosed selector");
            let mut quoted = false;
            let mut part = String::new();
            let mut parts = Vec::new();
            for c in text[end + 1..close].chars() {
                match c {
                    '"' => quoted = !quoted,
                    '\\' if quoted => {}
                    ',' if !quoted => parts.push(std::mem::take(&mut part)),
                    _ if !quoted => part.push(c),
                    _ => {}
                }
            }
            parts.push(part);
            for p in parts {
                let label: String = p
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !label.is_empty() {
                    labels.push(label);
                }
            }
        }
        out.push((name.to_string(), labels, format!("{file}:{line}")));
    }
    out
}

#[test]
fn dashboards_and_alerts_use_only_exported_metrics() {
    let families = registered_families();
    let files = files_under(&root().join("k8s"), &["json", "yaml", "yml"]);
    let mut problems = Vec::new();
    let mut used = BTreeSet::new();
    for path in &files {
        let file = path.strip_prefix(root()).unwrap().display().to_string();
        let text = std::fs::read_to_string(path).unwrap();
        for (token, labels, at) in metric_references(&text, &file) {
            let (family, suffix) = if families.contains_key(&token) {
                (token.as_str(), "")
            } else {
                ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| token.strip_suffix(s).map(|f| (f, *s)))
                    .unwrap_or((token.as_str(), ""))
            };
            let Some(f) = families.get(family) else {
                problems.push(format!(
                    "{at}: `{token}` is not a metric the binary exports"
                ));
                continue;
            };
            if !suffix.is_empty() && !f.histogram {
                problems.push(format!("{at}: `{token}`: {family} is not a histogram"));
            }
            if f.histogram && suffix.is_empty() && text.contains(&format!("{token}{{")) {
                // A histogram is only ever queried through _bucket / _sum / _count.
                problems.push(format!(
                    "{at}: `{token}` is a histogram; query {token}_bucket"
                ));
            }
            for l in labels {
                let known = f.labels.contains(&l)
                    || TARGET_LABELS.contains(&l.as_str())
                    || (l == "le" && suffix == "_bucket");
                if !known {
                    problems.push(format!(
                        "{at}: `{token}` has no label `{l}` (it has {:?})",
                        f.labels
                    ));
                }
            }
            used.insert(family.to_string());
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
    // The dashboard and the alerts cover what the issue asks for.
    for family in [
        "sidecache_requests_total",
        "sidecache_request_duration_seconds",
        "sidecache_upstream_errors_total",
        "sidecache_invalidations_total",
        "sidecache_pubsub_lag_seconds",
        "sidecache_pubsub_connected",
        "sidecache_ratelimit_decisions_total",
        "sidecache_redis_breaker_state",
        "sidecache_l1_entries",
        "sidecache_l1_bytes",
    ] {
        assert!(used.contains(family), "nothing under k8s/ shows {family}");
    }
}

#[test]
fn dashboard_has_the_variables_and_panels_operators_need() {
    let dashboards = files_under(&root().join("k8s/dashboards"), &["json"]);
    assert!(!dashboards.is_empty(), "no dashboard in k8s/dashboards");
    for path in dashboards {
        let text = std::fs::read_to_string(&path).unwrap();
        let d: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
        assert!(d["schemaVersion"].as_u64().unwrap_or(0) >= 36);
        let vars: BTreeMap<&str, &serde_json::Value> = d["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| (v["name"].as_str().unwrap(), v))
            .collect();
        assert_eq!(vars["datasource"]["type"], "datasource");
        assert_eq!(vars["datasource"]["query"], "prometheus");
        for v in ["route", "pod"] {
            assert!(
                vars.contains_key(v),
                "{}: no `{v}` variable",
                path.display()
            );
        }
        let mut exprs = Vec::new();
        let mut stack: Vec<&serde_json::Value> = d["panels"].as_array().unwrap().iter().collect();
        while let Some(p) = stack.pop() {
            if let Some(inner) = p["panels"].as_array() {
                stack.extend(inner);
            }
            for t in p["targets"].as_array().into_iter().flatten() {
                assert_eq!(
                    t["datasource"]["uid"],
                    "${datasource}",
                    "{}: panel {}",
                    path.display(),
                    p["title"]
                );
                exprs.push(t["expr"].as_str().unwrap_or_default().to_string());
            }
        }
        let all = exprs.join("\n");
        for needle in [
            "cache=\"hit\"",
            "cache=\"hit_l2\"",
            "histogram_quantile(0.5,",
            "histogram_quantile(0.95,",
            "histogram_quantile(0.99,",
            "sidecache_request_duration_seconds_bucket",
            "sidecache_pubsub_lag_seconds_bucket",
            "sum by (route)",
            "route=~\"$route\"",
            "pod=~\"$pod\"",
        ] {
            assert!(
                all.contains(needle),
                "{}: no query contains {needle}",
                path.display()
            );
        }
    }
}

#[test]
fn alert_rules_cover_the_failure_modes() {
    let docs = yaml::parse(&read("k8s/alerts/sidecache-rules.yaml"));
    let rule = &docs[0];
    assert_eq!(rule.str_at("apiVersion"), Some("monitoring.coreos.com/v1"));
    assert_eq!(rule.str_at("kind"), Some("PrometheusRule"));
    let mut alerts = BTreeSet::new();
    for g in rule.seq_at("spec.groups") {
        for r in g.seq_at("rules") {
            let name = r.str_at("alert").expect("every rule is an alert");
            assert!(
                r.str_at("expr").is_some_and(|e| e.contains("sidecache_")),
                "{name}: no expr over sidecache metrics"
            );
            assert!(
                matches!(
                    r.str_at("labels.severity"),
                    Some("critical" | "warning" | "info")
                ),
                "{name}: severity"
            );
            assert!(r.str_at("annotations.summary").is_some(), "{name}: summary");
            alerts.insert(name.to_string());
        }
    }
    for a in [
        "SidecacheHitRatioCollapse",
        "SidecacheRedisBreakerOpen",
        "SidecachePubsubDisconnected",
        "SidecacheUpstream5xxRate",
        "SidecachePubsubGapStorm",
    ] {
        assert!(alerts.contains(a), "no alert {a}: {alerts:?}");
    }
}

// === configs ================================================================================

#[test]
fn every_config_under_k8s_passes_sidecache_check() {
    let tomls = files_under(&root().join("k8s"), &["toml"]);
    let names: Vec<String> = tomls
        .iter()
        .map(|p| p.strip_prefix(root()).unwrap().display().to_string())
        .collect();
    for expected in [
        "k8s/base/sidecache.toml",
        "k8s/overlays/redis-cluster/sidecache.toml",
        "k8s/overlays/redis-sentinel/sidecache.toml",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing: {names:?}"
        );
    }
    for path in &tomls {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sidecache"));
        cmd.arg("check").arg("--config").arg(path);
        // Env vars are read at run time only: the configs must pass without any of them.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("SIDECACHE_") {
                cmd.env_remove(key);
            }
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "sidecache check --config {} failed:\n{}{}",
            path.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn toml_file(rel: &str) -> toml::Table {
    read(rel).parse().unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn toml_str<'a>(t: &'a toml::Table, section: &str, key: &str) -> Option<&'a str> {
    t.get(section)?.get(key)?.as_str()
}

/// `"500ms"`, `"5s"`, `"2m"`, `"1h"`: the units the shipped configs use.
fn duration(text: &str) -> Duration {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let n: u64 = text[..split].parse().unwrap_or_else(|_| panic!("{text:?}"));
    match &text[split..] {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        unit => panic!("unit {unit:?} of {text:?}"),
    }
}

/// `"128MiB"` (sidecache) or `"384Mi"` (Kubernetes) in bytes.
fn bytes(text: &str) -> u64 {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let n: u64 = text[..split].parse().unwrap_or_else(|_| panic!("{text:?}"));
    n * match text[split..].trim_end_matches('B') {
        "" => 1,
        "Ki" | "K" => 1 << 10,
        "Mi" | "M" => 1 << 20,
        "Gi" | "G" => 1 << 30,
        unit => panic!("unit {unit:?} of {text:?}"),
    }
}

fn port_of(addr: &str) -> &str {
    addr.rsplit_once(':').unwrap().1
}

// === manifests =============================================================================

fn base_deployment() -> yaml::Node {
    yaml::parse(&read("k8s/base/deployment.yaml"))
        .into_iter()
        .find(|d| d.str_at("kind") == Some("Deployment"))
        .expect("a Deployment in k8s/base/deployment.yaml")
}

fn named<'a>(items: &'a [yaml::Node], name: &str) -> Option<&'a yaml::Node> {
    items.iter().find(|c| c.str_at("name") == Some(name))
}

#[test]
fn sidecache_is_a_native_sidecar_with_its_config_as_a_directory() {
    let deploy = base_deployment();
    let pod = deploy.at("spec.template.spec").unwrap();
    let init = pod.seq_at("initContainers");
    let sc = named(init, "sidecache").expect("sidecache in initContainers");
    assert_eq!(sc.str_at("restartPolicy"), Some("Always"), "native sidecar");
    assert!(
        named(pod.seq_at("containers"), "sidecache").is_none(),
        "sidecache belongs in initContainers, not containers"
    );
    let args: Vec<&str> = sc.seq_at("args").iter().filter_map(|a| a.str()).collect();
    assert_eq!(args, ["--config", "/etc/sidecache/sidecache.toml"]);

    // The config: a ConfigMap generated from sidecache.toml, mounted as a directory.
    let mount = sc
        .seq_at("volumeMounts")
        .iter()
        .find(|m| m.str_at("mountPath") == Some("/etc/sidecache"))
        .expect("a volumeMount at /etc/sidecache");
    assert!(
        mount.at("subPath").is_none() && mount.at("subPathExpr").is_none(),
        "subPath mounts never receive ConfigMap updates"
    );
    let volume = named(pod.seq_at("volumes"), mount.str_at("name").unwrap()).unwrap();
    let cm_name = volume.str_at("configMap.name").expect("a configMap volume");
    let kust = &yaml::parse(&read("k8s/base/kustomization.yaml"))[0];
    let generator = named(kust.seq_at("configMapGenerator"), cm_name)
        .unwrap_or_else(|| panic!("no configMapGenerator named {cm_name}"));
    let files: Vec<&str> = generator
        .seq_at("files")
        .iter()
        .filter_map(|f| f.str())
        .collect();
    assert_eq!(files, ["sidecache.toml"], "the file --config names");
    for overlay in ["redis-cluster", "redis-sentinel"] {
        let k = &yaml::parse(&read(&format!("k8s/overlays/{overlay}/kustomization.yaml")))[0];
        let g = named(k.seq_at("configMapGenerator"), cm_name)
            .unwrap_or_else(|| panic!("{overlay}: no configMapGenerator {cm_name}"));
        assert_eq!(g.str_at("behavior"), Some("replace"), "{overlay}");
        let files: Vec<&str> = g.seq_at("files").iter().filter_map(|f| f.str()).collect();
        assert_eq!(files, ["sidecache.toml"], "{overlay}");
        assert_eq!(
            g.str_at("options.disableNameSuffixHash"),
            generator.str_at("options.disableNameSuffixHash"),
            "{overlay}: the same naming as the base"
        );
    }
    // No manifest anywhere mounts a single file of the config.
    for path in files_under(&root().join("k8s"), &["yaml", "yml"]) {
        let text = std::fs::read_to_string(&path).unwrap();
        let uses_subpath = text.lines().any(|l| l.trim_start().starts_with("subPath"));
        assert!(!uses_subpath, "{}: subPath", path.display());
    }
}

#[test]
fn ports_and_probes_match_the_config() {
    let config = toml_file("k8s/base/sidecache.toml");
    let proxy = toml_str(&config, "listen", "proxy").unwrap();
    let admin = toml_str(&config, "listen", "admin").unwrap();
    assert!(
        proxy.starts_with("127.0.0.1:"),
        "the proxy is for the app in the pod only"
    );
    assert!(
        admin.starts_with("0.0.0.0:"),
        "kubelet probes and Prometheus reach the admin port"
    );

    let deploy = base_deployment();
    let sc = named(
        deploy.seq_at("spec.template.spec.initContainers"),
        "sidecache",
    )
    .unwrap();
    let ports: BTreeMap<&str, &str> = sc
        .seq_at("ports")
        .iter()
        .map(|p| {
            (
                p.str_at("name").unwrap(),
                p.str_at("containerPort").unwrap(),
            )
        })
        .collect();
    assert_eq!(ports.get("proxy"), Some(&port_of(proxy)));
    assert_eq!(ports.get("admin"), Some(&port_of(admin)));

    for (probe, path) in [
        ("startupProbe", "/readyz"),
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
    ] {
        let p = sc
            .at(probe)
            .unwrap_or_else(|| panic!("sidecache has no {probe}"));
        assert_eq!(p.str_at("httpGet.path"), Some(path), "{probe}");
        assert_eq!(p.str_at("httpGet.port"), Some("admin"), "{probe}");
    }

    let monitor = yaml::parse(&read("k8s/base/podmonitor.yaml"))
        .into_iter()
        .find(|d| d.str_at("kind") == Some("PodMonitor"))
        .unwrap();
    let endpoint = &monitor.seq_at("spec.podMetricsEndpoints")[0];
    assert_eq!(endpoint.str_at("port"), Some("admin"));
    assert_eq!(endpoint.str_at("path"), Some("/metrics"));
    let pod_labels = deploy.at("spec.template.metadata.labels").unwrap();
    for (k, v) in monitor.at("spec.selector.matchLabels").unwrap().entries() {
        assert_eq!(pod_labels.get(k), Some(v), "PodMonitor selects the pods");
    }
    let pdb = &yaml::parse(&read("k8s/base/pdb.yaml"))[0];
    for (k, v) in pdb.at("spec.selector.matchLabels").unwrap().entries() {
        assert_eq!(pod_labels.get(k), Some(v), "the PDB selects the pods");
    }

    // The image runs the same command and user.
    let dockerfile = read("Dockerfile");
    assert!(dockerfile.contains(r#"ENTRYPOINT ["/usr/local/bin/sidecache"]"#));
    assert!(dockerfile.contains(r#"CMD ["--config", "/etc/sidecache/sidecache.toml"]"#));
    assert!(dockerfile.contains(&format!("EXPOSE {} {}", port_of(proxy), port_of(admin))));
    assert!(dockerfile.contains("USER 65532"));
}

#[test]
fn termination_and_memory_budgets_cover_the_config() {
    let deploy = base_deployment();
    let pod = deploy.at("spec.template.spec").unwrap();
    let sc = named(pod.seq_at("initContainers"), "sidecache").unwrap();
    let grace = Duration::from_secs(
        pod.str_at("terminationGracePeriodSeconds")
            .expect("terminationGracePeriodSeconds")
            .parse()
            .unwrap(),
    );
    let pre_stop = Duration::from_secs(
        sc.str_at("lifecycle.preStop.sleep.seconds")
            .expect("a preStop sleep (the image has no shell)")
            .parse()
            .unwrap(),
    );
    // Main containers stop first and their preStop hooks spend the same budget.
    let app_pre_stop: Duration = pod
        .seq_at("containers")
        .iter()
        .filter_map(|c| c.str_at("lifecycle.preStop.sleep.seconds"))
        .map(|s| Duration::from_secs(s.parse().unwrap()))
        .max()
        .unwrap_or_default();
    let limit = bytes(
        sc.str_at("resources.limits.memory")
            .expect("a memory limit"),
    );
    assert!(sc.str_at("resources.requests.memory").is_some());
    assert!(sc.str_at("resources.requests.cpu").is_some());

    for rel in [
        "k8s/base/sidecache.toml",
        "k8s/overlays/redis-cluster/sidecache.toml",
        "k8s/overlays/redis-sentinel/sidecache.toml",
    ] {
        let config = toml_file(rel);
        let drain = duration(toml_str(&config, "shutdown", "drain_delay").unwrap_or("0s"));
        let period = duration(toml_str(&config, "shutdown", "grace_period").unwrap_or("25s"));
        assert!(
            pre_stop > drain,
            "{rel}: preStop sleep {pre_stop:?} must exceed drain_delay {drain:?}"
        );
        assert!(
            grace >= drain + period,
            "{rel}: terminationGracePeriodSeconds {grace:?} < drain_delay + grace_period"
        );
        assert!(
            grace >= app_pre_stop + pre_stop + drain + period,
            "{rel}: terminationGracePeriodSeconds {grace:?} < app preStop {app_pre_stop:?} + \
             preStop {pre_stop:?} + drain_delay {drain:?} + grace_period {period:?}"
        );
        let l1 = bytes(toml_str(&config, "l1", "max_bytes").unwrap_or("128MiB"));
        assert!(
            limit >= 2 * l1,
            "{rel}: memory limit {limit} is not comfortably above l1.max_bytes {l1}"
        );
    }
}

#[test]
fn sidecache_runs_locked_down() {
    let deploy = base_deployment();
    let pod = deploy.at("spec.template.spec").unwrap();
    assert_eq!(pod.str_at("securityContext.runAsNonRoot"), Some("true"));
    assert_eq!(pod.str_at("securityContext.runAsUser"), Some("65532"));
    assert_eq!(
        pod.str_at("securityContext.seccompProfile.type"),
        Some("RuntimeDefault")
    );
    let sc = named(pod.seq_at("initContainers"), "sidecache").unwrap();
    let ctx = sc.at("securityContext").expect("container securityContext");
    for (key, value) in [
        ("runAsNonRoot", "true"),
        ("runAsUser", "65532"),
        ("readOnlyRootFilesystem", "true"),
        ("allowPrivilegeEscalation", "false"),
        ("seccompProfile.type", "RuntimeDefault"),
    ] {
        assert_eq!(ctx.str_at(key), Some(value), "securityContext.{key}");
    }
    let drop: Vec<&str> = ctx
        .seq_at("capabilities.drop")
        .iter()
        .filter_map(|c| c.str())
        .collect();
    assert_eq!(drop, ["ALL"]);
}

#[test]
fn overlays_add_redis_and_take_credentials_from_secrets() {
    let base = toml_file("k8s/base/sidecache.toml");
    assert!(!base.contains_key("l2"), "the base runs without Redis");
    let replicas = base_deployment()
        .str_at("spec.replicas")
        .unwrap()
        .to_string();
    for (overlay, target) in [("redis-cluster", "cluster"), ("redis-sentinel", "sentinel")] {
        let dir = format!("k8s/overlays/{overlay}");
        let config = toml_file(&format!("{dir}/sidecache.toml"));
        let l2 = config["l2"].as_table().expect("[l2]");
        assert!(l2.contains_key(target), "{overlay}: [l2] {target}");
        let password_env = l2
            .get("password_env")
            .and_then(|v| v.as_str())
            .unwrap_or("SIDECACHE_REDIS_PASSWORD");
        let channels: BTreeSet<&str> = config["event"]
            .as_array()
            .expect("[[event]]")
            .iter()
            .filter_map(|e| e.get("channel")?.as_str())
            .collect();
        for c in [
            "balance_updates",
            "user_updates",
            "admin_user_updates",
            "group_updates",
        ] {
            assert!(channels.contains(c), "{overlay}: no [[event]] on {c}");
        }
        assert!(!config["invalidate"].as_array().unwrap().is_empty());
        assert!(!config["limit"].as_array().unwrap().is_empty());
        assert_eq!(
            config["limits"]["replicas"]
                .as_integer()
                .map(|r| r.to_string()),
            Some(replicas.clone()),
            "{overlay}: [limits] replicas = the Deployment's replicas"
        );

        // The env patch: both values from Secrets, never literal.
        let kust = &yaml::parse(&read(&format!("{dir}/kustomization.yaml")))[0];
        let resources: Vec<&str> = kust
            .seq_at("resources")
            .iter()
            .filter_map(|r| r.str())
            .collect();
        assert_eq!(resources, ["../../base"], "{overlay}");
        let mut env = BTreeMap::new();
        for p in kust.seq_at("patches") {
            let path = p.str_at("path").expect("patches from files");
            for doc in yaml::parse(&read(&format!("{dir}/{path}"))) {
                for c in doc.seq_at("spec.template.spec.initContainers") {
                    if c.str_at("name") == Some("sidecache") {
                        for e in c.seq_at("env") {
                            env.insert(e.str_at("name").unwrap().to_string(), e.clone());
                        }
                    }
                }
            }
        }
        for var in [password_env, "SIDECACHE_ADMIN_TOKEN"] {
            let e = env
                .get(var)
                .unwrap_or_else(|| panic!("{overlay}: no {var} on sidecache"));
            assert!(
                e.at("value").is_none(),
                "{overlay}: {var} must not be literal"
            );
            assert!(
                e.str_at("valueFrom.secretKeyRef.name").is_some()
                    && e.str_at("valueFrom.secretKeyRef.key").is_some(),
                "{overlay}: {var} from a Secret"
            );
        }
    }
}

#[test]
fn kustomizations_list_only_files_that_exist() {
    for kfile in files_under(&root().join("k8s"), &["yaml"])
        .into_iter()
        .filter(|p| p.file_name().unwrap() == "kustomization.yaml")
    {
        let dir = kfile.parent().unwrap();
        let k = &yaml::parse(&std::fs::read_to_string(&kfile).unwrap())[0];
        let mut refs: Vec<String> = Vec::new();
        for field in ["resources", "components"] {
            refs.extend(
                k.seq_at(field)
                    .iter()
                    .filter_map(|r| r.str().map(String::from)),
            );
        }
        for p in k.seq_at("patches") {
            refs.extend(p.str_at("path").map(String::from));
        }
        for field in ["configMapGenerator", "secretGenerator"] {
            for g in k.seq_at(field) {
                for f in g.seq_at("files").iter().filter_map(|f| f.str()) {
                    refs.push(f.rsplit_once('=').map_or(f, |(_, p)| p).to_string());
                }
            }
        }
        assert!(!refs.is_empty(), "{}: lists nothing", kfile.display());
        for r in refs {
            assert!(
                dir.join(&r).exists(),
                "{}: `{r}` does not exist",
                kfile.display()
            );
        }
    }
}

// === a YAML subset ===========================================================================

/// Block mappings and sequences (compact `- key: value` items too), flow sequences of scalars,
/// `{}`, quoted and plain scalars, block scalars (`|`, `>`), comments and `---`. Scalars stay
/// strings: `str_at("spec.replicas") == Some("3")`. Enough for the manifests in k8s/, and it
/// panics on what it does not understand rather than guessing.
mod yaml {
    #[derive(Debug, Clone, PartialEq)]
    pub(super) enum Node {
        Map(Vec<(String, Node)>),
        Seq(Vec<Node>),
        Str(String),
        Null,
    }

    static EMPTY: Vec<Node> = Vec::new();

    impl Node {
        /// The node at a dotted path of map keys.
        pub(super) fn at(&self, path: &str) -> Option<&Node> {
            path.split('.').try_fold(self, |node, key| match node {
                Node::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
                _ => None,
            })
        }

        pub(super) fn str(&self) -> Option<&str> {
            match self {
                Node::Str(s) => Some(s),
                _ => None,
            }
        }

        pub(super) fn str_at(&self, path: &str) -> Option<&str> {
            self.at(path)?.str()
        }

        /// The sequence at `path`, or an empty one.
        pub(super) fn seq_at(&self, path: &str) -> &[Node] {
            match self.at(path) {
                Some(Node::Seq(items)) => items,
                _ => &EMPTY,
            }
        }

        /// The value of one key, taken whole (label keys contain dots).
        pub(super) fn get(&self, key: &str) -> Option<&Node> {
            self.entries().find(|(k, _)| *k == key).map(|(_, v)| v)
        }

        pub(super) fn entries(&self) -> impl Iterator<Item = (&str, &Node)> {
            let entries = match self {
                Node::Map(e) => e.as_slice(),
                _ => &[],
            };
            entries.iter().map(|(k, v)| (k.as_str(), v))
        }
    }

    struct Line {
        indent: usize,
        text: String,
    }

    /// Every document of a multi-document YAML text.
    pub(super) fn parse(text: &str) -> Vec<Node> {
        let mut docs = Vec::new();
        let mut current = Vec::new();
        let mut raw = text.lines().peekable();
        while let Some(line) = raw.next() {
            if line.starts_with("---") {
                if !current.is_empty() {
                    docs.push(std::mem::take(&mut current));
                }
                continue;
            }
            let content = strip_comment(line);
            if content.trim().is_empty() {
                continue;
            }
            let indent = content.len() - content.trim_start().len();
            let text = content.trim().to_string();
            let block = ["|", "|-", "|+", ">", ">-", ">+"]
                .iter()
                .any(|m| text.ends_with(&format!(": {m}")) || text == format!("- {m}"));
            current.push(Line { indent, text });
            if block {
                // Lines more indented than the key (or blank) belong to the scalar, verbatim.
                let mut body = Vec::new();
                while let Some(next) = raw.peek() {
                    let next_indent = next.len() - next.trim_start().len();
                    if next.trim().is_empty() || next_indent > indent {
                        body.push(raw.next().unwrap().to_string());
                    } else {
                        break;
                    }
                }
                let cut = body
                    .iter()
                    .filter(|l| !l.trim().is_empty())
                    .map(|l| l.len() - l.trim_start().len())
                    .min()
                    .unwrap_or(0);
                let mut body: Vec<&str> = body
                    .iter()
                    .map(|l| if l.len() >= cut { &l[cut..] } else { "" })
                    .collect();
                while body.last().is_some_and(|l| l.trim().is_empty()) {
                    body.pop();
                }
                let last = current.last_mut().unwrap();
                let marker = last.text.rfind(' ').unwrap();
                let style = last.text[marker + 1..].to_string();
                let mut value = if style.starts_with('>') {
                    // Folded: lines join with spaces, blank lines become newlines.
                    body.iter().fold(String::new(), |mut acc, l| {
                        if l.is_empty() {
                            acc.push('\n');
                        } else {
                            if !acc.is_empty() && !acc.ends_with('\n') {
                                acc.push(' ');
                            }
                            acc.push_str(l);
                        }
                        acc
                    })
                } else {
                    body.join("\n")
                };
                if !style.ends_with('-') {
                    value.push('\n');
                }
                last.text.truncate(marker);
                last.text.push_str(" \u{0}");
                last.text.push_str(&value);
            }
        }
        if !current.is_empty() {
            docs.push(current);
        }
        docs.into_iter()
            .map(|mut lines| {
                let mut i = 0;
                let indent = lines[0].indent;
                let node = block(&mut lines, &mut i, indent);
                assert!(
                    i == lines.len(),
                    "YAML: cannot read line `{}`",
                    lines[i].text
                );
                node
            })
            .collect()
    }

    fn strip_comment(line: &str) -> &str {
        let (mut single, mut double) = (false, false);
        let bytes = line.as_bytes();
        for (i, &b) in bytes.iter().enumerate() {
            match b {
                b'\'' if !double => single = !single,
                b'"' if !single => double = !double,
                b'#' if !single && !double && (i == 0 || bytes[i - 1] == b' ') => {
                    return &line[..i]
                }
                _ => {}
            }
        }
        line
    }

    fn block(lines: &mut [Line], i: &mut usize, indent: usize) -> Node {
        if *i >= lines.len() || lines[*i].indent < indent {
            return Node::Null;
        }
        if lines[*i].text == "-" || lines[*i].text.starts_with("- ") {
            let mut items = Vec::new();
            while *i < lines.len()
                && lines[*i].indent == indent
                && (lines[*i].text == "-" || lines[*i].text.starts_with("- "))
            {
                let rest = lines[*i].text[1..].trim_start().to_string();
                if rest.is_empty() {
                    *i += 1;
                    let inner = lines.get(*i).map_or(indent + 1, |l| l.indent);
                    items.push(if inner > indent {
                        block(lines, i, inner)
                    } else {
                        Node::Null
                    });
                } else if split_key(&rest).is_some() || rest.starts_with("- ") {
                    // `- key: value` opens a mapping (or `- - x` a sequence) at the item's column.
                    let col = indent + (lines[*i].text.len() - rest.len());
                    lines[*i] = Line {
                        indent: col,
                        text: rest,
                    };
                    items.push(block(lines, i, col));
                } else {
                    items.push(scalar(&rest));
                    *i += 1;
                }
            }
            return Node::Seq(items);
        }
        let mut entries = Vec::new();
        while *i < lines.len() && lines[*i].indent == indent && !lines[*i].text.starts_with("- ") {
            let (key, value) = split_key(&lines[*i].text)
                .unwrap_or_else(|| panic!("YAML: expected `key: value`, got `{}`", lines[*i].text));
            *i += 1;
            let node = if let Some(body) = value.strip_prefix('\u{0}') {
                Node::Str(body.to_string())
            } else if !value.is_empty() {
                scalar(&value)
            } else if *i < lines.len() && lines[*i].indent > indent {
                let inner = lines[*i].indent;
                block(lines, i, inner)
            } else if *i < lines.len()
                && lines[*i].indent == indent
                && lines[*i].text.starts_with("- ")
            {
                // A sequence may sit at its key's own indentation.
                block(lines, i, indent)
            } else {
                Node::Null
            };
            entries.push((key, node));
        }
        Node::Map(entries)
    }

    /// `key: value` / `key:` outside quotes and brackets.
    fn split_key(text: &str) -> Option<(String, String)> {
        if text.starts_with(['[', '{', '-']) {
            return None;
        }
        let (mut single, mut double) = (false, false);
        let bytes = text.as_bytes();
        for (i, &b) in bytes.iter().enumerate() {
            match b {
                b'\'' if !double => single = !single,
                b'"' if !single => double = !double,
                b':' if !single && !double && (i + 1 == bytes.len() || bytes[i + 1] == b' ') => {
                    let key = unquote(text[..i].trim());
                    let value = text[i + 1..].trim_start();
                    // A block scalar's body (after the \u{0} mark) keeps its trailing newline.
                    let value = if value.starts_with('\u{0}') {
                        value
                    } else {
                        value.trim_end()
                    };
                    return Some((key, value.to_string()));
                }
                _ => {}
            }
        }
        None
    }

    fn unquote(s: &str) -> String {
        let s = s.trim();
        if s.len() >= 2
            && ((s.starts_with('"') && s.ends_with('"'))
                || (s.starts_with('\'') && s.ends_with('\'')))
        {
            s[1..s.len() - 1].replace("\\\"", "\"")
        } else {
            s.to_string()
        }
    }

    fn scalar(text: &str) -> Node {
        let t = text.trim();
        if t == "{}" {
            return Node::Map(Vec::new());
        }
        if let Some(inner) = t.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            let mut items = Vec::new();
            let mut part = String::new();
            let mut quoted = None;
            for c in inner.chars() {
                match (c, quoted) {
                    ('"' | '\'', None) => quoted = Some(c),
                    (q, Some(open)) if q == open => quoted = None,
                    (',', None) => items.push(std::mem::take(&mut part)),
                    _ => {}
                }
                part.push(c);
            }
            items.push(part);
            return Node::Seq(
                items
                    .iter()
                    .map(|p| p.trim().trim_start_matches(','))
                    .filter(|p| !p.trim().is_empty())
                    .map(|p| Node::Str(unquote(p)))
                    .collect(),
            );
        }
        assert!(
            !t.starts_with(['{', '&', '*', '!']),
            "YAML: `{t}` is beyond this parser"
        );
        if t == "null" || t == "~" {
            return Node::Null;
        }
        Node::Str(unquote(t))
    }
}
