//! Encryption of secrets kept in the database (OAuth bot tokens): ChaCha20-Poly1305 with a key
//! from `ECDYSIS_SECRET_KEY`, or generated once into `$ECDYSIS_DATA_DIR/secret.key` (mode
//! 0600) when that is unset. A sealed value is bound to its row (the associated data), so a
//! ciphertext copied into another row does not open.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use crate::config::Config;

/// What went wrong with a secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read or create the secret key file {path}: {problem}")]
    KeyFile { path: PathBuf, problem: String },
    #[error("the secret key file {0} is empty")]
    EmptyKey(PathBuf),
    #[error("a stored secret does not open: wrong ECDYSIS_SECRET_KEY, or the value was altered")]
    Open,
    #[error("encryption failed")]
    Seal,
    #[error("the key cannot be used")]
    Key,
}

const VERSION: &str = "v1:";
const KEY_FILE: &str = "secret.key";

/// Seals and opens secrets with one key.
pub struct SecretBox {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(***)")
    }
}

impl SecretBox {
    /// The key of the configuration: `ECDYSIS_SECRET_KEY`, else the data dir's key file
    /// (created on first use).
    pub fn from_config(config: &Config) -> Result<Self, SecretError> {
        match config
            .secret_key
            .as_deref()
            .filter(|k| !k.trim().is_empty())
        {
            Some(secret) => Self::from_secret(secret),
            None => Self::from_key_file(&config.data_dir.join(KEY_FILE)),
        }
    }

    /// A key derived from any secret text (SHA-256 with a purpose prefix).
    pub fn from_secret(secret: &str) -> Result<Self, SecretError> {
        let mut input = b"ecdysis token key v1\0".to_vec();
        input.extend_from_slice(secret.trim().as_bytes());
        let digest = ring::digest::digest(&ring::digest::SHA256, &input);
        Self::from_key_bytes(digest.as_ref())
    }

    fn from_key_bytes(bytes: &[u8]) -> Result<Self, SecretError> {
        // ChaCha20-Poly1305 takes a 32-byte key; SHA-256 gives exactly that.
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, bytes).map_err(|_| SecretError::Key)?;
        Ok(Self {
            key: LessSafeKey::new(unbound),
            rng: SystemRandom::new(),
        })
    }

    /// Read the key file, or create it (random, mode 0600) when it does not exist.
    pub fn from_key_file(path: &Path) -> Result<Self, SecretError> {
        let fail = |problem: String| SecretError::KeyFile {
            path: path.to_path_buf(),
            problem,
        };
        if !path.exists() {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
            }
            let mut bytes = [0u8; 32];
            SystemRandom::new()
                .fill(&mut bytes)
                .map_err(|_| fail("no randomness".into()))?;
            let text = hex::encode(bytes);
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            match options.open(path) {
                Ok(mut file) => {
                    file.write_all(format!("{text}\n").as_bytes())
                        .and_then(|()| file.sync_all())
                        .map_err(|e| fail(e.to_string()))?;
                    tracing::info!(path = %path.display(), "generated the secret key for stored tokens (keep it with the database)");
                }
                // Another process created it first: use theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(fail(e.to_string())),
            }
        }
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        if text.trim().is_empty() {
            return Err(SecretError::EmptyKey(path.to_path_buf()));
        }
        Self::from_secret(&text)
    }

    /// Encrypt `plaintext`, bound to `context` (e.g. `slack:T123`).
    pub fn seal(&self, plaintext: &[u8], context: &str) -> Result<String, SecretError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| SecretError::Seal)?;
        let mut buffer = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut buffer,
            )
            .map_err(|_| SecretError::Seal)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buffer);
        Ok(format!("{VERSION}{}", B64.encode(out)))
    }

    /// Decrypt what [`SecretBox::seal`] made with the same `context`.
    pub fn open(&self, sealed: &str, context: &str) -> Result<Vec<u8>, SecretError> {
        let data = sealed
            .strip_prefix(VERSION)
            .and_then(|b| B64.decode(b).ok())
            .ok_or(SecretError::Open)?;
        if data.len() < NONCE_LEN {
            return Err(SecretError::Open);
        }
        let (nonce, ciphertext) = data.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SecretError::Open)?;
        let mut buffer = ciphertext.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut buffer)
            .map_err(|_| SecretError::Open)?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_and_open() {
        let b = SecretBox::from_secret("correct horse").unwrap();
        let sealed = b.seal(b"xoxb-123", "slack:T1").unwrap();
        assert!(sealed.starts_with("v1:"));
        assert!(!sealed.contains("xoxb"));
        assert_eq!(b.open(&sealed, "slack:T1").unwrap(), b"xoxb-123");
        assert_ne!(
            sealed,
            b.seal(b"xoxb-123", "slack:T1").unwrap(),
            "fresh nonces"
        );
        assert!(b.open(&sealed, "slack:T2").is_err(), "bound to its row");
        assert!(
            SecretBox::from_secret("other")
                .unwrap()
                .open(&sealed, "slack:T1")
                .is_err()
        );
        assert!(b.open("v1:AAAA", "slack:T1").is_err());
        assert!(b.open("plain", "slack:T1").is_err());
    }

    #[test]
    fn key_file_is_created_once_with_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data/secret.key");
        let a = SecretBox::from_key_file(&path).unwrap();
        let sealed = a.seal(b"x", "c").unwrap();
        let b = SecretBox::from_key_file(&path).unwrap();
        assert_eq!(b.open(&sealed, "c").unwrap(), b"x");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
