//! The one thread that owns the store. It takes verification jobs from a bounded queue,
//! runs as many as are waiting (up to a batch size) in one transaction with one commit,
//! and answers each. Durable consumption then costs one fsync per batch, not per request.
//!
//! Where the store leaves that fsync to its caller ([`Store::defer_log_sync`]), a batch's
//! answers leave only once a sync begun after its commit has returned. A writer behind
//! (a batch of a quarter of the largest or more) hands the batch to a second thread for
//! the sync and goes on to verify and commit the next while the disk works. Under light
//! load the writer commits a batch only once the last sync is done, and syncs it itself:
//! one commit per sync, as with a sync inside the commit, since every commit writes its
//! pages to the log again and more commits mean more for the disk to do.
//!
//! For the same reason, under load a batch begins at most once per commit interval (1 ms
//! by default): after a batch of more than one job (others arrived while one was being
//! verified), the next job waits out what is left of the interval since that batch
//! began, and the jobs that arrive meanwhile join its batch. After a batch of one, nothing
//! waits, so light load is answered as soon as it is synced. Measured on a virtual machine
//! whose host charges each sync to the guest's CPU quota, this took the p99 at 6,000
//! requests/s from 16 ms to under 4 ms (BENCHMARKS.md). Nor does anything wait when a
//! quarter of the largest batch is already queued: the writer is behind, the batch is
//! large enough, and waiting would only hold every request in it (on a host where a
//! batch of 80 takes less than the interval, it cost an eighth of the peak rate).
//!
//! The writer is the one serial stage: every request of a batch waits while it waits for
//! a CPU. On a busy host it can be given a lower nice value than the network threads
//! ([`Batching::nice`], `[radius] writer_nice`), with its sync thread, so that it is not
//! queued behind them and other processes (BENCHMARKS.md measures the effect).

use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

use sparekey::{Attempt, Context, LogSync, Store, Verdict};

/// What decides a batch of attempts: the store, or (for a benchmark's ceiling) anything
/// else that answers the same way.
pub trait Verify: Send {
    /// Decides `attempts` together, running `before_commit` just before the batch
    /// commits (where nothing commits, first); see [`Store::verify_many_before_commit`].
    fn verify_many(
        &mut self,
        attempts: &[Attempt<'_>],
        before_commit: &mut dyn FnMut(),
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
        before_commit: &mut dyn FnMut(),
    ) -> sparekey::Result<Vec<sparekey::Result<Verdict>>> {
        Store::verify_many_before_commit(self, attempts, before_commit)
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

/// How the writer groups jobs into batches.
#[derive(Clone, Copy, Debug)]
pub struct Batching {
    /// Jobs queued at once, at most; past it [`Queue::offer`] refuses.
    pub capacity: usize,
    /// Jobs in one batch, at most.
    pub max_batch: usize,
    /// The least time from one batch's start to the next's (see the module's
    /// documentation).
    pub commit_interval: Duration,
    /// The nice value the writer and its sync thread take when they start; 0 leaves
    /// them at the process's. Below the process's needs `CAP_SYS_NICE` or an
    /// `RLIMIT_NICE` that allows it; if refused, a warning is logged and they run as
    /// they are.
    pub nice: i32,
}

/// Gives the calling thread the nice value `nice` (0: leaves it alone). A refusal costs
/// speed, not correctness: it is logged and the thread goes on.
fn take_nice(nice: i32, thread: &str) {
    if nice == 0 {
        return;
    }
    // On Linux the priority is per thread, and a thread id names one.
    if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), nice) {
        log::warn!(
            "the {thread} cannot take nice {nice} ([radius] writer_nice): {e}; it runs at the process's priority"
        );
    }
}

/// Starts the writer thread. `done` receives each batch's answers once the batch has
/// committed, and is durable.
pub fn spawn<T: Send + 'static>(
    store: Box<dyn Verify>,
    batching: Batching,
    done: impl FnMut(Done<T>) + Send + 'static,
) -> std::io::Result<(Queue<T>, JoinHandle<()>)> {
    let (tx, rx) = sync_channel(batching.capacity);
    let handle = std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || run(store, rx, batching, done))?;
    Ok((Queue(tx), handle))
}

/// A committed batch on its way out, and what it waits for.
struct Committed<T> {
    /// Its place in commit order, from 0.
    number: u64,
    answers: Done<T>,
    sync: Option<Arc<dyn Durable>>,
}

/// How far the sync thread has come: how many batches are synced, and whether it has
/// stopped.
#[derive(Default)]
struct Synced {
    state: Mutex<(u64, bool)>,
    changed: Condvar,
}

impl Synced {
    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, bool)> {
        // Two plain numbers: no invariant a panicking holder could break halfway.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until `count` batches are synced (or the sync thread has stopped).
    fn wait_for(&self, count: u64) {
        let mut s = self.lock();
        while s.0 < count && !s.1 {
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn reached(&self, count: u64) {
        let mut s = self.lock();
        s.0 = s.0.max(count);
        drop(s);
        self.changed.notify_all();
    }

    fn stopped(&self) {
        self.lock().1 = true;
        self.changed.notify_all();
    }
}

/// Marks the sync thread stopped however it ends, so that the writer never waits on it.
struct Stopping<'a>(&'a Synced);

impl Drop for Stopping<'_> {
    fn drop(&mut self) {
        self.0.stopped();
    }
}

fn run<T: Send + 'static>(
    mut store: Box<dyn Verify>,
    rx: Receiver<Job<T>>,
    batching: Batching,
    done: impl FnMut(Done<T>) + Send + 'static,
) {
    take_nice(batching.nice, "store writer");
    let max_batch = batching.max_batch;
    let synced = Arc::new(Synced::default());
    // At most one committed batch waits here while another is synced; past that the
    // writer waits to hand over.
    let (to_syncer, committed) = sync_channel(1);
    let syncer = {
        let synced = synced.clone();
        let nice = batching.nice;
        std::thread::Builder::new()
            .name("store-sync".into())
            .spawn(move || {
                take_nice(nice, "store sync thread");
                answer_when_durable(committed, &synced, done)
            })
    };
    let syncer = match syncer {
        Ok(handle) => handle,
        Err(e) => {
            // Without it no answer could leave: stop taking jobs, and let the queue's
            // senders see the writer gone (each request is then refused).
            log::error!("cannot start the store's sync thread: {e}");
            return;
        }
    };
    let mut jobs: Vec<Job<T>> = Vec::with_capacity(max_batch);
    let mut number = 0u64;
    // A batch this long or longer means the writer is behind.
    let behind_at = (max_batch / 4).max(1);
    // When the last batch began, if it had more than one job (others came while one was
    // verified: the server is busy, and waiting gathers more).
    let mut busy_since: Option<Instant> = None;
    // Block for the first job and take whatever else is waiting. If the last batch was
    // busy and began less than the interval ago, and the writer is not already behind,
    // wait out the rest and take what came meanwhile.
    while let Ok(first) = rx.recv() {
        jobs.push(first);
        take_waiting(&rx, &mut jobs, max_batch);
        let rest = busy_since
            .filter(|_| jobs.len() < behind_at)
            .and_then(|t| batching.commit_interval.checked_sub(t.elapsed()));
        if let Some(rest) = rest {
            std::thread::sleep(rest);
            take_waiting(&rx, &mut jobs, max_batch);
        }
        let began = Instant::now();
        let attempts: Vec<Attempt<'_>> = jobs
            .iter()
            .map(|j| Attempt {
                login: &j.login,
                passcode: &j.passcode,
                ctx: &j.ctx,
            })
            .collect();
        // A batch of a quarter of the most or more: the writer is behind, and goes on to
        // the next batch while this one is synced. A smaller one is committed after the
        // last sync and synced here: under light load, one commit per sync and no
        // hand-over on the way.
        let behind = attempts.len() >= behind_at;
        busy_since = (attempts.len() > 1).then_some(began);
        let verified = store.verify_many(&attempts, &mut || {
            if !behind {
                synced.wait_for(number);
            }
        });
        let answers: Vec<Result<Verdict, String>> = match verified {
            Ok(results) => results
                .into_iter()
                .map(|r| r.map_err(|e| e.to_string()))
                .collect(),
            Err(e) => {
                let why = e.to_string();
                jobs.iter().map(|_| Err(why.clone())).collect()
            }
        };
        let answers: Done<T> = jobs.drain(..).map(|j| j.token).zip(answers).collect();
        let sync = store.pending_sync();
        let (answers, sync) = if behind {
            (answers, sync)
        } else {
            let answers = durable(answers, sync.as_deref());
            synced.reached(number + 1);
            (answers, None)
        };
        let batch = Committed {
            number,
            answers,
            sync,
        };
        number += 1;
        if to_syncer.send(batch).is_err() {
            break;
        }
    }
    drop(to_syncer);
    let _ = syncer.join();
}

/// Moves the jobs waiting in `rx` into `jobs`, up to `max_batch` in all.
fn take_waiting<T>(rx: &Receiver<Job<T>>, jobs: &mut Vec<Job<T>>, max_batch: usize) {
    while jobs.len() < max_batch {
        match rx.try_recv() {
            Ok(j) => jobs.push(j),
            Err(_) => break,
        }
    }
}

/// The sync thread: syncs each committed batch's log and hands its answers on. If the
/// sync fails, every answer of the batch becomes a store error (a deny): the codes it
/// consumed stay consumed, but nothing is let in on a commit that may not be on disk.
fn answer_when_durable<T>(
    committed: Receiver<Committed<T>>,
    synced: &Synced,
    mut done: impl FnMut(Done<T>),
) {
    let _stopping = Stopping(synced);
    while let Ok(batch) = committed.recv() {
        let answers = durable(batch.answers, batch.sync.as_deref());
        synced.reached(batch.number + 1);
        done(answers);
    }
}

/// A committed batch's answers once `sync` (if any) has returned: each a store error if
/// it failed.
fn durable<T>(answers: Done<T>, sync: Option<&dyn Durable>) -> Done<T> {
    match sync.map_or(Ok(()), Durable::sync) {
        Ok(()) => answers,
        Err(why) => answers
            .into_iter()
            .map(|(token, answer)| (token, answer.and(Err(why.clone()))))
            .collect(),
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

    /// Each thread that verified or synced, with its nice value then.
    type Nices = Arc<Mutex<Vec<(String, i32)>>>;

    /// Records the calling thread's name and nice value in `nices`; returns the name.
    fn note_thread(nices: &Nices) -> String {
        let thread = std::thread::current().name().unwrap_or("").to_owned();
        let nice = rustix::process::getpriority_process(None).unwrap();
        nices.lock().unwrap().push((thread.clone(), nice));
        thread
    }

    /// A log whose sync says where it runs (the thread's name) and that it started, then
    /// waits to be let go (or fails).
    #[derive(Debug)]
    struct Log {
        started: Mutex<Sender<String>>,
        release: Mutex<Receiver<Result<(), String>>>,
        nices: Nices,
    }

    impl Durable for Log {
        fn sync(&self) -> Result<(), String> {
            let thread = note_thread(&self.nices);
            self.started.lock().unwrap().send(thread).unwrap();
            self.release.lock().unwrap().recv_timeout(BOUND).unwrap()
        }
    }

    /// Refuses every attempt, and has each batch wait for `log`; records when it
    /// verifies and when it commits.
    struct Refuser {
        log: Option<Arc<Log>>,
        events: Arc<Mutex<Vec<String>>>,
        began: Arc<Mutex<Vec<Instant>>>,
        nices: Nices,
        batches: u32,
    }

    impl Verify for Refuser {
        fn verify_many(
            &mut self,
            attempts: &[Attempt<'_>],
            before_commit: &mut dyn FnMut(),
        ) -> sparekey::Result<Vec<sparekey::Result<Verdict>>> {
            self.began.lock().unwrap().push(Instant::now());
            note_thread(&self.nices);
            self.batches += 1;
            let n = self.batches;
            before_commit();
            self.events.lock().unwrap().push(format!("committed {n}"));
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
        started: Receiver<String>,
        release: Sender<Result<(), String>>,
        events: Arc<Mutex<Vec<String>>>,
        began: Arc<Mutex<Vec<Instant>>>,
        nices: Nices,
        writer: JoinHandle<()>,
    }

    impl Harness {
        /// A writer whose batches are at most `max_batch` (a batch of one is small at 16,
        /// and the writer behind at 1), begun as soon as the last is done.
        fn start(max_batch: usize, durable_on_commit: bool) -> Harness {
            Harness::paced(max_batch, durable_on_commit, Duration::ZERO)
        }

        fn paced(max_batch: usize, durable_on_commit: bool, commit_interval: Duration) -> Harness {
            let batching = Batching {
                capacity: 16,
                max_batch,
                commit_interval,
                nice: 0,
            };
            Harness::with(batching, durable_on_commit)
        }

        fn with(batching: Batching, durable_on_commit: bool) -> Harness {
            let (started_tx, started) = channel();
            let (release, release_rx) = channel();
            let nices = Nices::default();
            let log = Arc::new(Log {
                started: Mutex::new(started_tx),
                release: Mutex::new(release_rx),
                nices: nices.clone(),
            });
            let events = Arc::new(Mutex::new(Vec::new()));
            let began = Arc::new(Mutex::new(Vec::new()));
            let store = Box::new(Refuser {
                log: (!durable_on_commit).then_some(log),
                events: events.clone(),
                began: began.clone(),
                nices: nices.clone(),
                batches: 0,
            });
            let (answers_tx, answers) = channel();
            let (queue, writer) = spawn(store, batching, move |done| {
                answers_tx.send(done).unwrap();
            })
            .unwrap();
            Harness {
                queue,
                answers,
                started,
                release,
                events,
                began,
                nices,
                writer,
            }
        }

        /// Queues job `token`, and says on which thread its batch's sync began.
        fn offer(&self, token: u32) -> String {
            self.queue.offer(job(token)).unwrap();
            self.started
                .recv_timeout(BOUND)
                .expect("the batch's sync began")
        }

        /// The next batch's answers: its one token and answer.
        fn answer(&self) -> (u32, Result<Verdict, String>) {
            let mut done = self.answers.recv_timeout(BOUND).unwrap();
            assert_eq!(done.len(), 1);
            done.remove(0)
        }

        /// The next batch's one token, whose answer must be a verdict.
        fn answered_ok(&self) -> u32 {
            let (token, answer) = self.answer();
            assert!(answer.is_ok());
            token
        }

        /// The tokens of the next batch, in order.
        fn batch_tokens(&self) -> Vec<u32> {
            let batch = self.answers.recv_timeout(BOUND).unwrap();
            batch.into_iter().map(|(t, _)| t).collect()
        }

        fn stop(self) {
            drop(self.queue);
            self.writer.join().unwrap();
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
        // A small batch is synced by the writer; a writer behind leaves it to the sync
        // thread. Either way the answer waits.
        for (max_batch, syncer) in [(16, "store-writer"), (1, "store-sync")] {
            let h = Harness::start(max_batch, false);
            assert_eq!(h.offer(1), syncer);
            // Committed, and its sync under way: the answer is held until it returns.
            assert_eq!(*h.events.lock().unwrap(), ["committed 1"]);
            assert!(h.answers.try_recv().is_err());
            h.release.send(Ok(())).unwrap();
            assert_eq!(h.answered_ok(), 1);
            h.stop();
        }
    }

    /// Both threads a batch waits for run at the configured nice value; the caller's
    /// thread keeps its own. (A higher value needs no privilege, so this runs as anyone.)
    #[test]
    fn the_writer_and_its_sync_thread_take_the_configured_nice() {
        let own = rustix::process::getpriority_process(None).unwrap();
        let nice = (own + 3).min(19);
        for (max_batch, syncer) in [(16, "store-writer"), (1, "store-sync")] {
            let batching = Batching {
                capacity: 16,
                max_batch,
                commit_interval: Duration::ZERO,
                nice,
            };
            let h = Harness::with(batching, false);
            assert_eq!(h.offer(1), syncer);
            h.release.send(Ok(())).unwrap();
            assert_eq!(h.answered_ok(), 1);
            assert_eq!(
                *h.nices.lock().unwrap(),
                [("store-writer".to_owned(), nice), (syncer.to_owned(), nice)]
            );
            h.stop();
        }
        assert_eq!(rustix::process::getpriority_process(None).unwrap(), own);
    }

    #[test]
    fn a_failed_sync_denies_every_answer_that_waited_for_it() {
        for max_batch in [16, 1] {
            let h = Harness::start(max_batch, false);
            h.offer(1);
            h.release.send(Err("disk gone".into())).unwrap();
            assert_eq!(h.answer(), (1, Err("disk gone".to_owned())));
            // The writer goes on: the next batch is verified, synced and answered.
            h.offer(2);
            h.release.send(Ok(())).unwrap();
            assert_eq!(h.answered_ok(), 2);
            h.stop();
        }
    }

    /// Behind, the writer commits the next batch while the last one is synced.
    #[test]
    fn a_writer_behind_commits_the_next_batch_during_the_sync() {
        let h = Harness::start(1, false);
        assert_eq!(h.offer(1), "store-sync");
        h.queue.offer(job(2)).unwrap();
        // The second batch commits while the first's sync is still held.
        let deadline = std::time::Instant::now() + BOUND;
        while h.events.lock().unwrap().len() < 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "the second batch never committed"
            );
            std::thread::yield_now();
        }
        assert!(h.started.try_recv().is_err(), "a second sync began");
        assert!(h.answers.try_recv().is_err());
        h.release.send(Ok(())).unwrap();
        assert_eq!(h.answer().0, 1);
        assert_eq!(h.started.recv_timeout(BOUND).unwrap(), "store-sync");
        h.release.send(Ok(())).unwrap();
        assert_eq!(h.answer().0, 2);
        h.stop();
    }

    #[test]
    fn a_store_whose_commits_are_durable_is_answered_without_a_sync() {
        for max_batch in [16, 1] {
            let h = Harness::start(max_batch, true);
            h.queue.offer(job(7)).unwrap();
            assert_eq!(h.answered_ok(), 7);
            assert!(h.started.try_recv().is_err());
            h.stop();
        }
    }

    /// Answers job 1, then jobs 2 and 3 in one batch (queued while 1 was synced): the
    /// writer's last batch is then a busy one.
    fn a_busy_batch(h: &Harness) {
        assert_eq!(h.offer(1), "store-writer");
        h.queue.offer(job(2)).unwrap();
        h.queue.offer(job(3)).unwrap();
        h.release.send(Ok(())).unwrap();
        assert_eq!(h.answer().0, 1);
        h.started.recv_timeout(BOUND).unwrap();
        h.release.send(Ok(())).unwrap();
        assert_eq!(h.batch_tokens(), [2, 3]);
    }

    #[test]
    fn after_a_busy_batch_the_next_begins_a_commit_interval_later() {
        let interval = Duration::from_millis(50);
        let h = Harness::paced(16, false, interval);
        a_busy_batch(&h);
        h.offer(4);
        h.release.send(Ok(())).unwrap();
        assert_eq!(h.answer().0, 4);
        let began = h.began.lock().unwrap().clone();
        assert_eq!(began.len(), 3);
        let gap = began[2] - began[1];
        assert!(gap >= interval, "began {gap:?} after a busy batch");
        h.stop();
    }

    #[test]
    fn a_writer_already_behind_does_not_wait_out_the_interval() {
        // An interval far past the bound: a batch that waited for it would fail the test.
        let h = Harness::paced(16, false, Duration::from_secs(3600));
        assert_eq!(h.offer(1), "store-writer");
        h.queue.offer(job(2)).unwrap();
        h.queue.offer(job(3)).unwrap();
        h.release.send(Ok(())).unwrap();
        assert_eq!(h.answer().0, 1);
        // Jobs 2 and 3 make a busy batch; while its sync is held, a quarter of the
        // largest batch queues up.
        assert_eq!(h.started.recv_timeout(BOUND).unwrap(), "store-writer");
        for token in 4..=7 {
            h.queue.offer(job(token)).unwrap();
        }
        h.release.send(Ok(())).unwrap();
        assert_eq!(h.batch_tokens(), [2, 3]);
        assert_eq!(h.started.recv_timeout(BOUND).unwrap(), "store-sync");
        h.release.send(Ok(())).unwrap();
        assert_eq!(h.batch_tokens(), [4, 5, 6, 7]);
        h.stop();
    }

    #[test]
    fn after_a_batch_of_one_the_next_does_not_wait() {
        // An interval far past the bound: a job that waited for it would fail the test.
        let h = Harness::paced(16, true, Duration::from_secs(3600));
        for token in 1..=3 {
            h.queue.offer(job(token)).unwrap();
            assert_eq!(h.answer().0, token);
        }
        h.stop();
    }

    #[test]
    fn jobs_that_arrive_during_the_interval_join_one_batch() {
        let h = Harness::paced(16, false, Duration::from_secs(1));
        a_busy_batch(&h);
        // The writer takes job 4 and waits out the second; job 5 comes meanwhile.
        h.queue.offer(job(4)).unwrap();
        h.queue.offer(job(5)).unwrap();
        h.started.recv_timeout(BOUND).unwrap();
        h.release.send(Ok(())).unwrap();
        assert_eq!(h.batch_tokens(), [4, 5]);
        h.stop();
    }
}
