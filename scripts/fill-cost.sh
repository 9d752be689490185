#!/usr/bin/env bash
# What `[upstream] fill_quiet` costs (issue 15): cache fills through sidecache with it off and
# on, the same binary, one run: fills/s, fill latency (p50 / p99, wrk --latency) and the
# connections the origin accepted (nginx stub_status).
#
#   scripts/fill-cost.sh                        # 20,000 identity fills at wrk -c16, each setting
#   FILLS=50000 CONNECTIONS=64 QUIET="0ms 20ms 50ms" scripts/fill-cost.sh
#
# Each fill is a new key (scripts/wrk/fill.lua), so every request is a miss that stores. Pass-
# through traffic is not mixed in: this is the worst case for the rule, where every fill finds
# only connections that were busy a moment ago.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
BENCH_TAG=fill-cost
# shellcheck source=scripts/bench-lib.sh
source "$ROOT/scripts/bench-lib.sh"

FILLS=${FILLS:-20000}
CONNECTIONS=${CONNECTIONS:-16}
QUIET=${QUIET:-0ms 50ms}
need_tools wrk nginx curl
build_sidecache
TMP=$(mktemp -d /tmp/sidecache-fill-cost.XXXXXX)
trap cleanup_processes EXIT

free_port && ORIGIN=$FREE_PORT
mkdir -p "$TMP/origin/logs"
cat >"$TMP/origin/nginx.conf" <<EOF
$(nginx_head "$TMP/origin")
events { worker_connections 4096; }
http {
$(nginx_temp_paths "$TMP/origin")
    access_log off;
    keepalive_requests 100000000;
    server {
        listen 127.0.0.1:$ORIGIN;
        location = /status { stub_status; }
        location / { default_type application/json; return 200 '{"balance":"1000.00","currency":"USD"}'; }
    }
}
EOF
spawn origin "$NGINX" -p "$TMP/origin" -c "$TMP/origin/nginx.conf"
wait_http "http://127.0.0.1:$ORIGIN/" 20
accepts() { curl -fsS "http://127.0.0.1:$ORIGIN/status" | awk 'NR == 3 { print $1 }'; }

echo "sidecache: $BUILD_DESC; $FILLS fills at wrk -t1 -c$CONNECTIONS"
echo
echo "| fill_quiet | fills/s | p50 | p99 | origin connections accepted |"
echo "|---|---:|---:|---:|---:|"
first=1
for quiet in $QUIET; do
    free_port && PROXY=$FREE_PORT
    free_port && ADMIN=$FREE_PORT
    cat >"$TMP/sidecache-$quiet.toml" <<EOF
[listen]
proxy = "127.0.0.1:$PROXY"
admin = "127.0.0.1:$ADMIN"
[upstream]
url = "http://127.0.0.1:$ORIGIN"
fill_quiet = "$quiet"
[runtime]
worker_threads = 1
[log]
level = "warn"
[[route]]
name = "balance"
match = "GET /api/users/{user_type}/{user_id}/balance"
ttl = "1h"
scope = "identity"
EOF
    spawn "sidecache-$quiet" "$BIN" --config "$TMP/sidecache-$quiet.toml"
    wait_http "http://127.0.0.1:$ADMIN/healthz" 20
    before=$(accepts)
    misses() {
        curl -fsS "http://127.0.0.1:$ADMIN/metrics" |
            awk '/^sidecache_requests_total\{/ && /cache="miss"/ { n += $NF } END { print n + 0 }'
    }
    # fill.lua asks for its N users, then the first one again (hits); wrk is stopped once the
    # N fills are in, and its latency figures are those of the fills.
    t0=$(date +%s.%N)
    wrk -t1 -c"$CONNECTIONS" -d300s --latency -s scripts/wrk/fill.lua \
        "http://127.0.0.1:$PROXY" -- "$FILLS" "$first" live >"$TMP/wrk-$quiet.txt" 2>&1 &
    WRK_PID=$!
    while (($(misses) < FILLS)); do
        kill -0 "$WRK_PID" 2>/dev/null || die "wrk ended early: $(tail -3 "$TMP/wrk-$quiet.txt")"
        sleep 0.05
    done
    t1=$(date +%s.%N)
    kill -INT "$WRK_PID"
    wait "$WRK_PID" || true
    out=$(cat "$TMP/wrk-$quiet.txt")
    after=$(accepts)
    rps=$(awk -v n="$FILLS" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", n / (b - a) }')
    p50=$(awk '$1 == "50%" { print $2 }' <<<"$out")
    p99=$(awk '$1 == "99%" { print $2 }' <<<"$out")
    # The two stub_status requests count as accepts too.
    printf '| %s | %s | %s | %s | %s |\n' "$quiet" "$rps" "$p50" "$p99" "$((after - before - 1))"
    stop "sidecache-$quiet"
    first=$((first + FILLS + 1))
done
