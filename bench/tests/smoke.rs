//! A small run of the load generator against sparekey-radiusd (and the null responder):
//! a few hundred requests, every one answered as expected. The benchmark proper is not
//! part of the tests; this keeps the generator and its setup working.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use sparekey::{Config, Store};
use sparekey_bench::radius_load::{self, LoadConfig, Mode};
use sparekey_radiusd::config::RadiusConfig;
use sparekey_radiusd::server::{self, Counters};
use sparekey_radiusd::writer::Verify;

#[path = "../../tests/support/hygiene.rs"]
mod hygiene;

const SECRET: &str = "smoke-test-secret-0123456789";

fn serve(
    verifier: Box<dyn Verify>,
    config: &Config,
    f: impl FnOnce(std::net::SocketAddr),
) -> Arc<Counters> {
    let radius = RadiusConfig::from_config(config).unwrap();
    let socket = server::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    let counters = Arc::new(Counters::default());
    let c = counters.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let t = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let socket = tokio::net::UdpSocket::from_std(socket).unwrap();
            server::run(vec![socket], verifier, &radius, None, c, async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
    });
    f(addr);
    stop.send(()).unwrap();
    t.join().unwrap();
    counters
}

fn load(
    addr: std::net::SocketAddr,
    users: Arc<Vec<(String, String)>>,
    mode: Mode,
) -> radius_load::Report {
    radius_load::run(&LoadConfig {
        server: addr,
        secret: SECRET.as_bytes().to_vec(),
        users,
        wrong_ratio: 0.2,
        mode,
        duration: Duration::from_secs(30),
        max_requests: Some(400),
        timeout: Duration::from_millis(500),
        retries: 10,
        sockets: 2,
        seed: 7,
        require_reply_message_authenticator: true,
    })
    .unwrap()
}

#[test]
fn the_generator_drives_sparekey_radiusd_and_every_answer_is_as_expected() {
    let dir = tempfile::tempdir().unwrap();
    sparekey_bench::setup::make(dir.path(), 200, "127.0.0.1:0", SECRET, "normal").unwrap();
    let config = Config::load(&dir.path().join("sparekey.toml")).unwrap();
    let users = Arc::new(radius_load::read_users(&dir.path().join("users.csv")).unwrap());
    assert_eq!(users.len(), 200);
    hygiene::issued(users.iter().map(|(_, code)| code));
    let fr = std::fs::read_to_string(dir.path().join("freeradius-users")).unwrap();
    assert_eq!(fr.lines().count(), 200);

    let store = Store::open(&config).unwrap();
    let mut reports = Vec::new();
    serve(Box::new(store), &config, |addr| {
        reports.push(load(addr, users.clone(), Mode::Closed { concurrency: 16 }));
        reports.push(load(addr, users.clone(), Mode::Open { rate: 2000.0 }));
    });
    for r in &reports {
        assert!(r.all_as_expected(), "{}", r.summary());
        assert_eq!(r.sent, 400);
        assert!(r.accepts > 250 && r.rejects > 40, "{}", r.summary());
        // The timeline holds every answer once, in send order, each with its latency.
        let mut timeline = Vec::new();
        r.write_timeline(&mut timeline).unwrap();
        let rows: Vec<(u64, u64)> = String::from_utf8(timeline)
            .unwrap()
            .lines()
            .map(|l| {
                let (at, latency) = l.split_once(' ').unwrap();
                (at.parse().unwrap(), latency.parse().unwrap())
            })
            .collect();
        assert_eq!(rows.len() as u64, r.answered);
        assert!(rows.windows(2).all(|w| w[0].0 <= w[1].0));
        let mut latencies: Vec<u64> = rows.iter().map(|&(_, l)| l).collect();
        let mut reported = r.latencies_us.clone();
        latencies.sort_unstable();
        reported.sort_unstable();
        assert_eq!(latencies, reported);
    }
    // Every answer was durably recorded: one audit event per verified request.
    let audited = Store::open(&config)
        .unwrap()
        .audit(&sparekey::AuditFilter {
            action: Some("auth".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(audited.len(), 800);

    let null = sparekey_bench::null::NullVerifier::new(&users);
    let counters = serve(Box::new(null), &config, |addr| {
        let r = load(addr, users.clone(), Mode::Closed { concurrency: 32 });
        assert!(r.all_as_expected(), "{}", r.summary());
    });
    assert_eq!(
        counters.accepts.load(std::sync::atomic::Ordering::SeqCst)
            + counters.rejects.load(std::sync::atomic::Ordering::SeqCst),
        400
    );

    // The durable null: the same answers, and every one's bytes in its log.
    let log = dir.path().join("durable-null.log");
    let durable = sparekey_bench::null::SyncLog::create(&log, 100).unwrap();
    let null = sparekey_bench::null::NullVerifier::with_log(&users, durable);
    let counters = serve(Box::new(null), &config, |addr| {
        let r = load(addr, users.clone(), Mode::Closed { concurrency: 32 });
        assert!(r.all_as_expected(), "{}", r.summary());
    });
    let answered = counters.accepts.load(std::sync::atomic::Ordering::SeqCst)
        + counters.rejects.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(answered, 400);
    assert_eq!(std::fs::metadata(&log).unwrap().len(), 100 * 400);
    // The generator's inputs hold the codes by design; the rest must not.
    hygiene::keep_except(dir.path(), &["users.csv", "freeradius-users"]);
}

/// `store-bench batch` on a small store: every verdict it checks comes out as expected
/// (it stops at the first that does not), it prints its result line, and it leaves
/// nothing in its work directory.
#[test]
fn the_batch_store_bench_runs_small_and_cleans_up() {
    let work = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_store-bench"))
        .args([
            "batch",
            "--users",
            "40",
            "--batch",
            "8",
            "--attempts",
            "100",
        ])
        .args(["--rounds", "1", "--wrong", "0.5", "--work-dir"])
        .arg(work.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(
            "RESULT batch users=40 codes=1 batch=8 wrong=0.5 sync=normal us_per_attempt="
        ),
        "{stdout}"
    );
    assert_eq!(std::fs::read_dir(work.path()).unwrap().count(), 0);
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_store-bench"))
        .args(["batch", "--wrong", "2"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}
