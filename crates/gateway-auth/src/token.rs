//! Random tokens and keyed hashes. Session tokens and API keys are looked up by
//! HMAC-SHA256 under a server secret, so a copy of the database or of the cache is useless
//! without the secret.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::AuthError;

/// HMAC-SHA256 under one server secret, keyed once and cloned per use.
#[derive(Clone)]
pub struct KeyedHasher {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for KeyedHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyedHasher(<secret>)")
    }
}

impl KeyedHasher {
    pub fn new(secret: &[u8]) -> Self {
        // HMAC accepts keys of any length; this cannot fail.
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        Self { mac }
    }

    pub fn hash(&self, data: &[u8]) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(data);
        mac.finalize().into_bytes().into()
    }
}

/// A new session token: 32 bytes from the OS generator, hex-encoded.
pub fn new_session_token() -> Result<String, AuthError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| AuthError::Hashing(Box::new(e)))?;
    Ok(hex(&bytes))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// Whether a string could be a session token (so garbage never reaches the database).
pub fn is_session_token(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_well_formed() {
        let a = new_session_token().unwrap();
        assert!(is_session_token(&a), "{a}");
        assert_ne!(a, new_session_token().unwrap());
        assert!(!is_session_token("x' OR 1=1--"));
    }

    #[test]
    fn keyed_hashes_depend_on_the_secret() {
        let a = KeyedHasher::new(b"secret-a");
        let b = KeyedHasher::new(b"secret-b");
        assert_eq!(a.hash(b"token"), a.hash(b"token"));
        assert_ne!(a.hash(b"token"), b.hash(b"token"));
        assert_ne!(a.hash(b"token"), a.hash(b"token2"));
    }
}
