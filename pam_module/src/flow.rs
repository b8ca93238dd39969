//! What the module decides on each call, over a [`Store`] and a [`Conversation`], with no
//! FFI: `lib.rs` fills these in from the PAM handle, and unit tests from in-memory stores.
//!
//! Every path that is not a clear success ends in a failure code; a store error is
//! `PAM_AUTHINFO_UNAVAIL`, never success.

use pam::constants::PamResultCode;
use zeroize::Zeroizing;

use sparekey::{Account, Context, Decision, Passcode, Reason, Source, Store, Verdict};

use crate::log::{Extra, Level, Log};
use crate::options::{Authtok, BypassStatus, Settings, UnknownUser};

/// Bytes the user typed or an earlier module stored; wiped when dropped.
pub type Secret = Zeroizing<Vec<u8>>;

/// The application's side of the exchange.
pub trait Conversation {
    /// `PAM_AUTHTOK`, as an earlier module in the stack left it.
    fn authtok(&mut self) -> Result<Option<Secret>, PamResultCode>;
    /// Asks the user with echo off. Any failure is `PAM_CONV_ERR`.
    fn ask_secret(&mut self, prompt: &str) -> Result<Secret, PamResultCode>;
}

/// One attempt, as PAM describes it.
#[derive(Clone, Copy, Debug)]
pub struct Attempt<'a> {
    /// `PAM_SERVICE`.
    pub service: &'a str,
    /// `PAM_USER`: the login, which may be an alias.
    pub user: &'a str,
    /// `PAM_RHOST`.
    pub rhost: Option<&'a str>,
    /// `PAM_TTY`.
    pub tty: Option<&'a str>,
}

impl Attempt<'_> {
    fn context(&self, settings: &Settings) -> Context {
        let allow = settings.bypass_status == BypassStatus::Allow;
        Context::new(format!("pam:{}", self.service))
            .with_bypass(allow)
            .with_source(Source {
                address: self.rhost.map(str::to_owned),
                tty: self.tty.map(str::to_owned),
                ..Source::default()
            })
    }

    fn extra(&self) -> Extra<'_> {
        Extra {
            rhost: self.rhost,
            tty: self.tty,
            ..Extra::default()
        }
    }
}

/// `pam_sm_authenticate` once the settings and the store are in hand.
pub fn authenticate(
    store: &mut Store,
    settings: &Settings,
    attempt: &Attempt<'_>,
    conv: &mut dyn Conversation,
    log: &Log,
) -> PamResultCode {
    let user = attempt.user;
    let account = match store.account(user) {
        Ok(a) => a,
        Err(e) => return unavailable(log, user, &e),
    };
    log.line(Level::Debug, &format!("account state {account:?}"));
    let ctx = attempt.context(settings);
    match account {
        Account::Unknown if settings.unknown_user == UnknownUser::Ignore => {
            log.outcome(
                Level::Info,
                user,
                "ignore",
                Some(Reason::UnknownUser.as_str()),
                &attempt.extra(),
            );
            return PamResultCode::PAM_IGNORE;
        }
        Account::Bypass if settings.bypass_status == BypassStatus::Allow => {
            // No code to ask for; verify() still decides (the status may have changed since
            // account()) and writes the audit event.
            let verdict = store.verify(user, "", &ctx);
            return finish(verdict, account, settings, attempt, log);
        }
        _ => {}
    }
    // Everyone else is asked for a code, whatever the store says of them, so that the
    // prompt tells nobody who exists or how they stand; the answer comes after.
    let without_code = if account == Account::Unknown {
        PamResultCode::PAM_USER_UNKNOWN
    } else {
        PamResultCode::PAM_AUTH_ERR
    };
    match settings.authtok {
        Authtok::Prompt => {}
        Authtok::UseFirstPass => {
            let token = match conv.authtok() {
                Ok(Some(t)) => t,
                Ok(None) => {
                    log.outcome(
                        Level::Notice,
                        user,
                        "reject",
                        Some("no_authtok"),
                        &attempt.extra(),
                    );
                    return without_code;
                }
                Err(e) => return failure(e),
            };
            // A token that cannot be a code was meant for another module (a password):
            // refusing it without asking the store keeps it from counting as a failure.
            let Some(code) = code_shaped(&token) else {
                log.outcome(
                    Level::Notice,
                    user,
                    "reject",
                    Some("authtok_not_a_code"),
                    &attempt.extra(),
                );
                return without_code;
            };
            let verdict = store.verify(user, code, &ctx);
            return finish(verdict, account, settings, attempt, log);
        }
        Authtok::TryFirstPass => {
            if let Ok(Some(token)) = conv.authtok() {
                if let Some(code) = code_shaped(&token) {
                    let verdict = store.verify(user, code, &ctx);
                    let retry = matches!(
                        verdict,
                        Ok(Verdict {
                            decision: Decision::Reject(Reason::WrongCode | Reason::Expired),
                            ..
                        })
                    );
                    if !retry {
                        return finish(verdict, account, settings, attempt, log);
                    }
                    log.line(Level::Debug, "PAM_AUTHTOK was not a valid code; asking");
                }
            }
        }
    }
    let typed = match conv.ask_secret(&settings.prompt) {
        Ok(t) => t,
        Err(_) => {
            log.outcome(
                Level::Notice,
                user,
                "reject",
                Some("conversation_failed"),
                &attempt.extra(),
            );
            return PamResultCode::PAM_CONV_ERR;
        }
    };
    // Input that is not UTF-8 cannot be a code; it is verified (and counted) as garbage.
    let text = std::str::from_utf8(&typed).unwrap_or("\u{fffd}");
    let verdict = store.verify(user, text, &ctx);
    finish(verdict, account, settings, attempt, log)
}

/// The answer to a verification, logged.
fn finish(
    verdict: sparekey::Result<Verdict>,
    account: Account,
    settings: &Settings,
    attempt: &Attempt<'_>,
    log: &Log,
) -> PamResultCode {
    let user = attempt.user;
    let v = match verdict {
        Ok(v) => v,
        Err(e) => return unavailable(log, user, &e),
    };
    let (code, level, outcome, reason) = answer(&v, account, settings);
    let code_id = v.code_id.as_ref().map(ToString::to_string);
    let extra = Extra {
        code_id: code_id.as_deref(),
        uses_remaining: v.uses_remaining,
        ..attempt.extra()
    };
    log.outcome(level, user, outcome, reason, &extra);
    if v.locked_now {
        log.outcome(
            Level::Notice,
            user,
            "locked_out",
            Some("failed_attempts"),
            &attempt.extra(),
        );
    }
    code
}

/// The PAM code, log level, outcome and reason for a verdict.
fn answer(
    v: &Verdict,
    account: Account,
    settings: &Settings,
) -> (PamResultCode, Level, &'static str, Option<&'static str>) {
    match v.decision {
        Decision::Accept => (PamResultCode::PAM_SUCCESS, Level::Info, "accept", None),
        Decision::Bypass => (PamResultCode::PAM_SUCCESS, Level::Info, "bypass", None),
        // Trashed users are unknown to verification, but they are not new users a rollout
        // should let past: they are refused.
        Decision::Reject(Reason::UnknownUser) if account == Account::Trashed => (
            PamResultCode::PAM_AUTH_ERR,
            Level::Notice,
            "reject",
            Some("trashed"),
        ),
        Decision::Reject(Reason::UnknownUser) => (
            match settings.unknown_user {
                UnknownUser::Deny => PamResultCode::PAM_USER_UNKNOWN,
                UnknownUser::Ignore => PamResultCode::PAM_IGNORE,
            },
            Level::Notice,
            "reject",
            Some(Reason::UnknownUser.as_str()),
        ),
        Decision::Reject(r) => (
            PamResultCode::PAM_AUTH_ERR,
            Level::Notice,
            "reject",
            Some(r.as_str()),
        ),
    }
}

/// `pam_sm_acct_mgmt` once the settings and the store are in hand: disabled, trashed and
/// locked-out users are refused (`PAM_PERM_DENIED`), whatever authenticated them.
pub fn account(
    store: &mut Store,
    settings: &Settings,
    attempt: &Attempt<'_>,
    log: &Log,
) -> PamResultCode {
    let user = attempt.user;
    let account = match store.account(user) {
        Ok(a) => a,
        Err(e) => return unavailable(log, user, &e),
    };
    let extra = attempt.extra();
    let deny = |reason: &str| {
        log.outcome(Level::Notice, user, "reject", Some(reason), &extra);
        PamResultCode::PAM_PERM_DENIED
    };
    match account {
        Account::Unknown => match settings.unknown_user {
            UnknownUser::Deny => {
                log.outcome(Level::Notice, user, "reject", Some("unknown_user"), &extra);
                PamResultCode::PAM_USER_UNKNOWN
            }
            UnknownUser::Ignore => {
                log.line(Level::Debug, "user not in the store; ignored");
                PamResultCode::PAM_IGNORE
            }
        },
        Account::Trashed => deny("trashed"),
        Account::Disabled => deny("disabled"),
        Account::LockedOut => deny("locked_out"),
        Account::Bypass | Account::Active { .. } => {
            log.line(Level::Debug, &format!("account state {account:?}; allowed"));
            PamResultCode::PAM_SUCCESS
        }
    }
}

fn unavailable(log: &Log, user: &str, e: &sparekey::Error) -> PamResultCode {
    log.line(
        Level::Err,
        &format!(
            "user={} outcome=error reason=store_unavailable: {e}",
            sparekey::audit::display_login(user)
        ),
    );
    PamResultCode::PAM_AUTHINFO_UNAVAIL
}

/// A failure from libpam passed on, never turned into success or "ignore me".
pub fn failure(code: PamResultCode) -> PamResultCode {
    match code {
        PamResultCode::PAM_SUCCESS | PamResultCode::PAM_IGNORE => PamResultCode::PAM_SERVICE_ERR,
        PamResultCode::PAM_CONV_AGAIN => PamResultCode::PAM_INCOMPLETE,
        other => other,
    }
}

/// The token as a code, if it has the shape of one.
fn code_shaped(token: &Secret) -> Option<&str> {
    let s = std::str::from_utf8(token).ok()?;
    Passcode::parse(s).is_ok().then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::Kind;
    use crate::options::Options;
    use sparekey::{
        CodeRequest, DeviceKind, DigestKey, ManualClock, NewUser, Policy, Status, UserUpdate,
    };
    use std::sync::Arc;

    const T0: i64 = 1_800_000_000;

    struct Fixture {
        store: Store,
        clock: ManualClock,
        admin: Context,
    }

    impl Fixture {
        fn new() -> Self {
            let clock = ManualClock::at(T0);
            let store = Store::in_memory(
                DigestKey::from_bytes([7; 32]),
                Policy::default(),
                Arc::new(clock.clone()),
            )
            .unwrap();
            Fixture {
                store,
                clock,
                admin: Context::new("cli:test"),
            }
        }

        fn user(&mut self, name: &str, aliases: &[&str], status: Status, device: bool) {
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
            if device {
                self.store
                    .add_device(name, DeviceKind::Phone, None, &self.admin)
                    .unwrap();
            }
        }

        fn code(&mut self, name: &str, uses: u32, valid_secs: u64) -> String {
            let issued = self
                .store
                .generate_codes(
                    name,
                    CodeRequest {
                        reuse_count: uses,
                        valid_secs,
                        ..CodeRequest::default()
                    },
                    &self.admin,
                )
                .unwrap();
            issued.codes[0].code.expose().to_owned()
        }

        fn auth(
            &mut self,
            args: &[&str],
            user: &str,
            conv: &mut FakeConv,
        ) -> (PamResultCode, Vec<String>) {
            let settings = Options::parse(args.iter().map(|a| a.as_bytes()))
                .unwrap()
                .settings(None)
                .unwrap();
            let log = Log::new("sshd", Kind::Auth);
            let attempt = Attempt {
                service: "sshd",
                user,
                rhost: Some("192.0.2.7"),
                tty: Some("ssh"),
            };
            let code = authenticate(&mut self.store, &settings, &attempt, conv, &log);
            let lines = log.kept.borrow().clone();
            (code, lines)
        }

        fn acct(&mut self, args: &[&str], user: &str) -> PamResultCode {
            let settings = Options::parse(args.iter().map(|a| a.as_bytes()))
                .unwrap()
                .settings(None)
                .unwrap();
            let log = Log::new("sshd", Kind::Account);
            let attempt = Attempt {
                service: "sshd",
                user,
                rhost: None,
                tty: None,
            };
            account(&mut self.store, &settings, &attempt, &log)
        }
    }

    /// Answers prompts from a list and counts them.
    #[derive(Default)]
    struct FakeConv {
        authtok: Option<String>,
        answers: Vec<String>,
        asked: Vec<String>,
        broken: bool,
    }

    impl FakeConv {
        fn typing(code: &str) -> Self {
            FakeConv {
                answers: vec![code.to_owned()],
                ..FakeConv::default()
            }
        }
    }

    impl Conversation for FakeConv {
        fn authtok(&mut self) -> Result<Option<Secret>, PamResultCode> {
            Ok(self
                .authtok
                .as_ref()
                .map(|t| Zeroizing::new(t.as_bytes().to_vec())))
        }
        fn ask_secret(&mut self, prompt: &str) -> Result<Secret, PamResultCode> {
            self.asked.push(prompt.to_owned());
            if self.broken || self.answers.is_empty() {
                return Err(PamResultCode::PAM_CONV_ERR);
            }
            Ok(Zeroizing::new(self.answers.remove(0).into_bytes()))
        }
    }

    #[test]
    fn a_valid_code_is_accepted_once_and_never_logged() {
        let mut f = Fixture::new();
        f.user("alice", &[], Status::Active, true);
        let code = f.code("alice", 1, 3600);
        let mut conv = FakeConv::typing(&code);
        let (rc, lines) = f.auth(&[], "alice", &mut conv);
        assert_eq!(rc, PamResultCode::PAM_SUCCESS);
        assert_eq!(conv.asked, ["Bypass code: "]);
        assert!(
            lines[0].starts_with("pam_sparekey(sshd:auth): user=alice outcome=accept code_id="),
            "{lines:?}"
        );
        assert!(
            lines[0].ends_with("uses_remaining=0 rhost=192.0.2.7 tty=ssh"),
            "{lines:?}"
        );
        let (rc, lines) = f.auth(&[], "alice", &mut FakeConv::typing(&code));
        assert_eq!(rc, PamResultCode::PAM_AUTH_ERR);
        assert!(
            lines[0].contains("outcome=reject reason=wrong_code"),
            "{lines:?}"
        );
        assert!(!lines.iter().any(|l| l.contains(&code)));

        let audit = f.store.audit(&Default::default()).unwrap();
        let auth: Vec<_> = audit.iter().filter(|e| e.action == "auth").collect();
        assert_eq!(auth.len(), 2);
        assert_eq!(auth[0].actor, "pam:sshd");
        assert_eq!(auth[0].outcome, "accept");
        assert_eq!(auth[0].source.address.as_deref(), Some("192.0.2.7"));
        assert_eq!(auth[0].source.tty.as_deref(), Some("ssh"));
    }

    #[test]
    fn refusals_are_auth_err_after_a_prompt() {
        let mut f = Fixture::new();
        f.user("exp", &[], Status::Active, true);
        f.user("off", &[], Status::Disabled, true);
        f.user("new", &[], Status::Active, false);
        let expired = f.code("exp", 1, 60);
        f.clock.advance(61);
        for (user, code, reason) in [
            ("exp", expired.as_str(), "expired"),
            ("off", "123456789", "disabled"),
            ("new", "123456789", "not_enrolled"),
        ] {
            let mut conv = FakeConv::typing(code);
            let (rc, lines) = f.auth(&[], user, &mut conv);
            assert_eq!(rc, PamResultCode::PAM_AUTH_ERR, "{user}");
            assert_eq!(conv.asked.len(), 1, "{user} must be prompted like anyone");
            assert!(lines[0].contains(&format!("reason={reason}")), "{lines:?}");
        }
    }

    #[test]
    fn the_lockout_threshold_locks_and_then_refuses_a_right_code() {
        let mut f = Fixture::new();
        f.user("bob", &[], Status::Active, true);
        let code = f.code("bob", 1, 3600);
        for i in 0..10 {
            let (rc, lines) = f.auth(&[], "bob", &mut FakeConv::typing("000000000"));
            assert_eq!(rc, PamResultCode::PAM_AUTH_ERR);
            assert_eq!(
                lines.iter().any(|l| l.contains("outcome=locked_out")),
                i == 9
            );
        }
        let (rc, lines) = f.auth(&[], "bob", &mut FakeConv::typing(&code));
        assert_eq!(rc, PamResultCode::PAM_AUTH_ERR);
        assert!(lines[0].contains("reason=locked_out"));
        assert_eq!(f.acct(&[], "bob"), PamResultCode::PAM_PERM_DENIED);
    }

    #[test]
    fn bypass_users_pass_without_a_prompt_unless_denied() {
        let mut f = Fixture::new();
        f.user("carol", &[], Status::Bypass, false);
        let mut conv = FakeConv::default();
        let (rc, lines) = f.auth(&[], "carol", &mut conv);
        assert_eq!(rc, PamResultCode::PAM_SUCCESS);
        assert!(conv.asked.is_empty());
        assert!(lines[0].contains("outcome=bypass"), "{lines:?}");
        let mut conv = FakeConv::typing("123456789");
        let (rc, lines) = f.auth(&["bypass_status=deny"], "carol", &mut conv);
        assert_eq!(rc, PamResultCode::PAM_AUTH_ERR);
        assert_eq!(conv.asked.len(), 1);
        assert!(lines[0].contains("reason=bypass_denied"), "{lines:?}");
        // The audit tells the two apart: let through, and refused.
        let audit = f.store.audit(&Default::default()).unwrap();
        let auth: Vec<(&str, Option<&str>)> = audit
            .iter()
            .filter(|e| e.action == "auth")
            .map(|e| (e.outcome.as_str(), e.reason.as_deref()))
            .collect();
        assert_eq!(auth, [("bypass", None), ("reject", Some("bypass_denied"))]);
    }

    #[test]
    fn unknown_users_are_denied_after_a_prompt_or_ignored_without_one() {
        let mut f = Fixture::new();
        let mut conv = FakeConv::typing("123456789");
        let (rc, _) = f.auth(&[], "nobody", &mut conv);
        assert_eq!(rc, PamResultCode::PAM_USER_UNKNOWN);
        assert_eq!(conv.asked.len(), 1);
        let mut conv = FakeConv::default();
        let (rc, lines) = f.auth(&["unknown_user=ignore"], "nobody", &mut conv);
        assert_eq!(rc, PamResultCode::PAM_IGNORE);
        assert!(conv.asked.is_empty());
        assert!(
            lines[0].contains("outcome=ignore reason=unknown_user"),
            "{lines:?}"
        );
        assert_eq!(f.acct(&[], "nobody"), PamResultCode::PAM_USER_UNKNOWN);
        assert_eq!(
            f.acct(&["unknown_user=ignore"], "nobody"),
            PamResultCode::PAM_IGNORE
        );
    }

    #[test]
    fn trashed_users_are_refused_even_when_unknown_users_are_ignored() {
        let mut f = Fixture::new();
        f.user("dave", &[], Status::Active, true);
        let code = f.code("dave", 1, 3600);
        f.store.trash_user("dave", &f.admin.clone()).unwrap();
        let (rc, lines) = f.auth(
            &["unknown_user=ignore"],
            "dave",
            &mut FakeConv::typing(&code),
        );
        assert_eq!(rc, PamResultCode::PAM_AUTH_ERR);
        assert!(lines[0].contains("reason=trashed"), "{lines:?}");
        assert_eq!(
            f.acct(&["unknown_user=ignore"], "dave"),
            PamResultCode::PAM_PERM_DENIED
        );
    }

    #[test]
    fn account_management_follows_the_status() {
        let mut f = Fixture::new();
        f.user("a", &["a@example.com"], Status::Active, true);
        f.user("b", &[], Status::Bypass, false);
        f.user("d", &[], Status::Disabled, true);
        assert_eq!(f.acct(&[], "a"), PamResultCode::PAM_SUCCESS);
        assert_eq!(f.acct(&[], "A@Example.com"), PamResultCode::PAM_SUCCESS);
        assert_eq!(f.acct(&[], "b"), PamResultCode::PAM_SUCCESS);
        assert_eq!(f.acct(&[], "d"), PamResultCode::PAM_PERM_DENIED);
        f.store
            .update_user(
                "d",
                UserUpdate {
                    status: Some(Status::Active),
                    ..UserUpdate::default()
                },
                &f.admin.clone(),
            )
            .unwrap();
        assert_eq!(f.acct(&[], "d"), PamResultCode::PAM_SUCCESS);
    }

    #[test]
    fn use_first_pass_takes_the_token_and_never_prompts() {
        let mut f = Fixture::new();
        f.user("erin", &[], Status::Active, true);
        let code = f.code("erin", 2, 3600);
        let mut conv = FakeConv {
            authtok: Some(code.clone()),
            ..FakeConv::default()
        };
        let (rc, _) = f.auth(&["use_first_pass"], "erin", &mut conv);
        assert_eq!(rc, PamResultCode::PAM_SUCCESS);
        assert!(conv.asked.is_empty());
        // A password left by an earlier module is refused without counting as a failure.
        let mut conv = FakeConv {
            authtok: Some("correct horse".into()),
            ..FakeConv::default()
        };
        let (rc, lines) = f.auth(&["use_first_pass"], "erin", &mut conv);
        assert_eq!(rc, PamResultCode::PAM_AUTH_ERR);
        assert!(conv.asked.is_empty());
        assert!(lines[0].contains("reason=authtok_not_a_code"), "{lines:?}");
        assert_eq!(f.store.find_user("erin").unwrap().failed_attempts, 0);
        let (rc, _) = f.auth(&["use_first_pass"], "erin", &mut FakeConv::default());
        assert_eq!(rc, PamResultCode::PAM_AUTH_ERR);
    }

    #[test]
    fn try_first_pass_asks_when_the_token_is_not_a_good_code() {
        let mut f = Fixture::new();
        f.user("fay", &[], Status::Active, true);
        let code = f.code("fay", 0, 3600);
        for token in [None, Some("hunter2"), Some("111111111")] {
            let mut conv = FakeConv {
                authtok: token.map(str::to_owned),
                answers: vec![code.clone()],
                ..FakeConv::default()
            };
            let (rc, _) = f.auth(&["try_first_pass"], "fay", &mut conv);
            assert_eq!(rc, PamResultCode::PAM_SUCCESS, "{token:?}");
            assert_eq!(conv.asked.len(), 1, "{token:?}");
        }
        let mut conv = FakeConv {
            authtok: Some(code.clone()),
            ..FakeConv::default()
        };
        assert_eq!(
            f.auth(&["try_first_pass"], "fay", &mut conv).0,
            PamResultCode::PAM_SUCCESS
        );
        assert!(conv.asked.is_empty());
    }

    #[test]
    fn a_broken_conversation_is_conv_err() {
        let mut f = Fixture::new();
        f.user("gus", &[], Status::Active, true);
        let mut conv = FakeConv {
            broken: true,
            ..FakeConv::default()
        };
        assert_eq!(f.auth(&[], "gus", &mut conv).0, PamResultCode::PAM_CONV_ERR);
    }

    #[test]
    fn aliases_log_in_as_their_user() {
        let mut f = Fixture::new();
        f.user("hal", &["hal@example.com"], Status::Active, true);
        let code = f.code("hal", 1, 3600);
        let (rc, _) = f.auth(&[], "HAL@example.com", &mut FakeConv::typing(&code));
        assert_eq!(rc, PamResultCode::PAM_SUCCESS);
    }

    #[test]
    fn libpam_failures_never_become_success() {
        assert_eq!(
            failure(PamResultCode::PAM_SUCCESS),
            PamResultCode::PAM_SERVICE_ERR
        );
        assert_eq!(
            failure(PamResultCode::PAM_IGNORE),
            PamResultCode::PAM_SERVICE_ERR
        );
        assert_eq!(
            failure(PamResultCode::PAM_CONV_ERR),
            PamResultCode::PAM_CONV_ERR
        );
    }
}
