//! Durability on another thread: a writer that commits without waiting for the disk
//! ([`Store::defer_log_sync`](super::Store::defer_log_sync)) hands its answers to a thread
//! that syncs the log and only then lets them out. The writer verifies the next batch
//! while the disk works on the last one.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};

/// Makes what a store committed durable: a commit is on disk once a [`LogSync::sync`]
/// begun after the commit returned has returned `Ok`.
#[derive(Debug)]
pub struct LogSync {
    file: File,
    path: PathBuf,
    failed: AtomicBool,
}

impl LogSync {
    /// A sync of `file`, the log the store's connection writes (the same file, not a
    /// file of the same name), named `path` in errors.
    pub(crate) fn new(file: File, path: PathBuf) -> LogSync {
        LogSync {
            file,
            path,
            failed: AtomicBool::new(false),
        }
    }

    /// Waits until everything written to the log before the call is on disk. After one
    /// failure every later call fails too: the kernel reports a failed write-back once,
    /// and may already have dropped the pages, so what was committed since cannot be
    /// trusted to be on disk either. The store must be opened again.
    pub fn sync(&self) -> Result<()> {
        if self.failed() {
            return Err(Error::Store(format!(
                "{}: an earlier sync of the log to disk failed; the store must be opened again",
                self.path.display()
            )));
        }
        self.file.sync_data().map_err(|e| {
            self.failed.store(true, Ordering::SeqCst);
            Error::Store(format!(
                "{}: cannot sync the log to disk ({e})",
                self.path.display()
            ))
        })
    }

    /// Whether a sync has failed (and every later one will).
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A descriptor that cannot be synced (a device without a disk behind it: `fdatasync`
    /// says EINVAL), under a log's name.
    fn unsyncable() -> LogSync {
        let file = File::open("/dev/null").unwrap();
        LogSync::new(file, PathBuf::from("/srv/store.db-wal"))
    }

    #[test]
    fn a_failed_sync_fails_every_later_one_and_names_the_log() {
        let sync = unsyncable();
        assert!(!sync.failed());
        let first = sync.sync().unwrap_err().to_string();
        assert!(
            first.contains("/srv/store.db-wal: cannot sync the log to disk"),
            "{first}"
        );
        assert!(sync.failed());
        let later = sync.sync().unwrap_err().to_string();
        assert!(
            later.contains("an earlier sync of the log to disk failed"),
            "{later}"
        );
    }
}
