//! The ceiling: sparekey-radiusd's own receive loop, packet checks and replies, with the
//! store replaced by a map held in memory. Whatever separates sparekey-radiusd from this
//! is the cost of durable, audited verification.

use std::collections::HashMap;

use sparekey::{Attempt, Decision, Reason, Verdict};
use sparekey_radiusd::writer::Verify;

/// Accepts a user's one code, rejects everything else, and writes nothing.
#[derive(Debug, Default)]
pub struct NullVerifier {
    codes: HashMap<String, String>,
}

impl NullVerifier {
    /// A verifier for these `(user, code)` pairs.
    pub fn new(users: &[(String, String)]) -> Self {
        NullVerifier {
            codes: users.iter().cloned().collect(),
        }
    }
}

impl Verify for NullVerifier {
    fn verify_many(
        &mut self,
        attempts: &[Attempt<'_>],
        before_commit: &mut dyn FnMut(),
    ) -> sparekey::Result<Vec<sparekey::Result<Verdict>>> {
        // Nothing to commit: the hook runs first.
        before_commit();
        Ok(attempts
            .iter()
            .map(|a| {
                let ok = self
                    .codes
                    .get(a.login)
                    .is_some_and(|c| c == a.passcode.trim());
                Ok(Verdict {
                    decision: if ok {
                        Decision::Accept
                    } else {
                        Decision::Reject(Reason::WrongCode)
                    },
                    user_id: None,
                    username: None,
                    code_id: None,
                    uses_remaining: None,
                    locked_now: false,
                })
            })
            .collect())
    }
}
