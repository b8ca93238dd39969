//! A small run of the timing tool against sparekey-radiusd's server on a store made by
//! `timing-setup`: every case answered as it must be, and audited under its true reason.
//! The measurement proper is bench/timing.sh; nothing here looks at the times.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use sparekey::{Config, Store};
use sparekey_bench::timing::{self, Case, TimingConfig};
use sparekey_radiusd::config::RadiusConfig;
use sparekey_radiusd::server::{self, Counters};

const SECRET: &str = "timing-test-secret-0123456789";

#[test]
fn every_case_is_answered_and_audited_under_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let targets = timing::setup(dir.path(), 5, "127.0.0.1:0", SECRET, "normal", 3).unwrap();
    assert_eq!(targets.len(), 5 * Case::ALL.len());
    assert_eq!(
        timing::read_targets(&dir.path().join("timing-users.csv")).unwrap(),
        targets
    );
    let config = Config::load(&dir.path().join("sparekey.toml")).unwrap();
    assert_eq!(config.policy.lockout_threshold, timing::LOCKOUT_THRESHOLD);

    let radius = RadiusConfig::from_config(&config).unwrap();
    let socket = server::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    let store = Box::new(Store::open(&config).unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let t = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let socket = tokio::net::UdpSocket::from_std(socket).unwrap();
            let counters = Arc::new(Counters::default());
            server::run(vec![socket], store, &radius, None, counters, async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
    });

    let samples = timing::run(&TimingConfig {
        server: addr,
        secret: SECRET.as_bytes().to_vec(),
        targets,
        cases: Case::ALL.to_vec(),
        samples: 20,
        warmup: 5,
        timeout: Duration::from_secs(5),
        seed: 3,
    })
    .unwrap();
    stop.send(()).unwrap();
    t.join().unwrap();

    assert_eq!(samples.lost, 0);
    assert_eq!(samples.unexpected, 0);
    for case in Case::ALL {
        assert_eq!(samples.of(case).len(), 20, "{}", case.as_str());
    }
    // 20 requests per case over 5 users each: no user sees more than 4 (+ warm-up).
    assert!(samples.max_per_user <= 5, "{}", samples.max_per_user);

    let audited = timing::audit_reasons(&config).unwrap();
    let count = |name: &str| {
        audited
            .iter()
            .find(|(r, _)| r == name)
            .map_or(0, |(_, n)| *n)
    };
    let total: u64 = audited.iter().map(|(_, n)| n).sum();
    assert_eq!(total, 20 * Case::ALL.len() as u64 + 5);
    for case in Case::ALL {
        let name = case.reason().map_or("accept", |r| r.as_str());
        assert!(count(name) >= 20, "{name}: {audited:?}");
    }
    let report = timing::report(&samples);
    assert!(
        report.contains("| unknown_user vs wrong_code |"),
        "{report}"
    );
    assert!(report.contains("| valid_code vs wrong_code |"), "{report}");
}
