//! The store: a backend trait with one transaction type, and every rule of the model
//! written once on top of it, so that each backend only moves rows.
//!
//! Every public operation runs in one write transaction and appends its audit event in
//! that same transaction: an action is either done and audited, or neither.

mod admin_keys;
mod copy;
mod log_sync;
pub(crate) mod postgres;
mod sqlite;

pub use admin_keys::{AdminKey, NewAdminKey, Role, SecretKey};
pub use copy::CopyReport;
pub use log_sync::LogSync;
pub use postgres::PostgresBackend;
pub use sqlite::SqliteBackend;

use std::path::Path;
use std::sync::Arc;

use subtle::ConstantTimeEq;

use crate::audit::{AuditEvent, AuditFilter, Context, outcome, sanitize};
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, Location, Policy};
use crate::digest::{DigestKey, SCHEME_V1};
use crate::error::{Error, Result};
use crate::model::{
    CodeId, CodeInfo, CodeRecord, Device, DeviceId, DeviceKind, LoginKey, MAX_ALIASES,
    Normalization, Status, User, UserId, Username, check_text,
};
use crate::passcode::{self, Passcode};
use crate::random;
use crate::verify::{self, Account, Verdict};

/// At most this many codes per generation (as Duo).
pub const MAX_CODES_PER_CALL: usize = 10;
/// At most this many live codes per user (as Duo).
pub const MAX_CODES_PER_USER: usize = 100;
/// Longest validity of a temporary OTP (as OneLogin): 72 hours.
pub const MAX_TEMP_VALID_SECS: u64 = 72 * 3600;
/// Longest validity of any code: ten years. Longer is a typo, or "never" (0).
pub const MAX_VALID_SECS: u64 = 10 * 365 * 86_400;
/// Largest reuse count (0 is unlimited).
pub const MAX_REUSE_COUNT: u32 = 1_000_000;

/// A storage backend: hands out transactions.
pub trait Backend: Send + std::fmt::Debug {
    /// Starts a write transaction in which check and consume cannot interleave with
    /// another writer's: SQLite holds the store's write lock from the first statement
    /// (`BEGIN IMMEDIATE`); PostgreSQL locks each user's row as [`Tx::user`] reads it.
    fn begin(&mut self) -> Result<Box<dyn Tx + '_>>;
    /// Starts a read-only transaction: one consistent snapshot.
    fn begin_read(&mut self) -> Result<Box<dyn Tx + '_>>;
    /// The normalisation the store's login keys were made with, if recorded.
    fn normalization(&mut self) -> Result<Option<Normalization>>;
    /// Records the normalisation of a new store.
    fn set_normalization(&mut self, n: Normalization) -> Result<()>;
    /// The key's check value the store recorded ([`DigestKey::check_value`]), if any.
    fn key_check(&mut self) -> Result<Option<String>>;
    /// Records the key's check value, unless one is recorded already (first writer wins).
    fn set_key_check(&mut self, value: &str) -> Result<()>;
    /// Housekeeping after a purge (SQLite: fold the write-ahead log into the database).
    fn maintain(&mut self) -> Result<()>;
    /// Stops this connection from checkpointing its log as it grows, for a server whose
    /// writer must not stall on it; another connection must then call [`Backend::checkpoint`].
    fn defer_checkpoints(&mut self) -> Result<()> {
        Ok(())
    }
    /// Folds what it can of the log into the database without waiting for anyone, and
    /// says how long the log is, in pages (0 where there is none).
    fn checkpoint(&mut self) -> Result<u64> {
        Ok(0)
    }
    /// Keeps the log short, for a process that opens the store for one operation: the
    /// first connection to open a store reads its whole log back.
    fn keep_log_short(&mut self) -> Result<()> {
        Ok(())
    }
    /// For a writer that defers its checkpoints: copies what is left of the log into the
    /// database and has the next commit write the log from its start, without waiting for
    /// anyone.
    fn restart_log(&mut self) -> Result<()> {
        Ok(())
    }
    /// For a writer that syncs on another thread: commits stop waiting for the disk, and
    /// the returned [`LogSync`] makes them durable. `None`: commits are durable when they
    /// return, or were not asked to be.
    fn defer_log_sync(&mut self) -> Result<Option<LogSync>> {
        Ok(None)
    }
}

/// Which users to list.
#[derive(Clone, Debug, Default)]
pub struct UserFilter {
    /// Only users with this status.
    pub status: Option<Status>,
    /// Only users in the trash (`Some(true)`), only users not in it (`Some(false)`), or all.
    pub trashed: Option<bool>,
    /// Only locked-out users.
    pub locked: bool,
}

/// The user whose rows a verification reads, as [`Tx::seek_user`] found them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seek {
    /// The user the login key names or, for a key no login has, the user whose key comes
    /// next (read for the cost only, never matched against).
    pub user: User,
    /// Whether the key is one of the user's own.
    pub exact: bool,
    /// Whether the user has a device (is enrolled).
    pub enrolled: bool,
}

/// One transaction. Dropping it without [`Tx::commit`] rolls it back.
pub trait Tx {
    /// Makes every change durable.
    fn commit(self: Box<Self>) -> Result<()>;
    /// Opens a nested savepoint, so that one step of a batch can be undone alone.
    fn savepoint(&mut self) -> Result<()>;
    /// Keeps the changes since the last [`Tx::savepoint`].
    fn release_savepoint(&mut self) -> Result<()>;
    /// Undoes the changes since the last [`Tx::savepoint`] and closes it.
    fn rollback_savepoint(&mut self) -> Result<()>;
    /// The user a login key belongs to (trashed users included).
    fn user_id_by_login(&mut self, key: &LoginKey) -> Result<Option<UserId>>;
    /// Looks a login key up as [`Tx::user_id_by_login`] does, in the same single seek,
    /// and where no login has this key, answers with the user whose key comes next (the
    /// first key when none comes after): a real user whose rows a refusal of an unknown
    /// login then reads, so that it touches as many and as cold pages as a known user's.
    /// The `bool` says whether the key was found. By default, no neighbour: where reading
    /// a user locks their row (PostgreSQL), a stranger's unknown logins would otherwise
    /// hold real users' rows, wait on their logins and deadlock with batches that lock
    /// in order.
    fn user_id_by_login_or_next(&mut self, key: &LoginKey) -> Result<Option<(UserId, bool)>> {
        Ok(self.user_id_by_login(key)?.map(|id| (id, true)))
    }
    /// A user with their aliases. In a write transaction, a backend that lets writers run
    /// side by side (PostgreSQL) locks the user's row until commit. Every rule reads a user
    /// through this before it reads or changes anything of theirs, so two transactions on
    /// one user never interleave.
    fn user(&mut self, id: &UserId) -> Result<Option<User>>;
    /// [`Tx::user`] and [`Tx::device_count`] together, as a verification needs them: a
    /// backend may answer both in one statement. Devices go with their user, so an id
    /// no user has counts 0.
    fn user_and_device_count(&mut self, id: &UserId) -> Result<(Option<User>, u64)> {
        let user = self.user(id)?;
        Ok((user, self.device_count(id)?))
    }
    /// What a verification reads of the user a login key names:
    /// [`Tx::user_id_by_login_or_next`], then [`Tx::user_and_device_count`] of the user it
    /// answers (the next one's, for a key no login has), in one statement where a backend
    /// can. `None` where the seek finds no one.
    fn seek_user(&mut self, key: &LoginKey) -> Result<Option<Seek>> {
        let Some((id, exact)) = self.user_id_by_login_or_next(key)? else {
            return Ok(None);
        };
        let (user, devices) = self.user_and_device_count(&id)?;
        Ok(user.map(|user| Seek {
            user,
            exact,
            enrolled: devices > 0,
        }))
    }
    /// Locks, in one fixed order, the users these login keys belong to (unknown keys and
    /// `None`, a login that can be no key, are skipped), so that a batch that then reads
    /// them one by one cannot deadlock with another. A no-op where writers are serialised
    /// anyway (SQLite).
    fn lock_users(&mut self, keys: &[Option<LoginKey>]) -> Result<()> {
        let _ = keys;
        Ok(())
    }
    /// Inserts a user; `keys` are the login keys of the username then each alias.
    fn insert_user(&mut self, user: &User, keys: &[LoginKey]) -> Result<()>;
    /// Rewrites a user's fields and login keys.
    fn update_user(&mut self, user: &User, keys: &[LoginKey]) -> Result<()>;
    /// Writes only the fields verification changes (failures, lockout, last login).
    fn update_user_state(&mut self, user: &User) -> Result<()>;
    /// Counts a refused attempt on a login that names no user, where a known user's
    /// refusal writes their failure counter: a write of the same kind, so that the two take
    /// the same time. `stand_in` has an id no user has. By default, the same statement as
    /// [`Tx::update_user_state`] for it (it changes no row).
    fn count_unknown_attempt(&mut self, stand_in: &User) -> Result<()> {
        self.update_user_state(stand_in)
    }
    /// Removes a user with their logins, devices and codes.
    fn delete_user(&mut self, id: &UserId) -> Result<()>;
    /// Users matching a filter, by username.
    fn list_users(&mut self, filter: &UserFilter) -> Result<Vec<User>>;
    /// Users moved to the trash before `t`.
    fn trashed_before(&mut self, t: i64) -> Result<Vec<UserId>>;
    /// A user's devices.
    fn devices(&mut self, user: &UserId) -> Result<Vec<Device>>;
    /// Every user's devices, for copying a whole store.
    fn all_devices(&mut self) -> Result<Vec<Device>> {
        let mut all = Vec::new();
        for u in self.list_users(&UserFilter::default())? {
            all.extend(self.devices(&u.id)?);
        }
        Ok(all)
    }
    /// How many devices a user has.
    fn device_count(&mut self, user: &UserId) -> Result<u64>;
    /// Adds a device.
    fn insert_device(&mut self, device: &Device) -> Result<()>;
    /// Removes a user's device; false if there was none with that id.
    fn delete_device(&mut self, user: &UserId, id: &DeviceId) -> Result<bool>;
    /// A user's codes, expired ones included.
    fn codes(&mut self, user: &UserId) -> Result<Vec<CodeRecord>>;
    /// Every user's codes, oldest first.
    fn all_codes(&mut self) -> Result<Vec<CodeRecord>>;
    /// One code.
    fn code(&mut self, id: &CodeId) -> Result<Option<CodeRecord>>;
    /// Adds a code.
    fn insert_code(&mut self, code: &CodeRecord) -> Result<()>;
    /// Adds the codes of one generation (one user, the same terms), in order.
    fn insert_codes(&mut self, codes: &[CodeRecord]) -> Result<()> {
        for c in codes {
            self.insert_code(c)?;
        }
        Ok(())
    }
    /// Lowers a code's remaining uses. The store refuses to raise them.
    fn set_code_uses(&mut self, id: &CodeId, uses: u32) -> Result<()>;
    /// Removes a code; false if there was none.
    fn delete_code(&mut self, id: &CodeId) -> Result<bool>;
    /// Removes all of a user's codes; returns how many.
    fn delete_codes_of(&mut self, user: &UserId) -> Result<u64>;
    /// Removes codes expired at `now`, of one user or of all; returns how many.
    fn delete_expired_codes(&mut self, user: Option<&UserId>, now: i64) -> Result<u64>;
    /// Appends an audit event (its `id` is ignored).
    fn append_audit(&mut self, event: &AuditEvent) -> Result<()>;
    /// Appends one event per code: `event` (whose `code_id` is ignored) naming each of
    /// `codes` in turn, in order.
    fn append_code_events(&mut self, event: &AuditEvent, codes: &[CodeId]) -> Result<()> {
        let mut e = event.clone();
        for id in codes {
            e.code_id = Some(id.to_string());
            self.append_audit(&e)?;
        }
        Ok(())
    }
    /// Appends audit events copied from another store, in order. PostgreSQL keeps their
    /// ids; SQLite numbers them anew (in the same order), as it does every event.
    fn import_audit(&mut self, events: &[AuditEvent]) -> Result<()> {
        for e in events {
            self.append_audit(e)?;
        }
        Ok(())
    }
    /// Audit events matching a filter, oldest first.
    fn audit(&mut self, filter: &AuditFilter) -> Result<Vec<AuditEvent>>;
    /// Adds an Admin API integration key with its sealed secret.
    fn insert_admin_key(&mut self, key: &AdminKey, sealed_secret: &[u8]) -> Result<()>;
    /// An integration key (revoked or not) with its sealed secret.
    fn admin_key(&mut self, ikey: &str) -> Result<Option<(AdminKey, Vec<u8>)>>;
    /// Every integration key, revoked ones included, oldest first.
    fn admin_keys(&mut self) -> Result<Vec<AdminKey>>;
    /// Marks a live integration key revoked at `at`; false if there was none.
    fn revoke_admin_key(&mut self, ikey: &str, at: i64) -> Result<bool>;
}

/// What a transaction needs besides the rows: the key, the policy and the time.
#[derive(Debug)]
pub(crate) struct Env<'a> {
    pub key: &'a DigestKey,
    pub policy: &'a Policy,
    pub now: i64,
}

impl Env<'_> {
    pub fn normalization(&self) -> Normalization {
        self.policy.username_normalization
    }
}

/// One login attempt, for [`Store::verify_many`].
#[derive(Clone, Copy, Debug)]
pub struct Attempt<'a> {
    /// The login as the client sent it.
    pub login: &'a str,
    /// The code as the user typed it.
    pub passcode: &'a str,
    /// Who asks, and from where.
    pub ctx: &'a Context,
}

/// A new user's fields.
#[derive(Clone, Debug, Default)]
pub struct NewUser {
    /// Username.
    pub username: String,
    /// Aliases.
    pub aliases: Vec<String>,
    /// Full name.
    pub realname: Option<String>,
    /// Email.
    pub email: Option<String>,
    /// Notes.
    pub notes: Option<String>,
    /// Status (default active).
    pub status: Option<Status>,
}

/// Changes to a user; `None` leaves a field as it is, `Some("")` clears a text field.
#[derive(Clone, Debug, Default)]
pub struct UserUpdate {
    /// A new username.
    pub username: Option<String>,
    /// Replaces all aliases.
    pub aliases: Option<Vec<String>>,
    /// Aliases to add.
    pub add_aliases: Vec<String>,
    /// Aliases to remove.
    pub remove_aliases: Vec<String>,
    /// Full name.
    pub realname: Option<String>,
    /// Email.
    pub email: Option<String>,
    /// Notes.
    pub notes: Option<String>,
    /// Status.
    pub status: Option<Status>,
}

impl UserUpdate {
    /// Whether the update changes nothing.
    pub fn is_empty(&self) -> bool {
        self.username.is_none()
            && self.aliases.is_none()
            && self.add_aliases.is_empty()
            && self.remove_aliases.is_empty()
            && self.realname.is_none()
            && self.email.is_none()
            && self.notes.is_none()
            && self.status.is_none()
    }
}

/// What codes to issue.
#[derive(Clone, Debug)]
pub struct CodeRequest {
    /// How many random codes (1-10); ignored when `codes` is given.
    pub count: usize,
    /// Codes chosen by the admin (1-10, 6-20 digits each).
    pub codes: Vec<Passcode>,
    /// Uses per code; 0 is unlimited.
    pub reuse_count: u32,
    /// Seconds each code stays valid; 0 is forever.
    pub valid_secs: u64,
    /// Keep the user's existing codes instead of replacing them.
    pub preserve_existing: bool,
    /// Digits in each random code.
    pub length: usize,
}

impl Default for CodeRequest {
    /// The Duo Admin Panel's defaults: one code, one use, valid one hour, replacing.
    fn default() -> Self {
        CodeRequest {
            count: 1,
            codes: Vec::new(),
            reuse_count: 1,
            valid_secs: 3600,
            preserve_existing: false,
            length: passcode::GENERATED_LEN,
        }
    }
}

/// A code just issued: the only moment its value exists outside the user's hands.
#[derive(Debug)]
pub struct IssuedCode {
    /// Its metadata.
    pub info: CodeInfo,
    /// The code.
    pub code: Passcode,
}

/// The result of a generation.
#[derive(Debug)]
pub struct Issued {
    /// The new codes.
    pub codes: Vec<IssuedCode>,
    /// How many existing codes were replaced.
    pub replaced: u64,
    /// Whether the user has a device; without one the codes cannot be used yet.
    pub enrolled: bool,
}

/// A user enrolled by [`Batch::enrol`].
#[derive(Debug)]
pub struct Enrolled {
    /// The new user.
    pub user: User,
    /// Their device.
    pub device: Device,
    /// Their codes.
    pub issued: Issued,
}

/// What `purge` removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PurgeReport {
    /// Expired codes dropped.
    pub expired_codes: u64,
    /// Users past trash retention removed, with their devices and codes.
    pub purged_users: Vec<String>,
}

/// The verifier's store: every operation of the model, on any backend.
#[derive(Debug)]
pub struct Store {
    backend: Box<dyn Backend>,
    key: DigestKey,
    policy: Policy,
    clock: Arc<dyn Clock>,
}

impl Store {
    /// Opens the store a config names: loads the key, opens (and migrates) the database,
    /// a SQLite file (`[store] path`) or a PostgreSQL database (`[store] url`).
    pub fn open(config: &Config) -> Result<Self> {
        let key = DigestKey::load(&config.store.key_file)?;
        let backend: Box<dyn Backend> = match config.location() {
            Location::Sqlite(_) => Box::new(SqliteBackend::open(&config.store)?),
            Location::Postgres(pg) => Box::new(PostgresBackend::open(pg, &config.store)?),
        };
        let mut store =
            Self::with_backend(backend, key, config.policy.clone(), Arc::new(SystemClock))?;
        store.bind_key(&config.store.key_file)?;
        Ok(store)
    }

    /// Ties the store to its key file: a store that recorded another key's check value is
    /// refused (every code would fail as wrong, and count towards lockout); one that
    /// recorded none (made before the check existed) records this key's, if it can be
    /// written.
    pub fn bind_key(&mut self, key_file: &Path) -> Result<()> {
        let mine = self.key.check_value();
        let recorded = match self.backend.key_check()? {
            Some(v) => v,
            None => {
                if self.backend.set_key_check(&mine).is_err() {
                    // A store that cannot be written cannot verify either; opening it for
                    // reading is still fine.
                    return Ok(());
                }
                self.backend.key_check()?.unwrap_or_default()
            }
        };
        if !bool::from(recorded.as_bytes().ct_eq(mine.as_bytes())) {
            return Err(Error::Key {
                path: key_file.to_owned(),
                message: "is not this store's key (its codes were digested under another \
                          one); put back the key file that was made with the store"
                    .into(),
            });
        }
        Ok(())
    }

    /// Creates what a config names: a new key file (mode 0600) and a new database with the
    /// current schema (a SQLite file, or the tables in an existing PostgreSQL database).
    /// Refuses to overwrite either.
    pub fn create(config: &Config) -> Result<Self> {
        DigestKey::generate()?.write_new(&config.store.key_file)?;
        let backend: Box<dyn Backend> = match config.location() {
            Location::Sqlite(_) => Box::new(SqliteBackend::create(&config.store)?),
            Location::Postgres(pg) => Box::new(PostgresBackend::create(pg, &config.store)?),
        };
        let key = DigestKey::load(&config.store.key_file)?;
        let mut store =
            Self::with_backend(backend, key, config.policy.clone(), Arc::new(SystemClock))?;
        store.bind_key(&config.store.key_file)?;
        Ok(store)
    }

    /// Opens the store a config names as the target of [`Store::copy_to`]: its key file
    /// must exist; its database is created if there is none yet (a new SQLite file, or the
    /// tables in an existing PostgreSQL database).
    pub fn open_copy_target(config: &Config) -> Result<Self> {
        let key = DigestKey::load(&config.store.key_file)?;
        let backend: Box<dyn Backend> = match config.location() {
            Location::Sqlite(path) if !path.exists() => {
                Box::new(SqliteBackend::create(&config.store)?)
            }
            Location::Sqlite(_) => Box::new(SqliteBackend::open(&config.store)?),
            Location::Postgres(pg) => Box::new(PostgresBackend::open_or_create(pg, &config.store)?),
        };
        let mut store =
            Self::with_backend(backend, key, config.policy.clone(), Arc::new(SystemClock))?;
        store.bind_key(&config.store.key_file)?;
        Ok(store)
    }

    /// A store over any backend, with an injected clock.
    pub fn with_backend(
        mut backend: Box<dyn Backend>,
        key: DigestKey,
        policy: Policy,
        clock: Arc<dyn Clock>,
    ) -> Result<Self> {
        let wanted = policy.username_normalization;
        match backend.normalization()? {
            None => backend.set_normalization(wanted)?,
            Some(n) if n == wanted => {}
            Some(n) => {
                return Err(Error::Store(format!(
                    "the store's logins were made with username_normalization = \"{}\" but the config says \"{}\"",
                    n.as_str(),
                    wanted.as_str()
                )));
            }
        }
        Ok(Store {
            backend,
            key,
            policy,
            clock,
        })
    }

    /// An in-memory SQLite store, for tests.
    pub fn in_memory(key: DigestKey, policy: Policy, clock: Arc<dyn Clock>) -> Result<Self> {
        Self::with_backend(Box::new(SqliteBackend::in_memory()?), key, policy, clock)
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Runs `f` in one write transaction: every operation of the [`Batch`] and its audit
    /// events commit together when `f` succeeds, or not at all.
    pub fn batch<R>(
        &mut self,
        ctx: &Context,
        f: impl FnOnce(&mut Batch<'_>) -> Result<R>,
    ) -> Result<R> {
        self.write_then(true, ctx, f)
    }

    /// Runs `f` in one write transaction; commits if it succeeds and `commit` is set, and
    /// rolls back otherwise (a dry run does every step and keeps none).
    pub(crate) fn write_then<R>(
        &mut self,
        commit: bool,
        ctx: &Context,
        f: impl FnOnce(&mut Batch<'_>) -> Result<R>,
    ) -> Result<R> {
        let env = Env {
            key: &self.key,
            policy: &self.policy,
            now: self.clock.now(),
        };
        let mut tx = self.backend.begin()?;
        let r = f(&mut Batch {
            tx: &mut *tx,
            env: &env,
            ctx,
        })?;
        if commit {
            tx.commit()?;
        }
        Ok(r)
    }

    /// Runs `f` in one read transaction.
    pub(crate) fn read<R>(
        &mut self,
        f: impl FnOnce(&mut dyn Tx, &Env<'_>) -> Result<R>,
    ) -> Result<R> {
        let env = Env {
            key: &self.key,
            policy: &self.policy,
            now: self.clock.now(),
        };
        let mut tx = self.backend.begin_read()?;
        f(&mut *tx, &env)
    }

    /// Decides one login attempt: the function every front end calls. It runs in one
    /// write transaction, compares against every live code of the user in constant time,
    /// consumes a use on success and audits the attempt. An `Err` means the store failed:
    /// the caller must deny.
    pub fn verify(&mut self, login: &str, passcode: &str, ctx: &Context) -> Result<Verdict> {
        self.batch(ctx, |b| b.verify(login, passcode))
    }

    /// Decides many attempts in one write transaction and one commit (group commit). A
    /// failure undoes that attempt alone and the others stand (the batch is then run
    /// again with each attempt in its own savepoint). The outer `Err` means the
    /// transaction itself failed and nothing was kept; an inner `Err` means that attempt
    /// failed. Either way the caller must deny it.
    pub fn verify_many(&mut self, attempts: &[Attempt<'_>]) -> Result<Vec<Result<Verdict>>> {
        self.verify_many_before_commit(attempts, &mut || {})
    }

    /// [`Store::verify_many`], with `before_commit` run just before its one commit. A
    /// writer that syncs on another thread ([`Store::defer_log_sync`]) may wait there for
    /// the last batch's sync: it verifies while the disk works, and commits (and writes
    /// the log) no more often than it syncs.
    pub fn verify_many_before_commit(
        &mut self,
        attempts: &[Attempt<'_>],
        before_commit: &mut dyn FnMut(),
    ) -> Result<Vec<Result<Verdict>>> {
        let env = Env {
            key: &self.key,
            policy: &self.policy,
            now: self.clock.now(),
        };
        // Each login's key, made once for the locks and the verification.
        let keys: Vec<Option<LoginKey>> = attempts
            .iter()
            .map(|a| LoginKey::from_login(a.login, env.normalization()))
            .collect();
        // Nearly every batch fails nowhere: run it without a savepoint per attempt (two
        // statements each, and a copy of every page an attempt first changes). If an
        // attempt fails, undo the whole transaction and run the batch again, each attempt
        // in its own savepoint. Verification depends only on the store and `env`, so the
        // second run decides as the first did, up to the failure.
        {
            let mut tx = self.backend.begin()?;
            tx.lock_users(&keys)?;
            let mut out = Vec::with_capacity(attempts.len());
            for (a, key) in attempts.iter().zip(&keys) {
                match verify::verify_in(&mut *tx, &env, a.login, key.as_ref(), a.passcode, a.ctx) {
                    Ok(v) => out.push(Ok(v)),
                    Err(_) => break,
                }
            }
            if out.len() == attempts.len() {
                before_commit();
                tx.commit()?;
                return Ok(out);
            }
        }
        let mut tx = self.backend.begin()?;
        tx.lock_users(&keys)?;
        let mut out = Vec::with_capacity(attempts.len());
        for (a, key) in attempts.iter().zip(&keys) {
            tx.savepoint()?;
            match verify::verify_in(&mut *tx, &env, a.login, key.as_ref(), a.passcode, a.ctx) {
                Ok(v) => {
                    tx.release_savepoint()?;
                    out.push(Ok(v));
                }
                Err(e) => {
                    tx.rollback_savepoint()?;
                    out.push(Err(e));
                }
            }
        }
        before_commit();
        tx.commit()?;
        Ok(out)
    }

    /// Finds a user by username, alias or id, trashed users included.
    pub fn find_user(&mut self, name: &str) -> Result<User> {
        self.read(|tx, env| find(tx, env, name))
    }

    /// Where the account a login names stands (unknown, trashed, disabled, locked out,
    /// bypass or active), by the same rules as [`Store::verify`]. Reads only.
    pub fn account(&mut self, login: &str) -> Result<Account> {
        self.read(|tx, env| verify::account_in(tx, env, login))
    }

    /// Lists users.
    pub fn list_users(&mut self, filter: &UserFilter) -> Result<Vec<User>> {
        self.read(|tx, _| tx.list_users(filter))
    }

    /// Adds a user.
    pub fn add_user(&mut self, new: NewUser, ctx: &Context) -> Result<User> {
        self.batch(ctx, |b| b.add_user(new))
    }

    /// Changes a user's names, details or status.
    pub fn update_user(&mut self, name: &str, update: UserUpdate, ctx: &Context) -> Result<User> {
        self.batch(ctx, |b| b.update_user(name, update).map(|(u, _)| u))
    }

    /// Moves a user to the trash.
    pub fn trash_user(&mut self, name: &str, ctx: &Context) -> Result<User> {
        self.batch(ctx, |b| b.trash_user(name))
    }

    /// Brings a user back from the trash.
    pub fn restore_user(&mut self, name: &str, ctx: &Context) -> Result<User> {
        self.batch(ctx, |b| b.restore_user(name))
    }

    /// Removes a user now, with their devices and codes.
    pub fn purge_user(&mut self, name: &str, ctx: &Context) -> Result<User> {
        self.batch(ctx, |b| b.purge_user(name))
    }

    /// Clears a lockout and the failure counter.
    pub fn unlock_user(&mut self, name: &str, ctx: &Context) -> Result<User> {
        self.batch(ctx, |b| b.unlock_user(name))
    }

    /// Enrols a device.
    pub fn add_device(
        &mut self,
        name: &str,
        kind: DeviceKind,
        label: Option<String>,
        ctx: &Context,
    ) -> Result<Device> {
        self.batch(ctx, |b| b.add_device(name, kind, label))
    }

    /// A user's devices.
    pub fn list_devices(&mut self, name: &str) -> Result<Vec<Device>> {
        self.read(|tx, env| {
            let user = find(tx, env, name)?;
            tx.devices(&user.id)
        })
    }

    /// Removes a device.
    pub fn remove_device(&mut self, name: &str, device: &str, ctx: &Context) -> Result<()> {
        self.batch(ctx, |b| b.remove_device(name, device))
    }

    /// Issues bypass codes.
    pub fn generate_codes(
        &mut self,
        name: &str,
        req: CodeRequest,
        ctx: &Context,
    ) -> Result<Issued> {
        self.batch(ctx, |b| b.generate_codes(name, &req))
    }

    /// Issues an 8-digit temporary OTP; see [`Batch::temp_code`].
    pub fn temp_code(
        &mut self,
        name: &str,
        valid_secs: u64,
        reusable: bool,
        ctx: &Context,
    ) -> Result<IssuedCode> {
        self.batch(ctx, |b| b.temp_code(name, valid_secs, reusable))
    }

    /// Codes' metadata: one user's, or everyone's. Expired codes are left out.
    pub fn list_codes(&mut self, name: Option<&str>) -> Result<Vec<CodeInfo>> {
        self.read(|tx, env| {
            let codes = match name {
                Some(n) => {
                    let user = find(tx, env, n)?;
                    tx.codes(&user.id)?
                }
                None => tx.all_codes()?,
            };
            Ok(codes
                .iter()
                .filter(|c| !c.expired_at(env.now))
                .map(CodeRecord::info)
                .collect())
        })
    }

    /// Revokes one code.
    pub fn delete_code(&mut self, id: &str, ctx: &Context) -> Result<CodeInfo> {
        self.batch(ctx, |b| b.delete_code(id))
    }

    /// Drops expired codes and removes users past the trash retention.
    pub fn purge(&mut self, ctx: &Context) -> Result<PurgeReport> {
        let report = self.batch(ctx, |b| b.purge())?;
        self.backend.maintain()?;
        Ok(report)
    }

    /// Leaves checkpoints to another connection ([`Store::checkpoint`]): a server's writer
    /// then never stops to copy its log into the database in the middle of a batch.
    pub fn defer_checkpoints(&mut self) -> Result<()> {
        self.backend.defer_checkpoints()
    }

    /// For a server's writer that answers only after a sync run on another thread, so
    /// that it verifies the next batch while the disk works on the last: commits stop
    /// waiting for the disk (SQLite's `synchronous = NORMAL` on this connection, which
    /// keeps the store whole through a crash but may lose the last commits), and the
    /// returned [`LogSync`] makes them durable: a commit is on disk once a
    /// [`LogSync::sync`] begun after it returned has returned `Ok`. An answer must not
    /// leave before then.
    ///
    /// `None` where there is nothing to defer: a PostgreSQL commit is durable when it
    /// returns, and a store set to `synchronous = "normal"` was not asked to be.
    pub fn defer_log_sync(&mut self) -> Result<Option<LogSync>> {
        self.backend.defer_log_sync()
    }

    /// Folds what it can of the log into the database, waiting for nobody, and says how
    /// long the log is, in pages of 4 KiB (0 for a store without one).
    pub fn checkpoint(&mut self) -> Result<u64> {
        self.backend.checkpoint()
    }

    /// For a server's writer, between batches, after another connection's checkpoint:
    /// copies the little of the log that is left into the database and has the next
    /// commit write the log from its start again, so that the log file stops growing.
    /// Waits for nobody. Best effort: an error here changes nothing and may be ignored.
    pub fn restart_log(&mut self) -> Result<()> {
        self.backend.restart_log()
    }

    /// For a process that opens the store for one login and exits (the PAM module): a
    /// SQLite log longer than about 400 KiB is folded into the database and truncated, if
    /// nobody else is busy, because the first connection to open a store reads and
    /// checksums the whole log back, and a PAM login is usually that first connection.
    /// Best effort: an error here changes nothing and may be ignored.
    pub fn keep_log_short(&mut self) -> Result<()> {
        self.backend.keep_log_short()
    }

    /// Lists audit events.
    pub fn audit(&mut self, filter: &AuditFilter) -> Result<Vec<AuditEvent>> {
        self.read(|tx, _| tx.audit(filter))
    }
}

/// Operations inside one write transaction, each audited under the batch's context.
/// [`Store`]'s methods run one of these each; [`Store::batch`] runs many, for bulk work.
pub struct Batch<'a> {
    tx: &'a mut dyn Tx,
    env: &'a Env<'a>,
    ctx: &'a Context,
}

impl std::fmt::Debug for Batch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("actor", &self.ctx.actor)
            .field("now", &self.env.now)
            .finish()
    }
}

impl Batch<'_> {
    fn audit(
        &mut self,
        action: &str,
        user: Option<&User>,
        code: Option<&CodeId>,
        reason: Option<&str>,
        detail: Option<String>,
    ) -> Result<()> {
        audit(
            self.tx,
            self.env,
            self.ctx,
            action,
            user,
            code,
            outcome::OK,
            reason.map(str::to_owned),
            detail,
        )
    }

    /// See [`Store::verify`].
    pub fn verify(&mut self, login: &str, passcode: &str) -> Result<Verdict> {
        let key = LoginKey::from_login(login, self.env.normalization());
        verify::verify_in(self.tx, self.env, login, key.as_ref(), passcode, self.ctx)
    }

    /// Finds a user by username, alias or id, trashed users included.
    pub fn find_user(&mut self, name: &str) -> Result<User> {
        find(self.tx, self.env, name)
    }

    /// Adds a user.
    pub fn add_user(&mut self, new: NewUser) -> Result<User> {
        self.insert_new_user(new, &mut random::Pool::new())
    }

    /// Checks, inserts and audits a new user.
    fn insert_new_user(&mut self, new: NewUser, pool: &mut random::Pool) -> Result<User> {
        let username = Username::parse(&new.username)?;
        let aliases = parse_names(&new.aliases)?;
        let keys = check_names(self.tx, self.env, &username, &aliases, None)?;
        let user = User {
            id: UserId::from_string(random::id_from(pool, 'U')?),
            username,
            aliases,
            realname: check_text("realname", new.realname)?,
            email: check_text("email", new.email)?,
            notes: check_text("notes", new.notes)?,
            status: new.status.unwrap_or(Status::Active),
            lockout: None,
            failed_attempts: 0,
            created_at: self.env.now,
            last_login: None,
            trashed_at: None,
        };
        self.tx.insert_user(&user, &keys)?;
        self.audit("user.add", Some(&user), None, None, None)?;
        Ok(user)
    }

    /// Changes a user; returns the user and the names of the fields that changed.
    pub fn update_user(&mut self, name: &str, up: UserUpdate) -> Result<(User, Vec<&'static str>)> {
        if up.is_empty() {
            return Err(Error::invalid("update", "nothing to change"));
        }
        let mut user = find(self.tx, self.env, name)?;
        let before = user.clone();
        if let Some(u) = up.username {
            user.username = Username::parse(&u)?;
        }
        if let Some(a) = up.aliases {
            user.aliases = parse_names(&a)?;
        }
        let n = self.env.normalization();
        for r in parse_names(&up.remove_aliases)? {
            let len = user.aliases.len();
            user.aliases.retain(|a| a.key(n) != r.key(n));
            if user.aliases.len() == len {
                return Err(Error::NotFound(format!(
                    "alias {r} of user {}",
                    user.username
                )));
            }
        }
        user.aliases.extend(parse_names(&up.add_aliases)?);
        if let Some(v) = up.realname {
            user.realname = check_text("realname", Some(v))?;
        }
        if let Some(v) = up.email {
            user.email = check_text("email", Some(v))?;
        }
        if let Some(v) = up.notes {
            user.notes = check_text("notes", Some(v))?;
        }
        if let Some(s) = up.status {
            user.status = s;
        }
        let changed: Vec<&'static str> = [
            ("username", before.username != user.username),
            ("aliases", before.aliases != user.aliases),
            ("realname", before.realname != user.realname),
            ("email", before.email != user.email),
            ("notes", before.notes != user.notes),
            ("status", before.status != user.status),
        ]
        .into_iter()
        .filter_map(|(name, differs)| differs.then_some(name))
        .collect();
        if !changed.is_empty() {
            let keys = check_names(
                self.tx,
                self.env,
                &user.username,
                &user.aliases,
                Some(&user.id),
            )?;
            self.tx.update_user(&user, &keys)?;
            self.audit(
                "user.update",
                Some(&user),
                None,
                None,
                Some(changed.join(",")),
            )?;
        }
        Ok((user, changed))
    }

    /// Moves a user to the trash: they cannot log in until restored, and are purged after
    /// the retention period. Their names stay taken meanwhile.
    pub fn trash_user(&mut self, name: &str) -> Result<User> {
        let mut user = find(self.tx, self.env, name)?;
        if user.trashed_at.is_some() {
            return Err(Error::Conflict(format!(
                "user {} is already in the trash",
                user.username
            )));
        }
        user.trashed_at = Some(self.env.now);
        self.tx.update_user_state(&user)?;
        self.audit("user.delete", Some(&user), None, None, None)?;
        Ok(user)
    }

    /// Brings a user back from the trash with their devices and codes.
    pub fn restore_user(&mut self, name: &str) -> Result<User> {
        let mut user = find(self.tx, self.env, name)?;
        if user.trashed_at.is_none() {
            return Err(Error::Conflict(format!(
                "user {} is not in the trash",
                user.username
            )));
        }
        user.trashed_at = None;
        self.tx.update_user_state(&user)?;
        self.audit("user.restore", Some(&user), None, None, None)?;
        Ok(user)
    }

    /// Removes a user now, with their devices and codes.
    pub fn purge_user(&mut self, name: &str) -> Result<User> {
        let user = find(self.tx, self.env, name)?;
        self.tx.delete_user(&user.id)?;
        self.audit("user.purge", Some(&user), None, None, None)?;
        Ok(user)
    }

    /// Clears a lockout and the failure counter.
    pub fn unlock_user(&mut self, name: &str) -> Result<User> {
        let mut user = find(self.tx, self.env, name)?;
        let was = user.lockout.take();
        user.failed_attempts = 0;
        self.tx.update_user_state(&user)?;
        let detail = if was.is_some() {
            "was locked out"
        } else {
            "was not locked out"
        };
        self.audit("user.unlock", Some(&user), None, None, Some(detail.into()))?;
        Ok(user)
    }

    /// Enrols a device.
    pub fn add_device(
        &mut self,
        name: &str,
        kind: DeviceKind,
        label: Option<String>,
    ) -> Result<Device> {
        let label = check_text("name", label)?;
        let user = find_live(self.tx, self.env, name)?;
        let device = Device {
            id: DeviceId::generate()?,
            user_id: user.id.clone(),
            kind,
            name: label,
            created_at: self.env.now,
        };
        self.tx.insert_device(&device)?;
        self.audit_device_add(&user, &device)?;
        Ok(device)
    }

    fn audit_device_add(&mut self, user: &User, device: &Device) -> Result<()> {
        self.audit(
            "device.add",
            Some(user),
            None,
            None,
            Some(format!("device={} kind={}", device.id, device.kind)),
        )
    }

    /// Removes a device.
    pub fn remove_device(&mut self, name: &str, device: &str) -> Result<()> {
        let user = find(self.tx, self.env, name)?;
        let id = DeviceId::from_string(device);
        if !self.tx.delete_device(&user.id, &id)? {
            return Err(Error::NotFound(format!(
                "device {} of user {}",
                sanitize(device, 64),
                user.username
            )));
        }
        self.audit(
            "device.remove",
            Some(&user),
            None,
            None,
            Some(format!("device={id}")),
        )
    }

    /// Issues bypass codes for a user who is not in the trash. With `preserve_existing`,
    /// the cap and duplicate checks cover old and new codes together and nothing is
    /// written unless all pass; otherwise the user's codes are replaced.
    pub fn generate_codes(&mut self, name: &str, req: &CodeRequest) -> Result<Issued> {
        check_request(req)?;
        let user = find_live(self.tx, self.env, name)?;
        let mut pool = random::Pool::new();
        let issued = issue(
            self.tx,
            self.env,
            &user,
            req,
            &self.ctx.actor,
            &mut pool,
            None,
        )?;
        self.audit_generation(&user, req, &issued)?;
        Ok(issued)
    }

    /// One `code.generate` event per code issued, each naming its code by id.
    fn audit_generation(&mut self, user: &User, req: &CodeRequest, issued: &Issued) -> Result<()> {
        let detail = format!(
            "count={} custom={} reuse_count={} valid_secs={} preserve_existing={} replaced={}",
            issued.codes.len(),
            !req.codes.is_empty(),
            req.reuse_count,
            req.valid_secs,
            req.preserve_existing,
            issued.replaced
        );
        let template = event(
            self.env,
            self.ctx,
            "code.generate",
            Some(user),
            None,
            outcome::OK,
            None,
            Some(detail),
        );
        let ids: Vec<CodeId> = issued.codes.iter().map(|c| c.info.id.clone()).collect();
        self.tx.append_code_events(&template, &ids)
    }

    /// Adds a user with one device and issues their first codes: the same rows and the
    /// same audit events (`user.add`, `device.add`, one `code.generate` per code) as
    /// [`Batch::add_user`], [`Batch::add_device`] and [`Batch::generate_codes`] in turn,
    /// without finding the new user again by name or asking a brand-new user for
    /// expired codes, codes to replace or devices. For bulk enrolment.
    pub fn enrol(
        &mut self,
        new: NewUser,
        kind: DeviceKind,
        label: Option<String>,
        req: &CodeRequest,
    ) -> Result<Enrolled> {
        check_request(req)?;
        let label = check_text("name", label)?;
        let mut pool = random::Pool::new();
        let user = self.insert_new_user(new, &mut pool)?;
        let device = Device {
            id: DeviceId::from_string(random::id_from(&mut pool, 'D')?),
            user_id: user.id.clone(),
            kind,
            name: label,
            created_at: self.env.now,
        };
        self.tx.insert_device(&device)?;
        self.audit_device_add(&user, &device)?;
        let issued = issue(
            self.tx,
            self.env,
            &user,
            req,
            &self.ctx.actor,
            &mut pool,
            Some(true),
        )?;
        self.audit_generation(&user, req, &issued)?;
        Ok(Enrolled {
            user,
            device,
            issued,
        })
    }

    /// Issues an 8-digit temporary OTP (OneLogin's semantics): valid at most 72 hours,
    /// one use or, if `reusable`, any number within its validity. It keeps existing codes.
    pub fn temp_code(&mut self, name: &str, valid_secs: u64, reusable: bool) -> Result<IssuedCode> {
        if valid_secs == 0 || valid_secs > MAX_TEMP_VALID_SECS {
            return Err(Error::invalid(
                "valid-for",
                "must be more than 0 and at most 72h",
            ));
        }
        let req = CodeRequest {
            count: 1,
            codes: Vec::new(),
            reuse_count: if reusable { 0 } else { 1 },
            valid_secs,
            preserve_existing: true,
            length: passcode::TEMP_LEN,
        };
        let mut issued = self.generate_codes(name, &req)?;
        issued
            .codes
            .pop()
            .ok_or_else(|| Error::Store("no code was issued".into()))
    }

    /// Revokes one code.
    pub fn delete_code(&mut self, id: &str) -> Result<CodeInfo> {
        let id = CodeId::from_string(id);
        let code = self
            .tx
            .code(&id)?
            .ok_or_else(|| Error::NotFound(format!("code {}", sanitize(id.as_str(), 64))))?;
        self.tx.delete_code(&id)?;
        let user = self.tx.user(&code.user_id)?;
        self.audit("code.delete", user.as_ref(), Some(&id), None, None)?;
        Ok(code.info())
    }

    /// Drops expired codes and removes users past the trash retention.
    pub fn purge(&mut self) -> Result<PurgeReport> {
        let expired_codes = self.tx.delete_expired_codes(None, self.env.now)?;
        let cutoff = self.env.now - i64::from(self.env.policy.trash_retention_days) * 86_400;
        let mut purged_users = Vec::new();
        for id in self.tx.trashed_before(cutoff)? {
            let user = self.tx.user(&id)?;
            self.tx.delete_user(&id)?;
            self.audit(
                "user.purge",
                user.as_ref(),
                None,
                Some("trash_retention"),
                None,
            )?;
            purged_users.push(user.map_or_else(|| id.to_string(), |u| u.username.to_string()));
        }
        let detail = format!("expired_codes={expired_codes} users={}", purged_users.len());
        self.audit("purge", None, None, None, Some(detail))?;
        Ok(PurgeReport {
            expired_codes,
            purged_users,
        })
    }

    /// The username normalisation in force.
    pub fn normalization(&self) -> Normalization {
        self.env.normalization()
    }

    /// A user's devices.
    pub fn devices(&mut self, user: &User) -> Result<Vec<Device>> {
        self.tx.devices(&user.id)
    }

    /// The transaction and environment, for crate-internal operations (import).
    pub(crate) fn parts(&mut self) -> (&mut dyn Tx, &Env<'_>, &Context) {
        (self.tx, self.env, self.ctx)
    }
}

/// Finds a user by login or id, trashed users included.
pub(crate) fn find(tx: &mut dyn Tx, env: &Env<'_>, name: &str) -> Result<User> {
    let not_found = || Error::NotFound(format!("user {}", sanitize(name, 64)));
    let key = match Username::parse(name) {
        Ok(u) => u.key(env.normalization()),
        // A name that could never exist is a usage error, not a user who is missing.
        Err(e) => return Err(e),
    };
    let id = tx.user_id_by_login(&key)?;
    let id = match id {
        Some(id) => id,
        None if UserId::looks_like(name) => UserId::from_string(name),
        None => return Err(not_found()),
    };
    tx.user(&id)?.ok_or_else(not_found)
}

/// Finds a user who is not in the trash.
fn find_live(tx: &mut dyn Tx, env: &Env<'_>, name: &str) -> Result<User> {
    let user = find(tx, env, name)?;
    if user.trashed_at.is_some() {
        return Err(Error::Conflict(format!(
            "user {} is in the trash; restore them first",
            user.username
        )));
    }
    Ok(user)
}

/// Checks a user's names: at most [`MAX_ALIASES`] aliases, none written twice, and no
/// key held by another user. Returns the distinct keys: two names of one user that
/// normalise alike ("alice" and "alice@example.com" under `simple`) share one.
pub(crate) fn check_names(
    tx: &mut dyn Tx,
    env: &Env<'_>,
    username: &Username,
    aliases: &[Username],
    self_id: Option<&UserId>,
) -> Result<Vec<LoginKey>> {
    if aliases.len() > MAX_ALIASES {
        return Err(Error::Limit(format!(
            "at most {MAX_ALIASES} aliases per user"
        )));
    }
    for (i, a) in aliases.iter().enumerate() {
        if aliases[..i].contains(a) || a == username {
            return Err(Error::Conflict(format!("name {a} is given twice")));
        }
    }
    let mut keys: Vec<LoginKey> = Vec::with_capacity(aliases.len() + 1);
    for name in std::iter::once(username).chain(aliases) {
        let k = name.key(env.normalization());
        if keys.contains(&k) {
            continue;
        }
        if let Some(owner) = tx.user_id_by_login(&k)? {
            if Some(&owner) != self_id {
                let who = tx
                    .user(&owner)?
                    .map_or_else(|| owner.to_string(), |u| u.username.to_string());
                return Err(Error::Conflict(format!(
                    "name {name} is already used by user {who}"
                )));
            }
        }
        keys.push(k);
    }
    Ok(keys)
}

pub(crate) fn parse_names(names: &[String]) -> Result<Vec<Username>> {
    names.iter().map(|a| Username::parse(a)).collect()
}

fn check_request(req: &CodeRequest) -> Result<()> {
    if req.codes.is_empty() && !(1..=MAX_CODES_PER_CALL).contains(&req.count) {
        return Err(Error::invalid(
            "count",
            format!("must be 1 to {MAX_CODES_PER_CALL}"),
        ));
    }
    if req.codes.len() > MAX_CODES_PER_CALL {
        return Err(Error::Limit(format!(
            "at most {MAX_CODES_PER_CALL} codes per call"
        )));
    }
    if req.reuse_count > MAX_REUSE_COUNT {
        return Err(Error::invalid(
            "reuse-count",
            format!("must be at most {MAX_REUSE_COUNT} (0 is unlimited)"),
        ));
    }
    if req.valid_secs > MAX_VALID_SECS {
        return Err(Error::invalid(
            "valid-secs",
            format!("must be at most {MAX_VALID_SECS} (0 never expires)"),
        ));
    }
    if !(passcode::MIN_LEN..=passcode::MAX_LEN).contains(&req.length) {
        return Err(Error::invalid("length", "must be 6 to 20"));
    }
    Ok(())
}

/// Issues codes for a user who exists and is not in the trash. With
/// `preserve_existing`, the cap and duplicate checks cover old and new codes together and
/// nothing is written unless all pass; otherwise the user's codes are replaced.
/// `new_user` is `Some(enrolled)` for a user added in this same transaction, who has no
/// codes yet and whose devices are known, so the store need not be asked.
fn issue(
    tx: &mut dyn Tx,
    env: &Env<'_>,
    user: &User,
    req: &CodeRequest,
    actor: &str,
    pool: &mut random::Pool,
    new_user: Option<bool>,
) -> Result<Issued> {
    if new_user.is_none() {
        tx.delete_expired_codes(Some(&user.id), env.now)?;
    }
    let existing = if req.preserve_existing && new_user.is_none() {
        tx.codes(&user.id)?
    } else {
        Vec::new()
    };
    let wanted = if req.codes.is_empty() {
        req.count
    } else {
        req.codes.len()
    };
    if existing.len() + wanted > MAX_CODES_PER_USER {
        return Err(Error::Limit(format!(
            "user {} has {} active codes; {wanted} more would pass the limit of {MAX_CODES_PER_USER}",
            user.username,
            existing.len()
        )));
    }
    let mut taken: Vec<[u8; 32]> = existing.iter().map(|c| c.digest).collect();
    let mut fresh: Vec<(Passcode, [u8; 32])> = Vec::with_capacity(wanted);
    if req.codes.is_empty() {
        while fresh.len() < wanted {
            let code = Passcode::generate_from(pool, req.length)?;
            let d = env.key.digest(&user.id, code.expose().as_bytes());
            // A random collision with a live code is about one in a billion; draw again.
            if !taken.contains(&d) {
                taken.push(d);
                fresh.push((code, d));
            }
        }
    } else {
        for (i, code) in req.codes.iter().enumerate() {
            let d = env.key.digest(&user.id, code.expose().as_bytes());
            if taken.contains(&d) {
                // Never repeat the code; its position is enough to find it.
                return Err(Error::Conflict(format!(
                    "code #{} duplicates {} of user {}",
                    i + 1,
                    if taken[existing.len()..].contains(&d) {
                        "another code in this request"
                    } else {
                        "an active code"
                    },
                    user.username
                )));
            }
            taken.push(d);
            fresh.push((code.clone(), d));
        }
    }
    let replaced = if req.preserve_existing || new_user.is_some() {
        0
    } else {
        tx.delete_codes_of(&user.id)?
    };
    let expires_at = (req.valid_secs > 0).then(|| env.now.saturating_add(req.valid_secs as i64));
    let uses_remaining = (req.reuse_count > 0).then_some(req.reuse_count);
    let mut records = Vec::with_capacity(fresh.len());
    for (_, digest) in &fresh {
        records.push(CodeRecord {
            id: CodeId::from_string(random::id_from(pool, 'C')?),
            user_id: user.id.clone(),
            digest: *digest,
            scheme: SCHEME_V1,
            created_at: env.now,
            created_by: actor.to_owned(),
            expires_at,
            uses_remaining,
            reuse_count: req.reuse_count,
        });
    }
    tx.insert_codes(&records)?;
    let codes = records
        .iter()
        .zip(fresh)
        .map(|(rec, (code, _))| IssuedCode {
            info: rec.info(),
            code,
        })
        .collect();
    let enrolled = match new_user {
        Some(enrolled) => enrolled,
        None => tx.device_count(&user.id)? > 0,
    };
    Ok(Issued {
        codes,
        replaced,
        enrolled,
    })
}

/// Appends an audit event for `ctx`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn audit(
    tx: &mut dyn Tx,
    env: &Env<'_>,
    ctx: &Context,
    action: &str,
    user: Option<&User>,
    code: Option<&CodeId>,
    outcome: &str,
    reason: Option<String>,
    detail: Option<String>,
) -> Result<()> {
    tx.append_audit(&event(
        env, ctx, action, user, code, outcome, reason, detail,
    ))
}

/// An audit event for `ctx`, not yet appended.
#[allow(clippy::too_many_arguments)]
pub(crate) fn event(
    env: &Env<'_>,
    ctx: &Context,
    action: &str,
    user: Option<&User>,
    code: Option<&CodeId>,
    outcome: &str,
    reason: Option<String>,
    detail: Option<String>,
) -> AuditEvent {
    AuditEvent {
        id: 0,
        time: env.now,
        actor: ctx.actor.clone(),
        action: action.to_owned(),
        // `as_str`, not `to_string`: the formatting machinery cost more than the copy.
        user_id: user.map(|u| u.id.as_str().to_owned()),
        username: user.map(|u| u.username.as_str().to_owned()),
        code_id: code.map(|c| c.as_str().to_owned()),
        outcome: outcome.to_owned(),
        reason,
        source: ctx.source.clone(),
        detail,
    }
}

#[cfg(test)]
mod tests;
