//! Real Redis processes for integration tests: a standalone server, a 3-master cluster and a
//! master/replica pair watched by sentinels. No mocks: every fixture runs `redis-server` on free
//! loopback ports (never the system Redis on 6379), in its own temporary directory, and `Drop`
//! kills the processes and removes the directories.
//!
//! Include it with `#[path = "support/redis.rs"] mod redis;`, or with `mod support;` and
//! `pub mod redis;` in `tests/support/mod.rs`. It uses std only.
//!
//! The API is synchronous and blocks while it waits (always against a deadline, never a fixed
//! sleep). In a `#[tokio::test]`, starting a fixture before spawning tasks is fine; to `restart`
//! or `failover` while client tasks keep running, call it from `tokio::task::spawn_blocking`
//! (`RedisServer` methods take `&self`, so an `Arc<RedisServer>` works).
//!
//! Processes left behind by a test binary that was SIGKILLed (so no `Drop` ran) are reaped the
//! next time a fixture starts: each directory is named after the owning test process's pid.
#![allow(dead_code)]

use std::collections::hash_map::RandomState;
use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, Once, OnceLock};
use std::time::{Duration, Instant};

const HOST: &str = "127.0.0.1";
/// Ports handed out by [`free_port`]. Both a port and its cluster bus port (+10000) stay below
/// the kernel's ephemeral range (32768 and up on Linux), so an outgoing connection can never be
/// sitting on a port we are about to listen on.
const PORT_LOW: u16 = 12000;
const PORT_HIGH: u16 = 22000;
const CLUSTER_BUS_OFFSET: u16 = 10000;
const DIR_PREFIX: &str = "sidecache-redis-";

const START_TIMEOUT: Duration = Duration::from_secs(15);
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(30);
const SENTINEL_TIMEOUT: Duration = Duration::from_secs(30);
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(30);
const LOG_TAIL_LINES: usize = 25;

/// The name the sentinel fixture monitors its master under.
pub(crate) const SENTINEL_MASTER_NAME: &str = "mymaster";

// ---------------------------------------------------------------------------------------------
// Binaries and ports
// ---------------------------------------------------------------------------------------------

fn find_executable(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/bin", "/usr/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

const SERVER_MISSING: &str = "redis-server not found: install it with `apt-get install -y \
    redis-server` (Debian) — sidecache's tests start real Redis processes";
const CLI_MISSING: &str = "redis-cli not found: install it with `apt-get install -y redis-server` \
    (Debian; it brings redis-tools) — sidecache's tests start real Redis processes";

/// Path of `redis-server`; panics with an install hint when it is missing.
pub(crate) fn redis_server_bin() -> PathBuf {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    let bin = BIN.get_or_init(|| find_executable("redis-server"));
    bin.clone().unwrap_or_else(|| panic!("{SERVER_MISSING}"))
}

/// Path of `redis-cli`; panics with an install hint when it is missing.
pub(crate) fn redis_cli_bin() -> PathBuf {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    let bin = BIN.get_or_init(|| find_executable("redis-cli"));
    bin.clone().unwrap_or_else(|| panic!("{CLI_MISSING}"))
}

static PORTS_TAKEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn random_u64() -> u64 {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    // Each RandomState is seeded differently, so this is random enough to spread test processes
    // (and threads) over the port range without a rand crate.
    let mut h = RandomState::new().build_hasher();
    h.write_u64(CALLS.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    h.finish()
}

fn bindable(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// A loopback port below 55000 that is free now, whose cluster bus port (+10000) is free too, and
/// that no other fixture of this test process holds. Another process may still take it before
/// Redis binds it; [`RedisServer::start`] then retries on a new port.
pub(crate) fn free_port() -> u16 {
    let mut taken = lock(&PORTS_TAKEN);
    for _ in 0..5000 {
        let port = PORT_LOW + (random_u64() % u64::from(PORT_HIGH - PORT_LOW)) as u16;
        if !taken.contains(&port) && bindable(port) && bindable(port + CLUSTER_BUS_OFFSET) {
            taken.insert(port);
            return port;
        }
    }
    panic!(
        "no free loopback port pair (P, P+{CLUSTER_BUS_OFFSET}) found in {PORT_LOW}..{PORT_HIGH}"
    )
}

fn release_port(port: u16) {
    lock(&PORTS_TAKEN).remove(&port);
}

// ---------------------------------------------------------------------------------------------
// Temporary directories
// ---------------------------------------------------------------------------------------------

struct TempDir(PathBuf);

impl TempDir {
    fn new(port: u16) -> TempDir {
        static REAP: Once = Once::new();
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        REAP.call_once(reap_orphans);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("{DIR_PREFIX}{}-{n}-{port}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Kills Redis processes (and removes directories) left by test processes that died without
/// running `Drop`. A process is only killed when its command line names its fixture directory.
fn reap_orphans() {
    if !Path::new("/proc/self").exists() {
        return; // no way to tell live owners from dead ones
    }
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(owner) = name
            .strip_prefix(DIR_PREFIX)
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        let Ok(owner) = owner.parse::<u32>() else {
            continue;
        };
        if owner == std::process::id() || Path::new(&format!("/proc/{owner}")).exists() {
            continue;
        }
        let dir = entry.path();
        let pid = fs::read_to_string(dir.join("redis.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        if let Some(pid) = pid {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&*dir.to_string_lossy()) {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        }
        let _ = fs::remove_dir_all(&dir);
    }
}

// ---------------------------------------------------------------------------------------------
// Waiting, talking to Redis
// ---------------------------------------------------------------------------------------------

/// The one place the fixtures sleep: the pause between two polls of a deadline-bounded wait.
/// clippy's ban on `std::thread::sleep` targets runtime workers; these fixtures are blocking by
/// design (see the module docs).
#[allow(clippy::disallowed_methods)]
fn pause(d: Duration) {
    std::thread::sleep(d);
}

/// Calls `check` until it returns `Ok`, pausing 5 ms, then longer, up to 100 ms between calls.
/// At the deadline returns the last error.
fn poll_until<T>(
    deadline: Instant,
    mut check: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let mut delay = Duration::from_millis(5);
    loop {
        let err = match check() {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(err);
        }
        pause(delay.min(deadline - now));
        delay = (delay * 2).min(Duration::from_millis(100));
    }
}

/// Sends inline commands over one fresh TCP connection and returns each reply: simple strings,
/// integers and bulk strings as text (nil as ""), error replies as `Err`.
fn raw_request(port: u16, commands: &[&str]) -> Result<Vec<String>, String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let stream =
        TcpStream::connect_timeout(&addr, Duration::from_millis(500)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    let request: String = commands.iter().map(|c| format!("{c}\r\n")).collect();
    (&stream)
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(&stream);
    commands.iter().map(|_| read_reply(&mut reader)).collect()
}

fn read_reply(reader: &mut impl BufRead) -> Result<String, String> {
    let mut line = String::new();
    if reader.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
        return Err("connection closed".into());
    }
    let line = line.trim_end();
    let (kind, rest) = line.split_at(line.len().min(1));
    match kind {
        "+" | ":" => Ok(rest.to_owned()),
        "-" => Err(rest.to_owned()),
        "$" => {
            let Ok(len) = usize::try_from(rest.parse::<i64>().map_err(|e| e.to_string())?) else {
                return Ok(String::new()); // nil
            };
            let mut buf = vec![0; len + 2];
            reader.read_exact(&mut buf).map_err(|e| e.to_string())?;
            buf.truncate(len);
            Ok(String::from_utf8_lossy(&buf).into_owned())
        }
        _ => Err(format!("unexpected reply line {line:?}")),
    }
}

/// Runs `redis-cli -h 127.0.0.1 -p PORT [-c] ARGS...`; `Err` when it cannot reach the server.
fn run_cli(port: u16, cluster: bool, args: &[&str]) -> Result<String, String> {
    let out = Command::new(redis_cli_bin())
        .args(["-h", HOST, "-p", &port.to_string()])
        .args(cluster.then_some("-c"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run redis-cli: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(format!(
            "redis-cli -p {port} {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        ))
    }
}

/// The value of `field` in `INFO` / `CLUSTER INFO` output.
pub(crate) fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.trim_end().strip_prefix(field)?.strip_prefix(':'))
}

/// `redis-cli` prints a (nested) array reply of field/value pairs one element a line; this
/// groups them into maps, starting a new one at each `name` field (`SENTINEL replicas` etc.).
fn field_maps(output: &str) -> Vec<HashMap<String, String>> {
    let lines: Vec<&str> = output.lines().collect();
    let mut maps: Vec<HashMap<String, String>> = Vec::new();
    for pair in lines.chunks(2) {
        if let [k, v] = pair {
            if *k == "name" || maps.is_empty() {
                maps.push(HashMap::new());
            }
            maps.last_mut()
                .unwrap()
                .insert((*k).to_owned(), (*v).to_owned());
        }
    }
    maps
}

/// Runs a command to completion, or kills it at the deadline. Output goes to `log`.
fn run_with_deadline(
    mut cmd: Command,
    log: &Path,
    timeout: Duration,
) -> Result<ExitStatus, String> {
    let file = File::create(log).map_err(|e| e.to_string())?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone().map_err(|e| e.to_string())?)
        .stderr(file)
        .spawn()
        .map_err(|e| e.to_string())?;
    let result = poll_until(Instant::now() + timeout, || match child.try_wait() {
        Ok(Some(status)) => Ok(status),
        Ok(None) => Err(format!("still running after {timeout:?}")),
        Err(e) => Err(format!("waiting for it: {e}")),
    });
    if result.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    result
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path)
        .unwrap_or_else(|e| format!("<cannot read {}: {e}>", path.display()));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// Standalone server (also the building block of the cluster and sentinel fixtures)
// ---------------------------------------------------------------------------------------------

/// One `redis-server` (or `redis-server --sentinel`) process on its own port and directory.
///
/// It runs from a config file in its directory, equivalent to `--save "" --appendonly no --bind
/// 127.0.0.1 --port P --dir TMP --daemonize no`, plus `repl-diskless-sync-delay 0` (replicas sync
/// at once, not after 5 s) and `enable-debug-command local` (`DEBUG SLEEP` for timeout tests).
/// A config file rather than flags so that `CONFIG REWRITE` (which sentinel issues when it
/// reconfigures replication) persists, and `restart` comes back in the role it was last given.
/// stdout and stderr, which hold Redis's log, go to `redis.log` in the directory.
pub(crate) struct RedisServer {
    port: u16,
    dir: TempDir,
    conf: PathBuf,
    log: PathBuf,
    sentinel: bool,
    child: Mutex<Option<Child>>,
}

struct StartError {
    port_in_use: bool,
    message: String,
}

impl RedisServer {
    /// Starts a standalone server and waits until it answers.
    pub(crate) fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// Starts a server with extra `redis.conf` lines, e.g. `"replicaof 127.0.0.1 12345"` or
    /// `"maxmemory 1mb"`, and waits until it answers.
    pub(crate) fn start_with(extra_conf: &[&str]) -> RedisServer {
        Self::launch(false, extra_conf)
    }

    /// Starts `redis-server sentinel.conf --sentinel` with the given `sentinel.conf` lines.
    pub(crate) fn start_sentinel(sentinel_conf: &[&str]) -> RedisServer {
        Self::launch(true, sentinel_conf)
    }

    fn launch(sentinel: bool, extra_conf: &[&str]) -> RedisServer {
        let mut failures = Vec::new();
        for _ in 0..5 {
            let port = free_port();
            let dir = TempDir::new(port);
            let conf = dir.0.join(if sentinel {
                "sentinel.conf"
            } else {
                "redis.conf"
            });
            let mut text = format!(
                "port {port}\nbind {HOST}\ndaemonize no\ndir \"{d}\"\npidfile \"{d}/redis.pid\"\n\
                 logfile \"\"\nset-proc-title no\n",
                d = dir.0.display()
            );
            if !sentinel {
                text.push_str("save \"\"\nappendonly no\nrepl-diskless-sync-delay 0\nenable-debug-command local\n");
            }
            for line in extra_conf {
                text.push_str(line);
                text.push('\n');
            }
            fs::write(&conf, text)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", conf.display()));
            let server = RedisServer {
                port,
                log: dir.0.join("redis.log"),
                dir,
                conf,
                sentinel,
                child: Mutex::new(None),
            };
            match server.spawn_and_wait() {
                Ok(()) => return server,
                // Another process took the port between free_port() and Redis binding it.
                Err(e) if e.port_in_use => failures.push(e.message),
                Err(e) => panic!("{}", e.message),
            }
        }
        panic!(
            "redis-server could not bind a free port in 5 tries:\n{}",
            failures.join("\n\n")
        )
    }

    fn spawn_and_wait(&self) -> Result<(), StartError> {
        let fail = |message: String| StartError {
            port_in_use: false,
            message,
        };
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| fail(format!("cannot open {}: {e}", self.log.display())))?;
        let stderr = log.try_clone().map_err(|e| fail(e.to_string()))?;
        let mut cmd = Command::new(redis_server_bin());
        cmd.arg(&self.conf);
        if self.sentinel {
            cmd.arg("--sentinel");
        }
        let child = cmd
            .current_dir(&self.dir.0)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .map_err(|e| {
                fail(format!(
                    "cannot spawn {}: {e}",
                    redis_server_bin().display()
                ))
            })?;
        let pid = child.id().to_string();
        *lock(&self.child) = Some(child);

        let deadline = Instant::now() + START_TIMEOUT;
        let mut exited = None;
        let ready = poll_until(deadline, || {
            if let Some(status) = self.try_reap() {
                exited = Some(status);
                return Ok(()); // stop polling: it is not coming up
            }
            // Ready = answers PING (not -LOADING) and is *our* process, not whoever else might
            // hold the port if our bind failed.
            let replies = raw_request(self.port, &["PING", "INFO server"])?;
            match info_field(&replies[1], "process_id") {
                Some(p) if p == pid => Ok(()),
                other => Err(format!(
                    "port {} answered with process_id {other:?}, expected {pid}",
                    self.port
                )),
            }
        });
        let what = if self.sentinel {
            "redis sentinel"
        } else {
            "redis-server"
        };
        if let Some(status) = exited {
            let log = self.log_tail(LOG_TAIL_LINES);
            return Err(StartError {
                port_in_use: log.contains("Address already in use"),
                message: format!(
                    "{what} on port {} exited during start-up ({status}); log {}:\n{log}",
                    self.port,
                    self.log.display()
                ),
            });
        }
        ready.map_err(|last| {
            self.kill();
            fail(format!(
                "{what} on port {} not ready within {START_TIMEOUT:?} (last: {last}); log {}:\n{}",
                self.port,
                self.log.display(),
                self.log_tail(LOG_TAIL_LINES)
            ))
        })
    }

    /// If the process has exited, reaps it and returns its status.
    fn try_reap(&self) -> Option<ExitStatus> {
        let mut child = lock(&self.child);
        let status = child.as_mut()?.try_wait().ok()??;
        *child = None;
        Some(status)
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`
    pub(crate) fn url(&self) -> String {
        format!("redis://{HOST}:{}", self.port)
    }

    /// `("127.0.0.1", PORT)`
    pub(crate) fn addr(&self) -> (String, u16) {
        (HOST.to_owned(), self.port)
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir.0
    }

    pub(crate) fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of the server's log.
    pub(crate) fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    /// Whether the process is alive (it may still be starting up).
    pub(crate) fn is_running(&self) -> bool {
        let _ = self.try_reap();
        lock(&self.child).is_some()
    }

    /// Whether the server answers `PING` with `PONG` right now.
    pub(crate) fn ping(&self) -> bool {
        raw_request(self.port, &["PING"]).is_ok_and(|r| r[0] == "PONG")
    }

    /// SIGKILLs the process and waits for it to exit. No-op when it is not running.
    pub(crate) fn kill(&self) {
        if let Some(mut child) = lock(&self.child).take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the process if it runs, starts it again on the same port with the same directory
    /// and config, and waits until it answers.
    pub(crate) fn restart(&self) {
        self.kill();
        if let Err(e) = self.spawn_and_wait() {
            panic!("restart failed: {}", e.message);
        }
    }

    /// Runs `redis-cli -h 127.0.0.1 -p PORT ARGS...` and returns its stdout, trimmed. Error replies
    /// come back as text (`ERR ...`); panics, with the log tail, when the server cannot be reached.
    pub(crate) fn cli(&self, args: &[&str]) -> String {
        run_cli(self.port, false, args).unwrap_or_else(|e| {
            panic!(
                "{e}\nlog {}:\n{}",
                self.log.display(),
                self.log_tail(LOG_TAIL_LINES)
            )
        })
    }

    /// Like [`cli`](Self::cli), but `Err` instead of a panic when the server cannot be reached.
    pub(crate) fn try_cli(&self, args: &[&str]) -> Result<String, String> {
        run_cli(self.port, false, args)
    }

    fn described_tail(&self, role: &str) -> String {
        format!(
            "--- {role} {} ({}):\n{}",
            self.port,
            self.log.display(),
            self.log_tail(LOG_TAIL_LINES)
        )
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        release_port(self.port);
        // The directory goes when `self.dir` drops, right after this.
    }
}

// ---------------------------------------------------------------------------------------------
// Cluster
// ---------------------------------------------------------------------------------------------

/// A Redis Cluster of masters without replicas, created with `redis-cli --cluster create`.
pub(crate) struct RedisCluster {
    pub(crate) nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `masters` (at least 3) cluster-enabled servers, joins them with `redis-cli --cluster
    /// create ... --cluster-replicas 0 --cluster-yes` and waits until every node reports
    /// `cluster_state:ok` with all 16384 slots assigned.
    pub(crate) fn start(masters: usize) -> RedisCluster {
        assert!(
            masters >= 3,
            "redis-cli --cluster create needs at least 3 masters, got {masters}"
        );
        let conf = [
            "cluster-enabled yes",
            "cluster-config-file nodes.conf",
            "cluster-node-timeout 2000",
        ];
        let cluster = RedisCluster {
            nodes: (0..masters)
                .map(|_| RedisServer::start_with(&conf))
                .collect(),
        };

        let mut cmd = Command::new(redis_cli_bin());
        cmd.args(["--cluster", "create"]);
        cmd.args(cluster.nodes.iter().map(|n| format!("{HOST}:{}", n.port)));
        cmd.args(["--cluster-replicas", "0", "--cluster-yes"]);
        let log = cluster.nodes[0].dir().join("cluster-create.log");
        match run_with_deadline(cmd, &log, CLUSTER_TIMEOUT) {
            Ok(status) if status.success() => {}
            outcome => panic!(
                "redis-cli --cluster create failed ({outcome:?}):\n{}\n{}",
                tail(&log, 40),
                cluster.log_tails()
            ),
        }
        cluster.wait_ok();
        cluster
    }

    /// Waits until every node reports `cluster_state:ok`, all 16384 slots assigned and ok, and
    /// knows every other node. Use it also after restarting a node.
    pub(crate) fn wait_ok(&self) {
        let n = self.nodes.len().to_string();
        let result = poll_until(Instant::now() + CLUSTER_TIMEOUT, || {
            for node in &self.nodes {
                let info = node.try_cli(&["CLUSTER", "INFO"])?;
                let ok = info_field(&info, "cluster_state") == Some("ok")
                    && info_field(&info, "cluster_slots_assigned") == Some("16384")
                    && info_field(&info, "cluster_slots_ok") == Some("16384")
                    && info_field(&info, "cluster_known_nodes") == Some(n.as_str());
                if !ok {
                    return Err(format!("node {}: {}", node.port, info.replace("\r\n", " ")));
                }
            }
            Ok(())
        });
        if let Err(last) = result {
            panic!(
                "cluster not ok within {CLUSTER_TIMEOUT:?}; last: {last}\n{}",
                self.log_tails()
            );
        }
    }

    /// `redis://127.0.0.1:PORT` of every node.
    pub(crate) fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    pub(crate) fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(RedisServer::port).collect()
    }

    /// `redis-cli -c` (following MOVED/ASK redirections) against the first running node.
    pub(crate) fn cli(&self, args: &[&str]) -> String {
        let node = self
            .nodes
            .iter()
            .find(|n| n.is_running())
            .expect("no cluster node is running");
        run_cli(node.port, true, args).unwrap_or_else(|e| panic!("{e}\n{}", self.log_tails()))
    }

    fn log_tails(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.described_tail("cluster node"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

// ---------------------------------------------------------------------------------------------
// Sentinel
// ---------------------------------------------------------------------------------------------

/// A master, one replica and sentinels (3 by default, quorum 2) monitoring them as
/// [`SENTINEL_MASTER_NAME`], with `down-after-milliseconds 1000` and `failover-timeout 5000`.
///
/// After [`failover`](Self::failover) the `master` and `replica` fields are swapped, so `master`
/// is always the node the sentinels report.
pub(crate) struct RedisSentinel {
    pub(crate) master: RedisServer,
    pub(crate) replica: RedisServer,
    pub(crate) sentinels: Vec<RedisServer>,
    pub(crate) master_name: &'static str,
}

impl RedisSentinel {
    /// Master, replica and 3 sentinels with quorum 2. Returns once the replica's link is up and
    /// every sentinel knows the master, the replica and the other sentinels (so quorum-based
    /// failover on a master crash works too).
    pub(crate) fn start() -> RedisSentinel {
        Self::start_with_sentinels(3)
    }

    /// Like [`start`](Self::start) with `count` sentinels and a majority quorum.
    pub(crate) fn start_with_sentinels(count: usize) -> RedisSentinel {
        assert!(count >= 1, "need at least one sentinel");
        let master = RedisServer::start();
        let replica = RedisServer::start_with(&[&format!("replicaof {HOST} {}", master.port)]);
        let mut fixture = RedisSentinel {
            master,
            replica,
            sentinels: Vec::new(),
            master_name: SENTINEL_MASTER_NAME,
        };
        // Sentinels discover replicas from the master's INFO, which they then poll only every
        // 10 s: start them once the replica is attached so the first INFO already lists it.
        fixture.wait_replica_synced();
        let monitor = format!(
            "sentinel monitor {SENTINEL_MASTER_NAME} {HOST} {} {}",
            fixture.master.port,
            count / 2 + 1
        );
        let conf = [
            monitor.as_str(),
            "sentinel down-after-milliseconds mymaster 1000",
            "sentinel failover-timeout mymaster 5000",
            "sentinel parallel-syncs mymaster 1",
        ];
        fixture.sentinels = (0..count)
            .map(|_| RedisServer::start_sentinel(&conf))
            .collect();
        fixture.wait_sentinels_settled();
        fixture
    }

    /// `redis://127.0.0.1:PORT` of every sentinel.
    pub(crate) fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels.iter().map(RedisServer::url).collect()
    }

    /// The master's address as the first running sentinel reports it
    /// (`SENTINEL get-master-addr-by-name mymaster`).
    pub(crate) fn master_addr(&self) -> (String, u16) {
        let sentinel = self
            .sentinels
            .iter()
            .find(|s| s.is_running())
            .expect("no sentinel is running");
        Self::reported_master(sentinel).unwrap_or_else(|e| panic!("{e}\n{}", self.log_tails()))
    }

    fn reported_master(sentinel: &RedisServer) -> Result<(String, u16), String> {
        let out =
            sentinel.try_cli(&["SENTINEL", "get-master-addr-by-name", SENTINEL_MASTER_NAME])?;
        let mut lines = out.lines();
        match (
            lines.next(),
            lines.next().and_then(|p| p.trim().parse().ok()),
        ) {
            (Some(host), Some(port)) => Ok((host.trim().to_owned(), port)),
            _ => Err(format!(
                "sentinel {}: unexpected get-master-addr-by-name reply {out:?}",
                sentinel.port
            )),
        }
    }

    /// Runs `SENTINEL FAILOVER mymaster` and waits until every running sentinel reports the
    /// former replica as master and that node reports `role:master`; then swaps `master` and
    /// `replica`. Takes about 1-2 s.
    ///
    /// The sentinels turn the former master into a replica of the new one only about 10 s later
    /// (they wait 8 s first, by design): call [`wait_replica_synced`](Self::wait_replica_synced)
    /// before a test relies on that, e.g. before a second failover.
    pub(crate) fn failover(&mut self) {
        let deadline = Instant::now() + FAILOVER_TIMEOUT;
        let sentinel = self
            .sentinels
            .iter()
            .find(|s| s.is_running())
            .expect("no sentinel is running");
        let target = self.replica.port;
        let asked = poll_until(deadline, || {
            let reply = sentinel.try_cli(&["SENTINEL", "FAILOVER", SENTINEL_MASTER_NAME])?;
            // NOGOODSLAVE: the sentinel's view of the replica is not fresh enough yet; retry.
            if reply == "OK" || reply.starts_with("INPROG") {
                Ok(())
            } else {
                Err(reply)
            }
        });
        let promoted = asked.and_then(|()| {
            poll_until(deadline, || {
                for s in self.sentinels.iter().filter(|s| s.is_running()) {
                    let (_, port) = Self::reported_master(s)?;
                    if port != target {
                        return Err(format!(
                            "sentinel {} still reports master port {port}",
                            s.port
                        ));
                    }
                }
                let info = self.replica.try_cli(&["INFO", "replication"])?;
                match info_field(&info, "role") {
                    Some("master") => Ok(()),
                    role => Err(format!("node {target} reports role {role:?}")),
                }
            })
        });
        if let Err(last) = promoted {
            panic!(
                "failover to {target} not done within {FAILOVER_TIMEOUT:?}; last: {last}\n{}",
                self.log_tails()
            );
        }
        std::mem::swap(&mut self.master, &mut self.replica);
    }

    /// Waits until `replica` replicates from `master` with its link up.
    pub(crate) fn wait_replica_synced(&self) {
        let master_port = self.master.port.to_string();
        let result = poll_until(Instant::now() + SENTINEL_TIMEOUT, || {
            let info = self.replica.try_cli(&["INFO", "replication"])?;
            let ok = info_field(&info, "role") == Some("slave")
                && info_field(&info, "master_port") == Some(master_port.as_str())
                && info_field(&info, "master_link_status") == Some("up");
            if ok {
                Ok(())
            } else {
                Err(info.replace("\r\n", " "))
            }
        });
        if let Err(last) = result {
            panic!(
                "replica {} not synced with master {} within {SENTINEL_TIMEOUT:?}; last: {last}\n{}",
                self.replica.port,
                self.master.port,
                self.log_tails()
            );
        }
    }

    /// Waits until every running sentinel sees `master` as master (up), `replica` as its replica
    /// (up) and all other sentinels.
    pub(crate) fn wait_sentinels_settled(&self) {
        let others = (self.sentinels.len() - 1).to_string();
        let (master_port, replica_port) =
            (self.master.port.to_string(), self.replica.port.to_string());
        let result = poll_until(Instant::now() + SENTINEL_TIMEOUT, || {
            for s in self.sentinels.iter().filter(|s| s.is_running()) {
                let master = s.try_cli(&["SENTINEL", "master", SENTINEL_MASTER_NAME])?;
                let master = field_maps(&master).pop().unwrap_or_default();
                let get = |k: &str| master.get(k).map(String::as_str);
                if get("port") != Some(master_port.as_str())
                    || get("flags") != Some("master")
                    || get("num-other-sentinels") != Some(others.as_str())
                {
                    return Err(format!("sentinel {}: master {master:?}", s.port));
                }
                let replicas = s.try_cli(&["SENTINEL", "replicas", SENTINEL_MASTER_NAME])?;
                // `flags` exactly "slave": not s_down, not disconnected.
                let known = field_maps(&replicas).iter().any(|r| {
                    r.get("port") == Some(&replica_port)
                        && r.get("flags").map(String::as_str) == Some("slave")
                });
                if !known {
                    return Err(format!("sentinel {}: replicas {replicas:?}", s.port));
                }
            }
            Ok(())
        });
        if let Err(last) = result {
            panic!(
                "sentinels not settled within {SENTINEL_TIMEOUT:?}; last: {last}\n{}",
                self.log_tails()
            );
        }
    }

    fn log_tails(&self) -> String {
        let mut tails = vec![
            self.master.described_tail("master"),
            self.replica.described_tail("replica"),
        ];
        tails.extend(self.sentinels.iter().map(|s| s.described_tail("sentinel")));
        tails.join("\n")
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        // Sentinels first, so they do not react to the data nodes going away.
        self.sentinels.clear();
    }
}
