//! The one thread that owns the store. It takes verification jobs from a bounded queue,
//! runs as many as are waiting (up to a batch size) in one transaction with one commit,
//! and answers each. Durable consumption then costs one fsync per batch, not per request.

use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use tokio::sync::oneshot;
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

/// One attempt to verify, with where to send the answer.
#[derive(Debug)]
pub struct Job {
    /// The login as sent.
    pub login: String,
    /// The code as typed.
    pub passcode: Zeroizing<String>,
    /// Actor and source for the audit.
    pub ctx: Context,
    /// Where the answer goes.
    pub answer: oneshot::Sender<Result<Verdict, String>>,
}

/// The sending side of the queue; dropping every clone stops the writer once the queue
/// is empty.
#[derive(Clone, Debug)]
pub struct Queue(SyncSender<Job>);

/// Why a job was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The queue is full: the server is overloaded.
    Full,
    /// The writer has stopped.
    Stopped,
}

impl Queue {
    /// Queues a job without waiting.
    pub fn offer(&self, job: Job) -> Result<(), Refused> {
        self.0.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => Refused::Full,
            TrySendError::Disconnected(_) => Refused::Stopped,
        })
    }
}

/// Starts the writer thread with a queue of `capacity` jobs and batches of at most
/// `max_batch`.
pub fn spawn(
    store: Box<dyn Verify>,
    capacity: usize,
    max_batch: usize,
) -> std::io::Result<(Queue, JoinHandle<()>)> {
    let (tx, rx) = sync_channel(capacity);
    let handle = std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || run(store, rx, max_batch))?;
    Ok((Queue(tx), handle))
}

fn run(mut store: Box<dyn Verify>, rx: Receiver<Job>, max_batch: usize) {
    let mut jobs: Vec<Job> = Vec::with_capacity(max_batch);
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
        match store.verify_many(&attempts) {
            Ok(results) => {
                for (job, r) in jobs.drain(..).zip(results) {
                    // A closed receiver means the request was abandoned; the answer is not needed.
                    let _ = job.answer.send(r.map_err(|e| e.to_string()));
                }
            }
            Err(e) => {
                let why = e.to_string();
                for job in jobs.drain(..) {
                    let _ = job.answer.send(Err(why.clone()));
                }
            }
        }
    }
}
