//! Integration keys for the Duo-compatible Admin API: an integration key (`ikey`, public,
//! names the key), a secret key (`skey`, signs requests), a name that is the audit's actor,
//! and a role.
//!
//! Checking a request's signature needs the secret itself, so it cannot be stored as a
//! digest the way codes are. It is stored *sealed*: ChaCha20-Poly1305 under a key derived
//! with HKDF-SHA256 from the key file's key and a label of its own, with the integration
//! key as associated data (a sealed secret moved to another row does not open). The
//! database alone, or a backup of it, reveals no secret; the secret is shown once, when the
//! key is created.

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;
use serde::Serialize;
use std::fmt;
use std::str::FromStr;
use zeroize::Zeroize;

use super::{Store, Tx};
use crate::audit::{Context, outcome, sanitize};
use crate::digest::DigestKey;
use crate::error::{Error, Result};
use crate::model::{Device, DeviceId, DeviceKind, check_text};

/// The HKDF label of the sealing key: distinct from every other use of the key file's key.
const SEAL_LABEL: &[u8] = b"sparekey/admin-api-secret-seal/v1";
/// Characters in an integration key (as Duo's: `DI` and 18 upper-case letters or digits).
pub const IKEY_LEN: usize = 20;
/// Characters in a secret key (as Duo's: 40 letters or digits).
pub const SKEY_LEN: usize = 40;
const NONCE_LEN: usize = 12;

/// What an integration key may do, by the Duo administrator role it acts as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything.
    Owner,
    /// Everything on users, devices and codes.
    Administrator,
    /// Users, devices and codes.
    UserManager,
    /// Read users and devices; issue and delete codes unless its settings forbid.
    HelpDesk,
}

impl Role {
    /// The role's name as written in the CLI and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Administrator => "administrator",
            Role::UserManager => "user_manager",
            Role::HelpDesk => "help_desk",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "owner" => Ok(Role::Owner),
            "administrator" => Ok(Role::Administrator),
            "user_manager" => Ok(Role::UserManager),
            "help_desk" => Ok(Role::HelpDesk),
            _ => Err(Error::invalid(
                "role",
                "must be owner, administrator, user_manager or help_desk",
            )),
        }
    }
}

/// An integration key's public part.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AdminKey {
    /// The integration key (`DI...`), sent in every request.
    pub ikey: String,
    /// The name the audit records as actor.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Help desk only: whether it may issue bypass codes at all.
    pub may_create_codes: bool,
    /// Help desk only: whether it may choose codes, counts, uses or validity (otherwise it
    /// issues with the defaults only).
    pub may_customise_codes: bool,
    /// When it was created.
    pub created_at: i64,
    /// When it was revoked; a revoked key signs nothing.
    pub revoked_at: Option<i64>,
}

/// A new integration key's settings.
#[derive(Clone, Debug)]
pub struct NewAdminKey {
    /// Its name: the audit's actor.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Help desk only; see [`AdminKey::may_create_codes`].
    pub may_create_codes: bool,
    /// Help desk only; see [`AdminKey::may_customise_codes`].
    pub may_customise_codes: bool,
}

/// A secret key. Its `Debug` is redacted and its memory wiped on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(String);

impl SecretKey {
    /// The secret, for signing or checking a signature, or to show once at creation.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

impl Drop for SecretKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// `len` characters drawn uniformly from `alphabet` (at most 64 characters), by rejection.
fn random_text(alphabet: &[u8], len: usize) -> Result<String> {
    let limit = 256 - 256 % alphabet.len();
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        crate::random::fill(&mut buf)?;
        for &b in &buf {
            if usize::from(b) < limit && out.len() < len {
                out.push(char::from(alphabet[usize::from(b) % alphabet.len()]));
            }
        }
        buf.zeroize();
    }
    Ok(out)
}

const UPPER_DIGITS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

fn sealing_key(key: &DigestKey) -> Result<LessSafeKey> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &[]).extract(key.bytes());
    let okm = prk
        .expand(&[SEAL_LABEL], &aead::CHACHA20_POLY1305)
        .map_err(|_| Error::Store("deriving the sealing key failed".into()))?;
    Ok(LessSafeKey::new(UnboundKey::from(okm)))
}

/// Seals a secret for the row of `ikey`: a random nonce, then the ciphertext and its tag.
pub(crate) fn seal(key: &DigestKey, ikey: &str, secret: &SecretKey) -> Result<Vec<u8>> {
    let mut nonce = [0u8; NONCE_LEN];
    crate::random::fill(&mut nonce)?;
    let mut data = secret.expose().as_bytes().to_vec();
    sealing_key(key)?
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(ikey.as_bytes()),
            &mut data,
        )
        .map_err(|_| Error::Store("sealing a secret key failed".into()))?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&data);
    Ok(out)
}

/// Opens what [`seal`] sealed for `ikey`; fails if the key file, the row or the bytes differ.
pub(crate) fn unseal(key: &DigestKey, ikey: &str, sealed: &[u8]) -> Result<SecretKey> {
    let bad = || {
        Error::Store(format!(
            "the secret of integration key {} does not open under this key file",
            sanitize(ikey, 64)
        ))
    };
    if sealed.len() < NONCE_LEN {
        return Err(bad());
    }
    let (nonce, rest) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| bad())?;
    let mut data = rest.to_vec();
    let plain = sealing_key(key)?
        .open_in_place(nonce, Aad::from(ikey.as_bytes()), &mut data)
        .map_err(|_| bad())?;
    let secret = String::from_utf8(plain.to_vec()).map_err(|_| bad());
    data.zeroize();
    secret.map(SecretKey)
}

fn find_live_key(tx: &mut dyn Tx, which: &str) -> Result<AdminKey> {
    tx.admin_keys()?
        .into_iter()
        .find(|k| k.revoked_at.is_none() && (k.ikey == which || k.name == which))
        .ok_or_else(|| Error::NotFound(format!("integration key {}", sanitize(which, 64))))
}

impl Store {
    /// Creates an integration key; the secret is returned here and never again.
    pub fn create_admin_key(
        &mut self,
        new: NewAdminKey,
        ctx: &Context,
    ) -> Result<(AdminKey, SecretKey)> {
        let name = check_text("name", Some(new.name))?
            .ok_or_else(|| Error::invalid("name", "must not be empty"))?;
        if name.chars().any(char::is_control) || name.len() > 128 {
            return Err(Error::invalid(
                "name",
                "must be at most 128 bytes, without control characters",
            ));
        }
        self.batch(ctx, |b| {
            let (tx, env, ctx) = b.parts();
            if tx
                .admin_keys()?
                .iter()
                .any(|k| k.revoked_at.is_none() && k.name == name)
            {
                return Err(Error::Conflict(format!(
                    "an integration key named {name} exists"
                )));
            }
            let ikey = format!("DI{}", random_text(UPPER_DIGITS, IKEY_LEN - 2)?);
            let secret = SecretKey(random_text(ALNUM, SKEY_LEN)?);
            let help_desk = new.role == Role::HelpDesk;
            let key = AdminKey {
                ikey: ikey.clone(),
                name: name.clone(),
                role: new.role,
                may_create_codes: !help_desk || new.may_create_codes,
                may_customise_codes: !help_desk || new.may_customise_codes,
                created_at: env.now,
                revoked_at: None,
            };
            tx.insert_admin_key(&key, &seal(env.key, &ikey, &secret)?)?;
            super::audit(
                tx,
                env,
                ctx,
                "admin_key.create",
                None,
                None,
                outcome::OK,
                None,
                Some(format!(
                    "ikey={ikey} name={name} role={} may_create_codes={} may_customise_codes={}",
                    key.role, key.may_create_codes, key.may_customise_codes
                )),
            )?;
            Ok((key, secret))
        })
    }

    /// Every integration key, revoked ones included, oldest first.
    pub fn list_admin_keys(&mut self) -> Result<Vec<AdminKey>> {
        self.read(|tx, _| tx.admin_keys())
    }

    /// Revokes a live integration key named by its ikey or name.
    pub fn revoke_admin_key(&mut self, which: &str, ctx: &Context) -> Result<AdminKey> {
        self.batch(ctx, |b| {
            let (tx, env, ctx) = b.parts();
            let mut key = find_live_key(tx, which)?;
            tx.revoke_admin_key(&key.ikey, env.now)?;
            key.revoked_at = Some(env.now);
            super::audit(
                tx,
                env,
                ctx,
                "admin_key.revoke",
                None,
                None,
                outcome::OK,
                None,
                Some(format!("ikey={} name={}", key.ikey, key.name)),
            )?;
            Ok(key)
        })
    }

    /// A live integration key and its unsealed secret, for checking a request's
    /// signature; `None` if there is no such key or it was revoked.
    pub fn admin_key_secret(&mut self, ikey: &str) -> Result<Option<(AdminKey, SecretKey)>> {
        self.read(|tx, env| match tx.admin_key(ikey)? {
            Some((key, sealed)) if key.revoked_at.is_none() => {
                let secret = unseal(env.key, &key.ikey, &sealed)?;
                Ok(Some((key, secret)))
            }
            _ => Ok(None),
        })
    }
}

impl Store {
    /// Audits one Admin API call (reads and refusals included), under the calling key's
    /// name or, for a call that was refused before a key was known, the server's.
    pub fn record_api_call(
        &mut self,
        ctx: &Context,
        ok: bool,
        reason: Option<&str>,
        detail: String,
    ) -> Result<()> {
        self.batch(ctx, |b| {
            let (tx, env, ctx) = b.parts();
            let outcome = if ok { outcome::OK } else { outcome::REJECT };
            super::audit(
                tx,
                env,
                ctx,
                "admin_api.call",
                None,
                None,
                outcome,
                reason.map(str::to_owned),
                Some(detail),
            )
        })
    }

    /// Enrols a device under an id chosen beforehand (the Admin API hands out a phone's
    /// id when the phone is created, before it is attached to a user).
    pub fn add_device_with_id(
        &mut self,
        name: &str,
        id: &str,
        kind: DeviceKind,
        label: Option<String>,
        ctx: &Context,
    ) -> Result<Device> {
        if !DeviceId::looks_like(id) {
            return Err(Error::invalid("phone_id", "not a device id"));
        }
        let label = check_text("name", label)?;
        self.batch(ctx, |b| {
            let user = b.find_user(name)?;
            if user.trashed_at.is_some() {
                return Err(Error::Conflict(format!(
                    "user {} is in the trash; restore them first",
                    user.username
                )));
            }
            let (tx, env, ctx) = b.parts();
            let device = Device {
                id: DeviceId::from_string(id),
                user_id: user.id.clone(),
                kind,
                name: label,
                created_at: env.now,
            };
            tx.insert_device(&device)?;
            super::audit(
                tx,
                env,
                ctx,
                "device.add",
                Some(&user),
                None,
                outcome::OK,
                None,
                Some(format!("device={} kind={kind}", device.id)),
            )?;
            Ok(device)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_with_their_key_file_and_row() {
        let key = DigestKey::from_bytes([1; 32]);
        let secret = SecretKey(random_text(ALNUM, SKEY_LEN).unwrap());
        let sealed = seal(&key, "DIAAAA", &secret).unwrap();
        assert!(
            !sealed
                .windows(SKEY_LEN)
                .any(|w| w == secret.expose().as_bytes()),
            "the secret is not in the sealed bytes"
        );
        assert_eq!(unseal(&key, "DIAAAA", &sealed).unwrap(), secret);
        assert!(unseal(&DigestKey::from_bytes([2; 32]), "DIAAAA", &sealed).is_err());
        assert!(unseal(&key, "DIBBBB", &sealed).is_err(), "bound to its row");
        let mut tampered = sealed.clone();
        tampered[NONCE_LEN + 1] ^= 1;
        assert!(unseal(&key, "DIAAAA", &tampered).is_err());
        assert!(unseal(&key, "DIAAAA", &sealed[..5]).is_err());
        assert_ne!(
            seal(&key, "DIAAAA", &secret).unwrap(),
            sealed,
            "a fresh nonce each time"
        );
        assert_eq!(format!("{secret:?}"), "SecretKey(<redacted>)");
    }

    #[test]
    fn a_store_copy_keeps_integration_keys_and_their_secrets() {
        let store = || {
            Store::in_memory(
                DigestKey::from_bytes([3; 32]),
                crate::config::Policy::default(),
                std::sync::Arc::new(crate::clock::ManualClock::at(1_800_000_000)),
            )
            .unwrap()
        };
        let ctx = Context::new("test");
        let (mut from, mut to) = (store(), store());
        let new = NewAdminKey {
            name: "sync".into(),
            role: Role::UserManager,
            may_create_codes: true,
            may_customise_codes: true,
        };
        let (key, secret) = from.create_admin_key(new, &ctx).unwrap();
        let report = from.copy_to(&mut to, &ctx).unwrap();
        assert_eq!(report.admin_keys, 1);
        let (copied, opened) = to.admin_key_secret(&key.ikey).unwrap().unwrap();
        assert_eq!((copied, opened), (key, secret));
    }

    #[test]
    fn keys_have_duo_shapes() {
        let s = random_text(ALNUM, SKEY_LEN).unwrap();
        assert_eq!(s.len(), SKEY_LEN);
        assert!(s.bytes().all(|b| b.is_ascii_alphanumeric()));
        let i = random_text(UPPER_DIGITS, 18).unwrap();
        assert!(
            i.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        );
    }
}
