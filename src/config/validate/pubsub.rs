//! `[pubsub]`.

use std::time::Duration;

use super::duration;
use crate::config::{file, PubsubConfig};

/// `prefix`: the L2 key prefix, which names the default channel.
pub(super) fn validate(
    f: file::PubsubFile,
    prefix: &str,
    env: &impl Fn(&str) -> Option<String>,
    e: &mut Vec<String>,
) -> PubsubConfig {
    let pubsub = PubsubConfig {
        redis: f
            .redis
            .map(|r| super::l2::validate_redis("pubsub", "pubsub.redis", r, env, e)),
        channel: f.channel.unwrap_or_else(|| format!("{prefix}:invalidate")),
        heartbeat: duration(e, "pubsub.heartbeat", f.heartbeat, "1s"),
        degraded_max_age: duration(e, "pubsub.degraded_max_age", f.degraded_max_age, "5s"),
    };
    if pubsub.heartbeat < Duration::from_millis(10) {
        e.push("pubsub.heartbeat: at least 10ms".into());
    }
    pubsub
}
