//! The fail-closed matrix of pam_sparekey.so, through the real Linux-PAM library: for each
//! way the config, the key or the store can be broken (or tampered with), a login is
//! refused with the documented return code, exactly one syslog line names the cause, no
//! option on the pam.d line turns the fault into success, and once the fault is put right
//! the very same single-use code logs in: the refused attempts consumed nothing, counted
//! no failure and left nothing in the audit.
//!
//! Each test keeps one private mount namespace alive for its whole length (a holder
//! process waiting on its stdin) and runs pamtester (under pam_wrapper), sqlite3 and the
//! shell lines that make and clear faults inside it with nsenter, so a read-only mount or
//! a full tmpfs made for one step is still there for the next, and nothing on the machine
//! changes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{PermissionsExt, chown, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sparekey::{Config, Context, Status, Store};
use support::{KillOnDrop, Sandbox, TestStore, finish, pam_text, program, text, wrapper_module};

const LIMIT: Duration = Duration::from_secs(60);
/// An owner other than root, as a stranger's file would have.
const NOBODY: u32 = 65534;

/// What every probe of a fault expects.
struct Fault<'a> {
    /// The `reason=` of the error line: `config_unusable`, `key_unusable` or
    /// `store_unavailable`.
    reason: &'a str,
    /// The rest of the line, after `reason=...: `.
    cause: String,
    /// Whether the store can still be read (a read-only or full filesystem, another
    /// writer): then account management and an unknown user under `unknown_user=ignore`
    /// are answered from it, and only verification, which must write, fails.
    readable: bool,
}

/// One sandbox, one store, one namespace; fred holds a single-use code.
struct Lab {
    sb: Sandbox,
    _holder: KillOnDrop,
    pid: String,
    config: PathBuf,
    dir: PathBuf,
    db: PathBuf,
    key: PathBuf,
    code: String,
    /// The audit's last id when the current case began.
    audit_mark: i64,
}

impl Lab {
    fn new() -> Self {
        Self::with_config("busy_timeout_ms = 200\n")
    }

    /// `extra` is appended to the `[store]` section.
    fn with_config(extra: &str) -> Self {
        let sb = Sandbox::new();
        let mut ts = TestStore::new(&sb, extra);
        ts.user("fred", &[], Status::Active, true);
        ts.user("bob", &[], Status::Bypass, false);
        let TestStore {
            config, dir, store, ..
        } = ts;
        // No connection stays open: a PAM host has none between logins.
        drop(store);
        let module = sb.module().display().to_string();
        let svc = |name: &str, lines: &str| {
            let text = lines
                .replace("{module}", &module)
                .replace("{config}", &config.display().to_string())
                .replace(
                    "{set_items}",
                    &wrapper_module("pam_set_items.so").display().to_string(),
                );
            sb.write(&format!("pamsvc/{name}"), &text, 0o644);
        };
        svc(
            "sk",
            "auth required {module} config={config}\naccount required {module} config={config}\n",
        );
        // The options that could let someone through when the module does not say no:
        // unknown users ignored during a rollout (with a module after it that says yes),
        // bypass users let through without a code, and a code taken from PAM_AUTHTOK.
        svc(
            "sk-rollout",
            "auth [success=done ignore=ignore default=die] {module} config={config} unknown_user=ignore bypass_status=allow\nauth required pam_permit.so\n",
        );
        svc(
            "sk-use",
            "auth required {set_items}\nauth required {module} config={config} use_first_pass\n",
        );
        svc(
            "sk-try",
            "auth required {set_items}\nauth required {module} config={config} try_first_pass\n",
        );

        let mut holder = sb.command("echo ready", &program("cat"), &[]);
        holder.stdin(Stdio::piped());
        let mut holder = KillOnDrop(holder.spawn().unwrap());
        let out = holder.0.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(out).read_line(&mut line);
            let _ = tx.send(line);
        });
        let ready = rx.recv_timeout(LIMIT).unwrap_or_default();
        assert_eq!(ready, "ready\n", "the namespace holder did not start");
        let pid = holder.0.id().to_string();

        let mut lab = Lab {
            sb,
            _holder: holder,
            pid,
            key: dir.join("sparekey.key"),
            db: dir.join("sparekey.db"),
            config,
            dir,
            code: String::new(),
            audit_mark: 0,
        };
        // The fixture works before anything is broken.
        let s = lab.pamtester("sk", "bob", &[], "");
        assert_eq!(s.result, pam_text::SUCCESS, "{}", s.output);
        assert_eq!(
            lab.sb.module_logs(),
            ["pam_sparekey(sk:auth): user=bob outcome=bypass"]
        );
        lab.begin_case();
        lab
    }

    /// A new single-use code for fred, and a new mark in the audit.
    fn begin_case(&mut self) {
        let cfg = Config::load(&self.config).unwrap();
        let mut store = Store::open(&cfg).unwrap();
        self.code = store
            .generate_codes(
                "fred",
                sparekey::CodeRequest {
                    valid_secs: 3600,
                    ..Default::default()
                },
                &Context::new("cli:test"),
            )
            .unwrap()
            .codes[0]
            .code
            .expose()
            .to_owned();
        drop(store);
        self.mark_audit();
    }

    /// Where the audit stands: `recovers` looks at what comes after.
    fn mark_audit(&mut self) {
        self.audit_mark = self.sql("SELECT max(id) FROM audit;").parse().unwrap();
    }

    /// `program args...` inside the namespace.
    fn command(&self, program: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(support::program("nsenter"));
        c.args(["--target", &self.pid, "--mount", "--"])
            .arg(program)
            .args(args)
            .env("LC_ALL", "C")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    fn run(&self, program: &Path, args: &[&str], input: &str) -> Output {
        finish(self.command(program, args).spawn().unwrap(), input, LIMIT)
    }

    /// Shell lines inside the namespace, which must succeed.
    fn sh(&self, script: &str) {
        let out = self.run(&program("sh"), &["-euc", script], "");
        assert!(
            out.status.success(),
            "{script}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }

    /// One answer of sqlite3 on the store, as the namespace sees it. Read-only, so that
    /// it leaves the WAL and its index as the module left them.
    fn sql(&self, query: &str) -> String {
        self.sqlite3(&["-readonly"], query)
    }

    fn sqlite3(&self, flags: &[&str], query: &str) -> String {
        let db = self.db.display().to_string();
        let mut args = vec!["-bail"];
        args.extend_from_slice(flags);
        args.extend_from_slice(&[&db, query]);
        let out = self.run(&program("sqlite3"), &args, "");
        assert!(out.status.success(), "{query}: {}", text(&out.stderr));
        text(&out.stdout).trim().to_owned()
    }

    /// pamtester under pam_wrapper inside the namespace; `authtok` is put in PAM_AUTHTOK
    /// by pam_set_items.
    fn pamtester_ops(&self, service: &str, user: &str, ops: &[&str], authtok: &str) -> Said {
        let svc = format!(
            "PAM_WRAPPER_SERVICE_DIR={}",
            self.sb.path("pamsvc").display()
        );
        let tok = format!("PAM_AUTHTOK={authtok}");
        let pamtester = program("pamtester");
        let mut args = vec![
            "LD_PRELOAD=libpam_wrapper.so",
            "PAM_WRAPPER=1",
            &svc,
            &tok,
            pamtester.to_str().unwrap(),
            service,
            user,
        ];
        args.extend_from_slice(ops);
        let out = self.run(&program("env"), &args, &format!("{}\n", self.code));
        said(&out)
    }

    fn pamtester(&self, service: &str, user: &str, ops: &[&str], authtok: &str) -> Said {
        let ops = if ops.is_empty() {
            &["authenticate"][..]
        } else {
            ops
        };
        self.pamtester_ops(service, user, ops, authtok)
    }

    /// Every way in is refused while the fault lasts, each with one line naming it.
    fn refused(&self, pam: &str, fault: &Fault<'_>) {
        let line = |svc: &str, kind: &str, user: &str| {
            format!(
                "pam_sparekey({svc}:{kind}): user={user} outcome=error reason={}: {}",
                fault.reason, fault.cause
            )
        };
        let code = self.code.clone();
        let probes: [(&str, &str, &str); 5] = [
            ("sk", "fred", ""),
            ("sk-use", "fred", &code),
            ("sk-try", "fred", &code),
            ("sk-rollout", "fred", ""),
            ("sk-rollout", "bob", ""),
        ];
        for (svc, user, authtok) in probes {
            let s = self.pamtester(svc, user, &[], authtok);
            assert_eq!(s.result, pam, "{svc} {user}: {}", s.output);
            let logs = self.sb.module_logs();
            assert_eq!(logs, [line(svc, "auth", user)], "{svc} {user}");
            self.assert_no_code(&[&s.output, &logs.join("\n")]);
        }
        // An unknown user under unknown_user=ignore: the module says "not mine" only when
        // it could read the store and the store says so.
        let s = self.pamtester("sk-rollout", "mallory", &[], "");
        let logs = self.sb.module_logs();
        if fault.readable {
            assert_eq!(s.result, pam_text::SUCCESS, "{}", s.output);
            assert_eq!(
                logs,
                ["pam_sparekey(sk-rollout:auth): user=mallory outcome=ignore reason=unknown_user"]
            );
        } else {
            assert_eq!(s.result, pam, "{}", s.output);
            assert_eq!(logs, [line("sk-rollout", "auth", "mallory")]);
        }
        let s = self.pamtester("sk", "fred", &["acct_mgmt"], "");
        let logs = self.sb.module_logs();
        if fault.readable {
            assert_eq!(s.result, pam_text::ACCT_SUCCESS, "{}", s.output);
            assert!(logs.is_empty(), "{logs:?}");
        } else {
            assert_eq!(s.result, pam, "{}", s.output);
            assert_eq!(logs, [line("sk", "account", "fred")]);
        }
    }

    /// With the fault put right, fred's code logs in, once: nothing before consumed it,
    /// counted a failure or wrote an audit event.
    fn recovers(&mut self) {
        let s = self.pamtester("sk", "fred", &[], "");
        assert_eq!(s.result, pam_text::SUCCESS, "{}", s.output);
        let logs = self.sb.module_logs();
        assert_eq!(logs.len(), 1, "{logs:?}");
        assert!(
            logs[0].starts_with("pam_sparekey(sk:auth): user=fred outcome=accept code_id=C"),
            "{logs:?}"
        );
        assert!(logs[0].ends_with(" uses_remaining=0"), "{logs:?}");
        let audit = self.sql(&format!(
            "SELECT group_concat(username || ':' || outcome, ' ') FROM audit \
             WHERE action = 'auth' AND id > {};",
            self.audit_mark
        ));
        assert_eq!(audit, "fred:accept");
        assert_eq!(
            self.sql("SELECT failed_attempts FROM users WHERE username = 'fred';"),
            "0"
        );
        let again = self.pamtester("sk", "fred", &[], "");
        assert_eq!(again.result, pam_text::AUTH_ERR, "{}", again.output);
        let logs = self.sb.module_logs();
        assert_eq!(
            logs,
            ["pam_sparekey(sk:auth): user=fred outcome=reject reason=wrong_code"]
        );
        self.begin_case();
    }

    fn assert_no_code(&self, haystacks: &[&str]) {
        for h in haystacks {
            assert!(!h.contains(&self.code), "a code leaked into: {h}");
        }
    }

    /// Checkpoints the WAL into the database (sqlite3, the last connection, removes the
    /// WAL as it exits), so that the database file alone is the store.
    fn settle(&self) {
        assert_eq!(
            self.sqlite3(&[], "PRAGMA wal_checkpoint(TRUNCATE);"),
            "0|0|0"
        );
        assert!(!self.dir.join("sparekey.db-wal").exists());
    }

    fn fault(&self, reason: &'static str, cause: String) -> Fault<'static> {
        Fault {
            reason,
            cause,
            readable: false,
        }
    }
}

/// What pamtester said last, with its whole output.
struct Said {
    result: String,
    output: String,
}

fn said(out: &Output) -> Said {
    let output = format!("{}{}", text(&out.stdout), text(&out.stderr));
    let result = output
        .lines()
        .filter_map(|l| {
            l.rfind("pamtester: ")
                .map(|i| &l[i + "pamtester: ".len()..])
        })
        .next_back()
        .unwrap_or_default()
        .to_owned();
    Said { result, output }
}

fn mode(p: &Path, m: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
}

#[test]
fn config_faults_are_authinfo_unavail_and_put_right_the_code_works() {
    let mut lab = Lab::new();
    let c = lab.config.clone();
    let cd = c.display().to_string();
    let unusable = |cause: String| lab.fault("config_unusable", cause);

    // Missing.
    let aside = lab.dir.join("aside.toml");
    std::fs::rename(&c, &aside).unwrap();
    lab.refused(
        pam_text::AUTHINFO_UNAVAIL,
        &unusable(format!(
            "config {cd}: No such file or directory (os error 2)"
        )),
    );
    std::fs::rename(&aside, &c).unwrap();
    lab.recovers();

    // Writable by group, then by others.
    for m in [0o664, 0o646] {
        mode(&c, m);
        lab.refused(
            pam_text::AUTHINFO_UNAVAIL,
            &lab.fault(
                "config_unusable",
                format!("config {cd}: mode {m:04o} lets group or others write it; chmod go-w it"),
            ),
        );
        mode(&c, 0o644);
        lab.recovers();
    }

    // Owned by someone else.
    chown(&c, Some(NOBODY), None).unwrap();
    lab.refused(
        pam_text::AUTHINFO_UNAVAIL,
        &lab.fault(
            "config_unusable",
            format!("config {cd}: owned by uid {NOBODY}, not root; chown root it"),
        ),
    );
    chown(&c, Some(0), None).unwrap();
    lab.recovers();

    let good = std::fs::read_to_string(&c).unwrap();
    let cases: [(&str, String); 4] = [
        (
            "colour = \"blue\"\n",
            format!(
                "config {cd}: TOML parse error at line 5, column 1: unknown field `colour`, expected one of `path`, `url`, `password_file`, `key_file`, `busy_timeout_ms`, `synchronous`"
            ),
        ),
        (
            "[pam]\nunknown_usr = \"ignore\"\n",
            format!(
                "config {cd}: [pam]: unknown field `unknown_usr`, expected one of `prompt`, `unknown_user`, `bypass_status`, `debug`"
            ),
        ),
        (
            "[policy]\nlockout_threshold = \"ten\"\n",
            format!(
                "config {cd}: TOML parse error at line 6, column 21: invalid type: string \"ten\", expected u32"
            ),
        ),
        (
            "[colour]\n",
            format!(
                "config {cd}: TOML parse error at line 5, column 2: unknown field `colour`, expected one of `store`, `policy`, `radius`, `pam`, `admin_api`"
            ),
        ),
    ];
    for (extra, cause) in cases {
        std::fs::write(&c, format!("{good}{extra}")).unwrap();
        lab.refused(
            pam_text::AUTHINFO_UNAVAIL,
            &lab.fault("config_unusable", cause),
        );
        std::fs::write(&c, &good).unwrap();
        lab.recovers();
    }

    // Empty, and not text.
    std::fs::write(&c, "").unwrap();
    lab.refused(
        pam_text::AUTHINFO_UNAVAIL,
        &lab.fault(
            "config_unusable",
            format!("config {cd}: TOML parse error at line 1, column 1: missing field `store`"),
        ),
    );
    std::fs::write(&c, b"[store]\npath = \"\xff\"\n").unwrap();
    lab.refused(
        pam_text::AUTHINFO_UNAVAIL,
        &lab.fault(
            "config_unusable",
            format!("config {cd}: stream did not contain valid UTF-8"),
        ),
    );
    std::fs::write(&c, &good).unwrap();
    lab.recovers();

    // A directory in its place.
    std::fs::rename(&c, &aside).unwrap();
    std::fs::create_dir(&c).unwrap();
    mode(&c, 0o755);
    lab.refused(
        pam_text::AUTHINFO_UNAVAIL,
        &lab.fault(
            "config_unusable",
            format!("config {cd}: not a regular file"),
        ),
    );
    std::fs::remove_dir(&c).unwrap();
    std::fs::rename(&aside, &c).unwrap();
    lab.recovers();

    // A symlink to a stranger's file (which names the same store and key), and a symlink
    // that leads nowhere.
    let theirs = lab.sb.path("theirs.toml");
    std::fs::write(
        &theirs,
        format!(
            "[store]\npath = \"{}\"\nkey_file = \"{}\"\n",
            lab.db.display(),
            lab.key.display()
        ),
    )
    .unwrap();
    chown(&theirs, Some(NOBODY), None).unwrap();
    std::fs::rename(&c, &aside).unwrap();
    symlink(&theirs, &c).unwrap();
    lab.refused(
        pam_text::AUTHINFO_UNAVAIL,
        &lab.fault(
            "config_unusable",
            format!(
                "config {cd} (-> {}): owned by uid {NOBODY}, not root; chown root it",
                theirs.display()
            ),
        ),
    );
    std::fs::remove_file(&c).unwrap();
    symlink(lab.sb.path("nowhere.toml"), &c).unwrap();
    lab.refused(
        pam_text::AUTHINFO_UNAVAIL,
        &lab.fault(
            "config_unusable",
            format!("config {cd}: No such file or directory (os error 2)"),
        ),
    );
    std::fs::remove_file(&c).unwrap();
    std::fs::rename(&aside, &c).unwrap();
    lab.recovers();

    // The directory above it writable by others.
    let dir = lab.dir.display().to_string();
    mode(&lab.dir, 0o757);
    lab.refused(
        pam_text::AUTHINFO_UNAVAIL,
        &lab.fault(
            "config_unusable",
            format!("directory {dir}: mode 0757 lets group or others write it; chmod go-w it"),
        ),
    );
    mode(&lab.dir, 0o700);
    lab.recovers();
}

#[test]
fn key_faults_are_authinfo_unavail_and_put_right_the_code_works() {
    let mut lab = Lab::new();
    let k = lab.key.clone();
    let kd = k.display().to_string();
    let unusable = |cause: String| Fault {
        reason: "key_unusable",
        cause,
        readable: false,
    };

    // Missing.
    let aside = lab.dir.join("aside.key");
    std::fs::rename(&k, &aside).unwrap();
    lab.refused(
        pam_text::AUTHINFO_UNAVAIL,
        &unusable(format!(
            "key file {kd}: No such file or directory (os error 2)"
        )),
    );
    std::fs::rename(&aside, &k).unwrap();
    lab.recovers();

    // Readable or writable by group or others.
    for m in [0o640, 0o604, 0o620] {
        mode(&k, m);
        let cause = if m & 0o022 != 0 {
            format!("key file {kd}: mode {m:04o} lets group or others write it; chmod go-w it")
        } else {
            format!("key file {kd}: mode {m:04o} lets group or others at it; chmod 600 it")
        };
        lab.refused(pam_text::AUTHINFO_UNAVAIL, &unusable(cause));
        mode(&k, 0o600);
        lab.recovers();
    }

    // Owned by someone else.
    chown(&k, Some(NOBODY), None).unwrap();
    lab.refused(
        pam_text::AUTHINFO_UNAVAIL,
        &unusable(format!(
            "key file {kd}: owned by uid {NOBODY}, not root; chown root it"
        )),
    );
    chown(&k, Some(0), None).unwrap();
    lab.recovers();

    // Cut short.
    let good = std::fs::read(&k).unwrap();
    std::fs::write(&k, &good[..16]).unwrap();
    lab.refused(
        pam_text::AUTHINFO_UNAVAIL,
        &unusable(format!("key file {kd}: expected 32 bytes, found 16")),
    );
    std::fs::write(&k, &good).unwrap();
    lab.recovers();

    // A directory in its place; a symlink to a stranger's key.
    std::fs::rename(&k, &aside).unwrap();
    std::fs::create_dir(&k).unwrap();
    mode(&k, 0o700);
    lab.refused(
        pam_text::AUTHINFO_UNAVAIL,
        &unusable(format!("key file {kd}: not a regular file")),
    );
    std::fs::remove_dir(&k).unwrap();
    let theirs = lab.sb.path("theirs.key");
    std::fs::write(&theirs, &good).unwrap();
    mode(&theirs, 0o600);
    chown(&theirs, Some(NOBODY), None).unwrap();
    symlink(&theirs, &k).unwrap();
    lab.refused(
        pam_text::AUTHINFO_UNAVAIL,
        &unusable(format!(
            "key file {kd} (-> {}): owned by uid {NOBODY}, not root; chown root it",
            theirs.display()
        )),
    );
    std::fs::remove_file(&k).unwrap();
    std::fs::rename(&aside, &k).unwrap();
    lab.recovers();
}

#[test]
fn store_file_faults_are_authinfo_unavail_and_put_right_the_code_works() {
    let mut lab = Lab::new();
    let db = lab.db.clone();
    let dd = db.display().to_string();
    let unavailable = |cause: String| Fault {
        reason: "store_unavailable",
        cause,
        readable: false,
    };

    // Missing.
    let aside = lab.dir.join("aside.db");
    std::fs::rename(&db, &aside).unwrap();
    lab.refused(
        pam_text::AUTHINFO_UNAVAIL,
        &unavailable(format!(
            "store: {dd}: no such file (create it with `sparekey init`)"
        )),
    );
    std::fs::rename(&aside, &db).unwrap();
    lab.recovers();

    // Writable by group or others; owned by someone else.
    for m in [0o660, 0o606] {
        mode(&db, m);
        lab.refused(
            pam_text::AUTHINFO_UNAVAIL,
            &unavailable(format!(
                "store {dd}: mode {m:04o} lets group or others write it; chmod go-w it"
            )),
        );
        mode(&db, 0o600);
        lab.recovers();
    }
    chown(&db, Some(NOBODY), None).unwrap();
    lab.refused(
        pam_text::AUTHINFO_UNAVAIL,
        &unavailable(format!(
            "store {dd}: owned by uid {NOBODY}, not root; chown root it"
        )),
    );
    chown(&db, Some(0), None).unwrap();
    lab.recovers();

    // Overwritten with random bytes, then emptied; put right from a copy. The WAL is
    // checkpointed first, so that the file alone is the store.
    lab.settle();
    let good = std::fs::read(&db).unwrap();
    let mut noise = vec![0u8; good.len()];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut noise))
        .unwrap();
    std::fs::write(&db, &noise).unwrap();
    lab.refused(
        pam_text::AUTHINFO_UNAVAIL,
        &unavailable(format!("store: {dd}: file is not a database")),
    );
    std::fs::write(&db, b"").unwrap();
    lab.refused(
        pam_text::AUTHINFO_UNAVAIL,
        &unavailable(format!(
            "store: {dd}: not a sparekey store (empty, or another program's database); restore it from a backup, or create one with `sparekey init`"
        )),
    );
    std::fs::write(&db, &good).unwrap();
    lab.recovers();

    // A directory in its place; a symlink to a stranger's copy of the store.
    std::fs::rename(&db, &aside).unwrap();
    std::fs::create_dir(&db).unwrap();
    mode(&db, 0o700);
    lab.refused(
        pam_text::AUTHINFO_UNAVAIL,
        &unavailable(format!("store {dd}: not a regular file")),
    );
    std::fs::remove_dir(&db).unwrap();
    let theirs = lab.sb.path("theirs.db");
    std::fs::copy(&aside, &theirs).unwrap();
    chown(&theirs, Some(NOBODY), None).unwrap();
    symlink(&theirs, &db).unwrap();
    lab.refused(
        pam_text::AUTHINFO_UNAVAIL,
        &unavailable(format!(
            "store {dd} (-> {}): owned by uid {NOBODY}, not root; chown root it",
            theirs.display()
        )),
    );
    std::fs::remove_file(&db).unwrap();
    std::fs::rename(&aside, &db).unwrap();
    lab.recovers();
}

#[test]
fn a_store_on_a_read_only_filesystem_refuses_verification_until_it_is_writable() {
    let mut lab = Lab::new();
    let dir = lab.dir.display().to_string();
    let read_only = format!("mount --bind '{dir}' '{dir}'\nmount -o remount,bind,ro '{dir}'");
    // As a host has it after any login: the WAL and its index are there, so the store can
    // be read but not written.
    lab.sh(&read_only);
    lab.refused(
        pam_text::AUTHINFO_UNAVAIL,
        &Fault {
            reason: "store_unavailable",
            cause: "store: attempt to write a readonly database".to_owned(),
            readable: true,
        },
    );
    lab.sh(&format!("umount '{dir}'"));
    lab.recovers();
    // With the WAL folded into the database and gone, it cannot even be opened.
    lab.settle();
    lab.sh(&read_only);
    lab.refused(
        pam_text::AUTHINFO_UNAVAIL,
        &Fault {
            reason: "store_unavailable",
            cause: format!(
                "store: {}: unable to open database file: cannot write it: Read-only file system (os error 30)",
                lab.db.display()
            ),
            readable: false,
        },
    );
    lab.sh(&format!("umount '{dir}'"));
    lab.recovers();
}

#[test]
fn a_store_on_a_full_disk_refuses_verification_until_there_is_room() {
    let mut lab = Lab::new();
    let dir = lab.dir.display().to_string();
    // The store moves to a small tmpfs of its own, mounted over its directory; a login
    // there first, so the WAL is in use, then the rest of the space is taken.
    lab.sh(&format!(
        "mkdir /tmp/small\nmount -t tmpfs -o size=1m,mode=0700 sparekey-test-small /tmp/small\n\
         cp -a '{dir}/.' /tmp/small/\nmount --bind /tmp/small '{dir}'"
    ));
    let s = lab.pamtester("sk", "bob", &[], "");
    assert_eq!(s.result, pam_text::SUCCESS, "{}", s.output);
    assert_eq!(lab.sb.module_logs().len(), 1);
    lab.mark_audit();
    lab.sh(&format!(
        "dd if=/dev/zero of='{dir}/filler' bs=4096 2>/dev/null || true\ntest -s '{dir}/filler'"
    ));
    lab.refused(
        pam_text::AUTHINFO_UNAVAIL,
        &Fault {
            reason: "store_unavailable",
            cause: "store: database or disk is full".to_owned(),
            readable: true,
        },
    );
    lab.sh(&format!("rm '{dir}/filler'"));
    lab.recovers();
}

#[test]
fn a_store_locked_by_another_writer_past_the_busy_timeout_refuses_until_it_lets_go() {
    let mut lab = Lab::new();
    let db = lab.db.display().to_string();
    let held = lab.sb.path("held");
    let mut writer = lab
        .command(&program("sqlite3"), &["-bail", &db])
        .spawn()
        .unwrap();
    let mut stdin = writer.stdin.take().unwrap();
    writeln!(stdin, "BEGIN EXCLUSIVE;\n.shell touch '{}'", held.display()).unwrap();
    let deadline = Instant::now() + LIMIT;
    while !held.exists() {
        if let Some(status) = writer.try_wait().unwrap() {
            panic!("sqlite3 exited before taking the lock: {status}");
        }
        assert!(Instant::now() < deadline, "sqlite3 did not take the lock");
        std::thread::sleep(Duration::from_millis(10));
    }
    lab.refused(
        pam_text::AUTHINFO_UNAVAIL,
        &Fault {
            reason: "store_unavailable",
            cause: format!(
                "store: {db}: database is locked (another writer held it longer than busy_timeout_ms)"
            ),
            readable: true,
        },
    );
    writeln!(stdin, "COMMIT;\n.quit").unwrap();
    drop(stdin);
    let out = finish(writer, "", LIMIT);
    assert!(out.status.success(), "{}", text(&out.stderr));
    lab.recovers();
}
