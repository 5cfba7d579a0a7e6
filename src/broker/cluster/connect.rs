//! The engine connection's credentials and TLS: `cluster_user`/`cluster_password`,
//! `cluster_token`, `cluster_creds`, `cluster_cafile`, `cluster_certfile` and
//! `cluster_keyfile`, turned into async-nats connect options.
//!
//! Files are read here, at start, rather than left to async-nats (which reads them at
//! each connection attempt): a missing or malformed file then stops the start with a
//! message naming the setting and the file, instead of a node that retries forever.
//!
//! The credentials do not exclude each other: the client sends what is set and the
//! NATS server uses what its configuration asks for (one file holds either kind of
//! NKey credential, so two signatures never compete).

use std::sync::Arc;

use async_nats::ConnectOptions;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::PrivateKeyDer;
use rustls::{ClientConfig, RootCertStore};

use super::{ClusterError, Settings};
use crate::tls::load_certs;

fn file_error(setting: &str, reason: String) -> ClusterError {
    ClusterError::Settings(format!("{setting}: {reason}"))
}

/// The options of the connection to NATS: authentication and TLS from the settings,
/// the files read and checked now.
pub(super) async fn options(config: &Settings) -> Result<ConnectOptions, ClusterError> {
    let mut options = ConnectOptions::new();
    if let (Some(user), Some(password)) = (&config.cluster_user, &config.cluster_password) {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &config.cluster_token {
        options = options.token(token.clone());
    }
    if let Some(path) = &config.cluster_creds {
        let text = read_text("cluster_creds", path).await?;
        options = if text.contains("BEGIN NATS USER JWT") {
            // Parses the JWT and the seed now.
            options.credentials(&text).map_err(|e| {
                file_error(
                    "cluster_creds",
                    format!("{path}: not a NATS credentials file: {e}"),
                )
            })?
        } else {
            let seed = seed_of(&text).ok_or_else(|| {
                file_error(
                    "cluster_creds",
                    format!(
                        "{path}: neither a NATS credentials file (user JWT and seed) nor \
                         an NKey user seed (a line starting with SU)"
                    ),
                )
            })?;
            // async-nats decodes a seed only when the server asks for a signature, and
            // then fails without naming the file: decode it once now.
            nkeys::KeyPair::from_seed(&seed).map_err(|e| {
                file_error(
                    "cluster_creds",
                    format!("{path}: not a valid NKey seed: {e}"),
                )
            })?;
            options.nkey(seed)
        };
    }
    if config.cluster_cafile.is_some() || config.cluster_certfile.is_some() {
        // The files are small; read off the runtime's workers all the same.
        let (cafile, certfile, keyfile) = (
            config.cluster_cafile.clone(),
            config.cluster_certfile.clone(),
            config.cluster_keyfile.clone(),
        );
        let tls = tokio::task::spawn_blocking(move || {
            tls_config(cafile.as_deref(), certfile.as_deref(), keyfile.as_deref())
        })
        .await
        .map_err(|e| ClusterError::Settings(format!("reading the TLS files: {e}")))??;
        options = options.tls_client_config(tls).require_tls(true);
    }
    Ok(options)
}

async fn read_text(setting: &str, path: &str) -> Result<String, ClusterError> {
    tokio::fs::read_to_string(path)
        .await
        .map_err(|e| file_error(setting, format!("{path}: {e}")))
}

/// The first line of an NKey seed file that is a user seed (`nsc` writes comments and
/// the public key around it).
fn seed_of(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .find(|line| line.starts_with("SU"))
        .map(str::to_string)
}

/// The rustls configuration: `cafile` (else the system's roots) to check the server,
/// `certfile` and `keyfile` to be checked by it.
fn tls_config(
    cafile: Option<&str>,
    certfile: Option<&str>,
    keyfile: Option<&str>,
) -> Result<ClientConfig, ClusterError> {
    // ring, as everywhere else in the crate (no C toolchain beyond a compiler).
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    match cafile {
        Some(path) => {
            for cert in load_certs("cluster_cafile", path).map_err(ClusterError::Settings)? {
                roots.add(cert).map_err(|e| {
                    file_error(
                        "cluster_cafile",
                        format!("{path}: unusable CA certificate: {e}"),
                    )
                })?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
        }
    }
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| ClusterError::Settings(format!("cluster TLS: {e}")))?;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClusterError::Settings(format!("cluster TLS: {e}")))?
        .with_webpki_verifier(verifier);
    match (certfile, keyfile) {
        (Some(cert), Some(key)) => {
            let certs = load_certs("cluster_certfile", cert).map_err(ClusterError::Settings)?;
            let data = std::fs::read(key)
                .map_err(|e| file_error("cluster_keyfile", format!("{key}: {e}")))?;
            let private = PrivateKeyDer::from_pem_slice(&data).map_err(|e| {
                file_error(
                    "cluster_keyfile",
                    match e {
                        pem::Error::NoItemsFound => format!("{key}: no PEM private key in it"),
                        e => format!("{key}: not a PEM private key file: {e}"),
                    },
                )
            })?;
            builder.with_client_auth_cert(certs, private).map_err(|e| {
                ClusterError::Settings(format!(
                    "cluster_certfile {cert} with cluster_keyfile {key}: {e}"
                ))
            })
        }
        // `check_connection` refused one without the other.
        _ => Ok(builder.with_no_client_auth()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nkey_seed_lines() {
        let file = "# user seed\nSUAAVHBCHWUJ7HOCQ7IA7HW4AKH4ZCGSD5Z3TZXCTH7OT35DBWDNYYQ6T4\n";
        assert_eq!(
            seed_of(file).as_deref(),
            Some("SUAAVHBCHWUJ7HOCQ7IA7HW4AKH4ZCGSD5Z3TZXCTH7OT35DBWDNYYQ6T4")
        );
        assert_eq!(
            seed_of("UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4\n"),
            None
        );
    }
}
