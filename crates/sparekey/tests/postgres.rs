//! The PostgreSQL backend's connection behaviour against a real server (a throwaway
//! cluster from `scripts/pg-test-cluster`): TLS modes, the password file, bounded lock
//! waits, and hosts migrating one store at once. The rules themselves run on PostgreSQL in
//! the unit suite (`store/tests.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../../tests/support/pg_cluster.rs"]
mod pg_cluster;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use pg_cluster::PgCluster;
use sparekey::store::{Backend, CodeRequest, PostgresBackend};
use sparekey::{Config, Context, DeviceKind, DigestKey, NewUser, Store};

/// A config for a database of the shared cluster; `query` goes into the URL.
fn config(dir: &Path, db: &str, query: &str, extra: &str) -> Config {
    let cluster = PgCluster::shared();
    let key = dir.join("sparekey.key");
    if !key.exists() {
        DigestKey::from_bytes([3; 32]).write_new(&key).unwrap();
    }
    let text = format!(
        "[store]\n{}key_file = \"sparekey.key\"\n{extra}",
        cluster.store_lines(db, query)
    );
    Config::parse(&text, &dir.join("sparekey.toml")).unwrap()
}

fn new_store(query: &str) -> (tempfile::TempDir, Config) {
    let dir = tempfile::tempdir().unwrap();
    let db = PgCluster::shared().create_db();
    let c = config(dir.path(), &db, query, "");
    (dir, c)
}

#[test]
fn tls_modes_check_what_they_say() {
    let cluster = PgCluster::shared();
    let (dir, plain) = new_store("");
    drop(PostgresBackend::create(plain.postgres.as_ref().unwrap(), &plain.store).unwrap());
    let db = plain
        .postgres
        .as_ref()
        .unwrap()
        .url
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    let root = cluster.root_cert().display().to_string();
    let open = |query: &str| {
        let c = config(dir.path(), &db, query, "");
        Store::open(&c).map(|_| ())
    };
    open("sslmode=disable").unwrap();
    open("sslmode=require").unwrap();
    open(&format!("sslmode=verify-ca&sslrootcert={root}")).unwrap();
    open(&format!("sslmode=verify-full&sslrootcert={root}")).unwrap();
    // The server's certificate is not signed by any root this system trusts.
    let e = open("sslmode=verify-full").unwrap_err().to_string();
    assert!(e.contains("certificate"), "{e}");
    let e = open("sslmode=verify-ca").unwrap_err().to_string();
    assert!(e.contains("certificate"), "{e}");
    // A certificate that is not the server's own root is no root for it.
    let wrong = dir.path().join("wrong.pem");
    std::fs::copy(cluster.dir.join("server.crt"), &wrong).unwrap();
    let e = open(&format!(
        "sslmode=verify-full&sslrootcert={}",
        wrong.display()
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("certificate"), "{e}");
}

#[test]
fn the_password_file_must_be_private_and_right() {
    let (dir, c) = new_store("");
    let mine = dir.path().join("pw");
    std::fs::copy(PgCluster::shared().password_file(), &mine).unwrap();
    let with = |file: &Path| {
        let mut c = c.clone();
        c.postgres.as_mut().unwrap().password_file = Some(file.to_owned());
        PostgresBackend::open_or_create(c.postgres.as_ref().unwrap(), &c.store).map(|_| ())
    };
    std::fs::set_permissions(&mine, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = with(&mine).unwrap_err().to_string();
    assert!(e.contains("password file") && e.contains("0644"), "{e}");
    std::fs::set_permissions(&mine, std::fs::Permissions::from_mode(0o600)).unwrap();
    with(&mine).unwrap();
    std::fs::write(&mine, "not-the-password\n").unwrap();
    let e = with(&mine).unwrap_err().to_string();
    assert!(e.contains("password"), "{e}");
}

#[test]
fn a_locked_user_makes_verification_fail_within_busy_timeout_not_hang() {
    let dir = tempfile::tempdir().unwrap();
    let db = PgCluster::shared().create_db();
    let c = config(dir.path(), &db, "", "busy_timeout_ms = 300\n");
    let ctx = Context::new("test");
    let mut store = Store::create_or_open_for_test(&c);
    store
        .add_user(
            NewUser {
                username: "lee".into(),
                ..NewUser::default()
            },
            &ctx,
        )
        .unwrap();
    store
        .add_device("lee", DeviceKind::Phone, None, &ctx)
        .unwrap();
    let code = store
        .generate_codes("lee", CodeRequest::default(), &ctx)
        .unwrap()
        .codes[0]
        .code
        .expose()
        .to_owned();
    let id = store.find_user("lee").unwrap().id;

    // Another host holds lee's row (a transaction that reads the user locks it).
    let mut other = PostgresBackend::open(c.postgres.as_ref().unwrap(), &c.store).unwrap();
    let mut tx = other.begin().unwrap();
    assert!(tx.user(&id).unwrap().is_some());
    let t = Instant::now();
    let e = store.verify("lee", &code, &ctx).unwrap_err().to_string();
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(e.contains("timeout"), "{e}");
    drop(tx);
    // Nothing was taken by the attempt that gave up; once the lock is gone it works.
    assert!(store.verify("lee", &code, &ctx).unwrap().accepted());
}

#[test]
fn hosts_opening_a_new_store_at_once_migrate_it_once() {
    let (_dir, c) = new_store("");
    let threads: Vec<_> = (0..6)
        .map(|_| {
            let c = c.clone();
            std::thread::spawn(move || {
                PostgresBackend::open_or_create(c.postgres.as_ref().unwrap(), &c.store).map(|_| ())
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap().unwrap();
    }
    let mut s = Store::open(&c).unwrap();
    assert!(s.list_users(&Default::default()).unwrap().is_empty());
}

/// `Store::create` makes a new key file; these tests share one key, so they make the
/// tables with the backend and open the store as any host would.
trait CreateForTest {
    fn create_or_open_for_test(c: &Config) -> Store;
}

impl CreateForTest for Store {
    fn create_or_open_for_test(c: &Config) -> Store {
        drop(PostgresBackend::create(c.postgres.as_ref().unwrap(), &c.store).unwrap());
        Store::open(c).unwrap()
    }
}
