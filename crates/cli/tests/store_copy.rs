//! `sparekey store copy` and `store create` end to end: a SQLite store copied to
//! PostgreSQL (a throwaway cluster from `scripts/pg-test-cluster`) and back to a new SQLite
//! file comes back the same, codes still work with their remaining uses, and a non-empty
//! target or a different key is refused.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../../tests/support/pg_cluster.rs"]
mod pg_cluster;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use pg_cluster::PgCluster;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn sparekey(config: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sparekey"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("USER", "tester")
        .env_remove("SUDO_USER")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    child.wait_with_output().unwrap()
}

fn ok(config: &Path, args: &[&str]) -> String {
    let out = sparekey(config, args, "");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{args:?}: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn json(config: &Path, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    serde_json::from_str(&ok(config, &a)).unwrap()
}

/// A config for a store in `dir` whose key file is a copy of `key`.
fn config(dir: &Path, store_lines: &str, key: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let k = dir.join("sparekey.key");
    std::fs::copy(key, &k).unwrap();
    std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).unwrap();
    let c = dir.join("sparekey.toml");
    std::fs::write(
        &c,
        format!("[store]\n{store_lines}key_file = \"sparekey.key\"\n"),
    )
    .unwrap();
    c
}

/// Everything a store holds, as the CLI shows it, in a stable order.
fn contents(config: &Path) -> (serde_json::Value, serde_json::Value, serde_json::Value) {
    let users = json(config, &["user", "list", "--all"]);
    let shown: Vec<serde_json::Value> = users
        .as_array()
        .unwrap()
        .iter()
        .map(|u| json(config, &["user", "show", u["id"].as_str().unwrap()]))
        .collect();
    let audit = json(config, &["audit"]);
    (users, serde_json::Value::Array(shown), audit)
}

#[test]
fn a_store_copied_to_postgresql_and_back_is_the_same_and_targets_must_be_new() {
    let cluster = PgCluster::shared();
    let tmp = tempfile::tempdir().unwrap();
    let a_dir = tmp.path().join("a");
    let out = Command::new(env!("CARGO_BIN_EXE_sparekey"))
        .args(["init", "--dir", a_dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let a = a_dir.join("sparekey.toml");
    let key = a_dir.join("sparekey.key");

    // Users in every state: aliases and details, a lockout, the trash; codes with uses
    // taken and uses left, and an audit log of all of it.
    ok(
        &a,
        &[
            "user",
            "add",
            "alice",
            "--alias",
            "alice@example.com",
            "--realname",
            "Alice L",
        ],
    );
    ok(
        &a,
        &[
            "device", "add", "alice", "--kind", "phone", "--name", "work",
        ],
    );
    let codes = ok(
        &a,
        &[
            "code",
            "generate",
            "alice",
            "--count",
            "3",
            "--reuse-count",
            "2",
            "--valid-secs",
            "0",
        ],
    );
    let codes: Vec<&str> = codes.lines().collect();
    assert_eq!(
        sparekey(&a, &["verify", "alice"], codes[0]).status.code(),
        Some(0)
    );
    ok(&a, &["user", "add", "carol"]);
    ok(&a, &["device", "add", "carol", "--kind", "token"]);
    for _ in 0..10 {
        sparekey(&a, &["verify", "carol"], "000000000");
    }
    ok(&a, &["user", "add", "bob", "--status", "bypass"]);
    ok(&a, &["user", "delete", "bob"]);
    let before = contents(&a);
    assert!(
        before.1.to_string().contains("failed_attempts"),
        "carol is locked out"
    );

    // SQLite -> PostgreSQL.
    let db = cluster.create_db();
    let b = config(&tmp.path().join("b"), &cluster.store_lines(&db, ""), &key);
    let report = json(&a, &["store", "copy", "--to", b.to_str().unwrap()]);
    assert_eq!(
        (&report["users"], &report["devices"], &report["codes"]),
        (&3.into(), &2.into(), &3.into()),
        "{report}"
    );
    let on_pg = contents(&b);
    assert_eq!(on_pg.0, before.0, "users");
    assert_eq!(on_pg.1, before.1, "users with devices and codes");
    let events = before.2.as_array().unwrap().len();
    assert_eq!(
        on_pg.2.as_array().unwrap()[..events],
        before.2.as_array().unwrap()[..]
    );
    assert_eq!(on_pg.2[events]["action"], "store.copy");

    // PostgreSQL -> a new SQLite file.
    let c = config(&tmp.path().join("c"), "path = \"sparekey.db\"\n", &key);
    ok(&b, &["store", "copy", "--to", c.to_str().unwrap()]);
    let back = contents(&c);
    assert_eq!((&back.0, &back.1), (&before.0, &before.1));
    assert_eq!(
        back.2.as_array().unwrap()[..=events],
        on_pg.2.as_array().unwrap()[..]
    );
    assert_eq!(
        std::fs::metadata(c.parent().unwrap().join("sparekey.db"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );

    // The digests came along: the code used once has one use left, the others two.
    let verify = |cfg: &Path, code: &str| sparekey(cfg, &["verify", "alice"], code).status.code();
    assert_eq!(verify(&c, codes[0]), Some(0));
    assert_eq!(verify(&c, codes[0]), Some(1), "used up");
    assert_eq!(
        verify(&b, codes[1]),
        Some(0),
        "the PostgreSQL copy works too"
    );
    assert_eq!(verify(&c, "000000000"), Some(1));
    let carol = sparekey(&c, &["--json", "verify", "carol"], "123456789");
    let carol: serde_json::Value = serde_json::from_slice(&carol.stdout).unwrap();
    assert_eq!(carol["reason"], "locked_out", "the lockout came along");

    // A target that holds anything is refused, and so is one with another key.
    for target in [&b, &c] {
        let out = sparekey(&a, &["store", "copy", "--to", target.to_str().unwrap()], "");
        assert_eq!(out.status.code(), Some(2));
        assert!(
            text(&out.stderr).contains("not empty"),
            "{}",
            text(&out.stderr)
        );
    }
    let other = tempfile::tempdir().unwrap();
    let other_key = other.path().join("k");
    std::fs::write(&other_key, [9u8; 32]).unwrap();
    let d = config(
        &tmp.path().join("d"),
        &cluster.store_lines(&cluster.create_db(), ""),
        &other_key,
    );
    let out = sparekey(&a, &["store", "copy", "--to", d.to_str().unwrap()], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("key files differ"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        json(&d, &["user", "list", "--all"])
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn store_create_makes_a_postgresql_store_once_and_open_refuses_a_database_without_one() {
    let cluster = PgCluster::shared();
    let tmp = tempfile::tempdir().unwrap();
    let db = cluster.create_db();
    let cfg = tmp.path().join("sparekey.toml");
    std::fs::write(
        &cfg,
        format!(
            "[store]\n{}key_file = \"sparekey.key\"\n",
            cluster
                .store_lines(&db, "sslmode=verify-full&sslrootcert=")
                .replace(
                    "sslrootcert=",
                    &format!("sslrootcert={}", cluster.root_cert().display())
                )
        ),
    )
    .unwrap();
    ok(&cfg, &["store", "create"]);
    assert_eq!(
        std::fs::metadata(tmp.path().join("sparekey.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let out = sparekey(&cfg, &["store", "create"], "");
    assert_eq!(out.status.code(), Some(2), "a second create is refused");
    let empty = config(
        &tmp.path().join("empty"),
        &cluster.store_lines(&cluster.create_db(), ""),
        &tmp.path().join("sparekey.key"),
    );
    let out = sparekey(&empty, &["user", "list"], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("holds no sparekey store"),
        "{}",
        text(&out.stderr)
    );
    ok(&cfg, &["user", "add", "dave"]);
    let check = json(&cfg, &["check-config"]);
    assert!(
        check["store"]
            .as_str()
            .unwrap()
            .starts_with("postgres://postgres@127.0.0.1")
    );
    assert!(ok(&cfg, &["user", "list"]).contains("dave"));
}
