//! `[upstream]`.

use http::Uri;

use super::{check, duration};
use crate::config::{
    file, TlsFiles, UpstreamConfig, UpstreamProtocol, UpstreamTls, ENV_UPSTREAM_URL,
};

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
    let mut upstream = UpstreamConfig {
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
        protocol: UpstreamProtocol::Http1,
        tls: None,
    };
    let https = upstream.url.scheme_str() == Some("https");
    upstream.protocol = match f.protocol.as_deref() {
        None | Some("http/1.1") => UpstreamProtocol::Http1,
        Some("h2c") if https => {
            e.push(
                "upstream.protocol: `h2c` is HTTP/2 in the clear; use `h2` with https://".into(),
            );
            UpstreamProtocol::H2
        }
        Some("h2c") => UpstreamProtocol::H2c,
        Some("h2") if !https && !e.iter().any(|x| x.starts_with("upstream.url")) => {
            e.push("upstream.protocol: `h2` is HTTP/2 over TLS and needs an https:// URL; use `h2c` with http://".into());
            UpstreamProtocol::H2c
        }
        Some("h2") => UpstreamProtocol::H2,
        Some(other) => {
            e.push(format!(
                "upstream.protocol: `{other}` is not one of \"http/1.1\", \"h2c\", \"h2\""
            ));
            UpstreamProtocol::Http1
        }
    };
    let files = TlsFiles {
        ca_file: f.ca_file.map(Into::into),
        cert_file: f.cert_file.map(Into::into),
        key_file: f.key_file.map(Into::into),
    };
    if https {
        let host = upstream
            .url
            .host()
            .unwrap_or_default()
            .trim_matches(['[', ']'])
            .to_string();
        let server_name = f.tls_server_name.unwrap_or(host);
        if rustls_name_ok(&server_name).is_err() {
            e.push(format!(
                "upstream.tls_server_name: `{server_name}` is not a DNS name or IP address"
            ));
        }
        #[cfg(feature = "tls")]
        crate::tls::check_files("upstream", &files, e);
        upstream.tls = Some(UpstreamTls { files, server_name });
    } else {
        for (key, given) in [
            ("ca_file", files.ca_file.is_some()),
            ("cert_file", files.cert_file.is_some()),
            ("key_file", files.key_file.is_some()),
            ("tls_server_name", f.tls_server_name.is_some()),
        ] {
            if given {
                e.push(format!("upstream.{key}: only for an https:// url"));
            }
        }
    }
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
        #[cfg(feature = "tls")]
        Some("https") => {}
        #[cfg(not(feature = "tls"))]
        Some("https") => {
            return Err(format!(
                "`{text}`: https:// needs the `tls` feature, which this binary was built without"
            ))
        }
        Some(other) => {
            return Err(format!(
                "`{text}`: scheme `{other}` is not supported (use http:// or https://)"
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

/// Whether `name` can be sent as SNI (a DNS name) or checked as an IP address.
fn rustls_name_ok(name: &str) -> Result<(), ()> {
    #[cfg(feature = "tls")]
    return rustls::pki_types::ServerName::try_from(name)
        .map(|_| ())
        .map_err(|_| ());
    #[cfg(not(feature = "tls"))]
    return (!name.is_empty()).then_some(()).ok_or(());
}
