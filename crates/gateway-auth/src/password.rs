//! Password policy and bcrypt hashing. Hashing runs on the blocking pool: bcrypt at cost 12
//! takes about 250 ms of CPU and must never run on a runtime worker.

use crate::AuthError;

/// Shortest password accepted.
pub const MIN_LEN: usize = 8;
/// bcrypt reads at most 72 bytes; longer passwords are refused rather than silently truncated
/// (two passwords sharing their first 72 bytes would otherwise verify each other).
pub const MAX_BYTES: usize = 72;

/// Checks the password policy; the message is safe to show.
pub fn validate(password: &str) -> Result<(), AuthError> {
    if password.chars().count() < MIN_LEN {
        return Err(AuthError::invalid(
            "password",
            format!("must be at least {MIN_LEN} characters long"),
        ));
    }
    if password.len() > MAX_BYTES {
        return Err(AuthError::invalid(
            "password",
            format!("must be at most {MAX_BYTES} bytes long"),
        ));
    }
    Ok(())
}

/// Validates and bcrypt-hashes a password on the blocking pool.
pub async fn hash(password: &str, cost: u32) -> Result<String, AuthError> {
    validate(password)?;
    let password = password.to_owned();
    tokio::task::spawn_blocking(move || bcrypt::hash(password, cost))
        .await
        .map_err(|e| AuthError::Hashing(Box::new(e)))?
        .map_err(|e| AuthError::Hashing(Box::new(e)))
}

/// Verifies a password against a bcrypt hash on the blocking pool. Over-long input never
/// verifies.
pub async fn verify(password: &str, hash: &str) -> Result<bool, AuthError> {
    if password.len() > MAX_BYTES {
        return Ok(false);
    }
    let (password, hash) = (password.to_owned(), hash.to_owned());
    tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
        .await
        .map_err(|e| AuthError::Hashing(Box::new(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_differ_per_call() {
        let a = hash("correct horse", 4).await.unwrap();
        let b = hash("correct horse", 4).await.unwrap();
        assert!(a.starts_with("$2b$04$"), "{a}");
        assert_ne!(a, b, "salted");
        assert!(verify("correct horse", &a).await.unwrap());
        assert!(!verify("correct horsf", &a).await.unwrap());
    }

    #[tokio::test]
    async fn policy_refuses_short_and_over_long_passwords() {
        assert!(matches!(
            hash("short", 4).await,
            Err(AuthError::Invalid { field: "password", .. })
        ));
        let long = "x".repeat(73);
        assert!(matches!(hash(&long, 4).await, Err(AuthError::Invalid { .. })));
        let h = hash(&"x".repeat(72), 4).await.unwrap();
        assert!(!verify(&long, &h).await.unwrap(), "73 bytes must not verify against 72");
    }
}
