//! The bridge's remote side: the client made for one address of a bridge, from the
//! bridge's settings (TLS files read here, at every new client, on the blocking pool), and
//! the messages that name the bridge's settings rather than the client's.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use super::{BridgeProtocol, BridgeSettings, BridgeTlsVersion};
use crate::client::{
    Client, Options, Reconnect, Scheme, TlsOptions, TlsVersions, TransportOptions, V5Options,
    Verify,
};
use crate::codec::Protocol;

/// QoS 1/2 messages in flight towards the remote at most. Mosquitto takes at most
/// `max_inflight_messages` (default 20) unreleased QoS 2 messages from a client and
/// silently drops the next ones (an MQTT 3.1.1 PUBREC cannot refuse): a bridge that sends
/// the local session's whole window (`max_inflight`, default 32) at once, as after a
/// reconnect, would lose messages. What the local session sent beyond this waits in the
/// client, in order.
const REMOTE_INFLIGHT: usize = 20;

/// Reads what the bridge's client reads at every new client (the TLS files, the
/// directory of `bridge_capath`) and checks the client's options: a missing or malformed
/// file fails the broker's start with an error naming the bridge and the file, rather
/// than failing every connection attempt. Blocking file I/O.
pub fn check(settings: &BridgeSettings, max_packet_size: usize) -> Result<(), String> {
    new_client(settings, 0, max_packet_size)
        .map(drop)
        .map_err(|e| format!("bridge {:?}: {e}", settings.name))
}

/// A client for the remote at `settings.addresses[address]`. Blocking file I/O.
pub(super) fn new_client(
    settings: &BridgeSettings,
    address: usize,
    max_packet_size: usize,
) -> Result<Client, String> {
    let (host, port) = &settings.addresses[address];
    let (base, cap) = settings.restart_timeout;
    let opts = Options {
        host: host.clone(),
        port: *port,
        client_id: settings.remote_clientid.clone(),
        clean_session: settings.cleansession,
        keep_alive: settings.keepalive_interval,
        username: settings.remote_username.clone(),
        password: settings
            .remote_password
            .as_ref()
            .map(|p| Bytes::from(p.clone().into_bytes())),
        will: None,
        protocol: match (settings.protocol, settings.try_private) {
            (BridgeProtocol::V311, true) => Protocol::V311Bridge,
            (BridgeProtocol::V311, false) => Protocol::V311,
            // The codec has no 3.1 form of the bridge bit (level 0x83): `run` says so
            // in the log when try_private is on.
            (BridgeProtocol::V31, _) => Protocol::V31,
            // 5.0 has No Local for loop prevention (the `in` lines' subscriptions).
            (BridgeProtocol::V5, _) => Protocol::V5,
        },
        connect_timeout: Duration::from_secs(30),
        max_inflight: REMOTE_INFLIGHT,
        max_buffered: (4 << 20).max(2 * max_packet_size),
        max_incoming: 1024,
        max_packet_size,
        // The client reconnects to its address by itself, so that its session (packet
        // ids of unacknowledged messages) resumes there. With several addresses it tries
        // once more, then gives up and the bridge moves on to the next address.
        reconnect: Some(Reconnect {
            initial_delay: base,
            max_delay: cap,
            max_attempts: (settings.addresses.len() > 1).then_some(1),
        }),
        session_store: None,
        transport: transport(settings)?,
        v5: v5_options(settings),
    };
    Client::new(opts).map_err(|e| bridge_names(e.to_string()))
}

/// What a 5.0 bridge asks of the remote. `cleansession = false` is 3.1.1's persistent
/// session: in 5.0 a session that never expires (Session Expiry Interval 0xFFFFFFFF);
/// otherwise the session ends with the connection. No topic aliases either way: they are
/// per connection, and the bridge's topics are remapped per message anyway.
fn v5_options(settings: &BridgeSettings) -> V5Options {
    if settings.protocol != BridgeProtocol::V5 {
        return V5Options::default();
    }
    V5Options {
        session_expiry_interval: (!settings.cleansession).then_some(u32::MAX),
        ..V5Options::default()
    }
}

/// The client's advice on a failed TLS handshake names the client's arguments; a bridge
/// has its own settings.
pub(super) fn tls_hint(error: String) -> String {
    const HINTS: [(&str, &str); 3] = [
        (
            " (the server's certificate is not signed by a CA",
            " (the remote's certificate is not signed by a CA the bridge trusts: set \
             bridge_cafile or bridge_capath to the CA that issued it)",
        ),
        (
            " (the server's certificate does not hold the name",
            " (the remote's certificate does not hold the host name of the address: use a \
             name it holds, or bridge_insecure = true to skip the name check)",
        ),
        (
            " (the server refused the handshake",
            " (the remote refused the handshake; if it requires a client certificate, set \
             bridge_certfile and bridge_keyfile to one it trusts)",
        ),
    ];
    for (client, bridge) in HINTS {
        if let Some(at) = error.find(client) {
            return format!("{}{bridge}", &error[..at]);
        }
    }
    error
}

/// The client's errors name its settings (`cafile ...`); the bridge's have a prefix.
fn bridge_names(error: String) -> String {
    for setting in ["cafile ", "certfile ", "keyfile "] {
        if error.starts_with(setting) {
            return format!("bridge_{error}");
        }
    }
    error
}

fn transport(settings: &BridgeSettings) -> Result<TransportOptions, String> {
    let Some(tls) = &settings.tls else {
        return Ok(TransportOptions::default());
    };
    let ca_der = match &tls.capath {
        Some(dir) => read_capath(dir)?,
        None => Vec::new(),
    };
    Ok(TransportOptions {
        scheme: Scheme::Tls,
        tls: TlsOptions {
            ca_file: tls.cafile.clone(),
            ca_der,
            cert_file: tls.certfile.clone(),
            key_file: tls.keyfile.clone(),
            key_pem: None,
            // Mosquitto's bridge_insecure skips the name check only.
            verify: if tls.insecure {
                Verify::AnyName
            } else {
                Verify::Full
            },
            versions: match tls.version {
                Some(BridgeTlsVersion::V13) => TlsVersions::Tls13Only,
                // The oldest offered: 1.2 and 1.3 (rustls has nothing older).
                Some(BridgeTlsVersion::V12 | BridgeTlsVersion::V11) | None => TlsVersions::Any,
            },
            server_name: None,
        },
        ..TransportOptions::default()
    })
}

/// Every PEM certificate in the files of `dir` (OpenSSL's hashed names or any other;
/// files without a certificate, such as a README, are passed over).
fn read_capath(dir: &str) -> Result<Vec<Vec<u8>>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("bridge_capath {dir}: {e}"))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    let mut certs = Vec::new();
    for file in files {
        let shown = file.display();
        let data = std::fs::read(&file).map_err(|e| format!("bridge_capath {shown}: {e}"))?;
        for cert in CertificateDer::pem_slice_iter(&data) {
            let cert =
                cert.map_err(|e| format!("bridge_capath {shown}: not a PEM certificate: {e}"))?;
            certs.push(cert.as_ref().to_vec());
        }
    }
    if certs.is_empty() {
        return Err(format!(
            "bridge_capath {dir}: no PEM certificate in the directory"
        ));
    }
    Ok(certs)
}
