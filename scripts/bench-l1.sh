#!/usr/bin/env bash
# L1 hit throughput: sidecache vs nginx proxy_cache (stock Debian settings and tuned), all
# answering a ~600-byte JSON group record from their cache with one worker pinned to CPU 0;
# wrk on CPU 1. This is case `hit` of scripts/bench.sh (which also has Varnish, the nginx
# `return 200` ceiling, many keys, L2, pass-through, latency, memory...), kept under its old
# name and defaults:
#
#   scripts/bench-l1.sh                    # DURATION=10 RUNS=3, about 2 minutes after the build
#   DURATION=5 RUNS=1 scripts/bench-l1.sh
#   HIT_SERVERS="sidecache nginx nginx-tuned varnish ceiling" scripts/bench-l1.sh
#   KEEP_TMP=1 / SIDECACHE_BIN=path / CONNECTIONS / PROXY_CPU / LOAD_CPU: as in scripts/bench.sh
#
# Writes bench-results/l1-latest.md (REPORT=path to change); raw outputs in
# bench-results/tmp/bench-<timestamp>/.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export DURATION=${DURATION:-10}
export RUNS=${RUNS:-3}
export CASES=hit
export HIT_SERVERS=${HIT_SERVERS:-sidecache nginx nginx-tuned}
export REPORT=${REPORT:-$ROOT/bench-results/l1-latest.md}
exec "$ROOT/scripts/bench.sh"
