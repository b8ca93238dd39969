//! Helpers for the end-to-end tests: a sandbox directory with a syslog socket, a store made
//! with the library, a private mount namespace for each program under test, and processes
//! waited for with a deadline.
//!
//! Every program under test runs inside `unshare -m`, where a small tmpfs stands in for
//! `/dev` and its `/dev/log` leads to this sandbox's socket, so each test reads exactly
//! the syslog lines its own programs wrote, and nothing on the machine changes: `/etc`
//! files are replaced only by bind mounts inside the namespace, and `/tmp` is private.

#![allow(dead_code)]

#[path = "../../../tests/support/hygiene.rs"]
pub mod hygiene;

use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sparekey::store::SqliteBackend;
use sparekey::{
    CodeRequest, Config, Context, DeviceKind, DigestKey, ManualClock, NewUser, Status, Store,
};

/// The strerror texts pamtester prints for each return code (LC_ALL=C).
pub mod pam_text {
    pub const SUCCESS: &str = "successfully authenticated";
    pub const ACCT_SUCCESS: &str = "account management done.";
    pub const AUTH_ERR: &str = "Authentication failure";
    pub const USER_UNKNOWN: &str = "User not known to the underlying authentication module";
    pub const AUTHINFO_UNAVAIL: &str = "Authentication service cannot retrieve authentication info";
    pub const SERVICE_ERR: &str = "Error in service module";
    pub const CONV_ERR: &str = "Conversation error";
    pub const PERM_DENIED: &str = "Permission denied";
}

/// The test process must be root: it mounts in its own namespace, runs sshd, and makes
/// root-owned stores as the module demands.
pub fn require_root() {
    let uid = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX);
    assert_eq!(
        uid, 0,
        "the PAM end-to-end tests run as root (as CI does): they use mount namespaces, sshd and sudo"
    );
}

/// The module built with these tests: cargo compiles the library's cdylib beside the test
/// binary, in `target/<profile>/deps`.
pub fn module() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let so = exe.parent().unwrap().join("libpam_sparekey.so");
    assert!(so.exists(), "{} was not built", so.display());
    so
}

/// A program the tests need; its package is in scripts/test-packages.
pub fn program(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/sbin", "/bin", "/sbin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} is not installed; run scripts/test-deps");
}

/// A module shipped by Debian's libpam-wrapper (pam_matrix).
pub fn wrapper_module(name: &str) -> PathBuf {
    let triple = format!("{}-linux-gnu", std::env::consts::ARCH);
    for dir in [
        format!("/usr/lib/{triple}/pam_wrapper"),
        "/usr/lib64/pam_wrapper".to_owned(),
        "/usr/lib/pam_wrapper".to_owned(),
    ] {
        let p = Path::new(&dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} not found; install libpam-wrapper (scripts/test-deps)");
}

/// A temporary directory with a syslog socket, read all the time by a thread of its own
/// (the kernel queues only a few datagrams; a full queue would stall the senders).
pub struct Sandbox {
    pub dir: tempfile::TempDir,
    lines: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    drained: Arc<AtomicU64>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        // Not the module's copy (large, and built, not written by a test's programs), nor
        // the typed answer a test feeds pamtester (an input, not something left behind).
        hygiene::keep_except(self.dir.path(), &["pam_sparekey.so", "answer"]);
    }
}

const NAMESPACE_SETUP: &str = r#"
set -eu
mount -t tmpfs -o mode=0755,size=1m sparekey-test-dev /dev
mknod -m 0666 /dev/null c 1 3
mknod -m 0666 /dev/zero c 1 5
mknod -m 0666 /dev/full c 1 7
mknod -m 0666 /dev/random c 1 8
mknod -m 0666 /dev/urandom c 1 9
mknod -m 0666 /dev/tty c 5 0
ln -s /proc/self/fd /dev/fd
ln -s /proc/self/fd/0 /dev/stdin
ln -s /proc/self/fd/1 /dev/stdout
ln -s /proc/self/fd/2 /dev/stderr
ln -s "$SK_SANDBOX/log.sock" /dev/log
# A private /tmp (pam_wrapper keeps its copies of libpam in /tmp/pam.?, picked racily
# among 62 names), with the sandbox bind-mounted back at its own path.
mkdir /dev/sk-sandbox
mount --bind "$SK_SANDBOX" /dev/sk-sandbox
mount -t tmpfs -o mode=1777,size=64m sparekey-test-tmp /tmp
mkdir -p "$SK_SANDBOX"
mount --bind /dev/sk-sandbox "$SK_SANDBOX"
"#;

impl Sandbox {
    pub fn new() -> Self {
        require_root();
        let dir = tempfile::tempdir().unwrap();
        let log = UnixDatagram::bind(dir.path().join("log.sock")).unwrap();
        log.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let drained = Arc::new(AtomicU64::new(0));
        let reader = {
            let (lines, stop, drained) = (lines.clone(), stop.clone(), drained.clone());
            // Every line also goes to a file, which the suite's leak check keeps.
            let mut transcript = std::fs::File::create(dir.path().join("syslog.log")).unwrap();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 8192];
                while !stop.load(Ordering::SeqCst) {
                    match log.recv(&mut buf) {
                        Ok(n) => {
                            let line = String::from_utf8_lossy(&buf[..n]).into_owned();
                            let _ = writeln!(transcript, "{line}");
                            lines.lock().unwrap().push(line);
                        }
                        Err(e)
                            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                        {
                            drained.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => panic!("syslog socket: {e}"),
                    }
                }
            })
        };
        Sandbox {
            dir,
            lines,
            stop,
            drained,
            reader: Some(reader),
        }
    }

    /// The module under test, linked (or copied) into the sandbox: inside the namespace
    /// `/tmp` is private, and the build directory may be under it.
    pub fn module(&self) -> PathBuf {
        let p = self.path("pam_sparekey.so");
        if !p.exists() && std::fs::hard_link(module(), &p).is_err() {
            std::fs::copy(module(), &p).unwrap();
        }
        p
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a file with a mode, creating its directory.
    pub fn write(&self, name: &str, contents: &str, mode: u32) -> PathBuf {
        let p = self.path(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, contents).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    /// Every syslog line received since the last call. The programs that wrote them have
    /// exited, so their lines are already queued on the socket: once the reader has found
    /// the queue empty after this call began, everything is in.
    pub fn logs(&self) -> Vec<String> {
        let asked = self.drained.load(Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.drained.load(Ordering::SeqCst) < asked + 2 {
            assert!(Instant::now() < deadline, "the syslog reader stalled");
            std::thread::sleep(Duration::from_millis(5));
        }
        std::mem::take(&mut *self.lines.lock().unwrap())
    }

    /// The syslog lines of pam_sparekey, without the syslog header.
    pub fn module_logs(&self) -> Vec<String> {
        self.logs()
            .into_iter()
            .filter_map(|l| l.find("pam_sparekey(").map(|i| l[i..].to_owned()))
            .collect()
    }

    /// `program args...` inside a private mount namespace whose `/dev/log` is this
    /// sandbox's socket, after the shell lines in `setup`.
    pub fn command(&self, setup: &str, program: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(crate::support::program("unshare"));
        c.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(format!("{NAMESPACE_SETUP}\n{setup}\nexec \"$@\""))
            .arg("sparekey-test")
            .arg(program)
            .args(args)
            .env("SK_SANDBOX", self.dir.path())
            .env("LC_ALL", "C")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }
}

/// Waits for a child with a deadline, feeding it `input`; kills it if the deadline passes.
pub fn finish(mut child: Child, input: &str, limit: Duration) -> Output {
    if let Some(mut stdin) = child.stdin.take() {
        // The child may exit without reading; that is its answer, not an error here.
        let _ = stdin.write_all(input.as_bytes());
    }
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Output {
        status,
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A store made with the library, in its own root-owned 0700 directory of the sandbox.
pub struct TestStore {
    pub config: PathBuf,
    pub dir: PathBuf,
    pub store: Store,
    admin: Context,
}

impl TestStore {
    /// A new store; `extra` is appended to the config file.
    pub fn new(sb: &Sandbox, extra: &str) -> Self {
        let dir = sb.path("sparekey");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        DigestKey::generate()
            .unwrap()
            .write_new(&dir.join("sparekey.key"))
            .unwrap();
        let config = dir.join("sparekey.toml");
        std::fs::write(
            &config,
            format!("[store]\npath = \"sparekey.db\"\nkey_file = \"sparekey.key\"\n{extra}"),
        )
        .unwrap();
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
        let cfg = Config::load(&config).unwrap();
        drop(SqliteBackend::create(&cfg.store).unwrap());
        let store = Store::open(&cfg).unwrap();
        TestStore {
            config,
            dir,
            store,
            admin: Context::new("cli:test"),
        }
    }

    /// Adds a user with a status, aliases and, if `enrolled`, a phone.
    pub fn user(&mut self, name: &str, aliases: &[&str], status: Status, enrolled: bool) {
        self.store
            .add_user(
                NewUser {
                    username: name.into(),
                    aliases: aliases.iter().map(|a| a.to_string()).collect(),
                    status: Some(status),
                    ..NewUser::default()
                },
                &self.admin,
            )
            .unwrap();
        if enrolled {
            self.store
                .add_device(name, DeviceKind::Phone, None, &self.admin)
                .unwrap();
        }
    }

    /// Issues `count` codes with `uses` uses each, valid an hour, keeping existing ones.
    pub fn codes(&mut self, name: &str, count: usize, uses: u32) -> Vec<String> {
        let issued = self
            .store
            .generate_codes(
                name,
                CodeRequest {
                    count,
                    reuse_count: uses,
                    valid_secs: 3600,
                    preserve_existing: true,
                    ..CodeRequest::default()
                },
                &self.admin,
            )
            .unwrap();
        let codes: Vec<String> = issued
            .codes
            .iter()
            .map(|c| c.code.expose().to_owned())
            .collect();
        hygiene::issued(&codes);
        codes
    }

    /// One single-use code.
    pub fn code(&mut self, name: &str) -> String {
        self.codes(name, 1, 1).remove(0)
    }

    /// A code issued two hours ago, valid one hour: expired now.
    pub fn expired_code(&mut self, name: &str) -> String {
        let cfg = Config::load(&self.config).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let past = now - 7200;
        let mut old = Store::with_backend(
            Box::new(SqliteBackend::open(&cfg.store).unwrap()),
            DigestKey::load(&cfg.store.key_file).unwrap(),
            cfg.policy.clone(),
            Arc::new(ManualClock::at(past)),
        )
        .unwrap();
        let issued = old
            .generate_codes(
                name,
                CodeRequest {
                    valid_secs: 3600,
                    preserve_existing: true,
                    ..CodeRequest::default()
                },
                &self.admin,
            )
            .unwrap();
        let code = issued.codes[0].code.expose().to_owned();
        hygiene::issued([&code]);
        code
    }

    /// Locks a user out by failing verification up to the threshold.
    pub fn lock_out(&mut self, name: &str) {
        for _ in 0..10 {
            self.store.verify(name, "000000000", &self.admin).unwrap();
        }
    }
}

/// A TCP port on 127.0.0.1 that nothing listens on right now.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Waits until something accepts connections on 127.0.0.1:`port`, or the deadline passes.
pub fn wait_for_port(port: u16, child: &mut Child, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            panic!("server exited before listening ({status}): {err}");
        }
        assert!(
            Instant::now() < deadline,
            "nothing listened on port {port} within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills a child we started when the test ends, however it ends.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A local account that exists only inside the namespaces of one test: copies of
/// /etc/passwd, /etc/group and /etc/shadow with the account added, bind-mounted over the
/// real ones there.
pub struct TestAccount {
    pub name: String,
    pub uid: u32,
}

impl TestAccount {
    pub fn new(sb: &Sandbox, name: &str) -> Self {
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
        let group = std::fs::read_to_string("/etc/group").unwrap();
        let shadow = std::fs::read_to_string("/etc/shadow").unwrap_or_default();
        let taken = |id: u32| {
            passwd
                .lines()
                .chain(group.lines())
                .any(|l| l.split(':').nth(2) == Some(&id.to_string()))
        };
        let uid = (42_000..43_000).find(|&id| !taken(id)).unwrap();
        assert!(
            !passwd.lines().any(|l| l.starts_with(&format!("{name}:"))),
            "{name} already exists on this machine"
        );
        sb.write(
            "etc/passwd",
            &format!("{passwd}{name}:x:{uid}:{uid}:sparekey test:/:/bin/sh\n"),
            0o644,
        );
        sb.write("etc/group", &format!("{group}{name}:x:{uid}:\n"), 0o644);
        sb.write(
            "etc/shadow",
            &format!("{shadow}{name}:*:19000:0:99999:7:::\n"),
            0o640,
        );
        TestAccount {
            name: name.to_owned(),
            uid,
        }
    }

    /// Shell lines that put the copies in place inside the namespace.
    pub fn mounts(&self) -> String {
        ["passwd", "group", "shadow"]
            .iter()
            .map(|f| format!("mount --bind \"$SK_SANDBOX/etc/{f}\" /etc/{f}\n"))
            .collect()
    }
}

/// A copy of /etc/pam.d with some services replaced, for bind-mounting over /etc/pam.d.
pub fn pam_dir(sb: &Sandbox, services: &[(&str, String)]) -> String {
    let dir = sb.path("etc/pam.d");
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir("/etc/pam.d").unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
        }
    }
    for (name, text) in services {
        std::fs::write(dir.join(name), text).unwrap();
    }
    "mount --bind \"$SK_SANDBOX/etc/pam.d\" /etc/pam.d\n".to_owned()
}

/// A shipped example from packaging/pam.d, with `pam_sparekey.so` pointing at the module
/// under test and its config.
pub fn shipped_service(sb: &Sandbox, name: &str, config: &Path) -> String {
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging/pam.d")
        .join(name);
    let text = std::fs::read_to_string(&file).unwrap();
    let with = format!("{} config={}", sb.module().display(), config.display());
    text.lines()
        .map(|l| {
            if l.trim_start().starts_with('#') {
                l.to_owned()
            } else {
                l.replace("pam_sparekey.so", &with)
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}
