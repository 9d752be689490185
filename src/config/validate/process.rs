//! `[runtime]`, `[shutdown]` and `[log]`: how the process runs, stops and reports.

use super::duration;
use crate::config::{
    file, LogConfig, LogFormat, RuntimeConfig, ShutdownConfig, ENV_LOG, ENV_LOG_FORMAT,
};

pub(super) fn runtime(f: file::RuntimeFile, e: &mut Vec<String>) -> RuntimeConfig {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = RuntimeConfig {
        worker_threads: f.worker_threads.unwrap_or(cores),
    };
    if runtime.worker_threads == 0 || runtime.worker_threads > 256 {
        e.push("runtime.worker_threads: must be between 1 and 256".into());
    }
    runtime
}

pub(super) fn shutdown(f: file::ShutdownFile, e: &mut Vec<String>) -> ShutdownConfig {
    ShutdownConfig {
        drain_delay: duration(e, "shutdown.drain_delay", f.drain_delay, "0s"),
        grace_period: duration(e, "shutdown.grace_period", f.grace_period, "25s"),
    }
}

pub(super) fn log(
    f: file::LogFile,
    env: &impl Fn(&str) -> Option<String>,
    e: &mut Vec<String>,
) -> LogConfig {
    let format = match env(ENV_LOG_FORMAT).or(f.format).as_deref() {
        None | Some("human") => LogFormat::Human,
        Some("json") => LogFormat::Json,
        Some(other) => {
            e.push(format!(
                "log.format: `{other}` is not \"human\" or \"json\""
            ));
            LogFormat::Human
        }
    };
    LogConfig {
        format,
        level: env(ENV_LOG).or(f.level).unwrap_or_else(|| "info".into()),
        access_log: f.access_log.unwrap_or(false),
    }
}
