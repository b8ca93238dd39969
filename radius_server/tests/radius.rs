//! sparekey-radiusd end to end: a real server on a loopback port, real `radclient`
//! (FreeRADIUS), and raw datagrams for what no polite client sends.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use sparekey::store::CodeRequest;
use sparekey::{AuditFilter, Config, Context, DeviceKind, NewUser, Status, Store, UserUpdate};
use sparekey_radiusd::client::{self, Reply, attr, code};
use sparekey_radiusd::config::RadiusConfig;
use sparekey_radiusd::server::{self, Counters};

#[path = "../../tests/support/hygiene.rs"]
mod hygiene;

const SECRET: &str = "s3cret-for-tests-0123456789";

/// A server on 127.0.0.1 with its own store, stopped on drop.
struct Server {
    dir: tempfile::TempDir,
    addr: SocketAddr,
    counters: Arc<Counters>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The tests' policy: a low lockout threshold, so lockouts are quick to reach.
const TEST_POLICY: &str = "[policy]\nlockout_threshold = 3\n";

fn write_config(dir: &Path, radius: &str) -> PathBuf {
    write_config_with(dir, TEST_POLICY, radius)
}

fn write_config_with(dir: &Path, policy: &str, radius: &str) -> PathBuf {
    let cfg = dir.join("sparekey.toml");
    let text =
        format!("[store]\npath = \"sparekey.db\"\nkey_file = \"sparekey.key\"\n{policy}{radius}");
    std::fs::write(&cfg, text).unwrap();
    cfg
}

fn radius_section(extra: &str, client_address: &str, require_ma: bool) -> String {
    format!(
        "[radius]\nlisten = [\"127.0.0.1:0\"]\n{extra}\n[[radius.client]]\nname = \"test-nas\"\naddress = \"{client_address}\"\n\
         secret = \"{SECRET}\"\nrequire_message_authenticator = {require_ma}\n"
    )
}

impl Server {
    fn start(radius: &str) -> Server {
        Self::start_on("127.0.0.1:0", radius)
    }

    fn start_on(bind: &str, radius: &str) -> Server {
        Self::start_with(bind, TEST_POLICY, radius)
    }

    /// A server whose config has `policy` (empty: the defaults) before its `radius` section.
    fn start_with(bind: &str, policy: &str, radius: &str) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_config_with(dir.path(), policy, radius);
        let config = Config::load(&cfg).unwrap();
        let store = Store::create(&config).unwrap();
        let radius = RadiusConfig::from_config(&config).unwrap();
        let socket = server::bind(bind.parse().unwrap()).unwrap();
        let addr = socket.local_addr().unwrap();
        let counters = Arc::new(Counters::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let c = counters.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
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
        Server {
            dir,
            addr,
            counters,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn config(&self) -> Config {
        Config::load(&self.dir.path().join("sparekey.toml")).unwrap()
    }

    /// An admin's handle on the same store.
    fn admin(&self) -> Store {
        Store::open(&self.config()).unwrap()
    }

    fn enrolled(&self, name: &str) -> Store {
        let mut s = self.admin();
        let ctx = Context::new("test");
        s.add_user(
            NewUser {
                username: name.into(),
                ..NewUser::default()
            },
            &ctx,
        )
        .unwrap();
        s.add_device(name, DeviceKind::Phone, None, &ctx).unwrap();
        s
    }

    fn code(&self, name: &str, reuse_count: u32) -> String {
        let req = CodeRequest {
            reuse_count,
            valid_secs: 0,
            ..CodeRequest::default()
        };
        let issued = self
            .admin()
            .generate_codes(name, req, &Context::new("test"))
            .unwrap();
        let code = issued.codes[0].code.expose().to_owned();
        hygiene::issued([&code]);
        code
    }

    fn counter(&self, f: impl Fn(&Counters) -> &std::sync::atomic::AtomicU64) -> u64 {
        f(&self.counters).load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        hygiene::keep(self.dir.path());
    }
}

/// What radclient saw.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Accept,
    Reject,
    NoReply,
}

/// Runs FreeRADIUS's radclient with `pairs` (`User-Name = "x", ...`) and returns what it got
/// and its output. One try, a one-second wait: "no reply" costs a second.
fn radclient(addr: SocketAddr, kind: &str, pairs: &str, secret: &str) -> (Seen, String) {
    let mut child = Command::new("radclient")
        .args(["-x", "-r", "1", "-t", "1", &addr.to_string(), kind, secret])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("radclient (Debian freeradius-utils) must be installed: scripts/test-deps");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(pairs.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = if text.contains("Received Access-Accept") {
        Seen::Accept
    } else if text.contains("Received Access-Reject") {
        Seen::Reject
    } else {
        assert!(text.contains("No reply"), "{text}");
        Seen::NoReply
    };
    (seen, text)
}

fn pap_pairs(user: &str, code: &str) -> String {
    format!("User-Name = \"{user}\", User-Password = \"{code}\", Message-Authenticator = 0x00\n")
}

#[test]
fn radclient_accepts_a_code_once_and_rejects_wrong_ones() {
    let s = Server::start(&radius_section("", "127.0.0.1", true));
    s.enrolled("alice");
    let c = s.code("alice", 1);
    let (seen, text) = radclient(s.addr, "auth", &pap_pairs("alice", &c), SECRET);
    assert_eq!(seen, Seen::Accept, "{text}");
    // The reply's first attribute is the Message-Authenticator, which radclient verified.
    let received = text.split("Received").nth(1).unwrap();
    assert!(
        received
            .lines()
            .nth(1)
            .unwrap()
            .contains("Message-Authenticator"),
        "{received}"
    );
    assert_eq!(
        radclient(s.addr, "auth", &pap_pairs("alice", &c), SECRET).0,
        Seen::Reject
    );
    assert_eq!(
        radclient(s.addr, "auth", &pap_pairs("alice", "000000000"), SECRET).0,
        Seen::Reject
    );
    assert_eq!(
        radclient(s.addr, "auth", &pap_pairs("nobody", "000000000"), SECRET).0,
        Seen::Reject
    );
    let (seen, text) = radclient(s.addr, "status", "Message-Authenticator = 0x00\n", SECRET);
    assert_eq!(seen, Seen::Accept, "{text}");

    let audit = s
        .admin()
        .audit(&AuditFilter {
            action: Some("auth".into()),
            ..AuditFilter::default()
        })
        .unwrap();
    assert_eq!(audit.len(), 4);
    assert_eq!(audit[0].actor, "radius:test-nas");
    assert_eq!(audit[0].outcome, "accept");
    assert_eq!(audit[0].source.address.as_deref(), Some("127.0.0.1"));
}

#[test]
fn radclient_is_refused_for_locked_disabled_and_unenrolled_users() {
    let s = Server::start(&radius_section("", "127.0.0.1", true));
    let mut admin = s.enrolled("locked");
    let locked_code = s.code("locked", 0);
    for _ in 0..3 {
        assert_eq!(
            radclient(s.addr, "auth", &pap_pairs("locked", "111111111"), SECRET).0,
            Seen::Reject
        );
    }
    assert_eq!(
        radclient(s.addr, "auth", &pap_pairs("locked", &locked_code), SECRET).0,
        Seen::Reject
    );

    let ctx = Context::new("test");
    s.enrolled("off");
    let off_code = s.code("off", 0);
    admin
        .update_user(
            "off",
            UserUpdate {
                status: Some(Status::Disabled),
                ..UserUpdate::default()
            },
            &ctx,
        )
        .unwrap();
    assert_eq!(
        radclient(s.addr, "auth", &pap_pairs("off", &off_code), SECRET).0,
        Seen::Reject
    );

    admin
        .add_user(
            NewUser {
                username: "new".into(),
                ..NewUser::default()
            },
            &ctx,
        )
        .unwrap();
    let new_code = s.code("new", 0);
    assert_eq!(
        radclient(s.addr, "auth", &pap_pairs("new", &new_code), SECRET).0,
        Seen::Reject
    );

    let reasons: Vec<String> = admin
        .audit(&AuditFilter {
            action: Some("auth".into()),
            ..AuditFilter::default()
        })
        .unwrap()
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    assert_eq!(reasons[3..], ["locked_out", "disabled", "not_enrolled"]);
}

#[test]
fn bypass_status_is_denied_by_default_and_allowed_when_configured() {
    for (extra, expected) in [
        ("", Seen::Reject),
        ("bypass_status = \"allow\"", Seen::Accept),
    ] {
        let s = Server::start(&radius_section(extra, "127.0.0.1", true));
        let mut admin = s.enrolled("bea");
        let up = UserUpdate {
            status: Some(Status::Bypass),
            ..UserUpdate::default()
        };
        admin.update_user("bea", up, &Context::new("test")).unwrap();
        assert_eq!(
            radclient(s.addr, "auth", &pap_pairs("bea", "anything"), SECRET).0,
            expected,
            "{extra:?}"
        );
    }
}

#[test]
fn no_answer_without_message_authenticator_with_a_wrong_secret_or_from_an_unknown_client() {
    let s = Server::start(&radius_section("", "127.0.0.1", true));
    s.enrolled("carl");
    let c = s.code("carl", 0);
    let bare = format!("User-Name = \"carl\", User-Password = \"{c}\"\n");
    assert_eq!(radclient(s.addr, "auth", &bare, SECRET).0, Seen::NoReply);
    assert_eq!(
        radclient(s.addr, "auth", &pap_pairs("carl", &c), "not-the-secret").0,
        Seen::NoReply
    );
    assert_eq!(s.counter(|c| &c.no_message_authenticator), 1);
    assert_eq!(s.counter(|c| &c.bad_message_authenticator), 1);
    assert_eq!(
        radclient(s.addr, "auth", &pap_pairs("carl", &c), SECRET).0,
        Seen::Accept,
        "still serving"
    );

    let elsewhere = Server::start(&radius_section("", "10.0.0.0/8", true));
    assert_eq!(
        radclient(
            elsewhere.addr,
            "status",
            "Message-Authenticator = 0x00\n",
            SECRET
        )
        .0,
        Seen::NoReply
    );
    assert_eq!(elsewhere.counter(|c| &c.unknown_client), 1);
}

/// A raw client socket with a bounded wait.
fn raw() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

fn exchange(sock: &UdpSocket, to: SocketAddr, req: &[u8]) -> Vec<u8> {
    sock.send_to(req, to).unwrap();
    let mut buf = [0u8; 4096];
    let (n, _) = sock.recv_from(&mut buf).expect("a reply within 5 s");
    buf[..n].to_vec()
}

fn status(id: u8) -> Vec<u8> {
    client::request(
        code::STATUS_SERVER,
        id,
        [id; 16],
        &[],
        SECRET.as_bytes(),
        true,
    )
}

#[test]
fn a_retransmission_gets_the_same_bytes_and_uses_the_code_once() {
    let s = Server::start(&radius_section("", "127.0.0.1", true));
    s.enrolled("dora");
    let c = s.code("dora", 2);
    let sock = raw();
    let req = client::pap(7, [42; 16], "dora", &c, SECRET.as_bytes());
    let first = exchange(&sock, s.addr, &req);
    assert_eq!(
        client::check_reply(&first, &req, SECRET.as_bytes()),
        Ok(Reply::Accept)
    );
    for _ in 0..3 {
        assert_eq!(exchange(&sock, s.addr, &req), first, "byte-identical");
    }
    assert_eq!(s.counter(|c| &c.duplicates_answered), 3);
    let codes = s.admin().list_codes(Some("dora")).unwrap();
    assert_eq!(codes[0].uses_remaining, Some(1), "one use taken, not four");
    // A new request (new authenticator) with the same identifier is a new attempt.
    let again = client::pap(7, [43; 16], "dora", &c, SECRET.as_bytes());
    assert_eq!(
        client::check_reply(&exchange(&sock, s.addr, &again), &again, SECRET.as_bytes()),
        Ok(Reply::Accept)
    );
    assert!(s.admin().list_codes(Some("dora")).unwrap().is_empty());
}

#[test]
fn proxy_state_is_copied_in_order() {
    let s = Server::start(&radius_section("", "127.0.0.1", true));
    let sock = raw();
    let auth = [9; 16];
    let hidden = client::hide_password(b"123456789", SECRET.as_bytes(), &auth);
    let req = client::request(
        code::ACCESS_REQUEST,
        1,
        auth,
        &[
            (attr::USER_NAME, b"nobody"),
            (attr::USER_PASSWORD, &hidden),
            (attr::PROXY_STATE, b"first"),
            (attr::PROXY_STATE, b"second"),
        ],
        SECRET.as_bytes(),
        true,
    );
    let reply = exchange(&sock, s.addr, &req);
    assert_eq!(
        client::check_reply(&reply, &req, SECRET.as_bytes()),
        Ok(Reply::Reject)
    );
    assert_eq!(&reply[38..], b"\x21\x07first\x21\x08second");
}

#[test]
fn bad_datagrams_are_dropped_and_the_server_keeps_answering() {
    let s = Server::start(&radius_section("", "127.0.0.1", true));
    let sock = raw();
    let good = client::pap(1, [1; 16], "x", "123456789", SECRET.as_bytes());
    let mut bad: Vec<Vec<u8>> = vec![
        good[..10].to_vec(),
        good[..good.len() - 3].to_vec(),
        vec![1; 5000],
        Vec::new(),
    ];
    let mut lying = good.clone();
    lying[2..4].copy_from_slice(&4000u16.to_be_bytes());
    bad.push(lying);
    for l in [0u8, 1] {
        let mut b = vec![1, 2, 0, 24];
        b.extend_from_slice(&[0; 16]);
        b.extend_from_slice(&[attr::USER_NAME, l, b'a', b'b']);
        bad.push(b);
    }
    for unknown in [0u8, 4, 5, 40, 43, 200] {
        let mut b = good.clone();
        b[0] = unknown;
        bad.push(b);
    }
    let auth = [3; 16];
    let long_password = [7u8; 144];
    bad.push(client::request(
        code::ACCESS_REQUEST,
        3,
        auth,
        &[
            (attr::USER_NAME, b"x"),
            (attr::USER_PASSWORD, &long_password),
        ],
        SECRET.as_bytes(),
        true,
    ));
    let long_name = "n".repeat(253);
    bad.push(client::pap(
        4,
        [4; 16],
        &long_name,
        "123456789",
        b"wrong secret",
    ));
    for (i, b) in bad.iter().enumerate() {
        sock.send_to(b, s.addr).unwrap_or_default();
        // Datagrams from one socket are handled in order: if the Status-Server sent after
        // the bad one is answered first, the bad one got nothing.
        let probe = status(i as u8);
        let reply = exchange(&sock, s.addr, &probe);
        assert_eq!(reply[1], i as u8, "case {i}: the only reply is the probe's");
        assert_eq!(
            client::check_reply(&reply, &probe, SECRET.as_bytes()),
            Ok(Reply::Accept)
        );
    }
    let dropped = s.counter(|c| &c.malformed)
        + s.counter(|c| &c.unsupported_code)
        + s.counter(|c| &c.bad_user_password)
        + s.counter(|c| &c.bad_message_authenticator);
    assert_eq!(dropped as usize, bad.len(), "each was counted");
}

#[test]
fn a_thousand_concurrent_requests_for_a_code_with_five_uses_get_exactly_five_accepts() {
    let s = Server::start(&radius_section("", "127.0.0.1", true));
    s.enrolled("eve");
    let c = s.code("eve", 5);
    // 1,000 requests with distinct identifiers need several source ports: 8 x 125. A burst
    // this size can overflow a socket buffer, so unanswered requests are retransmitted, byte
    // for byte, as a NAS would; the reply cache keeps a retransmission from counting twice.
    let socks: Vec<UdpSocket> = (0..8).map(|_| raw()).collect();
    let mut pending: Vec<(usize, Vec<u8>)> = Vec::new();
    for k in 0..socks.len() {
        for id in 0..125u8 {
            let auth = [k as u8, id, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14];
            pending.push((k, client::pap(id, auth, "eve", &c, SECRET.as_bytes())));
        }
    }
    for s in &socks {
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
    }
    let (mut accepts, mut rejects) = (0, 0);
    for _round in 0..30 {
        if pending.is_empty() {
            break;
        }
        for (k, req) in &pending {
            socks[*k].send_to(req, s.addr).unwrap();
        }
        for (k, sock) in socks.iter().enumerate() {
            let mut buf = [0u8; 4096];
            while let Ok((n, _)) = sock.recv_from(&mut buf) {
                let Some(i) = pending
                    .iter()
                    .position(|(kk, r)| *kk == k && r[1] == buf[1])
                else {
                    continue;
                };
                let (_, req) = pending.swap_remove(i);
                match client::check_reply(&buf[..n], &req, SECRET.as_bytes()).unwrap() {
                    Reply::Accept => accepts += 1,
                    Reply::Reject => rejects += 1,
                }
            }
        }
    }
    assert!(
        pending.is_empty(),
        "{} requests never answered",
        pending.len()
    );
    assert_eq!((accepts, rejects), (5, 995));
    assert_eq!(s.counter(|c| &c.store_errors), 0);
}

#[test]
fn sigterm_finishes_in_flight_work_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    // A fixed port would collide with other tests; find a free one, then let the daemon bind it.
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let radius =
        radius_section("", "127.0.0.1", true).replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let cfg = write_config(dir.path(), &radius);
    let config = Config::load(&cfg).unwrap();
    Store::create(&config).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_sparekey-radiusd"))
        .args(["--config", cfg.to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // Poll with a bounded number of tries until it answers.
    let mut up = false;
    for i in 0..50u8 {
        let probe = status(i);
        sock.send_to(&probe, addr).unwrap();
        let mut buf = [0u8; 4096];
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            up = client::check_reply(&buf[..n], &probe, SECRET.as_bytes()) == Ok(Reply::Accept);
            break;
        }
    }
    // Read while it runs, checked once it has stopped (a failed check before the signal
    // would leave the daemon running).
    let proc_status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    let r = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(r.success());
    let out = child.wait_with_output().unwrap();
    assert!(up, "the daemon answers Status-Server");
    // It runs without transparent huge pages (BENCHMARKS.md, "The writer waited while
    // behind, and huge pages").
    assert!(proc_status.contains("THP_enabled:\t0"), "{proc_status}");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("stopped:"));
}

#[test]
fn the_daemon_refuses_a_bad_config_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "[radius]\nlisten = [\"127.0.0.1:1812\"]\n");
    let out = Command::new(env!("CARGO_BIN_EXE_sparekey-radiusd"))
        .args(["--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("radius.client"));
    let cfg = write_config(dir.path(), &radius_section("", "127.0.0.1", true));
    let out = Command::new(env!("CARGO_BIN_EXE_sparekey-radiusd"))
        .args(["--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "no key, no store: refuse to start"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("sparekey.key"));
}

/// The daemon runs on mimalloc (BENCHMARKS.md, "The allocator"): asked to be verbose, the
/// allocator introduces itself when the process starts. Without it the daemon would
/// still work, only slower, and nothing else would say so.
#[test]
fn the_daemon_allocates_with_mimalloc() {
    let out = Command::new(env!("CARGO_BIN_EXE_sparekey-radiusd"))
        .arg("--version")
        .env("MIMALLOC_VERBOSE", "1")
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("mimalloc: process init"), "{stderr}");
}

/// libpam_wrapper.so, wherever this architecture keeps it.
fn pam_wrapper() -> PathBuf {
    let out = Command::new("dpkg")
        .args(["-L", "libpam-wrapper"])
        .output()
        .expect("dpkg");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.ends_with("/libpam_wrapper.so"))
        .map(PathBuf::from)
        .expect("libpam-wrapper (Debian) must be installed: scripts/test-deps")
}

#[test]
fn pam_radius_auth_logs_in_through_pamtester() {
    // Debian's pam_radius_auth 2.0 sends no Message-Authenticator: such a client must be
    // configured with require_message_authenticator = false (and it still gets one back).
    let s = Server::start(&radius_section("", "127.0.0.1", false));
    s.enrolled("pat");
    let c = s.code("pat", 1);
    let dir = s.dir.path();
    let conf = dir.join("pam_radius_auth.conf");
    std::fs::write(&conf, format!("{} {SECRET} 3\n", s.addr)).unwrap();
    let services = dir.join("pam.d");
    std::fs::create_dir(&services).unwrap();
    std::fs::write(
        services.join("vpn"),
        format!("auth required pam_radius_auth.so conf={}\n", conf.display()),
    )
    .unwrap();
    let login = |code: &str| {
        let mut child = Command::new("pamtester")
            .args(["vpn", "pat", "authenticate"])
            .env("LD_PRELOAD", pam_wrapper())
            .env("PAM_WRAPPER", "1")
            .env("PAM_WRAPPER_SERVICE_DIR", &services)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("pamtester must be installed: scripts/test-deps");
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{code}\n").as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = login(&c);
    assert!(ok, "{err}");
    let (ok, err) = login(&c);
    assert!(!ok, "the same code again: {err}");
    assert!(err.contains("Authentication failure"), "{err}");
    assert_eq!(s.counter(|c| &c.accepts), 1);
}

#[test]
fn ipv4_and_ipv6_wildcards_can_share_a_port_and_ipv6_clients_are_served() {
    let v6 = server::bind("[::]:0".parse().unwrap()).unwrap();
    let port = v6.local_addr().unwrap().port();
    server::bind(format!("0.0.0.0:{port}").parse().unwrap()).expect("[::] listens on IPv6 only");

    let s = Server::start_on("[::1]:0", &radius_section("", "::1", true));
    let sock = UdpSocket::bind("[::1]:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let probe = status(1);
    let reply = exchange(&sock, s.addr, &probe);
    assert_eq!(
        client::check_reply(&reply, &probe, SECRET.as_bytes()),
        Ok(Reply::Accept)
    );
}

#[test]
fn non_utf8_and_oversized_fields_are_rejected_not_crashed_on() {
    let s = Server::start(&radius_section("", "127.0.0.1", true));
    s.enrolled("fred");
    let c = s.code("fred", 1);
    let sock = raw();
    let auth = [11; 16];
    let hidden = client::hide_password(c.as_bytes(), SECRET.as_bytes(), &auth);
    let long_station = [b'9'; 253];
    for (i, name) in [&b"fr\xffed"[..], &b"\xfe\xfe"[..], &[b'x'; 253][..]]
        .iter()
        .enumerate()
    {
        let req = client::request(
            code::ACCESS_REQUEST,
            i as u8,
            auth,
            &[
                (attr::USER_NAME, name),
                (attr::USER_PASSWORD, &hidden),
                (attr::CALLING_STATION_ID, &long_station),
            ],
            SECRET.as_bytes(),
            true,
        );
        assert_eq!(
            client::check_reply(&exchange(&sock, s.addr, &req), &req, SECRET.as_bytes()),
            Ok(Reply::Reject)
        );
    }
    // A non-UTF-8 password is a wrong code, and the right one still works afterwards.
    let bad_pw = client::hide_password(b"12345\xff789", SECRET.as_bytes(), &auth);
    let req = client::request(
        code::ACCESS_REQUEST,
        9,
        auth,
        &[(attr::USER_NAME, b"fred"), (attr::USER_PASSWORD, &bad_pw)],
        SECRET.as_bytes(),
        true,
    );
    assert_eq!(
        client::check_reply(&exchange(&sock, s.addr, &req), &req, SECRET.as_bytes()),
        Ok(Reply::Reject)
    );
    let ok = client::pap(10, [12; 16], "fred", &c, SECRET.as_bytes());
    assert_eq!(
        client::check_reply(&exchange(&sock, s.addr, &ok), &ok, SECRET.as_bytes()),
        Ok(Reply::Accept)
    );
}

/// Sends `req` and returns what the reply says.
fn ask(sock: &UdpSocket, to: SocketAddr, req: &[u8]) -> Reply {
    client::check_reply(&exchange(sock, to, req), req, SECRET.as_bytes()).unwrap()
}

#[test]
fn with_the_default_policy_a_guesser_gets_ten_tries_and_then_not_even_the_right_code_works() {
    let s = Server::start_with("127.0.0.1:0", "", &radius_section("", "127.0.0.1", true));
    assert_eq!(s.config().policy.lockout_threshold, 10, "the default");
    s.enrolled("gus");
    let right = s.code("gus", 1);
    let sock = raw();
    let mut id = 0u8;
    let mut next = |user: &str, code: &str| {
        id = id.wrapping_add(1);
        client::pap(id, [id; 16], user, code, SECRET.as_bytes())
    };
    // Ten distinct wrong guesses, each well formed, none the right code.
    let wrong: Vec<String> = (0..10u64)
        .map(|i| {
            format!(
                "{:09}",
                (right.parse::<u64>().unwrap() + 1 + i) % 1_000_000_000
            )
        })
        .collect();
    for guess in &wrong {
        assert_eq!(ask(&sock, s.addr, &next("gus", guess)), Reply::Reject);
    }
    // The eleventh attempt is the right code, and it is refused: the user is locked out.
    assert_eq!(ask(&sock, s.addr, &next("gus", &right)), Reply::Reject);
    let locks = s
        .admin()
        .audit(&AuditFilter {
            action: Some("user.lockout".into()),
            ..AuditFilter::default()
        })
        .unwrap();
    assert_eq!(locks.len(), 1);
    assert_eq!(locks[0].detail.as_deref(), Some("failed_attempts=10"));
    assert_eq!(
        s.admin().list_codes(Some("gus")).unwrap()[0].uses_remaining,
        Some(1),
        "a refused attempt consumes nothing"
    );
    // Another user is not affected by the guessing, and the lockout has no timer by
    // default: only an admin's unlock lets the right code in.
    s.enrolled("hana");
    let hers = s.code("hana", 1);
    assert_eq!(ask(&sock, s.addr, &next("hana", &hers)), Reply::Accept);
    assert_eq!(ask(&sock, s.addr, &next("gus", &right)), Reply::Reject);
    s.admin().unlock_user("gus", &Context::new("test")).unwrap();
    assert_eq!(ask(&sock, s.addr, &next("gus", &right)), Reply::Accept);
}

#[test]
fn a_client_over_its_rate_limit_is_dropped_while_other_clients_are_served() {
    let radius = format!(
        "[radius]\nlisten = [\"127.0.0.1:0\"]\n\
         [[radius.client]]\nname = \"flood\"\naddress = \"127.0.0.1\"\nsecret = \"{SECRET}\"\nrate_limit = 5\n\
         [[radius.client]]\nname = \"calm\"\naddress = \"127.0.0.2\"\nsecret = \"{SECRET}\"\n"
    );
    let s = Server::start_with("127.0.0.1:0", "", &radius);
    s.enrolled("ivy");
    let code = s.code("ivy", 1);
    let flood = raw();
    let started = std::time::Instant::now();
    // 200 guesses for users that do not exist (so no lockout stops them), sent at once.
    let sent = 200u64;
    for i in 0..sent {
        let id = i as u8;
        let req = client::pap(
            id,
            [id; 16],
            &format!("nobody{i}"),
            "123456789",
            SECRET.as_bytes(),
        );
        flood.send_to(&req, s.addr).unwrap();
    }
    // Every datagram is either answered or counted as over the limit; wait for all of them.
    let deadline = started + Duration::from_secs(20);
    while s.counter(|c| &c.rejects) + s.counter(|c| &c.rate_limited) < sent {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            s.counters.summary()
        );
        std::thread::yield_now();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let answered = s.counter(|c| &c.rejects);
    // A bucket of 5 per second holds a burst of 10 and refills at 5 per second.
    let allowed = 10.0 + 5.0 * elapsed;
    assert!(
        answered as f64 <= allowed.ceil() && answered >= 10,
        "answered {answered} of {sent} in {elapsed:.2}s; {}",
        s.counters.summary()
    );
    assert_eq!(s.counter(|c| &c.rate_limited), sent - answered);
    // The flood gets its answered requests back, each a well-signed reject.
    let mut buf = [0u8; 4096];
    for _ in 0..answered {
        let (n, _) = flood.recv_from(&mut buf).expect("a reply within 5 s");
        let id = buf[1];
        let req = client::pap(
            id,
            [id; 16],
            &format!("nobody{id}"),
            "123456789",
            SECRET.as_bytes(),
        );
        assert_eq!(
            client::check_reply(&buf[..n], &req, SECRET.as_bytes()),
            Ok(Reply::Reject)
        );
    }
    // Another client, with its own bucket, is served at once.
    let calm = UdpSocket::bind("127.0.0.2:0").unwrap();
    calm.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let req = client::pap(1, [1; 16], "ivy", &code, SECRET.as_bytes());
    assert_eq!(ask(&calm, s.addr, &req), Reply::Accept);
}
