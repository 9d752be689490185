#!/usr/bin/env bash
# L1 hit throughput: sidecache vs nginx proxy_cache, all answering a ~600-byte JSON group
# record from their cache with one worker pinned to CPU 0; wrk is pinned to CPU 1.
#
#   scripts/bench-l1.sh                    # DURATION=10 RUNS=3, about 2 minutes after the build
#   DURATION=5 RUNS=1 scripts/bench-l1.sh
#   KEEP_TMP=1 scripts/bench-l1.sh         # keep the generated configs and logs
#   SIDECACHE_BIN=/path/to/sidecache scripts/bench-l1.sh   # skip the build, measure that binary
#
# Cases (each its own process, same origin):
#   sidecache    L1 hits, `[runtime] worker_threads = 1`
#   nginx        proxy_cache with Debian's stock http settings (sendfile on, tcp_nopush on)
#   nginx-tuned  proxy_cache with the fastest settings found for this object: sendfile off
#                (one writev instead of setsockopt+writev+sendfile+setsockopt) and
#                open_file_cache (no open/fstat/close of the cache file per hit)
#
# Prints a markdown table and writes it to bench-results/l1-latest.md; raw wrk outputs, the
# generated configs and sidecache's /metrics go to bench-results/tmp/l1-<timestamp>/ (ignored
# by git). Everything listens on 127.0.0.1 only. Target: sidecache >= 1.5x nginx.
set -euo pipefail

DURATION=${DURATION:-10}
RUNS=${RUNS:-3}
CONNECTIONS=${CONNECTIONS:-64}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
TARGET_RATIO=${TARGET_RATIO:-1.5}
PATH_UNDER_TEST=/api/groups/VIP/EURUSD
CASES=(sidecache nginx nginx-tuned)

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT="$ROOT/bench-results"
RAW="$OUT/tmp/l1-$STAMP"

log() { printf '[bench-l1] %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

[[ $DURATION =~ ^[0-9]+$ ]] && ((DURATION >= 1 && DURATION <= 600)) || die "DURATION must be 1..600 seconds"
[[ $RUNS =~ ^[0-9]+$ ]] && ((RUNS >= 1 && RUNS <= 20)) || die "RUNS must be 1..20"
[[ $CONNECTIONS =~ ^[0-9]+$ ]] && ((CONNECTIONS >= 1 && CONNECTIONS <= 4000)) || die "CONNECTIONS must be 1..4000"
mkdir -p "$RAW"

# --- tools -------------------------------------------------------------------------------
need_apt=()
command -v wrk >/dev/null 2>&1 || need_apt+=(wrk)
command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || need_apt+=(nginx-light)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v taskset >/dev/null 2>&1 || need_apt+=(util-linux)
command -v ps >/dev/null 2>&1 || need_apt+=(procps)
if ((${#need_apt[@]})); then
    log "installing ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[[ -x $NGINX ]] || die "nginx not found"
if (($(nproc) < 2)); then
    log "warning: $(nproc) CPU; the proxies and wrk will share it"
    LOAD_CPU=$PROXY_CPU
fi

# --- build -------------------------------------------------------------------------------
# SIDECACHE_BIN=path skips the build and measures that binary (e.g. one built elsewhere);
# SIDECACHE_BIN_DESC says what it was built from, for the report.
if [[ -n ${SIDECACHE_BIN:-} ]]; then
    BIN=$SIDECACHE_BIN
    BUILD_DESC="prebuilt $BIN${SIDECACHE_BIN_DESC:+ ($SIDECACHE_BIN_DESC)}"
    log "using $BIN (no build)"
else
    log "cargo build --release"
    cargo build --release --quiet
    BIN="$ROOT/target/release/sidecache"
    BUILD_DESC="work tree at $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    [[ -z $(git status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null) ]] || BUILD_DESC+=" + uncommitted changes"
fi
[[ -x $BIN ]] || die "$BIN is not an executable"

# --- processes and cleanup ---------------------------------------------------------------
TMP=$(mktemp -d /tmp/sidecache-bench-l1.XXXXXX)
PIDS=()
WRK_PID=
cleanup() {
    local rc=$? pid
    set +e
    [[ -n $WRK_PID ]] && kill -TERM "$WRK_PID" 2>/dev/null
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null
    done
    for pid in "${PIDS[@]}"; do
        # Bounded wait; whatever ignores TERM for 5 s gets KILL.
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    if [[ ${KEEP_TMP:-0} == 1 ]]; then
        log "kept $TMP"
    else
        rm -rf "$TMP"
    fi
    rmdir "$RAW" 2>/dev/null # only if a failure left it empty
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Sets FREE_PORT to a free loopback port: nothing answers a connect, and we have not handed
# it out yet. (Not called in a subshell, so that USED_PORTS remembers.)
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

# Polls URL until it answers with 2xx (or at all, with "any" as $3), or dies after $2 seconds.
wait_http() {
    local url=$1 deadline=$((SECONDS + $2)) flags=-fsS
    [[ ${3:-} == any ]] && flags=-sS
    while ((SECONDS < deadline)); do
        curl "$flags" -o /dev/null --max-time 1 "$url" 2>/dev/null && return 0
        sleep 0.05
    done
    die "$url did not answer within $2 s"
}

declare -A PORT PID URL
free_port && ORIGIN_PORT=$FREE_PORT
free_port && SC_ADMIN_PORT=$FREE_PORT
for c in "${CASES[@]}"; do free_port && PORT[$c]=$FREE_PORT; done

# worker_cpu_affinity wants a bit mask, CPU 0 rightmost.
CPU_MASK=1
for ((i = 0; i < PROXY_CPU; i++)); do CPU_MASK+=0; done
# As root, nginx workers would run as nobody and could not use $TMP (0700).
NGINX_USER=""
[[ $(id -u) == 0 ]] && NGINX_USER="user root;"

# The head of an nginx config whose every path is inside its own prefix $1.
nginx_head() {
    local p=$1
    cat <<EOF
$NGINX_USER
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

# --- (a) origin: nginx serving one JSON group record ---------------------------------------
O="$TMP/origin"
mkdir -p "$O/logs" "$O/html/api/groups/VIP"
# A ~600-byte group record, the same as in benches/hit_path.rs.
printf '%s' '{"group":"VIP","symbol":"EURUSD","description":"Euro vs US Dollar","digits":5,"contract_size":100000,"margin_currency":"EUR","profit_currency":"USD","spread":{"type":"floating","markup_points":2,"min_points":0,"max_points":50},"commission":{"type":"per_lot","value":3.5,"currency":"USD","charge":"open_close"},"swap":{"long":-6.91,"short":1.23,"triple_day":"wednesday","mode":"points"},"margin":{"initial":0.01,"maintenance":0.005,"hedged":0.5,"leverage":100},"volume":{"min":0.01,"max":100.0,"step":0.01,"limit":1000.0},"trade_mode":"full","execution":"market","updated_at":"2025-01-15T09:30:00Z","version":42}' \
    >"$O/html/api/groups/VIP/EURUSD"
BODY_BYTES=$(wc -c <"$O/html/api/groups/VIP/EURUSD")
cat >"$O/nginx.conf" <<EOF
$(nginx_head "$O")
events { worker_connections 1024; }
http {
$(nginx_temp_paths "$O")
    access_log $O/logs/access.log;
    server {
        listen 127.0.0.1:$ORIGIN_PORT;
        root $O/html;
        location /api/groups/ {
            types { }
            default_type application/json;
            add_header Cache-Control "max-age=3600";
        }
    }
}
EOF

# --- (c) nginx proxy_cache in front of the origin, two flavours ----------------------------
# $1 case name, $2.. extra http-level directives.
nginx_cache_conf() {
    local name=$1 n="$TMP/$1"
    shift
    mkdir -p "$n/logs" "$n/cache"
    cat >"$n/nginx.conf" <<EOF
$(nginx_head "$n")
worker_cpu_affinity $CPU_MASK;
events { worker_connections 4096; }
http {
$(nginx_temp_paths "$n")
    access_log off;
    tcp_nodelay on;
$(printf '    %s\n' "$@")
    # nginx closes a keep-alive connection after 1000 requests by default; hyper never does.
    keepalive_requests 100000000;
    keepalive_timeout 75s;
    proxy_cache_path $n/cache levels=1:2 keys_zone=l1:10m max_size=128m inactive=1h use_temp_path=off;
    upstream origin {
        server 127.0.0.1:$ORIGIN_PORT;
        keepalive 32;
    }
    server {
        listen 127.0.0.1:${PORT[$name]};
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache l1;
            proxy_cache_valid 200 1h;
            add_header X-Cache-Status \$upstream_cache_status;
        }
    }
}
EOF
}
nginx_cache_conf nginx "sendfile on;" "tcp_nopush on;"
nginx_cache_conf nginx-tuned "sendfile off;" \
    "open_file_cache max=1000 inactive=60s;" "open_file_cache_valid 60s;" "open_file_cache_min_uses 1;"

# --- (b) sidecache -------------------------------------------------------------------------
S="$TMP/sidecache"
mkdir -p "$S"
cat >"$S/sidecache.toml" <<EOF
[listen]
proxy = "127.0.0.1:${PORT[sidecache]}"
admin = "127.0.0.1:$SC_ADMIN_PORT"

[upstream]
url = "http://127.0.0.1:$ORIGIN_PORT"

[l1]
max_bytes = "128MiB"

[runtime]
worker_threads = 1

[log]
level = "warn"
access_log = false

[[route]]
name = "group"
match = "GET /api/groups/{group}/{symbol}"
ttl = "1h"
EOF
"$BIN" check --config "$S/sidecache.toml" >&2 || die "sidecache rejected its config"
for d in "$O" "$TMP/nginx" "$TMP/nginx-tuned"; do
    "$NGINX" -t -q -p "$d" -c "$d/nginx.conf" || die "$d/nginx.conf is invalid"
done

# --- start ---------------------------------------------------------------------------------
# The origin is idle during the measurement (every request is a hit); it stays off CPU 0.
taskset -c "$LOAD_CPU" "$NGINX" -p "$O" -c "$O/nginx.conf" >"$O/logs/stdout.log" 2>&1 &
PIDS+=($!)
for c in nginx nginx-tuned; do
    taskset -c "$PROXY_CPU" "$NGINX" -p "$TMP/$c" -c "$TMP/$c/nginx.conf" >"$TMP/$c/logs/stdout.log" 2>&1 &
    PID[$c]=$!
    PIDS+=("${PID[$c]}")
done
taskset -c "$PROXY_CPU" "$BIN" --config "$S/sidecache.toml" >"$S/sidecache.log" 2>&1 &
PID[sidecache]=$!
PIDS+=("${PID[sidecache]}")

URL_ORIGIN="http://127.0.0.1:$ORIGIN_PORT$PATH_UNDER_TEST"
for c in "${CASES[@]}"; do URL[$c]="http://127.0.0.1:${PORT[$c]}$PATH_UNDER_TEST"; done

wait_http "$URL_ORIGIN" 10
wait_http "http://127.0.0.1:$SC_ADMIN_PORT/readyz" 20
# Any answer from a cache nginx means it listens; probe another path so that the warm-up
# below is its first request for the one under test.
for c in nginx nginx-tuned; do wait_http "http://127.0.0.1:${PORT[$c]}/__probe" 10 any; done

origin_requests() { grep -c " $PATH_UNDER_TEST " "$O/logs/access.log" || true; }

# --- warm and verify -------------------------------------------------------------------------
curl -fsS -o "$TMP/expected.json" "$URL_ORIGIN"
before_warm=$(origin_requests)
for c in "${CASES[@]}"; do curl -fsS -o /dev/null "${URL[$c]}"; done
after_warm=$(origin_requests)
((after_warm - before_warm == ${#CASES[@]})) ||
    die "warm-up: origin saw $((after_warm - before_warm)) requests, expected ${#CASES[@]}"
declare -A RESP_BYTES
for c in "${CASES[@]}"; do
    curl -fsS -D "$RAW/$c.headers" -o "$TMP/$c.json" "${URL[$c]}"
    if [[ $c == sidecache ]]; then
        grep -qi '^cache-status: sidecache; hit' "$RAW/$c.headers" ||
            die "sidecache did not answer from L1: $(tr -d '\r' <"$RAW/$c.headers" | grep -i cache-status)"
    else
        grep -qi '^x-cache-status: HIT' "$RAW/$c.headers" ||
            die "$c did not answer from its cache: $(tr -d '\r' <"$RAW/$c.headers" | grep -i x-cache-status)"
    fi
    cmp -s "$TMP/expected.json" "$TMP/$c.json" || die "$c: body differs from the origin's"
    RESP_BYTES[$c]=$(($(wc -c <"$RAW/$c.headers") + BODY_BYTES))
done
[[ $(origin_requests) == "$after_warm" ]] || die "a verification hit reached the origin"
log "caches warm: every case answers hits; origin saw $((after_warm - before_warm)) warm-up requests"

# --- measure ---------------------------------------------------------------------------------
# Latency in microseconds from wrk's "12.34us|ms|s".
to_us() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        f = (u == "ms") ? 1000 : (u == "s") ? 1000000 : 1
        printf "%.1f", n * f }'
}
# CPU ticks (user + system) of a process and its children (nginx: master, worker, cache
# manager). The comm field is skipped by cutting after ") ".
proc_ticks() {
    local pid sum=0 t
    for pid in "$1" $(ps -o pid= --ppid "$1" 2>/dev/null); do
        t=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$pid/stat" 2>/dev/null || echo 0)
        sum=$((sum + t))
    done
    echo "$sum"
}
# "busy total" ticks of one CPU (busy excludes idle and iowait).
cpu_ticks() {
    awk -v c="cpu$1" '$1 == c { t = 0; for (i = 2; i <= 9; i++) t += $i; print t - $5 - $6, t }' /proc/stat
}
HZ=$(getconf CLK_TCK 2>/dev/null || echo 100)

# One measured run. Besides wrk's numbers it records the CPU the proxy was charged (in cores),
# how busy both CPUs were, and hits per CPU-second of the proxy; the last one moves much less
# than req/s when other work shares the machine or when wrk is the limit.
run_wrk() {
    local name=$1 run=$2 file="$RAW/$1-run$2.txt"
    local t0 t1 w0 w1 b0 tot0 b1 tot1 lb0 ltot0 lb1 ltot1
    t0=$(proc_ticks "${PID[$name]}")
    read -r b0 tot0 <<<"$(cpu_ticks "$PROXY_CPU")"
    read -r lb0 ltot0 <<<"$(cpu_ticks "$LOAD_CPU")"
    w0=$(date +%s.%N)
    # In the background, so that a signal interrupts `wait` and the trap runs at once.
    timeout $((DURATION + 30)) taskset -c "$LOAD_CPU" \
        wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "${URL[$name]}" >"$file" 2>&1 &
    WRK_PID=$!
    wait "$WRK_PID" || die "wrk against $name failed: $(tail -3 "$file")"
    WRK_PID=
    w1=$(date +%s.%N)
    kill -0 "${PID[$name]}" 2>/dev/null || die "$name exited during its run (logs: KEEP_TMP=1)"
    t1=$(proc_ticks "${PID[$name]}")
    read -r b1 tot1 <<<"$(cpu_ticks "$PROXY_CPU")"
    read -r lb1 ltot1 <<<"$(cpu_ticks "$LOAD_CPU")"
    local rps p99 reqs bad line cores per_cpu busy0 busy1
    rps=$(awk '/^Requests\/sec:/ {print $2}' "$file")
    p99=$(awk '$1 == "99%" {print $2}' "$file")
    reqs=$(awk '/ requests in / {print $1}' "$file")
    bad=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$file")
    [[ -n $rps && -n $p99 && -n $reqs ]] || die "cannot read wrk output $file"
    [[ -z $bad ]] || die "$name: $bad non-2xx responses (see $file)"
    grep -q 'Socket errors' "$file" && log "warning: $name run $run: $(grep 'Socket errors' "$file")"
    line=$(awk -v n="$name" -v r="$run" -v rps="$rps" -v p99="$(to_us "$p99")" -v reqs="$reqs" \
        -v pt=$((t1 - t0)) -v hz="$HZ" -v w0="$w0" -v w1="$w1" \
        -v pb=$((b1 - b0)) -v pall=$((tot1 - tot0)) -v lb=$((lb1 - lb0)) -v lall=$((ltot1 - ltot0)) 'BEGIN {
            cpu_s = pt / hz
            printf "%s %d %.0f %.1f %.2f %.0f %.0f %.0f\n", n, r, rps, p99, cpu_s / (w1 - w0),
                (cpu_s > 0) ? reqs / cpu_s : 0, pall ? 100 * pb / pall : 0, lall ? 100 * lb / lall : 0 }')
    echo "$line" >>"$RAW/results.txt"
    read -r _ _ _ _ cores per_cpu busy0 busy1 <<<"$line"
    log "$name run $run/$RUNS: $rps req/s, p99 $p99; charged $cores cores, $per_cpu hits/CPU-s; CPU$PROXY_CPU ${busy0}% busy, CPU$LOAD_CPU ${busy1}% busy"
    # Saturated, a proxy is charged ~0.9-1.0 core (loopback softirq work on its CPU is not
    # always charged to it). Much less: starved by other work, or wrk was the limit.
    if awk -v c="$cores" 'BEGIN { exit !(c < 0.8) }'; then
        log "  note: $name was charged < 0.8 core: starved by other work, or wrk was the limit"
    fi
}

# results.txt: case run req/s p99_us cores hits_per_cpu_s cpu_proxy_busy% cpu_load_busy%
: >"$RAW/results.txt"
# Other work on the machine skews req/s: measure how idle the CPUs are for one second.
cpu_idle() { awk '/^cpu / { print $5 + $6, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat; }
read -r idle0 total0 <<<"$(cpu_idle)"
sleep 1
read -r idle1 total1 <<<"$(cpu_idle)"
IDLE_PCT=$(awk -v i=$((idle1 - idle0)) -v t=$((total1 - total0)) 'BEGIN { printf "%.0f", t ? 100 * i / t : 100 }')
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg); CPUs ${IDLE_PCT}% idle just before the load"
((IDLE_PCT >= 90)) || log "warning: CPUs only ${IDLE_PCT}% idle before the load; other work will skew req/s"
log "load: taskset -c $LOAD_CPU wrk -t1 -c$CONNECTIONS -d${DURATION}s --latency (proxies on CPU $PROXY_CPU)"
# A short untimed pass per case: connection setup and first-touch costs are not measured.
for c in "${CASES[@]}"; do
    timeout 30 taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d1s "${URL[$c]}" >/dev/null 2>&1 || true
done
for run in $(seq 1 "$RUNS"); do
    # Alternate the order, so drift (thermal, neighbours) does not favour one case.
    order=("${CASES[@]}")
    ((run % 2)) || order=("${CASES[2]}" "${CASES[1]}" "${CASES[0]}")
    for c in "${order[@]}"; do run_wrk "$c" "$run"; done
done

origin_after=$(origin_requests)
((origin_after == after_warm)) || die "origin saw $((origin_after - after_warm)) requests during the load: not all were hits"
kill -0 "${PID[sidecache]}" 2>/dev/null || die "sidecache exited during the run (see its log)"
curl -fsS "http://127.0.0.1:$SC_ADMIN_PORT/metrics" >"$RAW/sidecache-metrics.txt" || true
cp "$S/sidecache.toml" "$RAW/"
for c in nginx nginx-tuned; do cp "$TMP/$c/nginx.conf" "$RAW/$c.conf"; done
cp "$O/nginx.conf" "$RAW/origin.conf"

# --- report --------------------------------------------------------------------------------
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
col() { awk -v c="$1" -v k="$2" '$1 == c { print $k }' "$RAW/results.txt"; }
declare -A MED MIN MAX P99 CORES EFF
for c in "${CASES[@]}"; do
    MED[$c]=$(printf '%.0f' "$(col "$c" 3 | median)")
    MIN[$c]=$(col "$c" 3 | sort -g | head -1)
    MAX[$c]=$(col "$c" 3 | sort -g | tail -1)
    P99[$c]=$(printf '%.0f' "$(col "$c" 4 | median)")
    CORES[$c]=$(printf '%.2f' "$(col "$c" 5 | median)")
    EFF[$c]=$(printf '%.0f' "$(col "$c" 6 | median)")
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b ? a / b : 0 }'; }
verdict() { awk -v r="$1" -v t="$TARGET_RATIO" 'BEGIN { print (r >= t) ? "met" : "NOT met" }'; }
R_NG=$(ratio "${MED[sidecache]}" "${MED[nginx]}")
R_NT=$(ratio "${MED[sidecache]}" "${MED[nginx-tuned]}")
declare -A LABEL=([sidecache]="sidecache L1 hit" [nginx]="nginx proxy_cache HIT (sendfile on, tcp_nopush on)"
    [nginx-tuned]="nginx proxy_cache HIT tuned (sendfile off, open_file_cache)")

REPORT="$OUT/l1-latest.md"
{
    echo "# L1 hit throughput: sidecache vs nginx proxy_cache"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'); sidecache: $BUILD_DESC"
    echo "- machine: $(nproc) CPUs, $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo); load average $LOAD_BEFORE"
    echo "- $("$NGINX" -v 2>&1 | sed 's/^nginx version: //'); $(wrk -v 2>&1 | head -1 | awk '{print "wrk", $2}')"
    echo "- command: \`DURATION=$DURATION RUNS=$RUNS scripts/bench-l1.sh\`"
    echo "- load: \`taskset -c $LOAD_CPU wrk -t1 -c$CONNECTIONS -d${DURATION}s --latency URL\`, $RUNS run(s) per case, order alternating"
    echo "- servers: one worker each, all under \`taskset -c $PROXY_CPU\` (sidecache \`[runtime] worker_threads = 1\`; nginx \`worker_processes 1\`, \`worker_cpu_affinity $CPU_MASK\`)"
    echo "- object: GET $PATH_UNDER_TEST, $BODY_BYTES-byte JSON body; whole response: sidecache ${RESP_BYTES[sidecache]} B, nginx ${RESP_BYTES[nginx]} B"
    echo "- checks: every answer was a hit (\`Cache-Status: sidecache; hit\`, \`X-Cache-Status: HIT\`) with the origin's body; the origin saw only the ${#CASES[@]} warm-up requests; no non-2xx"
    echo
    echo "| case | median req/s | min..max req/s | p99 latency (median) | sidecache / this (req/s) | CPU charged (cores) | hits per CPU-second | sidecache / this (per CPU-s) |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    for c in "${CASES[@]}"; do
        echo "| ${LABEL[$c]} | ${MED[$c]} | ${MIN[$c]}..${MAX[$c]} | ${P99[$c]} µs | $(ratio "${MED[sidecache]}" "${MED[$c]}")x | ${CORES[$c]} | ${EFF[$c]} | $(ratio "${EFF[sidecache]}" "${EFF[$c]}")x |"
    done
    echo
    echo "Target sidecache >= ${TARGET_RATIO}x nginx (median req/s): vs stock nginx **$(verdict "$R_NG")** (${R_NG}x); vs tuned nginx **$(verdict "$R_NT")** (${R_NT}x)."
    echo
    echo "A saturated proxy is charged about 0.9-1.0 core (part of the loopback TCP work on CPU $PROXY_CPU is"
    echo "softirq time not charged to it). Much less means it was starved by other work on CPU $PROXY_CPU, or"
    echo "wrk was the limit (CPU $LOAD_CPU near 100% busy); hits per CPU-second is then the fairer comparison."
    echo
    echo "<details><summary>per run</summary>"
    echo
    echo "| case | run | req/s | p99 µs | CPU charged (cores) | hits/CPU-s | CPU $PROXY_CPU busy % | CPU $LOAD_CPU busy % |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    awk '{ printf "| %s | %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7, $8 }' "$RAW/results.txt"
    echo
    echo "</details>"
    echo
    echo "Raw wrk output, configs, sidecache /metrics: \`${RAW#"$ROOT"/}/\`"
} >"$REPORT.tmp"
mv "$REPORT.tmp" "$REPORT"
cp "$REPORT" "$RAW/table.md"
cat "$REPORT"
