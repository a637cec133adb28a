//! Secret key files: generating them with owner-only permissions, loading them, and describing
//! a key (public key and key id) for registration and genesis creation.

use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;
use wasteledger_core::signing::{
    KeyFileError, SignatureError, SigningKey, format_secret_key_file, key_id, parse_public_key,
    parse_secret_key_file,
};

/// Why a key could not be written, read or parsed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Refusing to overwrite a key: that would destroy the only copy of a secret.
    #[error(
        "{0} already exists; refusing to overwrite a key file (choose another path or move the old key away first)"
    )]
    Exists(PathBuf),
    /// The file system refused.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not a key file.
    #[error("{path} is not a wasteledger key file: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: KeyFileError,
    },
    /// A public key given as text is not 64 hex characters of a usable ed25519 key.
    #[error("public key {text:?}: {problem}")]
    PublicKey {
        /// The text given.
        text: String,
        /// What is wrong.
        problem: String,
    },
}

/// What `key generate` and `key show` report.
#[derive(Clone, Debug, serde::Serialize)]
pub struct KeyInfo {
    /// The key file.
    pub file: String,
    /// The party the key was generated for, when the file says.
    pub party: Option<String>,
    /// The ed25519 public key, 64 hex characters (what `party register` and `genesis create`
    /// take).
    pub public_key: String,
    /// The key id (blake3), 64 hex characters: how signatures name their key.
    pub key_id: String,
}

/// Describes `key`, stored in `file`.
pub fn describe(key: &SigningKey, file: &Path, party: Option<String>) -> KeyInfo {
    let public = key.verifying_key();
    KeyInfo {
        file: file.display().to_string(),
        party,
        public_key: hex::encode(public.as_bytes()),
        key_id: key_id(&public).to_hex(),
    }
}

/// Generates a fresh key from the operating system's random source and writes it to `path`,
/// readable and writable by the owner only. Never overwrites an existing file.
pub fn generate(path: &Path, party: Option<&str>) -> Result<KeyInfo, KeyError> {
    let key = SigningKey::generate(&mut rand_core::OsRng);
    let mut comment =
        String::from("wasteledger ed25519 signing key: keep it secret, never share it");
    if let Some(p) = party {
        comment.push_str(&format!("\nparty: {p}"));
    }
    let text = format_secret_key_file(&key, &comment);
    let io = |source| KeyError::Io {
        path: path.to_owned(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Created 0600 from the start: no moment where another user could read the secret.
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            KeyError::Exists(path.to_owned())
        } else {
            io(e)
        }
    })?;
    file.write_all(text.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(describe(&key, path, party.map(str::to_owned)))
}

/// Loads a secret key file, with the party it names (a `# party: ID` comment), if any.
pub fn load(path: &Path) -> Result<(SigningKey, Option<String>), KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
        path: path.to_owned(),
        source,
    })?;
    let key = parse_secret_key_file(&text).map_err(|source| KeyError::Parse {
        path: path.to_owned(),
        source,
    })?;
    let party = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix('#'))
        .filter_map(|l| l.trim().strip_prefix("party:"))
        .map(|p| p.trim().to_owned())
        .next();
    Ok((key, party))
}

/// Whether a key file can be read by users other than its owner (as `ssh` does, the CLI warns:
/// a secret readable by others is no longer only the party's). Always false off Unix.
pub fn readable_by_others(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        false
    }
}

/// Parses a public key written as 64 hex characters: a valid, non-weak ed25519 point.
pub fn parse_public_hex(text: &str) -> Result<VerifyingKey, KeyError> {
    let err = |problem: String| KeyError::PublicKey {
        text: text.to_owned(),
        problem,
    };
    let bytes = hex::decode(text.trim()).map_err(|_| {
        err("expected 64 hex characters (the public_key printed by `wasteledger key show`)".into())
    })?;
    parse_public_key(&bytes).map_err(|e: SignatureError| err(e.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn generate_refuses_to_overwrite_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.key");
        let info = generate(&path, Some("GEN-1")).unwrap();
        assert!(matches!(generate(&path, None), Err(KeyError::Exists(_))));
        let (key, party) = load(&path).unwrap();
        assert_eq!(party.as_deref(), Some("GEN-1"));
        assert_eq!(hex::encode(key.verifying_key().as_bytes()), info.public_key);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(parse_public_hex(&info.public_key).is_ok());
        assert!(!readable_by_others(&path));
        assert!(parse_public_hex("zz").is_err());
    }
}
