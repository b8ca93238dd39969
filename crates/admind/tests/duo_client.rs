//! sparekey-admind against the real `duo_client` from PyPI, installed into a virtualenv by
//! the test: over TLS (the test's own CA as `ca_certs`) and over loopback HTTP
//! (`ca_certs="HTTP"`), with signature versions 2 and 5.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use sparekey::store::{NewAdminKey, Role};
use sparekey::{Config, Context, Decision, Store};

#[path = "../../../tests/support/hygiene.rs"]
mod hygiene;
#[path = "../../../tests/support/workspace_bin.rs"]
mod workspace_bin;

use workspace_bin::workspace_bin;

const RADIUS_SECRET: &str = "a-long-random-test-secret-for-the-nas";

/// Sends one PAP request to a real `sparekey-radiusd` on the same store and says whether
/// it was accepted.
fn radius_login(config: &Path, user: &str, code: &str) -> bool {
    use sparekey_radiusd::client::{self, Reply};
    let mut child = Command::new(workspace_bin("sparekey-radiusd"))
        .arg("--config")
        .arg(config)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // It says where it listens once its socket is bound.
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr: std::net::SocketAddr = loop {
        let line = lines.next().expect("sparekey-radiusd exited").unwrap();
        if let Some(a) = line.split("listening on ").nth(1) {
            break a.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    // The rest of the log goes beside the config, where the suite's leak check finds it.
    let drain = log_to(lines, &config.parent().unwrap().join("radiusd.log"));
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let req = client::pap(1, [9; 16], user, code, RADIUS_SECRET.as_bytes());
    sock.send_to(&req, addr).unwrap();
    let mut buf = [0u8; 4096];
    let (n, _) = sock.recv_from(&mut buf).expect("a RADIUS reply");
    let reply = client::check_reply(&buf[..n], &req, RADIUS_SECRET.as_bytes()).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let _ = drain.join();
    reply == Reply::Accept
}

/// Appends the lines a child writes to `path`, on a thread of its own.
fn log_to(
    lines: impl Iterator<Item = std::io::Result<String>> + Send + 'static,
    path: &Path,
) -> std::thread::JoinHandle<()> {
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            let _ = writeln!(log, "{line}");
        }
    })
}

/// `sparekey verify USER` with the code on stdin, as an admin would: accepted or not.
fn cli_verify(config: &Path, user: &str, code: &str) -> bool {
    use std::io::Write as _;
    let mut child = Command::new(workspace_bin("sparekey"))
        .args(["--config"])
        .arg(config)
        .args(["verify", user])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{code}\n").as_bytes())
        .unwrap();
    match child.wait().unwrap().code() {
        Some(0) => true,
        Some(1) => false,
        other => panic!("sparekey verify: exit {other:?}"),
    }
}

/// A virtualenv with duo_client, made once per target directory.
fn python() -> &'static Path {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("duo-venv");
        let py = venv.join("bin/python");
        let ready = venv.join(".duo_client-installed");
        if !ready.exists() {
            let st = Command::new("python3")
                .args(["-m", "venv", "--clear"])
                .arg(&venv)
                .status()
                .expect("python3");
            assert!(
                st.success(),
                "python3 -m venv (Debian: apt-get install python3-venv)"
            );
            let st = Command::new(&py)
                .args(["-m", "pip", "install", "--quiet", "duo_client"])
                .status()
                .unwrap();
            assert!(st.success(), "pip install duo_client");
            std::fs::write(&ready, b"").unwrap();
        }
        py
    })
}

struct Admind {
    child: Child,
    port: u16,
    config: Config,
    file: PathBuf,
    dir: tempfile::TempDir,
    ca: Option<PathBuf>,
    drain: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Admind {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(d) = self.drain.take() {
            let _ = d.join();
        }
        hygiene::keep(self.dir.path());
    }
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a certificate for localhost, signed by it.
fn make_certs(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let p = |n: &str| dir.join(n).to_str().unwrap().to_owned();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &p("ca.key"),
        "-out",
        &p("ca.pem"),
        "-days",
        "2",
        "-subj",
        "/CN=sparekey test CA",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &p("server.key"),
        "-out",
        &p("server.csr"),
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        &p("server.csr"),
        "-CA",
        &p("ca.pem"),
        "-CAkey",
        &p("ca.key"),
        "-CAcreateserial",
        "-out",
        &p("server.pem"),
        "-days",
        "2",
        "-extfile",
        &p("ext.cnf"),
    ]);
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

fn start(tls: bool) -> Admind {
    let dir = tempfile::tempdir().unwrap();
    let mut text = Config::init_text(dir.path());
    let mut ca = None;
    text.push_str(&format!(
        "\n[radius]\nlisten = [\"127.0.0.1:0\"]\n[[radius.client]]\nname = \"nas\"\n\
         address = \"127.0.0.1\"\nsecret = \"{RADIUS_SECRET}\"\n"
    ));
    text.push_str("\n[admin_api]\nlisten = \"127.0.0.1:0\"\nhostname = \"localhost\"\n");
    if tls {
        let (ca_pem, cert, key) = make_certs(dir.path());
        text.push_str(&format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
            cert.display(),
            key.display()
        ));
        ca = Some(ca_pem);
    }
    let file = dir.path().join("sparekey.toml");
    std::fs::write(&file, &text).unwrap();
    let config = Config::load(&file).unwrap();
    drop(Store::create(&config).unwrap());
    let mut child = Command::new(env!("CARGO_BIN_EXE_sparekey-admind"))
        .arg("--config")
        .arg(&file)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The server says where it listens once the socket is bound.
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let port = loop {
        let line = lines.next().expect("admind exited").unwrap();
        if let Some(addr) = line.split("listening on ").nth(1) {
            let addr = addr.split(' ').next().unwrap();
            break addr.rsplit(':').next().unwrap().parse().unwrap();
        }
    };
    // The rest of the log goes to a file, which the suite's leak check keeps.
    let drain = log_to(lines, &dir.path().join("admind.log"));
    Admind {
        child,
        port,
        config,
        file,
        dir,
        ca,
        drain: Some(drain),
    }
}

struct Key {
    ikey: String,
    skey: String,
}

fn key(store: &mut Store, name: &str, role: Role, create: bool, customise: bool) -> Key {
    let (k, s) = store
        .create_admin_key(
            NewAdminKey {
                name: name.into(),
                role,
                may_create_codes: create,
                may_customise_codes: customise,
            },
            &Context::new("test"),
        )
        .unwrap();
    Key {
        ikey: k.ikey,
        skey: s.expose().to_owned(),
    }
}

fn run_python(server: &Admind, sig_version: u8, extra: serde_json::Value) -> serde_json::Value {
    let mut cfg = serde_json::json!({
        "host": "localhost",
        "port": server.port,
        "ca_certs": server.ca.as_ref().map_or("HTTP".to_owned(), |p| p.display().to_string()),
        "sig_version": sig_version,
    });
    for (k, v) in extra.as_object().unwrap() {
        cfg[k] = v.clone();
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/duo_scenario.py");
    let out = Command::new(python())
        .arg(script)
        .arg(cfg.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "duo_client ({}, v{sig_version}): {}\n{}",
        cfg["mode"],
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn duo_client_end_to_end(tls: bool, sig_version: u8) {
    let server = start(tls);
    let mut store = Store::open(&server.config).unwrap();
    let owner = key(&mut store, "helpdesk-bot", Role::UserManager, true, true);
    let desk = key(&mut store, "desk-nocreate", Role::HelpDesk, false, true);
    let plain = key(&mut store, "desk-plain", Role::HelpDesk, true, false);
    let revoked = key(&mut store, "old", Role::Owner, true, true);
    store
        .revoke_admin_key("old", &Context::new("test"))
        .unwrap();

    let username = format!("ann{sig_version}");
    let out = run_python(
        &server,
        sig_version,
        serde_json::json!({
            "mode": "scenario", "ikey": owner.ikey, "skey": owner.skey,
            "username": username, "key_name": "helpdesk-bot",
        }),
    );
    let user_id = out["user_id"].as_str().unwrap().to_owned();

    // A code duo_client generated logs in through `sparekey verify`; the custom code
    // under the user's alias, once.
    let code = out["code"].as_str().unwrap();
    let custom = out["custom"].as_str().unwrap();
    hygiene::issued([code, custom]);
    assert!(cli_verify(&server.file, &username, code));
    assert!(cli_verify(&server.file, &format!("{username}-alt"), custom));
    assert!(!cli_verify(&server.file, &username, custom), "used up");
    assert!(!cli_verify(&server.file, &username, "000000001"));
    let ctx = Context::new("test");
    assert!(matches!(
        store.verify(&username, "000000002", &ctx).unwrap().decision,
        Decision::Reject(_)
    ));
    // The same code (3 uses) through sparekey-radiusd; the custom one is used up.
    assert!(radius_login(&server.file, &username, code));
    assert!(!radius_login(&server.file, &username, custom));

    run_python(
        &server,
        sig_version,
        serde_json::json!({
            "mode": "refusals", "ikey": owner.ikey, "skey": owner.skey, "user_id": user_id,
            "revoked_ikey": revoked.ikey, "revoked_skey": revoked.skey,
            "desk_ikey": desk.ikey, "desk_skey": desk.skey,
            "plain_ikey": plain.ikey, "plain_skey": plain.skey,
        }),
    );

    // Every call is audited under the key's name, and no code or secret is in the log.
    let events = store.audit(&sparekey::AuditFilter::default()).unwrap();
    let generated_by = |actor: &str| {
        events
            .iter()
            .filter(|e| e.actor == actor && e.action == "code.generate")
            .count()
    };
    assert_eq!(generated_by("helpdesk-bot"), 10 + 2 + 2 + 1);
    assert_eq!(generated_by("desk-plain"), 10);
    assert_eq!(generated_by("desk-nocreate"), 0);
    assert!(events.iter().any(|e| e.actor == "desk-nocreate"
        && e.action == "admin_api.call"
        && e.outcome == "reject"));
    assert!(
        events
            .iter()
            .any(|e| e.actor == "admin_api" && e.outcome == "reject")
    );
    let log = format!("{events:?}");
    for secret in [&owner.skey, &desk.skey, &revoked.skey] {
        assert!(!log.contains(secret.as_str()));
    }
    assert!(!log.contains("123456789") && !log.contains(out["code"].as_str().unwrap()));
}

#[test]
fn duo_client_over_tls_with_signature_v5() {
    duo_client_end_to_end(true, 5);
}

#[test]
fn duo_client_over_tls_with_signature_v2() {
    duo_client_end_to_end(true, 2);
}

#[test]
fn duo_client_over_loopback_http_with_signature_v5() {
    duo_client_end_to_end(false, 5);
}

#[test]
fn duo_client_over_loopback_http_with_signature_v2() {
    duo_client_end_to_end(false, 2);
}

#[test]
fn plain_http_is_refused_off_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = Config::init_text(dir.path());
    text.push_str("\n[admin_api]\nlisten = \"0.0.0.0:0\"\n");
    let file = dir.path().join("sparekey.toml");
    std::fs::write(&file, &text).unwrap();
    drop(Store::create(&Config::load(&file).unwrap()).unwrap());
    let out = Command::new(env!("CARGO_BIN_EXE_sparekey-admind"))
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"));

    // On loopback it is fine; --check says so without serving.
    let text = text.replace("0.0.0.0:0", "127.0.0.1:0");
    std::fs::write(&file, &text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sparekey-admind"))
        .arg("--config")
        .arg(&file)
        .arg("--check")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
