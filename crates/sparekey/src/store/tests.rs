//! The rules of the model, each against an in-memory store with a hand-moved clock.

use super::*;
use crate::audit::{AuditEvent, AuditFilter};
use crate::clock::ManualClock;
use crate::verify::{Decision, Reason};

#[path = "../../../../tests/support/pg_cluster.rs"]
mod pg_cluster;

const T0: i64 = 1_800_000_000;

struct Fixture {
    store: Store,
    clock: ManualClock,
    ctx: Context,
}

/// Which backend a test runs on: every rule is checked on both.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// An in-memory SQLite database.
    Sqlite,
    /// A new database on the shared throwaway PostgreSQL cluster.
    Postgres,
}

/// A new, empty PostgreSQL database on the test binary's cluster, and its config.
fn new_postgres_db() -> (crate::config::PostgresConfig, crate::config::StoreConfig) {
    let cluster = pg_cluster::PgCluster::shared();
    let db = cluster.create_db();
    let pg = crate::config::PostgresConfig {
        url: cluster.url(&db, ""),
        password_file: Some(cluster.password_file()),
    };
    let store = crate::config::StoreConfig {
        path: std::path::PathBuf::new(),
        key_file: std::path::PathBuf::new(),
        busy_timeout_ms: 5000,
        synchronous: crate::config::Synchronous::Full,
    };
    (pg, store)
}

fn backend(kind: Kind) -> Box<dyn Backend> {
    match kind {
        Kind::Sqlite => Box::new(SqliteBackend::in_memory().unwrap()),
        Kind::Postgres => {
            let (pg, store) = new_postgres_db();
            Box::new(PostgresBackend::create(&pg, &store).unwrap())
        }
    }
}

fn fixture_with(kind: Kind, policy: Policy) -> Fixture {
    let clock = ManualClock::at(T0);
    let store = Store::with_backend(
        backend(kind),
        DigestKey::from_bytes([7; 32]),
        policy,
        Arc::new(clock.clone()),
    )
    .unwrap();
    Fixture {
        store,
        clock,
        ctx: Context::new("test"),
    }
}

fn fixture(b: Kind) -> Fixture {
    fixture_with(b, Policy::default())
}

impl Fixture {
    /// An active user with one device.
    fn enrolled(&mut self, name: &str) -> User {
        let u = self
            .store
            .add_user(
                NewUser {
                    username: name.into(),
                    ..NewUser::default()
                },
                &self.ctx,
            )
            .unwrap();
        self.store
            .add_device(name, DeviceKind::Phone, None, &self.ctx)
            .unwrap();
        u
    }

    fn issue(&mut self, name: &str, req: CodeRequest) -> Vec<String> {
        let issued = self.store.generate_codes(name, req, &self.ctx).unwrap();
        issued
            .codes
            .iter()
            .map(|c| c.code.expose().to_owned())
            .collect()
    }

    fn one(&mut self, name: &str, reuse_count: u32, valid_secs: u64) -> String {
        self.issue(
            name,
            CodeRequest {
                reuse_count,
                valid_secs,
                ..CodeRequest::default()
            },
        )
        .remove(0)
    }

    fn verify(&mut self, login: &str, code: &str) -> Decision {
        self.store.verify(login, code, &self.ctx).unwrap().decision
    }
}

/// The config `sparekey init` writes for a store in `dir`.
fn init_config(dir: &std::path::Path) -> Config {
    let text = Config::init_text(dir);
    Config::parse(&text, &dir.join("sparekey.toml")).unwrap()
}

fn custom(codes: &[&str]) -> Vec<Passcode> {
    codes.iter().map(|c| Passcode::parse(c).unwrap()).collect()
}

const WRONG: Decision = Decision::Reject(Reason::WrongCode);

fn a_code_works_exactly_as_many_times_as_issued(b: Kind) {
    let mut f = fixture(b);
    f.enrolled("alice");
    let once = f.one("alice", 1, 0);
    assert_eq!(f.verify("alice", &once), Decision::Accept);
    assert_eq!(f.verify("alice", &once), WRONG);

    let thrice = f.one("alice", 3, 0);
    for left in [2, 1, 0] {
        let v = f.store.verify("alice", &thrice, &f.ctx).unwrap();
        assert!(v.accepted());
        assert_eq!(v.uses_remaining, Some(left));
    }
    assert_eq!(f.verify("alice", &thrice), WRONG);
}

fn reuse_count_zero_is_unlimited(b: Kind) {
    let mut f = fixture(b);
    f.enrolled("alice");
    let code = f.one("alice", 0, 0);
    for _ in 0..50 {
        assert_eq!(f.verify("alice", &code), Decision::Accept);
    }
    assert_eq!(
        f.store.list_codes(Some("alice")).unwrap()[0].uses_remaining,
        None
    );
}

fn expiry_is_exact_to_the_second(b: Kind) {
    let mut f = fixture(b);
    f.enrolled("alice");
    let code = f.one("alice", 0, 60);
    f.clock.set(T0 + 59);
    assert_eq!(f.verify("alice", &code), Decision::Accept);
    f.clock.set(T0 + 60);
    assert_eq!(f.verify("alice", &code), Decision::Reject(Reason::Expired));
    // The expired code is dropped, so from now on it is simply wrong.
    assert_eq!(f.verify("alice", &code), WRONG);
    assert!(f.store.list_codes(Some("alice")).unwrap().is_empty());
}

fn valid_secs_zero_never_expires(b: Kind) {
    let mut f = fixture(b);
    f.enrolled("alice");
    let code = f.one("alice", 1, 0);
    f.clock.advance(20 * 365 * 86_400);
    assert_eq!(f.verify("alice", &code), Decision::Accept);
}

fn cli_defaults_follow_the_duo_admin_panel(b: Kind) {
    let mut f = fixture(b);
    f.enrolled("alice");
    let issued = f
        .store
        .generate_codes("alice", CodeRequest::default(), &f.ctx)
        .unwrap();
    assert_eq!(issued.codes.len(), 1);
    let c = &issued.codes[0];
    assert_eq!(c.code.expose().len(), 9);
    assert_eq!(c.info.expires_at, Some(T0 + 3600));
    assert_eq!(c.info.uses_remaining, Some(1));
}

fn generating_replaces_unless_preserving(b: Kind) {
    let mut f = fixture(b);
    f.enrolled("alice");
    let old = f.issue(
        "alice",
        CodeRequest {
            count: 3,
            ..CodeRequest::default()
        },
    );
    let new = f.issue(
        "alice",
        CodeRequest {
            count: 2,
            ..CodeRequest::default()
        },
    );
    assert_eq!(f.store.list_codes(Some("alice")).unwrap().len(), 2);
    assert_eq!(f.verify("alice", &old[0]), WRONG);
    let kept = f.issue(
        "alice",
        CodeRequest {
            count: 1,
            preserve_existing: true,
            ..CodeRequest::default()
        },
    );
    assert_eq!(f.store.list_codes(Some("alice")).unwrap().len(), 3);
    assert_eq!(f.verify("alice", &new[0]), Decision::Accept);
    assert_eq!(f.verify("alice", &kept[0]), Decision::Accept);
}

fn the_hundred_cap_is_all_or_nothing(b: Kind) {
    let mut f = fixture(b);
    f.enrolled("alice");
    let p = |count| CodeRequest {
        count,
        preserve_existing: true,
        valid_secs: 0,
        ..CodeRequest::default()
    };
    for _ in 0..9 {
        f.issue("alice", p(10));
    }
    f.issue("alice", p(5));
    assert_eq!(f.store.list_codes(Some("alice")).unwrap().len(), 95);
    let e = f.store.generate_codes("alice", p(6), &f.ctx).unwrap_err();
    assert!(matches!(e, Error::Limit(_)), "{e}");
    assert_eq!(
        f.store.list_codes(Some("alice")).unwrap().len(),
        95,
        "nothing was added"
    );
    f.issue("alice", p(5));
    assert_eq!(f.store.list_codes(Some("alice")).unwrap().len(), 100);
    assert!(f.store.generate_codes("alice", p(1), &f.ctx).is_err());
    // Replacing is always possible.
    f.issue(
        "alice",
        CodeRequest {
            count: 10,
            ..CodeRequest::default()
        },
    );
    assert_eq!(f.store.list_codes(Some("alice")).unwrap().len(), 10);
}

fn expired_codes_do_not_count_against_the_cap(b: Kind) {
    let mut f = fixture(b);
    f.enrolled("alice");
    for _ in 0..10 {
        f.issue(
            "alice",
            CodeRequest {
                count: 10,
                preserve_existing: true,
                valid_secs: 10,
                ..CodeRequest::default()
            },
        );
    }
    f.clock.advance(10);
    f.issue(
        "alice",
        CodeRequest {
            count: 10,
            preserve_existing: true,
            ..CodeRequest::default()
        },
    );
    assert_eq!(f.store.list_codes(Some("alice")).unwrap().len(), 10);
}

fn per_call_limits(b: Kind) {
    let mut f = fixture(b);
    f.enrolled("alice");
    for count in [0, 11] {
        assert!(
            f.store
                .generate_codes(
                    "alice",
                    CodeRequest {
                        count,
                        ..CodeRequest::default()
                    },
                    &f.ctx
                )
                .is_err()
        );
    }
    let eleven: Vec<String> = (0..11).map(|i| format!("{:09}", 100_000_000 + i)).collect();
    let codes = eleven.iter().map(|c| Passcode::parse(c).unwrap()).collect();
    assert!(
        f.store
            .generate_codes(
                "alice",
                CodeRequest {
                    codes,
                    ..CodeRequest::default()
                },
                &f.ctx
            )
            .is_err()
    );
    assert!(f.store.list_codes(Some("alice")).unwrap().is_empty());
}

fn custom_codes_and_duplicates(b: Kind) {
    let mut f = fixture(b);
    f.enrolled("alice");
    f.enrolled("bob");
    let req = |codes: &[&str], preserve| CodeRequest {
        codes: custom(codes),
        preserve_existing: preserve,
        ..CodeRequest::default()
    };
    f.issue("alice", req(&["123456", "12345678901234567890"], false));
    // The same code for another user is fine: digests are per user.
    f.issue("bob", req(&["123456"], false));
    // Twice in one request: refused.
    let e = f
        .store
        .generate_codes("alice", req(&["555555", "555555"], true), &f.ctx)
        .unwrap_err();
    assert!(matches!(e, Error::Conflict(_)), "{e}");
    // Against an existing code with --preserve-existing: refused, and nothing added.
    let e = f
        .store
        .generate_codes("alice", req(&["777777", "123456"], true), &f.ctx)
        .unwrap_err();
    assert!(
        !e.to_string().contains("123456"),
        "the error must not repeat the code: {e}"
    );
    assert_eq!(f.store.list_codes(Some("alice")).unwrap().len(), 2);
    assert_eq!(f.verify("alice", "777777"), WRONG);
    // Replacing, the old code may be issued again.
    f.issue("alice", req(&["123456"], false));
    assert_eq!(f.verify("alice", "123456"), Decision::Accept);
    assert_eq!(f.verify("bob", "123456"), Decision::Accept);
    assert_eq!(f.verify("alice", "12345678901234567890"), WRONG);
}

fn temporary_otps_follow_onelogin(b: Kind) {
    let mut f = fixture(b);
    f.enrolled("alice");
    let kept = f.one("alice", 1, 0);
    let t = f
        .store
        .temp_code("alice", MAX_TEMP_VALID_SECS, false, &f.ctx)
        .unwrap();
    assert_eq!(t.code.expose().len(), 8);
    assert_eq!(t.info.expires_at, Some(T0 + 72 * 3600));
    let code = t.code.expose().to_owned();
    assert_eq!(f.verify("alice", &code), Decision::Accept);
    assert_eq!(f.verify("alice", &code), WRONG);
    assert_eq!(
        f.verify("alice", &kept),
        Decision::Accept,
        "a temporary OTP keeps existing codes"
    );

    let r = f
        .store
        .temp_code("alice", 600, true, &f.ctx)
        .unwrap()
        .code
        .expose()
        .to_owned();
    for _ in 0..5 {
        assert_eq!(f.verify("alice", &r), Decision::Accept);
    }
    f.clock.advance(600);
    assert_eq!(f.verify("alice", &r), Decision::Reject(Reason::Expired));
    assert!(
        f.store
            .temp_code("alice", MAX_TEMP_VALID_SECS + 1, false, &f.ctx)
            .is_err()
    );
    assert!(f.store.temp_code("alice", 0, false, &f.ctx).is_err());
}

fn nothing_can_extend_a_code(b: Kind) {
    let mut f = fixture(b);
    f.enrolled("alice");
    f.one("alice", 2, 60);
    let user = f.store.find_user("alice").unwrap().id;
    let mut tx = f.store.backend.begin().unwrap();
    let id = tx.codes(&user).unwrap()[0].id.clone();
    assert!(
        tx.set_code_uses(&id, 5).is_err(),
        "raising uses must be refused by the store"
    );
    // PostgreSQL aborts a transaction at its first error: lower them in a new one.
    drop(tx);
    let mut tx = f.store.backend.begin().unwrap();
    assert!(tx.set_code_uses(&id, 1).is_ok());
}

fn lockout_after_threshold_and_unlock(b: Kind) {
    let mut f = fixture_with(
        b,
        Policy {
            lockout_threshold: 3,
            ..Policy::default()
        },
    );
    f.enrolled("alice");
    let code = f.one("alice", 0, 0);
    assert_eq!(f.verify("alice", "000000"), WRONG);
    assert_eq!(
        f.verify("alice", &code),
        Decision::Accept,
        "a success clears the counter"
    );
    assert_eq!(f.verify("alice", "000000"), WRONG);
    assert_eq!(f.verify("alice", "000000"), WRONG);
    let v = f.store.verify("alice", "000000", &f.ctx).unwrap();
    assert_eq!(v.decision, WRONG);
    assert!(v.locked_now);
    assert_eq!(
        f.verify("alice", &code),
        Decision::Reject(Reason::LockedOut),
        "even the right code"
    );
    f.clock.advance(365 * 86_400);
    assert_eq!(
        f.verify("alice", &code),
        Decision::Reject(Reason::LockedOut),
        "no auto-unlock by default"
    );
    let lockouts = f
        .store
        .audit(&AuditFilter {
            action: Some("user.lockout".into()),
            ..AuditFilter::default()
        })
        .unwrap();
    assert_eq!(lockouts.len(), 1);
    f.store.unlock_user("alice", &f.ctx).unwrap();
    assert_eq!(f.verify("alice", &code), Decision::Accept);
    assert_eq!(f.store.find_user("alice").unwrap().failed_attempts, 0);
}

fn automatic_unlock_when_configured(b: Kind) {
    let mut f = fixture_with(
        b,
        Policy {
            lockout_threshold: 2,
            lockout_auto_unlock_secs: 300,
            ..Policy::default()
        },
    );
    f.enrolled("alice");
    let code = f.one("alice", 0, 0);
    f.verify("alice", "000000");
    f.verify("alice", "000000");
    f.clock.advance(299);
    assert_eq!(
        f.verify("alice", &code),
        Decision::Reject(Reason::LockedOut)
    );
    f.clock.advance(1);
    assert_eq!(f.verify("alice", &code), Decision::Accept);
}

fn threshold_zero_never_locks(b: Kind) {
    let mut f = fixture_with(
        b,
        Policy {
            lockout_threshold: 0,
            ..Policy::default()
        },
    );
    f.enrolled("alice");
    let code = f.one("alice", 1, 0);
    for _ in 0..100 {
        f.verify("alice", "000000");
    }
    assert_eq!(f.verify("alice", &code), Decision::Accept);
}

fn statuses(b: Kind) {
    let mut f = fixture(b);
    f.enrolled("alice");
    let code = f.one("alice", 0, 0);
    let set = |f: &mut Fixture, s| {
        f.store
            .update_user(
                "alice",
                UserUpdate {
                    status: Some(s),
                    ..UserUpdate::default()
                },
                &f.ctx,
            )
            .unwrap();
    };
    set(&mut f, Status::Disabled);
    assert_eq!(f.verify("alice", &code), Decision::Reject(Reason::Disabled));
    set(&mut f, Status::Bypass);
    assert_eq!(
        f.verify("alice", &code),
        Decision::Reject(Reason::BypassDenied),
        "a front end that does not allow bypass denies, code or not"
    );
    let allowing = Context::new("pam:sshd").with_bypass(true);
    let v = f.store.verify("alice", "not a code", &allowing).unwrap();
    assert_eq!(v.decision, Decision::Bypass);
    assert_eq!(v.code_id, None);
    let outcomes: Vec<String> = f
        .store
        .audit(&AuditFilter::default())
        .unwrap()
        .iter()
        .rev()
        .take(2)
        .map(|e| e.outcome.clone())
        .collect();
    assert_eq!(outcomes, ["bypass", "reject"]);
    set(&mut f, Status::Active);
    assert_eq!(f.verify("alice", &code), Decision::Accept);
    assert_eq!(
        f.store.list_codes(Some("alice")).unwrap().len(),
        1,
        "bypass consumed nothing"
    );
}

fn not_enrolled_users_cannot_use_codes(b: Kind) {
    let mut f = fixture(b);
    f.store
        .add_user(
            NewUser {
                username: "carol".into(),
                ..NewUser::default()
            },
            &f.ctx,
        )
        .unwrap();
    let issued = f
        .store
        .generate_codes("carol", CodeRequest::default(), &f.ctx)
        .unwrap();
    assert!(!issued.enrolled);
    let code = issued.codes[0].code.expose().to_owned();
    assert_eq!(
        f.verify("carol", &code),
        Decision::Reject(Reason::NotEnrolled)
    );
    let d = f
        .store
        .add_device("carol", DeviceKind::Token, Some("yubikey".into()), &f.ctx)
        .unwrap();
    assert_eq!(f.verify("carol", &code), Decision::Accept);
    let code = f.one("carol", 1, 0);
    f.store
        .remove_device("carol", d.id.as_str(), &f.ctx)
        .unwrap();
    assert_eq!(
        f.verify("carol", &code),
        Decision::Reject(Reason::NotEnrolled)
    );
}

fn unknown_users_and_malformed_input_are_rejected(b: Kind) {
    let mut f = fixture(b);
    f.enrolled("alice");
    let code = f.one("alice", 1, 0);
    assert_eq!(
        f.verify("mallory", &code),
        Decision::Reject(Reason::UnknownUser)
    );
    for login in ["", "a\0b", &"x".repeat(10_000)] {
        assert_eq!(
            f.verify(login, &code),
            Decision::Reject(Reason::UnknownUser)
        );
    }
    for bad in [
        "",
        "12345",
        "abcdefgh",
        &"1".repeat(10_000),
        "123\u{0}456789",
    ] {
        assert_eq!(f.verify("alice", bad), WRONG);
    }
    // A login that looks like a code is not recorded.
    f.verify("987654321", "123456");
    let events = f.store.audit(&AuditFilter::default()).unwrap();
    assert!(
        events
            .iter()
            .all(|e| e.username.as_deref() != Some("987654321"))
    );
    // Malformed codes counted as failures (five), but not enough to lock alice out.
    assert_eq!(f.store.find_user("alice").unwrap().failed_attempts, 5);
    assert_eq!(f.verify("alice", &code), Decision::Accept);
}

/// A login that names no one reads the rows of the user whose name comes next (where the
/// backend does that, for timing): their codes must never let it in, and nothing of
/// theirs may change.
fn a_login_beside_a_user_is_never_that_user(b: Kind) {
    let mut f = fixture(b);
    f.enrolled("bob");
    let code = f.one("bob", 1, 0);
    // Before the only key, after it (wrapping round to it), and a prefix of it.
    for login in ["alice", "carol", "bo", "bobb"] {
        let v = f.store.verify(login, &code, &f.ctx).unwrap();
        assert_eq!(v.decision, Decision::Reject(Reason::UnknownUser), "{login}");
        assert_eq!((v.user_id, v.username), (None, None), "{login}");
    }
    let bob = f.store.find_user("bob").unwrap();
    assert_eq!(bob.failed_attempts, 0);
    assert_eq!(f.store.list_codes(Some("bob")).unwrap().len(), 1);
    let refusals = f.store.audit(&AuditFilter::default()).unwrap();
    assert!(
        refusals
            .iter()
            .filter(|e| e.action == "auth")
            .all(|e| e.user_id.is_none() && e.code_id.is_none())
    );
    assert_eq!(f.verify("bob", &code), Decision::Accept);
}

fn aliases_and_normalisation(b: Kind) {
    let mut f = fixture(b);
    let new = NewUser {
        username: "Narroway".into(),
        aliases: vec!["n.arroway@example.com".into(), "ellie".into()],
        ..NewUser::default()
    };
    f.store.add_user(new, &f.ctx).unwrap();
    f.store
        .add_device("narroway", DeviceKind::Phone, None, &f.ctx)
        .unwrap();
    let codes = f.issue(
        "narroway",
        CodeRequest {
            count: 4,
            ..CodeRequest::default()
        },
    );
    assert_eq!(f.verify("EXAMPLE\\narroway", &codes[0]), Decision::Accept);
    assert_eq!(
        f.verify("narroway@example.com", &codes[1]),
        Decision::Accept
    );
    assert_eq!(f.verify("N.Arroway", &codes[2]), Decision::Accept);
    assert_eq!(f.verify("ellie@corp", &codes[3]), Decision::Accept);

    // Names are unique across usernames and aliases, after normalisation.
    let e = f
        .store
        .add_user(
            NewUser {
                username: "ELLIE".into(),
                ..NewUser::default()
            },
            &f.ctx,
        )
        .unwrap_err();
    assert!(matches!(e, Error::Conflict(_)), "{e}");
    let e = f.store.add_user(
        NewUser {
            username: "x".into(),
            aliases: vec!["narroway".into()],
            ..NewUser::default()
        },
        &f.ctx,
    );
    assert!(e.is_err());
    let e = f.store.add_user(
        NewUser {
            username: "y".into(),
            aliases: vec!["z".into(), "z".into()],
            ..NewUser::default()
        },
        &f.ctx,
    );
    assert!(e.is_err(), "the same alias twice");
    // Names that normalise alike are one login: allowed, and both work.
    let new = NewUser {
        username: "yves".into(),
        aliases: vec!["Yves@example.com".into(), "CORP\\yves".into()],
        ..NewUser::default()
    };
    f.store.add_user(new, &f.ctx).unwrap();
    assert_eq!(f.store.find_user("yves@corp").unwrap().aliases.len(), 2);
    let nine: Vec<String> = (0..9).map(|i| format!("a{i}")).collect();
    let e = f
        .store
        .add_user(
            NewUser {
                username: "w".into(),
                aliases: nine,
                ..NewUser::default()
            },
            &f.ctx,
        )
        .unwrap_err();
    assert!(matches!(e, Error::Limit(_)), "{e}");

    // Renaming frees the old names.
    let up = UserUpdate {
        remove_aliases: vec!["ELLIE".into()],
        add_aliases: vec!["arroway".into()],
        ..UserUpdate::default()
    };
    f.store.update_user("narroway", up, &f.ctx).unwrap();
    f.store
        .add_user(
            NewUser {
                username: "ellie".into(),
                ..NewUser::default()
            },
            &f.ctx,
        )
        .unwrap();
    assert_eq!(
        f.store.find_user("arroway").unwrap().username.as_str(),
        "Narroway"
    );
}

fn exact_matching_without_normalisation(b: Kind) {
    let mut f = fixture_with(
        b,
        Policy {
            username_normalization: Normalization::None,
            ..Policy::default()
        },
    );
    f.enrolled("Alice");
    let code = f.one("Alice", 0, 0);
    assert_eq!(
        f.verify("alice", &code),
        Decision::Reject(Reason::UnknownUser)
    );
    assert_eq!(f.verify("Alice", &code), Decision::Accept);
}

fn trash_restore_and_purge(b: Kind) {
    let mut f = fixture(b);
    f.enrolled("alice");
    let code = f.one("alice", 0, 0);
    f.store.trash_user("alice", &f.ctx).unwrap();
    assert_eq!(
        f.verify("alice", &code),
        Decision::Reject(Reason::UnknownUser)
    );
    assert!(
        f.store
            .generate_codes("alice", CodeRequest::default(), &f.ctx)
            .is_err()
    );
    // The name stays taken while the user is in the trash.
    assert!(
        f.store
            .add_user(
                NewUser {
                    username: "alice".into(),
                    ..NewUser::default()
                },
                &f.ctx
            )
            .is_err()
    );
    f.store.restore_user("alice", &f.ctx).unwrap();
    assert_eq!(
        f.verify("alice", &code),
        Decision::Accept,
        "restore brings back devices and codes"
    );

    f.store.trash_user("alice", &f.ctx).unwrap();
    f.clock.advance(7 * 86_400 - 1);
    assert!(f.store.purge(&f.ctx).unwrap().purged_users.is_empty());
    f.clock.advance(1);
    assert_eq!(f.store.purge(&f.ctx).unwrap().purged_users, ["alice"]);
    assert!(f.store.find_user("alice").unwrap_err().is_not_found());
    let u = f
        .store
        .add_user(
            NewUser {
                username: "alice".into(),
                ..NewUser::default()
            },
            &f.ctx,
        )
        .unwrap();
    assert!(f.store.list_devices("alice").unwrap().is_empty());
    assert!(f.store.list_codes(Some(u.id.as_str())).unwrap().is_empty());
}

fn purge_drops_expired_codes(b: Kind) {
    let mut f = fixture(b);
    f.enrolled("alice");
    f.issue(
        "alice",
        CodeRequest {
            count: 3,
            valid_secs: 10,
            ..CodeRequest::default()
        },
    );
    f.issue(
        "alice",
        CodeRequest {
            count: 2,
            valid_secs: 0,
            preserve_existing: true,
            ..CodeRequest::default()
        },
    );
    f.clock.advance(10);
    assert_eq!(f.store.purge(&f.ctx).unwrap().expired_codes, 3);
    assert_eq!(f.store.list_codes(None).unwrap().len(), 2);
}

fn audit_records_actions_and_attempts_by_code_id_only(b: Kind) {
    let mut f = fixture(b);
    f.enrolled("alice");
    let ctx = Context::new("radius:vpn").with_source(crate::Source {
        station: Some("10.0.0.9".into()),
        ..Default::default()
    });
    let issued = f
        .store
        .generate_codes("alice", CodeRequest::default(), &f.ctx)
        .unwrap();
    let code = issued.codes[0].code.expose().to_owned();
    let v = f.store.verify("alice", &code, &ctx).unwrap();
    assert_eq!(v.code_id.as_ref(), Some(&issued.codes[0].info.id));
    f.store.verify("alice", &code, &ctx).unwrap();
    let all = f.store.audit(&AuditFilter::default()).unwrap();
    let actions: Vec<&str> = all.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        ["user.add", "device.add", "code.generate", "auth", "auth"]
    );
    let accept = &all[3];
    assert_eq!(
        (accept.actor.as_str(), accept.outcome.as_str()),
        ("radius:vpn", "accept")
    );
    assert_eq!(
        accept.code_id.as_deref(),
        Some(issued.codes[0].info.id.as_str())
    );
    assert_eq!(accept.source.station.as_deref(), Some("10.0.0.9"));
    assert_eq!(all[4].reason.as_deref(), Some("wrong_code"));
    let text = format!("{all:?}");
    assert!(!text.contains(&code));
    let rejects = f
        .store
        .audit(&AuditFilter {
            outcome: Some("reject".into()),
            ..AuditFilter::default()
        })
        .unwrap();
    assert_eq!(rejects.len(), 1);
    let last = f
        .store
        .audit(&AuditFilter {
            limit: Some(2),
            ..AuditFilter::default()
        })
        .unwrap();
    assert_eq!(
        last.iter().map(|e| e.id).collect::<Vec<_>>(),
        [all[3].id, all[4].id]
    );
}

fn a_store_made_with_one_normalisation_refuses_another(b: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = crate::config::StoreConfig {
        path: dir.path().join("db"),
        key_file: dir.path().join("k"),
        busy_timeout_ms: 1000,
        synchronous: crate::config::Synchronous::Full,
    };
    let pg = matches!(b, Kind::Postgres).then(new_postgres_db);
    let open = |create: bool| -> Box<dyn Backend> {
        match (&pg, create) {
            (None, true) => Box::new(SqliteBackend::create(&cfg).unwrap()),
            (None, false) => Box::new(SqliteBackend::open(&cfg).unwrap()),
            (Some((p, s)), true) => Box::new(PostgresBackend::create(p, s).unwrap()),
            (Some((p, s)), false) => Box::new(PostgresBackend::open(p, s).unwrap()),
        }
    };
    let key = DigestKey::from_bytes([1; 32]);
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::at(T0));
    Store::with_backend(open(true), key.clone(), Policy::default(), clock.clone()).unwrap();
    let none = Policy {
        username_normalization: Normalization::None,
        ..Policy::default()
    };
    let e = Store::with_backend(open(false), key, none, clock).unwrap_err();
    assert!(e.to_string().contains("username_normalization"), "{e}");
}

fn account_states_follow_the_verification_rules(b: Kind) {
    use crate::verify::Account;
    let mut f = fixture_with(
        b,
        Policy {
            lockout_threshold: 1,
            lockout_auto_unlock_secs: 60,
            ..Policy::default()
        },
    );
    assert_eq!(f.store.account("nobody").unwrap(), Account::Unknown);
    assert_eq!(f.store.account("").unwrap(), Account::Unknown);
    f.store
        .add_user(
            NewUser {
                username: "kai".into(),
                aliases: vec!["k.ai".into()],
                ..NewUser::default()
            },
            &f.ctx,
        )
        .unwrap();
    assert_eq!(
        f.store.account("KAI@corp").unwrap(),
        Account::Active { enrolled: false }
    );
    f.store
        .add_device("kai", DeviceKind::Phone, None, &f.ctx)
        .unwrap();
    assert_eq!(
        f.store.account("k.ai").unwrap(),
        Account::Active { enrolled: true }
    );
    f.verify("kai", "000000");
    assert_eq!(f.store.account("kai").unwrap(), Account::LockedOut);
    f.clock.advance(60);
    assert_eq!(
        f.store.account("kai").unwrap(),
        Account::Active { enrolled: true },
        "the lockout ran out"
    );
    let status = |f: &mut Fixture, s| {
        f.store
            .update_user(
                "kai",
                UserUpdate {
                    status: Some(s),
                    ..UserUpdate::default()
                },
                &f.ctx,
            )
            .unwrap();
    };
    status(&mut f, Status::Bypass);
    assert_eq!(f.store.account("kai").unwrap(), Account::Bypass);
    status(&mut f, Status::Disabled);
    assert_eq!(f.store.account("kai").unwrap(), Account::Disabled);
    f.store.trash_user("kai", &f.ctx).unwrap();
    assert_eq!(f.store.account("kai").unwrap(), Account::Trashed);
}

fn many_attempts_in_one_transaction_stand_or_fall_alone(b: Kind) {
    let mut f = fixture(b);
    f.enrolled("alice");
    f.enrolled("bob");
    let a = f.one("alice", 2, 0);
    let b = f.one("bob", 1, 0);
    let radius = Context::new("radius:test");
    let attempt = |login, passcode| Attempt {
        login,
        passcode,
        ctx: &radius,
    };
    let out = f
        .store
        .verify_many(&[
            attempt("alice", &a),
            attempt("bob", &b),
            attempt("bob", &b),
            attempt("alice", &a),
            attempt("alice", &a),
        ])
        .unwrap();
    let decisions: Vec<Decision> = out.into_iter().map(|r| r.unwrap().decision).collect();
    assert_eq!(
        decisions,
        [
            Decision::Accept,
            Decision::Accept,
            WRONG,
            Decision::Accept,
            WRONG
        ]
    );
    let audited = f
        .store
        .audit(&AuditFilter {
            actor: Some("radius:test".into()),
            ..AuditFilter::default()
        })
        .unwrap();
    assert_eq!(audited.len(), 5);
}

fn a_failed_attempt_is_undone_alone(b: Kind) {
    // A failure inside one savepoint (here: a code update the schema refuses) must undo
    // that attempt's writes and leave the batch's others in place.
    let mut f = fixture(b);
    f.enrolled("alice");
    f.one("alice", 1, 0);
    let user = f.store.find_user("alice").unwrap().id;
    let mut tx = f.store.backend.begin().unwrap();
    let id = tx.codes(&user).unwrap()[0].id.clone();
    tx.savepoint().unwrap();
    tx.append_audit(&AuditEvent {
        id: 0,
        time: T0,
        actor: "kept".into(),
        action: "a".into(),
        user_id: None,
        username: None,
        code_id: None,
        outcome: "ok".into(),
        reason: None,
        source: Default::default(),
        detail: None,
    })
    .unwrap();
    tx.release_savepoint().unwrap();
    tx.savepoint().unwrap();
    tx.delete_codes_of(&user).unwrap();
    assert!(tx.set_code_uses(&id, 1).is_ok(), "no row, no trigger");
    tx.rollback_savepoint().unwrap();
    tx.commit().unwrap();
    assert_eq!(
        f.store.list_codes(Some("alice")).unwrap().len(),
        1,
        "the rolled-back delete is undone"
    );
    let kept = f
        .store
        .audit(&AuditFilter {
            actor: Some("kept".into()),
            ..AuditFilter::default()
        })
        .unwrap();
    assert_eq!(kept.len(), 1, "the released step stays");
}

#[test]
fn purge_folds_the_log_into_the_database_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = init_config(dir.path());
    let wal = dir.path().join("sparekey.db-wal");
    let ctx = Context::new("test");
    {
        let mut store = Store::create(&config).unwrap();
        store
            .add_user(
                NewUser {
                    username: "walt".into(),
                    ..NewUser::default()
                },
                &ctx,
            )
            .unwrap();
    }
    assert!(
        std::fs::metadata(&wal).unwrap().len() > 0,
        "closing leaves the log for the next process"
    );
    let mut store = Store::open(&config).unwrap();
    store.purge(&ctx).unwrap();
    assert_eq!(std::fs::metadata(&wal).unwrap().len(), 0);
    drop(store);
    // The database file alone now holds everything.
    let copy = dir.path().join("copy");
    std::fs::create_dir(&copy).unwrap();
    std::fs::copy(dir.path().join("sparekey.db"), copy.join("sparekey.db")).unwrap();
    std::fs::copy(dir.path().join("sparekey.key"), copy.join("sparekey.key")).unwrap();
    let copied = crate::config::Config::parse(
        &crate::config::Config::init_text(&copy),
        &copy.join("sparekey.toml"),
    )
    .unwrap();
    assert!(Store::open(&copied).unwrap().find_user("walt").is_ok());
}

fn last_login_is_kept_to_the_minute(b: Kind) {
    let mut f = fixture(b);
    f.enrolled("lee");
    let code = f.one("lee", 0, 0);
    assert_eq!(f.verify("lee", &code), Decision::Accept);
    assert_eq!(f.store.find_user("lee").unwrap().last_login, Some(T0));
    f.clock.advance(59);
    assert_eq!(f.verify("lee", &code), Decision::Accept);
    assert_eq!(
        f.store.find_user("lee").unwrap().last_login,
        Some(T0),
        "not rewritten within the minute"
    );
    f.verify("lee", "000000");
    assert_eq!(f.verify("lee", &code), Decision::Accept);
    let u = f.store.find_user("lee").unwrap();
    assert_eq!(
        (u.last_login, u.failed_attempts),
        (Some(T0 + 59), 0),
        "a failure to clear forces the write"
    );
    f.clock.advance(60);
    assert_eq!(f.verify("lee", &code), Decision::Accept);
    assert_eq!(f.store.find_user("lee").unwrap().last_login, Some(T0 + 119));
}

fn admin_keys_are_sealed_listed_and_revoked(kind: Kind) {
    let mut f = fixture(kind);
    let new = |name: &str, role| NewAdminKey {
        name: name.into(),
        role,
        may_create_codes: false,
        may_customise_codes: false,
    };
    let (desk, secret) = f
        .store
        .create_admin_key(new("desk", Role::HelpDesk), &f.ctx)
        .unwrap();
    assert!(desk.ikey.starts_with("DI") && desk.ikey.len() == 20);
    assert_eq!(secret.expose().len(), 40);
    assert!(!desk.may_create_codes && !desk.may_customise_codes);
    let (owner, _) = f
        .store
        .create_admin_key(new("root", Role::Owner), &f.ctx)
        .unwrap();
    assert!(
        owner.may_create_codes && owner.may_customise_codes,
        "help-desk limits bind only help-desk keys"
    );
    assert!(matches!(
        f.store
            .create_admin_key(new("desk", Role::UserManager), &f.ctx),
        Err(Error::Conflict(_))
    ));
    let (got, opened) = f.store.admin_key_secret(&desk.ikey).unwrap().unwrap();
    assert_eq!((got, &opened), (desk.clone(), &secret));
    assert!(f.store.admin_key_secret("DINOSUCHKEY").unwrap().is_none());
    assert_eq!(f.store.list_admin_keys().unwrap().len(), 2);

    f.clock.advance(5);
    let revoked = f.store.revoke_admin_key("desk", &f.ctx).unwrap();
    assert_eq!(revoked.revoked_at, Some(T0 + 5));
    assert!(f.store.admin_key_secret(&desk.ikey).unwrap().is_none());
    assert!(
        f.store
            .revoke_admin_key(&desk.ikey, &f.ctx)
            .unwrap_err()
            .is_not_found()
    );
    // The name is free again once its key is revoked.
    f.store
        .create_admin_key(new("desk", Role::HelpDesk), &f.ctx)
        .unwrap();
    assert_eq!(f.store.list_admin_keys().unwrap().len(), 3);

    let events = f.store.audit(&AuditFilter::default()).unwrap();
    let actions: Vec<&str> = events
        .iter()
        .filter(|e| e.action.starts_with("admin_key."))
        .map(|e| e.action.as_str())
        .collect();
    assert_eq!(
        actions,
        [
            "admin_key.create",
            "admin_key.create",
            "admin_key.revoke",
            "admin_key.create"
        ]
    );
    for e in &events {
        let text = format!("{e:?}");
        assert!(!text.contains(secret.expose()), "no secret in the audit");
    }
}

fn enrolment_in_one_call_matches_the_three_calls(b: Kind) {
    let mut f = fixture(b);
    let req = CodeRequest {
        count: 10,
        reuse_count: 2,
        valid_secs: 0,
        ..CodeRequest::default()
    };
    let (enrolled, by_calls) = f
        .store
        .batch(&f.ctx, |b| {
            let e = b.enrol(
                NewUser {
                    username: "alice".into(),
                    aliases: vec!["al".into()],
                    ..NewUser::default()
                },
                DeviceKind::Token,
                Some("desk".into()),
                &req,
            )?;
            b.add_user(NewUser {
                username: "bob".into(),
                ..NewUser::default()
            })?;
            b.add_device("bob", DeviceKind::Token, Some("desk".into()))?;
            let issued = b.generate_codes("bob", &req)?;
            Ok((e, issued))
        })
        .unwrap();
    assert!(enrolled.issued.enrolled);
    assert_eq!(enrolled.issued.replaced, 0);
    assert_eq!(enrolled.issued.codes.len(), 10);
    assert_eq!(
        f.store.list_devices("al").unwrap(),
        std::slice::from_ref(&enrolled.device)
    );
    assert_eq!(f.store.list_codes(Some("alice")).unwrap().len(), 10);

    // The same events, in the same order, as the three calls give.
    let events = f.store.audit(&AuditFilter::default()).unwrap();
    let shape = |user: &str| -> Vec<(String, Option<String>, Option<String>)> {
        events
            .iter()
            .filter(|e| e.username.as_deref() == Some(user))
            .map(|e| {
                let detail = e.detail.as_ref().map(|d| match d.split_once(' ') {
                    // The device id differs; its kind must not.
                    Some((id, rest)) if id.starts_with("device=") => rest.to_owned(),
                    _ => d.clone(),
                });
                (e.action.clone(), detail, e.code_id.clone())
            })
            .collect()
    };
    let (a, b) = (shape("alice"), shape("bob"));
    assert_eq!(a.len(), 12);
    let strip = |v: &[(String, Option<String>, Option<String>)]| -> Vec<_> {
        v.iter().map(|(x, d, _)| (x.clone(), d.clone())).collect()
    };
    assert_eq!(strip(&a), strip(&b));
    let ids: Vec<Option<String>> = enrolled
        .issued
        .codes
        .iter()
        .map(|c| Some(c.info.id.to_string()))
        .collect();
    let audited: Vec<Option<String>> = a[2..].iter().map(|(_, _, c)| c.clone()).collect();
    assert_eq!(audited, ids, "one code.generate per code, by id");
    assert_eq!(by_calls.codes.len(), 10);

    // Each code works exactly as many times as issued.
    let code = enrolled.issued.codes[4].code.expose().to_owned();
    for expected in [
        Decision::Accept,
        Decision::Accept,
        Decision::Reject(Reason::WrongCode),
    ] {
        assert_eq!(
            f.store.verify("alice", &code, &f.ctx).unwrap().decision,
            expected
        );
    }

    // A taken name refuses the whole enrolment.
    let err = f
        .store
        .batch(&f.ctx, |b| {
            b.enrol(
                NewUser {
                    username: "AL".into(),
                    ..NewUser::default()
                },
                DeviceKind::Phone,
                None,
                &req,
            )
        })
        .unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err}");
    assert_eq!(f.store.list_users(&UserFilter::default()).unwrap().len(), 2);
}

/// Each rule above runs once on SQLite and once on PostgreSQL.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[test] fn $name() { super::$name(super::Kind::Sqlite) })*
        }
        mod postgres {
            $(#[test] fn $name() { super::$name(super::Kind::Postgres) })*
        }
    };
}

on_both_backends!(
    a_code_works_exactly_as_many_times_as_issued,
    reuse_count_zero_is_unlimited,
    expiry_is_exact_to_the_second,
    valid_secs_zero_never_expires,
    cli_defaults_follow_the_duo_admin_panel,
    generating_replaces_unless_preserving,
    the_hundred_cap_is_all_or_nothing,
    expired_codes_do_not_count_against_the_cap,
    per_call_limits,
    custom_codes_and_duplicates,
    temporary_otps_follow_onelogin,
    nothing_can_extend_a_code,
    lockout_after_threshold_and_unlock,
    automatic_unlock_when_configured,
    threshold_zero_never_locks,
    statuses,
    not_enrolled_users_cannot_use_codes,
    unknown_users_and_malformed_input_are_rejected,
    a_login_beside_a_user_is_never_that_user,
    aliases_and_normalisation,
    exact_matching_without_normalisation,
    trash_restore_and_purge,
    purge_drops_expired_codes,
    audit_records_actions_and_attempts_by_code_id_only,
    a_store_made_with_one_normalisation_refuses_another,
    account_states_follow_the_verification_rules,
    many_attempts_in_one_transaction_stand_or_fall_alone,
    a_failed_attempt_is_undone_alone,
    last_login_is_kept_to_the_minute,
    admin_keys_are_sealed_listed_and_revoked,
    enrolment_in_one_call_matches_the_three_calls,
);

#[test]
fn a_server_can_leave_checkpoints_to_another_connection() {
    let dir = tempfile::tempdir().unwrap();
    let config = init_config(dir.path());
    let db = dir.path().join("sparekey.db");
    let ctx = Context::new("test");
    let mut writer = Store::create(&config).unwrap();
    writer.defer_checkpoints().unwrap();
    let before = std::fs::metadata(&db).unwrap().len();
    // Far more than the 1000 pages after which a connection would checkpoint by itself.
    for chunk in 0..4 {
        writer
            .batch(&ctx, |b| {
                for i in 0..5000 {
                    b.add_user(NewUser {
                        username: format!("u{chunk}-{i}"),
                        notes: Some("x".repeat(200)),
                        ..NewUser::default()
                    })?;
                }
                Ok(())
            })
            .unwrap();
    }
    assert_eq!(
        std::fs::metadata(&db).unwrap().len(),
        before,
        "the writer did not checkpoint"
    );
    let mut other = Store::open(&config).unwrap();
    let pages = other.checkpoint().unwrap();
    assert!(pages > 1000, "the log's length in pages: {pages}");
    assert!(
        std::fs::metadata(&db).unwrap().len() > before + 4_000_000,
        "the other connection did"
    );
    assert!(other.find_user("u3-4999").is_ok());
}

/// Under sustained load the writer never finds the log wholly copied back when it begins,
/// so the log would only grow; `restart_log` has the next commit write it from its start.
#[test]
fn a_writer_that_restarts_its_log_keeps_it_from_growing() {
    let dir = tempfile::tempdir().unwrap();
    let config = init_config(dir.path());
    let wal = dir.path().join("sparekey.db-wal");
    let ctx = Context::new("test");
    let mut writer = Store::create(&config).unwrap();
    writer.defer_checkpoints().unwrap();
    let mut n = 0;
    let mut add = |store: &mut Store| {
        store
            .batch(&ctx, |b| {
                for _ in 0..2000 {
                    n += 1;
                    b.add_user(NewUser {
                        username: format!("u{n}"),
                        ..NewUser::default()
                    })?;
                }
                Ok(())
            })
            .unwrap();
        std::fs::metadata(&wal).unwrap().len()
    };
    let grown = add(&mut writer);
    assert!(add(&mut writer) > grown, "without a restart the log grows");
    let grown = std::fs::metadata(&wal).unwrap().len();
    writer.restart_log().unwrap();
    assert_eq!(
        add(&mut writer),
        grown,
        "the next commit wrote the log from its start"
    );
    assert!(writer.find_user(&format!("u{n}")).is_ok());
    let mut other = Store::open(&config).unwrap();
    assert!(other.find_user("u1").is_ok() && other.find_user(&format!("u{n}")).is_ok());
}

#[test]
fn an_emptied_store_file_is_refused_not_made_anew() {
    let dir = tempfile::tempdir().unwrap();
    let config = init_config(dir.path());
    let db = dir.path().join("sparekey.db");
    drop(Store::create(&config).unwrap());
    std::fs::write(&db, b"").unwrap();
    for _ in 0..2 {
        let Err(e) = Store::open(&config) else {
            panic!("an empty file is no store");
        };
        assert!(e.to_string().contains("not a sparekey store"), "{e}");
    }
    assert_eq!(std::fs::metadata(&db).unwrap().len(), 0, "left as it was");
}
