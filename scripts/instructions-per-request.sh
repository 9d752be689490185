#!/usr/bin/env bash
# Userspace instructions per request, counted by `valgrind --tool=callgrind` (repeatable
# whatever else the machine does, unlike req/s): sidecache, and nginx doing the same job.
#
#   scripts/instructions-per-request.sh                    # pass-through: sidecache vs nginx proxy_pass
#   PATH_UNDER_TEST=/api/groups/VIP/EURUSD scripts/instructions-per-request.sh   # L1 hits (sidecache only)
#   SIDECACHE_BIN=/tmp/old-sidecache scripts/instructions-per-request.sh        # another build
#
# The origin is an nginx `return 200` of a 538-byte JSON body; each server runs under callgrind
# while `wrk -t1 -c16` drives it for DURATION seconds; the count includes start-up (about 1M
# instructions, noise beside the requests). Needs valgrind, nginx and wrk (apt-get).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DURATION=${DURATION:-8}
PATH_UNDER_TEST=${PATH_UNDER_TEST:-/api/orders/1}
BIN=${SIDECACHE_BIN:-$ROOT/target/release/sidecache}
for tool in valgrind nginx wrk curl callgrind_annotate; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install valgrind nginx-light wrk curl)" >&2; exit 1; }
done
[[ -x $BIN ]] || (cd "$ROOT" && cargo build --release --quiet)

TMP=$(mktemp -d /tmp/sidecache-ipr.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_up() {
    local deadline=$((SECONDS + 60))
    until curl -s -o /dev/null "$1"; do
        ((SECONDS < deadline)) || { echo "$1 did not answer" >&2; exit 1; }
        sleep 0.2
    done
}
BODY="{\"id\":1001,\"symbol\":\"EURUSD\",\"side\":\"buy\",\"volume\":1.5,\"price\":1.08345,\"comment\":\"$(printf 'x%.0s' $(seq 440))\"}"
nginx_conf() { # $1 dir, $2 port, $3 location body, $4 extra http directives
    mkdir -p "$1/logs"
    cat >"$1/nginx.conf" <<EOF
worker_processes 1;
daemon off;
master_process ${MASTER:-on};
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $1/cb; proxy_temp_path $1/pt; fastcgi_temp_path $1/ft;
    uwsgi_temp_path $1/ut; scgi_temp_path $1/st;
    keepalive_requests 100000000;
    $4
    server { listen 127.0.0.1:$2; location / { $3 } }
}
EOF
}

ORIGIN=$(free_port)
nginx_conf "$TMP/origin" "$ORIGIN" "default_type application/json; return 200 '$BODY';" ""
nginx -p "$TMP/origin" -c "$TMP/origin/nginx.conf" &
PIDS+=($!)
wait_up "http://127.0.0.1:$ORIGIN/"

# count NAME FILE URL: drives URL with wrk under the callgrind run (writing FILE) that is
# already starting.
count() {
    local name=$1 file=$2 url=$3 out requests total
    wait_up "$url"
    curl -s -o /dev/null "$url"
    out=$(wrk -t1 -c16 -d"${DURATION}s" "$url")
    requests=$(awk '/requests in/ { print $1 }' <<<"$out")
    kill -INT "${PIDS[-1]}"
    wait "${PIDS[-1]}" 2>/dev/null || true
    total=$(callgrind_annotate "$file" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')
    printf '| %s | %s | %s | %s |\n' "$name" "$requests" "$total" "$((total / requests))"
}

echo "| server | requests | instructions | per request |"
echo "|---|---:|---:|---:|"
PROXY=$(free_port)
cat >"$TMP/sidecache.toml" <<EOF
[listen]
proxy = "127.0.0.1:$PROXY"
admin = "127.0.0.1:$(free_port)"
[upstream]
url = "http://127.0.0.1:$ORIGIN"
[runtime]
worker_threads = 1
[log]
level = "warn"
access_log = false
[[route]]
name = "group"
match = "GET /api/groups/{group}/{symbol}"
ttl = "1h"
tags = ["group:{group}"]
EOF
valgrind --tool=callgrind --callgrind-out-file="$TMP/sidecache.cg" "$BIN" --config "$TMP/sidecache.toml" >"$TMP/sidecache.log" 2>&1 &
PIDS+=($!)
count sidecache "$TMP/sidecache.cg" "http://127.0.0.1:$PROXY$PATH_UNDER_TEST"

if [[ $PATH_UNDER_TEST != /api/groups/* ]]; then
    NGINX_PORT=$(free_port)
    MASTER=off nginx_conf "$TMP/nginx" "$NGINX_PORT" \
        'proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection "";' \
        "upstream origin { server 127.0.0.1:$ORIGIN; keepalive 64; }"
    valgrind --tool=callgrind --callgrind-out-file="$TMP/nginx.cg" nginx -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" >"$TMP/nginx.log" 2>&1 &
    PIDS+=($!)
    count "nginx proxy_pass" "$TMP/nginx.cg" "http://127.0.0.1:$NGINX_PORT$PATH_UNDER_TEST"
fi
