//! End-to-end tests of pam_sparekey.so through the real Linux-PAM library: pamtester under
//! Debian's pam_wrapper (service files from a test directory, nothing in /etc changes),
//! sshd with a real ssh client, sudo run by a non-root account, and 32 processes racing
//! on one store.
//!
//! pamtester prints only pam_strerror()'s text, so each test reads the exact return code
//! from that text: with one module on a `required` line the stack's answer is the
//! module's own. Every test also reads the module's syslog lines (see `support`), and
//! checks that no code appears in any output or log line.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::process::{Child, Output};
use std::time::Duration;

use sparekey::{AuditFilter, Status};
use support::{
    KillOnDrop, Sandbox, TestAccount, TestStore, finish, module, pam_dir, pam_text, program,
    shipped_service, text, wrapper_module,
};

const LIMIT: Duration = Duration::from_secs(60);

/// Writes a pam_wrapper service file; `{module}` and `{config}` are filled in.
fn service(sb: &Sandbox, ts: &TestStore, name: &str, lines: &str) {
    let text = lines
        .replace("{module}", &sb.module().display().to_string())
        .replace("{config}", &ts.config.display().to_string());
    sb.write(&format!("pamsvc/{name}"), &text, 0o644);
}

/// pamtester, under pam_wrapper, in the sandbox's namespace.
/// `env` holds extra `NAME=value` variables for pamtester.
fn spawn_pamtester(sb: &Sandbox, service: &str, user: &str, ops: &[&str], env: &[&str]) -> Child {
    let svc = format!("PAM_WRAPPER_SERVICE_DIR={}", sb.path("pamsvc").display());
    let pamtester = program("pamtester");
    let mut args = vec!["LD_PRELOAD=libpam_wrapper.so", "PAM_WRAPPER=1", &svc];
    args.extend_from_slice(env);
    args.extend_from_slice(&[pamtester.to_str().unwrap(), service, user]);
    args.extend_from_slice(ops);
    sb.command("", &program("env"), &args).spawn().unwrap()
}

/// What pamtester said last (`successfully authenticated` or a pam_strerror text), with
/// its whole output.
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

fn pamtester(sb: &Sandbox, service: &str, user: &str, input: &str) -> Said {
    said(&finish(
        spawn_pamtester(sb, service, user, &["authenticate"], &[]),
        input,
        LIMIT,
    ))
}

fn acct(sb: &Sandbox, service: &str, user: &str) -> Said {
    said(&finish(
        spawn_pamtester(sb, service, user, &["acct_mgmt"], &[]),
        "",
        LIMIT,
    ))
}

/// A sandbox, a store, and the plain service `sk` (auth and account, default options).
fn setup() -> (Sandbox, TestStore) {
    let sb = Sandbox::new();
    let ts = TestStore::new(&sb, "");
    service(
        &sb,
        &ts,
        "sk",
        "auth required {module} config={config}\naccount required {module} config={config}\n",
    );
    (sb, ts)
}

fn assert_no_code(codes: &[String], haystacks: &[&str]) {
    for c in codes {
        for h in haystacks {
            assert!(!h.contains(c.as_str()), "a code leaked into: {h}");
        }
    }
}

#[test]
fn a_valid_code_is_accepted_once_then_refused_as_used() {
    let (sb, mut ts) = setup();
    ts.user("alice", &[], Status::Active, true);
    let code = ts.code("alice");

    let first = pamtester(&sb, "sk", "alice", &format!("{code}\n"));
    assert_eq!(first.result, pam_text::SUCCESS, "{}", first.output);
    assert!(first.output.contains("Bypass code: "), "{}", first.output);
    let again = pamtester(&sb, "sk", "alice", &format!("{code}\n"));
    assert_eq!(again.result, pam_text::AUTH_ERR, "{}", again.output);

    let logs = sb.module_logs();
    assert_eq!(logs.len(), 2, "{logs:?}");
    assert!(
        logs[0].starts_with("pam_sparekey(sk:auth): user=alice outcome=accept code_id=C"),
        "{logs:?}"
    );
    assert!(logs[0].contains("uses_remaining=0"), "{logs:?}");
    assert_eq!(
        logs[1],
        "pam_sparekey(sk:auth): user=alice outcome=reject reason=wrong_code"
    );
    assert_no_code(&[code], &[&first.output, &again.output, &logs.join("\n")]);

    let audit = ts.store.audit(&AuditFilter::default()).unwrap();
    let auth: Vec<_> = audit.iter().filter(|e| e.action == "auth").collect();
    assert_eq!(auth.len(), 2);
    assert_eq!(auth[0].actor, "pam:sk");
    assert_eq!(
        (auth[0].outcome.as_str(), auth[1].outcome.as_str()),
        ("accept", "reject")
    );
}

#[test]
fn expired_locked_disabled_and_not_enrolled_are_auth_err() {
    let (sb, mut ts) = setup();
    ts.user("exp", &[], Status::Active, true);
    ts.user("locked", &[], Status::Active, true);
    ts.user("off", &[], Status::Active, true);
    ts.user("new", &[], Status::Active, false);
    let expired = ts.expired_code("exp");
    let locked = ts.code("locked");
    ts.lock_out("locked");
    let off = ts.code("off");
    ts.store
        .update_user(
            "off",
            sparekey::UserUpdate {
                status: Some(Status::Disabled),
                ..Default::default()
            },
            &sparekey::Context::new("cli:test"),
        )
        .unwrap();
    let new = ts.code("new");

    let cases = [
        ("exp", &expired, "expired"),
        ("locked", &locked, "locked_out"),
        ("off", &off, "disabled"),
        ("new", &new, "not_enrolled"),
    ];
    for (user, code, reason) in cases {
        let s = pamtester(&sb, "sk", user, &format!("{code}\n"));
        assert_eq!(s.result, pam_text::AUTH_ERR, "{user}: {}", s.output);
        assert!(
            s.output.contains("Bypass code: "),
            "{user} must be prompted like anyone"
        );
        let logs = sb.module_logs();
        assert_eq!(
            logs,
            [format!(
                "pam_sparekey(sk:auth): user={user} outcome=reject reason={reason}"
            )]
        );
    }
    let codes = [expired, locked, off, new];
    // Account management refuses the disabled and the locked-out user.
    for user in ["off", "locked"] {
        let s = acct(&sb, "sk", user);
        assert_eq!(s.result, pam_text::PERM_DENIED, "{user}: {}", s.output);
    }
    assert_eq!(acct(&sb, "sk", "new").result, pam_text::ACCT_SUCCESS);
    ts.store
        .trash_user("new", &sparekey::Context::new("cli:test"))
        .unwrap();
    assert_eq!(acct(&sb, "sk", "new").result, pam_text::PERM_DENIED);
    assert_no_code(&codes, &[&sb.logs().join("\n")]);
}

#[test]
fn bypass_users_pass_without_a_prompt_or_are_refused_with_bypass_status_deny() {
    let (sb, mut ts) = setup();
    ts.user("bob", &[], Status::Bypass, false);
    service(
        &sb,
        &ts,
        "sk-deny",
        "auth required {module} config={config} bypass_status=deny\n",
    );
    let allowed = pamtester(&sb, "sk", "bob", "");
    assert_eq!(allowed.result, pam_text::SUCCESS, "{}", allowed.output);
    assert!(
        !allowed.output.contains("Bypass code"),
        "{}",
        allowed.output
    );
    let denied = pamtester(&sb, "sk-deny", "bob", "123456789\n");
    assert_eq!(denied.result, pam_text::AUTH_ERR, "{}", denied.output);
    assert_eq!(
        sb.module_logs(),
        [
            "pam_sparekey(sk:auth): user=bob outcome=bypass",
            "pam_sparekey(sk-deny:auth): user=bob outcome=reject reason=bypass_denied",
        ]
    );
    let audit = ts.store.audit(&AuditFilter::default()).unwrap();
    assert!(
        audit
            .iter()
            .any(|e| e.action == "auth" && e.outcome == "bypass" && e.actor == "pam:sk"),
        "the bypass is audited"
    );
}

#[test]
fn unknown_users_are_user_unknown_or_ignored_for_rollout() {
    let (sb, _ts) = setup();
    let ts = &_ts;
    service(
        &sb,
        ts,
        "sk-ignore",
        "auth required {module} config={config} unknown_user=ignore\n",
    );
    service(
        &sb,
        ts,
        "sk-rollout",
        "auth [success=done ignore=ignore default=die] {module} config={config} unknown_user=ignore\nauth required pam_permit.so\n",
    );
    let s = pamtester(&sb, "sk", "mallory", "123456789\n");
    assert_eq!(s.result, pam_text::USER_UNKNOWN, "{}", s.output);
    assert!(
        s.output.contains("Bypass code: "),
        "an unknown user is prompted like anyone"
    );
    // Alone on the stack, PAM_IGNORE leaves nothing to decide: libpam refuses.
    let s = pamtester(&sb, "sk-ignore", "mallory", "");
    assert_eq!(s.result, pam_text::PERM_DENIED, "{}", s.output);
    assert!(!s.output.contains("Bypass code"), "{}", s.output);
    // With another module after it, that module decides.
    let s = pamtester(&sb, "sk-rollout", "mallory", "");
    assert_eq!(s.result, pam_text::SUCCESS, "{}", s.output);
    assert!(!s.output.contains("Bypass code"), "{}", s.output);
    assert_eq!(acct(&sb, "sk", "mallory").result, pam_text::USER_UNKNOWN);
    let logs = sb.module_logs();
    assert_eq!(
        logs,
        [
            "pam_sparekey(sk:auth): user=mallory outcome=reject reason=unknown_user",
            "pam_sparekey(sk-ignore:auth): user=mallory outcome=ignore reason=unknown_user",
            "pam_sparekey(sk-rollout:auth): user=mallory outcome=ignore reason=unknown_user",
            "pam_sparekey(sk:account): user=mallory outcome=reject reason=unknown_user",
        ]
    );
}

#[test]
fn an_alias_logs_in_as_its_user_and_the_prompt_can_be_changed() {
    let (sb, mut ts) = setup();
    ts.user("carol", &["carol@example.com"], Status::Active, true);
    service(
        &sb,
        &ts,
        "sk-prompt",
        "auth required {module} config={config} [prompt=Code for the VPN: ]\n",
    );
    let code = ts.code("carol");
    let s = pamtester(&sb, "sk", "Carol@Example.com", &format!("{code}\n"));
    assert_eq!(s.result, pam_text::SUCCESS, "{}", s.output);
    let code = ts.code("carol");
    let s = pamtester(&sb, "sk-prompt", "EXAMPLE\\carol", &format!("{code}\n"));
    assert_eq!(s.result, pam_text::SUCCESS, "{}", s.output);
    assert!(s.output.contains("Code for the VPN: "), "{}", s.output);
    let audit = ts.store.audit(&AuditFilter::default()).unwrap();
    let accepted: Vec<_> = audit
        .iter()
        .filter(|e| e.action == "auth" && e.outcome == "accept")
        .collect();
    assert_eq!(accepted.len(), 2);
    assert!(
        accepted
            .iter()
            .all(|e| e.username.as_deref() == Some("carol"))
    );
}

#[test]
fn use_first_pass_takes_the_token_an_earlier_module_set() {
    let (sb, mut ts) = setup();
    ts.user("dave", &[], Status::Active, true);
    let code = ts.code("dave");
    // pam_wrapper's pam_set_items sets PAM_AUTHTOK from the environment, as a password
    // module before this one would.
    service(
        &sb,
        &ts,
        "sk-first",
        &format!(
            "auth required {}\nauth required {{module}} config={{config}} use_first_pass\n",
            wrapper_module("pam_set_items.so").display()
        ),
    );
    let with_token = |token: &str| {
        let env = format!("PAM_AUTHTOK={token}");
        said(&finish(
            spawn_pamtester(&sb, "sk-first", "dave", &["authenticate"], &[&env]),
            "",
            LIMIT,
        ))
    };
    let s = with_token(&code);
    assert_eq!(s.result, pam_text::SUCCESS, "{}", s.output);
    assert!(!s.output.contains("Bypass code"), "{}", s.output);
    let s = with_token(&code);
    assert_eq!(s.result, pam_text::AUTH_ERR, "used up: {}", s.output);
    // A password is not a code: refused without asking, and not counted as a failure.
    let s = with_token("hunter2");
    assert_eq!(s.result, pam_text::AUTH_ERR, "{}", s.output);
    assert!(!s.output.contains("Bypass code"), "{}", s.output);
    assert_eq!(ts.store.find_user("dave").unwrap().failed_attempts, 1);
    let logs = sb.module_logs();
    assert!(logs[0].contains("user=dave outcome=accept"), "{logs:?}");
    assert!(logs[1].contains("reason=wrong_code"), "{logs:?}");
    assert_eq!(
        logs[2],
        "pam_sparekey(sk-first:auth): user=dave outcome=reject reason=authtok_not_a_code"
    );
}

#[test]
fn stacked_after_pam_matrix_try_first_pass_asks_and_use_first_pass_refuses() {
    // pam_matrix blanks PAM_AUTHTOK once it has checked it, so the module behind it finds
    // no code there: try_first_pass then asks, use_first_pass refuses without asking.
    let (sb, mut ts) = setup();
    ts.user("erin", &[], Status::Active, true);
    let passdb = sb.write(
        "passdb",
        "erin:hunter2:sk-try\nerin:hunter2:sk-use\n",
        0o600,
    );
    let matrix = wrapper_module("pam_matrix.so");
    for (name, how) in [("sk-try", "try_first_pass"), ("sk-use", "use_first_pass")] {
        service(
            &sb,
            &ts,
            name,
            &format!(
                "auth required {} passdb={}\nauth required {{module}} config={{config}} {how}\n",
                matrix.display(),
                passdb.display()
            ),
        );
    }
    let code = ts.code("erin");
    let s = pamtester(&sb, "sk-try", "erin", &format!("hunter2\n{code}\n"));
    assert_eq!(s.result, pam_text::SUCCESS, "{}", s.output);
    assert!(
        s.output.contains("Password: ") && s.output.contains("Bypass code: "),
        "{}",
        s.output
    );
    let code = ts.code("erin");
    let s = pamtester(&sb, "sk-use", "erin", &format!("hunter2\n{code}\n"));
    assert_eq!(s.result, pam_text::AUTH_ERR, "{}", s.output);
    assert!(!s.output.contains("Bypass code"), "{}", s.output);
    assert_eq!(ts.store.find_user("erin").unwrap().failed_attempts, 0);
}

#[test]
fn an_unusable_config_key_or_store_is_authinfo_unavail() {
    use std::os::unix::fs::{PermissionsExt, chown};
    let (sb, mut ts) = setup();
    ts.user("fred", &[], Status::Active, true);
    let code = ts.code("fred");
    let input = format!("{code}\n");
    let mode = |p: &Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    };
    let key = ts.dir.join("sparekey.key");
    let expect_unavailable = |why: &str| {
        let s = pamtester(&sb, "sk", "fred", &input);
        assert_eq!(s.result, pam_text::AUTHINFO_UNAVAIL, "{why}: {}", s.output);
        let logs = sb.module_logs();
        assert_eq!(logs.len(), 1, "{why}: {logs:?}");
        assert!(
            logs[0].starts_with("pam_sparekey(sk:auth): user=fred outcome=error reason="),
            "{why}: {logs:?}"
        );
        assert!(logs[0].contains(why), "{why}: {logs:?}");
        assert!(!logs[0].contains(&code));
    };

    mode(&ts.config, 0o664);
    expect_unavailable("mode 0664 lets group or others write it");
    mode(&ts.config, 0o646);
    expect_unavailable("mode 0646");
    mode(&ts.config, 0o644);
    chown(&ts.config, Some(65534), None).unwrap();
    expect_unavailable("owned by uid 65534, not root");
    chown(&ts.config, Some(0), None).unwrap();
    mode(&key, 0o640);
    expect_unavailable("lets group or others at it");
    mode(&key, 0o600);
    mode(&ts.dir, 0o777);
    expect_unavailable("directory");
    mode(&ts.dir, 0o700);
    let db = ts.dir.join("sparekey.db");
    std::fs::rename(&db, ts.dir.join("moved.db")).unwrap();
    expect_unavailable("no such file");
    std::fs::rename(ts.dir.join("moved.db"), &db).unwrap();
    service(
        &sb,
        &ts,
        "sk-missing",
        "auth required {module} config=/nonexistent/sparekey.toml\n",
    );
    let s = pamtester(&sb, "sk-missing", "fred", &input);
    assert_eq!(s.result, pam_text::AUTHINFO_UNAVAIL, "{}", s.output);
    assert!(sb.module_logs()[0].contains("/nonexistent/sparekey.toml"));

    // Put right, the same code works: nothing above consumed it.
    let s = pamtester(&sb, "sk", "fred", &input);
    assert_eq!(s.result, pam_text::SUCCESS, "{}", s.output);
}

#[test]
fn a_wrong_option_is_a_service_error_and_never_asks() {
    let (sb, mut ts) = setup();
    ts.user("gina", &[], Status::Active, true);
    service(
        &sb,
        &ts,
        "sk-typo",
        "auth required {module} config={config} unknown_usr=ignore\naccount required {module} config={config} debgu\n",
    );
    service(
        &sb,
        &ts,
        "sk-both",
        "auth required {module} config={config} use_first_pass try_first_pass\n",
    );
    let s = pamtester(&sb, "sk-typo", "gina", "123456789\n");
    assert_eq!(s.result, pam_text::SERVICE_ERR, "{}", s.output);
    assert!(!s.output.contains("Bypass code"), "{}", s.output);
    assert_eq!(acct(&sb, "sk-typo", "gina").result, pam_text::SERVICE_ERR);
    assert_eq!(
        pamtester(&sb, "sk-both", "gina", "").result,
        pam_text::SERVICE_ERR
    );
    assert_eq!(
        sb.module_logs(),
        [
            "pam_sparekey(sk-typo:auth): unknown option \"unknown_usr=ignore\"; refusing (fix the pam.d line)",
            "pam_sparekey(sk-typo:account): unknown option \"debgu\"; refusing (fix the pam.d line)",
            "pam_sparekey(sk-both:auth): use_first_pass and try_first_pass exclude each other; refusing (fix the pam.d line)",
        ]
    );
}

#[test]
fn no_answer_from_the_conversation_is_conv_err() {
    let (sb, mut ts) = setup();
    ts.user("hank", &[], Status::Active, true);
    let s = pamtester(&sb, "sk", "hank", "");
    assert_eq!(s.result, pam_text::CONV_ERR, "{}", s.output);
}

#[test]
fn the_config_pam_section_sets_defaults_that_arguments_override() {
    let sb = Sandbox::new();
    let mut ts = TestStore::new(
        &sb,
        "[pam]\nunknown_user = \"ignore\"\nprompt = \"Token: \"\n",
    );
    ts.user("ivy", &[], Status::Active, true);
    service(&sb, &ts, "sk", "auth required {module} config={config}\n");
    service(
        &sb,
        &ts,
        "sk-deny",
        "auth required {module} config={config} unknown_user=deny\n",
    );
    assert_eq!(
        pamtester(&sb, "sk", "nobody", "").result,
        pam_text::PERM_DENIED
    );
    assert_eq!(
        pamtester(&sb, "sk-deny", "nobody", "123456789\n").result,
        pam_text::USER_UNKNOWN
    );
    let code = ts.code("ivy");
    let s = pamtester(&sb, "sk", "ivy", &format!("{code}\n"));
    assert_eq!(s.result, pam_text::SUCCESS, "{}", s.output);
    assert!(s.output.contains("Token: "), "{}", s.output);
}

/// Runs `n` pamtesters at once: all are started and waiting at the prompt before any gets
/// its input.
fn race(sb: &Sandbox, users_and_codes: Vec<(String, String)>) -> Vec<Said> {
    let children: Vec<(Child, String)> = users_and_codes
        .into_iter()
        .map(|(user, code)| {
            (
                spawn_pamtester(sb, "sk", &user, &["authenticate"], &[]),
                format!("{code}\n"),
            )
        })
        .collect();
    let waiting: Vec<_> = children
        .into_iter()
        .map(|(child, input)| std::thread::spawn(move || finish(child, &input, LIMIT)))
        .collect();
    waiting
        .into_iter()
        .map(|t| said(&t.join().unwrap()))
        .collect()
}

#[test]
fn thirty_two_logins_at_once_with_their_own_codes_all_succeed() {
    let (sb, mut ts) = setup();
    let mut work = Vec::new();
    for i in 0..32 {
        let user = format!("user{i:02}");
        ts.user(&user, &[], Status::Active, true);
        work.push((user.clone(), ts.code(&user)));
    }
    let codes: Vec<String> = work.iter().map(|(_, c)| c.clone()).collect();
    let results = race(&sb, work);
    for s in &results {
        assert_eq!(s.result, pam_text::SUCCESS, "{}", s.output);
    }
    let logs = sb.module_logs();
    assert_eq!(
        logs.iter().filter(|l| l.contains("outcome=accept")).count(),
        32
    );
    assert!(
        !logs.iter().any(|l| l.contains("outcome=error")),
        "{logs:?}"
    );
    assert_no_code(&codes, &[&logs.join("\n")]);
}

#[test]
fn thirty_two_logins_at_once_with_one_single_use_code_succeed_exactly_once() {
    let (sb, mut ts) = setup();
    ts.user("judy", &[], Status::Active, true);
    let code = ts.code("judy");
    let results = race(
        &sb,
        (0..32).map(|_| ("judy".to_owned(), code.clone())).collect(),
    );
    let ok = results
        .iter()
        .filter(|s| s.result == pam_text::SUCCESS)
        .count();
    assert_eq!(
        ok,
        1,
        "{:?}",
        results.iter().map(|s| &s.result).collect::<Vec<_>>()
    );
    for s in results.iter().filter(|s| s.result != pam_text::SUCCESS) {
        assert_eq!(s.result, pam_text::AUTH_ERR, "{}", s.output);
    }
    let logs = sb.module_logs();
    assert!(
        !logs.iter().any(|l| l.contains("outcome=error")),
        "{logs:?}"
    );
    let audit = ts.store.audit(&AuditFilter::default()).unwrap();
    assert_eq!(audit.iter().filter(|e| e.outcome == "accept").count(), 1);
}

/// Shell lines for a namespace with its own /run (sshd's privilege separation directory,
/// sudo's timestamps) and the test account's /etc files.
fn system_mounts(account: &TestAccount, pam: &str) -> String {
    format!(
        "{}{pam}mount -t tmpfs -o mode=0755,size=4m sparekey-test-run /run\nmkdir -m 0755 /run/sshd\n",
        account.mounts()
    )
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(name),
    )
    .unwrap()
}

#[test]
fn sshd_logs_in_with_a_key_and_a_code_once() {
    let sb = Sandbox::new();
    let mut ts = TestStore::new(&sb, "");
    let account = TestAccount::new(&sb, "sktest");
    ts.user("sktest", &[], Status::Active, true);
    let code = ts.code("sktest");

    let dir = sb.dir.path().display().to_string();
    let keygen = |file: &str| {
        let out = std::process::Command::new(program("ssh-keygen"))
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "sparekey-test", "-f"])
            .arg(sb.path(file))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
    };
    keygen("ssh_host_ed25519_key");
    keygen("client_key");
    std::fs::copy(sb.path("client_key.pub"), sb.path("authorized_keys")).unwrap();
    let port = support::free_port();
    let config = fixture("sshd_config")
        .replace("@PORT@", &port.to_string())
        .replace("@DIR@", &dir);
    sb.write("sshd_config", &config, 0o644);
    sb.write("askpass", &fixture("askpass").replace("@DIR@", &dir), 0o755);
    std::fs::create_dir(sb.path("client_home")).unwrap();

    let pam = pam_dir(&sb, &[("sshd", shipped_service(&sb, "sshd", &ts.config))]);
    let mut sshd = sb.command(
        &system_mounts(&account, &pam),
        &program("sshd"),
        &[
            "-D",
            "-e",
            "-f",
            &sb.path("sshd_config").display().to_string(),
        ],
    );
    sshd.stdin(std::process::Stdio::null());
    let mut sshd = KillOnDrop(sshd.spawn().unwrap());
    support::wait_for_port(port, &mut sshd.0, Duration::from_secs(20));

    let ssh = |answer: &str| -> Output {
        sb.write("answer", &format!("{answer}\n"), 0o600);
        let child = std::process::Command::new(program("ssh"))
            .args(["-F", "/dev/null", "-p", &port.to_string(), "-i"])
            .arg(sb.path("client_key"))
            .args([
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "GlobalKnownHostsFile=/dev/null",
                "-o",
                "PreferredAuthentications=publickey,keyboard-interactive",
                "-o",
                "NumberOfPasswordPrompts=1",
                "-o",
                "ConnectTimeout=20",
                "-o",
                "LogLevel=ERROR",
                "sktest@127.0.0.1",
                "echo logged-in-as-$(id -un)",
            ])
            .env("SSH_ASKPASS", sb.path("askpass"))
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env("HOME", sb.path("client_home"))
            .env_remove("DISPLAY")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        finish(child, "", LIMIT)
    };

    let first = ssh(&code);
    assert!(
        first.status.success(),
        "ssh: {}{}",
        text(&first.stdout),
        text(&first.stderr)
    );
    assert_eq!(text(&first.stdout).trim(), "logged-in-as-sktest");
    let prompts = std::fs::read_to_string(sb.path("prompts")).unwrap();
    assert!(prompts.contains("Bypass code: "), "{prompts}");

    let again = ssh(&code);
    assert_eq!(again.status.code(), Some(255), "{}", text(&again.stdout));
    assert!(
        text(&again.stderr).contains("Permission denied"),
        "{}",
        text(&again.stderr)
    );

    let logs = sb.module_logs();
    let auth: Vec<_> = logs
        .iter()
        .filter(|l| l.starts_with("pam_sparekey(sshd:auth)"))
        .collect();
    assert_eq!(auth.len(), 2, "{logs:?}");
    assert!(
        auth[0].starts_with("pam_sparekey(sshd:auth): user=sktest outcome=accept")
            && auth[0].ends_with("rhost=127.0.0.1 tty=ssh"),
        "{logs:?}"
    );
    assert_eq!(
        auth[1],
        "pam_sparekey(sshd:auth): user=sktest outcome=reject reason=wrong_code rhost=127.0.0.1 tty=ssh"
    );
    let audit = ts.store.audit(&AuditFilter::default()).unwrap();
    let accept = audit.iter().find(|e| e.outcome == "accept").unwrap();
    assert_eq!(accept.actor, "pam:sshd");
    assert_eq!(accept.source.address.as_deref(), Some("127.0.0.1"));
    assert_eq!(accept.source.tty.as_deref(), Some("ssh"));
    assert_no_code(
        &[code],
        &[&logs.join("\n"), &text(&first.stderr), &text(&again.stderr)],
    );
}

#[test]
fn sudo_runs_a_command_for_a_code_once() {
    let sb = Sandbox::new();
    let mut ts = TestStore::new(&sb, "");
    let account = TestAccount::new(&sb, "sktest");
    ts.user("sktest", &[], Status::Active, true);
    let code = ts.code("sktest");
    sb.write(
        "etc/sudoers",
        &fixture("sudoers").replace("@USER@", &account.name),
        0o440,
    );
    let pam = pam_dir(&sb, &[("sudo", shipped_service(&sb, "sudo", &ts.config))]);
    let setup = format!(
        "{}mount --bind \"$SK_SANDBOX/etc/sudoers\" /etc/sudoers\n",
        system_mounts(&account, &pam)
    );
    let uid = account.uid.to_string();
    let sudo = |input: &str| -> Output {
        let child = sb
            .command(
                &setup,
                &program("setpriv"),
                &[
                    "--reuid",
                    &uid,
                    "--regid",
                    &uid,
                    "--clear-groups",
                    "--",
                    program("sudo").to_str().unwrap(),
                    "-S",
                    "-k",
                    "/usr/bin/id",
                    "-u",
                ],
            )
            .spawn()
            .unwrap();
        finish(child, input, LIMIT)
    };
    let first = sudo(&format!("{code}\n"));
    assert!(
        first.status.success(),
        "sudo: {}{}",
        text(&first.stdout),
        text(&first.stderr)
    );
    assert_eq!(text(&first.stdout).trim(), "0", "the command ran as root");
    assert!(
        text(&first.stderr).contains("Bypass code: "),
        "{}",
        text(&first.stderr)
    );

    let again = sudo(&format!("{code}\n"));
    assert_eq!(again.status.code(), Some(1), "{}", text(&again.stdout));
    assert!(text(&again.stdout).is_empty());

    let logs = sb.module_logs();
    assert!(
        logs.iter()
            .any(|l| l.starts_with("pam_sparekey(sudo:auth): user=sktest outcome=accept")),
        "{logs:?}"
    );
    assert!(
        logs.iter().any(|l| l
            .starts_with("pam_sparekey(sudo:auth): user=sktest outcome=reject reason=wrong_code")),
        "{logs:?}"
    );
    let audit = ts.store.audit(&AuditFilter::default()).unwrap();
    assert!(
        audit
            .iter()
            .any(|e| e.actor == "pam:sudo" && e.outcome == "accept")
    );
    assert_no_code(
        &[code],
        &[&logs.join("\n"), &text(&first.stderr), &text(&again.stderr)],
    );
}

#[test]
fn install_pam_finds_the_module_directory_and_installs_root_0644() {
    use std::os::unix::fs::MetadataExt;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let script = root.join("scripts/install-pam");
    let out = std::process::Command::new(&script)
        .arg("--print-dir")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let dir = text(&out.stdout).trim().to_owned();
    assert!(Path::new(&dir).join("pam_unix.so").exists(), "{dir}");

    let sb = Sandbox::new();
    let target = sb.path("security");
    std::fs::create_dir(&target).unwrap();
    let out = std::process::Command::new(&script)
        .arg("--so")
        .arg(module())
        .arg("--dir")
        .arg(&target)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let meta = std::fs::metadata(target.join("pam_sparekey.so")).unwrap();
    assert_eq!((meta.mode() & 0o7777, meta.uid()), (0o644, 0));
}
