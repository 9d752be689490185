#!/usr/bin/env bash
# Issue 19's verify figure: POST /admin/verify over 10,000 cached entries (one tag), against a
# local origin, with the default bounded concurrency (8). Release build; prints one FIGURE line.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release --test verify figure_verify_10000_entries -- --ignored --nocapture 2>&1 |
    grep FIGURE
