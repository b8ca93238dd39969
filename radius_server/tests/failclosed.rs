//! The fail-closed matrix for sparekey-radiusd, with the real binary and real datagrams.
//!
//! A fault present at startup (a config with unknown keys or one others may write, a key
//! file missing or readable by others, a store missing, corrupt or on a read-only
//! filesystem) makes the daemon exit 2 with one line naming the cause; once it is fixed,
//! the daemon starts and accepts the next code. A fault that appears while it runs (the
//! store locked by another writer past the busy timeout, overwritten with random bytes,
//! truncated, deleted, its disk full, its filesystem gone read-only) makes each request an
//! Access-Reject with one line naming the cause, Status-Server is still answered, and
//! once the fault is cleared the very code that was refused is accepted: a failed
//! transaction consumed nothing.
//!
//! Mounts (a small tmpfs, an ext4 image that fails read-only) happen inside the daemon's
//! own private mount namespace (`unshare -m`); the faults are brought into it with
//! `nsenter`. Nothing outside changes. These tests run as root.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sparekey::store::CodeRequest;
use sparekey::{Config, Context, DeviceKind, NewUser, Store};
use sparekey_radiusd::client::{self, Reply, code};

const SECRET: &str = "s3cret-for-failclosed-0123456789";
const BUSY_MS: u32 = 300;
/// Every wait in these tests ends by this deadline.
const DEADLINE: Duration = Duration::from_secs(20);

/// A store with an enrolled user `alice` and three one-use codes, a config naming it, and
/// a copy of the store file to restore after a fault.
struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    db: PathBuf,
    key: PathBuf,
    backup: PathBuf,
    port: u16,
    codes: Vec<String>,
}

impl Setup {
    /// The store lives in `store_dir` (relative to the setup's directory).
    fn new(store_dir: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let sdir = dir.path().join(store_dir);
        std::fs::create_dir_all(&sdir).unwrap();
        let db = sdir.join("sparekey.db");
        let key = dir.path().join("sparekey.key");
        let port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.path().join("sparekey.toml");
        let s = Setup {
            config,
            db,
            key,
            backup: dir.path().join("sparekey.db.backup"),
            port,
            codes: Vec::new(),
            dir,
        };
        s.write_config("");
        let mut s = s;
        let config = Config::load(&s.config).unwrap();
        let mut admin = Store::create(&config).unwrap();
        let ctx = Context::new("test");
        admin
            .add_user(
                NewUser {
                    username: "alice".into(),
                    ..NewUser::default()
                },
                &ctx,
            )
            .unwrap();
        admin
            .add_device("alice", DeviceKind::Phone, None, &ctx)
            .unwrap();
        let issued = admin
            .generate_codes(
                "alice",
                CodeRequest {
                    count: 3,
                    reuse_count: 1,
                    valid_secs: 0,
                    ..CodeRequest::default()
                },
                &ctx,
            )
            .unwrap();
        s.codes = issued
            .codes
            .iter()
            .map(|c| c.code.expose().to_owned())
            .collect();
        // Fold the log into the file, so that the file alone is the whole store.
        admin.purge(&ctx).unwrap();
        drop(admin);
        std::fs::copy(&s.db, &s.backup).unwrap();
        s
    }

    fn write_config(&self, extra_store: &str) {
        let text = format!(
            "[store]\npath = {db:?}\nkey_file = \"sparekey.key\"\nbusy_timeout_ms = {BUSY_MS}\n{extra_store}\n\
             [radius]\nlisten = [\"127.0.0.1:{port}\"]\n\
             [[radius.client]]\nname = \"nas\"\naddress = \"127.0.0.1\"\nsecret = \"{SECRET}\"\n",
            db = self.db.display().to_string(),
            port = self.port
        );
        std::fs::write(&self.config, text).unwrap();
        std::fs::set_permissions(&self.config, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    fn addr(&self) -> SocketAddr {
        format!("127.0.0.1:{}", self.port).parse().unwrap()
    }

    fn restore(&self) {
        std::fs::copy(&self.backup, &self.db).unwrap();
    }

    /// The daemon, directly.
    fn daemon(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_sparekey-radiusd"));
        c.args(["--config", self.config.to_str().unwrap()]);
        c
    }

    /// The daemon in a private mount namespace, after the shell lines in `setup`
    /// (`$SK` is the setup's directory).
    fn daemon_in_namespace(&self, setup: &str) -> Command {
        let mut c = Command::new("unshare");
        c.args(["--mount", "--propagation", "private", "sh", "-euc"])
            .arg(format!("{setup}\nexec \"$@\""))
            .arg("sparekey-test")
            .arg(env!("CARGO_BIN_EXE_sparekey-radiusd"))
            .args(["--config", self.config.to_str().unwrap()])
            .env("SK", self.dir.path());
        c
    }

    /// Runs the daemon expecting it to refuse to start; returns its stderr lines.
    fn refused(&self, mut cmd: Command) -> Vec<String> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > DEADLINE {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the daemon started despite the fault");
            }
            std::thread::yield_now();
        };
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        assert_eq!(status.code(), Some(2), "{err}");
        err.lines().map(str::to_owned).collect()
    }
}

/// A running daemon whose stderr is collected line by line; killed on drop.
struct Daemon {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    addr: SocketAddr,
    sock: UdpSocket,
    next_id: u8,
}

impl Daemon {
    fn start(mut cmd: Command, addr: SocketAddr) -> Daemon {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut d = Daemon {
            child,
            lines,
            addr,
            sock,
            next_id: 0,
        };
        let started = Instant::now();
        while !d.status_answered() {
            if let Some(status) = d.child.try_wait().unwrap() {
                panic!("the daemon exited with {status}: {:?}", d.lines());
            }
            assert!(
                started.elapsed() < DEADLINE,
                "no answer to Status-Server: {:?}",
                d.lines()
            );
        }
        d
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    fn id(&mut self) -> u8 {
        self.next_id = self.next_id.wrapping_add(1);
        self.next_id
    }

    /// Sends `req` and waits for the matching reply, up to the deadline.
    fn exchange(&mut self, req: &[u8]) -> Option<Vec<u8>> {
        self.sock.send_to(req, self.addr).unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 4096];
        while started.elapsed() < DEADLINE {
            if let Ok((n, from)) = self.sock.recv_from(&mut buf) {
                if from == self.addr && n > 1 && buf[1] == req[1] {
                    return Some(buf[..n].to_vec());
                }
            }
        }
        None
    }

    fn status_answered(&mut self) -> bool {
        let id = self.id();
        let req = client::request(
            code::STATUS_SERVER,
            id,
            [id; 16],
            &[],
            SECRET.as_bytes(),
            true,
        );
        self.sock.send_to(&req, self.addr).unwrap();
        let mut buf = [0u8; 4096];
        match self.sock.recv_from(&mut buf) {
            Ok((n, _)) => client::check_reply(&buf[..n], &req, SECRET.as_bytes()).is_ok(),
            Err(_) => false,
        }
    }

    /// A PAP Access-Request for `alice` with `code`; the checked answer.
    fn login(&mut self, code: &str) -> Reply {
        let id = self.id();
        // A fresh request authenticator, so that the reply cache never answers for it.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let mut auth = nanos.to_be_bytes();
        auth[0] = id;
        let req = client::pap(id, auth, "alice", code, SECRET.as_bytes());
        let reply = self
            .exchange(&req)
            .unwrap_or_else(|| panic!("no reply: {:?}", self.lines()));
        client::check_reply(&reply, &req, SECRET.as_bytes()).unwrap()
    }

    /// The lines logged from `from` on that say a request was denied for the store, once
    /// the request's outcome line has arrived (the reply can overtake the log).
    fn denials_since(&self, from: usize) -> Vec<String> {
        let started = Instant::now();
        while !self.lines()[from..]
            .iter()
            .any(|l| l.contains("result=reject reason=store_error"))
        {
            assert!(
                started.elapsed() < DEADLINE,
                "no outcome line: {:?}",
                self.lines()
            );
            std::thread::yield_now();
        }
        self.lines()[from..]
            .iter()
            .filter(|l| l.contains("request denied"))
            .cloned()
            .collect()
    }

    /// Runs shell lines in the daemon's mount namespace.
    fn in_namespace(&self, script: &str) {
        let out = Command::new("nsenter")
            .args([
                "--target",
                &self.child.id().to_string(),
                "--mount",
                "sh",
                "-euc",
            ])
            .arg(script)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs shell lines in the daemon's mount namespace until they succeed, up to the deadline.
    fn in_namespace_eventually(&self, script: &str) {
        let started = Instant::now();
        loop {
            let ok = Command::new("nsenter")
                .args([
                    "--target",
                    &self.child.id().to_string(),
                    "--mount",
                    "sh",
                    "-euc",
                ])
                .arg(script)
                .stderr(Stdio::null())
                .status()
                .unwrap()
                .success();
            if ok {
                return;
            }
            assert!(started.elapsed() < DEADLINE, "{script} never succeeded");
            std::thread::yield_now();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The log holds no code value.
fn assert_no_code_in(lines: &[String], codes: &[String]) {
    for l in lines {
        for c in codes {
            assert!(!l.contains(c.as_str()), "a code value in the log: {l}");
        }
    }
}

/// The common shape of a runtime fault: a code accepted, the fault, the next valid code
/// rejected with exactly one line naming `cause` while Status-Server is still answered,
/// the fault cleared, and that same code accepted.
fn runtime_fault(
    s: &Setup,
    d: &mut Daemon,
    causes: &[&str],
    fault: impl FnOnce(&Daemon),
    clear: impl FnOnce(&Daemon),
) {
    assert_eq!(d.login(&s.codes[0]), Reply::Accept, "{:?}", d.lines());
    fault(d);
    let from = d.lines().len();
    assert_eq!(d.login(&s.codes[1]), Reply::Reject, "{:?}", d.lines());
    let expected: Vec<String> = causes
        .iter()
        .map(|cause| {
            format!(
                "error: store error; request denied: store: {}: {cause}",
                s.db.display()
            )
        })
        .collect();
    let denials = d.denials_since(from);
    assert!(
        denials.len() == 1 && expected.contains(&denials[0]),
        "{denials:?} is not one of {expected:?}: {:?}",
        d.lines()
    );
    assert!(
        d.lines()[from..]
            .iter()
            .any(|l| l == "info: auth client=nas user=alice result=reject reason=store_error"),
        "{:?}",
        d.lines()
    );
    assert!(d.status_answered(), "Status-Server during the fault");
    clear(d);
    assert_eq!(
        d.login(&s.codes[1]),
        Reply::Accept,
        "the refused code was not consumed and works once the fault is cleared: {:?}",
        d.lines()
    );
    assert_eq!(d.login(&s.codes[1]), Reply::Reject, "and only once");
    assert_no_code_in(&d.lines(), &s.codes);
}

#[test]
fn a_lock_held_past_the_busy_timeout_rejects_until_it_is_released() {
    let s = Setup::new("store");
    let mut d = Daemon::start(s.daemon(), s.addr());
    let holder: std::cell::RefCell<Option<Child>> = std::cell::RefCell::new(None);
    runtime_fault(
        &s,
        &mut d,
        &[&format!(
            "locked by another process past the busy timeout ({BUSY_MS} ms)"
        )],
        |_| {
            let mut sqlite = Command::new("sqlite3")
                .arg(&s.db)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("sqlite3 (Debian sqlite3) must be installed: scripts/test-deps");
            sqlite
                .stdin
                .as_mut()
                .unwrap()
                .write_all(b"BEGIN EXCLUSIVE;\n.print held\n")
                .unwrap();
            let mut line = String::new();
            BufReader::new(sqlite.stdout.as_mut().unwrap())
                .read_line(&mut line)
                .unwrap();
            assert_eq!(line.trim(), "held", "sqlite3 holds the lock");
            *holder.borrow_mut() = Some(sqlite);
        },
        |_| {
            let mut sqlite = holder.borrow_mut().take().unwrap();
            sqlite
                .stdin
                .take()
                .unwrap()
                .write_all(b"COMMIT;\n")
                .unwrap();
            assert!(sqlite.wait().unwrap().success());
        },
    );
}

#[test]
fn a_store_overwritten_with_random_bytes_rejects_until_restored() {
    let s = Setup::new("store");
    let mut d = Daemon::start(s.daemon(), s.addr());
    runtime_fault(
        &s,
        &mut d,
        &["corrupt (not a SQLite database)"],
        |_| {
            let mut noise = vec![0u8; 64 << 10];
            std::fs::File::open("/dev/urandom")
                .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut noise))
                .unwrap();
            // In place, as `cat noise > sparekey.db` would: the same file, new contents.
            std::fs::write(&s.db, &noise).unwrap();
        },
        |_| s.restore(),
    );
}

#[test]
fn a_truncated_store_rejects_until_restored() {
    let s = Setup::new("store");
    let mut d = Daemon::start(s.daemon(), s.addr());
    runtime_fault(
        &s,
        &mut d,
        // A checkpoint pass that began before the file was emptied may write pages into
        // it (never the header) before the writer looks.
        &["corrupt (empty file)", "corrupt (not a SQLite database)"],
        |_| drop(std::fs::File::create(&s.db).unwrap()),
        |_| s.restore(),
    );
}

#[test]
fn a_deleted_store_rejects_until_restored() {
    let s = Setup::new("store");
    let mut d = Daemon::start(s.daemon(), s.addr());
    runtime_fault(
        &s,
        &mut d,
        &["missing (no such file)"],
        |_| std::fs::remove_file(&s.db).unwrap(),
        |_| s.restore(),
    );
}

#[test]
fn a_full_disk_rejects_until_space_is_freed() {
    let s = Setup::new("full");
    let dir = s.db.parent().unwrap().display().to_string();
    // The store moves onto a 1 MiB tmpfs seen by the daemon alone.
    let mut d = Daemon::start(
        s.daemon_in_namespace(&format!(
            "cp \"$SK/sparekey.db.backup\" /tmp/sparekey-full.db\n\
             mount -t tmpfs -o size=1m,mode=0700 sparekey-full {dir}\n\
             cp /tmp/sparekey-full.db {dir}/sparekey.db"
        )),
        s.addr(),
    );
    // The first accepted code grows the log; after a checkpoint the log is written from
    // its start again, in space it already has. So fill the disk before any write: the
    // accepted code of the common shape comes after the fault is cleared here.
    d.in_namespace(&format!(
        "dd if=/dev/zero of={dir}/filler bs=4k 2>/dev/null || true\n\
         test \"$(df --output=avail -k {dir} | tail -1 | tr -d ' ')\" -eq 0"
    ));
    let from = d.lines().len();
    assert_eq!(d.login(&s.codes[1]), Reply::Reject, "{:?}", d.lines());
    assert_eq!(
        d.denials_since(from),
        vec![format!(
            "error: store error; request denied: store: {}: disk full",
            s.db.display()
        )]
    );
    assert!(d.status_answered(), "Status-Server while the disk is full");
    d.in_namespace(&format!("rm {dir}/filler"));
    assert_eq!(d.login(&s.codes[1]), Reply::Accept, "{:?}", d.lines());
    assert_eq!(d.login(&s.codes[1]), Reply::Reject, "and only once");
    assert_eq!(d.login(&s.codes[0]), Reply::Accept, "{:?}", d.lines());
    assert_no_code_in(&d.lines(), &s.codes);
}

#[test]
fn a_filesystem_gone_read_only_rejects_until_it_is_repaired_and_remounted() {
    let s = Setup::new("ext4");
    let dir = s.db.parent().unwrap().display().to_string();
    let image = s.dir.path().join("ext4.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let mkfs = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&image)
        .output()
        .expect("mkfs.ext4 (Debian e2fsprogs)");
    assert!(mkfs.status.success(), "{mkfs:?}");
    let image = image.display().to_string();
    // An ext4 filesystem that turns read-only on an error, as a failing disk does.
    let mut d = Daemon::start(
        s.daemon_in_namespace(&format!(
            "mount -o loop,errors=remount-ro {image} {dir}\n\
             cp \"$SK/sparekey.db.backup\" {dir}/sparekey.db\n\
             sync {dir}/sparekey.db"
        )),
        s.addr(),
    );
    runtime_fault(
        &s,
        &mut d,
        &["read-only filesystem"],
        |d| {
            d.in_namespace(&format!(
                "echo 1 > /sys/fs/ext4/$(basename $(findmnt -no SOURCE {dir}))/trigger_fs_error"
            ));
            // The kernel turns the filesystem read-only soon after, not at once.
            d.in_namespace_eventually(&format!("! touch {dir}/probe 2>/dev/null"));
        },
        |d| {
            // The daemon lets go of the broken filesystem, so that it can be unmounted,
            // checked and mounted again.
            d.in_namespace_eventually(&format!("umount {dir}"));
            d.in_namespace(&format!(
                "e2fsck -fy {image} >/dev/null || test $? -eq 1\nmount -o loop {image} {dir}"
            ));
        },
    );
}

#[test]
fn faults_at_startup_refuse_to_start_with_one_line_and_the_fixed_daemon_serves() {
    let s = Setup::new("store");
    let cfg = s.config.display().to_string();
    let db = s.db.display().to_string();
    let key = s.key.display().to_string();
    let mut next = 0;
    let mut serves_after_fix = |s: &Setup| {
        let mut d = Daemon::start(s.daemon(), s.addr());
        let c = &s.codes[next];
        next += 1;
        assert_eq!(d.login(c), Reply::Accept, "{:?}", d.lines());
        assert_no_code_in(&d.lines(), &s.codes);
    };

    // A config with a key nobody knows.
    s.write_config("colour = \"blue\"");
    let lines = s.refused(s.daemon());
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with(&format!("error: config {cfg}: ")),
        "{lines:?}"
    );
    assert!(lines[0].contains("unknown field `colour`"), "{lines:?}");
    s.write_config("");

    // A config others may write.
    std::fs::set_permissions(&s.config, std::fs::Permissions::from_mode(0o666)).unwrap();
    assert_eq!(
        s.refused(s.daemon()),
        vec![format!(
            "error: config {cfg}: mode 0666 lets group or others write it; chmod go-w it"
        )]
    );
    std::fs::set_permissions(&s.config, std::fs::Permissions::from_mode(0o644)).unwrap();
    serves_after_fix(&s);

    // The key file missing, then readable by its group.
    let aside = s.dir.path().join("key.aside");
    std::fs::rename(&s.key, &aside).unwrap();
    assert_eq!(
        s.refused(s.daemon()),
        vec![format!(
            "error: key file {key}: No such file or directory (os error 2)"
        )]
    );
    std::fs::rename(&aside, &s.key).unwrap();
    std::fs::set_permissions(&s.key, std::fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(
        s.refused(s.daemon()),
        vec![format!(
            "error: key file {key}: mode 0640 lets group or others at it; chmod 600 it"
        )]
    );
    std::fs::set_permissions(&s.key, std::fs::Permissions::from_mode(0o600)).unwrap();
    serves_after_fix(&s);

    // The store missing, then random bytes, then on a read-only filesystem.
    std::fs::remove_file(&s.db).unwrap();
    assert_eq!(
        s.refused(s.daemon()),
        vec![format!("error: store: {db}: missing (no such file)")]
    );
    std::fs::write(&s.db, [0x5au8; 8192]).unwrap();
    assert_eq!(
        s.refused(s.daemon()),
        vec![format!(
            "error: store: {db}: corrupt (not a SQLite database)"
        )]
    );
    s.restore();
    let store_dir = s.db.parent().unwrap().display().to_string();
    assert_eq!(
        s.refused(s.daemon_in_namespace(&format!(
            "mount --bind {store_dir} {store_dir}\nmount -o remount,bind,ro {store_dir}"
        ))),
        vec![format!("error: store: {db}: read-only filesystem")]
    );
    serves_after_fix(&s);
}
