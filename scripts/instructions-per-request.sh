#!/usr/bin/env bash
# Userspace instructions per request, counted by `valgrind --tool=callgrind` (repeatable
# whatever else the machine does, unlike req/s): sidecache, and nginx doing the same job.
#
#   scripts/instructions-per-request.sh                    # pass-through: sidecache vs nginx proxy_pass (stock, and adding sidecache's forwarding fields)
#   PATH_UNDER_TEST=/api/groups/VIP/EURUSD scripts/instructions-per-request.sh   # L1 hits (sidecache only)
#   SIDECACHE_BIN=/tmp/old-sidecache scripts/instructions-per-request.sh        # another build
#
# For pass-through it then counts the origin's side: the origin's instructions per request
# behind each proxy (sidecache, nginx proxy_pass, and nginx adding the forwarding fields
# sidecache adds). In a load-limited run the origin's core is shared with wrk, so what a proxy's
# request costs the origin to parse shows in that proxy's req/s.
#
# The origin is an nginx `return 200` of a ~540-byte JSON body; each server runs under callgrind
# while `wrk -t1 -c16` drives it for DURATION seconds; the count includes start-up (about 1M
# instructions, noise beside the requests). Installs valgrind, nginx and wrk when missing.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
BENCH_TAG=ipr
# shellcheck source=scripts/bench-lib.sh
source "$ROOT/scripts/bench-lib.sh"

DURATION=${DURATION:-8}
PATH_UNDER_TEST=${PATH_UNDER_TEST:-/api/orders/1}
need_tools valgrind wrk nginx curl
build_sidecache
TMP=$(mktemp -d /tmp/sidecache-ipr.XXXXXX)
trap cleanup_processes EXIT

BODY="{\"id\":1001,\"symbol\":\"EURUSD\",\"side\":\"buy\",\"volume\":1.5,\"price\":1.08345,\"comment\":\"$(printf 'x%.0s' $(seq 440))\"}"
# nginx_conf DIR PORT LOCATION [HTTP-DIRECTIVE...]: one server, all paths inside DIR.
nginx_conf() {
    local dir=$1 port=$2 location=$3
    shift 3
    mkdir -p "$dir/logs"
    cat >"$dir/nginx.conf" <<EOF
$(nginx_head "$dir")
master_process ${MASTER:-on};
events { worker_connections 1024; }
http {
$(nginx_temp_paths "$dir")
    access_log off;
    keepalive_requests 100000000;
$(printf '    %s\n' "$@")
    server { listen 127.0.0.1:$port; location / { $location } }
}
EOF
}

free_port && ORIGIN=$FREE_PORT
nginx_conf "$TMP/origin" "$ORIGIN" "default_type application/json; return 200 '$BODY';"
spawn origin "$NGINX" -p "$TMP/origin" -c "$TMP/origin/nginx.conf"
wait_http "http://127.0.0.1:$ORIGIN/" 20

# count NAME URL: drives URL with wrk while server NAME runs under callgrind (writing
# $TMP/NAME.cg), then ends it with SIGINT so that callgrind writes its counts.
count() {
    local name=$1 url=$2 out requests total
    wait_http "$url" 60
    curl -fsS -o /dev/null "$url"
    out=$(wrk -t1 -c16 -d"${DURATION}s" "$url")
    requests=$(awk '/requests in/ { print $1 }' <<<"$out")
    kill -INT "${PID[$name]}"
    wait "${PID[$name]}" 2>/dev/null || true
    unset "PID[$name]"
    total=$(callgrind_annotate "$TMP/$name.cg" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')
    printf '| %s | %s | %s | %s |\n' "$name" "$requests" "$total" "$((total / requests))"
}

echo "| server | requests | instructions | per request |"
echo "|---|---:|---:|---:|"
free_port && PROXY=$FREE_PORT
free_port && ADMIN_PORT=$FREE_PORT
cat >"$TMP/sidecache.toml" <<EOF
[listen]
proxy = "127.0.0.1:$PROXY"
admin = "127.0.0.1:$ADMIN_PORT"
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
spawn sidecache valgrind --tool=callgrind --callgrind-out-file="$TMP/sidecache.cg" "$BIN" --config "$TMP/sidecache.toml"
count sidecache "http://127.0.0.1:$PROXY$PATH_UNDER_TEST"

if [[ $PATH_UNDER_TEST != /api/groups/* ]]; then
    free_port && NGINX_PORT=$FREE_PORT
    MASTER=off nginx_conf "$TMP/nginx" "$NGINX_PORT" \
        'proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection "";' \
        "upstream origin { server 127.0.0.1:$ORIGIN; keepalive 64; }"
    spawn nginx valgrind --tool=callgrind --callgrind-out-file="$TMP/nginx.cg" "$NGINX" -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf"
    count nginx "http://127.0.0.1:$NGINX_PORT$PATH_UNDER_TEST"
    # nginx doing sidecache's job: adding the same forwarding fields.
    free_port && NGINX_FWD_PORT=$FREE_PORT
    MASTER=off nginx_conf "$TMP/nginx-fwd" "$NGINX_FWD_PORT" \
        'proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; proxy_set_header Forwarded "for=$remote_addr;proto=$scheme;host=\"$http_host\""; proxy_set_header Via "1.1 nginx";' \
        "upstream origin { server 127.0.0.1:$ORIGIN; keepalive 64; }"
    spawn nginx-fwd valgrind --tool=callgrind --callgrind-out-file="$TMP/nginx-fwd.cg" "$NGINX" -p "$TMP/nginx-fwd" -c "$TMP/nginx-fwd/nginx.conf"
    count nginx-fwd "http://127.0.0.1:$NGINX_FWD_PORT$PATH_UNDER_TEST"

    echo
    echo "The origin's side: its instructions per request behind each proxy."
    echo
    echo "| origin behind | requests | instructions | per request |"
    echo "|---|---:|---:|---:|"
    spawn sidecache "$BIN" --config "$TMP/sidecache.toml"
    spawn nginx "$NGINX" -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf"
    spawn nginx-fwd "$NGINX" -p "$TMP/nginx-fwd" -c "$TMP/nginx-fwd/nginx.conf"
    stop_pid "${PID[origin]}"
    unset "PID[origin]"
    MASTER=off nginx_conf "$TMP/origin" "$ORIGIN" "default_type application/json; return 200 '$BODY';"
    for proxy in sidecache:$PROXY nginx:$NGINX_PORT nginx-fwd:$NGINX_FWD_PORT; do
        name="origin, behind ${proxy%%:*}"
        spawn "$name" valgrind --tool=callgrind --callgrind-out-file="$TMP/$name.cg" "$NGINX" -p "$TMP/origin" -c "$TMP/origin/nginx.conf"
        wait_http "http://127.0.0.1:$ORIGIN/" 60
        count "$name" "http://127.0.0.1:${proxy#*:}$PATH_UNDER_TEST"
    done
fi
