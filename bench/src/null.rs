//! The ceiling: sparekey-radiusd's own receive loop, packet checks and replies, with the
//! store replaced by a map held in memory. Whatever separates sparekey-radiusd from this
//! is the cost of durable, audited verification.
//!
//! With a [`SyncLog`], the same verifier also writes a fixed number of bytes per answer
//! to a file and has the writer sync it (`fdatasync`) before a batch's answers leave,
//! exactly as sparekey-radiusd syncs its store's log: the ceiling for any verifier that
//! makes each answer durable on the same disk, whatever it keeps.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use sparekey::{Attempt, Decision, Reason, Verdict};
use sparekey_radiusd::writer::{Durable, Verify};

/// Where the log's writes wrap round to its start, as a store's log restarts after a
/// checkpoint: the file stays this size however long the run.
const LOG_WRAP: u64 = 64 << 20;

/// Accepts a user's one code, rejects everything else, and writes nothing unless given
/// a [`SyncLog`].
#[derive(Debug, Default)]
pub struct NullVerifier {
    codes: HashMap<String, String>,
    log: Option<SyncLog>,
}

/// A file each batch writes `bytes_per_answer` bytes per attempt to, synced before its
/// answers leave.
#[derive(Debug)]
pub struct SyncLog {
    file: Arc<LogFile>,
    bytes_per_answer: usize,
    at: u64,
    buf: Vec<u8>,
}

#[derive(Debug)]
struct LogFile(File);

impl Durable for LogFile {
    fn sync(&self) -> Result<(), String> {
        self.0.sync_data().map_err(|e| e.to_string())
    }
}

impl SyncLog {
    /// Creates (or truncates) `path`.
    pub fn create(path: &Path, bytes_per_answer: usize) -> std::io::Result<SyncLog> {
        let file = File::create(path)?;
        Ok(SyncLog {
            file: Arc::new(LogFile(file)),
            bytes_per_answer,
            at: 0,
            buf: Vec::new(),
        })
    }

    fn append(&mut self, answers: usize) -> std::io::Result<()> {
        let len = answers * self.bytes_per_answer;
        if len as u64 > LOG_WRAP - self.at {
            self.at = 0;
        }
        // Not zeros, which a file system may treat differently, and no digits, so that no
        // run of them can look like a code to the tests' leak check.
        self.buf.clear();
        self.buf.resize(len, 0xa5);
        self.file.0.write_all_at(&self.buf, self.at)?;
        self.at += len as u64;
        Ok(())
    }
}

impl NullVerifier {
    /// A verifier for these `(user, code)` pairs.
    pub fn new(users: &[(String, String)]) -> Self {
        NullVerifier {
            codes: users.iter().cloned().collect(),
            log: None,
        }
    }

    /// The same verifier, writing to `log` and syncing it for every batch.
    pub fn with_log(users: &[(String, String)], log: SyncLog) -> Self {
        NullVerifier {
            log: Some(log),
            ..NullVerifier::new(users)
        }
    }
}

impl Verify for NullVerifier {
    fn verify_many(
        &mut self,
        attempts: &[Attempt<'_>],
        before_commit: &mut dyn FnMut(),
    ) -> sparekey::Result<Vec<sparekey::Result<Verdict>>> {
        let verdicts = attempts
            .iter()
            .map(|a| {
                let ok = self
                    .codes
                    .get(a.login)
                    .is_some_and(|c| c == a.passcode.trim());
                Ok(Verdict {
                    decision: if ok {
                        Decision::Accept
                    } else {
                        Decision::Reject(Reason::WrongCode)
                    },
                    user_id: None,
                    username: None,
                    code_id: None,
                    uses_remaining: None,
                    locked_now: false,
                })
            })
            .collect();
        before_commit();
        if let Some(log) = &mut self.log {
            log.append(attempts.len())
                .map_err(|e| sparekey::Error::Store(format!("the null log: {e}")))?;
        }
        Ok(verdicts)
    }

    fn pending_sync(&self) -> Option<Arc<dyn Durable>> {
        self.log
            .as_ref()
            .map(|log| log.file.clone() as Arc<dyn Durable>)
    }
}
