//! `[warmup]`.

use super::duration;
use crate::config::{file, WarmupConfig};

pub(super) fn validate(f: file::WarmupFile, e: &mut Vec<String>) -> WarmupConfig {
    let warmup = WarmupConfig {
        paths: f.paths.unwrap_or_default(),
        concurrency: f.concurrency.unwrap_or(4).max(1),
        gate_readiness: f.gate_readiness.unwrap_or(false),
        timeout: duration(e, "warmup.timeout", f.timeout, "30s"),
        every: duration(e, "warmup.every", f.every, "0s"),
        hot_keys: f.hot_keys.unwrap_or(100),
        hot_keys_every: duration(e, "warmup.hot_keys_every", f.hot_keys_every, "30s"),
        hot_keys_timeout: duration(e, "warmup.hot_keys_timeout", f.hot_keys_timeout, "2s"),
    };
    if warmup.hot_keys > 10_000 {
        e.push("warmup.hot_keys: at most 10000".into());
    }
    if warmup.hot_keys_every.is_zero() {
        e.push("warmup.hot_keys_every: must be greater than zero".into());
    }
    if !warmup.every.is_zero() && warmup.every < std::time::Duration::from_secs(1) {
        e.push("warmup.every: at least 1s (or \"0s\": only at start)".into());
    }
    for (i, p) in warmup.paths.iter().enumerate() {
        if !p.starts_with('/') || p.parse::<http::uri::PathAndQuery>().is_err() {
            e.push(format!(
                "warmup.paths[{i}]: `{p}` is not a path like \"/api/items/1\""
            ));
        }
    }
    warmup
}
