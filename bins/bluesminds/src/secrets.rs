//! Secrets of the embedded mode. With SQLite and no `JWT_SECRET`/`API_KEY_SECRET`, the gateway
//! generates them once and keeps them in a file beside the database (mode 0600), so sessions and
//! the key cache survive restarts. With Postgres they are required (see `Config::validate`).

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::config::Config;

/// Where the generated secrets of a SQLite database live.
pub fn secrets_path(db_path: &Path) -> PathBuf {
    crate::config::beside_database(db_path, "secrets")
}

fn random_secret() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("OS random generator failed: {e}"))?;
    Ok(bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        use std::fmt::Write as _;
        let _ = write!(s, "{b:02x}");
        s
    }))
}

/// Fills missing secrets from (or into) the secrets file of an embedded database.
pub fn ensure_embedded_secrets(config: &mut Config) -> anyhow::Result<()> {
    if !config.auth.jwt_secret.is_empty() && !config.auth.api_key_secret.is_empty() {
        return Ok(());
    }
    let Some(db_path) = config.database.sqlite_path() else {
        // In-memory SQLite: secrets live as long as the process.
        config.auth.jwt_secret = random_secret()?;
        config.auth.api_key_secret = random_secret()?;
        return Ok(());
    };
    let path = secrets_path(&db_path);
    let mut stored: std::collections::HashMap<String, String> = match std::fs::read_to_string(&path)
    {
        Ok(text) => text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::collections::HashMap::new(),
        Err(e) => anyhow::bail!("cannot read secrets file {}: {e}", path.display()),
    };
    let mut generated = false;
    for (name, slot) in [
        ("JWT_SECRET", &mut config.auth.jwt_secret),
        ("API_KEY_SECRET", &mut config.auth.api_key_secret),
    ] {
        if !slot.is_empty() {
            continue;
        }
        if let Some(v) = stored.get(name).filter(|v| v.len() >= 32) {
            v.clone_into(slot);
        } else {
            let secret = random_secret()?;
            stored.insert(name.to_owned(), secret.clone());
            *slot = secret;
            generated = true;
        }
    }
    if generated {
        write_private(&path, &stored)?;
        tracing::warn!(
            path = %path.display(),
            "JWT_SECRET/API_KEY_SECRET not set: generated them for this embedded database and \
             saved them beside it; set both explicitly in production"
        );
    }
    Ok(())
}

fn write_private(
    path: &Path,
    values: &std::collections::HashMap<String, String>,
) -> anyhow::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut file = opts
        .open(path)
        .map_err(|e| anyhow::anyhow!("cannot write secrets file {}: {e}", path.display()))?;
    let mut keys: Vec<_> = values.keys().collect();
    keys.sort();
    for k in keys {
        writeln!(file, "{k}={}", values[k])?;
    }
    Ok(())
}

/// A random password of 20 base62-like characters, for generated accounts.
pub fn random_password() -> anyhow::Result<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut bytes = [0u8; 20];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("OS random generator failed: {e}"))?;
    Ok(bytes.iter().map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()])).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_generated_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.database.url = format!("sqlite://{}?mode=rwc", dir.path().join("gw.db").display());
        ensure_embedded_secrets(&mut config).unwrap();
        assert_eq!(config.auth.jwt_secret.len(), 64);
        assert_ne!(config.auth.jwt_secret, config.auth.api_key_secret);
        let file = dir.path().join("gw.secrets");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let mut again = Config::default();
        again.database.url = config.database.url.clone();
        ensure_embedded_secrets(&mut again).unwrap();
        assert_eq!(again.auth, config.auth, "a restart reads the same secrets back");
    }
}
