//! Sealing secrets at rest: XChaCha20-Poly1305 with a random 192-bit nonce
//! per value (random nonces of that size cannot realistically collide),
//! and associated data binding each ciphertext to where it belongs (its
//! organization and id): a value copied into another row fails to open
//! instead of revealing one secret under another's name. Each sealed value
//! also records the key's fingerprint, so a value sealed under a different
//! key is reported as exactly that.
//!
//! One [`Purpose`] per kind of secret (stored credentials, sandbox env)
//! names its key file, its configuration flag and its domain separators.
//! The key comes from configuration (32 bytes as base64 or hex), else from
//! a file under the data dir, generated once (mode 0600).

use std::path::{Path, PathBuf};

use crate::secret::Secret;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::Rng;
use sha2::{Digest, Sha256};

const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;

/// What a key seals: its file under the data dir, the flag that configures
/// it (for messages), and the domain separators of its associated data and
/// fingerprint. Changing any of them makes existing values unreadable.
#[derive(Debug)]
pub struct Purpose {
    pub file: &'static str,
    pub flag: &'static str,
    pub aad_prefix: &'static [u8],
    pub fingerprint_domain: &'static [u8],
}

/// Why no key could be loaded. Messages never contain key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "invalid {0}: expected 32 bytes as base64 (44 characters) or hex (64 digits); generate one with `openssl rand -base64 32`"
    )]
    Malformed(String),
    #[error("cannot read the key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the key file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Why a sealed value did not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("the value was sealed with a different key")]
    WrongKey,
    #[error("the value does not authenticate: it was altered or moved from another row")]
    Corrupt,
}

/// Where the key came from, for the startup log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Configured,
    File(PathBuf),
    Generated(PathBuf),
}

/// A loaded key. `Debug` shows only its fingerprint.
pub struct SealingKey {
    cipher: XChaCha20Poly1305,
    fingerprint: String,
    purpose: &'static Purpose,
}

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealingKey")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// A sealed value as stored: nonce, ciphertext and tag, and the fingerprint
/// of the key that sealed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub key_fingerprint: String,
    pub bytes: Vec<u8>,
}

impl SealingKey {
    fn from_bytes(purpose: &'static Purpose, key: &[u8; KEY_LEN]) -> Self {
        let digest = Sha256::new()
            .chain_update(purpose.fingerprint_domain)
            .chain_update(key)
            .finalize();
        Self {
            cipher: XChaCha20Poly1305::new(&(*key).into()),
            // A short one-way tag: enough to tell keys apart, useless to
            // recover one.
            fingerprint: crate::hex::encode(&digest[..8]),
            purpose,
        }
    }

    /// Parses 32 bytes given as base64 (standard or URL-safe, padded or
    /// not) or as 64 hex digits. `what` names the source in the error.
    pub fn parse(purpose: &'static Purpose, text: &str, what: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        let bytes = if text.len() == 2 * KEY_LEN && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            crate::hex::decode(&text.to_ascii_lowercase())
        } else {
            use base64::engine::general_purpose::{
                STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD,
            };
            [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
                .iter()
                .find_map(|engine| engine.decode(text).ok())
        };
        let key: [u8; KEY_LEN] = bytes
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| KeyError::Malformed(what.to_owned()))?;
        Ok(Self::from_bytes(purpose, &key))
    }

    /// A new random key and its base64 text.
    pub fn generate(purpose: &'static Purpose) -> (Self, Secret<String>) {
        let mut key = [0u8; KEY_LEN];
        rand::rng().fill(&mut key[..]);
        let text = base64::engine::general_purpose::STANDARD.encode(key);
        (Self::from_bytes(purpose, &key), Secret::new(text))
    }

    /// The configured key, else the one in `{data_dir}/{purpose.file}`,
    /// generated there (mode 0600) when the file does not exist. A file that
    /// exists but holds no key is an error, never silently replaced: the
    /// values sealed with it would become unreadable.
    pub fn load(
        purpose: &'static Purpose,
        configured: Option<&Secret<String>>,
        data_dir: &Path,
    ) -> Result<(Self, KeySource), KeyError> {
        if let Some(text) = configured {
            let key = Self::parse(purpose, text.expose(), purpose.flag)?;
            return Ok((key, KeySource::Configured));
        }
        let path = data_dir.join(purpose.file);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let key = Self::parse(purpose, &text, &format!("key file {}", path.display()))?;
                Ok((key, KeySource::File(path)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let (key, text) = Self::generate(purpose);
                crate::server::write_secret_file(&path, text.expose()).map_err(|source| {
                    KeyError::Write {
                        path: path.clone(),
                        source,
                    }
                })?;
                Ok((key, KeySource::Generated(path)))
            }
            Err(source) => Err(KeyError::Read { path, source }),
        }
    }

    /// A short, one-way tag of the key, stored beside each sealed value.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Seals `value` for `id` of `org`.
    pub fn seal(&self, org: &str, id: &str, value: &[u8]) -> Sealed {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill(&mut nonce[..]);
        let aad = aad(self.purpose, org, id);
        // Encryption with a valid key and nonce size fails only on inputs of
        // gigabytes; the API caps values far below that.
        let ciphertext = self
            .cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: value,
                    aad: &aad,
                },
            )
            .unwrap_or_default();
        let mut bytes = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        bytes.extend_from_slice(&nonce);
        bytes.extend_from_slice(&ciphertext);
        Sealed {
            key_fingerprint: self.fingerprint.clone(),
            bytes,
        }
    }

    /// Opens a value sealed for `id` of `org`.
    pub fn open(&self, org: &str, id: &str, sealed: &Sealed) -> Result<Vec<u8>, OpenError> {
        if sealed.key_fingerprint != self.fingerprint {
            return Err(OpenError::WrongKey);
        }
        if sealed.bytes.len() < NONCE_LEN + TAG_LEN {
            return Err(OpenError::Corrupt);
        }
        let (nonce, ciphertext) = sealed.bytes.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| OpenError::Corrupt)?;
        let aad = aad(self.purpose, org, id);
        self.cipher
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| OpenError::Corrupt)
    }
}

/// Ids cannot contain NUL, so the encoding is unambiguous.
fn aad(purpose: &Purpose, org: &str, id: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(purpose.aad_prefix.len() + org.len() + 1 + id.len());
    aad.extend_from_slice(purpose.aad_prefix);
    aad.extend_from_slice(org.as_bytes());
    aad.push(0);
    aad.extend_from_slice(id.as_bytes());
    aad
}
