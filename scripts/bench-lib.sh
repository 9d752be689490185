# shellcheck shell=bash
# shellcheck disable=SC2034 # NGINX, VARNISHD, FREE_PORT, HZ... are read by the sourcing script
# Shared parts of the load scripts (scripts/bench.sh, scripts/bench-l1.sh): tools, the build,
# process tracking and cleanup, free ports, CPU accounting, one measured wrk run, statistics.
# Sourced, never run. The caller sets BENCH_TAG (log prefix) before sourcing.

BENCH_TAG=${BENCH_TAG:-bench}

log() { printf '[%s %s] %s\n' "$BENCH_TAG" "$(date -u +%H:%M:%S)" "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# --- tools -----------------------------------------------------------------------------------
# need_tools wrk nginx varnish redis curl taskset ps valgrind: installs (apt-get) what is missing.
need_tools() {
    local t pkgs=()
    for t in "$@"; do
        case $t in
        wrk) command -v wrk >/dev/null 2>&1 || pkgs+=(wrk) ;;
        nginx) command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || pkgs+=(nginx-light) ;;
        varnish) command -v varnishd >/dev/null 2>&1 || [[ -x /usr/sbin/varnishd ]] || pkgs+=(varnish) ;;
        redis) { command -v redis-server && command -v redis-cli; } >/dev/null 2>&1 || pkgs+=(redis-server) ;;
        curl) command -v curl >/dev/null 2>&1 || pkgs+=(curl) ;;
        taskset) command -v taskset >/dev/null 2>&1 || pkgs+=(util-linux) ;;
        ps) command -v ps >/dev/null 2>&1 || pkgs+=(procps) ;;
        valgrind) command -v valgrind >/dev/null 2>&1 || pkgs+=(valgrind) ;;
        h2load) command -v h2load >/dev/null 2>&1 || pkgs+=(nghttp2-client) ;;
        cc) command -v cc >/dev/null 2>&1 || pkgs+=(gcc libc6-dev) ;; # varnishd compiles VCL
        *) die "need_tools: unknown tool $t" ;;
        esac
    done
    if ((${#pkgs[@]})); then
        log "installing ${pkgs[*]} (apt-get)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null ||
            die "apt-get install ${pkgs[*]} failed"
    fi
    NGINX=$(command -v nginx || echo /usr/sbin/nginx)
    VARNISHD=$(command -v varnishd || echo /usr/sbin/varnishd)
}

# --- the binary under test -------------------------------------------------------------------
# Sets BIN and BUILD_DESC. SIDECACHE_BIN=path skips the build and measures that binary;
# SIDECACHE_BIN_DESC says what it was built from, for the report.
build_sidecache() {
    if [[ -n ${SIDECACHE_BIN:-} ]]; then
        BIN=$SIDECACHE_BIN
        BUILD_DESC="prebuilt $BIN${SIDECACHE_BIN_DESC:+ ($SIDECACHE_BIN_DESC)}"
        log "using $BIN (no build)"
    else
        log "cargo build --release"
        cargo build --release --quiet || die "cargo build --release failed"
        BIN="$ROOT/target/release/sidecache"
        BUILD_DESC="work tree at $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
        [[ -z $(git -C "$ROOT" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null) ]] ||
            BUILD_DESC+=" + uncommitted changes"
    fi
    [[ -x $BIN ]] || die "$BIN is not an executable"
}

# --- processes and cleanup -------------------------------------------------------------------
# Every process is started with `spawn NAME cmd...` (in the background, its pid in PID[NAME])
# and stopped with `stop NAME`; whatever is still running on exit is stopped by the trap.
declare -gA PID=()
WRK_PID=
TMP=

spawn() {
    local name=$1
    shift
    "$@" >"$TMP/$name.out" 2>&1 &
    PID[$name]=$!
}

stop_pid() {
    local pid=$1
    kill -TERM "$pid" 2>/dev/null || return 0
    # Bounded wait; whatever ignores TERM for 5 s gets KILL.
    for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

stop() {
    local name=$1
    [[ -n ${PID[$name]:-} ]] || return 0
    stop_pid "${PID[$name]}"
    unset "PID[$name]"
}

# Call from the EXIT trap: stops wrk and every spawned process (in reverse start order does not
# matter here: nothing depends on an orderly shutdown), then removes TMP unless KEEP_TMP=1.
cleanup_processes() {
    local name
    [[ -n $WRK_PID ]] && kill -TERM "$WRK_PID" 2>/dev/null
    for name in "${!PID[@]}"; do kill -TERM "${PID[$name]}" 2>/dev/null; done
    for name in "${!PID[@]}"; do stop_pid "${PID[$name]}"; done
    if [[ -n $TMP && -d $TMP ]]; then
        if [[ ${KEEP_TMP:-0} == 1 ]]; then
            log "kept $TMP"
        else
            rm -rf "$TMP"
        fi
    fi
}

alive() { kill -0 "${PID[$1]}" 2>/dev/null; }

# Sets FREE_PORT to a free loopback port: nothing answers a connect, and it was not handed out
# before. (Not called in a subshell, so that USED_PORTS remembers.)
USED_PORTS=" "
free_port() {
    local p
    for _ in $(seq 1 200); do
        p=$((20000 + RANDOM % 40000))
        [[ $USED_PORTS == *" $p "* ]] && continue
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            USED_PORTS+="$p "
            FREE_PORT=$p
            return 0
        fi
    done
    die "no free port found"
}

# Polls URL until it answers 2xx (or anything at all, with "any" as $3), or dies after $2 s.
wait_http() {
    local url=$1 deadline=$((SECONDS + $2)) flags=-fsS
    [[ ${3:-} == any ]] && flags=-sS
    while ((SECONDS < deadline)); do
        curl "$flags" -o /dev/null --max-time 1 "$url" 2>/dev/null && return 0
        sleep 0.05
    done
    die "$url did not answer within $2 s"
}

# --- nginx config pieces -----------------------------------------------------------------------
# As root, nginx workers would run as nobody and could not use TMP (0700).
nginx_user() { [[ $(id -u) == 0 ]] && echo "user root;"; }

# The head of an nginx config whose every path is inside its own prefix $1.
nginx_head() {
    local p=$1
    cat <<EOF
$(nginx_user)
worker_processes 1;
daemon off;
pid $p/nginx.pid;
error_log $p/logs/error.log warn;
EOF
}
nginx_temp_paths() {
    local p=$1
    cat <<EOF
    client_body_temp_path $p/client_body;
    proxy_temp_path $p/proxy;
    fastcgi_temp_path $p/fastcgi;
    uwsgi_temp_path $p/uwsgi;
    scgi_temp_path $p/scgi;
EOF
}
# worker_cpu_affinity wants a bit mask, CPU 0 rightmost.
cpu_mask() {
    local m=1 i
    for ((i = 0; i < $1; i++)); do m+=0; done
    echo "$m"
}

# --- CPU accounting ----------------------------------------------------------------------------
HZ=$(getconf CLK_TCK 2>/dev/null || echo 100)

# CPU ticks (user + system) of a process and its direct children (nginx: master + worker;
# varnishd: manager + child). The comm field is skipped by cutting after ") ".
proc_ticks() {
    local pid sum=0 t
    for pid in "$1" $(ps -o pid= --ppid "$1" 2>/dev/null); do
        t=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$pid/stat" 2>/dev/null || echo 0)
        sum=$((sum + t))
    done
    echo "$sum"
}
# "busy softirq+irq total" ticks of one CPU (busy excludes idle and iowait).
cpu_ticks() {
    awk -v c="cpu$1" '$1 == c { t = 0; for (i = 2; i <= 9; i++) t += $i; print t - $5 - $6, $7 + $8, t }' /proc/stat
}
# Ticks of both CPUs spent outside idle, in a short window: a foreign job (a CI run, a build)
# shows up here while our own servers are idle.
busy_pct() {
    local w=${1:-0.3} i0 t0 i1 t1
    read -r i0 t0 <<<"$(awk '/^cpu / { print $5 + $6, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat)"
    sleep "$w"
    read -r i1 t1 <<<"$(awk '/^cpu / { print $5 + $6, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat)"
    awk -v i=$((i1 - i0)) -v t=$((t1 - t0)) 'BEGIN { printf "%.0f", t ? 100 * (t - i) / t : 0 }'
}

# Waits until the 1-minute load average is below $1 (default 0.5), for at most $2 seconds
# (default 600). Returns 1 if it never got there.
wait_loadavg() {
    local limit=${1:-0.5} max=${2:-600} deadline l
    deadline=$((SECONDS + max))
    while :; do
        l=$(cut -d' ' -f1 /proc/loadavg)
        awk -v l="$l" -v m="$limit" 'BEGIN { exit !(l < m) }' && return 0
        ((SECONDS >= deadline)) && return 1
        log "waiting for the machine to be idle: load average $l (want < $limit; $((deadline - SECONDS)) s left)"
        sleep 10
    done
}

# Waits until both CPUs are at most $1 % busy (default 10) over a 0.3 s window while our own
# processes are idle, for at most $2 seconds (default 300). Returns 1 if never.
wait_quiet() {
    local limit=${1:-10} max=${2:-300} deadline b next_log=$SECONDS
    deadline=$((SECONDS + max))
    while :; do
        b=$(busy_pct 0.3)
        ((b <= limit)) && return 0
        ((SECONDS >= deadline)) && return 1
        if ((SECONDS >= next_log)); then
            log "other work on the machine: CPUs ${b}% busy while the benchmark is idle; waiting"
            next_log=$((SECONDS + 15))
        fi
        sleep 1
    done
}

# --- statistics ----------------------------------------------------------------------------
median() { sort -g | awk '{ v[NR] = $1 } END { if (!NR) print 0; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0 || a == "") print "–"; else printf "%.2f", a / b }'; }
# Latency in microseconds from wrk's "12.34us|ms|s".
to_us() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        f = (u == "ms") ? 1000 : (u == "s") ? 1000000 : 1
        printf "%.1f", n * f }'
}
