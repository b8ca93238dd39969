//! The one thread that owns the store. It takes verification jobs from a bounded queue,
//! runs as many as are waiting (up to a batch size) in one transaction with one commit,
//! and answers each. Durable consumption then costs one fsync per batch, not per request.
//!
//! Where the store leaves that fsync to its caller ([`Store::defer_log_sync`]), a second
//! thread runs it: the writer hands each committed batch over and goes on to the next,
//! and the batch's answers leave only once a sync begun after its commit has returned.
//! One sync then covers every batch committed while the last one ran.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use zeroize::Zeroizing;

use sparekey::{Attempt, Context, LogSync, Store, Verdict};

/// Committed batches waiting for their sync, at most; past it the writer waits too.
const AWAITING_SYNC: usize = 64;

/// What decides a batch of attempts: the store, or (for a benchmark's ceiling) anything
/// else that answers the same way.
pub trait Verify: Send {
    /// Decides `attempts` together; see [`Store::verify_many`].
    fn verify_many(
        &mut self,
        attempts: &[Attempt<'_>],
    ) -> sparekey::Result<Vec<sparekey::Result<Verdict>>>;

    /// What the answers of the batch just verified must wait for: a sync of the store's
    /// log, where the store defers it; `None` when its commit was durable on return.
    fn pending_sync(&self) -> Option<Arc<dyn Durable>> {
        None
    }
}

/// Makes committed batches durable (see the module's documentation).
pub trait Durable: Send + Sync + std::fmt::Debug {
    /// Returns once everything committed before the call is on disk, or says why not.
    fn sync(&self) -> Result<(), String>;
}

impl Durable for LogSync {
    fn sync(&self) -> Result<(), String> {
        LogSync::sync(self).map_err(|e| e.to_string())
    }
}

impl Verify for Store {
    fn verify_many(
        &mut self,
        attempts: &[Attempt<'_>],
    ) -> sparekey::Result<Vec<sparekey::Result<Verdict>>> {
        Store::verify_many(self, attempts)
    }
}

/// One attempt to verify, with whatever the caller needs to act on the answer.
#[derive(Debug)]
pub struct Job<T> {
    /// The login as sent.
    pub login: String,
    /// The code as typed.
    pub passcode: Zeroizing<String>,
    /// Actor and source for the audit.
    pub ctx: Context,
    /// Handed back with the answer.
    pub token: T,
}

/// A committed batch: each job's token with its answer (`Err`: deny, the store failed).
pub type Done<T> = Vec<(T, Result<Verdict, String>)>;

/// The sending side of the queue; dropping every clone stops the writer once the queue
/// is empty.
#[derive(Debug)]
pub struct Queue<T>(SyncSender<Job<T>>);

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Queue(self.0.clone())
    }
}

/// Why a job was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The queue is full: the server is overloaded.
    Full,
    /// The writer has stopped.
    Stopped,
}

impl<T> Queue<T> {
    /// Queues a job without waiting.
    pub fn offer(&self, job: Job<T>) -> Result<(), Refused> {
        self.0.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => Refused::Full,
            TrySendError::Disconnected(_) => Refused::Stopped,
        })
    }
}

/// Starts the writer thread with a queue of `capacity` jobs and batches of at most
/// `max_batch`. `done` receives each batch's answers once the batch has committed, and
/// is durable.
pub fn spawn<T: Send + 'static>(
    store: Box<dyn Verify>,
    capacity: usize,
    max_batch: usize,
    done: impl FnMut(Done<T>) + Send + 'static,
) -> std::io::Result<(Queue<T>, JoinHandle<()>)> {
    let (tx, rx) = sync_channel(capacity);
    let handle = std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || run(store, rx, max_batch, done))?;
    Ok((Queue(tx), handle))
}

/// A committed batch on its way out, and what it waits for.
struct Committed<T> {
    answers: Done<T>,
    sync: Option<Arc<dyn Durable>>,
}

fn run<T: Send + 'static>(
    mut store: Box<dyn Verify>,
    rx: Receiver<Job<T>>,
    max_batch: usize,
    done: impl FnMut(Done<T>) + Send + 'static,
) {
    let (to_syncer, committed) = sync_channel(AWAITING_SYNC);
    let syncer = std::thread::Builder::new()
        .name("store-sync".into())
        .spawn(move || answer_when_durable(committed, done));
    let syncer = match syncer {
        Ok(handle) => handle,
        Err(e) => {
            // Without it no answer could leave: stop taking jobs, and let the queue's
            // senders see the writer gone (each request is then refused as overload).
            log::error!("cannot start the store's sync thread: {e}");
            return;
        }
    };
    let mut jobs: Vec<Job<T>> = Vec::with_capacity(max_batch);
    // Block for the first job, then take whatever else is already waiting.
    while let Ok(first) = rx.recv() {
        jobs.push(first);
        while jobs.len() < max_batch {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let attempts: Vec<Attempt<'_>> = jobs
            .iter()
            .map(|j| Attempt {
                login: &j.login,
                passcode: &j.passcode,
                ctx: &j.ctx,
            })
            .collect();
        let answers: Vec<Result<Verdict, String>> = match store.verify_many(&attempts) {
            Ok(results) => results
                .into_iter()
                .map(|r| r.map_err(|e| e.to_string()))
                .collect(),
            Err(e) => {
                let why = e.to_string();
                jobs.iter().map(|_| Err(why.clone())).collect()
            }
        };
        let batch = Committed {
            answers: jobs.drain(..).map(|j| j.token).zip(answers).collect(),
            sync: store.pending_sync(),
        };
        if to_syncer.send(batch).is_err() {
            break;
        }
    }
    drop(to_syncer);
    let _ = syncer.join();
}

/// The sync thread: takes every committed batch waiting, syncs each log they were
/// committed to once, and hands the answers on in commit order. If a sync fails, every
/// answer that waited on it becomes a store error (a deny): the codes it consumed stay
/// consumed, but nothing is let in on a commit that may not be on disk.
fn answer_when_durable<T>(committed: Receiver<Committed<T>>, mut done: impl FnMut(Done<T>)) {
    while let Ok(first) = committed.recv() {
        let mut group = vec![first];
        group.extend(committed.try_iter());
        let mut synced: Vec<(Arc<dyn Durable>, Result<(), String>)> = Vec::new();
        for batch in group {
            let outcome = match &batch.sync {
                None => Ok(()),
                Some(log) => match synced.iter().find(|(s, _)| Arc::ptr_eq(s, log)) {
                    Some((_, outcome)) => outcome.clone(),
                    None => {
                        let outcome = log.sync();
                        synced.push((log.clone(), outcome.clone()));
                        outcome
                    }
                },
            };
            let answers = match outcome {
                Ok(()) => batch.answers,
                Err(why) => batch
                    .answers
                    .into_iter()
                    .map(|(token, answer)| (token, answer.and(Err(why.clone()))))
                    .collect(),
            };
            done(answers);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::mpsc::{Receiver, Sender, channel};
    use std::time::Duration;

    use sparekey::{Decision, Reason};

    use super::*;

    /// A bound on every wait, so that a missing answer fails the test instead of hanging.
    const BOUND: Duration = Duration::from_secs(20);

    /// A log whose sync says when it starts, then waits to be let go (or fails).
    #[derive(Debug)]
    struct Log {
        started: Mutex<Sender<()>>,
        release: Mutex<Receiver<Result<(), String>>>,
    }

    impl Durable for Log {
        fn sync(&self) -> Result<(), String> {
            self.started.lock().unwrap().send(()).unwrap();
            self.release.lock().unwrap().recv_timeout(BOUND).unwrap()
        }
    }

    /// Refuses every attempt, and has each batch wait for `log` if there is one.
    struct Refuser {
        log: Option<Arc<Log>>,
    }

    impl Verify for Refuser {
        fn verify_many(
            &mut self,
            attempts: &[Attempt<'_>],
        ) -> sparekey::Result<Vec<sparekey::Result<Verdict>>> {
            let refused = || Verdict {
                decision: Decision::Reject(Reason::WrongCode),
                user_id: None,
                username: None,
                code_id: None,
                uses_remaining: None,
                locked_now: false,
            };
            Ok(attempts.iter().map(|_| Ok(refused())).collect())
        }

        fn pending_sync(&self) -> Option<Arc<dyn Durable>> {
            let log = self.log.clone()?;
            Some(log)
        }
    }

    struct Harness {
        queue: Queue<u32>,
        answers: Receiver<Done<u32>>,
        started: Receiver<()>,
        release: Sender<Result<(), String>>,
        writer: JoinHandle<()>,
    }

    fn start() -> Harness {
        let (started_tx, started) = channel();
        let (release, release_rx) = channel();
        let log = Arc::new(Log {
            started: Mutex::new(started_tx),
            release: Mutex::new(release_rx),
        });
        let (answers_tx, answers) = channel();
        let store = Box::new(Refuser { log: Some(log) });
        let (queue, writer) = spawn(store, 16, 16, move |done| {
            answers_tx.send(done).unwrap();
        })
        .unwrap();
        Harness {
            queue,
            answers,
            started,
            release,
            writer,
        }
    }

    fn job(token: u32) -> Job<u32> {
        Job {
            login: format!("user{token}"),
            passcode: Zeroizing::new("12345678".into()),
            ctx: Context::new("test"),
            token,
        }
    }

    #[test]
    fn answers_leave_only_once_the_sync_after_their_commit_returns() {
        let h = start();
        h.queue.offer(job(1)).unwrap();
        h.started
            .recv_timeout(BOUND)
            .expect("the batch's sync began");
        // Committed, and its sync under way: the answer is held until the sync returns.
        assert!(h.answers.try_recv().is_err());
        h.release.send(Ok(())).unwrap();
        let done = h.answers.recv_timeout(BOUND).unwrap();
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].0, 1);
        assert!(done[0].1.is_ok());
        drop(h.queue);
        h.writer.join().unwrap();
    }

    #[test]
    fn a_failed_sync_denies_every_answer_that_waited_for_it() {
        let h = start();
        h.queue.offer(job(1)).unwrap();
        h.started.recv_timeout(BOUND).unwrap();
        h.release.send(Err("disk gone".into())).unwrap();
        let done = h.answers.recv_timeout(BOUND).unwrap();
        assert_eq!(done[0].1, Err("disk gone".to_owned()));
        // The writer goes on: the next batch is verified, synced and answered.
        h.queue.offer(job(2)).unwrap();
        h.started.recv_timeout(BOUND).unwrap();
        h.release.send(Ok(())).unwrap();
        let done = h.answers.recv_timeout(BOUND).unwrap();
        assert_eq!(done[0].0, 2);
        assert!(done[0].1.is_ok());
        drop(h.queue);
        h.writer.join().unwrap();
    }

    #[test]
    fn a_store_whose_commits_are_durable_is_answered_without_a_sync() {
        let (answers_tx, answers) = channel();
        let (queue, writer) = spawn(Box::new(Refuser { log: None }), 16, 16, move |done| {
            answers_tx.send(done).unwrap();
        })
        .unwrap();
        queue.offer(job(7)).unwrap();
        let done = answers.recv_timeout(BOUND).unwrap();
        assert_eq!(done[0].0, 7);
        assert!(done[0].1.is_ok());
        drop(queue);
        writer.join().unwrap();
    }
}
