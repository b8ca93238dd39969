//! A RADIUS load generator that any server can be pointed at: PAP with a
//! Message-Authenticator, a mix of valid and wrong codes over many users, closed loop
//! (N requests in flight) or open loop (a fixed rate), retransmission on timeout, and
//! every answer checked against what was expected.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sparekey_radiusd::client::{self, Reply};

use crate::rng::Rng;

/// How requests are paced.
#[derive(Clone, Copy, Debug)]
pub enum Mode {
    /// Keep this many requests in flight, in total.
    Closed {
        /// Requests in flight.
        concurrency: usize,
    },
    /// Send at this many requests per second, in total, whatever the answers.
    Open {
        /// Requests per second.
        rate: f64,
    },
}

/// One run's settings.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// The server.
    pub server: SocketAddr,
    /// The shared secret.
    pub secret: Vec<u8>,
    /// Users and a valid (reusable, unexpiring) code for each.
    pub users: Arc<Vec<(String, String)>>,
    /// Fraction of requests sent with a wrong code (expected to be rejected).
    pub wrong_ratio: f64,
    /// Pacing.
    pub mode: Mode,
    /// How long to send for.
    pub duration: Duration,
    /// Stop after this many requests in total, if sooner.
    pub max_requests: Option<u64>,
    /// How long to wait for an answer before retransmitting.
    pub timeout: Duration,
    /// Retransmissions before a request counts as lost.
    pub retries: u32,
    /// Client sockets (each has 256 identifiers).
    pub sockets: usize,
    /// Seed for the choice of users, codes and authenticators.
    pub seed: u64,
    /// Count a reply without a Message-Authenticator first as bad (true for sparekey;
    /// false for servers from before the BlastRADIUS fixes).
    pub require_reply_message_authenticator: bool,
}

/// What a run saw.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Requests sent (first transmissions).
    pub sent: u64,
    /// Retransmissions.
    pub retransmits: u64,
    /// Requests answered.
    pub answered: u64,
    /// Access-Accepts.
    pub accepts: u64,
    /// Access-Rejects.
    pub rejects: u64,
    /// Answers that differed from what was expected (an Accept for a wrong code, ...).
    pub unexpected: u64,
    /// Replies that failed the checks (authenticator, Message-Authenticator, identifier).
    pub bad_replies: u64,
    /// Requests never answered, after every retransmission.
    pub lost: u64,
    /// Open loop: sends skipped because all 256 identifiers of a socket were in flight.
    pub skipped: u64,
    /// Seconds from the first send to the last answer.
    pub elapsed: f64,
    /// Latency of every answered request, in microseconds, from its (scheduled) first send.
    pub latencies_us: Vec<u64>,
    /// When each of those requests was (scheduled to be) first sent, in microseconds from
    /// the start of the run; `sent_at_us[i]` goes with `latencies_us[i]`. Merged reports
    /// keep the pairs together, in no particular order.
    pub sent_at_us: Vec<u64>,
    /// Access-Accepts for requests that carried `users[i]`'s valid code, by `i` (empty if
    /// none were seen). Accepts of wrong codes are not here; they count as `unexpected`.
    pub accepts_per_user: Vec<u64>,
    /// Requests still in flight when [`run_until`] was told to stop; neither answered nor
    /// lost.
    pub abandoned: u64,
}

impl Report {
    /// Answered requests per second.
    pub fn rate(&self) -> f64 {
        if self.elapsed > 0.0 {
            self.answered as f64 / self.elapsed
        } else {
            0.0
        }
    }

    /// The `q` quantile (0..=1) of latency in microseconds.
    pub fn quantile_us(&self, q: f64) -> u64 {
        let mut v = self.latencies_us.clone();
        if v.is_empty() {
            return 0;
        }
        v.sort_unstable();
        let i = ((v.len() - 1) as f64 * q).round() as usize;
        v[i.min(v.len() - 1)]
    }

    /// Whether every request was answered as expected.
    pub fn all_as_expected(&self) -> bool {
        self.lost == 0
            && self.unexpected == 0
            && self.bad_replies == 0
            && self.answered == self.sent
    }

    fn merge(&mut self, o: Report) {
        self.sent += o.sent;
        self.retransmits += o.retransmits;
        self.answered += o.answered;
        self.accepts += o.accepts;
        self.rejects += o.rejects;
        self.unexpected += o.unexpected;
        self.bad_replies += o.bad_replies;
        self.lost += o.lost;
        self.skipped += o.skipped;
        self.elapsed = self.elapsed.max(o.elapsed);
        self.latencies_us.extend(o.latencies_us);
        self.sent_at_us.extend(o.sent_at_us);
        if self.accepts_per_user.len() < o.accepts_per_user.len() {
            self.accepts_per_user.resize(o.accepts_per_user.len(), 0);
        }
        for (a, b) in self.accepts_per_user.iter_mut().zip(o.accepts_per_user) {
            *a += b;
        }
        self.abandoned += o.abandoned;
    }

    /// Every answered request as a line `sent_at_us latency_us`, in the order they were
    /// sent: where in a run the slow answers fall (in bursts, or spread out).
    pub fn write_timeline(&self, mut out: impl std::io::Write) -> std::io::Result<()> {
        let mut rows: Vec<(u64, u64)> = self
            .sent_at_us
            .iter()
            .copied()
            .zip(self.latencies_us.iter().copied())
            .collect();
        rows.sort_unstable();
        for (at, latency) in rows {
            writeln!(out, "{at} {latency}")?;
        }
        out.flush()
    }

    /// One line: rate, latency quantiles and counts.
    pub fn summary(&self) -> String {
        format!(
            "{:.0} req/s  p50 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  sent {}  answered {}  accept {}  reject {}  \
             unexpected {}  bad {}  lost {}  retransmits {}  skipped {}",
            self.rate(),
            self.quantile_us(0.5) as f64 / 1000.0,
            self.quantile_us(0.99) as f64 / 1000.0,
            self.quantile_us(0.999) as f64 / 1000.0,
            self.sent,
            self.answered,
            self.accepts,
            self.rejects,
            self.unexpected,
            self.bad_replies,
            self.lost,
            self.retransmits,
            self.skipped
        )
    }
}

struct InFlight {
    request: Vec<u8>,
    expect: Reply,
    /// The index in `users` when the request carries that user's valid code.
    entry: Option<usize>,
    started: Instant,
    deadline: Instant,
    tries: u32,
}

/// Runs the load and returns what it saw. Each socket runs on its own thread.
pub fn run(cfg: &LoadConfig) -> std::io::Result<Report> {
    run_inner(cfg, None)
}

/// Like [`run`], but every worker also stops soon (within about 20 ms) after `stop` becomes
/// true: it counts the answers already waiting in its socket, then abandons what is still
/// in flight. A server that goes away in the middle of a run costs retransmissions and
/// lost requests, never an error.
pub fn run_until(cfg: &LoadConfig, stop: &Arc<AtomicBool>) -> std::io::Result<Report> {
    run_inner(cfg, Some(stop))
}

/// How long a worker that may be told to stop waits for an answer at most before looking.
const STOP_POLL: Duration = Duration::from_millis(20);

/// Answers a worker has room for before its run starts, when the run's length is known:
/// the open loop's rate for the duration, or the quota. A closed loop without a quota
/// gets room for a million.
fn room_per_worker(cfg: &LoadConfig, of: usize) -> usize {
    let open = match cfg.mode {
        Mode::Open { rate } => Some(rate / of as f64 * cfg.duration.as_secs_f64() * 1.1),
        Mode::Closed { .. } => None,
    };
    let quota = cfg.max_requests.map(|m| (m / of as u64 + 1) as f64);
    let n = match (open, quota) {
        (Some(o), Some(q)) => o.min(q),
        (Some(n), None) | (None, Some(n)) => n,
        (None, None) => (1 << 20) as f64,
    };
    n.min((1 << 26) as f64) as usize + 1024
}

/// A report with room for `n` answers, its memory touched: a vector that grows in the
/// middle of a run moves (4 workers at once, as they keep pace) and the fresh pages
/// fault in, and for those milliseconds no worker sends. Every server then showed the
/// same cluster of slow answers at the same moments (0.75, 1.5, 3 and 6 s into a run at
/// 43,500 requests/s: where 8,192 answers per worker doubled), FreeRADIUS included.
fn report_with_room(n: usize) -> Report {
    let mut r = Report::default();
    for v in [&mut r.latencies_us, &mut r.sent_at_us] {
        v.resize(n, 0);
        v.clear();
    }
    r
}

fn run_inner(cfg: &LoadConfig, stop: Option<&Arc<AtomicBool>>) -> std::io::Result<Report> {
    let sockets = cfg.sockets.max(1);
    let room = room_per_worker(cfg, sockets);
    let reports: Vec<Report> = (0..sockets).map(|_| report_with_room(room)).collect();
    let start = Instant::now();
    let mut threads = Vec::new();
    for (k, report) in reports.into_iter().enumerate() {
        let cfg = cfg.clone();
        let sock = UdpSocket::bind(if cfg.server.is_ipv6() {
            "[::]:0"
        } else {
            "0.0.0.0:0"
        })?;
        sock.connect(cfg.server)?;
        let stop = stop.cloned();
        threads.push(std::thread::spawn(move || {
            worker(&cfg, &sock, k, sockets, start, stop.as_deref(), report)
        }));
    }
    let mut report = Report::default();
    for t in threads {
        match t.join() {
            Ok(r) => report.merge(r?),
            Err(_) => return Err(std::io::Error::other("a load worker panicked")),
        }
    }
    Ok(report)
}

fn worker(
    cfg: &LoadConfig,
    sock: &UdpSocket,
    k: usize,
    of: usize,
    start: Instant,
    stop: Option<&AtomicBool>,
    mut r: Report,
) -> std::io::Result<Report> {
    let mut rng = Rng::with_state(cfg.seed ^ (0x9e37_79b9_7f4a_7c15u64.wrapping_mul(k as u64 + 1)));
    let mut slots: Vec<Option<InFlight>> = (0..256).map(|_| None).collect();
    let mut next_id = 0usize;
    let mut in_flight = 0usize;
    let window = match cfg.mode {
        Mode::Closed { concurrency } => {
            (concurrency / of + usize::from(k < concurrency % of)).clamp(1, 256)
        }
        Mode::Open { .. } => 256,
    };
    let interval = match cfg.mode {
        Mode::Open { rate } => Some(Duration::from_secs_f64(of as f64 / rate.max(1e-3))),
        Mode::Closed { .. } => None,
    };
    let quota = cfg
        .max_requests
        .map(|m| m / of as u64 + u64::from((k as u64) < m % of as u64));
    let stop_sending = start + cfg.duration;
    let mut next_send =
        start + interval.map_or(Duration::ZERO, |i| i.mul_f64(k as f64 / of as f64));
    let mut buf = [0u8; 4096];
    sock.set_nonblocking(true)?;
    loop {
        if stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
            // Answers already here count: a server killed just now did send them. The
            // socket's buffer holds a bounded number of datagrams.
            for _ in 0..65_536 {
                match sock.recv(&mut buf) {
                    Ok(n) => take_reply(cfg, start, &buf[..n], &mut slots, &mut in_flight, &mut r),
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
            r.abandoned += in_flight as u64;
            break;
        }
        let now = Instant::now();
        let may_send = now < stop_sending && quota.is_none_or(|q| r.sent < q);
        if !may_send && in_flight == 0 {
            break;
        }
        // Send what the pacing allows.
        if may_send {
            match interval {
                None => {
                    while in_flight < window && quota.is_none_or(|q| r.sent < q) {
                        send_new(
                            cfg,
                            sock,
                            &mut rng,
                            &mut slots,
                            &mut next_id,
                            &mut in_flight,
                            &mut r,
                            Instant::now(),
                        )?;
                    }
                }
                Some(iv) => {
                    while next_send <= Instant::now() && quota.is_none_or(|q| r.sent < q) {
                        if in_flight < window {
                            send_new(
                                cfg,
                                sock,
                                &mut rng,
                                &mut slots,
                                &mut next_id,
                                &mut in_flight,
                                &mut r,
                                next_send,
                            )?;
                        } else {
                            r.skipped += 1;
                        }
                        next_send += iv;
                    }
                }
            }
        }
        // Retransmit or give up on what timed out.
        let now = Instant::now();
        for slot in slots.iter_mut() {
            if let Some(f) = slot {
                if f.deadline <= now {
                    if f.tries > cfg.retries {
                        r.lost += 1;
                        *slot = None;
                        in_flight -= 1;
                    } else {
                        f.tries += 1;
                        f.deadline = now + cfg.timeout;
                        r.retransmits += 1;
                        send(sock, &f.request)?;
                    }
                }
            }
        }
        // Wait for an answer until the next thing to do.
        let mut wake = slots
            .iter()
            .flatten()
            .map(|f| f.deadline)
            .min()
            .unwrap_or(now + cfg.timeout);
        if interval.is_some() && may_send {
            wake = wake.min(next_send);
        }
        let mut wait = wake.saturating_duration_since(Instant::now());
        if stop.is_some() {
            wait = wait.min(STOP_POLL);
        }
        // ppoll, not a receive timeout: SO_RCVTIMEO counts in scheduler ticks (4 ms at
        // HZ=250), which made every open-loop send up to a tick late, and the lateness
        // counts as latency (it is measured from the scheduled send).
        if !readable_within(sock, wait)? {
            continue;
        }
        // Take every answer already waiting, not one per wake-up.
        loop {
            match sock.recv(&mut buf) {
                Ok(n) => take_reply(cfg, start, &buf[..n], &mut slots, &mut in_flight, &mut r),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
                Err(e) => return Err(e),
            }
        }
    }
    r.elapsed = start.elapsed().as_secs_f64();
    Ok(r)
}

/// Waits until `sock` has a datagram or `wait` has passed, to the microsecond.
fn readable_within(sock: &UdpSocket, wait: Duration) -> std::io::Result<bool> {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let timeout = Timespec {
        tv_sec: i64::try_from(wait.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(wait.subsec_nanos()),
    };
    let mut fds = [PollFd::new(sock, PollFlags::IN)];
    match poll(&mut fds, Some(&timeout)) {
        Ok(n) => Ok(n > 0),
        Err(rustix::io::Errno::INTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Matches a datagram with the request it answers (by identifier), checks it and counts
/// it. A datagram for no request in flight (a late answer to a retransmitted one) is
/// ignored.
fn take_reply(
    cfg: &LoadConfig,
    start: Instant,
    reply: &[u8],
    slots: &mut [Option<InFlight>],
    in_flight: &mut usize,
    r: &mut Report,
) {
    let Some(&id) = reply.get(1) else { return };
    let Some(f) = slots[usize::from(id)].take() else {
        return;
    };
    *in_flight -= 1;
    r.answered += 1;
    r.latencies_us.push(f.started.elapsed().as_micros() as u64);
    r.sent_at_us
        .push(f.started.saturating_duration_since(start).as_micros() as u64);
    match client::check_reply_with(
        reply,
        &f.request,
        &cfg.secret,
        cfg.require_reply_message_authenticator,
    ) {
        Ok(got) => {
            if got == Reply::Accept {
                r.accepts += 1;
                if let Some(i) = f.entry {
                    if r.accepts_per_user.len() <= i {
                        r.accepts_per_user.resize(cfg.users.len(), 0);
                    }
                    r.accepts_per_user[i] += 1;
                }
            } else {
                r.rejects += 1;
            }
            if got != f.expect {
                r.unexpected += 1;
            }
        }
        Err(_) => r.bad_replies += 1,
    }
}

#[allow(clippy::too_many_arguments)]
fn send_new(
    cfg: &LoadConfig,
    sock: &UdpSocket,
    rng: &mut Rng,
    slots: &mut [Option<InFlight>],
    next_id: &mut usize,
    in_flight: &mut usize,
    r: &mut Report,
    started: Instant,
) -> std::io::Result<()> {
    // The caller keeps fewer than 256 in flight, so a free identifier exists.
    while slots[*next_id].is_some() {
        *next_id = (*next_id + 1) % 256;
    }
    let id = *next_id;
    *next_id = (id + 1) % 256;
    let entry = (rng.next_u64() % cfg.users.len().max(1) as u64) as usize;
    let (user, code) = &cfg.users[entry];
    let wrong = (rng.next_u64() % 1_000_000) as f64 / 1_000_000.0 < cfg.wrong_ratio;
    let wrong_code;
    let (code, expect, entry) = if wrong {
        // Nine digits that differ from the valid code in the first one.
        let first = (code.as_bytes().first().map_or(0, |b| b - b'0') + 1) % 10;
        wrong_code = format!("{first}{:08}", rng.next_u64() % 100_000_000);
        (wrong_code.as_str(), Reply::Reject, None)
    } else {
        (code.as_str(), Reply::Accept, Some(entry))
    };
    let mut auth = [0u8; 16];
    auth[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
    auth[8..].copy_from_slice(&rng.next_u64().to_le_bytes());
    let request = client::pap(id as u8, auth, user, code, &cfg.secret);
    send(sock, &request)?;
    slots[id] = Some(InFlight {
        request,
        expect,
        entry,
        started,
        deadline: Instant::now() + cfg.timeout,
        tries: 1,
    });
    *in_flight += 1;
    r.sent += 1;
    Ok(())
}

fn send(sock: &UdpSocket, bytes: &[u8]) -> std::io::Result<()> {
    match sock.send(bytes) {
        Ok(_) => Ok(()),
        // A full socket buffer or a server not yet listening: the retransmission covers it.
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Reads `user,code` lines (a header line `user,code` is skipped).
pub fn read_users(path: &std::path::Path) -> std::io::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once(','))
        .filter(|(u, _)| *u != "user")
        .map(|(u, c)| (u.trim().to_owned(), c.trim().to_owned()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(mode: Mode, max_requests: Option<u64>) -> LoadConfig {
        LoadConfig {
            server: SocketAddr::from(([127, 0, 0, 1], 1812)),
            secret: b"secret".to_vec(),
            users: Arc::new(Vec::new()),
            wrong_ratio: 0.1,
            mode,
            duration: Duration::from_secs(10),
            max_requests,
            timeout: Duration::from_secs(1),
            retries: 3,
            sockets: 4,
            seed: 1,
            require_reply_message_authenticator: true,
        }
    }

    #[test]
    fn a_worker_has_room_for_its_whole_run_before_it_starts() {
        // 43,500/s for 10 s over 4 sockets: 108,750 answers per worker.
        let open = config(Mode::Open { rate: 43_500.0 }, None);
        let n = room_per_worker(&open, 4);
        assert!(n >= 108_750, "{n}");
        let r = report_with_room(n);
        assert!(r.latencies_us.capacity() >= n && r.sent_at_us.capacity() >= n);
        assert!(r.latencies_us.is_empty() && r.sent_at_us.is_empty());
        // A quota bounds it; a closed loop without one gets room for a million.
        let quota = config(Mode::Open { rate: 43_500.0 }, Some(400));
        assert!((101..=2_000).contains(&room_per_worker(&quota, 4)));
        let closed = config(Mode::Closed { concurrency: 256 }, None);
        assert!(room_per_worker(&closed, 4) >= 1 << 20);
    }
}
