//! `[listen]`.

use std::net::SocketAddr;

use super::{check, size};
use crate::config::{file, ListenConfig, ENV_LISTEN_ADMIN, ENV_LISTEN_PROXY};

/// Descriptors kept out of the default connection budget besides the upstream pool: admin
/// connections (probes, scrapes), Redis (pooled, pub/sub, Sentinel), and the process's own
/// (stdio, listeners, epoll, the config file).
const RESERVED_FDS: u64 = 96;
/// The default budget never goes below this, however low the descriptor limit.
const MIN_DEFAULT_CONNECTIONS: u64 = 16;
/// Assumed when `/proc/self/limits` cannot be read (not Linux): the usual soft limit.
const FALLBACK_FD_LIMIT: u64 = 1024;

pub(super) fn validate(
    f: file::ListenFile,
    pool_max_idle: usize,
    env: &impl Fn(&str) -> Option<String>,
    e: &mut Vec<String>,
) -> ListenConfig {
    let proxy = env(ENV_LISTEN_PROXY)
        .or(f.proxy)
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let admin = env(ENV_LISTEN_ADMIN)
        .or(f.admin)
        .unwrap_or_else(|| "127.0.0.1:9901".into());
    let listen = ListenConfig {
        proxy: socket_addr(e, "listen.proxy", &proxy),
        admin: socket_addr(e, "listen.admin", &admin),
        max_header_bytes: size(e, "listen.max_header_bytes", f.max_header_bytes, "64KiB") as usize,
        max_connections: f.max_connections.unwrap_or_else(|| {
            let soft = std::fs::read_to_string("/proc/self/limits")
                .ok()
                .and_then(|limits| open_files_soft_limit(&limits))
                .unwrap_or(FALLBACK_FD_LIMIT);
            default_max_connections(soft, pool_max_idle as u64)
        }),
    };
    if listen.max_connections == 0 {
        e.push("listen.max_connections: must be at least 1".into());
    }
    if listen.max_header_bytes < 8192 {
        e.push("listen.max_header_bytes: must be at least 8KiB".into());
    }
    if listen.proxy == listen.admin && listen.proxy.port() != 0 {
        e.push("listen.admin: must differ from listen.proxy".into());
    }
    listen
}

fn socket_addr(errors: &mut Vec<String>, key: &str, text: &str) -> SocketAddr {
    check(
        errors,
        key,
        text.parse()
            .map_err(|_| format!("`{text}` is not an address like \"127.0.0.1:8080\"")),
        SocketAddr::from(([127, 0, 0, 1], 0)),
    )
}

/// The soft `Max open files` of a `/proc/<pid>/limits` text; `None` for `unlimited` or when
/// the line is missing. Read from procfs because the crate forbids the `unsafe` a
/// `getrlimit` call needs.
fn open_files_soft_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Half the descriptors left after the reserve and the upstream's idle pool: a client
/// connection may hold an upstream connection while its request is forwarded.
fn default_max_connections(fd_soft_limit: u64, pool_max_idle: u64) -> usize {
    let left = fd_soft_limit.saturating_sub(RESERVED_FDS + pool_max_idle);
    (left / 2).max(MIN_DEFAULT_CONNECTIONS) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_budget_follows_the_descriptor_limit() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             127431               127431               processes \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(open_files_soft_limit(limits), Some(1024));
        assert_eq!(
            open_files_soft_limit(
                "Max open files            unlimited            unlimited            files"
            ),
            None
        );
        assert_eq!(open_files_soft_limit("Max processes 1 1 processes"), None);
        // 1024 - 96 - 256 = 672 descriptors left; half for clients, half for their upstreams.
        assert_eq!(default_max_connections(1024, 256), 336);
        assert_eq!(default_max_connections(1_048_576, 256), 524_112);
        assert_eq!(default_max_connections(256, 256), 16);
        // This process's own limit gives a budget too.
        let own = std::fs::read_to_string("/proc/self/limits").unwrap();
        assert!(open_files_soft_limit(&own).is_some(), "{own}");
    }
}
