//! The PEM files both sides read for TLS: a listener's and a client's certificate chain,
//! CA file and private key. No sockets and no tokio: the broker's listeners
//! (`broker/transport/tls.rs`) and the client's connector (`client/transport.rs`) build
//! their rustls configurations from what these return, so a malformed file reads the same
//! error on either side.

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Every certificate of the PEM file at `path`; errors name `setting` (`certfile`,
/// `cafile`, ...) and the file, and an empty file is one.
pub(crate) fn load_certs(
    setting: &str,
    path: &str,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let data = std::fs::read(path).map_err(|e| format!("{setting} {path}: {e}"))?;
    let certs = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{setting} {path}: not a PEM certificate file: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{setting} {path}: no PEM certificate in it"));
    }
    Ok(certs)
}

/// The first private key (PKCS#1, PKCS#8 or SEC1) of the PEM file at `path`; errors name
/// `setting` (`keyfile`, ...) and the file.
pub(crate) fn load_key(setting: &str, path: &str) -> Result<PrivateKeyDer<'static>, String> {
    let data = std::fs::read(path).map_err(|e| format!("{setting} {path}: {e}"))?;
    PrivateKeyDer::from_pem_slice(&data).map_err(|e| match e {
        pem::Error::NoItemsFound => format!("{setting} {path}: no PEM private key in it"),
        e => format!("{setting} {path}: not a PEM private key file: {e}"),
    })
}
