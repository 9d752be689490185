#!/usr/bin/env bash
# sidecache against nginx and Varnish on one machine, end to end, in one command:
#
#   scripts/bench.sh                                  # every case: RUNS=3 DURATION=8, ~15 min after the build
#   CASES="hit latency" RUNS=1 DURATION=5 scripts/bench.sh    # a subset
#   SIDECACHE_BIN=target/release/sidecache scripts/bench.sh    # skip the build, measure that binary
#   KEEP_TMP=1 scripts/bench.sh                       # keep the generated configs and logs
#
# It installs what it lacks (apt-get: nginx-light, varnish, wrk, redis-server, curl), builds
# `cargo build --release`, and starts everything itself on 127.0.0.1 with its own generated
# config files in a temp dir (no system nginx / varnish / redis config is read or touched).
# Every process it starts is stopped on exit (trap), however it exits.
#
# Placement (2 CPUs): the server under test runs under `taskset -c $PROXY_CPU` (CPU 0) with one
# worker: sidecache `[runtime] worker_threads = 1`, nginx `worker_processes 1` (+ affinity),
# varnishd `-p thread_pools=1` (its threads cannot be limited to one; the whole process is
# pinned). wrk (`-t1`), the origin (nginx) and redis-server run on $LOAD_CPU (CPU 1): the origin
# and Redis are part of the measured path for misses / L2 hits, and sit beside wrk for every
# server equally.
#
# Cases (CASES, space-separated; default: all, in this order):
#   ceiling      (1) nginx `return 200` with the same body: no proxy, the loopback ceiling
#   hit          (2) L1 hit on one hot ~600-byte group record: sidecache, nginx proxy_cache
#                    (stock Debian http settings, and "tuned"), Varnish; wrk -c$CONNECTIONS
#                    (ceiling and hit share one rotation when both are selected)
#   latency      (6) the same hit at one connection (wrk -t1 -c1): p50 / p99
#   h2c          (2b) the same hit over HTTP/2 with prior knowledge: h2load -t1 -c$CONNECTIONS
#                    -m$H2_STREAMS against sidecache and nginx proxy_cache (`listen ... http2`);
#                    h2load reports the mean and the max time per request (in the p50 and p99
#                    columns)
#   keys         (3) 3000 group URLs (100 groups x 30 symbols), uniform and Zipf (s=$ZIPF_S),
#                    all warmed first (scripts/wrk/keys.lua picks the path per request)
#   miss         (5) pass-through: a path no route caches, to a fast origin (`return 200`);
#                    sidecache vs nginx proxy_pass without cache (stock, and adding the
#                    forwarding fields sidecache adds) vs Varnish pass, keep-alive to the
#                    origin everywhere
#   limit        (9b) L1 hit with a [[limit]] rule decided locally (no [l2]) vs no limit:
#                    latency at c1 and throughput at c$CONNECTIONS
#   l2           (4) L2 hit with L1 effectively off (`[l1] max_age = "1ms"`): 3000 keys uniform
#   commands     (9c) [[limit]] with Redis up: Redis commands per allowed request
#                    (INFO commandstats around $COMMAND_REQUESTS requests), and throughput
#   redis        (9a) L1 hit with [l2] configured: Redis up, then Redis killed
#   stale        (10) the origin killed during a wrk run on $STALE_KEYS hot group keys (origin
#                    max-age=$STALE_MAX_AGE s, route grace = "60s"): non-2xx answers while the
#                    entries are in grace (target 0), and the stale / stale_error counts
#   memory       (7) RSS after 3000 group records + 100,000 identity-scoped balance records
#   consistency  (8) `cargo bench --bench consistency` (cross-pod invalidation lag), its table
#
# Every timed run is checked: the answers were hits (Cache-Status / X-Cache-Status / X-Cache on
# samples, and the origin's request count did not move during the timed runs), no non-2xx.
# Before the first timed run the script waits (up to LOAD_WAIT s) for the 1-minute load average
# to drop below 0.5; before every run it waits for both CPUs to be idle (another job, e.g. a CI
# run, shows up as busy CPUs while the benchmark pauses). A run during which more than 0.1 core
# went to processes not started by this script is repeated (up to 2 times), and flagged if it
# stays disturbed; a run whose server got < 0.8 of its core at c$CONNECTIONS is flagged.
#
# Env knobs: DURATION (s per run, 8), RUNS (3), LATENCY_RUNS (runs of the one-connection cases,
# RUNS + 2: their p99 moves more from run to run), CASES, CONNECTIONS (64), PROXY_CPU (0),
# LOAD_CPU (1), ZIPF_S (1.0), COMMAND_REQUESTS (1000), CONSISTENCY_DURATION (5),
# MEM_USERS (100000), LOAD_WAIT (600), SIDECACHE_BIN, KEEP_TMP, REPORT (output markdown path).
#
# Output: a markdown report on stdout and in $REPORT (default bench-results/latest.md); raw wrk
# outputs, generated configs and /metrics snapshots in bench-results/tmp/bench-<timestamp>/.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
BENCH_TAG=bench
# shellcheck source=scripts/bench-lib.sh
source "$ROOT/scripts/bench-lib.sh"

ALL_CASES="ceiling hit latency h2c keys miss limit l2 commands redis stale memory consistency"
DURATION=${DURATION:-8}
RUNS=${RUNS:-3}
CASES=${CASES:-$ALL_CASES}
CONNECTIONS=${CONNECTIONS:-64}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
ZIPF_S=${ZIPF_S:-1.0}
COMMAND_REQUESTS=${COMMAND_REQUESTS:-1000}
CONSISTENCY_DURATION=${CONSISTENCY_DURATION:-5}
MEM_USERS=${MEM_USERS:-100000}
STALE_KEYS=${STALE_KEYS:-1000}
STALE_MAX_AGE=${STALE_MAX_AGE:-2}
STALE_DURATION=${STALE_DURATION:-10}
STALE_KILL_AFTER=${STALE_KILL_AFTER:-3}
LATENCY_RUNS=${LATENCY_RUNS:-$((RUNS + 2))}
LOAD_WAIT=${LOAD_WAIT:-600}
HIT_SERVERS=${HIT_SERVERS:-sidecache nginx nginx-tuned varnish}
KEYS_SERVERS=${KEYS_SERVERS:-sidecache nginx nginx-tuned varnish}
MISS_SERVERS=${MISS_SERVERS:-sidecache nginx nginx-fwd varnish}
H2C_SERVERS=${H2C_SERVERS:-sidecache nginx-h2c}
H2_STREAMS=${H2_STREAMS:-10}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT="$ROOT/bench-results"
RAW="$OUT/tmp/bench-$STAMP"
REPORT=${REPORT:-$OUT/latest.md}
HOT=/api/groups/VIP/EURUSD
PASS_PATH=/api/orders/1001

[[ $DURATION =~ ^[0-9]+$ ]] && ((DURATION >= 1 && DURATION <= 600)) || die "DURATION must be 1..600 seconds"
[[ $RUNS =~ ^[0-9]+$ ]] && ((RUNS >= 1 && RUNS <= 20)) || die "RUNS must be 1..20"
[[ $LATENCY_RUNS =~ ^[0-9]+$ ]] && ((LATENCY_RUNS >= 1 && LATENCY_RUNS <= 20)) || die "LATENCY_RUNS must be 1..20"
[[ $CONNECTIONS =~ ^[0-9]+$ ]] && ((CONNECTIONS >= 2 && CONNECTIONS <= 4000)) || die "CONNECTIONS must be 2..4000"
[[ $MEM_USERS =~ ^[0-9]+$ ]] && ((MEM_USERS >= 1 && MEM_USERS <= 999999)) || die "MEM_USERS must be 1..999999"
for c in $CASES; do [[ " $ALL_CASES " == *" $c "* ]] || die "unknown case '$c' (known: $ALL_CASES)"; done
want() { [[ " $CASES " == *" $1 "* ]]; }

# --- tools and build ---------------------------------------------------------------------------
tools=(wrk nginx curl taskset ps)
if [[ " $HIT_SERVERS $KEYS_SERVERS $MISS_SERVERS " == *" varnish "* ]] && { want hit || want latency || want keys || want miss; }; then
    tools+=(varnish cc)
fi
if want l2 || want commands || want redis || want consistency; then tools+=(redis); fi
if want h2c; then tools+=(h2load); fi
need_tools "${tools[@]}"
if (($(nproc) < 2)); then
    log "warning: $(nproc) CPU; the servers and wrk will share it"
    LOAD_CPU=$PROXY_CPU
fi
build_sidecache
if want consistency; then
    log "cargo bench --bench consistency --no-run"
    cargo bench --bench consistency --no-run --quiet 2>/dev/null || die "cannot build benches/consistency.rs"
fi

mkdir -p "$RAW"
TMP=$(mktemp -d /tmp/sidecache-bench.XXXXXX)
# Every sidecache instance runs this copy: a rebuild of target/release during the run (another
# cargo command, the consistency case's `cargo bench`) must not change the binary under test.
cp "$BIN" "$TMP/sidecache.bin"
BIN="$TMP/sidecache.bin"
on_exit() {
    local rc=$?
    set +e
    cleanup_processes
    rmdir "$RAW" 2>/dev/null # only if a failure left it empty
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

RESULTS="$RAW/results.txt" # case label run rps p50 p99 cores hits_per_cpu cpu0% cpu1% foreign requests flags
: >"$RESULTS"
NOTES="$RAW/notes.md" # extra lines per case, for the report
: >"$NOTES"
note() { printf '%s\n' "$*" >>"$NOTES"; }

# --- data: 100 groups x 30 symbols, one ~600-byte record each ----------------------------------
SYMBOLS=(EURUSD GBPUSD USDJPY USDCHF AUDUSD USDCAD NZDUSD EURGBP EURJPY GBPJPY EURCHF AUDJPY
    EURAUD CHFJPY GBPCHF EURCAD AUDCAD CADJPY NZDJPY AUDNZD GBPAUD EURNZD GBPCAD AUDCHF GBPNZD
    CADCHF NZDCAD NZDCHF XAUUSD XAGUSD)
GROUP_NAMES=(VIP)
for i in $(seq 1 99); do GROUP_NAMES+=("$(printf 'G%02d' "$i")"); done
# The record is the one in benches/hit_path.rs; every group name has 3 letters and every symbol
# 6, so every record has the same size.
record() {
    printf '{"group":"%s","symbol":"%s","description":"Euro vs US Dollar","digits":5,"contract_size":100000,"margin_currency":"EUR","profit_currency":"USD","spread":{"type":"floating","markup_points":2,"min_points":0,"max_points":50},"commission":{"type":"per_lot","value":3.5,"currency":"USD","charge":"open_close"},"swap":{"long":-6.91,"short":1.23,"triple_day":"wednesday","mode":"points"},"margin":{"initial":0.01,"maintenance":0.005,"hedged":0.5,"leverage":100},"volume":{"min":0.01,"max":100.0,"step":0.01,"limit":1000.0},"trade_mode":"full","execution":"market","updated_at":"2025-01-15T09:30:00Z","version":42}' "$1" "$2"
}
O="$TMP/origin"
mkdir -p "$O/logs" "$O/html"
PATHS="$TMP/paths.txt"   # the 3000 group paths, in rank order for Zipf (shuffled, fixed seed)
: >"$PATHS.sorted"
for g in "${GROUP_NAMES[@]}"; do
    mkdir -p "$O/html/api/groups/$g"
    for s in "${SYMBOLS[@]}"; do
        record "$g" "$s" >"$O/html/api/groups/$g/$s"
        echo "/api/groups/$g/$s" >>"$PATHS.sorted"
    done
done
shuf --random-source=<(yes 42) "$PATHS.sorted" >"$PATHS"
NKEYS=$(wc -l <"$PATHS")
BODY=$(record VIP EURUSD)
BODY_BYTES=${#BODY}
# A balance record: ~200 bytes, the same size for every (6-digit) user id.
BALANCE_TEMPLATE='{"user_type":"$1","user_id":"$2","currency":"USD","balance":"10250.75","equity":"10312.40","margin":"1520.00","free_margin":"8792.40","margin_level":"678.45","credit":"0.00","updated_at":"2025-01-15T09:30:00Z"}'

# curl config that fetches every path in $1 from base URL $2, printing each status.
curl_list() {
    awk -v b="$2" 'NF { printf "url = \"%s%s\"\noutput = \"/dev/null\"\n", b, $0 }' "$1"
}
# Fetches every path of $1 through base URL $2 once (sequentially, one keep-alive connection);
# dies unless every answer is a 200.
fetch_all() {
    local list=$1 base=$2 cfg n ok
    cfg="$TMP/curl-$RANDOM.cfg"
    curl_list "$list" "$base" >"$cfg"
    n=$(grep -c . "$list")
    ok=$(curl -sS -K "$cfg" -w '%{http_code}\n' | grep -c '^200$' || true)
    rm -f "$cfg"
    ((ok == n)) || die "fetching $n paths through $base: only $ok answered 200"
}

# --- ports and configs ---------------------------------------------------------------------------
declare -A PORT ADMIN
for s in origin ceiling nginx nginx-tuned nginx-fwd nginx-h2c varnish sidecache sidecache-limit sidecache-l2 \
    sidecache-cmd sidecache-redis sidecache-mem origin-stale sidecache-stale; do
    free_port && PORT[$s]=$FREE_PORT
done
for s in sidecache sidecache-limit sidecache-l2 sidecache-cmd sidecache-redis sidecache-mem sidecache-stale; do
    free_port && ADMIN[$s]=$FREE_PORT
done
for s in redis-l2 redis-cmd redis-redis; do free_port && PORT[$s]=$FREE_PORT; done
MASK=$(cpu_mask "$PROXY_CPU")
url() { echo "http://127.0.0.1:${PORT[$1]}${2:-}"; }

# (origin) static group records, balances and the pass-through answer from `return 200`.
# Group and balance requests are logged unbuffered (counted to prove hits); the pass-through
# log is buffered (it sees every timed request).
origin_conf() {
    cat >"$O/nginx.conf" <<EOF
$(nginx_head "$O")
events { worker_connections 4096; }
http {
$(nginx_temp_paths "$O")
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 75s;
    server {
        listen 127.0.0.1:${PORT[origin]} backlog=4096;
        root $O/html;
        location /api/groups/ {
            access_log $O/logs/groups.log;
            types { }
            default_type application/json;
            add_header Cache-Control "max-age=3600";
        }
        location ~ ^/api/users/([a-z]+)/([0-9]+)/balance\$ {
            access_log $O/logs/users.log;
            default_type application/json;
            return 200 '$BALANCE_TEMPLATE';
        }
        location /api/orders/ {
            access_log $O/logs/orders.log combined buffer=64k flush=1s;
            default_type application/json;
            return 200 '$BODY';
        }
    }
}
EOF
}
count_lines() { if [[ -f $1 ]]; then wc -l <"$1"; else echo 0; fi; }
origin_groups() { count_lines "$O/logs/groups.log"; }
origin_users() { count_lines "$O/logs/users.log"; }
origin_orders() {
    sleep 1.2 # the buffered log flushes every second
    count_lines "$O/logs/orders.log"
}

# (10) the origin the stale case kills: the same group records, fresh for $STALE_MAX_AGE s.
S="$TMP/origin-stale"
stale_origin_conf() {
    mkdir -p "$S/logs"
    cat >"$S/nginx.conf" <<EOF
$(nginx_head "$S")
events { worker_connections 4096; }
http {
$(nginx_temp_paths "$S")
    access_log off;
    keepalive_requests 100000000;
    server {
        listen 127.0.0.1:${PORT[origin-stale]} backlog=4096;
        root $O/html;
        location /api/groups/ {
            access_log $S/logs/groups.log;
            types { }
            default_type application/json;
            add_header Cache-Control "max-age=$STALE_MAX_AGE";
        }
    }
}
EOF
}

# (1) the ceiling: the same body from `return 200`, no proxy.
C="$TMP/ceiling"
ceiling_conf() {
    mkdir -p "$C/logs"
    cat >"$C/nginx.conf" <<EOF
$(nginx_head "$C")
worker_cpu_affinity $MASK;
events { worker_connections 4096; }
http {
$(nginx_temp_paths "$C")
    access_log off;
    tcp_nodelay on;
    keepalive_requests 100000000;
    keepalive_timeout 75s;
    server {
        listen 127.0.0.1:${PORT[ceiling]} backlog=4096;
        location / {
            default_type application/json;
            add_header Cache-Control "max-age=3600";
            return 200 '$BODY';
        }
    }
}
EOF
}

# (2) nginx proxy_cache, two flavours. $1 name, $2.. extra http-level directives;
# $SERVER_FIELDS: extra server-level directives (proxy_set_header lines must all sit at one
# level: a level that sets any of them inherits none from above).
nginx_cache_conf() {
    local name=$1 n="$TMP/$1"
    shift
    mkdir -p "$n/logs" "$n/cache"
    cat >"$n/nginx.conf" <<EOF
$(nginx_head "$n")
worker_cpu_affinity $MASK;
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
        server 127.0.0.1:${PORT[origin]};
        keepalive 64;
    }
    server {
        listen 127.0.0.1:${PORT[$name]} backlog=4096 ${LISTEN_OPTS:-};
        proxy_http_version 1.1;
        proxy_set_header Connection "";
${SERVER_FIELDS:-}
        location / {
            proxy_pass http://origin;
            proxy_cache l1;
            proxy_cache_valid 200 1h;
            add_header X-Cache-Status \$upstream_cache_status;
        }
        # Pass-through: a path nothing caches.
        location /api/orders/ {
            proxy_pass http://origin;
        }
    }
}
EOF
}

# Varnish: caches the origin for 1h, passes /api/orders/, says HIT or MISS in X-Cache.
V="$TMP/varnish"
varnish_conf() {
    mkdir -p "$V"
    cat >"$V/default.vcl" <<EOF
vcl 4.1;
backend origin {
    .host = "127.0.0.1";
    .port = "${PORT[origin]}";
}
sub vcl_recv {
    if (req.url ~ "^/api/orders/") {
        return (pass);
    }
}
sub vcl_backend_response {
    set beresp.ttl = 1h;
    return (deliver);
}
sub vcl_deliver {
    if (obj.hits > 0) {
        set resp.http.X-Cache = "HIT";
    } else {
        set resp.http.X-Cache = "MISS";
    }
}
EOF
}

# sidecache: $1 name, $2.. extra TOML. The routes are the shipped config's group and balance
# routes; ttl 1h for both, and `[l1] max_age = "1h"` (default 5m), so that nothing warmed at the
# start expires during a 15-minute run (nginx and Varnish keep them for 1h too).
sidecache_conf() {
    local name=$1 d="$TMP/$1" max_age=1h origin=${PORT[origin]} grace=0s
    shift
    [[ $name == sidecache-l2 ]] && max_age=1ms
    [[ $name == sidecache-stale ]] && origin=${PORT[origin-stale]} grace=60s
    mkdir -p "$d"
    cat >"$d/sidecache.toml" <<EOF
[listen]
proxy = "127.0.0.1:${PORT[$name]}"
admin = "127.0.0.1:${ADMIN[$name]}"

[upstream]
url = "http://127.0.0.1:$origin"

[l1]
max_bytes = "128MiB"
max_age = "$max_age"

[runtime]
worker_threads = 1

[log]
level = "warn"
access_log = false

[[route]]
name = "group"
match = "GET /api/groups/{group}/{symbol}"
ttl = "1h"
tags = ["group:{group}", "group:{group}:{symbol}"]
cache_control = "private, max-age=5"
grace = "$grace"

[[route]]
name = "balance"
match = "GET /api/users/{user_type}/{user_id}/balance"
ttl = "1h"
scope = "identity"
tags = ["user:{user_type}:{user_id}"]
EOF
    printf '%s\n' "$@" >>"$d/sidecache.toml"
    "$BIN" check --config "$d/sidecache.toml" >"$d/check.out" 2>&1 ||
        die "sidecache rejected $d/sidecache.toml: $(cat "$d/check.out")"
}
l2_section() { printf '\n[l2]\nurl = "redis://127.0.0.1:%s"\n' "${PORT[$1]}"; }
# A rule on the hit route that never denies: the cost of a decision, not of a denial.
LIMIT_RULE=$'\n[[limit]]\nname = "groups"\nroute = "group"\nkey = "ip"\nrate = "1000000000/s"'
# write_conf SERVER: (re)writes the config of one server with the ports in PORT / ADMIN.
write_conf() {
    case $1 in
    origin) origin_conf ;;
    origin-stale) stale_origin_conf ;;
    ceiling) ceiling_conf ;;
    # Stock: Debian's /etc/nginx/nginx.conf http settings.
    nginx) nginx_cache_conf nginx "sendfile on;" "tcp_nopush on;" ;;
    # Tuned: the fastest settings found for this object: one writev instead of
    # setsockopt+writev+sendfile+setsockopt, and no open/fstat/close of the cache file per hit.
    nginx-tuned)
        nginx_cache_conf nginx-tuned "sendfile off;" \
            "open_file_cache max=10000 inactive=60s;" "open_file_cache_valid 60s;" "open_file_cache_min_uses 1;"
        ;;
    # Pass-through doing sidecache's job: the forwarding fields sidecache adds to every request
    # (X-Forwarded-For, Forwarded, Via), which the origin then parses. Stock nginx adds none.
    nginx-fwd)
        SERVER_FIELDS=$(printf '        %s\n' \
            'proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;' \
            'proxy_set_header Forwarded "for=$remote_addr;proto=$scheme;host=\"$http_host\"";' \
            'proxy_set_header Via "1.1 nginx";') \
            nginx_cache_conf nginx-fwd "sendfile on;" "tcp_nopush on;"
        ;;
    # HTTP/2 with prior knowledge (h2c) on the cache's port: `listen ... http2` without TLS.
    nginx-h2c) LISTEN_OPTS=http2 nginx_cache_conf nginx-h2c "sendfile on;" "tcp_nopush on;" ;;
    varnish) varnish_conf ;;
    sidecache | sidecache-mem | sidecache-stale) sidecache_conf "$1" ;;
    sidecache-limit) sidecache_conf sidecache-limit "$LIMIT_RULE" ;;
    sidecache-l2) sidecache_conf sidecache-l2 "$(l2_section redis-l2)" ;;
    sidecache-cmd) sidecache_conf sidecache-cmd "$(l2_section redis-cmd)" "$LIMIT_RULE" ;;
    sidecache-redis) sidecache_conf sidecache-redis "$(l2_section redis-redis)" ;;
    redis-*) mkdir -p "$TMP/$1" ;;
    *) die "write_conf: unknown server $1" ;;
    esac
}
# Every config is written and checked once up front, so that a bad one fails before any run;
# `start` writes it again with ports picked at that moment.
ALL_SERVERS="origin ceiling nginx nginx-tuned nginx-fwd nginx-h2c varnish sidecache sidecache-limit sidecache-l2 sidecache-cmd sidecache-redis sidecache-mem origin-stale sidecache-stale"
for s in $ALL_SERVERS; do write_conf "$s"; done
for d in "$O" "$C" "$TMP/nginx" "$TMP/nginx-tuned" "$TMP/nginx-fwd" "$TMP/nginx-h2c" "$S"; do
    "$NGINX" -t -q -p "$d" -c "$d/nginx.conf" 2>"$TMP/nginx-t.out" || die "$d/nginx.conf: $(cat "$TMP/nginx-t.out")"
done

# --- starting servers ------------------------------------------------------------------------------
start() {
    local s=$1 attempt
    [[ -n ${PID[$s]:-} ]] && return 0
    # Ports are picked now, not at the top: over a 15-minute run another job (a test suite
    # starting servers on free ports) may take one. A server that cannot bind is retried.
    for attempt in 1 2 3; do
        free_port && PORT[$s]=$FREE_PORT
        [[ $s == sidecache* ]] && free_port && ADMIN[$s]=$FREE_PORT
        write_conf "$s"
        : >"$TMP/$s.out"
        case $s in
        origin) spawn origin taskset -c "$LOAD_CPU" "$NGINX" -p "$O" -c "$O/nginx.conf" ;;
        origin-stale) spawn origin-stale taskset -c "$LOAD_CPU" "$NGINX" -p "$S" -c "$S/nginx.conf" ;;
        ceiling) spawn ceiling taskset -c "$PROXY_CPU" "$NGINX" -p "$C" -c "$C/nginx.conf" ;;
        nginx | nginx-tuned | nginx-fwd | nginx-h2c) spawn "$s" taskset -c "$PROXY_CPU" "$NGINX" -p "$TMP/$s" -c "$TMP/$s/nginx.conf" ;;
        varnish)
            spawn varnish taskset -c "$PROXY_CPU" "$VARNISHD" -F -j none -n "$V/work" \
                -a "127.0.0.1:${PORT[varnish]}" -f "$V/default.vcl" -s malloc,256m -p thread_pools=1
            ;;
        redis-*)
            spawn "$s" taskset -c "$LOAD_CPU" redis-server --bind 127.0.0.1 --port "${PORT[$s]}" \
                --save "" --appendonly no --dir "$TMP/$s" --daemonize no
            ;;
        sidecache*) spawn "$s" taskset -c "$PROXY_CPU" "$BIN" --config "$TMP/$s/sidecache.toml" ;;
        *) die "start: unknown server $s" ;;
        esac
        if ready "$s"; then
            return 0
        fi
        log "$s did not start (attempt $attempt): $(tail -3 "$TMP/$s.out" | tr '\n' ' ')"
        stop "$s"
    done
    die "$s did not start; its output: $(tail -5 "$TMP/$s.out")"
}
# Waits (at most 20 s) until server $1 answers; fails early if it exited.
ready() {
    local s=$1 deadline=$((SECONDS + 20)) probe
    case $s in
    sidecache*) probe="http://127.0.0.1:${ADMIN[$s]}/readyz" ;;
    redis-*) probe= ;;
    # Any answer means it listens; probe a path no case uses, so that warm-ups are first.
    *) probe=$(url "$s" /__probe) ;;
    esac
    while ((SECONDS < deadline)); do
        alive "$s" || return 1
        if [[ -z $probe ]]; then
            redis-cli -p "${PORT[$s]}" ping 2>/dev/null | grep -q PONG && return 0
        else
            # nginx-h2c speaks only HTTP/2 with prior knowledge on its port.
            curl -sS -o /dev/null --max-time 1 $([[ $s == nginx-h2c ]] && echo --http2-prior-knowledge) "$probe" 2>/dev/null && return 0
        fi
        sleep 0.05
    done
    return 1
}

metrics() { curl -fsS "http://127.0.0.1:${ADMIN[$1]}/metrics"; }
# wait_subscribed SERVER 0|1 WHY: polls (15 s at most) until SERVER's pub/sub connection is in
# that state, or dies saying WHY.
wait_subscribed() {
    local deadline=$((SECONDS + 15))
    until [[ $(metrics "$1" | msum '^sidecache_pubsub_connected') == "$2" ]]; do
        ((SECONDS < deadline)) || die "$1 $3"
        sleep 0.2
    done
}
# Sum of the samples of metric lines matching the ERE $2 in the /metrics text on stdin.
msum() { awk -v re="$1" '$0 !~ /^#/ && $1 ~ re { s += $NF } END { printf "%.0f", s }'; }

# The answer in header file $2 (from server $1) came from its cache. $3 = "l2" wants an L2 hit.
is_hit() {
    local h
    h=$(tr -d '\r' <"$2")
    case $1 in
    ceiling) return 0 ;;
    sidecache*)
        if [[ ${3:-} == l2 ]]; then
            grep -qi '^cache-status: sidecache; hit; detail=l2' <<<"$h"
        else
            grep -qi '^cache-status: sidecache; hit;' <<<"$h"
        fi
        ;;
    nginx*) grep -qi '^x-cache-status: HIT' <<<"$h" ;;
    varnish) grep -qi '^x-cache: HIT' <<<"$h" ;;
    esac
}
# Requests path $2 from server $1 and dies unless it is a hit with the origin's body.
check_hit() {
    local s=$1 p=$2 h="$RAW/$1-$RANDOM.headers"
    curl -fsS -D "$h" -o "$TMP/check.body" "$(url "$s" "$p")" || die "$s: GET $p failed"
    is_hit "$s" "$h" "${3:-}" || die "$s did not answer $p from its cache: $(tr -d '\r' <"$h" | grep -iE 'cache' | tr '\n' ' ')"
    # Compared with the origin's file, not fetched from it: that would count as an origin request.
    cmp -s "$TMP/check.body" "$O/html$p" || die "$s: body of $p differs from the origin's"
    RESP_BYTES[$s]=$(($(wc -c <"$h") + $(wc -c <"$TMP/check.body")))
}
declare -A RESP_BYTES

# --- one measured run ------------------------------------------------------------------------------
# CHILD_TICKS = CPU ticks of this shell's reaped children (wrk runs as one). `times` reports
# the calling process's children, so this must not run in a subshell (no $(child_ticks)).
child_ticks() {
    times >"$TMP/times.out"
    CHILD_TICKS=$(awk -v hz="$HZ" 'NR == 2 { t = 0; for (i = 1; i <= 2; i++) { v = $i; m = v; sub(/m.*/, "", m); s = v; sub(/^[0-9]+m/, "", s); sub(/s$/, "", s); t += m * 60 + s } printf "%.0f", t * hz }' "$TMP/times.out")
}
ours_ticks() {
    local s sum=0
    for s in "${!PID[@]}"; do sum=$((sum + $(proc_ticks "${PID[$s]}"))); done
    echo "$sum"
}

# measure CASE LABEL SERVER RUN CONNS URL [LUA_SCRIPT [LUA_ARGS...]]
# Appends one line to $RESULTS; repeats the run (up to twice) when other processes took more
# than 0.1 core during it.
MAX_FOREIGN=0.08
measure() {
    local case=$1 label=$2 server=$3 run=$4 conns=$5 target=$6
    shift 6
    local lua=()
    (($#)) && lua=(-s "$1" "$target" -- "${@:2}") || lua=("$target")
    local file="$RAW/$case-$label-run$run.txt" attempt flags
    for attempt in 1 2 3; do
        flags=
        wait_quiet 10 300 || flags+="busy-before,"
        local t0 o0 c0 b0 i0 tot0 lb0 ltot0 w0 t1 o1 c1 b1 i1 tot1 lb1 ltot1 w1
        t0=$(proc_ticks "${PID[$server]}")
        o0=$(ours_ticks)
        read -r b0 i0 tot0 <<<"$(cpu_ticks "$PROXY_CPU")"
        read -r lb0 _ ltot0 <<<"$(cpu_ticks "$LOAD_CPU")"
        child_ticks
        c0=$CHILD_TICKS
        w0=$(date +%s.%N)
        # In the background, so that a signal interrupts `wait` and the trap runs at once.
        if [[ $case == h2c ]]; then
            timeout $((DURATION + 30)) taskset -c "$LOAD_CPU" \
                h2load -t1 -c"$conns" -m"$H2_STREAMS" -D"$DURATION" "$target" >"$TMP/h2load.out" 2>&1 &
        else
            timeout $((DURATION + 30)) taskset -c "$LOAD_CPU" \
                wrk -t1 -c"$conns" -d"${DURATION}s" --latency "${lua[@]}" >"$file" 2>&1 &
        fi
        WRK_PID=$!
        wait "$WRK_PID" || die "load generator against $server failed: $(tail -3 "$file" "$TMP/h2load.out" 2>/dev/null)"
        # h2load's report, rewritten in the shape of wrk's that the lines below read: req/s,
        # mean time per request as "50%", max as "99%", non-2xx answers.
        [[ $case == h2c ]] && h2load_as_wrk "$TMP/h2load.out" >"$file"
        WRK_PID=
        child_ticks
        c1=$CHILD_TICKS
        w1=$(date +%s.%N)
        read -r b1 i1 tot1 <<<"$(cpu_ticks "$PROXY_CPU")"
        read -r lb1 _ ltot1 <<<"$(cpu_ticks "$LOAD_CPU")"
        o1=$(ours_ticks)
        t1=$(proc_ticks "${PID[$server]}")
        alive "$server" || die "$server exited during its run: $(tail -5 "$TMP/$server.out")"
        local rps p50 p99 reqs bad line cores foreign
        rps=$(awk '/^Requests\/sec:/ {print $2}' "$file")
        p50=$(awk '$1 == "50%" {print $2}' "$file")
        p99=$(awk '$1 == "99%" {print $2}' "$file")
        reqs=$(awk '/ requests in / {print $1}' "$file")
        bad=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$file")
        [[ -n $rps && -n $p99 && -n $reqs ]] || die "cannot read wrk output $file"
        [[ -z $bad ]] || die "$server: $bad non-2xx responses (see $file)"
        grep -q 'Socket errors' "$file" && flags+="socket-errors,"
        cores=$(awk -v t=$((t1 - t0)) -v hz="$HZ" -v w0="$w0" -v w1="$w1" 'BEGIN { printf "%.2f", t / hz / (w1 - w0) }')
        # Busy ticks on both CPUs not charged to our processes or to wrk: someone else's work.
        foreign=$(awk -v b=$((b1 - b0 + lb1 - lb0)) -v o=$((o1 - o0)) -v c=$((c1 - c0)) -v hz="$HZ" \
            -v w0="$w0" -v w1="$w1" 'BEGIN { f = (b - o - c) / hz / (w1 - w0); printf "%.2f", f }')
        if ((conns > 1)) && awk -v c="$cores" 'BEGIN { exit !(c < 0.8) }'; then flags+="starved<0.8,"; fi
        # wrk (and the origin / Redis) share CPU $LOAD_CPU: near 100% busy, they may be the limit.
        if ((conns > 1 && (ltot1 - ltot0) > 0 && 100 * (lb1 - lb0) >= 95 * (ltot1 - ltot0))); then flags+="load-cpu>=95%,"; fi
        line=$(awk -v c="$case" -v l="$label" -v r="$run" -v rps="$rps" -v p50="$(to_us "$p50")" \
            -v p99="$(to_us "$p99")" -v cores="$cores" -v reqs="$reqs" -v f="$foreign" \
            -v b0=$((b1 - b0)) -v t0=$((tot1 - tot0)) -v b1=$((lb1 - lb0)) -v t1=$((ltot1 - ltot0)) \
            'BEGIN { printf "%s %s %s %.0f %s %s %s %.0f %.0f %.0f %s %s", c, l, r, rps, p50, p99, cores,
                     (cores > 0 ? rps / cores : 0), (t0 ? 100 * b0 / t0 : 0), (t1 ? 100 * b1 / t1 : 0), f, reqs }')
        if awk -v f="$foreign" -v m="$MAX_FOREIGN" 'BEGIN { exit !(f > m) }'; then
            flags+="foreign-cpu,"
            if ((attempt < 3)); then
                log "  $case/$label run $run: other processes took $foreign core; repeating it"
                continue
            fi
        fi
        break
    done
    printf '%s %s\n' "$line" "${flags:--}" >>"$RESULTS"
    log "  $case $label run $run: $(awk '{ printf "%s req/s, p50 %s us, p99 %s us, %s core, foreign %s", $4, $5, $6, $7, $11 }' <<<"$line") ${flags:+[$flags]}"
}

# h2load_as_wrk FILE: the figures of an h2load report as wrk prints them (see `measure`).
h2load_as_wrk() {
    cat "$1"
    awk '/^finished in/ { gsub(",", "", $4); print "Requests/sec: " $4 }
         /^requests:/ { print $2 " requests in (h2load)"; if ($10 + $12 + $14 > 0) print "Non-2xx or 3xx responses: failed " $10 }
         /^status codes:/ { n = $7 + $9; if (n > 0) print "Non-2xx or 3xx responses: " n }
         /^time for request:/ { print "     50%  " $6; print "     99%  " $5 }' "$1"
}

# rotate CASE RUN "label:server ..." CONNS PATH_OR_URL_SUFFIX [LUA...]: one run of each, order
# reversed on even runs so that drift does not favour one server.
rotate() {
    local case=$1 run=$2 conns=$4 path=$5 pair
    local -a pairs
    read -r -a pairs <<<"$3"
    shift 5
    if ((run % 2 == 0)); then
        local -a rev=()
        for ((i = ${#pairs[@]} - 1; i >= 0; i--)); do rev+=("${pairs[i]}"); done
        pairs=("${rev[@]}")
    fi
    for pair in "${pairs[@]}"; do
        measure "$case" "${pair%%:*}" "${pair#*:}" "$run" "$conns" "$(url "${pair#*:}" "$path")" "$@"
    done
}
# A short untimed pass per server: connection setup and first-touch costs are not measured.
# prime CONNS PATH SERVER...
prime() {
    local conns=$1 path=$2 s
    shift 2
    for s in "$@"; do
        timeout 30 taskset -c "$LOAD_CPU" wrk -t1 -c"$conns" -d1s "$(url "$s" "$path")" >/dev/null 2>&1 || true
    done
}
prime_lua() {
    local conns=$1 s=$2
    shift 2
    timeout 30 taskset -c "$LOAD_CPU" wrk -t1 -c"$conns" -d1s -s "$1" "$(url "$s")" -- "${@:2}" >/dev/null 2>&1 || true
}

declare -A CASE_TITLE REF
CASE_ORDER=()
case_begin() {
    CASE_ORDER+=("$1")
    CASE_TITLE[$1]=$2
    REF[$1]=${3:-}
    log "case $1: $2"
}

# --- start, wait for an idle machine ---------------------------------------------------------------
start origin
wait_http "$(url origin "$HOT")" 10
log "waiting for the 1-minute load average to drop below 0.5 (at most $LOAD_WAIT s)"
if wait_loadavg 0.5 "$LOAD_WAIT"; then
    LOAD_NOTE="1-minute load average $(cut -d' ' -f1 /proc/loadavg) when the timed runs began"
else
    LOAD_NOTE="**the load average never dropped below 0.5 within $LOAD_WAIT s** ($(cut -d' ' -f1-3 /proc/loadavg)); see the per-run foreign CPU column"
    log "warning: ${LOAD_NOTE//\*/}"
fi
T_START=$SECONDS

# --- (1)(2) hit, (6) latency ---------------------------------------------------------------------
HIT_PAIRS=""   # case hit (with the ceiling when selected)
LAT_PAIRS=""   # case latency: the caches only
want ceiling && HIT_PAIRS+="ceiling:ceiling "
for s in $HIT_SERVERS; do
    if want hit && [[ " $HIT_PAIRS " != *" $s:$s "* ]]; then HIT_PAIRS+="$s:$s "; fi
    if [[ $s != ceiling ]]; then LAT_PAIRS+="$s:$s "; fi
done
want latency || LAT_PAIRS=""
if [[ -n $HIT_PAIRS$LAT_PAIRS ]]; then
    for pair in $HIT_PAIRS $LAT_PAIRS; do start "${pair#*:}"; done
    # Warm: one miss each, then a verified hit.
    for pair in $HIT_PAIRS $LAT_PAIRS; do curl -fsS -o /dev/null "$(url "${pair#*:}" "$HOT")"; done
    for pair in $HIT_PAIRS $LAT_PAIRS; do check_hit "${pair#*:}" "$HOT"; done
fi
if want ceiling || want hit; then
    case_begin hit "one hot ~600-byte record, wrk -t1 -c$CONNECTIONS" nginx
    before=$(origin_groups)
    read -r -a servers <<<"$(for p in $HIT_PAIRS; do echo -n "${p#*:} "; done)"
    prime "$CONNECTIONS" "$HOT" "${servers[@]}"
    for run in $(seq 1 "$RUNS"); do rotate hit "$run" "$HIT_PAIRS" "$CONNECTIONS" "$HOT"; done
    [[ $(origin_groups) == "$before" ]] || die "hit: the origin saw $(($(origin_groups) - before)) requests during the timed runs"
    sizes=""
    for pair in $HIT_PAIRS; do sizes+="${pair%%:*} ${RESP_BYTES[${pair#*:}]} B, "; done
    note "hit|Response size (headers + body): ${sizes%, }. Body $BODY_BYTES bytes. The origin saw no request during the timed runs."
fi
if want latency; then
    case_begin latency "the same hit at one connection, wrk -t1 -c1" nginx
    before=$(origin_groups)
    read -r -a servers <<<"$(for p in $LAT_PAIRS; do echo -n "${p#*:} "; done)"
    prime 1 "$HOT" "${servers[@]}"
    for run in $(seq 1 "$LATENCY_RUNS"); do rotate latency "$run" "$LAT_PAIRS" 1 "$HOT"; done
    [[ $(origin_groups) == "$before" ]] || die "latency: the origin saw requests during the timed runs"
fi

# --- (2b) the hit over h2c ---------------------------------------------------------------------------
if want h2c; then
    H2C_PAIRS=""
    for s in $H2C_SERVERS; do H2C_PAIRS+="$s:$s "; start "$s"; done
    for s in $H2C_SERVERS; do
        curl -fsS --http2-prior-knowledge -o /dev/null "$(url "$s" "$HOT")"
        curl -fsS --http2-prior-knowledge -D "$RAW/$s-h2c.headers" -o /dev/null "$(url "$s" "$HOT")"
        is_hit "$s" "$RAW/$s-h2c.headers" || die "$s did not answer $HOT from its cache over h2c"
    done
    # Both answer HTTP/2 with prior knowledge (not an HTTP/1.1 fallback).
    for s in $H2C_SERVERS; do
        h2load -n1 -c1 "$(url "$s" "$HOT")" 2>&1 | grep -q 'Application protocol: h2c' || die "$s does not speak h2c"
    done
    case_begin h2c "one hot ~600-byte record over h2c, h2load -t1 -c$CONNECTIONS -m$H2_STREAMS (p50 = mean, p99 = max)" nginx-h2c
    before=$(origin_groups)
    for s in $H2C_SERVERS; do timeout 30 taskset -c "$LOAD_CPU" h2load -t1 -c"$CONNECTIONS" -m"$H2_STREAMS" -D1 "$(url "$s" "$HOT")" >/dev/null 2>&1 || true; done
    for run in $(seq 1 "$RUNS"); do rotate h2c "$run" "$H2C_PAIRS" "$CONNECTIONS" "$HOT"; done
    [[ $(origin_groups) == "$before" ]] || die "h2c: the origin saw requests during the timed runs"
fi

# --- (3) many keys ---------------------------------------------------------------------------------
if want keys; then
    KEYS_PAIRS=""
    for s in $KEYS_SERVERS; do KEYS_PAIRS+="$s:$s "; start "$s"; done
    for s in $KEYS_SERVERS; do fetch_all "$PATHS" "$(url "$s")"; done
    # Verify a sample: the hottest Zipf keys and a few others are hits everywhere.
    for s in $KEYS_SERVERS; do
        for p in $(head -3 "$PATHS") $(sed -n '1000p;2000p;3000p' "$PATHS"); do check_hit "$s" "$p"; done
    done
    for dist in uniform zipf; do
        c=keys-$dist
        if [[ $dist == zipf ]]; then
            case_begin "$c" "$NKEYS group records, Zipf s=$ZIPF_S over a fixed shuffled rank, wrk -c$CONNECTIONS" nginx
            args=("$PATHS" zipf "$ZIPF_S")
        else
            case_begin "$c" "$NKEYS group records, uniform, wrk -c$CONNECTIONS" nginx
            args=("$PATHS" uniform)
        fi
        before=$(origin_groups)
        for s in $KEYS_SERVERS; do prime_lua "$CONNECTIONS" "$s" "$ROOT/scripts/wrk/keys.lua" "${args[@]}"; done
        for run in $(seq 1 "$RUNS"); do
            rotate "$c" "$run" "$KEYS_PAIRS" "$CONNECTIONS" "" "$ROOT/scripts/wrk/keys.lua" "${args[@]}"
        done
        [[ $(origin_groups) == "$before" ]] || die "$c: the origin saw $(($(origin_groups) - before)) requests during the timed runs"
    done
    note "keys-uniform|All $NKEYS keys were fetched through every server before the timed runs; the origin saw no request during them."
fi

# --- (5) pass-through ------------------------------------------------------------------------------
if want miss; then
    case_begin miss "pass-through of $PASS_PATH (no cache) to an nginx \`return 200\` origin on CPU $LOAD_CPU, wrk -c$CONNECTIONS" nginx
    MISS_PAIRS=""
    for s in $MISS_SERVERS; do MISS_PAIRS+="$s:$s "; start "$s"; done
    for s in $MISS_SERVERS; do
        h="$RAW/miss-$s.headers"
        curl -fsS -D "$h" -o /dev/null "$(url "$s" "$PASS_PATH")"
        ! is_hit "$s" "$h" || die "$s answered $PASS_PATH from a cache"
    done
    prime "$CONNECTIONS" "$PASS_PATH" $MISS_SERVERS
    o0=$(origin_orders)
    r0=$(awk '$1 == "miss" { s += $12 } END { print s + 0 }' "$RESULTS")
    for run in $(seq 1 "$RUNS"); do rotate miss "$run" "$MISS_PAIRS" "$CONNECTIONS" "$PASS_PATH"; done
    o1=$(origin_orders)
    r1=$(awk '$1 == "miss" { s += $12 } END { print s + 0 }' "$RESULTS")
    ((o1 - o0 >= r1 - r0)) || die "miss: wrk completed $((r1 - r0)) requests but the origin saw only $((o1 - o0))"
    note "miss|Every timed request reached the origin: wrk completed $((r1 - r0)), the origin logged $((o1 - o0)) (includes repeated runs). Upstream keep-alive: sidecache's pooled client, nginx \`keepalive 64\`, Varnish's backend pool."
fi

# --- (9b) a [[limit]] rule, local decisions --------------------------------------------------------
if want limit; then
    case_begin limit "L1 hit with a [[limit]] on the route (no [l2]: local GCRA) vs without" no-limit
    start sidecache
    start sidecache-limit
    for s in sidecache sidecache-limit; do curl -fsS -o /dev/null "$(url "$s" "$HOT")"; check_hit "$s" "$HOT"; done
    h="$RAW/limit.headers"
    curl -fsS -D "$h" -o /dev/null "$(url sidecache-limit "$HOT")"
    grep -qi '^ratelimit-policy:' "$h" || die "sidecache-limit: no RateLimit-Policy on a hit"
    before=$(origin_groups)
    d0=$(metrics sidecache-limit | msum '^sidecache_ratelimit_decisions_total.*backend="local"')
    limit_pairs="no-limit:sidecache limit-local:sidecache-limit"
    prime 1 "$HOT" sidecache sidecache-limit
    for run in $(seq 1 "$LATENCY_RUNS"); do rotate limit-c1 "$run" "$limit_pairs" 1 "$HOT"; done
    for run in $(seq 1 "$RUNS"); do rotate limit "$run" "$limit_pairs" "$CONNECTIONS" "$HOT"; done
    CASE_ORDER+=(limit-c1)
    CASE_TITLE[limit-c1]="the same at one connection, wrk -t1 -c1"
    REF[limit-c1]=no-limit
    [[ $(origin_groups) == "$before" ]] || die "limit: the origin saw requests during the timed runs"
    d1=$(metrics sidecache-limit | msum '^sidecache_ratelimit_decisions_total.*backend="local"')
    n=$(awk '$2 == "limit-local" { s += $12 } END { print s + 0 }' "$RESULTS")
    note "limit|Rule: \`route = \"group\"\`, \`key = \"ip\"\`, \`rate = \"1000000000/s\"\` (never denies). Local decisions counted by sidecache during the runs: $((d1 - d0)) (wrk completed $n, primes included in the former). Limited answers carry RateLimit-Policy and RateLimit (+$(($(wc -c <"$h") - $(curl -fsS -D - -o /dev/null "$(url sidecache "$HOT")" | wc -c))) bytes of headers)."
    stop sidecache-limit
fi

# --- (4) L2 hits -----------------------------------------------------------------------------------
if want l2; then
    case_begin l2 "L2 hit, L1 off in effect (\`[l1] max_age = \"1ms\"\`), Redis on CPU $LOAD_CPU, $NKEYS keys uniform, wrk -c$CONNECTIONS" sidecache-L1
    start redis-l2
    start sidecache-l2
    # Fills L2 (and L1 for 1 ms).
    fetch_all "$PATHS" "$(url sidecache-l2)"
    sleep 0.1
    for p in $(head -3 "$PATHS"); do check_hit sidecache-l2 "$p" l2; done
    before=$(origin_groups)
    m0=$(metrics sidecache-l2)
    prime_lua "$CONNECTIONS" sidecache-l2 "$ROOT/scripts/wrk/keys.lua" "$PATHS" uniform
    for run in $(seq 1 "$RUNS"); do
        measure l2 sidecache-L2 sidecache-l2 "$run" "$CONNECTIONS" "$(url sidecache-l2)" "$ROOT/scripts/wrk/keys.lua" "$PATHS" uniform
    done
    [[ $(origin_groups) == "$before" ]] || die "l2: the origin saw $(($(origin_groups) - before)) requests during the timed runs"
    m1=$(metrics sidecache-l2)
    metrics sidecache-l2 >"$RAW/sidecache-l2-metrics.txt"
    out=""
    for o in hit_l2 hit collapsed miss; do
        a=$(msum "^sidecache_requests_total.*cache=\"$o\"" <<<"$m0")
        b=$(msum "^sidecache_requests_total.*cache=\"$o\"" <<<"$m1")
        out+="$o $((b - a)), "
    done
    note "l2|Answers during the timed runs by outcome (sidecache_requests_total): ${out%, }. The origin saw no request. Redis: redis-server $(redis-server --version | awk '{print $3}' | tr -d 'v='), \`[l2] timeout\` default."
    # The L1 figure of case keys-uniform is the reference, when it ran.
    if grep -q '^keys-uniform sidecache ' "$RESULTS"; then
        awk '$1 == "keys-uniform" && $2 == "sidecache" { $1 = "l2"; $2 = "sidecache-L1"; $13 = "copied-from-keys-uniform"; print }' "$RESULTS" >"$TMP/ref.txt"
        cat "$TMP/ref.txt" >>"$RESULTS"
    fi
    stop sidecache-l2
    stop redis-l2
fi

# --- (9c) Redis commands per rate-limited request --------------------------------------------------
if want commands; then
    case_begin commands "L1 hit with a [[limit]] decided in Redis (Redis on CPU $LOAD_CPU), wrk -c$CONNECTIONS" ""
    start redis-cmd
    start sidecache-cmd
    curl -fsS -o /dev/null "$(url sidecache-cmd "$HOT")" # fill; the first decision loads the script
    check_hit sidecache-cmd "$HOT"
    d0=$(metrics sidecache-cmd | msum '^sidecache_ratelimit_decisions_total.*backend="redis"')
    redis-cli -p "${PORT[redis-cmd]}" CONFIG RESETSTAT >/dev/null
    awk -v n="$COMMAND_REQUESTS" -v p="$HOT" 'BEGIN { for (i = 0; i < n; i++) print p }' >"$TMP/cmd-paths.txt"
    t0=$(date +%s.%N)
    fetch_all "$TMP/cmd-paths.txt" "$(url sidecache-cmd)"
    t1=$(date +%s.%N)
    redis-cli -p "${PORT[redis-cmd]}" INFO commandstats | tr -d '\r' >"$RAW/commandstats.txt"
    d1=$(metrics sidecache-cmd | msum '^sidecache_ratelimit_decisions_total.*backend="redis"')
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
    table=$(awk -F'[:=,]' -v n="$COMMAND_REQUESTS" '/^cmdstat_/ { sub(/^cmdstat_/, "", $1); printf "| `%s` | %d | %.3f |\n", $1, $3, $3 / n }' "$RAW/commandstats.txt")
    EVALSHA=$(awk -F'[:=,]' '$1 == "cmdstat_evalsha" { print $3 }' "$RAW/commandstats.txt")
    note "commands|$COMMAND_REQUESTS sequential L1 hits (one curl, one keep-alive connection, ${secs} s) after \`CONFIG RESETSTAT\`; decisions with backend=redis counted by sidecache: $((d1 - d0)). Redis \`INFO commandstats\` (calls; the \`info\` is this query, \`publish\` the pub/sub heartbeat, 1/s):"
    note "commands|"
    note "commands|| command | calls | per request |"
    note "commands||---|---:|---:|"
    while IFS= read -r l; do note "commands|$l"; done <<<"$table"
    before=$(origin_groups)
    prime "$CONNECTIONS" "$HOT" sidecache-cmd
    for run in $(seq 1 "$RUNS"); do
        measure commands limit-redis sidecache-cmd "$run" "$CONNECTIONS" "$(url sidecache-cmd "$HOT")"
    done
    [[ $(origin_groups) == "$before" ]] || die "commands: the origin saw requests during the timed runs"
    stop sidecache-cmd
    stop redis-cmd
fi

# --- (9a) L1 hits with [l2] configured: Redis up, then down ----------------------------------------
if want redis; then
    case_begin redis "L1 hit, one hot record, with \`[l2]\` configured: Redis up, then Redis killed, wrk -c$CONNECTIONS" redis-up
    start redis-redis
    start sidecache-redis
    # Until subscribed, L1 is degraded (entries live 5 s): wait for the subscription.
    wait_subscribed sidecache-redis 1 "never subscribed"
    curl -fsS -o /dev/null "$(url sidecache-redis "$HOT")"
    check_hit sidecache-redis "$HOT"
    prime "$CONNECTIONS" "$HOT" sidecache-redis
    before=$(origin_groups)
    for run in $(seq 1 "$RUNS"); do
        measure redis redis-up sidecache-redis "$run" "$CONNECTIONS" "$(url sidecache-redis "$HOT")"
    done
    up_origin=$(($(origin_groups) - before))
    stop redis-redis
    t_kill=$SECONDS
    wait_subscribed sidecache-redis 0 "did not notice that Redis is gone"
    curl -fsS -o /dev/null "$(url sidecache-redis "$HOT")"
    check_hit sidecache-redis "$HOT"
    metrics sidecache-redis >"$RAW/sidecache-redis-down-before.txt"
    prime "$CONNECTIONS" "$HOT" sidecache-redis
    before=$(origin_groups)
    for run in $(seq 1 "$RUNS"); do
        measure redis redis-down sidecache-redis "$run" "$CONNECTIONS" "$(url sidecache-redis "$HOT")"
    done
    down_origin=$(($(origin_groups) - before))
    metrics sidecache-redis >"$RAW/sidecache-redis-down-after.txt"
    br=$(grep '^sidecache_redis_breaker_state' "$RAW/sidecache-redis-down-after.txt" | awk '$NF == 1 { print $1 }' | sed 's/.*state="\([a-z_]*\)".*/\1/')
    l2err=$(($(msum '^sidecache_l2_operations_total.*result="(error|timeout|not_connected)"' <"$RAW/sidecache-redis-down-after.txt") - $(msum '^sidecache_l2_operations_total.*result="(error|timeout|not_connected)"' <"$RAW/sidecache-redis-down-before.txt")))
    note "redis|Origin requests during the timed runs: Redis up $up_origin; Redis down $down_origin (L1 is degraded while unsubscribed: entries live \`[pubsub] degraded_max_age\` = 5 s, so the hot key is refetched about every 5 s). Failed L2 operations during the down runs: $l2err; breaker state after: ${br:-?}. Redis was killed $((SECONDS - t_kill)) s before the end of the last run."
    stop sidecache-redis
fi

# --- (10) stale: the origin killed during a run ----------------------------------------------------
STALE_LINE=""
if want stale; then
    log "case stale: origin killed ${STALE_KILL_AFTER}s into a ${STALE_DURATION}s wrk run on $STALE_KEYS hot keys, grace 60s"
    start origin-stale
    start sidecache-stale
    head -n "$STALE_KEYS" "$PATHS" >"$TMP/stale-paths.txt"
    fetch_all "$TMP/stale-paths.txt" "$(url sidecache-stale)"
    check_hit sidecache-stale "$(head -1 "$TMP/stale-paths.txt")"
    m0=$(metrics sidecache-stale)
    file="$RAW/stale-wrk.txt"
    # The figure is a count of errors, not a rate: a busy machine delays, never falsifies it.
    wait_quiet 10 30 || true
    timeout $((STALE_DURATION + 30)) taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${STALE_DURATION}s" \
        --latency -s "$ROOT/scripts/wrk/keys.lua" "$(url sidecache-stale)" -- "$TMP/stale-paths.txt" uniform \
        >"$file" 2>&1 &
    WRK_PID=$!
    sleep "$STALE_KILL_AFTER"
    stop origin-stale
    if (exec 3<>"/dev/tcp/127.0.0.1/${PORT[origin-stale]}") 2>/dev/null; then die "stale: the origin still answers"; fi
    wait "$WRK_PID" || die "wrk against sidecache-stale failed: $(tail -3 "$file")"
    WRK_PID=
    m1=$(metrics sidecache-stale)
    echo "$m1" >"$RAW/sidecache-stale-metrics.txt"
    outcome_delta() {
        local re="^sidecache_requests_total[{].*cache=\"$1\""
        echo $(($(msum "$re" <<<"$m1") - $(msum "$re" <<<"$m0")))
    }
    reqs=$(awk '/ requests in / {print $1}' "$file")
    bad=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$file")
    rps=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' "$file")
    p99=$(to_us "$(awk '$1 == "99%" {print $2}' "$file")")
    STALE_LINE="$reqs ${bad:-0} $(outcome_delta stale) $(outcome_delta stale_error) $(outcome_delta error) $(outcome_delta hit) $rps $p99"
    log "  stale: $reqs requests, ${bad:-0} non-2xx; outcomes stale/stale_error/error/hit: $(cut -d' ' -f3-6 <<<"$STALE_LINE")"
    stop sidecache-stale
fi

# --- (7) memory ------------------------------------------------------------------------------------
MEM_LINE=""
if want memory; then
    log "case memory: $NKEYS group records + $MEM_USERS balance records"
    start sidecache-mem
    rss() { awk '/^VmRSS:/ { print $2 * 1024 }' "/proc/${PID[sidecache-mem]}/status"; }
    rss0=$(rss)
    u0=$(origin_users)
    fetch_all "$PATHS" "$(url sidecache-mem)"
    m=$(metrics sidecache-mem)
    rss1=$(rss)
    l1b1=$(msum '^sidecache_l1_bytes' <<<"$m")
    # wrk sleeps for its whole -d even after fill.lua stopped its thread: SIGINT ends it once
    # the origin has seen every user.
    taskset -c "$LOAD_CPU" wrk -t1 -c16 -d600s -s "$ROOT/scripts/wrk/fill.lua" \
        "$(url sidecache-mem)" -- "$MEM_USERS" 1 live >"$RAW/memory-fill.txt" 2>&1 &
    WRK_PID=$!
    deadline=$((SECONDS + 590))
    while (($(origin_users) - u0 < MEM_USERS)); do
        kill -0 "$WRK_PID" 2>/dev/null || die "fill: wrk ended early: $(tail -3 "$RAW/memory-fill.txt")"
        ((SECONDS < deadline)) || die "fill: the origin saw only $(($(origin_users) - u0)) of $MEM_USERS users"
        sleep 0.5
    done
    sleep 0.5
    kill -INT "$WRK_PID" 2>/dev/null
    wait "$WRK_PID" || true
    WRK_PID=
    sleep 1
    m=$(metrics sidecache-mem)
    echo "$m" >"$RAW/sidecache-mem-metrics.txt"
    rss2=$(rss)
    hwm=$(awk '/^VmHWM:/ { print $2 * 1024 }' "/proc/${PID[sidecache-mem]}/status")
    entries=$(msum '^sidecache_l1_entries' <<<"$m")
    l1b=$(msum '^sidecache_l1_bytes' <<<"$m")
    users=$(($(origin_users) - u0))
    bal_bytes=$(curl -fsS -H 'Authorization: Bearer user-000001' "$(url sidecache-mem /api/users/live/000001/balance)" | wc -c)
    h="$RAW/memory-sample.headers"
    curl -fsS -D "$h" -o /dev/null -H 'Authorization: Bearer user-000777' "$(url sidecache-mem /api/users/live/000777/balance)"
    is_hit sidecache-mem "$h" || die "memory: a filled balance record was not a hit"
    bodies=$((NKEYS * BODY_BYTES + MEM_USERS * bal_bytes))
    # The responses as the upstream sent them (status line + fields + body): what a cache that
    # keeps whole responses, as nginx does in its cache files, stores.
    head_of() { curl -fsS -o /dev/null -w '%{size_header}' "$@"; }
    group_head=$(head_of "$(url origin /api/groups/VIP/EURUSD)")
    bal_head=$(head_of -H 'Authorization: Bearer user-000001' "$(url origin /api/users/live/000001/balance)")
    responses=$((NKEYS * (group_head + BODY_BYTES) + MEM_USERS * (bal_head + bal_bytes)))
    MEM_LINE="$rss0 $rss1 $rss2 $hwm $entries $l1b $l1b1 $bodies $users $bal_bytes $responses"
    log "  memory: RSS $rss0 -> $rss1 -> $rss2 bytes; entries $entries; l1_bytes $l1b; bodies $bodies"
    stop sidecache-mem
fi

# --- (8) consistency -------------------------------------------------------------------------------
CONSISTENCY_OUT=""
if want consistency; then
    log "case consistency: DURATION=$CONSISTENCY_DURATION cargo bench --bench consistency"
    wait_quiet 10 300 || true
    CONSISTENCY_SRC="work tree at $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    [[ -z $(git status --porcelain -- src benches tests Cargo.toml Cargo.lock 2>/dev/null) ]] || CONSISTENCY_SRC+=" + uncommitted changes"
    if DURATION=$CONSISTENCY_DURATION cargo bench --bench consistency --quiet >"$RAW/consistency.txt" 2>"$RAW/consistency.err"; then
        CONSISTENCY_OUT=$(grep -E '^(\||##)' "$RAW/consistency.txt" || true)
    else
        CONSISTENCY_OUT="**cargo bench --bench consistency failed**: $(tail -5 "$RAW/consistency.err")"
    fi
fi
ELAPSED=$((SECONDS - T_START))

# --- report ----------------------------------------------------------------------------------------
for d in "$O" "$C" "$TMP/nginx" "$TMP/nginx-tuned" "$TMP/nginx-fwd"; do cp "$d/nginx.conf" "$RAW/$(basename "$d").nginx.conf"; done
cp "$V/default.vcl" "$RAW/varnish.vcl"
for s in sidecache sidecache-limit sidecache-l2 sidecache-cmd sidecache-redis sidecache-mem sidecache-stale; do cp "$TMP/$s/sidecache.toml" "$RAW/$s.toml"; done
[[ -n ${PID[sidecache]:-} ]] && metrics sidecache >"$RAW/sidecache-metrics.txt" || true

declare -A LABEL=(
    [ceiling]="nginx \`return 200\` (ceiling, no proxy)"
    [sidecache]="sidecache (L1)"
    [nginx]="nginx proxy_cache, stock (sendfile on, tcp_nopush on)"
    [nginx-tuned]="nginx proxy_cache, tuned (sendfile off, open_file_cache)"
    [varnish]="Varnish"
    [no-limit]="sidecache, no limit"
    [limit-local]="sidecache + [[limit]], local decisions"
    [limit-redis]="sidecache + [[limit]] in Redis"
    [sidecache-L2]="sidecache, L2 hits"
    [sidecache-L1]="sidecache, L1 hits (case keys-uniform, for reference)"
    [redis-up]="sidecache, Redis up"
    [redis-down]="sidecache, Redis killed"
    # Per case where the same server plays another part (looked up first).
    [miss/sidecache]="sidecache, pass-through (no cached route)"
    [miss/nginx]="nginx proxy_pass, no cache (keepalive 64)"
    [miss/nginx-fwd]="nginx proxy_pass, no cache, adding sidecache's forwarding fields"
    [miss/varnish]="Varnish, pass"
)
col() { awk -v c="$1" -v l="$2" -v k="$3" '$1 == c && $2 == l { print $k }' "$RESULTS"; }
declare -A MED P50 P99
stats() { # case label -> MED/P50/P99 entries
    local k="$1/$2"
    MED[$k]=$(printf '%.0f' "$(col "$1" "$2" 4 | median)")
    P50[$k]=$(printf '%.0f' "$(col "$1" "$2" 5 | median)")
    P99[$k]=$(printf '%.0f' "$(col "$1" "$2" 6 | median)")
}
labels_of() { awk -v c="$1" '$1 == c && !seen[$2]++ { print $2 }' "$RESULTS"; }
for c in "${CASE_ORDER[@]}"; do for l in $(labels_of "$c"); do stats "$c" "$l"; done; done
med() { echo "${MED[$1/$2]:-}"; }
p99() { echo "${P99[$1/$2]:-}"; }
p50() { echo "${P50[$1/$2]:-}"; }
# verdict VALUE OP LIMIT
verdict() { awk -v v="$1" -v o="$2" -v l="$3" 'BEGIN { if (v == "" || v == "–") { print "not measured"; exit } ok = (o == ">=") ? v >= l : v <= l; print ok ? "met" : "**NOT met**" }'; }

{
    echo "# sidecache benchmarks: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "- sidecache: $BUILD_DESC ($("$BIN" --version 2>/dev/null | head -1))"
    echo "- machine: $(nproc) CPUs, $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo), kernel $(uname -r); $LOAD_NOTE"
    echo "- $("$NGINX" -v 2>&1 | sed 's/^nginx version: //'); $("$VARNISHD" -V 2>&1 | head -1 | sed 's/ (\(varnish-[0-9.]*\).*/ \1/;s/^varnishd //'); $(wrk -v 2>&1 | head -1 | awk '{print "wrk", $2}'); $(command -v redis-server >/dev/null && redis-server --version | awk '{print "redis", $3}' | tr -d 'v=')"
    echo "- command: \`DURATION=$DURATION RUNS=$RUNS CASES=\"$CASES\" scripts/bench.sh\`; timed part took $((ELAPSED / 60)) min $((ELAPSED % 60)) s"
    echo "- placement: the server under test under \`taskset -c $PROXY_CPU\`, one worker (sidecache \`worker_threads = 1\`, nginx \`worker_processes 1\`, varnishd \`thread_pools=1\`); \`wrk -t1\`, the origin (nginx) and redis-server under \`taskset -c $LOAD_CPU\`"
    echo "- each figure: the median of $RUNS runs ($LATENCY_RUNS at one connection) of ${DURATION} s, servers alternating (order reversed on even runs); min..max over the runs"
    echo
    echo "| case | server | median req/s | min..max req/s | p50 µs | p99 µs | req/s vs ref | p99 vs ref | core used | flags |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"
    for c in "${CASE_ORDER[@]}"; do
        ref=${REF[$c]}
        for l in $(labels_of "$c"); do
            k="$c/$l"
            cname=$c
            [[ $c == hit && $l == ceiling ]] && cname="ceiling"
            rr=–
            pr=–
            if [[ -n $ref && -n ${MED[$c/$ref]:-} ]]; then
                rr="$(ratio "${MED[$k]}" "${MED[$c/$ref]}")x"
                pr="$(ratio "${P99[$k]}" "${P99[$c/$ref]}")x"
            fi
            [[ $l == "$ref" ]] && rr="ref" && pr="ref"
            mn=$(col "$c" "$l" 4 | sort -g | head -1)
            mx=$(col "$c" "$l" 4 | sort -g | tail -1)
            cores=$(printf '%.2f' "$(col "$c" "$l" 7 | median)")
            fl=$(col "$c" "$l" 13 | grep -v '^-$' | tr ',' '\n' | grep . | sort -u | paste -sd, - || true)
            echo "| $cname | ${LABEL[$c/$l]:-${LABEL[$l]:-$l}} | ${MED[$k]} | $mn..$mx | ${P50[$k]} | ${P99[$k]} | $rr | $pr | $cores | ${fl:-} |"
        done
    done
    echo
    echo "Cases: $(for c in "${CASE_ORDER[@]}"; do printf '**%s**: %s (ref: %s). ' "$c" "${CASE_TITLE[$c]}" "${REF[$c]:-none}"; done)"
    echo
    echo "\"core used\" is CPU time charged to the server under test per second (nginx: master + worker;"
    echo "Varnish: manager + child). Flags: \`starved<0.8\` the server got < 0.8 core at c$CONNECTIONS (other"
    echo "work on CPU $PROXY_CPU, or it waited on wrk / the origin / Redis on CPU $LOAD_CPU); \`foreign-cpu\` processes"
    echo "not started by the script took > $MAX_FOREIGN core during the run even after two repeats (at one connection"
    echo "the estimate reads low, about -0.2, because /proc/stat samples ticks while the per-process times are exact;"
    echo "the idle check before each run still applies); \`load-cpu>=95%\` CPU $LOAD_CPU (wrk, and the origin or Redis"
    echo "where they are in the path) was >= 95% busy: the figure may be the load side's limit, not the server's."
    echo
    if [[ -s $NOTES ]]; then
        echo "Notes:"
        echo
        awk -F'|' '{ c = $1; sub(/^[^|]*\|/, ""); if (c != last) { printf "- **%s**: %s\n", c, $0 } else if ($0 ~ /^\|/ || $0 == "") { print "  " $0 } else { print "  " $0 } last = c }' "$NOTES"
        echo
    fi
    if [[ -n $MEM_LINE ]]; then
        read -r rss0 rss1 rss2 hwm entries l1b l1b1 bodies users bal responses <<<"$MEM_LINE"
        mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
        limit_b=$(awk -v s="$bodies" 'BEGIN { printf "%.0f", 1.5 * s + 30 * 1048576 }')
        limit_l=$(awk -v s="$l1b" 'BEGIN { printf "%.0f", 1.5 * s + 30 * 1048576 }')
        limit_r=$(awk -v s="$responses" 'BEGIN { printf "%.0f", 1.5 * s + 30 * 1048576 }')
        echo "## (7) memory"
        echo
        echo "A fresh sidecache (\`[l1] max_bytes = \"128MiB\"\`), filled with $NKEYS group records ($BODY_BYTES-byte"
        echo "bodies, shared scope) and then $MEM_USERS balance records (\`GET /api/users/live/NNNNNN/balance\`,"
        echo "$bal-byte bodies, \`scope = \"identity\"\`, each user with its own \`Authorization: Bearer user-NNNNNN\`:"
        echo "one entry per user, as in production where every caller has its own token; the key holds a hash"
        echo "of the token, not the token). The origin saw $users balance requests."
        echo
        echo "| figure | value |"
        echo "|---|---:|"
        echo "| RSS after start (VmRSS) | $(mib "$rss0") |"
        echo "| RSS after $NKEYS group records | $(mib "$rss1") (\`sidecache_l1_bytes\` $(mib "$l1b1")) |"
        echo "| RSS after + $MEM_USERS balance records | **$(mib "$rss2")** (peak VmHWM $(mib "$hwm")) |"
        echo "| \`sidecache_l1_entries\` | $entries |"
        echo "| \`sidecache_l1_bytes\` (the weigher: what entries and L1's bookkeeping allocate) | $(mib "$l1b") |"
        echo "| bodies stored ($NKEYS x $BODY_BYTES + $MEM_USERS x $bal) | $(mib "$bodies") |"
        echo "| responses stored as received (status line + fields + body) | $(mib "$responses") |"
        echo "| target: RSS <= 1.5 x bodies + 30 MiB | $(mib "$limit_b"): $(verdict "$rss2" "<=" "$limit_b") |"
        echo "| target: RSS <= 1.5 x responses + 30 MiB | $(mib "$limit_r"): $(verdict "$rss2" "<=" "$limit_r") |"
        echo "| target: RSS <= 1.5 x \`sidecache_l1_bytes\` + 30 MiB | $(mib "$limit_l"): $(verdict "$rss2" "<=" "$limit_l") |"
        echo "| RSS per entry above the start | $(awk -v a="$rss2" -v b="$rss0" -v n="$entries" 'BEGIN { printf "%.0f bytes", n ? (a - b) / n : 0 }') |"
        echo
    fi
    if [[ -n $CONSISTENCY_OUT ]]; then
        echo "## (8) cross-pod invalidation: \`DURATION=$CONSISTENCY_DURATION cargo bench --bench consistency\`"
        echo
        echo "In-process (two pods, a real redis-server, loopback; not pinned), built by cargo from the $CONSISTENCY_SRC."
        echo
        echo "$CONSISTENCY_OUT" | sed 's/^## .*//' | sed '/^$/d'
        echo
    fi
    echo "## Targets"
    echo
    echo "| target | measured | verdict |"
    echo "|---|---:|---|"
    if [[ -n $(med hit sidecache) ]]; then
        for ref in nginx nginx-tuned; do
            [[ -n $(med hit "$ref") ]] && { r=$(ratio "$(med hit sidecache)" "$(med hit "$ref")"); echo "| L1 hit >= 1.5x ${LABEL[$ref]} | ${r}x | $(verdict "$r" ">=" 1.5) |"; }
        done
        [[ -n $(med hit varnish) ]] && { r=$(ratio "$(med hit sidecache)" "$(med hit varnish)"); echo "| L1 hit >= 2.5x Varnish | ${r}x | $(verdict "$r" ">=" 2.5) |"; }
        [[ -n $(med hit ceiling) ]] && { r=$(ratio "$(med hit sidecache)" "$(med hit ceiling)"); echo "| L1 hit >= 0.85x the ceiling | ${r}x | $(verdict "$r" ">=" 0.85) |"; }
    fi
    if [[ -n $(med keys-zipf sidecache) ]]; then
        for ref in nginx nginx-tuned; do
            [[ -n $(med keys-zipf "$ref") ]] && { r=$(ratio "$(med keys-zipf sidecache)" "$(med keys-zipf "$ref")"); echo "| many keys, Zipf >= 1.5x ${LABEL[$ref]} | ${r}x | $(verdict "$r" ">=" 1.5) |"; }
        done
    fi
    if [[ -n $(med miss sidecache) ]]; then
        for ref in nginx nginx-fwd; do
            [[ -n $(med miss "$ref") ]] && { r=$(ratio "$(med miss sidecache)" "$(med miss "$ref")"); echo "| pass-through >= 1.0x ${LABEL[miss/$ref]} | ${r}x | $(verdict "$r" ">=" 1.0) |"; }
        done
    fi
    if [[ -n $(p99 latency sidecache) ]]; then
        for ref in nginx nginx-tuned varnish; do
            [[ -n $(p99 latency "$ref") ]] && { r=$(ratio "$(p99 latency sidecache)" "$(p99 latency "$ref")"); echo "| hit p99 at c1 <= ${LABEL[$ref]}'s ($(p99 latency sidecache) vs $(p99 latency "$ref") µs) | ${r}x | $(verdict "$r" "<=" 1.0) |"; }
        done
    fi
    if [[ -n $MEM_LINE ]]; then
        echo "| memory: RSS <= 1.5 x bodies + 30 MiB | $(mib "$rss2") vs $(mib "$limit_b") | $(verdict "$rss2" "<=" "$limit_b") |"
        echo "| memory: RSS <= 1.5 x responses as received + 30 MiB | $(mib "$rss2") vs $(mib "$limit_r") | $(verdict "$rss2" "<=" "$limit_r") |"
        echo "| memory: RSS <= 1.5 x \`sidecache_l1_bytes\` + 30 MiB | $(mib "$rss2") vs $(mib "$limit_l") | $(verdict "$rss2" "<=" "$limit_l") |"
    fi
    if [[ -n $STALE_LINE ]]; then
        read -r s_reqs s_bad s_stale s_err s_error s_hit s_rps s_p99 <<<"$STALE_LINE"
        echo "| origin killed during a run on $STALE_KEYS keys with grace: non-2xx while in grace ($s_reqs requests, $s_rps req/s, p99 $s_p99 µs; stale $s_stale, stale_error $s_err, error $s_error, hit $s_hit) | $s_bad | $(verdict "$s_bad" "<=" 0) |"
    fi
    if [[ -n $(med redis redis-down) ]]; then
        r=$(ratio "$(med redis redis-down)" "$(med redis redis-up)")
        echo "| L1 hit with Redis killed within 10% of Redis up | ${r}x | $(verdict "$r" ">=" 0.9) |"
    fi
    if [[ -n $(p50 limit-c1 limit-local) ]]; then
        r=$(ratio "$(p50 limit-c1 limit-local)" "$(p50 limit-c1 no-limit)")
        echo "| a local [[limit]] adds <= 10% to hit latency, p50 at c1 ($(p50 limit-c1 limit-local) vs $(p50 limit-c1 no-limit) µs) | ${r}x | $(verdict "$r" "<=" 1.1) |"
        r=$(ratio "$(p99 limit-c1 limit-local)" "$(p99 limit-c1 no-limit)")
        echo "| the same, p99 at c1 ($(p99 limit-c1 limit-local) vs $(p99 limit-c1 no-limit) µs) | ${r}x | $(verdict "$r" "<=" 1.1) |"
        r=$(ratio "$(med limit no-limit)" "$(med limit limit-local)")
        echo "| the same, CPU per hit at c$CONNECTIONS (inverse req/s ratio) | ${r}x | $(verdict "$r" "<=" 1.1) |"
    fi
    if [[ -n ${EVALSHA:-} ]]; then
        r=$(ratio "$EVALSHA" "$COMMAND_REQUESTS")
        echo "| exactly one EVALSHA per allowed request | $EVALSHA / $COMMAND_REQUESTS = $r | $(awk -v r="$r" 'BEGIN { print (r == 1) ? "met" : "**NOT met**" }') |"
    fi
    echo
    echo "<details><summary>per run</summary>"
    echo
    echo "| case | server | run | req/s | p50 µs | p99 µs | core used | req per core-s | CPU $PROXY_CPU busy % | CPU $LOAD_CPU busy % | foreign cores | requests | flags |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    awk '{ printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13 }' "$RESULTS"
    echo
    echo "</details>"
    echo
    echo "Raw wrk output, generated configs, /metrics snapshots: \`${RAW#"$ROOT"/}/\`"
} >"$REPORT.tmp"
mv "$REPORT.tmp" "$REPORT"
cp "$REPORT" "$RAW/report.md"
cat "$REPORT"
