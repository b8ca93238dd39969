//! Copying a whole store to another backend (`sparekey store copy`): users with their ids,
//! aliases, lockout and trash state, devices, code digests with their metadata, and the
//! audit log. Rows move as they are, through the same [`Tx`] methods every rule uses; no
//! code value exists at any point, and none is needed.

use super::{Store, Tx, UserFilter, audit};
use crate::audit::{AuditFilter, Context, outcome};
use crate::error::{Error, Result};
use crate::model::{LoginKey, UserId};

/// What a copy moved.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CopyReport {
    /// Users, trashed ones included.
    pub users: u64,
    /// Devices.
    pub devices: u64,
    /// Codes (digests and metadata), expired ones included.
    pub codes: u64,
    /// Audit events, before the one recording the copy.
    pub audit_events: u64,
    /// Admin API integration keys, with their sealed secrets (the key file is the same).
    pub admin_keys: u64,
}

impl Store {
    /// Copies everything in this store into `target`, in one write transaction there, and
    /// audits the copy in `target`. Refuses a target that holds any user, code or audit
    /// event, a target whose key differs (each digest is keyed, so no copied code could be
    /// checked), and one with another username normalisation (the login keys would not
    /// match).
    pub fn copy_to(&mut self, target: &mut Store, ctx: &Context) -> Result<CopyReport> {
        // Equal keys give equal digests; comparing digests never exposes either key.
        let probe = UserId::from_string("U0000000000000000000");
        if self.key.digest(&probe, b"sparekey/key-check")
            != target.key.digest(&probe, b"sparekey/key-check")
        {
            return Err(Error::Conflict(
                "the two stores' key files differ: copied codes could not be checked; give the target the source's key file".into(),
            ));
        }
        let n = self.policy.username_normalization;
        if target.policy.username_normalization != n {
            return Err(Error::Conflict(format!(
                "the source store's logins use username_normalization = \"{}\" but the target's config says \"{}\"",
                n.as_str(),
                target.policy.username_normalization.as_str()
            )));
        }
        let (users, devices, codes, events, admin_keys) = self.read(|tx, _| {
            let mut admin_keys = Vec::new();
            for k in tx.admin_keys()? {
                admin_keys.extend(tx.admin_key(&k.ikey)?);
            }
            Ok((
                tx.list_users(&UserFilter::default())?,
                tx.all_devices()?,
                tx.all_codes()?,
                tx.audit(&AuditFilter::default())?,
                admin_keys,
            ))
        })?;
        target.write_then(true, ctx, |b| {
            let (tx, env, ctx) = b.parts();
            refuse_non_empty(tx)?;
            for u in &users {
                let mut keys: Vec<LoginKey> = Vec::with_capacity(u.aliases.len() + 1);
                for k in u.login_keys(n) {
                    if !keys.contains(&k) {
                        keys.push(k);
                    }
                }
                tx.insert_user(u, &keys)?;
            }
            for d in &devices {
                tx.insert_device(d)?;
            }
            for c in &codes {
                tx.insert_code(c)?;
            }
            tx.import_audit(&events)?;
            for (key, sealed) in &admin_keys {
                tx.insert_admin_key(key, sealed)?;
            }
            let report = CopyReport {
                users: users.len() as u64,
                devices: devices.len() as u64,
                codes: codes.len() as u64,
                audit_events: events.len() as u64,
                admin_keys: admin_keys.len() as u64,
            };
            let detail = format!(
                "users={} devices={} codes={} audit_events={} admin_keys={}",
                report.users, report.devices, report.codes, report.audit_events, report.admin_keys
            );
            audit(
                tx,
                env,
                ctx,
                "store.copy",
                None,
                None,
                outcome::OK,
                None,
                Some(detail),
            )?;
            Ok(report)
        })
    }
}

fn refuse_non_empty(tx: &mut dyn Tx) -> Result<()> {
    let users = tx.list_users(&UserFilter::default())?.len();
    let codes = tx.all_codes()?.len();
    let events = tx
        .audit(&AuditFilter {
            limit: Some(1),
            ..AuditFilter::default()
        })?
        .len();
    if users + codes + events > 0 {
        return Err(Error::Conflict(format!(
            "the target store is not empty ({users} users, {codes} codes{}); copy only into a new store",
            if events > 0 { ", audit events" } else { "" }
        )));
    }
    Ok(())
}
