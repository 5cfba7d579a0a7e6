//! mosquitto_passwd files: `user:$7$ITERATIONS$SALT$HASH` (PBKDF2-HMAC-SHA512) or the
//! legacy `$6$` salted SHA-512, verified in Rust.
//!
//! A PBKDF2 hash costs what its iteration count says (0.4 s of CPU at 1,000,000), so it
//! never runs on a runtime worker, where it would stall every connection of that worker:
//! it runs on the blocking pool. Costly ones (above `SLOT_ITERATIONS`) run a bounded
//! number at once, and the login's `auth_timeout` covers the wait for a slot as well as
//! the hash; cheap ones (mosquitto_passwd's default 101 iterations) never queue behind
//! them.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use sha2::{Digest, Sha512};
use tokio::sync::Semaphore;

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

    /// How checking a password is scheduled. A `$6$` hash is one SHA-512: inline.
    /// PBKDF2 always runs on the blocking pool (mosquitto_passwd's 101 iterations are
    /// 50 us, a hardened file's million half a second), in a hashing slot above
    /// `SLOT_ITERATIONS`.
    fn cost(&self) -> Cost {
        match self {
            PasswordHash::Sha512 { .. } => Cost::Inline,
            PasswordHash::Pbkdf2Sha512 { iterations, .. } if *iterations <= SLOT_ITERATIONS => {
                Cost::Blocking
            }
            PasswordHash::Pbkdf2Sha512 { .. } => Cost::Slot,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cost {
    Inline,
    Blocking,
    Slot,
}

/// Iterations above which a PBKDF2 hash takes a hashing slot (about a millisecond).
const SLOT_ITERATIONS: u32 = 2_000;

/// Costly PBKDF2 verifications running at once: half the cores (at least one), so that
/// logins hashing at full speed still leave CPU to the workers that move messages.
fn hash_slots() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// Users and password hashes from a file in mosquitto_passwd's format.
#[derive(Debug, Clone)]
pub struct PasswordFile {
    users: Arc<HashMap<String, PasswordHash>>,
    /// Bounds the hashes running on the blocking pool; logins wait here for a slot.
    hashing: Arc<Semaphore>,
}

impl Default for PasswordFile {
    fn default() -> PasswordFile {
        PasswordFile::with_users(HashMap::new())
    }
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
        Ok(PasswordFile::with_users(users))
    }

    fn with_users(users: HashMap<String, PasswordHash>) -> PasswordFile {
        PasswordFile {
            users: Arc::new(users),
            hashing: Arc::new(Semaphore::new(hash_slots())),
        }
    }

    pub fn load(path: &str) -> Result<PasswordFile, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read password file {path}: {e}"))?;
        PasswordFile::parse(&text).map_err(|e| format!("password file {path}: {e}"))
    }

    /// How many users the file lists.
    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    pub fn verify(&self, username: &str, password: &[u8]) -> bool {
        self.users
            .get(username)
            .is_some_and(|hash| hash.verify(password))
    }
}

const REFUSED: AuthDecision = AuthDecision::Deny(ConnectReturnCode::BadUserNameOrPassword);

impl Authenticator for PasswordFile {
    /// Nothing is computed before the future is polled, so the caller's timeout covers
    /// the whole check.
    fn authenticate(&self, request: AuthRequest) -> BoxFuture<AuthDecision> {
        let file = self.clone();
        Box::pin(async move {
            let (Some(user), Some(password)) = (&request.username, request.password) else {
                return REFUSED;
            };
            let Some(hash) = file.users.get(&**user) else {
                return REFUSED;
            };
            let allowed = match hash.cost() {
                Cost::Inline => hash.verify(&password),
                Cost::Blocking => verify_off_runtime(None, hash.clone(), password).await,
                Cost::Slot => verify_off_runtime(Some(&file.hashing), hash.clone(), password).await,
            };
            if allowed {
                AuthDecision::Allow
            } else {
                REFUSED
            }
        })
    }
}

/// Verifies on the blocking pool, once a hashing slot is free if `slots` is given. The
/// slot is held by the hash itself, not by the waiting login: a login that times out
/// meanwhile stops waiting, but a hash already started keeps its slot until it ends, so
/// no more than `hash_slots()` costly hashes ever compete with the workers for the CPU.
async fn verify_off_runtime(
    slots: Option<&Arc<Semaphore>>,
    hash: PasswordHash,
    password: Bytes,
) -> bool {
    let slot = match slots {
        Some(slots) => match slots.clone().acquire_owned().await {
            Ok(slot) => Some(slot),
            Err(_) => return false,
        },
        None => None,
    };
    tokio::task::spawn_blocking(move || {
        let allowed = hash.verify(&password);
        drop(slot);
        allowed
    })
    .await
    .unwrap_or(false)
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

    fn request(user: &str, password: &[u8]) -> AuthRequest {
        AuthRequest {
            client_id: "c".into(),
            username: Some(user.into()),
            password: Some(Bytes::copy_from_slice(password)),
            peer: "127.0.0.1:1".parse().unwrap(),
            protocol: crate::codec::Protocol::V311,
            certificate_subject: None,
        }
    }

    #[tokio::test]
    async fn authenticate_hashes_on_the_blocking_pool() {
        let file = PasswordFile::parse(PASSWD).unwrap();
        assert_eq!(
            file.authenticate(request("alice", b"s3cret")).await,
            AuthDecision::Allow
        );
        assert_eq!(file.authenticate(request("alice", b"nope")).await, REFUSED);
        assert_eq!(
            file.authenticate(request("carol", b"s3cret")).await,
            REFUSED
        );
        let mut no_password = request("alice", b"");
        no_password.password = None;
        assert_eq!(file.authenticate(no_password).await, REFUSED);
    }

    /// A worker never computes the hash: creating the future does nothing, and on a
    /// single-threaded runtime another task keeps running while a slow hash is verified.
    #[tokio::test(flavor = "current_thread")]
    async fn a_slow_hash_does_not_stall_the_runtime() {
        use std::sync::atomic::{AtomicU32, Ordering};
        let salt = b"saltsaltsalt";
        let mut hash = vec![0u8; 64];
        pbkdf2::pbkdf2_hmac::<Sha512>(b"pw", salt, 20_000, &mut hash);
        let b64 = base64::engine::general_purpose::STANDARD;
        let line = format!("u:$7$20000${}${}", b64.encode(salt), b64.encode(&hash));
        let file = PasswordFile::parse(&line).unwrap();
        let hash_alone = std::time::Instant::now();
        assert!(file.verify("u", b"pw"));
        let hash_alone = hash_alone.elapsed();
        let ticks = Arc::new(AtomicU32::new(0));
        let ticker = tokio::spawn({
            let ticks = ticks.clone();
            async move {
                loop {
                    tokio::time::sleep(hash_alone / 10).await;
                    ticks.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        assert_eq!(
            file.authenticate(request("u", b"pw")).await,
            AuthDecision::Allow
        );
        ticker.abort();
        // Inline, the hash would have held the only runtime thread: no tick at all.
        assert!(
            ticks.load(Ordering::Relaxed) >= 3,
            "the runtime stalled during the hash"
        );
    }

    #[test]
    fn only_costly_hashes_take_a_slot() {
        let file = PasswordFile::parse(PASSWD).unwrap();
        assert_eq!(file.users["alice"].cost(), Cost::Blocking);
        let hardened = PasswordFile::parse("u:$7$1000000$AA==$AA==").unwrap();
        assert_eq!(hardened.users["u"].cost(), Cost::Slot);
        let legacy = PasswordFile::parse("u:$6$AA==$AA==").unwrap();
        assert_eq!(legacy.users["u"].cost(), Cost::Inline);
    }

    /// Cheap logins are not queued behind costly ones: with every slot taken, a
    /// mosquitto_passwd-default user still gets in.
    #[tokio::test]
    async fn cheap_hashes_do_not_wait_for_a_slot() {
        let file = PasswordFile::parse(PASSWD).unwrap();
        let _taken = file
            .hashing
            .clone()
            .acquire_many_owned(hash_slots() as u32)
            .await
            .unwrap();
        let login = file.authenticate(request("alice", b"s3cret"));
        assert_eq!(
            tokio::time::timeout(std::time::Duration::from_secs(10), login).await,
            Ok(AuthDecision::Allow)
        );
    }

    #[test]
    fn bad_password_lines_are_errors() {
        assert!(PasswordFile::parse("alice").is_err());
        assert!(PasswordFile::parse("alice:plain").is_err());
        assert!(PasswordFile::parse("alice:$7$0$AA==$AA==").is_err());
    }
}
