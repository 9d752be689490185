#!/usr/bin/env bash
# Issue 19's warm-start figure: a new pod's L1 hit ratio over its first 6,000 requests on a
# Zipf(1) workload over 10,000 keys with a warm L2, loading hot keys at start vs a cold L1.
# Release build; prints FIGURE lines.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release --test warm figure_warm_start_zipf -- --ignored --nocapture 2>&1 |
    grep FIGURE
