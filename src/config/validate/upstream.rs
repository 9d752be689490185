//! `[upstream]`.

use http::Uri;

use super::{check, duration};
use crate::config::{file, UpstreamConfig, ENV_UPSTREAM_URL};

pub(super) fn validate(
    f: file::UpstreamFile,
    env: &impl Fn(&str) -> Option<String>,
    e: &mut Vec<String>,
) -> UpstreamConfig {
    let url = match env(ENV_UPSTREAM_URL).or(f.url) {
        Some(text) => check(e, "upstream.url", upstream_url(&text), Uri::default()),
        None => {
            e.push(format!(
                "upstream.url: required (or set {ENV_UPSTREAM_URL}), e.g. \"http://backend:80\""
            ));
            Uri::default()
        }
    };
    let upstream = UpstreamConfig {
        url,
        connect_timeout: duration(e, "upstream.connect_timeout", f.connect_timeout, "500ms"),
        timeout: duration(e, "upstream.timeout", f.timeout, "5s"),
        client_body_timeout: duration(
            e,
            "upstream.client_body_timeout",
            f.client_body_timeout,
            "30s",
        ),
        fill_quiet: duration(e, "upstream.fill_quiet", f.fill_quiet, "50ms"),
        pool_idle_timeout: duration(e, "upstream.pool_idle_timeout", f.pool_idle_timeout, "90s"),
        pool_max_idle: f.pool_max_idle.unwrap_or(256),
        preserve_host: f.preserve_host.unwrap_or(false),
    };
    for (key, d) in [
        ("upstream.connect_timeout", upstream.connect_timeout),
        ("upstream.timeout", upstream.timeout),
        ("upstream.client_body_timeout", upstream.client_body_timeout),
    ] {
        if d.is_zero() && !e.iter().any(|x| x.starts_with(key)) {
            e.push(format!("{key}: must be greater than zero"));
        }
    }
    upstream
}

fn upstream_url(text: &str) -> Result<Uri, String> {
    let uri: Uri = text
        .parse()
        .map_err(|e| format!("`{text}` is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(other) => {
            return Err(format!(
                "`{text}`: scheme `{other}` is not supported (use http://; TLS to the backend belongs to the mesh)"
            ))
        }
        None => return Err(format!("`{text}`: write it as http://host:port")),
    }
    if uri.authority().is_none() {
        return Err(format!("`{text}`: no host"));
    }
    if uri.path() != "/" && !uri.path().is_empty() {
        return Err(format!(
            "`{text}`: a path prefix is not supported; requests keep their own path"
        ));
    }
    Ok(uri)
}
