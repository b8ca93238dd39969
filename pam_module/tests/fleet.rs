//! A fleet on one PostgreSQL store: two sparekey-radiusd servers (in this process, each
//! with its own connection) and pam_sparekey.so in pamtester processes (under pam_wrapper,
//! each in a private mount namespace, see `support`), all deciding the same codes. The
//! store is a throwaway cluster that `scripts/pg-test-cluster` runs on a loopback port.
//!
//! - Racing: every round issues a code with 1 use and one with 5, and 16 pamtesters and
//!   16 RADIUS requests (8 per server) try them at once; exactly 1 and 5 are accepted,
//!   every one of 50 rounds.
//! - Restart: PostgreSQL stops in the middle of a load run on both servers. Requests
//!   during the outage are refused (RADIUS: Reject, PAM: `PAM_AUTHINFO_UNAVAIL`), requests
//!   after it succeed, and no code is used more often than issued.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

#[path = "../../tests/support/pg_cluster.rs"]
mod pg_cluster;

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use pg_cluster::PgCluster;
use sparekey::store::CodeRequest;
use sparekey::{AuditFilter, Config, Context, DeviceKind, NewUser, Store};
use sparekey_radiusd::client::{self, Reply};
use sparekey_radiusd::config::RadiusConfig;
use sparekey_radiusd::server::{self, Counters};
use support::{Sandbox, finish, pam_text, program, text};

const SECRET: &str = "fleet-secret-0123456789abcdef";
const LIMIT: Duration = Duration::from_secs(60);
const USER: &str = "fleet";

/// A sparekey-radiusd on 127.0.0.1 with its own store connection, stopped on drop.
struct Radiusd {
    addr: SocketAddr,
    counters: Arc<Counters>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Radiusd {
    fn start(config: &Config) -> Radiusd {
        let store = Store::open(config).unwrap();
        let radius = RadiusConfig::from_config(config).unwrap();
        let socket = server::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = socket.local_addr().unwrap();
        let counters = Arc::new(Counters::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let c = counters.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let socket = tokio::net::UdpSocket::from_std(socket).unwrap();
                let shutdown = async move {
                    let _ = stopped.await;
                };
                server::run(vec![socket], Box::new(store), &radius, None, c, shutdown)
                    .await
                    .unwrap();
            });
        });
        Radiusd {
            addr,
            counters,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn store_errors(&self) -> u64 {
        self.counters.store_errors.load(Ordering::SeqCst)
    }
}

impl Drop for Radiusd {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Fleet {
    /// The cluster's WAL (every committed row passes through it) and server log go to the
    /// suite's leak check; the sandbox keeps its own files and syslog.
    fn drop(&mut self) {
        support::hygiene::keep(&self.cluster.dir.join("data/pg_wal"));
        support::hygiene::keep(&self.cluster.dir.join("log"));
    }
}

/// One PAP request from a socket of its own; `None` if no reply came within 10 s.
/// `tag` makes the request authenticator unique, so the reply cache never answers it.
fn radius(addr: SocketAddr, code: &str, tag: [u8; 4]) -> Option<Reply> {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut auth = [0x5a; 16];
    auth[..4].copy_from_slice(&tag);
    let req = client::pap(tag[3], auth, USER, code, SECRET.as_bytes());
    sock.send_to(&req, addr).unwrap();
    let mut buf = [0u8; 4096];
    let (n, _) = sock.recv_from(&mut buf).ok()?;
    Some(client::check_reply(&buf[..n], &req, SECRET.as_bytes()).unwrap())
}

/// The sandbox, a PostgreSQL store that both front ends use, an admin handle on it, and
/// the PAM service `sk`.
struct Fleet {
    sb: Sandbox,
    cluster: PgCluster,
    config: Config,
    admin: Store,
    ctx: Context,
}

impl Fleet {
    fn new() -> Fleet {
        let sb = Sandbox::new();
        let cluster = PgCluster::start();
        let db = cluster.create_db();
        // The module runs where /tmp is private: everything it reads lives in the sandbox,
        // root's and private, as it demands.
        let dir = sb.path("sparekey");
        std::fs::create_dir(&dir).unwrap();
        let password = std::fs::read_to_string(cluster.password_file()).unwrap();
        sb.write("sparekey/db.password", &password, 0o600);
        let config_path: PathBuf = sb.write(
            "sparekey/sparekey.toml",
            &format!(
                "[store]\nurl = \"{}\"\npassword_file = \"db.password\"\nkey_file = \"sparekey.key\"\n\
                 busy_timeout_ms = 5000\n[policy]\nlockout_threshold = 0\n\
                 [radius]\nlisten = [\"127.0.0.1:0\"]\n[[radius.client]]\nname = \"nas\"\n\
                 address = \"127.0.0.1\"\nsecret = \"{SECRET}\"\n",
                cluster.url(&db, "")
            ),
            0o644,
        );
        let config = Config::load(&config_path).unwrap();
        let mut admin = Store::create(&config).unwrap();
        let ctx = Context::new("cli:test");
        admin
            .add_user(
                NewUser {
                    username: USER.into(),
                    ..NewUser::default()
                },
                &ctx,
            )
            .unwrap();
        admin
            .add_device(USER, DeviceKind::Phone, None, &ctx)
            .unwrap();
        let module = sb.module();
        sb.write(
            "pamsvc/sk",
            &format!(
                "auth required {m} config={c}\n",
                m = module.display(),
                c = config_path.display()
            ),
            0o644,
        );
        Fleet {
            sb,
            cluster,
            config,
            admin,
            ctx,
        }
    }

    /// A code with `uses` uses, valid an hour; `replace` drops the user's other codes.
    fn code(&mut self, uses: u32, replace: bool) -> (String, String) {
        let issued = self
            .admin
            .generate_codes(
                USER,
                CodeRequest {
                    reuse_count: uses,
                    preserve_existing: !replace,
                    ..CodeRequest::default()
                },
                &self.ctx,
            )
            .unwrap();
        let c = &issued.codes[0];
        support::hygiene::issued([c.code.expose()]);
        (c.code.expose().to_owned(), c.info.id.to_string())
    }

    /// pamtester under pam_wrapper in the sandbox's namespace, waiting at the prompt.
    fn pamtester(&self) -> Child {
        let svc = format!(
            "PAM_WRAPPER_SERVICE_DIR={}",
            self.sb.path("pamsvc").display()
        );
        let pamtester = program("pamtester");
        let args = [
            "LD_PRELOAD=libpam_wrapper.so",
            "PAM_WRAPPER=1",
            &svc,
            pamtester.to_str().unwrap(),
            "sk",
            USER,
            "authenticate",
        ];
        self.sb.command("", &program("env"), &args).spawn().unwrap()
    }

    /// What one pamtester said last, after typing `code`.
    fn pam_login(&self, code: &str) -> String {
        said(&output(finish(
            self.pamtester(),
            &format!("{code}\n"),
            LIMIT,
        )))
    }

    /// Accepts recorded in the audit log for a code.
    fn audited_accepts(&mut self, code_id: &str) -> usize {
        self.admin
            .audit(&AuditFilter {
                outcome: Some("accept".into()),
                ..AuditFilter::default()
            })
            .unwrap()
            .iter()
            .filter(|e| e.code_id.as_deref() == Some(code_id))
            .count()
    }
}

/// All a process printed.
fn output(out: std::process::Output) -> String {
    format!("{}{}", text(&out.stdout), text(&out.stderr))
}

/// pamtester's last verdict line (`successfully authenticated` or a pam_strerror text).
fn said(out: &str) -> String {
    out.lines()
        .filter_map(|l| l.rfind("pamtester: ").map(|i| l[i + 11..].to_owned()))
        .next_back()
        .unwrap_or_else(|| out.to_owned())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Accept,
    Reject,
    Unavailable,
    NoReply,
}

fn pam_outcome(said: &str) -> Outcome {
    match said {
        pam_text::SUCCESS => Outcome::Accept,
        pam_text::AUTH_ERR => Outcome::Reject,
        pam_text::AUTHINFO_UNAVAIL => Outcome::Unavailable,
        other => panic!("unexpected pamtester answer: {other}"),
    }
}

fn radius_outcome(r: Option<Reply>) -> Outcome {
    match r {
        Some(Reply::Accept) => Outcome::Accept,
        Some(Reply::Reject) => Outcome::Reject,
        None => Outcome::NoReply,
    }
}

#[test]
fn two_radius_servers_and_sixteen_pam_logins_race_and_each_code_gives_exactly_its_uses() {
    let mut f = Fleet::new();
    let servers = [Radiusd::start(&f.config), Radiusd::start(&f.config)];
    let addrs = [servers[0].addr, servers[1].addr];
    for round in 0..50u8 {
        let (once, once_id) = f.code(1, true);
        let (five, five_id) = f.code(5, false);
        // 8 pamtesters and 8 RADIUS requests (4 per server) on each code.
        let codes: Vec<(&str, bool)> = (0..16)
            .map(|i| (if i % 2 == 0 { &*once } else { &*five }, i % 2 == 0))
            .collect();
        let start = Arc::new(Barrier::new(32));
        let mut pam = Vec::new();
        for &(code, is_once) in &codes {
            let child = f.pamtester();
            let input = format!("{code}\n");
            let start = start.clone();
            pam.push(std::thread::spawn(move || {
                start.wait();
                (
                    is_once,
                    pam_outcome(&said(&output(finish(child, &input, LIMIT)))),
                )
            }));
        }
        let mut rad = Vec::new();
        for (i, &(code, is_once)) in codes.iter().enumerate() {
            let (addr, code, start) = (addrs[i / 8], code.to_owned(), start.clone());
            rad.push(std::thread::spawn(move || {
                start.wait();
                (
                    is_once,
                    radius_outcome(radius(addr, &code, [round, i as u8, 0, i as u8])),
                )
            }));
        }
        let results: Vec<(bool, Outcome)> = pam
            .into_iter()
            .chain(rad)
            .map(|t| t.join().unwrap())
            .collect();
        let accepted = |once: bool| {
            results
                .iter()
                .filter(|&&(o, r)| o == once && r == Outcome::Accept)
                .count()
        };
        assert!(
            results
                .iter()
                .all(|(_, r)| matches!(r, Outcome::Accept | Outcome::Reject)),
            "round {round}: every attempt is decided: {results:?}"
        );
        assert_eq!(
            accepted(true),
            1,
            "round {round}: the 1-use code: {results:?}"
        );
        assert_eq!(
            accepted(false),
            5,
            "round {round}: the 5-use code: {results:?}"
        );
        assert_eq!(f.audited_accepts(&once_id), 1, "round {round}");
        assert_eq!(f.audited_accepts(&five_id), 5, "round {round}");
    }
    assert!(
        f.admin.list_codes(Some(USER)).unwrap().is_empty(),
        "all used up"
    );
    assert_eq!(servers[0].store_errors() + servers[1].store_errors(), 0);
}

/// Per server: each request's send time, reply time and outcome, until told to stop.
type Log = Arc<Mutex<Vec<(Instant, Instant, Outcome)>>>;

fn load(addr: SocketAddr, code: String, server: u8, stop: Arc<AtomicBool>, log: Log) {
    let mut n: u32 = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        n += 1;
        let b = n.to_be_bytes();
        let sent = Instant::now();
        let r = radius_outcome(radius(addr, &code, [server, b[1], b[2], b[3]]));
        log.lock().unwrap().push((sent, Instant::now(), r));
    }
}

/// Polls until each log has `n` entries sent at or after `since`, or panics at the deadline.
fn wait_for(logs: &[Log], since: Instant, n: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = logs.iter().all(|l| {
            l.lock()
                .unwrap()
                .iter()
                .filter(|(sent, _, _)| *sent >= since)
                .count()
                >= n
        });
        if done {
            return;
        }
        assert!(Instant::now() < deadline, "no {n} requests {what} in time");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_postgresql_restart_mid_load_refuses_during_the_outage_and_recovers_after() {
    const USES: u32 = 100_000;
    let mut f = Fleet::new();
    let servers = [Radiusd::start(&f.config), Radiusd::start(&f.config)];
    let (code, code_id) = f.code(USES, true);
    let stop = Arc::new(AtomicBool::new(false));
    let logs: Vec<Log> = (0..2).map(|_| Log::default()).collect();
    let workers: Vec<_> = (0..2)
        .map(|i| {
            let (addr, code, stop, log) =
                (servers[i].addr, code.clone(), stop.clone(), logs[i].clone());
            std::thread::spawn(move || load(addr, code, i as u8, stop, log))
        })
        .collect();

    let began = Instant::now();
    wait_for(&logs, began, 10, "before the outage");
    assert_eq!(pam_outcome(&f.pam_login(&code)), Outcome::Accept);

    let stopping = Instant::now();
    f.cluster.stop();
    let down = Instant::now();
    wait_for(&logs, down, 10, "during the outage");
    assert_eq!(
        pam_outcome(&f.pam_login(&code)),
        Outcome::Unavailable,
        "PAM fails closed while the store is down"
    );
    let restarting = Instant::now();
    f.cluster.start_again();
    let up = Instant::now();
    wait_for(&logs, up, 10, "after the outage");
    assert_eq!(pam_outcome(&f.pam_login(&code)), Outcome::Accept);
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.join().unwrap();
    }

    let mut client_accepts = 0;
    for (i, log) in logs.iter().enumerate() {
        let log = log.lock().unwrap();
        for &(sent, replied, outcome) in log.iter() {
            if outcome == Outcome::Accept {
                client_accepts += 1;
            }
            if replied < stopping {
                assert_eq!(outcome, Outcome::Accept, "server {i} before the outage");
            }
            if sent >= down && replied <= restarting {
                assert_ne!(outcome, Outcome::Accept, "server {i} during the outage");
                assert_ne!(
                    outcome,
                    Outcome::NoReply,
                    "server {i}: a Reject, not silence"
                );
            }
            if sent >= up {
                assert_eq!(outcome, Outcome::Accept, "server {i} after the outage");
            }
        }
        assert!(servers[i].store_errors() > 0, "server {i} saw the outage");
    }
    // No use taken without a commit, none answered Accept without one: what the store
    // consumed is what the audit log recorded, and at least what clients were told.
    let remaining = f.admin.list_codes(Some(USER)).unwrap()[0]
        .uses_remaining
        .unwrap();
    let consumed = (USES - remaining) as usize;
    let pam_accepts = 2;
    assert_eq!(consumed, f.audited_accepts(&code_id));
    assert!(
        client_accepts + pam_accepts <= consumed,
        "{client_accepts} + {pam_accepts} accepted, {consumed} consumed"
    );

    // After the restart, racing on a single-use code still gives exactly one accept.
    let (once, _) = f.code(1, false);
    let start = Arc::new(Barrier::new(8));
    let racers: Vec<_> = (0..8u8)
        .map(|i| {
            let (addr, once, start) = (
                servers[usize::from(i % 2)].addr,
                once.clone(),
                start.clone(),
            );
            std::thread::spawn(move || {
                start.wait();
                radius_outcome(radius(addr, &once, [9, 9, 9, i]))
            })
        })
        .collect();
    let outcomes: Vec<Outcome> = racers.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(
        outcomes.iter().filter(|&&o| o == Outcome::Accept).count(),
        1,
        "{outcomes:?}"
    );
}
