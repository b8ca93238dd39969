//! Keyed digests of codes. The key lives in its own file, outside the store, so that a
//! stolen database or backup reveals no code.

use hmac::{KeyInit, Mac};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use zeroize::Zeroize;

use crate::error::{Error, Result};
use crate::model::UserId;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Bytes in a key file.
pub const KEY_LEN: usize = 32;
/// The digest scheme written with every code row.
pub const SCHEME_V1: u32 = 1;
const DOMAIN_V1: &[u8] = b"sparekey/v1";
/// Differs from [`DOMAIN_V1`] within its first ten bytes, so no digest input equals it.
const KEY_CHECK_DOMAIN: &[u8] = b"sparekey/key-check/v1";

/// The secret key codes are digested under.
#[derive(Clone)]
pub struct DigestKey([u8; KEY_LEN]);

impl DigestKey {
    /// A key from raw bytes (tests, benchmarks).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        DigestKey(bytes)
    }

    /// A new random key.
    pub fn generate() -> Result<Self> {
        let mut k = [0u8; KEY_LEN];
        crate::random::fill(&mut k)?;
        Ok(DigestKey(k))
    }

    /// Writes the key to a new file with mode 0600; refuses to overwrite an existing file.
    pub fn write_new(&self, path: &Path) -> Result<()> {
        let io = |source| Error::Io {
            path: path.to_owned(),
            source,
        };
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        f.write_all(&self.0).map_err(io)?;
        f.sync_all().map_err(io)
    }

    /// Reads a key file. Refuses one that is not a regular file of exactly 32 bytes, or that
    /// group or others may read or write: a key anyone can read is a key that leaks.
    pub fn load(path: &Path) -> Result<Self> {
        let bad = |message: String| Error::Key {
            path: path.to_owned(),
            message,
        };
        let mut f = File::open(path).map_err(|e| bad(e.to_string()))?;
        let meta = f.metadata().map_err(|e| bad(e.to_string()))?;
        if !meta.is_file() {
            return Err(bad("not a regular file".into()));
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(bad(format!(
                "mode {mode:04o} lets group or others at it; chmod 600 it"
            )));
        }
        if meta.size() != KEY_LEN as u64 {
            return Err(bad(format!(
                "expected {KEY_LEN} bytes, found {}",
                meta.size()
            )));
        }
        let mut k = [0u8; KEY_LEN];
        f.read_exact(&mut k).map_err(|e| bad(e.to_string()))?;
        Ok(DigestKey(k))
    }

    /// The key's bytes, as input to a key derivation with a label of its own (the Admin
    /// API's sealing key); never to be used directly, logged or stored.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// `HMAC-SHA256(key, "sparekey/v1" || user_id || 0x00 || code)`. Takes bytes so that the
    /// verifier can digest malformed input too and spend the same time on it.
    pub fn digest(&self, user: &UserId, code: &[u8]) -> [u8; 32] {
        // A 32-byte key is a valid HMAC key of any length, so this cannot fail.
        let mut mac =
            <HmacSha256 as KeyInit>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!());
        mac.update(DOMAIN_V1);
        mac.update(user.as_str().as_bytes());
        mac.update(&[0]);
        mac.update(code);
        mac.finalize().into_bytes().into()
    }

    /// A value that names the key without revealing it, `HMAC-SHA256(key,
    /// "sparekey/key-check/v1")` in hex: a store records it, so that a key file other than
    /// its own is refused instead of failing every code as wrong (and locking users out).
    pub fn check_value(&self) -> String {
        let mut mac =
            <HmacSha256 as KeyInit>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!());
        mac.update(KEY_CHECK_DOMAIN);
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

impl fmt::Debug for DigestKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DigestKey(<redacted>)")
    }
}

impl Drop for DigestKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_check_value_names_the_key() {
        let k1 = DigestKey::from_bytes([1; 32]);
        let k2 = DigestKey::from_bytes([2; 32]);
        assert_eq!(k1.check_value(), k1.check_value());
        assert_ne!(k1.check_value(), k2.check_value());
        assert_eq!(k1.check_value().len(), 64);
    }

    #[test]
    fn digest_depends_on_key_user_and_code() {
        let k1 = DigestKey::from_bytes([1; 32]);
        let k2 = DigestKey::from_bytes([2; 32]);
        let u1 = UserId::from_string("U1");
        let u2 = UserId::from_string("U2");
        let d = k1.digest(&u1, b"123456");
        assert_eq!(d, k1.digest(&u1, b"123456"));
        assert_ne!(d, k2.digest(&u1, b"123456"));
        assert_ne!(d, k1.digest(&u2, b"123456"));
        assert_ne!(d, k1.digest(&u1, b"123457"));
        // The separator keeps "U1" + "1..." apart from "U11" + "...".
        assert_ne!(
            k1.digest(&u1, b"1234567"),
            k1.digest(&UserId::from_string("U11"), b"234567")
        );
    }

    #[test]
    fn key_files_are_private_and_exact() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        let k = DigestKey::generate().unwrap();
        k.write_new(&p).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(k.write_new(&p).is_err(), "must not overwrite");
        let u = UserId::from_string("U");
        assert_eq!(
            DigestKey::load(&p).unwrap().digest(&u, b"1"),
            k.digest(&u, b"1")
        );

        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(
            DigestKey::load(&p)
                .unwrap_err()
                .to_string()
                .contains("0640")
        );
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&p, [0u8; 31]).unwrap();
        assert!(DigestKey::load(&p).unwrap_err().to_string().contains("31"));
        assert!(DigestKey::load(&dir.path().join("missing")).is_err());
    }
}
