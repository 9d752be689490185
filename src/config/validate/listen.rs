//! `[listen]`.

use std::net::SocketAddr;

use super::{check, size};
use crate::config::{file, ListenConfig, ENV_LISTEN_ADMIN, ENV_LISTEN_PROXY};

pub(super) fn validate(
    f: file::ListenFile,
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
    };
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
