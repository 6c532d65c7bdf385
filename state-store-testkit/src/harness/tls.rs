//! Certificates for TLS tests, made by the test: a private CA, a server certificate for
//! `127.0.0.1` and `localhost`, and a client certificate, as PEM files in a temporary
//! directory.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tempfile::TempDir;

/// A CA and the certificates it signed, as files. Removed when dropped.
#[derive(Debug)]
pub struct Certificates {
    dir: TempDir,
}

impl Certificates {
    /// Makes a fresh CA and its server and client certificates.
    ///
    /// # Panics
    ///
    /// When a certificate cannot be made or written (a broken test machine).
    pub fn generate() -> Self {
        match Self::try_generate() {
            Ok(certificates) => certificates,
            Err(err) => panic!("cannot make test certificates: {err}"),
        }
    }

    fn try_generate() -> Result<Self, Box<dyn std::error::Error>> {
        let dir = super::temp_dir("tls");
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "state-store test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;
        std::fs::write(dir.path().join("ca.pem"), ca.pem())?;
        for (name, names, usage) in [
            (
                "server",
                vec!["127.0.0.1".to_owned(), "localhost".to_owned()],
                ExtendedKeyUsagePurpose::ServerAuth,
            ),
            (
                "client",
                vec!["client".to_owned()],
                ExtendedKeyUsagePurpose::ClientAuth,
            ),
        ] {
            let mut params = CertificateParams::new(names)?;
            params.distinguished_name.push(DnType::CommonName, name);
            params.extended_key_usages = vec![usage];
            let key = KeyPair::generate()?;
            let cert = params.signed_by(&key, &ca)?;
            std::fs::write(dir.path().join(format!("{name}.pem")), cert.pem())?;
            std::fs::write(
                dir.path().join(format!("{name}-key.pem")),
                key.serialize_pem(),
            )?;
        }
        Ok(Certificates { dir })
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The CA's certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The server's certificate and key (for `127.0.0.1` and `localhost`).
    pub fn server(&self) -> (PathBuf, PathBuf) {
        (
            self.dir.path().join("server.pem"),
            self.dir.path().join("server-key.pem"),
        )
    }

    /// The client's certificate and key.
    pub fn client(&self) -> (PathBuf, PathBuf) {
        (
            self.dir.path().join("client.pem"),
            self.dir.path().join("client-key.pem"),
        )
    }
}

/// Writes and reads one value through `store`, then destroys it: the connection works.
///
/// # Panics
///
/// When a call fails or reads something else.
pub async fn round_trip(store: state_store_core::StateStore) {
    let value = serde_json::json!("sealed");
    let failed = |what: &str, err: state_store_core::Error| -> ! {
        panic!("{what} over TLS: {}", state_store_core::report(&err))
    };
    if let Err(err) = store.set_state("tls", &value).await {
        failed("set", err);
    }
    match store.get_state(&["tls"]).await {
        Ok(state) => assert_eq!(state["tls"], Some(value)),
        Err(err) => failed("get", err),
    }
    if let Err(err) = store.destroy().await {
        failed("destroy", err);
    }
}

/// The error of a connection that had to be refused.
///
/// # Panics
///
/// When it connected: `what` says which connection.
pub fn refused<T>(connected: state_store_core::Result<T>, what: &str) -> state_store_core::Error {
    match connected {
        Ok(_) => panic!("{what}: connected"),
        Err(err) => err,
    }
}
