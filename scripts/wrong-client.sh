#!/usr/bin/env bash
# Wrong-client answers behind a hostile origin, sidecache vs nginx in the same run (issue 15).
#
#   scripts/wrong-client.sh                       # 16 clients x 300 GETs, 1 answer in 7 duplicated 5 ms late
#   CLIENTS=32 REQUESTS=2000 scripts/wrong-client.sh
#   NAGLE=1 scripts/wrong-client.sh               # the origin leaves Nagle's algorithm on
#
# The origin (examples/wrong_client.rs, the adversarial suite's raw-socket origin) echoes each
# request's id; the load client checks every answer against its own request. Over HTTP/1.1 a
# late duplicate that lands after a reused connection's next request was written cannot be
# told from the real answer by any proxy: the figure is how many answers went to the wrong
# client (sidecache must be <= nginx). The smuggling case (a POST answered 401 before its
# body, whose bytes form a GET, then a GET from another client) must deliver 0.
# nginx runs as a keepalive proxy_pass, as a trusted proxy is usually set up.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
BENCH_TAG=wrong-client
# shellcheck source=scripts/bench-lib.sh
source "$ROOT/scripts/bench-lib.sh"

CLIENTS=${CLIENTS:-16}
REQUESTS=${REQUESTS:-300}
ROUNDS=${ROUNDS:-30}
need_tools nginx curl
build_sidecache
log "cargo build --release --example wrong_client"
cargo build --release --quiet --example wrong_client || die "example build failed"
TOOL="$ROOT/target/release/examples/wrong_client"
TMP=$(mktemp -d /tmp/sidecache-wrong.XXXXXX)
trap cleanup_processes EXIT

# run MODE: one origin in MODE, sidecache and nginx in front of it, the load through each.
run() {
    local mode=$1 origin proxy admin ngx
    free_port && origin=$FREE_PORT
    spawn "origin-$mode" "$TOOL" origin "$origin" "$mode" ${NAGLE:+nagle}
    free_port && proxy=$FREE_PORT
    free_port && admin=$FREE_PORT
    cat >"$TMP/sidecache-$mode.toml" <<EOF
[listen]
proxy = "127.0.0.1:$proxy"
admin = "127.0.0.1:$admin"
[upstream]
url = "http://127.0.0.1:$origin"
[log]
level = "error"
EOF
    spawn "sidecache-$mode" "$BIN" --config "$TMP/sidecache-$mode.toml"
    free_port && ngx=$FREE_PORT
    mkdir -p "$TMP/nginx-$mode/logs"
    cat >"$TMP/nginx-$mode/nginx.conf" <<EOF
$(nginx_head "$TMP/nginx-$mode")
events { worker_connections 1024; }
http {
$(nginx_temp_paths "$TMP/nginx-$mode")
    access_log off;
    upstream origin { server 127.0.0.1:$origin; keepalive 64; }
    server {
        listen 127.0.0.1:$ngx;
        location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; }
    }
}
EOF
    spawn "nginx-$mode" "$NGINX" -p "$TMP/nginx-$mode" -c "$TMP/nginx-$mode/nginx.conf"
    wait_http "http://127.0.0.1:$admin/healthz" 20
    wait_http "http://127.0.0.1:$ngx/pass/ready" 20 any
    for server in sidecache:$proxy nginx:$ngx; do
        if [[ $mode == early ]]; then
            printf '| smuggling (%s rounds) | %s | %s |\n' "$ROUNDS" "${server%%:*}" \
                "$("$TOOL" smuggle "127.0.0.1:${server#*:}" "$ROUNDS")"
        else
            printf '| late duplicates (%s x %s) | %s | %s |\n' "$CLIENTS" "$REQUESTS" "${server%%:*}" \
                "$("$TOOL" load "127.0.0.1:${server#*:}" "$CLIENTS" "$REQUESTS")"
        fi
    done
}

echo "sidecache: $BUILD_DESC; origin Nagle: $([[ -n ${NAGLE:-} ]] && echo on || echo off)"
echo
echo "| case | proxy | result |"
echo "|---|---|---|"
run late-dup
run early
