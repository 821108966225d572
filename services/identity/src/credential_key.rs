//! The key that seals stored credentials at rest: a [`SealingKey`] for
//! credentials, each value bound to its organization and credential id
//! (see `paddock_shared::seal`).
//!
//! The key comes from `--credential-key` / `PADDOCK_CREDENTIAL_KEY` (32
//! bytes as base64 or hex), else from `{data_dir}/credential-key`, which is
//! generated once (mode 0600) so that `paddock dev` works out of the box.

use std::path::Path;
#[cfg(test)]
use std::path::PathBuf;

#[cfg(test)]
use base64::Engine as _;
use paddock_shared::seal::{Purpose, SealingKey};
use paddock_shared::secret::Secret;
#[cfg(test)]
use rand::Rng;

pub use paddock_shared::seal::{KeyError, KeySource, OpenError, Sealed};

/// The key file's name under the data dir.
pub const KEY_FILE: &str = "credential-key";

/// Stored credentials. The separators are those values were first sealed
/// with: changing them would make every stored credential unreadable.
pub static PURPOSE: Purpose = Purpose {
    file: KEY_FILE,
    flag: "--credential-key / PADDOCK_CREDENTIAL_KEY",
    aad_prefix: b"paddock.credential.v1\0",
    fingerprint_domain: b"paddock.credential-key.v1\0",
};

/// A loaded credential key. `Debug` shows only its fingerprint.
#[derive(Debug)]
pub struct CredentialKey(SealingKey);

impl CredentialKey {
    pub fn parse(text: &str, what: &str) -> Result<Self, KeyError> {
        SealingKey::parse(&PURPOSE, text, what).map(Self)
    }

    pub fn generate() -> (Self, Secret<String>) {
        let (key, text) = SealingKey::generate(&PURPOSE);
        (Self(key), text)
    }

    pub fn load(
        configured: Option<&Secret<String>>,
        data_dir: &Path,
    ) -> Result<(Self, KeySource), KeyError> {
        SealingKey::load(&PURPOSE, configured, data_dir).map(|(k, s)| (Self(k), s))
    }

    pub fn fingerprint(&self) -> &str {
        self.0.fingerprint()
    }

    /// Seals `value` for credential `credential_id` of `org`.
    pub fn seal(&self, org: &str, credential_id: &str, value: &[u8]) -> Sealed {
        self.0.seal(org, credential_id, value)
    }

    /// Opens a value sealed for credential `credential_id` of `org`.
    pub fn open(
        &self,
        org: &str,
        credential_id: &str,
        sealed: &Sealed,
    ) -> Result<Vec<u8>, OpenError> {
        self.0.open(org, credential_id, sealed)
    }
}

#[cfg(test)]
mod tests;
