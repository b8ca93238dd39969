//! The one thread that owns the store. It takes verification jobs from a bounded queue,
//! runs as many as are waiting (up to a batch size) in one transaction with one commit,
//! and answers each. Durable consumption then costs one fsync per batch, not per request.

use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use zeroize::Zeroizing;

use sparekey::{Attempt, Context, Store, Verdict};

/// What decides a batch of attempts: the store, or (for a benchmark's ceiling) anything
/// else that answers the same way.
pub trait Verify: Send {
    /// Decides `attempts` together; see [`Store::verify_many`].
    fn verify_many(
        &mut self,
        attempts: &[Attempt<'_>],
    ) -> sparekey::Result<Vec<sparekey::Result<Verdict>>>;
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
/// `max_batch`. `done` receives each batch's answers once the batch has committed.
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

fn run<T>(
    mut store: Box<dyn Verify>,
    rx: Receiver<Job<T>>,
    max_batch: usize,
    mut done: impl FnMut(Done<T>),
) {
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
        done(jobs.drain(..).map(|j| j.token).zip(answers).collect());
    }
}
