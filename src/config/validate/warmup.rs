//! `[warmup]`.

use super::duration;
use crate::config::{file, WarmupConfig};

pub(super) fn validate(f: file::WarmupFile, e: &mut Vec<String>) -> WarmupConfig {
    let warmup = WarmupConfig {
        paths: f.paths.unwrap_or_default(),
        concurrency: f.concurrency.unwrap_or(4).max(1),
        gate_readiness: f.gate_readiness.unwrap_or(false),
        timeout: duration(e, "warmup.timeout", f.timeout, "30s"),
    };
    for (i, p) in warmup.paths.iter().enumerate() {
        if !p.starts_with('/') || p.parse::<http::uri::PathAndQuery>().is_err() {
            e.push(format!(
                "warmup.paths[{i}]: `{p}` is not a path like \"/api/items/1\""
            ));
        }
    }
    warmup
}
