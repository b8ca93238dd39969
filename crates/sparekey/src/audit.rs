//! Audit events: who did what to whom, from where, and how it ended. An event names a
//! code only by its id.

use serde::{Deserialize, Serialize};

/// Where an attempt or an action came from. Front ends fill in what they know.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    /// Remote host or address (PAM_RHOST, the RADIUS client's address).
    pub address: Option<String>,
    /// Calling-Station-Id (the VPN user's address or MAC).
    pub station: Option<String>,
    /// NAS-IP-Address or NAS-Identifier.
    pub nas: Option<String>,
    /// PAM_TTY.
    pub tty: Option<String>,
}

/// Who is acting and from where; every store operation takes one and audits under it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Context {
    /// `cli:<unix user>`, `pam:<service>`, `radius:<client>`, an API key's name.
    pub actor: String,
    /// Where the request came from.
    pub source: Source,
    /// Whether this front end lets a user in bypass status through without a code (Duo's
    /// meaning of bypass). Off unless the front end turns it on, so that one that forgets
    /// denies.
    pub allow_bypass: bool,
}

impl Context {
    /// A context with no source information that does not let bypass users through.
    pub fn new(actor: impl Into<String>) -> Self {
        Context {
            actor: sanitize(&actor.into(), 128),
            source: Source::default(),
            allow_bypass: false,
        }
    }

    /// The same context, letting bypass users through or not.
    pub fn with_bypass(mut self, allow: bool) -> Self {
        self.allow_bypass = allow;
        self
    }

    /// The same context with a source.
    pub fn with_source(mut self, source: Source) -> Self {
        self.source = Source {
            address: source.address.map(|s| sanitize(&s, 256)),
            station: source.station.map(|s| sanitize(&s, 256)),
            nas: source.nas.map(|s| sanitize(&s, 256)),
            tty: source.tty.map(|s| sanitize(&s, 256)),
        };
        self
    }
}

/// How an audited event ended.
pub mod outcome {
    /// A code was accepted.
    pub const ACCEPT: &str = "accept";
    /// A verification was refused.
    pub const REJECT: &str = "reject";
    /// A user in bypass status was let through without a code.
    pub const BYPASS: &str = "bypass";
    /// An admin action succeeded.
    pub const OK: &str = "ok";
}

/// One audit record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Sequence number, assigned by the store.
    pub id: i64,
    /// Unix seconds.
    pub time: i64,
    /// Who acted.
    pub actor: String,
    /// What was done: `auth`, `user.add`, `code.generate`, ...
    pub action: String,
    /// The user concerned.
    pub user_id: Option<String>,
    /// The username concerned (or the login as given, for unknown users).
    pub username: Option<String>,
    /// The code concerned, by id.
    pub code_id: Option<String>,
    /// `accept`, `reject`, `bypass` or `ok`.
    pub outcome: String,
    /// Why, for refusals (`wrong_code`, `locked_out`, ...).
    pub reason: Option<String>,
    /// Where it came from.
    pub source: Source,
    /// Metadata of the action (counts, options). Never a code.
    pub detail: Option<String>,
}

/// Which audit events to list.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    /// Only this user (by id).
    pub user_id: Option<String>,
    /// Only this action.
    pub action: Option<String>,
    /// Only this outcome.
    pub outcome: Option<String>,
    /// Only this actor.
    pub actor: Option<String>,
    /// At or after this time.
    pub since: Option<i64>,
    /// Before this time.
    pub until: Option<i64>,
    /// At most this many, newest kept; `None` is all.
    pub limit: Option<u32>,
}

/// A login as a client sent it, fit for a log line or an audit record: sanitised, cut at 64
/// bytes, and replaced by `<redacted>` if it has the shape of a code (a user who typed the
/// code into the name field must not find it in the logs).
pub fn display_login(login: &str) -> String {
    if crate::passcode::Passcode::parse(login).is_ok() {
        "<redacted>".to_owned()
    } else {
        sanitize(login, 64)
    }
}

/// Makes a string from a client safe to store and print: control characters become `?`,
/// and it is cut at `max` bytes on a character boundary.
pub fn sanitize(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max));
    for c in s.chars() {
        let c = if c.is_control() { '?' } else { c };
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_replaces_controls_and_truncates_on_char_boundaries() {
        assert_eq!(sanitize("a\nb\0c", 10), "a?b?c");
        assert_eq!(sanitize("ééé", 5), "éé");
        assert_eq!(sanitize(&"x".repeat(10_000), 64).len(), 64);
    }
}
