//! mosquitto_passwd files: `user:$7$ITERATIONS$SALT$HASH` (PBKDF2-HMAC-SHA512) or the
//! legacy `$6$` salted SHA-512, verified in Rust.

use std::collections::HashMap;

use base64::Engine;
use sha2::{Digest, Sha512};

use super::{AuthDecision, AuthRequest, Authenticator, BoxFuture};
use crate::codec::ConnectReturnCode;

#[derive(Debug, Clone, PartialEq, Eq)]
enum PasswordHash {
    /// `$7$ITERATIONS$SALT$HASH`: PBKDF2-HMAC-SHA512 (mosquitto 2.x).
    Pbkdf2Sha512 {
        iterations: u32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    /// `$6$SALT$HASH`: SHA-512 of password then salt (mosquitto 1.x).
    Sha512 { salt: Vec<u8>, hash: Vec<u8> },
}

impl PasswordHash {
    fn parse(text: &str) -> Result<PasswordHash, String> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let decode = |s: &str| b64.decode(s).map_err(|e| format!("bad base64: {e}"));
        let parts: Vec<&str> = text.split('$').collect();
        match parts.as_slice() {
            ["", "7", iterations, salt, hash] => Ok(PasswordHash::Pbkdf2Sha512 {
                iterations: iterations
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or("bad iteration count")?,
                salt: decode(salt)?,
                hash: decode(hash)?,
            }),
            ["", "6", salt, hash] => Ok(PasswordHash::Sha512 {
                salt: decode(salt)?,
                hash: decode(hash)?,
            }),
            _ => Err("not a mosquitto_passwd hash ($6$ or $7$)".into()),
        }
    }

    fn verify(&self, password: &[u8]) -> bool {
        match self {
            PasswordHash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => {
                let mut derived = vec![0u8; hash.len()];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, *iterations, &mut derived);
                constant_time_eq(&derived, hash)
            }
            PasswordHash::Sha512 { salt, hash } => {
                let mut hasher = Sha512::new();
                hasher.update(password);
                hasher.update(salt);
                constant_time_eq(&hasher.finalize(), hash)
            }
        }
    }
}

/// Compares without an early exit, so timing does not reveal how much of a hash matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Users and password hashes from a file in mosquitto_passwd's format.
#[derive(Debug, Clone, Default)]
pub struct PasswordFile {
    users: HashMap<String, PasswordHash>,
}

impl PasswordFile {
    pub fn parse(text: &str) -> Result<PasswordFile, String> {
        let mut users = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            // User names cannot contain ':', passwords hashes never do.
            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| format!("line {}: expected USER:HASH", n + 1))?;
            let hash = PasswordHash::parse(hash).map_err(|e| format!("line {}: {e}", n + 1))?;
            users.insert(user.to_string(), hash);
        }
        Ok(PasswordFile { users })
    }

    pub fn load(path: &str) -> Result<PasswordFile, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read password file {path}: {e}"))?;
        PasswordFile::parse(&text).map_err(|e| format!("password file {path}: {e}"))
    }

    pub fn verify(&self, username: &str, password: &[u8]) -> bool {
        self.users
            .get(username)
            .is_some_and(|hash| hash.verify(password))
    }
}

impl Authenticator for PasswordFile {
    fn authenticate(&self, request: AuthRequest) -> BoxFuture<AuthDecision> {
        let decision = match (&request.username, &request.password) {
            (Some(user), Some(password)) if self.verify(user, password) => AuthDecision::Allow,
            _ => AuthDecision::Deny(ConnectReturnCode::BadUserNameOrPassword),
        };
        Box::pin(async move { decision })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Made with `mosquitto_passwd -c -b pw.txt alice s3cret` and `-b pw.txt bob p@ss:word`
    // (mosquitto 2.0.11).
    const PASSWD: &str = "alice:$7$101$PPwfPaWuoGy8HtoG$peGBGgnJ+IdHyd5xmd0/ZFqE6+VcQ44CETLJMUXk+PnNcGPwTrUPVnjLfq+Y10c0THOi9a1Pqqbc/SCg0zETVQ==
bob:$7$101$M1JNCCEQt3puMIYo$s8MCba+nnvqV9m8YAtwqaq1HQFuLF2vUWzwzHr4N9um0L2U08WsTO9PxZeCPeUxpvlqOw5jdMegOJEjP0NgPtA==
";

    #[test]
    fn mosquitto_passwd_hashes_verify() {
        let file = PasswordFile::parse(PASSWD).unwrap();
        assert!(file.verify("alice", b"s3cret"));
        assert!(!file.verify("alice", b"s3cret "));
        assert!(file.verify("bob", b"p@ss:word"));
        assert!(!file.verify("bob", b"s3cret"));
        assert!(!file.verify("carol", b"anything"));
    }

    #[test]
    fn legacy_sha512_hash_verifies() {
        let salt = b"saltsalt";
        let mut h = Sha512::new();
        h.update(b"pw");
        h.update(salt);
        let b64 = base64::engine::general_purpose::STANDARD;
        let line = format!("u:$6${}${}", b64.encode(salt), b64.encode(h.finalize()));
        let file = PasswordFile::parse(&line).unwrap();
        assert!(file.verify("u", b"pw"));
        assert!(!file.verify("u", b"pW"));
    }

    #[test]
    fn bad_password_lines_are_errors() {
        assert!(PasswordFile::parse("alice").is_err());
        assert!(PasswordFile::parse("alice:plain").is_err());
        assert!(PasswordFile::parse("alice:$7$0$AA==$AA==").is_err());
    }
}
