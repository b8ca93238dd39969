//! The embedded SQLite backend: WAL, `BEGIN IMMEDIATE` for every write, `synchronous=FULL`
//! by default, append-only migrations, and files created 0600.

use rusqlite::{
    CachedStatement, Connection, OpenFlags, OptionalExtension, Row, Transaction,
    TransactionBehavior, params,
};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{AdminKey, Backend, LogSync, Seek, Tx, UserFilter};
use crate::audit::{AuditEvent, AuditFilter, Source};
use crate::config::{StoreConfig, Synchronous};
use crate::error::{Error, Result};
use crate::model::{
    CodeId, CodeRecord, Device, DeviceId, Lockout, LoginKey, Normalization, Status, User, UserId,
    Username,
};

/// The schema, one step per entry. Append only: a released step is never edited, because
/// stores in the field have already run it.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;

CREATE TABLE users (
    id              TEXT PRIMARY KEY,
    username        TEXT NOT NULL,
    realname        TEXT,
    email           TEXT,
    notes           TEXT,
    aliases         TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(aliases)),
    status          TEXT NOT NULL CHECK (status IN ('active', 'bypass', 'disabled')),
    lockout_reason  TEXT,
    lockout_since   INTEGER,
    failed_attempts INTEGER NOT NULL DEFAULT 0 CHECK (failed_attempts >= 0),
    created_at      INTEGER NOT NULL,
    last_login      INTEGER,
    trashed_at      INTEGER
) STRICT;
CREATE INDEX users_trashed ON users (trashed_at) WHERE trashed_at IS NOT NULL;

-- The normalised keys of usernames and aliases share one key space: a name is unique
-- across both, and two names of one user that normalise alike share a key.
CREATE TABLE logins (
    key     TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE
) STRICT;
CREATE INDEX logins_user ON logins (user_id);

CREATE TABLE devices (
    id         TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind       TEXT NOT NULL CHECK (kind IN ('phone', 'token', 'webauthn', 'other')),
    name       TEXT,
    created_at INTEGER NOT NULL
) STRICT;
CREATE INDEX devices_user ON devices (user_id);

-- A code is stored only as its keyed digest.
CREATE TABLE codes (
    id             TEXT PRIMARY KEY,
    user_id        TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    digest         BLOB NOT NULL CHECK (length(digest) = 32),
    scheme         INTEGER NOT NULL,
    created_at     INTEGER NOT NULL,
    created_by     TEXT NOT NULL,
    expires_at     INTEGER,
    uses_remaining INTEGER CHECK (uses_remaining IS NULL OR uses_remaining > 0),
    reuse_count    INTEGER NOT NULL CHECK (reuse_count >= 0),
    UNIQUE (user_id, digest)
) STRICT;

-- Nothing may extend a code: not its expiry, not its uses, not whose it is.
CREATE TRIGGER codes_never_extended BEFORE UPDATE ON codes
WHEN NEW.expires_at IS NOT OLD.expires_at
  OR NEW.user_id IS NOT OLD.user_id
  OR NEW.digest IS NOT OLD.digest
  OR NEW.reuse_count IS NOT OLD.reuse_count
  OR (OLD.uses_remaining IS NULL AND NEW.uses_remaining IS NOT NULL)
  OR (OLD.uses_remaining IS NOT NULL AND (NEW.uses_remaining IS NULL OR NEW.uses_remaining > OLD.uses_remaining))
BEGIN
    SELECT RAISE(ABORT, 'a code''s expiry and uses can never be extended');
END;

CREATE TABLE audit (
    id          INTEGER PRIMARY KEY,
    time        INTEGER NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    user_id     TEXT,
    username    TEXT,
    code_id     TEXT,
    outcome     TEXT NOT NULL,
    reason      TEXT,
    src_address TEXT,
    src_station TEXT,
    src_nas     TEXT,
    src_tty     TEXT,
    detail      TEXT
) STRICT;
CREATE INDEX audit_user ON audit (user_id) WHERE user_id IS NOT NULL;
CREATE INDEX audit_time ON audit (time);
"#,
    // Step 2. An index on the audit's user scattered one random page write over the log for
    // every verification; dropping it halves the pages a busy server writes. Listing one
    // user's events now walks the log from the newest (bounded by --since and --limit).
    r#"
DROP INDEX audit_user;
"#,
    // Step 3. Admin API integration keys. The secret is sealed under a key derived from the
    // key file's (store/admin_keys.rs), so this table alone reveals none.
    r#"
CREATE TABLE admin_keys (
    ikey                TEXT PRIMARY KEY,
    name                TEXT NOT NULL,
    role                TEXT NOT NULL
                        CHECK (role IN ('owner', 'administrator', 'user_manager', 'help_desk')),
    may_create_codes    INTEGER NOT NULL CHECK (may_create_codes IN (0, 1)),
    may_customise_codes INTEGER NOT NULL CHECK (may_customise_codes IN (0, 1)),
    sealed_secret       BLOB NOT NULL,
    created_at          INTEGER NOT NULL,
    revoked_at          INTEGER
) STRICT;
CREATE UNIQUE INDEX admin_keys_live_name ON admin_keys (name) WHERE revoked_at IS NULL;
"#,
    // Step 4. Users, logins, devices and codes kept in their key's B-tree (WITHOUT ROWID):
    // a verification reaches one B-tree per table instead of an index and then the table,
    // a user's codes sit together in one leaf, and a new code updates two B-trees (the
    // table, keyed by user and digest, and the id index) instead of three. The audit's
    // time index goes: it was a B-tree insert per event, while listing by time walks
    // from the newest event, as listing by user already does.
    //
    // The new tables are filled while the old ones still stand, and the new children
    // point at `users_new`: dropping the old `users` then cascades into nothing, and
    // renaming `users_new` to `users` rewrites the children's references.
    r#"
CREATE TABLE users_new (
    id              TEXT PRIMARY KEY NOT NULL,
    username        TEXT NOT NULL,
    realname        TEXT,
    email           TEXT,
    notes           TEXT,
    aliases         TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(aliases)),
    status          TEXT NOT NULL CHECK (status IN ('active', 'bypass', 'disabled')),
    lockout_reason  TEXT,
    lockout_since   INTEGER,
    failed_attempts INTEGER NOT NULL DEFAULT 0 CHECK (failed_attempts >= 0),
    created_at      INTEGER NOT NULL,
    last_login      INTEGER,
    trashed_at      INTEGER
) STRICT, WITHOUT ROWID;
INSERT INTO users_new (id, username, realname, email, notes, aliases, status,
                       lockout_reason, lockout_since, failed_attempts, created_at,
                       last_login, trashed_at)
SELECT id, username, realname, email, notes, aliases, status, lockout_reason,
       lockout_since, failed_attempts, created_at, last_login, trashed_at
FROM users;

CREATE TABLE logins_new (
    key     TEXT PRIMARY KEY NOT NULL,
    user_id TEXT NOT NULL REFERENCES users_new (id) ON DELETE CASCADE
) STRICT, WITHOUT ROWID;
INSERT INTO logins_new (key, user_id) SELECT key, user_id FROM logins;

CREATE TABLE devices_new (
    id         TEXT NOT NULL,
    user_id    TEXT NOT NULL REFERENCES users_new (id) ON DELETE CASCADE,
    kind       TEXT NOT NULL CHECK (kind IN ('phone', 'token', 'webauthn', 'other')),
    name       TEXT,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, id)
) STRICT, WITHOUT ROWID;
INSERT INTO devices_new (id, user_id, kind, name, created_at)
SELECT id, user_id, kind, name, created_at FROM devices;

CREATE TABLE codes_new (
    id             TEXT NOT NULL UNIQUE,
    user_id        TEXT NOT NULL REFERENCES users_new (id) ON DELETE CASCADE,
    digest         BLOB NOT NULL CHECK (length(digest) = 32),
    scheme         INTEGER NOT NULL,
    created_at     INTEGER NOT NULL,
    created_by     TEXT NOT NULL,
    expires_at     INTEGER,
    uses_remaining INTEGER CHECK (uses_remaining IS NULL OR uses_remaining > 0),
    reuse_count    INTEGER NOT NULL CHECK (reuse_count >= 0),
    PRIMARY KEY (user_id, digest)
) STRICT, WITHOUT ROWID;
INSERT INTO codes_new (id, user_id, digest, scheme, created_at, created_by, expires_at,
                       uses_remaining, reuse_count)
SELECT id, user_id, digest, scheme, created_at, created_by, expires_at, uses_remaining,
       reuse_count
FROM codes;

DROP TABLE codes;
DROP TABLE devices;
DROP TABLE logins;
DROP TABLE users;
ALTER TABLE users_new RENAME TO users;
ALTER TABLE logins_new RENAME TO logins;
ALTER TABLE devices_new RENAME TO devices;
ALTER TABLE codes_new RENAME TO codes;
CREATE INDEX users_trashed ON users (trashed_at) WHERE trashed_at IS NOT NULL;
CREATE INDEX logins_user ON logins (user_id);

-- Nothing may extend a code: not its expiry, not its uses, not whose it is.
CREATE TRIGGER codes_never_extended BEFORE UPDATE ON codes
WHEN NEW.expires_at IS NOT OLD.expires_at
  OR NEW.user_id IS NOT OLD.user_id
  OR NEW.digest IS NOT OLD.digest
  OR NEW.reuse_count IS NOT OLD.reuse_count
  OR (OLD.uses_remaining IS NULL AND NEW.uses_remaining IS NOT NULL)
  OR (OLD.uses_remaining IS NOT NULL AND (NEW.uses_remaining IS NULL OR NEW.uses_remaining > OLD.uses_remaining))
BEGIN
    SELECT RAISE(ABORT, 'a code''s expiry and uses can never be extended');
END;

DROP INDEX audit_time;
"#,
];

/// A SQLite database file (or an in-memory one, for tests).
#[derive(Debug)]
pub struct SqliteBackend {
    conn: Connection,
    path: PathBuf,
}

impl SqliteBackend {
    /// Creates a new database file (mode 0600) with the current schema; refuses to
    /// overwrite an existing file.
    pub fn create(config: &StoreConfig) -> Result<Self> {
        let path = &config.path;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?;
        Self::connect(config, true)
    }

    /// Opens an existing database and brings its schema up to date. A missing file is an
    /// error: a store that vanished must not be silently replaced by an empty one. Nor
    /// must one that was emptied (or a database that is not a store): a file with no
    /// schema is refused, and only [`SqliteBackend::create`] lays one down.
    pub fn open(config: &StoreConfig) -> Result<Self> {
        Self::connect(config, false)
    }

    fn connect(config: &StoreConfig, new: bool) -> Result<Self> {
        let path = &config.path;
        let err = |e: rusqlite::Error| store_error(path, e);
        if !path.exists() {
            return Err(Error::Store(format!(
                "{}: no such file (create it with `sparekey init`)",
                path.display()
            )));
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(err)?;
        conn.busy_timeout(Duration::from_millis(u64::from(config.busy_timeout_ms)))
            .map_err(err)?;
        // Before anything below writes to it (setting WAL mode does).
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(err)?;
        if version == 0 && !new {
            return Err(Error::Store(format!(
                "{}: not a sparekey store (empty, or another program's database); \
                 restore it from a backup, or create one with `sparekey init`",
                path.display()
            )));
        }
        // Short-lived processes (a PAM login, the CLI) are often the store's only
        // connection: closing it would checkpoint the WAL into the database and delete it,
        // three more fsyncs per login. The WAL is checkpointed as it grows instead (every
        // 1000 pages, at a commit).
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
            true,
        )
        .map_err(err)?;
        let sync = match config.synchronous {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        };
        // A page cache of up to 64 MiB: a long-lived server keeps its working set in memory
        // instead of reading pages in again. It is a limit, not an allocation, so
        // short-lived processes pay nothing for it. No reads through mmap: a database file
        // truncated by someone else while mapped kills the whole process with SIGBUS at
        // the next touch of a page past the new end, where read() returns an error that is
        // denied and logged.
        conn.execute_batch(&format!(
            "PRAGMA foreign_keys = ON; PRAGMA synchronous = {sync}; \
             PRAGMA cache_size = -65536; PRAGMA mmap_size = 0;"
        ))
        .map_err(err)?;
        // Every statement of the verification path stays prepared.
        conn.set_prepared_statement_cache_capacity(64);
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::Store(format!(
                "{}: cannot use WAL journal (got {mode})",
                path.display()
            )));
        }
        let mut b = SqliteBackend {
            conn,
            path: path.clone(),
        };
        b.migrate()?;
        Ok(b)
    }

    /// `PRAGMA wal_checkpoint(MODE)` with the busy timeout at zero for its duration: if
    /// another connection holds what the checkpoint needs, it fails at once rather than
    /// keep anyone waiting.
    fn checkpoint_without_waiting(&mut self, mode: &str) -> Result<()> {
        let wait: i64 = self
            .conn
            .query_row("PRAGMA busy_timeout", [], |r| r.get(0))?;
        self.conn.busy_timeout(std::time::Duration::ZERO)?;
        let done = self
            .conn
            .query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |_| Ok(()));
        self.conn
            .busy_timeout(std::time::Duration::from_millis(wait.max(0) as u64))?;
        done?;
        Ok(())
    }

    /// The log's path: the database's with `-wal` after it.
    fn log_path(&self) -> PathBuf {
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        PathBuf::from(wal)
    }

    /// A private in-memory database with the current schema.
    pub fn in_memory() -> Result<Self> {
        let conn = Connection::open_in_memory()?;
        conn.execute_batch("PRAGMA foreign_keys = ON;")?;
        let mut b = SqliteBackend {
            conn,
            path: PathBuf::from(":memory:"),
        };
        b.migrate()?;
        Ok(b)
    }

    fn migrate(&mut self) -> Result<()> {
        let path = self.path.clone();
        let err = |e: rusqlite::Error| store_error(&path, e);
        let current: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(err)?;
        let target = MIGRATIONS.len() as i64;
        if current == target {
            return Ok(());
        }
        if current > target {
            return Err(Error::Store(format!(
                "{}: schema version {current} is newer than this program's ({target})",
                path.display()
            )));
        }
        let tx = Transaction::new(&mut self.conn, TransactionBehavior::Immediate).map_err(err)?;
        // Another process may have migrated while this one waited for the lock.
        let current: i64 = tx
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(err)?;
        for (i, step) in MIGRATIONS.iter().enumerate().skip(current.max(0) as usize) {
            tx.execute_batch(step).map_err(err)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)
                .map_err(err)?;
        }
        tx.commit().map_err(err)
    }

    /// Checks the database file's structure (`PRAGMA integrity_check`).
    pub fn integrity_check(&mut self) -> Result<()> {
        let r: String = self
            .conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        if r == "ok" {
            Ok(())
        } else {
            Err(Error::Store(format!(
                "{}: integrity check: {r}",
                self.path.display()
            )))
        }
    }
}

/// A SQLite error on `path`, with what SQLite's own words leave out: for "unable to open"
/// and "readonly", why the file cannot be written (a read-only filesystem, say); for
/// "locked", that another writer held the lock past the busy timeout.
fn store_error(path: &Path, e: rusqlite::Error) -> Error {
    use rusqlite::ErrorCode;
    let why = match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            format!("{e} (another writer held it longer than busy_timeout_ms)")
        }
        Some(ErrorCode::CannotOpen | ErrorCode::ReadOnly) => {
            match std::fs::OpenOptions::new().write(true).open(path) {
                Err(os) => format!("{e}: cannot write it: {os}"),
                Ok(_) => e.to_string(),
            }
        }
        _ => e.to_string(),
    };
    Error::Store(format!("{}: {why}", path.display()))
}

impl Backend for SqliteBackend {
    fn begin(&mut self) -> Result<Box<dyn Tx + '_>> {
        let tx = SqliteTx::new(&self.conn, TransactionBehavior::Immediate)
            .map_err(|e| store_error(&self.path, e))?;
        Ok(Box::new(tx))
    }

    fn begin_read(&mut self) -> Result<Box<dyn Tx + '_>> {
        let tx = SqliteTx::new(&self.conn, TransactionBehavior::Deferred)
            .map_err(|e| store_error(&self.path, e))?;
        Ok(Box::new(tx))
    }

    fn normalization(&mut self) -> Result<Option<Normalization>> {
        let v: Option<String> = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'username_normalization'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        match v.as_deref() {
            None => Ok(None),
            Some("simple") => Ok(Some(Normalization::Simple)),
            Some("none") => Ok(Some(Normalization::None)),
            Some(other) => Err(Error::Store(format!(
                "unknown username_normalization {other:?} in store"
            ))),
        }
    }

    fn defer_checkpoints(&mut self) -> Result<()> {
        self.conn
            .query_row("PRAGMA wal_autocheckpoint = 0", [], |_| Ok(()))?;
        Ok(())
    }

    fn checkpoint(&mut self) -> Result<u64> {
        // One row: busy, the log's length in frames, how many are copied back.
        let frames: i64 = self
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))?;
        Ok(frames.max(0) as u64)
    }

    fn keep_log_short(&mut self) -> Result<()> {
        // The first connection to open a store rebuilds the log's index by reading every
        // frame, and, having lost what the last process checkpointed, copies them all into
        // the database again without ever restarting the log. So a log past the limit is
        // checkpointed and truncated here, once; without waiting for anyone: if another
        // connection is busy, the log stays and the next process tries again.
        let long = std::fs::metadata(self.log_path()).is_ok_and(|m| m.len() > SHORT_LOG_BYTES);
        if !long {
            return Ok(());
        }
        self.checkpoint_without_waiting("TRUNCATE")
    }

    fn restart_log(&mut self) -> Result<()> {
        self.checkpoint_without_waiting("RESTART")
    }

    fn defer_log_sync(&mut self) -> Result<Option<LogSync>> {
        let level: i64 = self
            .conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))?;
        // 2 is FULL (and 3 EXTRA): a sync per commit. Below that, none was asked for; and
        // a database in memory has no log file.
        if level < 2 || self.conn.path().is_none_or(str::is_empty) {
            return Ok(None);
        }
        // The connection has had the log open since it switched to WAL; the descriptor is
        // taken before commits stop waiting, so that nothing is committed unsynced.
        let path = self.log_path();
        let file = std::fs::File::open(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        self.conn.execute_batch("PRAGMA synchronous = NORMAL")?;
        Ok(Some(LogSync::new(file, path)))
    }

    fn maintain(&mut self) -> Result<()> {
        // TRUNCATE empties the log, so that right after a purge the database file alone is
        // a complete copy. If another connection is reading, the checkpoint stops short
        // (it reports "busy") and the next purge finishes the job.
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }

    fn key_check(&mut self) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'key_check'", [], |r| {
                r.get(0)
            })
            .optional()?)
    }

    fn set_key_check(&mut self, value: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES ('key_check', ?1) ON CONFLICT (key) DO NOTHING",
            [value],
        )?;
        Ok(())
    }

    fn set_normalization(&mut self, n: Normalization) -> Result<()> {
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES ('username_normalization', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [n.as_str()],
        )?;
        Ok(())
    }
}

/// How long a log [`Backend::keep_log_short`] lets be: about a hundred pages.
const SHORT_LOG_BYTES: u64 = 400 << 10;

struct SqliteTx<'a> {
    /// The statements this transaction has run, held out of the connection's cache until
    /// it ends: a batch of verifications looks each one up there once, not once per
    /// attempt. Declared first, so that they are put back before the transaction ends.
    held: Vec<(&'static str, CachedStatement<'a>)>,
    tx: Transaction<'a>,
    conn: &'a Connection,
}

impl<'a> SqliteTx<'a> {
    fn new(conn: &'a Connection, behavior: TransactionBehavior) -> rusqlite::Result<Self> {
        Ok(SqliteTx {
            held: Vec::new(),
            tx: Transaction::new_unchecked(conn, behavior)?,
            conn,
        })
    }

    /// The prepared statement for `sql`, from those this transaction holds (found by the
    /// text's address: every statement is a constant) or else from the connection's cache.
    fn stmt(&mut self, sql: &'static str) -> rusqlite::Result<&mut CachedStatement<'a>> {
        let i = match self.held.iter().position(|(s, _)| std::ptr::eq(*s, sql)) {
            Some(i) => i,
            None => {
                self.held.push((sql, self.conn.prepare_cached(sql)?));
                self.held.len() - 1
            }
        };
        Ok(&mut self.held[i].1)
    }
}

// Column lists as macros, so that each statement's text is one `concat!` constant: a
// prepared-statement cache lookup then costs no `format!` on every call.
macro_rules! user_columns {
    () => {
        "id, username, realname, email, notes, status, lockout_reason, lockout_since, \
         failed_attempts, created_at, last_login, trashed_at, aliases"
    };
}
/// How many columns `user_columns!` names.
const USER_COLUMNS: usize = 13;
/// The login key `?1`, or the next one, or (past the last) the first: `key, user_id`.
/// Both arms walk the primary key in order (without ORDER BY, the planner may take the
/// covering index on user_id instead); the second runs only past the last key.
macro_rules! login_seek {
    () => {
        "SELECT key, user_id FROM (SELECT key, user_id FROM logins WHERE key >= ?1 ORDER BY key LIMIT 1) \
         UNION ALL \
         SELECT key, user_id FROM (SELECT key, user_id FROM logins ORDER BY key LIMIT 1) \
         LIMIT 1"
    };
}
macro_rules! code_columns {
    () => {
        "id, user_id, digest, scheme, created_at, created_by, expires_at, uses_remaining, \
         reuse_count"
    };
}
macro_rules! device_columns {
    () => {
        "id, user_id, kind, name, created_at"
    };
}
macro_rules! audit_columns {
    () => {
        "time, actor, action, user_id, username, code_id, outcome, reason, src_address, \
         src_station, src_nas, src_tty, detail"
    };
}
macro_rules! admin_key_columns {
    () => {
        "ikey, name, role, may_create_codes, may_customise_codes, created_at, revoked_at"
    };
}

/// Rows per multi-row `INSERT`: one generation's codes, or their audit events.
const MULTI_ROW_MAX: usize = super::MAX_CODES_PER_CALL;
/// Parameters a multi-row code insert binds once for all its rows.
const CODE_SHARED: usize = 7;
/// Parameters a multi-row audit insert binds once for all its rows.
const AUDIT_SHARED: usize = 12;

/// The texts of the multi-row inserts, for 1 to [`MULTI_ROW_MAX`] rows. What the rows
/// share is bound once, as `?1`..: the user, the terms, the actor and the detail.
struct MultiRowSql {
    codes: Vec<String>,
    audit: Vec<String>,
}

fn multi_row_sql() -> &'static MultiRowSql {
    static SQL: std::sync::OnceLock<MultiRowSql> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        let rows = |n: usize, row: &dyn Fn(usize) -> String| {
            (0..n).map(row).collect::<Vec<_>>().join(", ")
        };
        MultiRowSql {
            codes: (1..=MULTI_ROW_MAX)
                .map(|n| {
                    format!(
                        concat!("INSERT INTO codes (", code_columns!(), ") VALUES {}"),
                        rows(n, &|i| format!(
                            "(?{}, ?1, ?{}, ?2, ?3, ?4, ?5, ?6, ?7)",
                            CODE_SHARED + 1 + 2 * i,
                            CODE_SHARED + 2 + 2 * i
                        ))
                    )
                })
                .collect(),
            audit: (1..=MULTI_ROW_MAX)
                .map(|n| {
                    format!(
                        concat!("INSERT INTO audit (", audit_columns!(), ") VALUES {}"),
                        rows(n, &|i| format!(
                            "(?1, ?2, ?3, ?4, ?5, ?{}, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                            AUDIT_SHARED + 1 + i
                        ))
                    )
                })
                .collect(),
        }
    })
}

/// Whether two codes share what a multi-row insert binds once.
fn same_terms(a: &CodeRecord, b: &CodeRecord) -> bool {
    a.user_id == b.user_id
        && a.scheme == b.scheme
        && a.created_at == b.created_at
        && a.created_by == b.created_by
        && a.expires_at == b.expires_at
        && a.uses_remaining == b.uses_remaining
        && a.reuse_count == b.reuse_count
}

/// Turns a stored text column back into a typed value; a bad value is a corrupt store.
fn parsed<T: std::str::FromStr>(row: &Row<'_>, i: usize) -> rusqlite::Result<T> {
    let s = row.get_ref(i)?.as_str()?;
    s.parse().map_err(|_| {
        rusqlite::Error::InvalidColumnType(
            i,
            format!("unexpected value {s:?}"),
            rusqlite::types::Type::Text,
        )
    })
}

fn user_row(row: &Row<'_>) -> rusqlite::Result<User> {
    let username: String = row.get(1)?;
    let lockout = match (
        row.get::<_, Option<String>>(6)?,
        row.get::<_, Option<i64>>(7)?,
    ) {
        (Some(reason), Some(since)) => Some(Lockout { reason, since }),
        _ => None,
    };
    Ok(User {
        id: UserId::from_string(row.get::<_, String>(0)?),
        username: Username::parse(&username).map_err(|_| {
            rusqlite::Error::InvalidColumnType(1, "username".into(), rusqlite::types::Type::Text)
        })?,
        aliases: serde_json::from_str(&row.get::<_, String>(12)?).map_err(|_| {
            rusqlite::Error::InvalidColumnType(12, "aliases".into(), rusqlite::types::Type::Text)
        })?,
        realname: row.get(2)?,
        email: row.get(3)?,
        notes: row.get(4)?,
        status: parsed::<Status>(row, 5)?,
        lockout,
        failed_attempts: row.get(8)?,
        created_at: row.get(9)?,
        last_login: row.get(10)?,
        trashed_at: row.get(11)?,
    })
}

fn code_row(row: &Row<'_>) -> rusqlite::Result<CodeRecord> {
    let digest: [u8; 32] = row.get_ref(2)?.as_blob()?.try_into().map_err(|_| {
        rusqlite::Error::InvalidColumnType(2, "digest".into(), rusqlite::types::Type::Blob)
    })?;
    Ok(CodeRecord {
        id: CodeId::from_string(row.get::<_, String>(0)?),
        user_id: UserId::from_string(row.get::<_, String>(1)?),
        digest,
        scheme: row.get(3)?,
        created_at: row.get(4)?,
        created_by: row.get(5)?,
        expires_at: row.get(6)?,
        uses_remaining: row.get(7)?,
        reuse_count: row.get(8)?,
    })
}

fn device_row(row: &Row<'_>) -> rusqlite::Result<Device> {
    Ok(Device {
        id: DeviceId::from_string(row.get::<_, String>(0)?),
        user_id: UserId::from_string(row.get::<_, String>(1)?),
        kind: parsed(row, 2)?,
        name: row.get(3)?,
        created_at: row.get(4)?,
    })
}

fn audit_row(row: &Row<'_>) -> rusqlite::Result<AuditEvent> {
    Ok(AuditEvent {
        id: row.get(0)?,
        time: row.get(1)?,
        actor: row.get(2)?,
        action: row.get(3)?,
        user_id: row.get(4)?,
        username: row.get(5)?,
        code_id: row.get(6)?,
        outcome: row.get(7)?,
        reason: row.get(8)?,
        source: Source {
            address: row.get(9)?,
            station: row.get(10)?,
            nas: row.get(11)?,
            tty: row.get(12)?,
        },
        detail: row.get(13)?,
    })
}

impl SqliteTx<'_> {
    fn write_logins(&mut self, user: &User, keys: &[LoginKey]) -> Result<()> {
        let st = self.stmt("INSERT INTO logins (key, user_id) VALUES (?1, ?2)")?;
        for key in keys {
            st.execute(params![key.as_str(), user.id.as_str()])
                .map_err(|e| match e {
                    rusqlite::Error::SqliteFailure(f, _)
                        if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                    {
                        Error::Conflict(format!("name {} is already used", key.as_str()))
                    }
                    e => e.into(),
                })?;
        }
        Ok(())
    }
}

fn aliases_json(u: &User) -> Result<String> {
    serde_json::to_string(&u.aliases).map_err(|e| Error::Store(format!("encoding aliases: {e}")))
}

impl Tx for SqliteTx<'_> {
    fn commit(self: Box<Self>) -> Result<()> {
        let SqliteTx { held, tx, .. } = *self;
        drop(held);
        Ok(tx.commit()?)
    }

    fn savepoint(&mut self) -> Result<()> {
        self.stmt("SAVEPOINT attempt")?.execute([])?;
        Ok(())
    }

    fn release_savepoint(&mut self) -> Result<()> {
        self.stmt("RELEASE attempt")?.execute([])?;
        Ok(())
    }

    fn rollback_savepoint(&mut self) -> Result<()> {
        self.stmt("ROLLBACK TO attempt")?.execute([])?;
        self.stmt("RELEASE attempt")?.execute([])?;
        Ok(())
    }

    fn user_id_by_login(&mut self, key: &LoginKey) -> Result<Option<UserId>> {
        let st = self.stmt("SELECT user_id FROM logins WHERE key = ?1")?;
        Ok(st
            .query_row([key.as_str()], |r| r.get::<_, String>(0))
            .optional()?
            .map(UserId::from_string))
    }

    fn user_id_by_login_or_next(&mut self, key: &LoginKey) -> Result<Option<(UserId, bool)>> {
        let st = self.stmt(login_seek!())?;
        let found = st
            .query_row([key.as_str()], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })
            .optional()?;
        Ok(found.map(|(k, id)| (UserId::from_string(id), k == key.as_str())))
    }

    fn user(&mut self, id: &UserId) -> Result<Option<User>> {
        let st = self.stmt(concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE id = ?1"
        ))?;
        Ok(st.query_row([id.as_str()], user_row).optional()?)
    }

    fn user_and_device_count(&mut self, id: &UserId) -> Result<(Option<User>, u64)> {
        // One statement where a verification used to run two. A missing user has no
        // devices (they go with the user), so no row means a count of 0.
        let st = self.stmt(concat!(
            "SELECT ",
            user_columns!(),
            ", (SELECT count(*) FROM devices WHERE user_id = ?1) FROM users WHERE id = ?1"
        ))?;
        let found = st
            .query_row([id.as_str()], |r| {
                Ok((user_row(r)?, r.get::<_, i64>(USER_COLUMNS)?))
            })
            .optional()?;
        Ok(match found {
            Some((user, devices)) => (Some(user), devices.max(0) as u64),
            None => (None, 0),
        })
    }

    fn seek_user(&mut self, key: &LoginKey) -> Result<Option<Seek>> {
        // The seek of `user_id_by_login_or_next` joined with the read of
        // `user_and_device_count`: one statement where a verification ran two.
        let st = self.stmt(concat!(
            "SELECT ",
            user_columns!(),
            ", EXISTS (SELECT 1 FROM devices WHERE user_id = seek.user_id), seek.key = ?1 FROM (",
            login_seek!(),
            ") AS seek JOIN users ON users.id = seek.user_id"
        ))?;
        Ok(st
            .query_row([key.as_str()], |r| {
                Ok(Seek {
                    user: user_row(r)?,
                    enrolled: r.get(USER_COLUMNS)?,
                    exact: r.get(USER_COLUMNS + 1)?,
                })
            })
            .optional()?)
    }

    fn insert_user(&mut self, u: &User, keys: &[LoginKey]) -> Result<()> {
        let st = self.stmt(concat!(
            "INSERT INTO users (",
            user_columns!(),
            ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
        ))?;
        st.execute(params![
            u.id.as_str(),
            u.username.as_str(),
            u.realname,
            u.email,
            u.notes,
            u.status.as_str(),
            u.lockout.as_ref().map(|l| &l.reason),
            u.lockout.as_ref().map(|l| l.since),
            u.failed_attempts,
            u.created_at,
            u.last_login,
            u.trashed_at,
            aliases_json(u)?,
        ])?;
        self.write_logins(u, keys)
    }

    fn update_user(&mut self, u: &User, keys: &[LoginKey]) -> Result<()> {
        self.stmt(
                "UPDATE users SET username = ?2, realname = ?3, email = ?4, notes = ?5, status = ?6, aliases = ?7
                 WHERE id = ?1",
            )?
            .execute(params![
                u.id.as_str(),
                u.username.as_str(),
                u.realname,
                u.email,
                u.notes,
                u.status.as_str(),
                aliases_json(u)?
            ])?;
        self.stmt("DELETE FROM logins WHERE user_id = ?1")?
            .execute([u.id.as_str()])?;
        self.write_logins(u, keys)?;
        self.update_user_state(u)
    }

    fn update_user_state(&mut self, u: &User) -> Result<()> {
        let st = self.stmt(
            "UPDATE users SET lockout_reason = ?2, lockout_since = ?3, failed_attempts = ?4, last_login = ?5,
             trashed_at = ?6 WHERE id = ?1",
        )?;
        st.execute(params![
            u.id.as_str(),
            u.lockout.as_ref().map(|l| &l.reason),
            u.lockout.as_ref().map(|l| l.since),
            u.failed_attempts,
            u.last_login,
            u.trashed_at,
        ])?;
        Ok(())
    }

    fn count_unknown_attempt(&mut self, _stand_in: &User) -> Result<()> {
        // An UPDATE that finds no row writes no page, and the page a known user's refusal
        // writes into the log costs time at commit. A counter in `meta` (attempts on
        // logins that named no user) is one row changed, one page written, no migration.
        self.stmt(
            "INSERT INTO meta (key, value) VALUES ('unknown_login_attempts', '1')
                 ON CONFLICT (key) DO UPDATE SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT)",
        )?
        .execute([])?;
        Ok(())
    }

    fn delete_user(&mut self, id: &UserId) -> Result<()> {
        self.stmt("DELETE FROM users WHERE id = ?1")?
            .execute([id.as_str()])?;
        Ok(())
    }

    fn list_users(&mut self, f: &UserFilter) -> Result<Vec<User>> {
        let st = self.stmt(concat!(
            "SELECT ",
            user_columns!(),
            " FROM users
                 WHERE (?1 IS NULL OR status = ?1)
                   AND (?2 IS NULL OR (trashed_at IS NOT NULL) = ?2)
                   AND (?3 = 0 OR lockout_reason IS NOT NULL)
                 ORDER BY username, id"
        ))?;
        Ok(st
            .query_map(
                params![f.status.map(Status::as_str), f.trashed, f.locked],
                user_row,
            )?
            .collect::<rusqlite::Result<_>>()?)
    }

    fn trashed_before(&mut self, t: i64) -> Result<Vec<UserId>> {
        let st =
            self.stmt("SELECT id FROM users WHERE trashed_at IS NOT NULL AND trashed_at <= ?1")?;
        let ids = st
            .query_map([t], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(ids.into_iter().map(UserId::from_string).collect())
    }

    fn devices(&mut self, user: &UserId) -> Result<Vec<Device>> {
        // Sorted here for the reason given in `codes`.
        let st = self.stmt(concat!(
            "SELECT ",
            device_columns!(),
            " FROM devices WHERE user_id = ?1"
        ))?;
        let mut devices: Vec<Device> = st
            .query_map([user.as_str()], device_row)?
            .collect::<rusqlite::Result<_>>()?;
        devices.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(devices)
    }

    fn device_count(&mut self, user: &UserId) -> Result<u64> {
        let st = self.stmt("SELECT count(*) FROM devices WHERE user_id = ?1")?;
        Ok(st
            .query_row([user.as_str()], |r| r.get::<_, i64>(0))?
            .max(0) as u64)
    }

    fn insert_device(&mut self, d: &Device) -> Result<()> {
        let st = self.stmt(concat!(
            "INSERT INTO devices (",
            device_columns!(),
            ") VALUES (?1, ?2, ?3, ?4, ?5)"
        ))?;
        st.execute(params![
            d.id.as_str(),
            d.user_id.as_str(),
            d.kind.as_str(),
            d.name,
            d.created_at
        ])?;
        Ok(())
    }

    fn delete_device(&mut self, user: &UserId, id: &DeviceId) -> Result<bool> {
        let st = self.stmt("DELETE FROM devices WHERE user_id = ?1 AND id = ?2")?;
        Ok(st.execute([user.as_str(), id.as_str()])? > 0)
    }

    fn codes(&mut self, user: &UserId) -> Result<Vec<CodeRecord>> {
        // Sorted here, not in SQL: with an ORDER BY, this build of SQLite (STAT4) prepares
        // the statement again on every call, which was a quarter of a verification's time.
        let st = self.stmt(concat!(
            "SELECT ",
            code_columns!(),
            " FROM codes WHERE user_id = ?1"
        ))?;
        let mut codes: Vec<CodeRecord> = st
            .query_map([user.as_str()], code_row)?
            .collect::<rusqlite::Result<_>>()?;
        codes.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(codes)
    }

    fn all_codes(&mut self) -> Result<Vec<CodeRecord>> {
        let st = self.stmt(concat!(
            "SELECT ",
            code_columns!(),
            " FROM codes ORDER BY created_at, id"
        ))?;
        Ok(st
            .query_map([], code_row)?
            .collect::<rusqlite::Result<_>>()?)
    }

    fn code(&mut self, id: &CodeId) -> Result<Option<CodeRecord>> {
        let st = self.stmt(concat!(
            "SELECT ",
            code_columns!(),
            " FROM codes WHERE id = ?1"
        ))?;
        Ok(st.query_row([id.as_str()], code_row).optional()?)
    }

    fn insert_code(&mut self, c: &CodeRecord) -> Result<()> {
        let st = self.stmt(concat!(
            "INSERT INTO codes (",
            code_columns!(),
            ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
        ))?;
        st.execute(params![
            c.id.as_str(),
            c.user_id.as_str(),
            &c.digest[..],
            c.scheme,
            c.created_at,
            c.created_by,
            c.expires_at,
            c.uses_remaining,
            c.reuse_count,
        ])?;
        Ok(())
    }

    fn insert_codes(&mut self, codes: &[CodeRecord]) -> Result<()> {
        let Some(first) = codes.first() else {
            return Ok(());
        };
        if codes.iter().any(|c| !same_terms(c, first)) {
            for c in codes {
                self.insert_code(c)?;
            }
            return Ok(());
        }
        for chunk in codes.chunks(MULTI_ROW_MAX) {
            let st = self.stmt(&multi_row_sql().codes[chunk.len() - 1])?;
            st.raw_bind_parameter(1, first.user_id.as_str())?;
            st.raw_bind_parameter(2, first.scheme)?;
            st.raw_bind_parameter(3, first.created_at)?;
            st.raw_bind_parameter(4, &first.created_by)?;
            st.raw_bind_parameter(5, first.expires_at)?;
            st.raw_bind_parameter(6, first.uses_remaining)?;
            st.raw_bind_parameter(7, first.reuse_count)?;
            for (i, c) in chunk.iter().enumerate() {
                st.raw_bind_parameter(CODE_SHARED + 1 + 2 * i, c.id.as_str())?;
                st.raw_bind_parameter(CODE_SHARED + 2 + 2 * i, &c.digest[..])?;
            }
            st.raw_execute()?;
        }
        Ok(())
    }

    fn set_code_uses(&mut self, id: &CodeId, uses: u32) -> Result<()> {
        self.stmt("UPDATE codes SET uses_remaining = ?2 WHERE id = ?1")?
            .execute(params![id.as_str(), uses])?;
        Ok(())
    }

    fn delete_code(&mut self, id: &CodeId) -> Result<bool> {
        Ok(self
            .stmt("DELETE FROM codes WHERE id = ?1")?
            .execute([id.as_str()])?
            > 0)
    }

    fn delete_codes_of(&mut self, user: &UserId) -> Result<u64> {
        Ok(self
            .stmt("DELETE FROM codes WHERE user_id = ?1")?
            .execute([user.as_str()])? as u64)
    }

    fn delete_expired_codes(&mut self, user: Option<&UserId>, now: i64) -> Result<u64> {
        let n = match user {
            Some(u) => self.stmt("DELETE FROM codes WHERE user_id = ?1 AND expires_at IS NOT NULL AND expires_at <= ?2")?
                .execute(params![u.as_str(), now])?,
            None => self.stmt("DELETE FROM codes WHERE expires_at IS NOT NULL AND expires_at <= ?1")?
                .execute([now])?,
        };
        Ok(n as u64)
    }

    fn append_audit(&mut self, e: &AuditEvent) -> Result<()> {
        let st = self.stmt(
            "INSERT INTO audit (time, actor, action, user_id, username, code_id, outcome, reason,
                                src_address, src_station, src_nas, src_tty, detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        )?;
        st.execute(params![
            e.time,
            e.actor,
            e.action,
            e.user_id,
            e.username,
            e.code_id,
            e.outcome,
            e.reason,
            e.source.address,
            e.source.station,
            e.source.nas,
            e.source.tty,
            e.detail,
        ])?;
        Ok(())
    }

    fn append_code_events(&mut self, e: &AuditEvent, codes: &[CodeId]) -> Result<()> {
        for chunk in codes.chunks(MULTI_ROW_MAX) {
            let st = self.stmt(&multi_row_sql().audit[chunk.len() - 1])?;
            st.raw_bind_parameter(1, e.time)?;
            st.raw_bind_parameter(2, &e.actor)?;
            st.raw_bind_parameter(3, &e.action)?;
            st.raw_bind_parameter(4, &e.user_id)?;
            st.raw_bind_parameter(5, &e.username)?;
            st.raw_bind_parameter(6, &e.outcome)?;
            st.raw_bind_parameter(7, &e.reason)?;
            st.raw_bind_parameter(8, &e.source.address)?;
            st.raw_bind_parameter(9, &e.source.station)?;
            st.raw_bind_parameter(10, &e.source.nas)?;
            st.raw_bind_parameter(11, &e.source.tty)?;
            st.raw_bind_parameter(12, &e.detail)?;
            for (i, id) in chunk.iter().enumerate() {
                st.raw_bind_parameter(AUDIT_SHARED + 1 + i, id.as_str())?;
            }
            st.raw_execute()?;
        }
        Ok(())
    }

    fn audit(&mut self, f: &AuditFilter) -> Result<Vec<AuditEvent>> {
        let st = self.stmt(
            "SELECT * FROM (
                SELECT id, time, actor, action, user_id, username, code_id, outcome, reason,
                       src_address, src_station, src_nas, src_tty, detail
                FROM audit
                WHERE (?1 IS NULL OR user_id = ?1) AND (?2 IS NULL OR action = ?2)
                  AND (?3 IS NULL OR outcome = ?3) AND (?4 IS NULL OR actor = ?4)
                  AND (?5 IS NULL OR time >= ?5) AND (?6 IS NULL OR time < ?6)
                ORDER BY id DESC LIMIT ?7
             ) ORDER BY id",
        )?;
        let limit = f.limit.map_or(-1, i64::from);
        let rows = st.query_map(
            params![
                f.user_id, f.action, f.outcome, f.actor, f.since, f.until, limit
            ],
            audit_row,
        )?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn insert_admin_key(&mut self, k: &AdminKey, sealed_secret: &[u8]) -> Result<()> {
        self.stmt(concat!(
            "INSERT INTO admin_keys (",
            admin_key_columns!(),
            ", sealed_secret) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
        ))?
        .execute(params![
            k.ikey,
            k.name,
            k.role.as_str(),
            k.may_create_codes,
            k.may_customise_codes,
            k.created_at,
            k.revoked_at,
            sealed_secret,
        ])?;
        Ok(())
    }

    fn admin_key(&mut self, ikey: &str) -> Result<Option<(AdminKey, Vec<u8>)>> {
        let st = self.stmt(concat!(
            "SELECT ",
            admin_key_columns!(),
            ", sealed_secret FROM admin_keys WHERE ikey = ?1"
        ))?;
        Ok(st
            .query_row([ikey], |r| Ok((admin_key_row(r)?, r.get(7)?)))
            .optional()?)
    }

    fn admin_keys(&mut self) -> Result<Vec<AdminKey>> {
        let st = self.stmt(concat!(
            "SELECT ",
            admin_key_columns!(),
            " FROM admin_keys ORDER BY created_at, ikey"
        ))?;
        Ok(st
            .query_map([], admin_key_row)?
            .collect::<rusqlite::Result<_>>()?)
    }

    fn revoke_admin_key(&mut self, ikey: &str, at: i64) -> Result<bool> {
        Ok(self
            .stmt("UPDATE admin_keys SET revoked_at = ?2 WHERE ikey = ?1 AND revoked_at IS NULL")?
            .execute(params![ikey, at])?
            > 0)
    }
}

fn admin_key_row(row: &Row<'_>) -> rusqlite::Result<AdminKey> {
    Ok(AdminKey {
        ikey: row.get(0)?,
        name: row.get(1)?,
        role: parsed(row, 2)?,
        may_create_codes: row.get(3)?,
        may_customise_codes: row.get(4)?,
        created_at: row.get(5)?,
        revoked_at: row.get(6)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::Context;
    use crate::clock::ManualClock;
    use crate::config::Policy;
    use crate::digest::DigestKey;
    use crate::model::DeviceKind;
    use crate::store::{CodeRequest, NewUser, Store};
    use crate::verify::{Decision, Reason};
    use std::sync::Arc;

    const T0: i64 = 1_800_000_000;

    fn open_store(backend: SqliteBackend, clock: &ManualClock) -> Store {
        Store::with_backend(
            Box::new(backend),
            DigestKey::from_bytes([7; 32]),
            Policy::default(),
            Arc::new(clock.clone()),
        )
        .unwrap()
    }

    fn count(conn: &Connection, table: &str) -> i64 {
        conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    }

    /// Adds users by these names, then `phones` phones to the user `phones_of`.
    fn add_users_and_phones(
        store: &mut Store,
        ctx: &Context,
        names: &[&str],
        phones_of: &str,
        phones: usize,
    ) {
        for name in names {
            let new = NewUser {
                username: (*name).into(),
                ..NewUser::default()
            };
            store.add_user(new, ctx).unwrap();
        }
        for _ in 0..phones {
            store
                .add_device(phones_of, DeviceKind::Phone, None, ctx)
                .unwrap();
        }
    }

    #[test]
    fn a_user_and_their_device_count_come_in_one_read() {
        assert_eq!(user_columns!().split(',').count(), USER_COLUMNS);
        let clock = ManualClock::at(T0);
        let ctx = Context::new("test");
        let mut store = open_store(SqliteBackend::in_memory().unwrap(), &clock);
        add_users_and_phones(&mut store, &ctx, &["ann", "bob"], "ann", 2);
        let ann = store.find_user("ann").unwrap();
        let bob = store.find_user("bob").unwrap();
        let mut tx = store.backend.begin().unwrap();
        let (user, devices) = tx.user_and_device_count(&ann.id).unwrap();
        assert_eq!((user.map(|u| u.username), devices), (Some(ann.username), 2));
        assert_eq!(tx.user_and_device_count(&bob.id).unwrap(), (Some(bob), 0));
        let nobody = UserId::from_string("U0000000000000000000");
        assert_eq!(tx.user_and_device_count(&nobody).unwrap(), (None, 0));
    }

    /// The seek a refusal of an unknown login uses: the key itself, else the next one,
    /// else (past the last) the first; nothing in an empty table.
    #[test]
    fn a_login_seek_finds_the_key_or_the_next_one_round_the_end() {
        let mut backend = SqliteBackend::in_memory().unwrap();
        let key = |k: &str| LoginKey::from_login(k, Normalization::default()).unwrap();
        let mut tx = backend.begin().unwrap();
        assert_eq!(tx.user_id_by_login_or_next(&key("b")).unwrap(), None);
        for name in ["b", "d"] {
            let user = User {
                id: UserId::generate().unwrap(),
                username: Username::parse(name).unwrap(),
                aliases: Vec::new(),
                realname: None,
                email: None,
                notes: None,
                status: Status::Active,
                lockout: None,
                failed_attempts: 0,
                created_at: T0,
                last_login: None,
                trashed_at: None,
            };
            tx.insert_user(&user, &[key(name)]).unwrap();
        }
        let seek = |tx: &mut Box<dyn Tx + '_>, k: &str| {
            tx.user_id_by_login_or_next(&key(k))
                .unwrap()
                .map(|(id, exact)| (tx.user(&id).unwrap().unwrap().username.to_string(), exact))
        };
        assert_eq!(seek(&mut tx, "a"), Some(("b".into(), false)));
        assert_eq!(seek(&mut tx, "b"), Some(("b".into(), true)));
        assert_eq!(seek(&mut tx, "c"), Some(("d".into(), false)));
        assert_eq!(seek(&mut tx, "d"), Some(("d".into(), true)));
        assert_eq!(seek(&mut tx, "e"), Some(("b".into(), false)));
    }

    /// The one statement of `seek_user` answers as the seek and the read it joins do one
    /// after the other: the user, whether they have a device and whether the key was theirs.
    #[test]
    fn a_seek_and_the_user_it_finds_come_in_one_read() {
        let clock = ManualClock::at(T0);
        let ctx = Context::new("test");
        let mut store = open_store(SqliteBackend::in_memory().unwrap(), &clock);
        let key = |k: &str| LoginKey::from_login(k, Normalization::default()).unwrap();
        {
            let mut tx = store.backend.begin().unwrap();
            assert_eq!(tx.seek_user(&key("b")).unwrap(), None);
        }
        add_users_and_phones(&mut store, &ctx, &["b", "d"], "d", 2);
        let mut tx = store.backend.begin().unwrap();
        for (k, name, exact, enrolled) in [
            ("a", "b", false, false),
            ("b", "b", true, false),
            ("c", "d", false, true),
            ("d", "d", true, true),
            ("e", "b", false, false),
        ] {
            let seek = tx.seek_user(&key(k)).unwrap().unwrap();
            assert_eq!(
                (seek.user.username.as_str(), seek.exact, seek.enrolled),
                (name, exact, enrolled),
                "{k}"
            );
            let (id, _) = tx.user_id_by_login_or_next(&key(k)).unwrap().unwrap();
            let (user, _) = tx.user_and_device_count(&id).unwrap();
            assert_eq!(user, Some(seek.user), "{k}");
        }
    }

    /// A store of files `sparekey.db` and `sparekey.key` in `dir`.
    fn store_config(dir: &Path, synchronous: Synchronous) -> StoreConfig {
        StoreConfig {
            path: dir.join("sparekey.db"),
            key_file: dir.join("sparekey.key"),
            busy_timeout_ms: 5000,
            synchronous,
        }
    }

    /// Values a sound store never holds (a status outside the three, a digest that is not
    /// 32 octets: only a damaged or hand-edited file has them) fail the verification that
    /// reads them with an error, which the front ends deny: never a panic, never a match.
    #[test]
    fn a_damaged_row_fails_the_verification_that_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let config = store_config(dir.path(), Synchronous::Full);
        let clock = ManualClock::at(T0);
        let ctx = Context::new("test");
        let mut store = open_store(SqliteBackend::create(&config).unwrap(), &clock);
        let mut codes = Vec::new();
        for name in ["ann", "bob"] {
            add_users_and_phones(&mut store, &ctx, &[name], name, 1);
            let issued = store
                .generate_codes(name, CodeRequest::default(), &ctx)
                .unwrap();
            codes.push(issued.codes[0].code.expose().to_owned());
        }
        drop(store);
        let b = SqliteBackend::open(&config).unwrap();
        b.conn
            .execute_batch(
                "PRAGMA ignore_check_constraints = ON;
                 UPDATE users SET status = 'weird' WHERE username = 'ann';
                 CREATE TEMP TABLE bobs AS SELECT * FROM codes
                     WHERE user_id = (SELECT id FROM users WHERE username = 'bob');
                 DELETE FROM codes WHERE id IN (SELECT id FROM bobs);
                 INSERT INTO codes SELECT id, user_id, x'00', scheme, created_at, created_by,
                     expires_at, uses_remaining, reuse_count FROM bobs;",
            )
            .unwrap();
        drop(b);
        let mut store = open_store(SqliteBackend::open(&config).unwrap(), &clock);
        for (name, code) in ["ann", "bob"].iter().zip(&codes) {
            let e = store.verify(name, code, &ctx).unwrap_err();
            assert!(matches!(e, Error::Store(_)), "{name}: {e:?}");
            assert!(!e.to_string().contains(code.as_str()), "{e}");
        }
    }

    /// Pages are read with read(), never through a mapping: a mapped file that someone
    /// else truncates kills the process (SIGBUS) instead of failing the read.
    #[test]
    fn the_database_file_is_never_mapped() {
        let dir = tempfile::tempdir().unwrap();
        let config = store_config(dir.path(), Synchronous::Full);
        drop(SqliteBackend::create(&config).unwrap());
        let b = SqliteBackend::open(&config).unwrap();
        let mapped: i64 = b
            .conn
            .query_row("PRAGMA mmap_size", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mapped, 0);
    }

    #[test]
    fn a_deferred_log_sync_is_the_log_and_commits_stop_waiting_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let config = |synchronous| store_config(dir.path(), synchronous);
        let level = |b: &SqliteBackend| -> i64 {
            b.conn
                .query_row("PRAGMA synchronous", [], |r| r.get(0))
                .unwrap()
        };
        let mut full = SqliteBackend::create(&config(Synchronous::Full)).unwrap();
        assert_eq!(level(&full), 2);
        let sync = full.defer_log_sync().unwrap().expect("a sync to defer");
        assert_eq!(level(&full), 1);
        assert_eq!(sync.path(), dir.path().join("sparekey.db-wal"));
        full.set_key_check("check").unwrap();
        sync.sync().unwrap();
        assert!(!sync.failed());
        drop(full);

        // Nothing to defer where no sync per commit was asked for, or there is no file.
        let mut normal = SqliteBackend::open(&config(Synchronous::Normal)).unwrap();
        assert!(normal.defer_log_sync().unwrap().is_none());
        assert_eq!(level(&normal), 1);
        assert!(
            SqliteBackend::in_memory()
                .unwrap()
                .defer_log_sync()
                .unwrap()
                .is_none()
        );
    }

    /// `.cargo/config.toml` builds SQLite to keep statement journals of up to 1 MiB in
    /// memory: a build without it still works, but takes a third longer to create users.
    #[test]
    fn sqlite_is_built_to_keep_statement_journals_in_memory() {
        let b = SqliteBackend::in_memory().unwrap();
        let mut st = b.conn.prepare("PRAGMA compile_options").unwrap();
        let options: Vec<String> = st
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert!(
            options.iter().any(|o| o == "STMTJRNL_SPILL=1048576"),
            "{options:?}"
        );
    }

    #[test]
    fn a_long_log_is_folded_and_truncated_for_a_short_lived_process() {
        let dir = tempfile::tempdir().unwrap();
        let config = store_config(dir.path(), Synchronous::Normal);
        let clock = ManualClock::at(T0);
        let ctx = Context::new("test");
        let wal = dir.path().join("sparekey.db-wal");
        {
            let mut store = open_store(SqliteBackend::create(&config).unwrap(), &clock);
            for i in 0..300 {
                let name = format!("user{i}");
                store
                    .add_user(
                        NewUser {
                            username: name.clone(),
                            ..NewUser::default()
                        },
                        &ctx,
                    )
                    .unwrap();
            }
        }
        let long = std::fs::metadata(&wal).unwrap().len();
        assert!(long > SHORT_LOG_BYTES, "{long}");
        // A short one is left alone; a long one is folded in, the log emptied, nothing lost.
        let mut store = open_store(SqliteBackend::open(&config).unwrap(), &clock);
        store.keep_log_short().unwrap();
        assert_eq!(std::fs::metadata(&wal).unwrap().len(), 0);
        assert_eq!(store.list_users(&Default::default()).unwrap().len(), 300);
        store.keep_log_short().unwrap();
        assert_eq!(std::fs::metadata(&wal).unwrap().len(), 0);
    }

    /// A store written at schema step 3 (the last before the WITHOUT ROWID tables)
    /// upgrades in place: every row, code and rule survives.
    #[test]
    fn a_store_made_at_step_three_upgrades_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let config = store_config(dir.path(), Synchronous::Full);
        let clock = ManualClock::at(T0);
        let ctx = Context::new("test");

        // Step 3, as a store in the field has it.
        let conn = Connection::open(&config.path).unwrap();
        conn.execute_batch("PRAGMA foreign_keys = ON; PRAGMA journal_mode = WAL;")
            .unwrap();
        for step in &MIGRATIONS[..3] {
            conn.execute_batch(step).unwrap();
        }
        conn.pragma_update(None, "user_version", 3).unwrap();
        let mut store = open_store(
            SqliteBackend {
                conn,
                path: config.path.clone(),
            },
            &clock,
        );
        for name in ["alice", "bob", "carol"] {
            store
                .add_user(
                    NewUser {
                        username: name.into(),
                        aliases: vec![format!("{name}.alias")],
                        ..NewUser::default()
                    },
                    &ctx,
                )
                .unwrap();
            store
                .add_device(name, DeviceKind::Phone, Some("work".into()), &ctx)
                .unwrap();
        }
        let req = |count, reuse_count| CodeRequest {
            count,
            reuse_count,
            valid_secs: 0,
            ..CodeRequest::default()
        };
        let alice = store.generate_codes("alice", req(3, 2), &ctx).unwrap();
        let bob = store.generate_codes("bob", req(2, 1), &ctx).unwrap();
        store.generate_codes("carol", req(1, 1), &ctx).unwrap();
        let a0 = alice.codes[0].code.expose().to_owned();
        assert_eq!(
            store.verify("alice", &a0, &ctx).unwrap().decision,
            Decision::Accept
        );
        store.trash_user("carol", &ctx).unwrap();
        let audit_before = store.audit(&Default::default()).unwrap();
        drop(store);

        // The upgrade.
        let backend = SqliteBackend::open(&config).unwrap();
        let version: i64 = backend
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        for (table, n) in [("users", 3), ("logins", 6), ("devices", 3), ("codes", 6)] {
            assert_eq!(count(&backend.conn, table), n, "{table}");
        }
        let fk_problems: i64 = backend
            .conn
            .query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(fk_problems, 0);
        let without_rowid: i64 = backend
            .conn
            .query_row(
                "SELECT count(*) FROM pragma_table_list
                 WHERE name IN ('users', 'logins', 'devices', 'codes') AND wr = 1",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(without_rowid, 4);
        // Nothing may extend a code, after the upgrade as before it.
        assert!(
            backend
                .conn
                .execute("UPDATE codes SET uses_remaining = uses_remaining + 1", [])
                .is_err()
        );
        let mut backend = backend;
        backend.integrity_check().unwrap();
        let mut store = open_store(backend, &clock);

        assert_eq!(store.audit(&Default::default()).unwrap(), audit_before);
        // A code keeps the uses it had left, and works exactly that many times more.
        for expected in [Decision::Accept, Decision::Reject(Reason::WrongCode)] {
            assert_eq!(
                store.verify("alice.alias", &a0, &ctx).unwrap().decision,
                expected
            );
        }
        let b1 = bob.codes[1].code.expose().to_owned();
        assert_eq!(
            store.verify("bob", &b1, &ctx).unwrap().decision,
            Decision::Accept
        );
        assert_eq!(
            store.list_devices("bob").unwrap()[0].name.as_deref(),
            Some("work")
        );
        assert!(store.find_user("carol").unwrap().trashed_at.is_some());
        // Codes are still found by id, and a purge cascades through the new tables.
        let id = alice.codes[2].info.id.to_string();
        assert_eq!(store.delete_code(&id, &ctx).unwrap().id.as_str(), id);
        store.purge_user("alice", &ctx).unwrap();
        store
            .add_user(
                NewUser {
                    username: "alice".into(),
                    ..NewUser::default()
                },
                &ctx,
            )
            .unwrap();
        assert_eq!(store.list_codes(Some("alice")).unwrap().len(), 0);
        assert_eq!(
            store.list_codes(None).unwrap().len(),
            2,
            "bob's last and carol's"
        );
    }
}
