//! The subject of a client certificate, read from its DER: enough of X.509 to name the
//! holder (RFC 4514 string, first Common Name) without a parser dependency. rustls has
//! verified the certificate before this runs; anything unexpected yields `None`, never a
//! panic.

use bytestring::ByteString;

use super::PeerCertificate;

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
/// `[0] EXPLICIT Version` in `TBSCertificate`.
const VERSION: u8 = 0xa0;

/// Splits the DER element at the start of `data`: (tag, contents, rest).
fn element(data: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = data.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let len = rest[..count]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[count..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

fn expect(data: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (found, contents, rest) = element(data)?;
    (found == tag).then_some((contents, rest))
}

/// The subject of a DER certificate, or `None` if it is not one.
pub fn subject(cert: &[u8]) -> Option<PeerCertificate> {
    let (certificate, _) = expect(cert, SEQUENCE)?;
    let (mut tbs, _) = expect(certificate, SEQUENCE)?;
    if tbs.first() == Some(&VERSION) {
        tbs = element(tbs)?.2;
    }
    // serialNumber, signature, issuer, validity, then subject.
    for _ in 0..4 {
        tbs = element(tbs)?.2;
    }
    let (mut name, _) = expect(tbs, SEQUENCE)?;
    let mut rdns = Vec::new();
    let mut common_name = None;
    while !name.is_empty() {
        let (mut set, rest) = expect(name, SET)?;
        name = rest;
        let mut parts = Vec::new();
        while !set.is_empty() {
            let (attribute, rest) = expect(set, SEQUENCE)?;
            set = rest;
            let (oid, value) = expect(attribute, OID)?;
            let (tag, contents, _) = element(value)?;
            let oid = dotted(oid)?;
            let text = string_value(tag, contents);
            if oid == "2.5.4.3" && common_name.is_none() {
                common_name = text.clone();
            }
            let rendered = match (short_name(&oid), text) {
                (Some(short), Some(text)) => format!("{short}={}", escape(&text)),
                // RFC 4514 2.4: unknown types and non-string values as #hex of the DER.
                _ => format!("{oid}=#{}", hex(value)),
            };
            parts.push(rendered);
        }
        rdns.push(parts.join("+"));
    }
    // RFC 4514 2.1: the last RDN of the sequence comes first.
    rdns.reverse();
    Some(PeerCertificate {
        subject: ByteString::from(rdns.join(",")),
        common_name: common_name.map(ByteString::from),
    })
}

fn dotted(oid: &[u8]) -> Option<String> {
    let mut ids = Vec::new();
    let mut value: u64 = 0;
    for (i, &byte) in oid.iter().enumerate() {
        value = value.checked_mul(128)? | u64::from(byte & 0x7f);
        if byte & 0x80 == 0 {
            ids.push(value);
            value = 0;
        } else if i + 1 == oid.len() {
            return None; // ends inside a subidentifier
        }
    }
    let (&first, rest) = ids.split_first()?;
    let (x, y) = if first < 80 {
        (first / 40, first % 40)
    } else {
        (2, first - 80)
    };
    let mut out = format!("{x}.{y}");
    for id in rest {
        out.push('.');
        out.push_str(&id.to_string());
    }
    Some(out)
}

fn short_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.3" => "CN",
        "2.5.4.6" => "C",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.9" => "STREET",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "0.9.2342.19200300.100.1.25" => "DC",
        "0.9.2342.19200300.100.1.1" => "UID",
        // Not in RFC 4514's table, but what OpenSSL (and so Mosquitto) prints.
        "1.2.840.113549.1.9.1" => "emailAddress",
        _ => return None,
    })
}

/// The text of a directory string; `None` for other value types.
fn string_value(tag: u8, contents: &[u8]) -> Option<String> {
    match tag {
        // UTF8String, PrintableString, IA5String, VisibleString, NumericString.
        0x0c | 0x13 | 0x16 | 0x1a | 0x12 => std::str::from_utf8(contents).ok().map(str::to_owned),
        // TeletexString: treated as Latin-1, as most software does.
        0x14 => Some(contents.iter().map(|&b| char::from(b)).collect()),
        // BMPString: UTF-16BE.
        0x1e if contents.len().is_multiple_of(2) => {
            let units: Vec<u16> = contents
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units).ok()
        }
        _ => None,
    }
}

/// RFC 4514 2.4 escaping.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            '\0' => out.push_str("\\00"),
            c => out.push(c),
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with(dn: &[(rcgen::DnType, &str)]) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (kind, value) in dn {
            params.distinguished_name.push(kind.clone(), *value);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn subject_in_rfc4514_order_with_the_first_common_name() {
        let der = cert_with(&[
            (rcgen::DnType::CountryName, "DE"),
            (rcgen::DnType::OrganizationName, "Example, Inc."),
            (rcgen::DnType::CommonName, "alice"),
        ]);
        let peer = subject(&der).unwrap();
        assert_eq!(&*peer.subject, "CN=alice,O=Example\\, Inc.,C=DE");
        assert_eq!(peer.common_name.as_deref(), Some("alice"));
    }

    #[test]
    fn no_common_name_and_unknown_attributes() {
        let der = cert_with(&[
            (rcgen::DnType::OrganizationName, " lead"),
            (rcgen::DnType::CustomDnType(vec![1, 2, 3, 4]), "x"),
        ]);
        let peer = subject(&der).unwrap();
        assert_eq!(peer.common_name, None);
        assert!(peer.subject.starts_with("1.2.3.4=#"), "{}", peer.subject);
        assert!(peer.subject.ends_with(",O=\\ lead"), "{}", peer.subject);
    }

    #[test]
    fn garbage_is_none_not_a_panic() {
        let der = cert_with(&[(rcgen::DnType::CommonName, "bob")]);
        for cut in 0..der.len() {
            let _ = subject(&der[..cut]);
        }
        assert_eq!(subject(&[]), None);
        assert_eq!(subject(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(subject(b"-----BEGIN CERTIFICATE-----"), None);
    }
}
