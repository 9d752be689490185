//! `sidecache demo`: the proxy with its config (the embedded default unless `--config` says
//! otherwise), plus an example backend ([`backend`]) listening on the config's `[upstream] url`,
//! so that a new user sees misses, hits, 304s, invalidation, per-caller entries and rate limits
//! within a minute. [`script`] is what it tells them to try.
//!
//! Nothing here is on the proxy's data path: the backend is a separate listener the proxy
//! reaches over TCP, exactly as it would reach a real one.

pub mod backend;
pub mod script;

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};

use crate::app::{App, Running};
use crate::config::Config;

/// A running demo: the proxy and admin listeners, and the example backend.
#[derive(Debug)]
pub struct Demo {
    pub running: Running,
    pub backend: backend::Backend,
}

impl Demo {
    /// Starts the example backend on `config`'s upstream address (port 0 picks a free one and
    /// points the upstream at it), then sidecache in front of it.
    pub async fn start(mut config: Config) -> io::Result<Demo> {
        let wanted = upstream_addr(&config)?;
        let backend = backend::Backend::start(wanted).await.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "the example backend cannot listen on {wanted} (upstream.url; set \
                     SIDECACHE_UPSTREAM_URL to use another port): {e}"
                ),
            )
        })?;
        config.upstream.url = format!("http://{}", backend.addr())
            .parse()
            .expect("a socket address makes a valid URL");
        let running = App::build(config).start().await?;
        Ok(Demo { running, backend })
    }

    /// The lines to try, for this demo's addresses.
    pub fn script(&self) -> String {
        script::render(
            self.running.proxy_addr,
            self.running.admin_addr,
            self.backend.addr(),
        )
    }
}

/// The address `[upstream] url` names, which the example backend takes.
fn upstream_addr(config: &Config) -> io::Result<SocketAddr> {
    let url = &config.upstream.url;
    let host = url.host().unwrap_or("127.0.0.1");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = url.port_u16().unwrap_or(80);
    (host, port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::other(format!("upstream.url {url}: no address for {host}")))
}
