//! The decision on one login attempt. Front ends translate their world into
//! `(login, passcode, context)` and the [`Verdict`] back into theirs.

use serde::Serialize;
use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::audit::{Context, display_login, outcome};
use crate::error::Result;
use crate::model::{CodeId, LoginKey, Status, User, UserId};
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

/// Stands in for the user id when there is no user, so that an unknown login costs one
/// digest like a known one.
const NO_USER: &str = "U0000000000000000000";

/// Decides and records one attempt inside `tx` (which the caller commits).
pub(crate) fn verify_in(
    tx: &mut dyn Tx,
    env: &Env<'_>,
    login: &str,
    passcode: &str,
    ctx: &Context,
) -> Result<Verdict> {
    let user = match LoginKey::from_login(login, env.normalization()) {
        Some(key) => match tx.user_id_by_login(&key)? {
            Some(id) => tx.user(&id)?,
            None => None,
        },
        None => None,
    };
    let parsed = Passcode::parse(passcode).ok();
    // One digest on every path: over the parsed code, or over the raw input for malformed
    // input (which then can never match), under the user's id or a stand-in.
    let digest_input = parsed
        .as_ref()
        .map_or(passcode.as_bytes(), |p| p.expose().as_bytes());
    let no_user = UserId::from_string(NO_USER);
    let digest = env
        .key
        .digest(user.as_ref().map_or(&no_user, |u| &u.id), digest_input);

    let Some(mut user) = user.filter(|u| u.trashed_at.is_none()) else {
        let v = reject(None, Reason::UnknownUser);
        let reason = Some(Reason::UnknownUser.as_str().to_owned());
        let mut e = event(env, ctx, "auth", None, None, outcome::REJECT, reason, None);
        // No user to name: the login as sent, fit for the record.
        e.username = Some(display_login(login));
        tx.append_audit(&e)?;
        return Ok(v);
    };

    let verdict = decide(
        tx,
        env,
        &mut user,
        digest,
        parsed.is_some(),
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

/// Steps 2 to 5 of DESIGN.md "Verification" for a user who exists and is not trashed.
fn decide(
    tx: &mut dyn Tx,
    env: &Env<'_>,
    user: &mut User,
    digest: [u8; 32],
    well_formed: bool,
    allow_bypass: bool,
) -> Result<Verdict> {
    if user.status == Status::Disabled {
        return Ok(reject(Some(user), Reason::Disabled));
    }
    if user.lockout.is_some() {
        if locked_out(user, env) {
            return Ok(reject(Some(user), Reason::LockedOut));
        }
        user.lockout = None;
        user.failed_attempts = 0;
        tx.update_user_state(user)?;
    }
    if user.status == Status::Bypass {
        if !allow_bypass {
            return Ok(reject(Some(user), Reason::BypassDenied));
        }
        return Ok(Verdict {
            decision: Decision::Bypass,
            ..reject(Some(user), Reason::WrongCode)
        });
    }
    if tx.device_count(&user.id)? == 0 {
        return Ok(reject(Some(user), Reason::NotEnrolled));
    }

    // Compare against every code, expired ones too (to tell "expired" from "wrong"), in
    // constant time and without an early exit; only the index of the match is kept.
    let codes = tx.codes(&user.id)?;
    let mut found = subtle::Choice::from(0);
    let mut index = 0u64;
    for (i, c) in codes.iter().enumerate() {
        let eq = c.digest.ct_eq(&digest);
        index.conditional_assign(&(i as u64), eq);
        found |= eq;
    }
    let found = bool::from(found) && well_formed;
    let matched = if found {
        codes.get(index as usize)
    } else {
        None
    };

    let verdict = match matched {
        Some(code) if !code.expired_at(env.now) => {
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
            if user.failed_attempts != 0 || stale {
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
        other => {
            let reason = if other.is_some() {
                Reason::Expired
            } else {
                Reason::WrongCode
            };
            user.failed_attempts = user.failed_attempts.saturating_add(1);
            let threshold = env.policy.lockout_threshold;
            let locked_now = threshold > 0 && user.failed_attempts >= threshold;
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
