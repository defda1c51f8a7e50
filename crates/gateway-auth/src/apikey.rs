//! The API key format: `bm_<prefix>_<secret>`.
//!
//! The prefix is 8 base62 characters, stored in clear with a unique index so a key is found
//! with one indexed lookup; the secret is 43 base62 characters (about 256 bits from the OS
//! generator), stored only as a bcrypt hash. Anything else is malformed and never reaches
//! bcrypt.

use crate::AuthError;

pub const PREFIX_LEN: usize = 8;
pub const SECRET_LEN: usize = 43;
/// `bm_` + prefix + `_` + secret.
pub const KEY_LEN: usize = 3 + PREFIX_LEN + 1 + SECRET_LEN;

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A freshly generated key. `Debug` never shows the secret.
pub struct GeneratedKey {
    pub prefix: String,
    pub secret: String,
}

impl std::fmt::Debug for GeneratedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratedKey").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl GeneratedKey {
    /// The full key, shown to its owner exactly once.
    pub fn full(&self) -> String {
        format!("bm_{}_{}", self.prefix, self.secret)
    }

    /// The prefix as shown in listings: `bm_xxxxxxxx`.
    pub fn display_prefix(&self) -> String {
        format!("bm_{}", self.prefix)
    }
}

/// Generates a new key from the OS random generator.
pub fn generate() -> Result<GeneratedKey, AuthError> {
    Ok(GeneratedKey { prefix: random_base62(PREFIX_LEN)?, secret: random_base62(SECRET_LEN)? })
}

/// A new secret for an existing prefix (rotation keeps the key's identity).
pub fn generate_secret() -> Result<String, AuthError> {
    random_base62(SECRET_LEN)
}

/// Uniform base62 characters by rejection sampling (bytes >= 248 are redrawn).
fn random_base62(len: usize) -> Result<String, AuthError> {
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        getrandom::fill(&mut buf).map_err(|e| AuthError::Hashing(Box::new(e)))?;
        for &b in &buf {
            if b < 248 && out.len() < len {
                out.push(char::from(ALPHABET[usize::from(b % 62)]));
            }
        }
    }
    Ok(out)
}

/// The two parts of a well-formed key, borrowed from the bearer string.
#[derive(Debug, PartialEq, Eq)]
pub struct ParsedKey<'a> {
    pub prefix: &'a str,
    pub secret: &'a str,
}

/// Splits a bearer string into prefix and secret, or `None` if it is not a `bm_` key of exactly
/// the expected shape.
pub fn parse(bearer: &str) -> Option<ParsedKey<'_>> {
    let b = bearer.as_bytes();
    if b.len() != KEY_LEN || !bearer.starts_with("bm_") || b[3 + PREFIX_LEN] != b'_' {
        return None;
    }
    let prefix = &bearer[3..3 + PREFIX_LEN];
    let secret = &bearer[4 + PREFIX_LEN..];
    let ok = |s: &str| s.bytes().all(|c| c.is_ascii_alphanumeric());
    (ok(prefix) && ok(secret)).then_some(ParsedKey { prefix, secret })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_back_and_are_unique() {
        let k = generate().unwrap();
        let full = k.full();
        assert_eq!(full.len(), KEY_LEN);
        let parsed = parse(&full).unwrap();
        assert_eq!(parsed.prefix, k.prefix);
        assert_eq!(parsed.secret, k.secret);
        assert_ne!(generate().unwrap().full(), full);
        assert!(!format!("{k:?}").contains(&k.secret));
    }

    #[test]
    fn malformed_bearers_are_refused() {
        let good = generate().unwrap().full();
        for bad in [
            "",
            "sk-abc",
            &good[..good.len() - 1],
            &format!("{good}x"),
            &good.replacen("bm_", "bx_", 1),
            &format!("bm_{}-{}", "a".repeat(8), "b".repeat(43)),
            &format!("bm_{}_{}", "a".repeat(8), "' OR 1=1--".repeat(5)[..43].to_owned()),
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
