//! A verifying rustls connector from certificate files: the system's roots plus a private
//! CA, and a client certificate for servers that verify clients. (The Redis adapter builds
//! the same for fred; each crate keeps its own so neither depends on the other's client.)

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use state_store_core::{Error, Result};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::TlsFiles;

/// The connector for `files`.
///
/// # Errors
///
/// [`Error::Config`] for a file that cannot be read or holds no usable certificate or key
/// (the path is named, never the contents).
pub(crate) fn connector(files: &TlsFiles) -> Result<MakeRustlsConnect> {
    let mut roots = RootCertStore::empty();
    // The system's roots, where it has any; a private CA alone also does.
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = &files.root_certificates {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(Iterator::collect::<std::result::Result<Vec<_>, _>>)
            .map_err(|e| unreadable("CA certificates", path, e))?;
        if certs.is_empty() {
            return Err(Error::config(format!(
                "no certificate in the CA file {}",
                path.display()
            )));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| Error::config_with("an unusable CA certificate", e))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::config_with("TLS setup", e))?
        .with_root_certificates(roots);
    let config = match &files.client_certificate {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(Iterator::collect::<std::result::Result<Vec<_>, _>>)
                .map_err(|e| unreadable("client certificate", cert, e))?;
            let key =
                PrivateKeyDer::from_pem_file(key).map_err(|e| unreadable("client key", key, e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| Error::config_with("an unusable client certificate or key", e))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(MakeRustlsConnect::new(config))
}

fn unreadable(what: &str, path: &std::path::Path, err: rustls::pki_types::pem::Error) -> Error {
    Error::config_with(format!("cannot read the {what} in {}", path.display()), err)
}
