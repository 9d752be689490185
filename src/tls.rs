//! TLS client settings, shared by HTTPS upstreams and `rediss://`: one crypto provider (ring)
//! and one way of building a root store, so that two providers never meet in one process
//! (rustls panics on `ClientConfig::builder()` when it cannot tell which one to use).
//!
//! Roots: the system's (rustls-native-certs, which redis's rustls support needs anyway) plus
//! a configured `ca_file`. Files are read and parsed by `check` and at start; a file that does
//! not parse stops the process with the other config errors, never a request.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use crate::config::TlsFiles;

/// Makes ring the process's default provider, for the redis crate's own `ClientConfig`s.
/// Idempotent.
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The certificates of a PEM file; an error names the file and says what is wrong.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("`{}`: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("`{}`: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "`{}`: no PEM certificate in the file",
            path.display()
        ));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("`{}`: {e}", path.display()))
}

/// Every problem with `files`, each as `key: message` under the config section `section`.
pub fn check_files(section: &str, files: &TlsFiles, e: &mut Vec<String>) {
    if let Some(ca) = &files.ca_file {
        if let Err(err) = load_certs(ca) {
            e.push(format!("{section}.ca_file: {err}"));
        }
    }
    match (&files.cert_file, &files.key_file) {
        (Some(cert), Some(key)) => {
            let certs =
                load_certs(cert).map_err(|err| e.push(format!("{section}.cert_file: {err}")));
            let key = load_key(key).map_err(|err| e.push(format!("{section}.key_file: {err}")));
            if let (Ok(certs), Ok(key)) = (certs, key) {
                if let Err(err) = client_builder(&RootCertStore::empty()).and_then(|b| {
                    b.with_client_auth_cert(certs, key)
                        .map_err(|e| e.to_string())
                }) {
                    e.push(format!(
                        "{section}.key_file: does not go with cert_file: {err}"
                    ));
                }
            }
        }
        (Some(_), None) => e.push(format!("{section}.key_file: required with cert_file")),
        (None, Some(_)) => e.push(format!("{section}.cert_file: required with key_file")),
        (None, None) => {}
    }
}

/// The system roots plus `ca_file`'s certificates.
pub fn root_store(ca_file: Option<&Path>) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    if !native.errors.is_empty() {
        tracing::debug!(errors = ?native.errors, "Some system root certificates could not be read.");
    }
    // A system root that does not parse is skipped: the others still verify.
    let _ = roots.add_parsable_certificates(native.certs);
    if let Some(ca) = ca_file {
        for cert in load_certs(ca)? {
            roots
                .add(cert)
                .map_err(|e| format!("`{}`: {e}", ca.display()))?;
        }
    }
    Ok(roots)
}

fn client_builder(
    roots: &RootCertStore,
) -> Result<rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>, String> {
    Ok(
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots.clone()),
    )
}

/// A client configuration: the roots of [`root_store`], the client certificate if any, and
/// `alpn` offered in the handshake.
pub fn client_config(files: &TlsFiles, alpn: &[&[u8]]) -> Result<Arc<ClientConfig>, String> {
    let roots = root_store(files.ca_file.as_deref())?;
    let builder = client_builder(&roots)?;
    let mut config = match (&files.cert_file, &files.key_file) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(|e| format!("client certificate: {e}"))?,
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}
