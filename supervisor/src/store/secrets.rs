//! The key plugins' secret settings are sealed under, and the sealing.
//!
//! Secrets are sealed with XChaCha20-Poly1305 (random 24-byte nonces, so no nonce bookkeeping
//! between workers), bound to their plugin and setting name as associated data, so a sealed
//! value copied to another row does not open. The key is 32 bytes from `PLUGD_SECRET_KEY`
//! (base64 or hex) or from `secret.key` in the data directory, created with mode 0600 on the
//! first start of a store that holds no secrets yet. The store keeps the key's id and a value
//! sealed under it (`secret_keys`), never the key: a worker started with another key is refused
//! at start-up with both ids named, instead of handing plugins garbage.

use anyhow::{bail, Context};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};
use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The environment variable that gives the key.
pub const KEY_ENV: &str = "PLUGD_SECRET_KEY";
/// The key file's name in the data directory.
pub const KEY_FILE: &str = "secret.key";
const NONCE_LEN: usize = 24;
/// What the check value seals.
const CHECK_TEXT: &[u8] = b"plugd secret key check";

/// Where a key came from, for messages (never the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `PLUGD_SECRET_KEY`.
    Env,
    /// A key file.
    File(PathBuf),
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Env => write!(f, "{KEY_ENV}"),
            KeySource::File(path) => write!(f, "the key file {}", path.display()),
        }
    }
}

/// A 32-byte key and its id. Its `Debug` shows the id only.
#[derive(Clone)]
pub struct SecretKey {
    cipher: XChaCha20Poly1305,
    bytes: [u8; 32],
    id: String,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({})", self.id)
    }
}

impl SecretKey {
    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> SecretKey {
        let digest = Sha256::digest([b"plugd-key-id:".as_slice(), &bytes].concat());
        SecretKey {
            cipher: XChaCha20Poly1305::new(&bytes.into()),
            bytes,
            id: hex::encode(&digest[..6]),
        }
    }

    /// A new random key.
    pub fn generate() -> SecretKey {
        SecretKey::from_bytes(rand::random())
    }

    /// A key written as base64 or hex (as in `PLUGD_SECRET_KEY` or a key file).
    pub fn parse(text: &str) -> Result<SecretKey, String> {
        let text = text.trim();
        let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(text).map_err(|e| e.to_string())?
        } else {
            B64.decode(text)
                .map_err(|_| "is neither base64 nor 64 hex digits".to_owned())?
        };
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| format!("is {} bytes; a key is 32", b.len()))?;
        Ok(SecretKey::from_bytes(bytes))
    }

    /// The key in the form key files and `PLUGD_SECRET_KEY` use (base64).
    pub fn encoded(&self) -> String {
        B64.encode(self.bytes)
    }

    /// The key's id: a short digest that names it in messages and the store.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Seals `plain`, bound to `context`; answers base64 of nonce and ciphertext.
    pub fn seal(&self, context: &str, plain: &[u8]) -> String {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let sealed = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: context.as_bytes(),
                },
            )
            .expect("XChaCha20-Poly1305 seals any length plugd stores");
        B64.encode([nonce.as_slice(), &sealed].concat())
    }

    /// Opens what [`SecretKey::seal`] sealed with the same `context`; `None` if it does not open
    /// (another key, another context, or altered).
    pub fn open(&self, context: &str, sealed: &str) -> Option<Vec<u8>> {
        let bytes = B64.decode(sealed).ok()?;
        if bytes.len() < NONCE_LEN {
            return None;
        }
        let (nonce, body) = bytes.split_at(NONCE_LEN);
        self.cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: body,
                    aad: context.as_bytes(),
                },
            )
            .ok()
    }

    /// The value the store keeps to recognise this key.
    pub fn check_value(&self) -> String {
        self.seal("plugd:check", CHECK_TEXT)
    }

    /// Whether `check` was sealed under this key.
    pub fn matches(&self, check: &str) -> bool {
        self.open("plugd:check", check).as_deref() == Some(CHECK_TEXT)
    }
}

/// The key given to this process, if any: `PLUGD_SECRET_KEY`, else the key file in `data_dir`.
pub fn load_key(data_dir: &Path) -> anyhow::Result<Option<(SecretKey, KeySource)>> {
    if let Ok(text) = std::env::var(KEY_ENV) {
        let key = SecretKey::parse(&text)
            .map_err(|e| anyhow::anyhow!("{KEY_ENV} {e}: give 32 bytes as base64 or hex"))?;
        return Ok(Some((key, KeySource::Env)));
    }
    let path = data_dir.join(KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let mode = std::fs::metadata(&path)?.permissions().mode();
            if mode & 0o077 != 0 {
                bail!(
                    "the key file {} is readable by others (mode {:o}); make it 0600",
                    path.display(),
                    mode & 0o777
                );
            }
            let key = SecretKey::parse(&text)
                .map_err(|e| anyhow::anyhow!("the key file {} {e}", path.display()))?;
            Ok(Some((key, KeySource::File(path))))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read the key file {}", path.display())),
    }
}

/// Writes `key` to `path` with mode 0600, refusing to replace a file (`create_new`), and syncs
/// it to disk.
pub fn write_key_file(path: &Path, key: &SecretKey) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create the key file {}", path.display()))?;
    writeln!(file, "{}", key.encoded())?;
    file.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key_and_context() {
        let key = SecretKey::generate();
        let sealed = key.seal("hello/api_key", b"s3cret");
        assert!(!sealed.contains("s3cret"));
        assert_eq!(
            key.open("hello/api_key", &sealed).as_deref(),
            Some(&b"s3cret"[..])
        );
        assert_eq!(key.open("other/api_key", &sealed), None);
        assert_eq!(SecretKey::generate().open("hello/api_key", &sealed), None);
        assert_ne!(key.seal("hello/api_key", b"s3cret"), sealed, "fresh nonce");
        assert!(key.matches(&key.check_value()));
        assert!(!SecretKey::generate().matches(&key.check_value()));
    }

    #[test]
    fn keys_parse_from_base64_or_hex_and_say_what_is_wrong() {
        let key = SecretKey::generate();
        assert_eq!(
            SecretKey::parse(&key.encoded()).expect("base64").id(),
            key.id()
        );
        let hex = hex::encode(key.bytes);
        assert_eq!(SecretKey::parse(&hex).expect("hex").id(), key.id());
        let short = SecretKey::parse(&B64.encode([1u8; 16])).expect_err("short");
        assert!(short.contains("16 bytes"), "{short}");
        assert!(format!("{key:?}").contains(key.id()));
        assert!(!format!("{key:?}").contains(&key.encoded()));
    }
}
