//! Crash safety of sparekey-radiusd. The real daemon serves a real store (synchronous =
//! full) under load from the generator, many requests in flight, and is killed with
//! SIGKILL at a random moment, then started again on the same store: 30 times. After every
//! restart the store passes `PRAGMA integrity_check`; no code has been accepted more often
//! than it was issued; every Accept a client saw is consumed in the store (a reply is sent
//! only after its commit); the audit's accepts of each code equal its consumption; and the
//! codes the load never sent are all there with every use.
//!
//! The kill moments come from a seed printed at the start (set `SPAREKEY_CRASH_SEED` to
//! replay one).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sparekey::config::Synchronous;
use sparekey::store::CodeRequest;
use sparekey::{Config, Context, DeviceKind, NewUser, Store};
use sparekey_bench::radius_load::{self, LoadConfig, Mode};
use sparekey_bench::rng::Rng;
use sparekey_radiusd::client::{self, Reply};

#[path = "../../tests/support/hygiene.rs"]
mod hygiene;
#[path = "../../tests/support/workspace_bin.rs"]
mod workspace_bin;

const SECRET: &str = "crash-test-secret-0123456789abcdef";
/// SIGKILLs in the whole test.
const KILLS: usize = 30;
/// Users with fresh codes for each cycle's load.
const USERS_PER_CYCLE: usize = 24;
/// Uses of the codes each load user has, one code each.
const LOAD_USES: [u32; 3] = [1, 2, 5];
/// Uses of the control code each load user also has; the load never sends it.
const CONTROL_USES: u32 = 3;
/// Every fifth cycle runs past the daemon's once-a-second WAL checkpoint, so that some
/// kills can land in one.
const LONG_EVERY: usize = 5;
/// How long to wait for the daemon to come up, or for it to go down once killed.
const DEADLINE: Duration = Duration::from_secs(20);

fn bin(name: &str) -> PathBuf {
    workspace_bin::workspace_bin(name)
}

/// Uniform in `lo..hi` milliseconds: a kill moment.
fn millis(rng: &mut Rng, lo: u64, hi: u64) -> Duration {
    Duration::from_millis(lo + rng.next_u64() % (hi - lo))
}

/// A code the test issued, in clear, with what it was issued with.
struct Issued {
    id: String,
    user: String,
    code: String,
    uses: u32,
}

/// One run of the daemon: the child, where it listens, and its log.
struct Daemon {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

/// Starts `sparekey-radiusd` on the store and waits, within [`DEADLINE`], until it answers
/// Status-Server. Its log (stderr) is kept in `log`.
fn start(config: &Path, log: Arc<Mutex<Vec<String>>>) -> Daemon {
    let child = Command::new(bin("sparekey-radiusd"))
        .arg("--config")
        .arg(config)
        .args(["--log-level", "info"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Dropped on a failed assertion, which kills the child.
    let mut d = Daemon {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        log,
    };
    let stderr = d.child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<SocketAddr>();
    let kept = d.log.clone();
    // Reads the log until the daemon dies (the pipe closes then).
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(a) = line.split("listening on ").nth(1) {
                if let Ok(a) = a.trim().parse() {
                    let _ = tx.send(a);
                }
            }
            kept.lock().unwrap().push(line);
        }
    });
    d.addr = listening(&rx, &mut d);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let until = Instant::now() + DEADLINE;
    let mut id = 0u8;
    loop {
        assert!(
            Instant::now() < until,
            "sparekey-radiusd did not answer Status-Server within {DEADLINE:?}"
        );
        id = id.wrapping_add(1);
        let probe = client::request(
            client::code::STATUS_SERVER,
            id,
            [id; 16],
            &[],
            SECRET.as_bytes(),
            true,
        );
        sock.send_to(&probe, d.addr).unwrap();
        let mut buf = [0u8; 4096];
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            if client::check_reply(&buf[..n], &probe, SECRET.as_bytes()) == Ok(Reply::Accept) {
                break;
            }
        }
    }
    d
}

/// The address from the daemon's "listening on" line, within [`DEADLINE`].
fn listening(rx: &Receiver<SocketAddr>, d: &mut Daemon) -> SocketAddr {
    match rx.recv_timeout(DEADLINE) {
        Ok(a) => a,
        Err(RecvTimeoutError::Timeout) => {
            panic!("sparekey-radiusd did not start listening within {DEADLINE:?}")
        }
        Err(RecvTimeoutError::Disconnected) => {
            let status = d.child.wait().unwrap();
            panic!(
                "sparekey-radiusd exited ({status}) before listening: {}",
                d.log.lock().unwrap().join("\n")
            )
        }
    }
}

impl Drop for Daemon {
    /// A failed assertion must not leave the daemon running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// SIGKILL, and the check that the daemon was still running to receive it.
fn kill(d: &mut Daemon) {
    use std::os::unix::process::ExitStatusExt;
    d.child.kill().unwrap();
    let status = d.child.wait().unwrap();
    assert_eq!(
        status.signal(),
        Some(9),
        "sparekey-radiusd ended by itself ({status}) before the kill: {}",
        d.log.lock().unwrap().join("\n")
    );
}

/// Makes users with a device and codes of `LOAD_USES` uses each plus a control code, with
/// the library, as `sparekey code generate --preserve-existing` would.
fn issue(config: &Config, users: usize) -> (Vec<Issued>, Vec<Issued>) {
    let mut store = Store::open(config).unwrap();
    let ctx = Context::new("cli:crash-test");
    let mut load = Vec::new();
    let mut control = Vec::new();
    store
        .batch(&ctx, |b| {
            for i in 0..users {
                let user = format!("crash{i:04}");
                b.add_user(NewUser {
                    username: user.clone(),
                    ..NewUser::default()
                })?;
                b.add_device(&user, DeviceKind::Phone, None)?;
                for (k, uses) in LOAD_USES.iter().chain([&CONTROL_USES]).enumerate() {
                    let req = CodeRequest {
                        count: 1,
                        reuse_count: *uses,
                        valid_secs: 3600,
                        preserve_existing: k > 0,
                        ..CodeRequest::default()
                    };
                    let c = b.generate_codes(&user, &req)?.codes.remove(0);
                    let issued = Issued {
                        id: c.info.id.to_string(),
                        user: user.clone(),
                        code: c.code.expose().to_owned(),
                        uses: *uses,
                    };
                    if k < LOAD_USES.len() {
                        load.push(issued);
                    } else {
                        control.push(issued);
                    }
                }
            }
            Ok(())
        })
        .unwrap();
    (load, control)
}

/// Runs the `sparekey` CLI with `--json` and parses its output.
fn cli(config: &Path, args: &[&str]) -> serde_json::Value {
    let out = Command::new(bin("sparekey"))
        .arg("--config")
        .arg(config)
        .arg("--json")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sparekey {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// What the store says, read through a read-only connection of its own.
struct Seen {
    /// `PRAGMA integrity_check`'s rows.
    integrity: Vec<String>,
    /// Uses left by code id; a code used up is deleted, so absent here.
    remaining: HashMap<String, u32>,
    /// Audited accepts by code id.
    audited_accepts: HashMap<String, u64>,
    /// Audited verifications, accepted or not.
    audited_auths: u64,
}

fn read_store(db: &Path) -> Seen {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let integrity = conn
        .prepare("PRAGMA integrity_check")
        .unwrap()
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    // One read transaction, so that the codes and the audit are seen at one moment.
    conn.execute_batch("BEGIN").unwrap();
    let remaining = conn
        .prepare("SELECT id, uses_remaining FROM codes")
        .unwrap()
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u32>(1)?)))
        .unwrap()
        .collect::<Result<HashMap<_, _>, _>>()
        .unwrap();
    let audited_accepts = conn
        .prepare(
            "SELECT code_id, count(*) FROM audit WHERE action = 'auth' AND outcome = 'accept' \
             AND code_id IS NOT NULL GROUP BY code_id",
        )
        .unwrap()
        .query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
        })
        .unwrap()
        .collect::<Result<HashMap<_, _>, _>>()
        .unwrap();
    let audited_auths: i64 = conn
        .query_row(
            "SELECT count(*) FROM audit WHERE action = 'auth'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    conn.execute_batch("COMMIT").unwrap();
    Seen {
        audited_auths: audited_auths as u64,
        integrity,
        remaining,
        audited_accepts,
    }
}

/// Everything the clients have seen so far, to hold the store to.
struct Ledger {
    load: Vec<Issued>,
    control: Vec<Issued>,
    /// Accepts the clients saw, by index in `load`.
    accepts: Vec<u64>,
    /// Replies the clients saw, Accept or Reject.
    answered: u64,
}

/// The checks made after every restart. Returns how many uses the store has consumed
/// beyond the Accepts the clients saw (answers lost to a kill after their commit), and
/// what the store holds.
fn check(db: &Path, ledger: &Ledger, when: &str) -> (u64, Seen) {
    let s = read_store(db);
    assert_eq!(s.integrity, ["ok"], "{when}: integrity_check");
    let mut unseen = 0;
    for (i, c) in ledger.load.iter().enumerate() {
        let seen = ledger.accepts[i];
        let consumed = u64::from(c.uses - s.remaining.get(&c.id).copied().unwrap_or(0));
        let audited = s.audited_accepts.get(&c.id).copied().unwrap_or(0);
        assert!(
            seen <= u64::from(c.uses),
            "{when}: code {} of {} ({} uses) was accepted {seen} times",
            c.id,
            c.user,
            c.uses
        );
        assert!(
            consumed >= seen,
            "{when}: code {} of {}: clients saw {seen} accepts, the store consumed {consumed}",
            c.id,
            c.user
        );
        assert_eq!(
            audited, consumed,
            "{when}: code {} of {}: the audit's accepts against the consumption",
            c.id, c.user
        );
        unseen += consumed - seen;
    }
    for c in &ledger.control {
        assert_eq!(
            s.remaining.get(&c.id),
            Some(&c.uses),
            "{when}: control code {} of {} has gone or lost uses",
            c.id,
            c.user
        );
        assert!(
            !s.audited_accepts.contains_key(&c.id),
            "{when}: control code {} accepted",
            c.id
        );
    }
    // A Reject, too, is sent only after the verification's audit event has committed.
    assert!(
        s.audited_auths >= ledger.answered,
        "{when}: clients saw {} answers, the audit has {} verifications",
        ledger.answered,
        s.audited_auths
    );
    (unseen, s)
}

/// The codes made with the `sparekey` CLI, as `sparekey code list USER` lists them: every
/// one of `ids` there, unused and unexpired.
fn check_cli_codes(config: &Path, user: &str, ids: &HashSet<String>, uses: u64, when: &str) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let list = cli(config, &["code", "list", user]);
    let listed: HashSet<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            assert_eq!(c["uses_remaining"].as_u64(), Some(uses), "{when}: {c}");
            assert!(c["expires_at"].as_i64().unwrap() > now, "{when}: {c}");
            c["id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(
        &listed, ids,
        "{when}: the codes `sparekey code list {user}` shows"
    );
}

#[test]
fn sigkill_under_load_loses_no_consumption_and_no_unused_code() {
    let seed = std::env::var("SPAREKEY_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("seed {seed} (SPAREKEY_CRASH_SEED={seed} replays these kill moments)");
    let mut rng = Rng::with_state(seed);

    let dir = tempfile::tempdir().unwrap();
    // The benchmark's config and store: lockout off, so that wrong codes stay wrong codes,
    // and synchronous = full, as shipped.
    sparekey_bench::setup::make(dir.path(), 0, "127.0.0.1:0", SECRET, "full").unwrap();
    let config_path = dir.path().join("sparekey.toml");
    let config = Config::load(&config_path).unwrap();
    assert_eq!(config.store.synchronous, Synchronous::Full);
    let db = dir.path().join("sparekey.db");
    let (load, control) = issue(&config, KILLS * USERS_PER_CYCLE);

    // Control codes made the way an admin makes them, with the CLI.
    cli(&config_path, &["user", "add", "keeper"]);
    cli(
        &config_path,
        &["device", "add", "keeper", "--kind", "token"],
    );
    let made = cli(
        &config_path,
        &[
            "code",
            "generate",
            "keeper",
            "--count",
            "3",
            "--reuse-count",
            "2",
            "--valid-secs",
            "3600",
        ],
    );
    let keeper: HashSet<String> = made["codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(keeper.len(), 3);

    let mut ledger = Ledger {
        accepts: vec![0; load.len()],
        load,
        control,
        answered: 0,
    };
    let _ = check(&db, &ledger, "before the first start");
    check_cli_codes(&config_path, "keeper", &keeper, 2, "before the first start");

    let log = Arc::new(Mutex::new(Vec::new()));
    let per_cycle = USERS_PER_CYCLE * LOAD_USES.len();
    let mut daemon = start(&config_path, log.clone());
    let mut carried: Vec<usize> = Vec::new();
    let mut unseen_total = 0;
    let mut kills_during_accepts = 0;
    for cycle in 0..KILLS {
        // This cycle's fresh codes, and the last cycle's that the clients have not seen
        // used up, so that some codes are in use across a kill.
        let entries: Vec<usize> = (cycle * per_cycle..(cycle + 1) * per_cycle)
            .chain(carried.iter().copied())
            .collect();
        let users: Vec<(String, String)> = entries
            .iter()
            .map(|&i| (ledger.load[i].user.clone(), ledger.load[i].code.clone()))
            .collect();
        let cfg = LoadConfig {
            server: daemon.addr,
            secret: SECRET.as_bytes().to_vec(),
            users: Arc::new(users),
            wrong_ratio: 0.1,
            mode: Mode::Closed { concurrency: 64 },
            duration: DEADLINE,
            max_requests: None,
            timeout: Duration::from_millis(1000),
            retries: 3,
            sockets: 2,
            seed: seed ^ cycle as u64,
            require_reply_message_authenticator: true,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let running = {
            let stop = stop.clone();
            std::thread::spawn(move || radius_load::run_until(&cfg, &stop))
        };
        // The random moment is the point here: nothing is waited for.
        let delay = if cycle % LONG_EVERY == LONG_EVERY - 1 {
            millis(&mut rng, 1000, 1500)
        } else {
            millis(&mut rng, 1, 150)
        };
        std::thread::sleep(delay);
        kill(&mut daemon);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let report = running.join().unwrap().unwrap();
        assert_eq!(report.bad_replies, 0, "cycle {cycle}: {}", report.summary());
        let valid_accepts: u64 = report.accepts_per_user.iter().sum();
        assert_eq!(
            report.accepts,
            valid_accepts,
            "cycle {cycle}: a wrong code was accepted: {}",
            report.summary()
        );
        for (j, n) in report.accepts_per_user.iter().enumerate() {
            ledger.accepts[entries[j]] += n;
        }
        ledger.answered += report.answered;

        daemon = start(&config_path, log.clone());
        let when = format!(
            "after kill {} (seed {seed}, {delay:?} into the load)",
            cycle + 1
        );
        let (unseen, seen) = check(&db, &ledger, &when);
        check_cli_codes(&config_path, "keeper", &keeper, 2, &when);
        // Did the kill come while codes were being accepted: some accepted, some left?
        let left = entries
            .iter()
            .filter(|&&i| seen.remaining.contains_key(&ledger.load[i].id))
            .count();
        if report.accepts > 0 && left > 0 {
            kills_during_accepts += 1;
        }
        eprintln!(
            "kill {:2} at {:4} ms: {} accepts, {} rejects, {} abandoned, {} consumed unseen so far",
            cycle + 1,
            delay.as_millis(),
            report.accepts,
            report.rejects,
            report.abandoned,
            unseen
        );
        unseen_total = unseen;
        carried = entries
            .iter()
            .copied()
            .filter(|&i| {
                i >= cycle * per_cycle && ledger.accepts[i] < u64::from(ledger.load[i].uses)
            })
            .collect();
    }
    kill(&mut daemon);

    let accepted: u64 = ledger.accepts.iter().sum();
    eprintln!(
        "{KILLS} kills: {accepted} accepts seen, {} answers, {unseen_total} uses consumed without \
         the client seeing the Accept, {kills_during_accepts} kills while codes were being accepted",
        ledger.answered
    );
    // The test tested something: codes were accepted, and kills came while they were.
    assert!(accepted > 0 && kills_during_accepts > 0);

    // The log never shows a code, through all the crashes.
    let codes: HashSet<&str> = ledger.load.iter().map(|c| c.code.as_str()).collect();
    let log = log.lock().unwrap();
    assert!(
        log.iter().any(|l| l.contains("result=accept")),
        "the log records outcomes"
    );
    for (n, line) in log.iter().enumerate() {
        assert!(
            !line
                .split(|ch: char| !ch.is_ascii_digit())
                .any(|w| codes.contains(w)),
            "a code in line {n} of the log"
        );
        assert!(!line.starts_with("error"), "sparekey-radiusd: {line}");
    }
    // And for the suite's leak check: every code, the store, and the log.
    hygiene::issued(ledger.load.iter().map(|c| c.code.as_str()));
    hygiene::issued(ledger.control.iter().map(|c| c.code.as_str()));
    hygiene::keep_text("radiusd.log", &log.join("\n"));
    hygiene::keep_except(dir.path(), &["users.csv", "freeradius-users"]);
}
