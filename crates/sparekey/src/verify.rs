//! The decision on one login attempt. Front ends translate their world into
//! `(login, passcode, context)` and the [`Verdict`] back into theirs.

use serde::Serialize;
use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::audit::{Context, display_login, outcome};
use crate::error::Result;
use crate::model::{CodeId, CodeRecord, LoginKey, Status, User, UserId, Username};
use crate::passcode::Passcode;
use crate::store::{Env, Tx, audit, event};

/// What the front end should do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// A code matched and one of its uses was taken.
    Accept,
    /// The user is in bypass status and the front end lets such users through
    /// ([`Context::allow_bypass`]): no code was asked for or consumed.
    Bypass,
    /// Refused.
    Reject(Reason),
}

/// Why an attempt was refused. For logs and audit only: what a client is told must not
/// distinguish these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// No user has this name or alias (or the user is in the trash).
    UnknownUser,
    /// The user's status is disabled.
    Disabled,
    /// Too many consecutive failures; an admin must unlock (or the timer runs out).
    LockedOut,
    /// The user has no enrolled device, so bypass codes do not apply.
    NotEnrolled,
    /// The code matches none of the user's live codes (wrong, used up, revoked or malformed).
    WrongCode,
    /// The code matched one that has expired.
    Expired,
    /// The user is in bypass status and this front end does not let bypass users through.
    BypassDenied,
}

impl Reason {
    /// The snake_case name used in audit records and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::UnknownUser => "unknown_user",
            Reason::Disabled => "disabled",
            Reason::LockedOut => "locked_out",
            Reason::NotEnrolled => "not_enrolled",
            Reason::WrongCode => "wrong_code",
            Reason::Expired => "expired",
            Reason::BypassDenied => "bypass_denied",
        }
    }
}

/// The answer to one attempt, with what the front end may log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// Accept, bypass or reject.
    pub decision: Decision,
    /// The user, when one was found.
    pub user_id: Option<UserId>,
    /// The user's username, when one was found.
    pub username: Option<String>,
    /// The code that was used, on accept.
    pub code_id: Option<CodeId>,
    /// Uses the code has left after this one (`None`: unlimited or no code).
    pub uses_remaining: Option<u32>,
    /// Whether this attempt locked the user out.
    pub locked_now: bool,
}

impl Verdict {
    /// Whether the attempt was accepted with a code.
    pub fn accepted(&self) -> bool {
        self.decision == Decision::Accept
    }

    /// The reason name for logs: `accept`, `bypass` or the reject reason.
    pub fn reason_str(&self) -> &'static str {
        match self.decision {
            Decision::Accept => "accept",
            Decision::Bypass => "bypass",
            Decision::Reject(r) => r.as_str(),
        }
    }
}

/// How far the recorded time of a user's last login may lag behind the truth.
const LAST_LOGIN_RESOLUTION_SECS: i64 = 60;

/// Stands in for the user id when there is no user (or the user is in the trash), so that
/// an unknown login reads, digests, compares and writes as a known one does.
const NO_USER: &str = "U0000000000000000000";

/// Every attempt compares its digest with at least this many (the user's codes, then
/// stand-ins that can never match), so that the comparisons tell neither whether there is
/// a user nor how many codes they hold, up to a generation's worth.
const COMPARE_FLOOR: usize = crate::store::MAX_CODES_PER_CALL;

/// Compared with when a user has fewer codes than [`COMPARE_FLOOR`]; a match with it is
/// masked out.
const STAND_IN_DIGEST: [u8; 32] = [0; 32];

/// Decides and records one attempt inside `tx` (which the caller commits). `key` is
/// `login`'s [`LoginKey`] (`None` where it can be none), made once by the caller.
///
/// Every refusal costs the same work as a wrong code, so that its time tells an observer
/// nothing about the account: one login lookup, one user read, one digest, whether the
/// user has a device, the codes and at least [`COMPARE_FLOOR`] constant-time
/// comparisons, one write (a known user's failure counter, or
/// [`Tx::count_unknown_attempt`] for a login that names no one), and the audit event with
/// the true reason. For a login that names no one, the rows read are those of the user
/// whose login comes next where the backend offers one
/// ([`Tx::user_id_by_login_or_next`]): as cold in the cache as a known user's, where a
/// stand-in's would always be warm (that alone made unknown logins 5 to 11 us faster).
pub(crate) fn verify_in(
    tx: &mut dyn Tx,
    env: &Env<'_>,
    login: &str,
    key: Option<&LoginKey>,
    passcode: &str,
    ctx: &Context,
) -> Result<Verdict> {
    let no_user = UserId::from_string(NO_USER);
    let seek = match key {
        Some(key) => tx.seek_user(key)?,
        None => None,
    };
    // For a login that names no one, the rows read are another user's (or none): read
    // for their cost only, and never matched against (the digest is the stand-in's).
    let (found, enrolled, codes) = match seek {
        Some(s) => {
            let codes = tx.codes(&s.user.id)?;
            (Some(s.user).filter(|_| s.exact), s.enrolled, codes)
        }
        None => {
            let (found, devices) = tx.user_and_device_count(&no_user)?;
            (found, devices > 0, tx.codes(&no_user)?)
        }
    };
    let subject = found.as_ref().map_or(&no_user, |u| &u.id).clone();
    let parsed = Passcode::parse(passcode).ok();
    // One digest on every path: over the parsed code, or over the raw input for malformed
    // input (which then can never match), under the user's id or the stand-in.
    let digest_input = parsed
        .as_ref()
        .map_or(passcode.as_bytes(), |p| p.expose().as_bytes());
    let digest = env.key.digest(&subject, digest_input);
    let matched = compare(&codes, &digest).filter(|_| parsed.is_some() && found.is_some());

    let Some(mut user) = found.filter(|u| u.trashed_at.is_none()) else {
        // No row of theirs to count a failure on (a trashed user's is left as it is).
        tx.count_unknown_attempt(&stand_in(&no_user)?)?;
        let reason = Some(Reason::UnknownUser.as_str().to_owned());
        let mut e = event(env, ctx, "auth", None, None, outcome::REJECT, reason, None);
        // No user to name: the login as sent, fit for the record.
        e.username = Some(display_login(login));
        tx.append_audit(&e)?;
        return Ok(reject(None, Reason::UnknownUser));
    };

    let verdict = decide(
        tx,
        env,
        &mut user,
        &codes,
        matched,
        enrolled,
        ctx.allow_bypass,
    )?;
    let outcome = match verdict.decision {
        Decision::Accept => outcome::ACCEPT,
        Decision::Bypass => outcome::BYPASS,
        Decision::Reject(_) => outcome::REJECT,
    };
    let reason = match verdict.decision {
        Decision::Reject(r) => Some(r.as_str().to_owned()),
        _ => None,
    };
    audit(
        tx,
        env,
        ctx,
        "auth",
        Some(&user),
        verdict.code_id.as_ref(),
        outcome,
        reason,
        None,
    )?;
    if verdict.locked_now {
        let detail = format!("failed_attempts={}", user.failed_attempts);
        audit(
            tx,
            env,
            ctx,
            "user.lockout",
            Some(&user),
            None,
            outcome::OK,
            Some("failed_attempts".into()),
            Some(detail),
        )?;
    }
    Ok(verdict)
}

/// The index of the code whose digest is `digest`, comparing with every code and then
/// stand-ins up to [`COMPARE_FLOOR`], in constant time and without an early exit.
fn compare(codes: &[CodeRecord], digest: &[u8; 32]) -> Option<usize> {
    let mut found = subtle::Choice::from(0);
    let mut index = 0u64;
    for i in 0..codes.len().max(COMPARE_FLOOR) {
        let (candidate, real) = match codes.get(i) {
            Some(c) => (&c.digest, 1u8),
            None => (&STAND_IN_DIGEST, 0u8),
        };
        let eq = difference(candidate, digest).ct_eq(&0) & subtle::Choice::from(real);
        index.conditional_assign(&(i as u64), eq);
        found |= eq;
    }
    bool::from(found).then_some(index as usize)
}

/// Zero exactly when `a` and `b` are equal: every byte of both read, with no branch on
/// them. Four words folded and then one constant-time test (`ct_eq`, behind its
/// optimisation barrier) cost a tenth of a byte-by-byte `ct_eq`, which puts each of the
/// 32 bytes through the barrier.
fn difference(a: &[u8; 32], b: &[u8; 32]) -> u64 {
    let word = |d: &[u8; 32], i: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&d[i * 8..i * 8 + 8]);
        u64::from_ne_bytes(w)
    };
    (0..4).fold(0, |acc, i| acc | (word(a, i) ^ word(b, i)))
}

/// The user a login that names no one is counted against: the stand-in id, which no
/// user has.
fn stand_in(id: &UserId) -> Result<User> {
    Ok(User {
        id: id.clone(),
        username: Username::parse("unknown")?,
        aliases: Vec::new(),
        realname: None,
        email: None,
        notes: None,
        status: Status::Active,
        lockout: None,
        failed_attempts: 0,
        created_at: 0,
        last_login: None,
        trashed_at: None,
    })
}

fn reject(user: Option<&User>, reason: Reason) -> Verdict {
    Verdict {
        decision: Decision::Reject(reason),
        user_id: user.map(|u| u.id.clone()),
        username: user.map(|u| u.username.to_string()),
        code_id: None,
        uses_remaining: None,
        locked_now: false,
    }
}

/// Whether a user's lockout holds at `env.now` (it may have run out, if auto-unlock is on).
fn locked_out(user: &User, env: &Env<'_>) -> bool {
    let auto = env.policy.lockout_auto_unlock_secs;
    user.lockout
        .as_ref()
        .is_some_and(|lock| auto == 0 || env.now < lock.since.saturating_add(auto as i64))
}

/// Where an account stands, without an attempt: what a front end asks before prompting
/// (PAM's account management, a bypass user who needs no prompt).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Account {
    /// No user has this name or alias.
    Unknown,
    /// The user is in the trash.
    Trashed,
    /// The user's status is disabled.
    Disabled,
    /// The user is locked out.
    LockedOut,
    /// The user is in bypass status.
    Bypass,
    /// The user is active; `enrolled` says whether they have a device (and so can use a code).
    Active {
        /// Whether the user has at least one device.
        enrolled: bool,
    },
}

/// Looks up where an account stands. Changes nothing and audits nothing.
pub(crate) fn account_in(tx: &mut dyn Tx, env: &Env<'_>, login: &str) -> Result<Account> {
    let Some(key) = LoginKey::from_login(login, env.normalization()) else {
        return Ok(Account::Unknown);
    };
    let Some(id) = tx.user_id_by_login(&key)? else {
        return Ok(Account::Unknown);
    };
    let Some(user) = tx.user(&id)? else {
        return Ok(Account::Unknown);
    };
    Ok(if user.trashed_at.is_some() {
        Account::Trashed
    } else if user.status == Status::Disabled {
        Account::Disabled
    } else if locked_out(&user, env) {
        Account::LockedOut
    } else if user.status == Status::Bypass {
        Account::Bypass
    } else {
        Account::Active {
            enrolled: tx.device_count(&user.id)? > 0,
        }
    })
}

/// What an attempt on a known user comes to, before anything is written.
enum Outcome<'c> {
    Accept(&'c CodeRecord),
    Bypass,
    Reject(Reason),
}

/// Steps 2 to 5 of DESIGN.md "Verification" for a user who exists and is not trashed,
/// once the reads and the comparison are done: decide, then write. A refusal counts a
/// failure whatever its reason (and so writes the user's row, as a wrong code does); only
/// a wrong or expired code locks the user out at the threshold.
fn decide(
    tx: &mut dyn Tx,
    env: &Env<'_>,
    user: &mut User,
    codes: &[CodeRecord],
    matched: Option<usize>,
    enrolled: bool,
    allow_bypass: bool,
) -> Result<Verdict> {
    // A lockout that has run out is cleared, and written with whatever follows.
    let mut dirty = false;
    if user.status != Status::Disabled && user.lockout.is_some() && !locked_out(user, env) {
        user.lockout = None;
        user.failed_attempts = 0;
        dirty = true;
    }
    let outcome = if user.status == Status::Disabled {
        Outcome::Reject(Reason::Disabled)
    } else if user.lockout.is_some() {
        Outcome::Reject(Reason::LockedOut)
    } else if user.status == Status::Bypass {
        if allow_bypass {
            Outcome::Bypass
        } else {
            Outcome::Reject(Reason::BypassDenied)
        }
    } else if !enrolled {
        Outcome::Reject(Reason::NotEnrolled)
    } else {
        match matched.and_then(|i| codes.get(i)) {
            Some(code) if !code.expired_at(env.now) => Outcome::Accept(code),
            Some(_) => Outcome::Reject(Reason::Expired),
            None => Outcome::Reject(Reason::WrongCode),
        }
    };

    let verdict = match outcome {
        Outcome::Accept(code) => {
            let uses_remaining = match code.uses_remaining {
                None => None,
                Some(n) if n <= 1 => {
                    tx.delete_code(&code.id)?;
                    Some(0)
                }
                Some(n) => {
                    tx.set_code_uses(&code.id, n - 1)?;
                    Some(n - 1)
                }
            };
            // The user's row is rewritten only when something changes beyond the last
            // login's time, which is kept to the minute: under load, a user logging in
            // again and again costs no page write for it.
            let stale = user
                .last_login
                .is_none_or(|t| env.now - t >= LAST_LOGIN_RESOLUTION_SECS);
            if dirty || user.failed_attempts != 0 || stale {
                user.failed_attempts = 0;
                user.last_login = Some(env.now);
                tx.update_user_state(user)?;
            }
            Verdict {
                decision: Decision::Accept,
                code_id: Some(code.id.clone()),
                uses_remaining,
                ..reject(Some(user), Reason::WrongCode)
            }
        }
        Outcome::Bypass => {
            if dirty {
                tx.update_user_state(user)?;
            }
            Verdict {
                decision: Decision::Bypass,
                ..reject(Some(user), Reason::WrongCode)
            }
        }
        Outcome::Reject(reason) => {
            user.failed_attempts = user.failed_attempts.saturating_add(1);
            let threshold = env.policy.lockout_threshold;
            let locked_now = matches!(reason, Reason::WrongCode | Reason::Expired)
                && threshold > 0
                && user.failed_attempts >= threshold;
            if locked_now {
                user.lockout = Some(crate::model::Lockout {
                    reason: "failed_attempts".into(),
                    since: env.now,
                });
            }
            tx.update_user_state(user)?;
            Verdict {
                locked_now,
                ..reject(Some(user), reason)
            }
        }
    };
    if codes.iter().any(|c| c.expired_at(env.now)) {
        tx.delete_expired_codes(Some(&user.id), env.now)?;
    }
    Ok(verdict)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::audit::{AuditEvent, AuditFilter};
    use crate::clock::ManualClock;
    use crate::config::Policy;
    use crate::digest::DigestKey;
    use crate::model::{Device, DeviceId, DeviceKind, Normalization};
    use crate::store::{
        AdminKey, Attempt, Backend, CodeRequest, NewUser, SqliteBackend, Store, UserFilter,
    };

    type Log = Arc<Mutex<Vec<&'static str>>>;
    /// A login key whose lookup fails, as a store might under an attempt.
    type FailOn = Arc<Mutex<Option<String>>>;

    /// An in-memory SQLite backend whose transactions record the name of every call.
    #[derive(Debug)]
    struct Recording {
        inner: SqliteBackend,
        log: Log,
        fail_on: FailOn,
    }

    impl Backend for Recording {
        fn begin(&mut self) -> Result<Box<dyn Tx + '_>> {
            Ok(Box::new(RecordingTx {
                inner: self.inner.begin()?,
                log: self.log.clone(),
                fail_on: self.fail_on.clone(),
            }))
        }
        fn begin_read(&mut self) -> Result<Box<dyn Tx + '_>> {
            Ok(Box::new(RecordingTx {
                inner: self.inner.begin_read()?,
                log: self.log.clone(),
                fail_on: self.fail_on.clone(),
            }))
        }
        fn normalization(&mut self) -> Result<Option<Normalization>> {
            self.inner.normalization()
        }
        fn set_normalization(&mut self, n: Normalization) -> Result<()> {
            self.inner.set_normalization(n)
        }
        fn key_check(&mut self) -> Result<Option<String>> {
            self.inner.key_check()
        }
        fn set_key_check(&mut self, value: &str) -> Result<()> {
            self.inner.set_key_check(value)
        }
        fn maintain(&mut self) -> Result<()> {
            self.inner.maintain()
        }
    }

    struct RecordingTx<'a> {
        inner: Box<dyn Tx + 'a>,
        log: Log,
        fail_on: FailOn,
    }

    /// Each method logs its name, then hands over to the real transaction.
    macro_rules! recorded {
        ($(fn $name:ident(&mut self $(, $arg:ident: $ty:ty)*) -> $ret:ty;)*) => {
            $(fn $name(&mut self $(, $arg: $ty)*) -> $ret {
                self.log.lock().unwrap().push(stringify!($name));
                self.inner.$name($($arg),*)
            })*
        };
    }

    impl Tx for RecordingTx<'_> {
        fn commit(self: Box<Self>) -> Result<()> {
            self.log.lock().unwrap().push("commit");
            self.inner.commit()
        }
        fn seek_user(&mut self, key: &LoginKey) -> Result<Option<crate::store::Seek>> {
            self.log.lock().unwrap().push("seek_user");
            if self.fail_on.lock().unwrap().as_deref() == Some(key.as_str()) {
                return Err(crate::Error::Store("injected failure".into()));
            }
            self.inner.seek_user(key)
        }
        recorded! {
            fn user_id_by_login_or_next(&mut self, key: &LoginKey) -> Result<Option<(UserId, bool)>>;
            fn savepoint(&mut self) -> Result<()>;
            fn release_savepoint(&mut self) -> Result<()>;
            fn rollback_savepoint(&mut self) -> Result<()>;
            fn user_id_by_login(&mut self, key: &LoginKey) -> Result<Option<UserId>>;
            fn user(&mut self, id: &UserId) -> Result<Option<User>>;
            fn lock_users(&mut self, keys: &[Option<LoginKey>]) -> Result<()>;
            fn insert_user(&mut self, user: &User, keys: &[LoginKey]) -> Result<()>;
            fn update_user(&mut self, user: &User, keys: &[LoginKey]) -> Result<()>;
            fn update_user_state(&mut self, user: &User) -> Result<()>;
            fn count_unknown_attempt(&mut self, stand_in: &User) -> Result<()>;
            fn delete_user(&mut self, id: &UserId) -> Result<()>;
            fn list_users(&mut self, filter: &UserFilter) -> Result<Vec<User>>;
            fn trashed_before(&mut self, t: i64) -> Result<Vec<UserId>>;
            fn devices(&mut self, user: &UserId) -> Result<Vec<Device>>;
            fn all_devices(&mut self) -> Result<Vec<Device>>;
            fn device_count(&mut self, user: &UserId) -> Result<u64>;
            fn user_and_device_count(&mut self, id: &UserId) -> Result<(Option<User>, u64)>;
            fn insert_device(&mut self, device: &Device) -> Result<()>;
            fn delete_device(&mut self, user: &UserId, id: &DeviceId) -> Result<bool>;
            fn codes(&mut self, user: &UserId) -> Result<Vec<CodeRecord>>;
            fn all_codes(&mut self) -> Result<Vec<CodeRecord>>;
            fn code(&mut self, id: &CodeId) -> Result<Option<CodeRecord>>;
            fn insert_code(&mut self, code: &CodeRecord) -> Result<()>;
            fn insert_codes(&mut self, codes: &[CodeRecord]) -> Result<()>;
            fn set_code_uses(&mut self, id: &CodeId, uses: u32) -> Result<()>;
            fn delete_code(&mut self, id: &CodeId) -> Result<bool>;
            fn delete_codes_of(&mut self, user: &UserId) -> Result<u64>;
            fn delete_expired_codes(&mut self, user: Option<&UserId>, now: i64) -> Result<u64>;
            fn append_audit(&mut self, event: &AuditEvent) -> Result<()>;
            fn append_code_events(&mut self, event: &AuditEvent, codes: &[CodeId]) -> Result<()>;
            fn import_audit(&mut self, events: &[AuditEvent]) -> Result<()>;
            fn audit(&mut self, filter: &AuditFilter) -> Result<Vec<AuditEvent>>;
            fn insert_admin_key(&mut self, key: &AdminKey, sealed_secret: &[u8]) -> Result<()>;
            fn admin_key(&mut self, ikey: &str) -> Result<Option<(AdminKey, Vec<u8>)>>;
            fn admin_keys(&mut self) -> Result<Vec<AdminKey>>;
            fn revoke_admin_key(&mut self, ikey: &str, at: i64) -> Result<bool>;
        }
    }

    const THRESHOLD: u32 = 3;

    struct Fixture {
        store: Store,
        log: Log,
        fail_on: FailOn,
        ctx: Context,
    }

    impl Fixture {
        fn new() -> Self {
            let log = Log::default();
            let fail_on = FailOn::default();
            let backend = Recording {
                inner: SqliteBackend::in_memory().unwrap(),
                log: log.clone(),
                fail_on: fail_on.clone(),
            };
            let policy = Policy {
                lockout_threshold: THRESHOLD,
                ..Policy::default()
            };
            let store = Store::with_backend(
                Box::new(backend),
                DigestKey::from_bytes([7; 32]),
                policy,
                Arc::new(ManualClock::at(1_800_000_000)),
            )
            .unwrap();
            Fixture {
                store,
                log,
                fail_on,
                ctx: Context::new("test"),
            }
        }

        /// A user with the given status, a device if `enrolled`, and one code (returned).
        fn user(&mut self, name: &str, status: Status, enrolled: bool) -> String {
            let new = NewUser {
                username: name.into(),
                status: Some(status),
                ..NewUser::default()
            };
            self.store.add_user(new, &self.ctx).unwrap();
            if enrolled {
                let phone = DeviceKind::Phone;
                self.store.add_device(name, phone, None, &self.ctx).unwrap();
            }
            let req = CodeRequest {
                reuse_count: 0,
                valid_secs: 0,
                ..CodeRequest::default()
            };
            let issued = self.store.generate_codes(name, req, &self.ctx).unwrap();
            issued.codes[0].code.expose().to_owned()
        }

        /// The store calls one attempt makes, and its decision.
        fn calls(&mut self, login: &str, code: &str) -> (Vec<&'static str>, Decision) {
            self.log.lock().unwrap().clear();
            let v = self.store.verify(login, code, &self.ctx).unwrap();
            (self.log.lock().unwrap().clone(), v.decision)
        }
    }

    /// Every account a refusal can be about, with a code that is theirs where they have one.
    fn accounts(f: &mut Fixture) -> Vec<(&'static str, String, Reason)> {
        let wrong = f.user("wendy", Status::Active, true);
        let disabled = f.user("dora", Status::Disabled, true);
        let locked = f.user("lou", Status::Active, true);
        for _ in 0..THRESHOLD {
            f.store.verify("lou", "000000000", &f.ctx).unwrap();
        }
        assert!(f.store.find_user("lou").unwrap().lockout.is_some());
        let not_enrolled = f.user("nell", Status::Active, false);
        let bypass = f.user("bea", Status::Bypass, true);
        let trashed = f.user("tom", Status::Active, true);
        f.store.trash_user("tom", &f.ctx).unwrap();
        // The wrong-code user is sent a code that is not theirs; every other account is
        // sent its own valid code, which must not help.
        let other = if wrong.starts_with('1') { "2" } else { "1" };
        vec![
            (
                "wendy",
                format!("{other}{}", &wrong[1..]),
                Reason::WrongCode,
            ),
            ("nobody", wrong.clone(), Reason::UnknownUser),
            ("tom", trashed, Reason::UnknownUser),
            ("dora", disabled, Reason::Disabled),
            ("lou", locked, Reason::LockedOut),
            ("nell", not_enrolled, Reason::NotEnrolled),
            ("bea", bypass, Reason::BypassDenied),
            ("wendy", "12ab".into(), Reason::WrongCode),
            ("bad login\u{7}", wrong, Reason::UnknownUser),
        ]
    }

    #[test]
    fn every_refusal_makes_the_store_calls_of_a_wrong_code() {
        let mut f = Fixture::new();
        let wrong_code = [
            "seek_user",
            "codes",
            "update_user_state",
            "append_audit",
            "commit",
        ];
        for (login, code, reason) in accounts(&mut f) {
            let (calls, decision) = f.calls(login, &code);
            assert_eq!(decision, Decision::Reject(reason), "{login}");
            // A login that names no one (or a trashed user) has no counter of its own:
            // its write is the store's stand-in for one.
            let calls: Vec<&str> = calls
                .into_iter()
                .map(|c| match c {
                    "count_unknown_attempt" if reason == Reason::UnknownUser => "update_user_state",
                    c => c,
                })
                .collect();
            if login == "bad login\u{7}" {
                // A login that cannot be a name is not looked up (the stand-in's rows are
                // read instead): the sender knows it is malformed, so there is nothing
                // for its time to tell.
                let mut expected = vec!["user_and_device_count"];
                expected.extend_from_slice(&wrong_code[1..]);
                assert_eq!(calls, expected, "{login}");
            } else {
                assert_eq!(calls, wrong_code, "{login} ({})", reason.as_str());
            }
        }
    }

    #[test]
    fn refusals_count_as_failures_but_consume_nothing_and_lock_only_on_codes() {
        let mut f = Fixture::new();
        let code = f.user("dora", Status::Disabled, true);
        for n in 1..=THRESHOLD + 2 {
            let (_, d) = f.calls("dora", &code);
            assert_eq!(d, Decision::Reject(Reason::Disabled));
            let u = f.store.find_user("dora").unwrap();
            assert_eq!(u.failed_attempts, n);
            assert!(
                u.lockout.is_none(),
                "a disabled user is not also locked out"
            );
        }
        assert_eq!(f.store.list_codes(Some("dora")).unwrap().len(), 1);

        // Re-enabled after those failures, one wrong code reaches the threshold.
        let up = crate::store::UserUpdate {
            status: Some(Status::Active),
            ..Default::default()
        };
        f.store.update_user("dora", up, &f.ctx).unwrap();
        let v = f.store.verify("dora", "000000000", &f.ctx).unwrap();
        assert!(v.locked_now);

        // A locked user's attempts go on counting; the lockout stays as it was.
        let before = f.store.find_user("dora").unwrap();
        let (_, d) = f.calls("dora", &code);
        assert_eq!(d, Decision::Reject(Reason::LockedOut));
        let after = f.store.find_user("dora").unwrap();
        assert_eq!(after.failed_attempts, before.failed_attempts + 1);
        assert_eq!(after.lockout, before.lockout);
        assert_eq!(f.store.list_codes(Some("dora")).unwrap().len(), 1);
    }

    #[test]
    fn a_bypass_let_through_writes_nothing_and_an_accept_still_consumes() {
        let mut f = Fixture::new();
        let code = f.user("bea", Status::Bypass, true);
        f.log.lock().unwrap().clear();
        let ctx = Context::new("test").with_bypass(true);
        let v = f.store.verify("bea", &code, &ctx).unwrap();
        assert_eq!(v.decision, Decision::Bypass);
        assert!(!f.log.lock().unwrap().contains(&"update_user_state"));
        assert_eq!(f.store.list_codes(Some("bea")).unwrap().len(), 1);

        let new = NewUser {
            username: "ann".into(),
            ..NewUser::default()
        };
        f.store.add_user(new, &f.ctx).unwrap();
        f.store
            .add_device("ann", DeviceKind::Phone, None, &f.ctx)
            .unwrap();
        let issued = f
            .store
            .generate_codes("ann", CodeRequest::default(), &f.ctx)
            .unwrap();
        let code = issued.codes[0].code.expose().to_owned();
        let (calls, d) = f.calls("ann", &code);
        assert_eq!(d, Decision::Accept);
        assert!(calls.contains(&"delete_code"));
        assert!(f.store.list_codes(Some("ann")).unwrap().is_empty());
    }

    /// One attempt with a wrong code for each login.
    fn wrong_codes<'a>(logins: &[&'a str], ctx: &'a Context) -> Vec<Attempt<'a>> {
        logins
            .iter()
            .map(|login| Attempt {
                login,
                passcode: "000000000",
                ctx,
            })
            .collect()
    }

    #[test]
    fn a_batch_runs_its_hook_once_just_before_its_one_commit() {
        let mut f = Fixture::new();
        for name in ["ann", "bob"] {
            f.user(name, Status::Active, true);
        }
        let ctx = Context::new("radius:test");
        let attempts = wrong_codes(&["ann", "bob"], &ctx);
        // A clean batch, then one whose second attempt fails and is run again.
        for fail_on in [None, Some("bob")] {
            *f.fail_on.lock().unwrap() = fail_on.map(str::to_owned);
            f.log.lock().unwrap().clear();
            let log = f.log.clone();
            f.store
                .verify_many_before_commit(&attempts, &mut || {
                    log.lock().unwrap().push("before_commit")
                })
                .unwrap();
            let log = f.log.lock().unwrap().clone();
            let at = |call: &str| log.iter().position(|c| *c == call);
            assert_eq!(log.iter().filter(|c| **c == "before_commit").count(), 1);
            assert_eq!(log.iter().filter(|c| **c == "commit").count(), 1);
            assert_eq!(at("before_commit").map(|i| i + 1), at("commit"), "{log:?}");
        }
    }

    /// A batch runs without savepoints; when one attempt fails, the whole transaction is
    /// undone and the batch run again with one savepoint per attempt: the failed attempt
    /// alone is lost, and the others are counted and audited once, not twice.
    #[test]
    fn a_failed_attempt_in_a_batch_is_undone_alone_and_the_others_count_once() {
        let mut f = Fixture::new();
        for name in ["ann", "bob", "cy"] {
            f.user(name, Status::Active, true);
        }
        let ctx = Context::new("radius:test");
        let attempts = wrong_codes(&["ann", "bob", "cy", "ann"], &ctx);

        f.log.lock().unwrap().clear();
        let out = f.store.verify_many(&attempts[..1]).unwrap();
        assert!(out[0].is_ok());
        assert!(
            !f.log.lock().unwrap().contains(&"savepoint"),
            "a batch that fails nowhere takes no savepoints"
        );

        *f.fail_on.lock().unwrap() = Some("bob".into());
        f.log.lock().unwrap().clear();
        let out = f.store.verify_many(&attempts).unwrap();
        let wrong = |r: &Result<Verdict>| {
            r.as_ref()
                .is_ok_and(|v| v.decision == Decision::Reject(Reason::WrongCode))
        };
        assert!(wrong(&out[0]) && wrong(&out[2]) && wrong(&out[3]));
        assert!(matches!(&out[1], Err(crate::Error::Store(m)) if m == "injected failure"));
        let log = f.log.lock().unwrap().clone();
        assert_eq!(
            log.iter().filter(|c| **c == "rollback_savepoint").count(),
            1
        );
        assert_eq!(log.iter().filter(|c| **c == "commit").count(), 1);
        *f.fail_on.lock().unwrap() = None;

        let failures =
            |f: &mut Fixture, name: &str| f.store.find_user(name).unwrap().failed_attempts;
        assert_eq!(failures(&mut f, "ann"), 3, "one before, two in the batch");
        assert_eq!(failures(&mut f, "bob"), 0);
        assert_eq!(failures(&mut f, "cy"), 1);
        let audited = f
            .store
            .audit(&AuditFilter {
                actor: Some("radius:test".into()),
                ..AuditFilter::default()
            })
            .unwrap();
        let count = |action: &str| audited.iter().filter(|e| e.action == action).count();
        assert_eq!(count("auth"), 4, "one before, three in the batch");
        assert_eq!(count("user.lockout"), 1, "ann reached the threshold once");
    }

    #[test]
    fn a_digest_matches_only_the_code_with_every_byte_the_same() {
        let digest: [u8; 32] = std::array::from_fn(|i| i as u8 + 1);
        assert_eq!(difference(&digest, &digest), 0);
        for byte in 0..32 {
            for bit in 0..8 {
                let mut other = digest;
                other[byte] ^= 1 << bit;
                assert_ne!(difference(&digest, &other), 0, "byte {byte}, bit {bit}");
            }
        }
        let code = |d: [u8; 32]| CodeRecord {
            id: CodeId::from_string("c"),
            user_id: UserId::from_string("u"),
            digest: d,
            scheme: 1,
            created_at: 0,
            created_by: "test".into(),
            expires_at: None,
            uses_remaining: None,
            reuse_count: 0,
        };
        let mut near = digest;
        near[31] ^= 0x80;
        let codes = [code(near), code(digest), code(near)];
        assert_eq!(compare(&codes, &digest), Some(1));
        assert_eq!(compare(&codes[..1], &digest), None);
    }

    #[test]
    fn stand_in_digests_never_match() {
        // A digest of zeros is what a missing code is compared with: it must not count.
        assert_eq!(compare(&[], &STAND_IN_DIGEST), None);
    }
}
