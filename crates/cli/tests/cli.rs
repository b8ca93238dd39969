//! End-to-end tests of the `sparekey` binary: real processes, real files, real SQLite.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

#[path = "../../../tests/support/hygiene.rs"]
mod hygiene;

/// A store made by `sparekey init` in a temporary directory.
struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let env = Env { dir };
        let out = env.cmd(&["init", "--dir", env.store_dir().to_str().unwrap()], "");
        assert!(out.status.success(), "{}", text(&out.stderr));
        env
    }

    fn store_dir(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    fn config(&self) -> PathBuf {
        self.store_dir().join("sparekey.toml")
    }

    fn db(&self) -> PathBuf {
        self.store_dir().join("sparekey.db")
    }

    fn key(&self) -> PathBuf {
        self.store_dir().join("sparekey.key")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_sparekey"));
        c.args(args)
            .env("SPAREKEY_CONFIG", self.config())
            .env("USER", "tester")
            .env_remove("SUDO_USER");
        c
    }

    fn cmd(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // A command that fails before reading its stdin closes it: a broken pipe is fine.
        let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
        let out = child.wait_with_output().unwrap();
        self.record(args, &out);
        out
    }

    /// For the suite's leak check: codes a `code` command printed, and every command's
    /// diagnostics, kept with the store when the test ends.
    fn record(&self, args: &[&str], out: &Output) {
        if args.contains(&"code") && (args.contains(&"generate") || args.contains(&"temp")) {
            let stdout = text(&out.stdout);
            let mut printed: Vec<String> = stdout
                .lines()
                .filter(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()))
                .map(str::to_owned)
                .collect();
            if let Ok(json) = serde_json::from_str::<serde_json::Value>(&stdout) {
                json_codes(&json, &mut printed);
            }
            hygiene::issued(printed);
        }
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("cli-stderr.log"))
            .unwrap();
        log.write_all(&out.stderr).unwrap();
    }

    /// Runs a command that must succeed; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args, "");
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    fn enrolled(&self, name: &str) {
        self.ok(&["user", "add", name]);
        self.ok(&["device", "add", name, "--kind", "phone"]);
    }

    fn verify(&self, name: &str, code: &str) -> Output {
        self.cmd(&["verify", name], &format!("{code}\n"))
    }

    /// The bytes of the store's files (database, WAL, shared memory).
    fn store_bytes(&self) -> Vec<u8> {
        let mut all = Vec::new();
        for suffix in ["", "-wal", "-shm"] {
            let mut p = self.db().into_os_string();
            p.push(suffix);
            if let Ok(b) = std::fs::read(p) {
                all.extend(b);
            }
        }
        all
    }
}

/// Every `"code"` string in a JSON answer.
fn json_codes(v: &serde_json::Value, into: &mut Vec<String>) {
    match v {
        serde_json::Value::Array(a) => a.iter().for_each(|x| json_codes(x, into)),
        serde_json::Value::Object(o) => {
            for (k, x) in o {
                match x.as_str() {
                    Some(c) if k == "code" => into.push(c.to_owned()),
                    _ => json_codes(x, into),
                }
            }
        }
        _ => {}
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        hygiene::keep(self.dir.path());
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn init_makes_private_files_and_never_overwrites() {
    let env = Env::new();
    for f in [env.config(), env.key(), env.db()] {
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }
    assert_eq!(std::fs::metadata(env.key()).unwrap().len(), 32);
    let key = std::fs::read(env.key()).unwrap();
    let out = env.cmd(&["init", "--dir", env.store_dir().to_str().unwrap()], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("already exists"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(std::fs::read(env.key()).unwrap(), key);

    // An existing empty directory is fine; one holding a key is refused, and nothing is left behind.
    let empty = env.dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert!(
        env.cmd(&["init", "--dir", empty.to_str().unwrap()], "")
            .status
            .success()
    );
    let partial = env.dir.path().join("partial");
    std::fs::create_dir(&partial).unwrap();
    std::fs::write(partial.join("sparekey.key"), [0u8; 32]).unwrap();
    assert_eq!(
        env.cmd(&["init", "--dir", partial.to_str().unwrap()], "")
            .status
            .code(),
        Some(2)
    );
    assert!(!partial.join("sparekey.db").exists() && !partial.join("sparekey.toml").exists());
}

#[test]
fn generate_prints_one_code_per_line_and_a_code_works_once() {
    let env = Env::new();
    env.enrolled("alice");
    let out = env.ok(&["code", "generate", "alice"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "{out:?}");
    let code = lines[0];
    assert!(
        code.len() == 9 && code.bytes().all(|b| b.is_ascii_digit()),
        "{code}"
    );

    let first = env.verify("alice", code);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first.stderr));
    assert!(text(&first.stderr).contains("accepted"));
    let second = env.verify("alice", code);
    assert_eq!(second.status.code(), Some(1));
    assert!(text(&second.stderr).contains("wrong_code"));
    for o in [&first, &second] {
        assert!(!contains(&o.stderr, code) && !contains(&o.stdout, code));
    }

    let out = env.ok(&[
        "code",
        "generate",
        "alice",
        "--count",
        "3",
        "--reuse-count",
        "0",
        "--valid-secs",
        "0",
    ]);
    assert_eq!(out.lines().count(), 3);

    let json: serde_json::Value =
        serde_json::from_str(&env.ok(&["--json", "code", "generate", "alice", "--count", "2"]))
            .unwrap();
    let codes = json["codes"].as_array().unwrap();
    assert_eq!(codes.len(), 2);
    for c in codes {
        assert!(c["id"].as_str().unwrap().starts_with('C'));
        assert_eq!(c["code"].as_str().unwrap().len(), 9);
        assert!(c["expires_at"].is_i64());
        assert_eq!(c["uses_remaining"], 1);
    }
    let c = codes[0]["code"].as_str().unwrap();
    let v: serde_json::Value =
        serde_json::from_slice(&env.cmd(&["verify", "alice", "--json"], c).stdout).unwrap();
    assert_eq!(v["decision"], "accept");
    assert_eq!(v["code_id"], codes[0]["id"]);
}

#[test]
fn custom_codes_temp_codes_and_preserve() {
    let env = Env::new();
    env.enrolled("bob");
    let out = env.ok(&[
        "code",
        "generate",
        "bob",
        "--code",
        "24681357",
        "--code",
        "1122334455",
        "--reuse-count",
        "2",
    ]);
    assert_eq!(out, "24681357\n1122334455\n");
    let dup = env.cmd(
        &[
            "code",
            "generate",
            "bob",
            "--code",
            "24681357",
            "--preserve-existing",
        ],
        "",
    );
    assert_eq!(dup.status.code(), Some(2));
    assert!(!contains(&dup.stderr, "24681357"), "{}", text(&dup.stderr));
    let bad = env.cmd(&["code", "generate", "bob", "--code", "12ab56"], "");
    assert_eq!(bad.status.code(), Some(2));
    assert!(!contains(&bad.stderr, "12ab56"));

    let temp = env.ok(&["code", "temp", "bob", "--valid-for", "30m"]);
    let temp = temp.trim();
    assert_eq!(temp.len(), 8);
    assert_eq!(env.verify("bob", temp).status.code(), Some(0));
    assert_eq!(
        env.verify("bob", "24681357").status.code(),
        Some(0),
        "temp kept the others"
    );
    assert_eq!(
        env.cmd(&["code", "temp", "bob", "--valid-for", "73h"], "")
            .status
            .code(),
        Some(2)
    );

    let list: serde_json::Value =
        serde_json::from_str(&env.ok(&["--json", "code", "list", "bob"])).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    let id = list[0]["id"].as_str().unwrap().to_owned();
    env.ok(&["code", "delete", &id]);
    assert_eq!(env.cmd(&["code", "delete", &id], "").status.code(), Some(1));
}

#[test]
fn exit_codes_and_messages_name_what_is_at_fault() {
    let env = Env::new();
    let out = env.cmd(&["user", "show", "nobody"], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("nobody"));
    assert_eq!(env.cmd(&["user", "frobnicate"], "").status.code(), Some(2));
    assert_eq!(
        env.cmd(&["code", "generate", "x", "--count", "ten"], "")
            .status
            .code(),
        Some(2)
    );

    let out = env.cmd(&["user", "list", "--config", "/nonexistent/sk.toml"], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("/nonexistent/sk.toml"),
        "{}",
        text(&out.stderr)
    );

    // --config works before and after the subcommand, and wins over the environment.
    let cfg = env.config();
    let mut c = Command::new(env!("CARGO_BIN_EXE_sparekey"));
    c.args(["--config", cfg.to_str().unwrap(), "user", "add", "carol"])
        .env("SPAREKEY_CONFIG", "/nonexistent");
    assert!(c.output().unwrap().status.success());
    env.ok(&["user", "show", "carol", "--config", cfg.to_str().unwrap()]);
}

#[test]
fn sixteen_processes_racing_on_one_code_accept_exactly_its_uses() {
    let env = Env::new();
    // Thirteen misses a round would lock the user out; this test is about the code alone.
    let cfg = std::fs::read_to_string(env.config()).unwrap();
    std::fs::write(
        env.config(),
        cfg.replace("[policy]\n", "[policy]\nlockout_threshold = 0\n"),
    )
    .unwrap();
    env.enrolled("race");
    for round in 0..50 {
        let code = env.ok(&[
            "code",
            "generate",
            "race",
            "--reuse-count",
            "3",
            "--valid-secs",
            "0",
        ]);
        let code = code.trim().to_owned();
        // Start all 16 first: each opens the store, then blocks reading its stdin. Only
        // then is the code written to every one, so that they verify at the same time.
        let mut children: Vec<_> = (0..16)
            .map(|_| {
                env.command(&["verify", "race"])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for ch in &mut children {
            ch.stdin.take().unwrap().write_all(code.as_bytes()).unwrap();
        }
        let mut accepted = 0;
        for ch in children {
            let out = ch.wait_with_output().unwrap();
            match out.status.code() {
                Some(0) => accepted += 1,
                Some(1) => {}
                other => panic!("round {round}: exit {other:?}: {}", text(&out.stderr)),
            }
        }
        assert_eq!(accepted, 3, "round {round}");
    }
}

#[test]
fn no_code_reaches_the_store_the_audit_or_any_output() {
    let env = Env::new();
    env.ok(&["user", "add", "dana", "--alias", "dana@example.com"]);
    env.ok(&["device", "add", "dana", "--kind", "token"]);
    let mut outputs: Vec<Vec<u8>> = Vec::new();
    let mut codes: Vec<String> = Vec::new();
    codes.extend(
        env.ok(&[
            "code",
            "generate",
            "dana",
            "--count",
            "5",
            "--reuse-count",
            "2",
        ])
        .lines()
        .map(str::to_owned),
    );
    codes.extend(
        env.ok(&[
            "code",
            "generate",
            "dana",
            "--code",
            "86420975311",
            "--preserve-existing",
        ])
        .lines()
        .map(str::to_owned),
    );
    codes.extend(
        env.ok(&["code", "temp", "dana", "--reusable"])
            .lines()
            .map(str::to_owned),
    );
    let json = env.ok(&[
        "--json",
        "code",
        "generate",
        "dana",
        "--count",
        "3",
        "--preserve-existing",
    ]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    codes.extend(
        v["codes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["code"].as_str().unwrap().to_owned()),
    );
    assert_eq!(codes.len(), 10);

    // Use some, miss some, type one into the name field, lock the user out.
    for (i, c) in codes.iter().enumerate() {
        let o = env.verify(if i % 2 == 0 { "dana" } else { "DANA@corp" }, c);
        outputs.push(o.stdout);
        outputs.push(o.stderr);
    }
    let o = env.verify(&codes[1], &codes[2]);
    outputs.extend([o.stdout, o.stderr]);
    for _ in 0..12 {
        let o = env.verify("dana", "000000000");
        outputs.extend([o.stdout, o.stderr]);
    }
    let o = env.verify("dana", &codes[3]);
    assert_eq!(o.status.code(), Some(1), "locked out");
    outputs.extend([o.stdout, o.stderr]);
    for args in [
        &["audit"][..],
        &["audit", "--format", "json"],
        &["audit", "--format", "csv"],
        &["export", "--format", "json"],
        &["export"],
        &["user", "show", "dana"],
        &["--json", "user", "show", "dana"],
        &["code", "list"],
        &["--json", "code", "list"],
        &["check-config", "--integrity"],
    ] {
        let o = env.cmd(args, "");
        assert!(o.status.success(), "{args:?}");
        outputs.extend([o.stdout, o.stderr]);
    }
    let audit = env.ok(&["audit"]);
    assert!(
        audit.contains("reason=locked_out") && audit.contains("<redacted>"),
        "{audit}"
    );

    let store = env.store_bytes();
    for code in &codes {
        assert!(!contains(&store, code), "the store holds a code");
        for o in &outputs {
            assert!(!contains(o, code), "an output holds a code: {}", text(o));
        }
    }
    for suffix in ["", "-wal", "-shm"] {
        let mut p = env.db().into_os_string();
        p.push(suffix);
        let p = PathBuf::from(p);
        if p.exists() {
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        }
    }
    let exported = env.dir.path().join("users.json");
    env.ok(&[
        "export",
        "--format",
        "json",
        "--output",
        exported.to_str().unwrap(),
    ]);
    assert_eq!(mode(&exported), 0o600);
}

#[test]
fn bad_config_key_and_store_are_clear_errors() {
    let env = Env::new();
    env.enrolled("erin");
    let cfg = std::fs::read_to_string(env.config()).unwrap();

    std::fs::write(
        env.config(),
        cfg.replace("[policy]\n", "[policy]\nlockout_treshold = 3\n"),
    )
    .unwrap();
    let out = env.cmd(&["user", "list"], "");
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("sparekey.toml") && err.contains("lockout_treshold"),
        "{err}"
    );
    let out = env.cmd(&["check-config"], "");
    assert_eq!(out.status.code(), Some(2));
    std::fs::write(env.config(), &cfg).unwrap();

    std::fs::set_permissions(env.key(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = env.cmd(&["verify", "erin"], "123456789");
    assert_eq!(
        out.status.code(),
        Some(2),
        "a key others can read is refused"
    );
    assert!(text(&out.stderr).contains("sparekey.key"));
    std::fs::set_permissions(env.key(), std::fs::Permissions::from_mode(0o600)).unwrap();

    let key = std::fs::read(env.key()).unwrap();
    std::fs::remove_file(env.key()).unwrap();
    let out = env.cmd(&["verify", "erin"], "123456789");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("sparekey.key"),
        "{}",
        text(&out.stderr)
    );
    std::fs::write(env.key(), &key).unwrap();
    std::fs::set_permissions(env.key(), std::fs::Permissions::from_mode(0o600)).unwrap();
    env.ok(&["check-config"]);

    // Another valid key in its place: refused by name, not a wrong code for every login.
    let code = env.ok(&["code", "generate", "erin"]).trim().to_owned();
    let other: Vec<u8> = key.iter().map(|b| b ^ 0x5a).collect();
    std::fs::write(env.key(), &other).unwrap();
    for args in [
        &["verify", "erin"][..],
        &["check-config"],
        &["user", "list"],
    ] {
        let out = env.cmd(args, &format!("{code}\n"));
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = text(&out.stderr);
        assert!(
            err.contains("sparekey.key") && err.contains("not this store's key"),
            "{err}"
        );
    }
    std::fs::write(env.key(), &key).unwrap();
    let out = env.verify("erin", &code);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    // A database overwritten with random bytes: an error naming it, and the file untouched.
    for suffix in ["-wal", "-shm"] {
        let mut p = env.db().into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
    let junk: Vec<u8> = (0..65_536u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(env.db(), &junk).unwrap();
    for args in [
        &["verify", "erin"][..],
        &["user", "list"],
        &["check-config"],
    ] {
        let out = env.cmd(args, "123456789");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            text(&out.stderr).contains("sparekey.db"),
            "{}",
            text(&out.stderr)
        );
    }
    assert_eq!(std::fs::read(env.db()).unwrap(), junk);

    std::fs::remove_file(env.db()).unwrap();
    let out = env.cmd(&["user", "list"], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        !env.db().exists(),
        "a missing store is not silently recreated"
    );
}

#[test]
fn oversized_and_nul_input_is_refused_and_changes_nothing() {
    let env = Env::new();
    env.enrolled("fay");
    let before = env.ok(&["export"]);
    let huge = "x".repeat(10 * 1024);
    let digits = "7".repeat(10 * 1024);
    for args in [
        &["user", "add", huge.as_str()][..],
        &["user", "add", "ok", "--alias", huge.as_str()],
        &["user", "add", "ok", "--notes", huge.as_str()],
        &["user", "update", "fay", "--realname", huge.as_str()],
        &[
            "device",
            "add",
            "fay",
            "--kind",
            "phone",
            "--name",
            huge.as_str(),
        ],
        &["code", "generate", "fay", "--code", digits.as_str()],
        &["code", "generate", huge.as_str()],
        &["user", "add", "tab\there"],
    ] {
        let out = env.cmd(args, "");
        assert_eq!(out.status.code(), Some(2), "{:?}", &args[..2]);
        assert!(!text(&out.stderr).is_empty());
        assert!(
            out.stderr.len() < 1024,
            "the error does not echo 10 KB back"
        );
    }
    assert_eq!(env.ok(&["export"]), before);

    // NUL bytes and 10 KB at the verify prompt are failed attempts, not errors.
    let code = env.ok(&["code", "generate", "fay"]);
    for junk in ["123\u{0}456789", &digits, "\u{0}"] {
        assert_eq!(env.cmd(&["verify", "fay"], junk).status.code(), Some(1));
    }
    assert_eq!(env.verify(&huge, code.trim()).status.code(), Some(1));
    assert_eq!(env.verify("fay", code.trim()).status.code(), Some(0));
}

#[test]
fn import_reports_every_bad_row_and_changes_nothing() {
    let env = Env::new();
    env.ok(&["user", "add", "gus", "--alias", "gustav"]);
    let before = env.ok(&["export"]);
    let csv = env.dir.path().join("bad.csv");
    std::fs::write(
        &csv,
        "username,aliases,status,devices\n\
         hal,,active,phone\n\
         ,,active,\n\
         ida,gustav,active,\n\
         jo,,asleep,\n\
         kim,,active,pager\n\
         \"l\0m\",,active,\n\
         hal,,active,\n",
    )
    .unwrap();
    let out = env.cmd(&["import", csv.to_str().unwrap()], "");
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    for line in [3, 5, 6, 7] {
        assert!(
            err.contains(&format!("bad.csv:{line}:")),
            "line {line} in {err}"
        );
    }
    assert_eq!(env.ok(&["export"]), before);

    // Rows that parse but clash with the store or each other are found in the same way.
    std::fs::write(&csv, "username,aliases\nhal,\nida,gustav\nhal2,hal\n").unwrap();
    let out = env.cmd(&["import", csv.to_str().unwrap()], "");
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("bad.csv:3:") && err.contains("bad.csv:4:") && !err.contains("bad.csv:2:"),
        "{err}"
    );
    assert_eq!(env.ok(&["export"]), before);

    std::fs::write(&csv, b"username,aliases\n\xff\xfe,\n").unwrap();
    assert_eq!(
        env.cmd(&["import", csv.to_str().unwrap()], "")
            .status
            .code(),
        Some(2)
    );
    std::fs::write(&csv, "name,status\nx,active\n").unwrap();
    assert_eq!(
        env.cmd(&["import", csv.to_str().unwrap()], "")
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        env.cmd(&["import", "/nonexistent.csv"], "").status.code(),
        Some(2)
    );
    assert_eq!(env.ok(&["export"]), before);
}

#[test]
fn import_dry_run_then_import_then_export_round_trips() {
    let env = Env::new();
    env.ok(&["user", "add", "gus", "--email", "old@x"]);
    let csv = env.dir.path().join("users.csv");
    std::fs::write(
        &csv,
        "username,aliases,realname,email,status,notes,devices\n\
         gus,,,gus@example.com,,,token:yubi;phone\n\
         hal,hal@corp;h.al,Hal H,,bypass,\"has a, comma\",phone:work\\;home\n",
    )
    .unwrap();
    let before = env.ok(&["export"]);
    let plan = env.ok(&["import", "--dry-run", csv.to_str().unwrap()]);
    assert!(
        plan.contains("would create user hal") && plan.contains("would update user gus (email)"),
        "{plan}"
    );
    assert!(plan.contains("dry run, nothing changed"));
    assert_eq!(env.ok(&["export"]), before);

    let done = env.ok(&["import", csv.to_str().unwrap()]);
    assert!(
        done.contains("1 created, 1 updated, 3 devices added"),
        "{done}"
    );
    let exported = env.ok(&["export"]);
    assert!(
        exported.contains("hal,hal@corp;h.al,Hal H,,bypass,\"has a, comma\",phone:work\\;home"),
        "{exported}"
    );
    // Importing the export changes nothing.
    let again = env.dir.path().join("again.csv");
    std::fs::write(&again, &exported).unwrap();
    let second = env.ok(&["import", again.to_str().unwrap()]);
    assert!(
        second.contains("0 created, 0 updated, 0 devices added, 2 unchanged"),
        "{second}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&env.ok(&["export", "--format", "json"])).unwrap();
    assert_eq!(json[1]["devices"][0]["name"], "work;home");
    assert_eq!(json[1]["status"], "bypass");
}

#[test]
fn trash_restore_lockout_and_audit_filters() {
    let env = Env::new();
    env.enrolled("ivy");
    let code = env.ok(&["code", "generate", "ivy", "--reuse-count", "0"]);
    let code = code.trim();
    env.ok(&["user", "delete", "ivy"]);
    assert_eq!(env.verify("ivy", code).status.code(), Some(1));
    assert!(
        env.ok(&["user", "list"]).lines().count() == 1,
        "trashed users are hidden by default"
    );
    assert!(env.ok(&["user", "list", "--trashed"]).contains("ivy"));
    env.ok(&["user", "restore", "ivy"]);
    assert_eq!(env.verify("ivy", code).status.code(), Some(0));

    for _ in 0..10 {
        env.verify("ivy", "111111111");
    }
    assert_eq!(env.verify("ivy", code).status.code(), Some(1));
    assert!(env.ok(&["user", "list", "--locked"]).contains("ivy"));
    env.ok(&["user", "unlock", "ivy"]);
    assert_eq!(env.verify("ivy", code).status.code(), Some(0));

    env.ok(&["user", "status", "ivy", "bypass"]);
    assert_eq!(
        env.verify("ivy", "").status.code(),
        Some(1),
        "bypass denies unless asked"
    );
    assert_eq!(
        env.cmd(&["verify", "ivy", "--allow-bypass"], "")
            .status
            .code(),
        Some(0)
    );

    let accepts: serde_json::Value = serde_json::from_str(&env.ok(&[
        "audit",
        "--user",
        "ivy",
        "--outcome",
        "accept",
        "--format",
        "json",
    ]))
    .unwrap();
    assert_eq!(accepts.as_array().unwrap().len(), 2);
    assert!(
        accepts
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["actor"] == "cli:tester")
    );
    let csv = env.ok(&["audit", "--action", "user.lockout", "--format", "csv"]);
    assert_eq!(csv.lines().count(), 2, "{csv}");
    assert!(csv.starts_with("id,time,actor,action,"));
    let last = env.ok(&["audit", "--limit", "1", "--since", "1h"]);
    assert_eq!(last.lines().count(), 1);
    assert!(
        env.ok(&["audit", "--until", "2000-01-01T00:00:00Z"])
            .is_empty()
    );
    assert_eq!(
        env.cmd(&["audit", "--since", "yesterday"], "")
            .status
            .code(),
        Some(2)
    );

    env.ok(&["user", "delete", "ivy", "--permanent"]);
    assert_eq!(env.cmd(&["user", "show", "ivy"], "").status.code(), Some(1));
    let purge: serde_json::Value = serde_json::from_str(&env.ok(&["--json", "purge"])).unwrap();
    assert_eq!(purge["purged_users"].as_array().unwrap().len(), 0);
}

#[test]
fn admin_keys_show_their_secret_once_and_store_it_sealed() {
    let env = Env::new();
    let created: serde_json::Value = serde_json::from_str(&env.ok(&[
        "--json",
        "admin-key",
        "create",
        "--name",
        "helpdesk",
        "--role",
        "help_desk",
        "--no-customise-codes",
    ]))
    .unwrap();
    let ikey = created["ikey"].as_str().unwrap().to_owned();
    let skey = created["skey"].as_str().unwrap().to_owned();
    assert!(ikey.starts_with("DI") && ikey.len() == 20, "{ikey}");
    assert_eq!(skey.len(), 40);
    assert_eq!(created["role"], "help_desk");
    assert_eq!(created["may_create_codes"], true);
    assert_eq!(created["may_customise_codes"], false);

    let list = env.ok(&["--json", "admin-key", "list"]);
    assert!(list.contains(&ikey) && !list.contains(&skey), "{list}");
    let text_list = env.ok(&["admin-key", "list"]);
    assert!(text_list.contains("helpdesk") && !text_list.contains(&skey));
    let audit = env.ok(&["--json", "audit"]);
    assert!(audit.contains("admin_key.create") && !audit.contains(&skey));
    assert!(
        !contains(&env.store_bytes(), &skey),
        "the database alone does not reveal the secret"
    );

    let out = env.cmd(
        &[
            "admin-key",
            "create",
            "--name",
            "x",
            "--role",
            "owner",
            "--no-create-codes",
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(2), "limits are for help-desk keys");
    let out = env.cmd(
        &["admin-key", "create", "--name", "x", "--role", "root"],
        "",
    );
    assert_eq!(out.status.code(), Some(2));

    env.ok(&["admin-key", "revoke", "helpdesk"]);
    let list: serde_json::Value =
        serde_json::from_str(&env.ok(&["--json", "admin-key", "list"])).unwrap();
    assert!(list[0]["revoked_at"].is_i64());
    let out = env.cmd(&["admin-key", "revoke", &ikey], "");
    assert_eq!(out.status.code(), Some(1), "already revoked: not found");
}
