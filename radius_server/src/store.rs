//! The daemon's hold on its store: how it fails closed while the store is broken and
//! serves again, without a restart, once the fault is cleared.
//!
//! Before each batch the writer checks that the store file is still the one it opened
//! (same device and inode) and still starts with SQLite's header; after any failure but a
//! lock held past the busy timeout it closes the store, and the next batch opens it again.
//! So a deleted, replaced, truncated or overwritten file, a filesystem gone read-only or a
//! full disk rejects the requests of the moment, each with one log line naming the cause
//! in words an operator can act on, and the first request after the fault is cleared is
//! served. A failed batch never commits, so it never consumes a code.
//!
//! The checkpointer's connection follows the writer's: it is closed while the writer has
//! none (so that nothing of the daemon's holds a broken filesystem busy, or copies an old
//! log into a restored file) and opened again after the writer's.

use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use sparekey::config::Location;
use sparekey::{Attempt, Config, DigestKey, Error, LogSync, Store, Verdict};

use crate::writer::{Durable, Verify};

/// The first 16 bytes of every SQLite database file.
const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// How often the checkpointer folds the log into the database.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// The length of log, in pages, past which the writer restarts it after a checkpoint
/// pass (16,384 pages: 64 MiB).
const RESTART_LOG_PAGES: u64 = 16_384;

/// What the writer tells the checkpointer: which opening of the store is current.
#[derive(Debug, Default)]
pub struct Health {
    /// The number of the writer's current opening of the store; 0 while it has none.
    generation: AtomicU64,
    /// Set by the checkpointer after a pass that found the log past
    /// [`RESTART_LOG_PAGES`], once it has synced the database; taken by the writer,
    /// which then restarts the log ([`Store::restart_log`]).
    checkpointed: AtomicBool,
}

/// The writer's store: opened, checked before each batch, closed after a failure and
/// opened again when the next batch comes.
#[derive(Debug)]
pub struct StoreHandle {
    config: Config,
    open: Option<Opened>,
    opened: u64,
    health: Arc<Health>,
}

#[derive(Debug)]
struct Opened {
    store: Store,
    watch: Option<Watch>,
    /// The log sync the writer's answers wait for, where the store defers it.
    sync: Option<Arc<LogSync>>,
}

impl Opened {
    fn open(config: &Config) -> Result<Opened, Error> {
        // The key first, as the library does, so that a missing key is named as such.
        DigestKey::load(&config.store.key_file)?;
        let watch = match config.location() {
            Location::Sqlite(path) => {
                let w = Watch::open(path).map_err(|c| fault(path, &c))?;
                // SQLite would open a file it cannot write read-only and fail only at the
                // first verification; say so now.
                if let Some(cause) = probe_write(path) {
                    return Err(fault(path, &cause));
                }
                Some(w)
            }
            Location::Postgres(_) => None,
        };
        let store = Store::open(config).map_err(|e| explain(config, e))?;
        Ok(Opened {
            store,
            watch,
            sync: None,
        })
    }
}

impl StoreHandle {
    /// Opens the store a config names, for the writer. An error names the cause in one
    /// line (a missing or corrupt file, a read-only filesystem, the key file, ...).
    pub fn open(config: &Config) -> Result<StoreHandle, Error> {
        let mut h = StoreHandle {
            config: config.clone(),
            open: None,
            opened: 0,
            health: Arc::new(Health::default()),
        };
        h.reopen()?;
        Ok(h)
    }

    /// What the checkpointer watches.
    pub fn health(&self) -> Arc<Health> {
        self.health.clone()
    }

    fn reopen(&mut self) -> Result<&mut Opened, Error> {
        self.close();
        let mut o = Opened::open(&self.config)?;
        // The writer never stops to checkpoint in the middle of a batch: the checkpointer's
        // connection does it.
        o.store
            .defer_checkpoints()
            .map_err(|e| explain(&self.config, e))?;
        // Nor for the disk: the writer's sync thread waits for it, while the writer goes
        // on to the next batch.
        o.sync = o
            .store
            .defer_log_sync()
            .map_err(|e| explain(&self.config, e))?
            .map(Arc::new);
        self.opened += 1;
        self.health.generation.store(self.opened, Ordering::SeqCst);
        if self.opened > 1 {
            log::warn!("store {}: opened again; serving", self.config.location());
        }
        Ok(self.open.insert(o))
    }

    fn close(&mut self) {
        if self.open.take().is_some() {
            self.health.generation.store(0, Ordering::SeqCst);
        }
    }

    /// The store, checked and ready for a batch, or why not.
    fn ready(&mut self) -> Result<&mut Opened, Error> {
        let check = self
            .open
            .as_ref()
            .map(|o| o.watch.as_ref().map_or(Ok(()), Watch::check));
        let sync_failed = self
            .open
            .as_ref()
            .and_then(|o| o.sync.as_ref())
            .is_some_and(|s| s.failed());
        match check {
            // What was committed since the failed sync may not be on disk, whatever the
            // kernel says of later syncs: start again from what the file holds.
            Some(Ok(())) if sync_failed => {
                log::warn!(
                    "store {}: its log could not be synced to disk; opening it again",
                    self.config.location()
                );
                self.close();
            }
            Some(Ok(())) => {}
            Some(Err(Changed::Replaced)) => {
                // A restored backup is a legitimate store: open the new file.
                log::warn!(
                    "store {}: the file was replaced; opening the new one",
                    self.config.location()
                );
                self.close();
            }
            Some(Err(Changed::Broken(cause))) => {
                self.close();
                return Err(fault(&self.config.store.path, &cause));
            }
            None => {}
        }
        match self.open {
            Some(ref mut o) => Ok(o),
            None => self.reopen(),
        }
    }
}

impl Verify for StoreHandle {
    fn verify_many(
        &mut self,
        attempts: &[Attempt<'_>],
        before_commit: &mut dyn FnMut(),
    ) -> sparekey::Result<Vec<sparekey::Result<Verdict>>> {
        let health = self.health.clone();
        let opened = self.ready()?;
        let mut failed = match opened
            .store
            .verify_many_before_commit(attempts, before_commit)
        {
            Ok(results) if results.iter().all(Result::is_ok) => {
                // Right after the checkpointer's pass, little of the log is left to fold
                // in: finish it here, so that the next commit writes the log from its
                // start and the file stops growing under sustained load.
                if health.checkpointed.swap(false, Ordering::SeqCst) {
                    let _ = opened.store.restart_log();
                }
                return Ok(results);
            }
            Ok(results) => Ok(results
                .into_iter()
                .map(|r| r.map_err(|e| explain(&self.config, e)))
                .collect::<Vec<_>>()),
            Err(e) => Err(explain(&self.config, e)),
        };
        // A lock held by another process clears by itself and leaves the connection sound;
        // any other failure may have left it in a state not worth trusting.
        let only_locked = match &failed {
            Ok(results) => results.iter().all(|r| r.is_ok() || is_locked(r)),
            Err(e) => is_locked_error(e),
        };
        if !only_locked {
            // The attempts that went through were committed on this opening, whose sync
            // nobody waits for once it is closed: their answers wait for it here.
            let synced = self.pending_sync().map_or(Ok(()), |log| log.sync());
            self.close();
            if let (Ok(results), Err(why)) = (&mut failed, synced) {
                for r in results.iter_mut().filter(|r| r.is_ok()) {
                    *r = Err(Error::Store(why.clone()));
                }
            }
        }
        failed
    }

    fn pending_sync(&self) -> Option<Arc<dyn Durable>> {
        let sync = self.open.as_ref()?.sync.clone()?;
        Some(sync)
    }
}

fn is_locked(r: &sparekey::Result<Verdict>) -> bool {
    r.as_ref().err().is_some_and(is_locked_error)
}

fn is_locked_error(e: &Error) -> bool {
    matches!(e, Error::Store(m) if m.contains(LOCKED))
}

/// How a file can differ from the one opened.
#[derive(Debug)]
enum Changed {
    /// Another file now has the name: reopen.
    Replaced,
    /// The file is gone or no longer a database.
    Broken(String),
}

/// The store file as opened: its identity, and a descriptor to read its header through.
#[derive(Debug)]
struct Watch {
    path: PathBuf,
    file: File,
    dev: u64,
    ino: u64,
}

impl Watch {
    fn open(path: &Path) -> Result<Watch, String> {
        let file = File::open(path).map_err(|e| io_cause(&e))?;
        let meta = file.metadata().map_err(|e| io_cause(&e))?;
        if !meta.is_file() {
            return Err("not a regular file".into());
        }
        check_header(&file)?;
        Ok(Watch {
            path: path.to_owned(),
            file,
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// Two system calls: is the name still this file, and does it still start like SQLite.
    fn check(&self) -> Result<(), Changed> {
        let meta = std::fs::metadata(&self.path).map_err(|e| Changed::Broken(io_cause(&e)))?;
        if (meta.dev(), meta.ino()) != (self.dev, self.ino) {
            return Err(Changed::Replaced);
        }
        check_header(&self.file).map_err(Changed::Broken)
    }
}

fn check_header(file: &File) -> Result<(), String> {
    let mut head = [0u8; 16];
    match file.read_exact_at(&mut head, 0) {
        Ok(()) if &head == SQLITE_MAGIC => Ok(()),
        Ok(()) => Err(format!("{CORRUPT} (not a SQLite database)")),
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => {
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            Err(if len == 0 {
                format!("{CORRUPT} (empty file)")
            } else {
                format!("{CORRUPT} (truncated to {len} bytes)")
            })
        }
        Err(e) => Err(io_cause(&e)),
    }
}

fn io_cause(e: &std::io::Error) -> String {
    match e.kind() {
        ErrorKind::NotFound => "missing (no such file)".into(),
        ErrorKind::ReadOnlyFilesystem => READ_ONLY.into(),
        ErrorKind::StorageFull => FULL.into(),
        ErrorKind::PermissionDenied => format!("permission denied ({e})"),
        _ => format!("I/O error ({e})"),
    }
}

const LOCKED: &str = "locked by another process past the busy timeout";
const FULL: &str = "disk full";
const READ_ONLY: &str = "read-only filesystem";
const CORRUPT: &str = "corrupt";

fn fault(path: &Path, cause: &str) -> Error {
    Error::Store(format!("{}: {cause}", path.display()))
}

/// Turns a store error into one that names its cause plainly. SQLite's own words are kept
/// where they are already plain; a bare "disk I/O error" is looked into, since a
/// filesystem gone read-only reports itself that way.
pub fn explain(config: &Config, e: Error) -> Error {
    let Error::Store(text) = &e else { return e };
    let sqlite = match config.location() {
        Location::Sqlite(p) => p,
        Location::Postgres(_) => return e,
    };
    let t = text.to_ascii_lowercase();
    let cause = if t.contains("database is locked") || t.contains("database table is locked") {
        format!("{LOCKED} ({} ms)", config.store.busy_timeout_ms)
    } else if t.contains("database or disk is full") {
        FULL.into()
    } else if t.contains("file is not a database") {
        format!("{CORRUPT} (not a SQLite database)")
    } else if t.contains("malformed") {
        format!("{CORRUPT} (database disk image is malformed)")
    } else if t.contains("no such file") {
        "missing (no such file)".into()
    } else if t.contains("readonly")
        || t.contains("disk i/o error")
        || t.contains("unable to open database file")
    {
        match probe_write(sqlite) {
            Some(cause) => cause,
            None if t.contains("readonly") => "read-only (cannot write the database)".into(),
            None => format!("I/O error ({})", strip(text, sqlite)),
        }
    } else {
        return e;
    };
    fault(sqlite, &cause)
}

/// Why the database file cannot be opened for writing, if that is so. Opens without
/// creating or truncating, and closes at once.
fn probe_write(path: &Path) -> Option<String> {
    match std::fs::OpenOptions::new().write(true).open(path) {
        Ok(_) => None,
        Err(e) if e.kind() == ErrorKind::ReadOnlyFilesystem => Some(READ_ONLY.into()),
        Err(e) => Some(io_cause(&e)),
    }
}

/// The library's message without its `path: ` prefix, for wrapping in ours.
fn strip<'a>(text: &'a str, path: &Path) -> &'a str {
    let p = format!("{}: ", path.display());
    text.strip_prefix(&p).unwrap_or(text)
}

/// Starts the thread that checkpoints the store's log every [`CHECKPOINT_EVERY`] on a
/// connection of its own ([`Checkpointer`]).
pub fn spawn_checkpointer(config: Config, health: Arc<Health>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("checkpointer".into())
        .spawn(move || {
            let mut c = Checkpointer::new(config, health);
            loop {
                std::thread::sleep(CHECKPOINT_EVERY);
                c.pass();
            }
        })
}

/// Folds the log into the database on a connection of its own, following the writer's:
/// none while the writer has none, a fresh one after the writer opens the store again.
/// After a pass that finds the log long it tells the writer, which then restarts the log
/// (see [`Health::checkpointed`]). Its failures are logged once each, not at every pass.
#[derive(Debug)]
pub struct Checkpointer {
    config: Config,
    health: Arc<Health>,
    conn: Option<(u64, Opened)>,
    last_error: Option<String>,
    restart_after_pages: u64,
    /// How the database file is synced before a restart ([`sync_database`]).
    sync_file: fn(&File) -> std::io::Result<()>,
}

impl Checkpointer {
    /// A checkpointer for the writer whose [`StoreHandle::health`] this is.
    pub fn new(config: Config, health: Arc<Health>) -> Self {
        Checkpointer {
            config,
            health,
            conn: None,
            last_error: None,
            restart_after_pages: RESTART_LOG_PAGES,
            sync_file: File::sync_data,
        }
    }

    /// One pass: checkpoint what can be without waiting for anyone.
    pub fn pass(&mut self) {
        let generation = self.health.generation.load(Ordering::SeqCst);
        if self.conn.as_ref().is_some_and(|(g, _)| *g != generation) || generation == 0 {
            self.conn = None;
        }
        if generation == 0 {
            return;
        }
        let config = &self.config;
        let result = match self.conn {
            Some((_, ref mut o)) => checkpoint(config, o),
            None => Opened::open(config).and_then(|mut o| {
                let r = checkpoint(config, &mut o);
                self.conn = Some((generation, o));
                r
            }),
        };
        // Restarting costs the writer a millisecond or two (it copies what came in during
        // the pass and syncs the database), so only once the log is long.
        let result = result.and_then(|pages| {
            if pages < self.restart_after_pages {
                return Ok(());
            }
            if let Some((_, o)) = &self.conn {
                sync_database(config, o, self.sync_file)?;
            }
            self.health.checkpointed.store(true, Ordering::SeqCst);
            Ok(())
        });
        match result {
            Ok(()) => self.last_error = None,
            Err(e) => {
                self.conn = None;
                let e = e.to_string();
                if self.last_error.as_ref() != Some(&e) {
                    log::warn!("checkpoint: {e}");
                    self.last_error = Some(e);
                }
            }
        }
    }
}

fn checkpoint(config: &Config, o: &mut Opened) -> Result<u64, Error> {
    if let Some(w) = &o.watch {
        match w.check() {
            Ok(()) => {}
            Err(Changed::Replaced) => {
                return Err(fault(&config.store.path, "replaced; not checkpointed"));
            }
            Err(Changed::Broken(cause)) => return Err(fault(&config.store.path, &cause)),
        }
    }
    o.store.checkpoint().map_err(|e| explain(config, e))
}

/// Syncs to disk what the checkpointer's passes have copied into the database, before
/// the writer restarts the log. A pass that did not reach the end of the log (the writer
/// committed meanwhile, as it does under load) leaves the database unsynced: SQLite syncs
/// it only when a checkpoint gets to the end, and that is the writer's restart, which
/// then waits for every page copied since the last restart (5 ms typically at 26,000
/// requests/s, BENCHMARKS.md). Synced here, the restart finds a few pages left.
/// Correctness does not rest on it: the restart still syncs the database itself before
/// the log starts over.
fn sync_database(
    config: &Config,
    o: &Opened,
    sync_file: fn(&File) -> std::io::Result<()>,
) -> Result<(), Error> {
    // The descriptor the pass just checked is the file's (a PostgreSQL store has none);
    // a sync through a read-only descriptor flushes the file's pages all the same.
    let Some(w) = &o.watch else { return Ok(()) };
    sync_file(&w.file).map_err(|e| {
        fault(
            &config.store.path,
            &format!(
                "cannot sync the database to disk ({}); the log is not restarted",
                io_cause(&e)
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    fn config(dir: &Path) -> Config {
        let text =
            "[store]\npath = \"sparekey.db\"\nkey_file = \"sparekey.key\"\nbusy_timeout_ms = 250\n";
        let file = dir.join("sparekey.toml");
        std::fs::write(&file, text).unwrap();
        Config::load(&file).unwrap()
    }

    #[test]
    fn sqlite_messages_become_plain_causes() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path());
        let db = c.store.path.display().to_string();
        std::fs::write(&c.store.path, b"").unwrap();
        for (text, cause) in [
            (
                "database is locked",
                "locked by another process past the busy timeout (250 ms)",
            ),
            ("database or disk is full", "disk full"),
            ("file is not a database", "corrupt (not a SQLite database)"),
            (
                "database disk image is malformed",
                "corrupt (database disk image is malformed)",
            ),
        ] {
            let e = explain(&c, Error::Store(format!("{db}: {text}")));
            assert_eq!(e.to_string(), format!("store: {db}: {cause}"));
        }
        let e = explain(&c, Error::Store(format!("{db}: disk I/O error")));
        assert_eq!(
            e.to_string(),
            format!("store: {db}: I/O error (disk I/O error)")
        );
        let other = explain(&c, Error::Store("unknown username_normalization".into()));
        assert_eq!(other.to_string(), "store: unknown username_normalization");
        std::fs::remove_file(&c.store.path).unwrap();
        let e = explain(
            &c,
            Error::Store(format!("{db}: unable to open database file")),
        );
        assert_eq!(
            e.to_string(),
            format!("store: {db}: missing (no such file)")
        );
    }

    /// A new store in `dir`, its writer, and a checkpointer following the writer.
    fn writer_and_checkpointer(dir: &Path) -> (Config, StoreHandle, Checkpointer) {
        let c = config(dir);
        Store::create(&c).unwrap();
        let writer = StoreHandle::open(&c).unwrap();
        let checkpointer = Checkpointer::new(c.clone(), writer.health());
        (c, writer, checkpointer)
    }

    /// `n` attempts by a login nobody has, decided and committed by `w` in one batch.
    fn unknown_logins(w: &mut StoreHandle, n: usize) {
        let ctx = sparekey::Context::new("radius:test");
        let attempt = Attempt {
            login: "nobody",
            passcode: "123456",
            ctx: &ctx,
        };
        let answers = w.verify_many(&vec![attempt; n], &mut || {}).unwrap();
        assert!(answers.iter().all(Result::is_ok));
    }

    /// Under sustained load the writer never begins a batch with the whole log copied
    /// back, so SQLite never starts the log again by itself and the file only grows (by
    /// about 35 MB a second at the benchmark's rate): after a checkpoint pass that finds
    /// the log long, the writer's next batch restarts it.
    #[test]
    fn a_checkpoint_pass_over_a_long_log_has_the_writer_restart_it() {
        let dir = tempfile::tempdir().unwrap();
        let (_, mut writer, mut checkpointer) = writer_and_checkpointer(dir.path());
        let wal = dir.path().join("sparekey.db-wal");
        let batch = |w: &mut StoreHandle| {
            unknown_logins(w, 100);
            std::fs::metadata(&wal).unwrap().len()
        };
        let first = batch(&mut writer);
        assert!(batch(&mut writer) > first, "the writer does not checkpoint");
        checkpointer.pass();
        assert!(
            !writer.health.checkpointed.load(Ordering::SeqCst),
            "a short log is left alone"
        );
        checkpointer.restart_after_pages = 1;
        checkpointer.pass();
        assert!(writer.health.checkpointed.load(Ordering::SeqCst));
        // The writer's next batch takes the signal and restarts the log (here SQLite
        // would have too, the pass having had nothing to race with; under load it does
        // not: see BENCHMARKS.md).
        let grown = batch(&mut writer);
        assert!(!writer.health.checkpointed.load(Ordering::SeqCst));
        assert_eq!(
            batch(&mut writer),
            grown,
            "the log was written from its start"
        );
    }

    thread_local! {
        /// The inode of each file the checkpointer synced, on this test's thread.
        static SYNCED: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
    }

    /// The checkpointer syncs the database before it has the writer restart the log (so
    /// that the restart has little left to sync), and if that sync fails it says why and
    /// leaves the log as it is.
    #[test]
    fn the_database_is_synced_before_a_restart_and_a_failed_sync_stops_it() {
        let dir = tempfile::tempdir().unwrap();
        let (c, mut writer, mut checkpointer) = writer_and_checkpointer(dir.path());
        checkpointer.restart_after_pages = 1;
        let health = writer.health();
        let signalled = || health.checkpointed.load(Ordering::SeqCst);

        unknown_logins(&mut writer, 10);
        // EIO, what a failed write-back reports.
        checkpointer.sync_file = |_| Err(rustix::io::Errno::IO.into());
        checkpointer.pass();
        assert!(!signalled(), "restarted over a database not synced");
        let why = checkpointer
            .last_error
            .clone()
            .expect("the failure is kept to log");
        assert!(
            why.contains("cannot sync the database to disk (I/O error")
                && why.contains("the log is not restarted"),
            "{why}"
        );

        checkpointer.sync_file = |f| {
            let ino = f.metadata()?.ino();
            SYNCED.with(|s| s.borrow_mut().push(ino));
            Ok(())
        };
        unknown_logins(&mut writer, 10);
        checkpointer.pass();
        assert!(signalled());
        assert!(checkpointer.last_error.is_none());
        let db = std::fs::metadata(&c.store.path).unwrap().ino();
        assert_eq!(SYNCED.with(|s| s.borrow().clone()), [db]);
    }

    /// With `synchronous = "full"` (the default) each batch's answers wait for a sync of
    /// the log on the writer's sync thread; with `"normal"` nothing was asked to wait.
    #[test]
    fn answers_wait_for_a_sync_of_the_log_only_where_each_commit_was_to_sync() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path());
        Store::create(&c).unwrap();
        let writer = StoreHandle::open(&c).unwrap();
        let sync = writer.pending_sync().expect("a sync to wait for");
        sync.sync().unwrap();
        let opened = writer.open.as_ref().unwrap().sync.as_ref().unwrap();
        assert_eq!(opened.path(), dir.path().join("sparekey.db-wal"));
        drop(writer);
        c.store.synchronous = sparekey::config::Synchronous::Normal;
        let writer = StoreHandle::open(&c).unwrap();
        assert!(writer.pending_sync().is_none());
    }

    #[test]
    fn the_watch_sees_a_file_replaced_emptied_or_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        assert_eq!(Watch::open(&db).unwrap_err(), "missing (no such file)");
        let mut bytes = SQLITE_MAGIC.to_vec();
        bytes.resize(4096, 0);
        std::fs::write(&db, &bytes).unwrap();
        let w = Watch::open(&db).unwrap();
        w.check().unwrap();
        std::fs::write(&db, b"").unwrap();
        assert!(matches!(w.check(), Err(Changed::Broken(c)) if c == "corrupt (empty file)"));
        std::fs::write(&db, b"SQLite").unwrap();
        assert!(matches!(w.check(), Err(Changed::Broken(c)) if c.contains("truncated to 6 bytes")));
        std::fs::write(&db, [7u8; 4096]).unwrap();
        assert!(
            matches!(w.check(), Err(Changed::Broken(c)) if c.contains("not a SQLite database"))
        );
        let other = dir.path().join("other");
        std::fs::write(&other, &bytes).unwrap();
        std::fs::rename(&other, &db).unwrap();
        assert!(matches!(w.check(), Err(Changed::Replaced)));
        std::fs::remove_file(&db).unwrap();
        assert!(matches!(w.check(), Err(Changed::Broken(c)) if c.starts_with("missing")));
    }
}
