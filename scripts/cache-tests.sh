#!/usr/bin/env bash
# RFC 9111 conformance: runs the public HTTP caching test suite (github.com/http-tests/cache-tests,
# the suite behind cache-tests.fyi) against sidecache on a config, and counts its results the way
# cache-tests.fyi does (a test whose dependency failed counts as "dependency_fail", not "pass").
#
#   CACHE_TESTS_DIR=/path/to/cache-tests scripts/cache-tests.sh              # config/rfc9111.toml
#   CACHE_TESTS_DIR=... scripts/cache-tests.sh my.toml                       # another config
#   CACHE_TESTS_DIR=... TEST_ID=freshness-none scripts/cache-tests.sh        # one test, verbose
#   SIDECACHE_BIN=target/debug/sidecache ...                                 # skip the release build
#
# CACHE_TESTS_DIR is a git checkout of the suite (the npm package `http-cache-tests` lags behind
# it); the script runs `npm install` there when node_modules is missing. The suite's origin runs
# on a free port; sidecache's `[upstream] url` and `[listen]` come from the environment
# overrides, so any config works unchanged. Prints the counts per test kind, the required tests
# that did not pass, and the same counts for the suite's stored results of other caches.
# Not part of CI: the suite is not in a package registry at the version the counts refer to.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
BENCH_TAG=cache-tests
# shellcheck source=scripts/bench-lib.sh
source "$ROOT/scripts/bench-lib.sh"

CONFIG=${1:-config/rfc9111.toml}
SUITE=${CACHE_TESTS_DIR:?set CACHE_TESTS_DIR to a checkout of github.com/http-tests/cache-tests}
[[ -f $SUITE/test-engine/cli.mjs ]] || die "$SUITE is not a cache-tests checkout (no test-engine/cli.mjs)"
command -v node >/dev/null || die "node is missing (apt-get install nodejs npm)"
need_tools curl
[[ -d $SUITE/node_modules ]] || (cd "$SUITE" && npm install --no-audit --no-fund >/dev/null) ||
    die "npm install in $SUITE failed"
build_sidecache
TMP=$(mktemp -d /tmp/sidecache-cache-tests.XXXXXX)
trap cleanup_processes EXIT

free_port
ORIGIN=$FREE_PORT
free_port
PROXY=$FREE_PORT
free_port
ADMIN=$FREE_PORT
spawn origin env -C "$SUITE" npm run --silent server --port="$ORIGIN"
wait_http "http://127.0.0.1:$ORIGIN/" 20 any
SIDECACHE_UPSTREAM_URL="http://127.0.0.1:$ORIGIN" SIDECACHE_LISTEN_PROXY="127.0.0.1:$PROXY" \
    SIDECACHE_LISTEN_ADMIN="127.0.0.1:$ADMIN" spawn sidecache "$BIN" --config "$CONFIG"
wait_http "http://127.0.0.1:$ADMIN/healthz" 20

if [[ -n ${TEST_ID:-} ]]; then
    (cd "$SUITE" && npm run --silent cli --base="http://127.0.0.1:$PROXY" --id="$TEST_ID")
    exit 0
fi
OUT=${OUT:-$ROOT/target/cache-tests.json}
log "running the suite against $CONFIG ($BUILD_DESC)"
(cd "$SUITE" && npm run --silent cli --base="http://127.0.0.1:$PROXY") >"$OUT"
log "results: $OUT"

cat >"$SUITE/.sidecache-summary.mjs" <<'JS'
// Counts one results file per test kind, cache-tests.fyi's way (dependencies honoured).
import fs from 'fs'
import { determineTestResult, resultTypes } from './test-engine/lib/results.mjs'
import tests from './tests/index.mjs'

const [file, verbose] = process.argv.slice(2)
const results = JSON.parse(fs.readFileSync(file, 'utf8'))
const kinds = {}
const notPassed = []
for (const suite of tests) {
  for (const test of suite.tests) {
    if (test.browser_only) continue
    const kind = test.kind || 'required'
    const r = determineTestResult(tests, test.id, results)
    const name = Object.keys(resultTypes).find(k => resultTypes[k] === r)
    kinds[kind] = kinds[kind] || {}
    kinds[kind][name] = (kinds[kind][name] || 0) + 1
    if (kind === 'required' && name !== 'pass') notPassed.push(`  ${name.padEnd(16)} ${test.id}`)
  }
}
const req = kinds.required
const total = Object.values(req).reduce((a, b) => a + b, 0)
console.log(`required ${req.pass || 0}/${total} pass, ${req.fail || 0} fail, ` +
  `${req.dependency_fail || 0} dependency_fail, ${req.setup_fail || 0} setup_fail` +
  ` | optimal ${kinds.optimal.pass || 0} pass | check ${kinds.check.yes || 0} yes`)
if (verbose) console.log(notPassed.join('\n'))
JS
echo "sidecache ($CONFIG):"
(cd "$SUITE" && node .sidecache-summary.mjs "$OUT" verbose)
echo
echo "stored results of other caches, counted the same way:"
for other in trafficserver squid varnish nginx; do
    printf '%-14s ' "$other"
    (cd "$SUITE" && node .sidecache-summary.mjs "results/$other.json")
done
