//! The data model: users with aliases, devices, bypass code metadata, and the parsed
//! forms of names that arrive from outside.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::random;

/// At most this many aliases per user, as in Duo.
pub const MAX_ALIASES: usize = 8;
/// Longest username or alias accepted, in bytes.
pub const MAX_NAME_LEN: usize = 256;
/// Longest free-text field (real name, email, notes, device label), in bytes.
pub const MAX_TEXT_LEN: usize = 1024;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// A new random identifier.
            pub fn generate() -> Result<Self> {
                random::id($prefix).map($name)
            }

            /// Wraps an identifier read back from the store or typed by an admin.
            pub fn from_string(s: impl Into<String>) -> Self {
                $name(s.into())
            }

            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// Whether `s` has the shape of this kind of identifier.
            pub fn looks_like(s: &str) -> bool {
                random::looks_like_id($prefix, s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// A user's stable random identifier (`U` and 19 base-32 characters).
    UserId,
    'U'
);
id_type!(
    /// A device's identifier (`D...`).
    DeviceId,
    'D'
);
id_type!(
    /// A bypass code's identifier (`C...`): the only way a code is ever named after it is issued.
    CodeId,
    'C'
);

/// A user's status, as in Duo.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Must present a second factor (here: a bypass code).
    Active,
    /// Not asked for a second factor; each front end decides whether that allows or denies.
    Bypass,
    /// May not log in.
    Disabled,
}

impl Status {
    /// The lower-case name used in the store, the CLI and exports.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Bypass => "bypass",
            Status::Disabled => "disabled",
        }
    }
}

impl FromStr for Status {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "active" => Ok(Status::Active),
            "bypass" => Ok(Status::Bypass),
            "disabled" => Ok(Status::Disabled),
            _ => Err(Error::invalid(
                "status",
                "expected active, bypass or disabled",
            )),
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kind of an enrolled authenticator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// A phone with an authenticator app, SMS or calls.
    Phone,
    /// A hardware OTP token.
    Token,
    /// A WebAuthn security key.
    Webauthn,
    /// Anything else.
    Other,
}

impl DeviceKind {
    /// The lower-case name used in the store, the CLI and exports.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceKind::Phone => "phone",
            DeviceKind::Token => "token",
            DeviceKind::Webauthn => "webauthn",
            DeviceKind::Other => "other",
        }
    }
}

impl FromStr for DeviceKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "phone" => Ok(DeviceKind::Phone),
            "token" => Ok(DeviceKind::Token),
            "webauthn" => Ok(DeviceKind::Webauthn),
            "other" => Ok(DeviceKind::Other),
            _ => Err(Error::invalid(
                "kind",
                "expected phone, token, webauthn or other",
            )),
        }
    }
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How logins are matched to usernames and aliases.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Normalization {
    /// Exact match.
    None,
    /// Lower-case, and `DOMAIN\name` and `name@domain` both match `name` (Duo's "simple").
    #[default]
    Simple,
}

impl Normalization {
    /// The name stored in the store's metadata and written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Normalization::None => "none",
            Normalization::Simple => "simple",
        }
    }
}

/// A username or alias as an admin wrote it: non-empty, at most [`MAX_NAME_LEN`] bytes, no
/// control characters, no surrounding whitespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Username(String);

impl Username {
    /// Parses a name given by an admin or a client.
    pub fn parse(s: &str) -> Result<Self> {
        let t = s.trim();
        if t.is_empty() {
            return Err(Error::invalid("username", "must not be empty"));
        }
        if t.len() > MAX_NAME_LEN {
            return Err(Error::invalid(
                "username",
                format!("longer than {MAX_NAME_LEN} bytes"),
            ));
        }
        if t.chars().any(char::is_control) {
            return Err(Error::invalid("username", "contains a control character"));
        }
        Ok(Username(t.to_owned()))
    }

    /// The name as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key this name is stored and looked up under.
    pub fn key(&self, n: Normalization) -> LoginKey {
        LoginKey::of(&self.0, n)
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The normalised form of a username or alias; unique across all users.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LoginKey(String);

impl LoginKey {
    fn of(name: &str, n: Normalization) -> Self {
        match n {
            Normalization::None => LoginKey(name.to_owned()),
            Normalization::Simple => {
                let after_domain = name.rsplit_once('\\').map_or(name, |(_, user)| user);
                let before_at = after_domain
                    .split_once('@')
                    .map_or(after_domain, |(user, _)| user);
                // An empty local part ("@example.com") stays as written rather than matching "".
                let base = if before_at.is_empty() {
                    name
                } else {
                    before_at
                };
                LoginKey(base.to_lowercase())
            }
        }
    }

    /// Normalises a login as a client sent it; `None` if it could never be a name.
    pub fn from_login(login: &str, n: Normalization) -> Option<Self> {
        Username::parse(login).ok().map(|u| u.key(n))
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A lockout that only the system sets and an admin (or the auto-unlock timer) clears.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lockout {
    /// Why (`failed_attempts`).
    pub reason: String,
    /// When, in Unix seconds.
    pub since: i64,
}

/// A user and everything the verifier needs to know about them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Random, stable identifier.
    pub id: UserId,
    /// The primary login name.
    pub username: Username,
    /// Other names the user may log in with (at most [`MAX_ALIASES`]).
    pub aliases: Vec<Username>,
    /// Full name.
    pub realname: Option<String>,
    /// Email address.
    pub email: Option<String>,
    /// Free text for admins.
    pub notes: Option<String>,
    /// Active, bypass or disabled.
    pub status: Status,
    /// Set after too many consecutive failures.
    pub lockout: Option<Lockout>,
    /// Consecutive failed verifications since the last success or unlock.
    pub failed_attempts: u32,
    /// Creation time, Unix seconds.
    pub created_at: i64,
    /// Last accepted verification, Unix seconds.
    pub last_login: Option<i64>,
    /// When the user was moved to the trash, Unix seconds.
    pub trashed_at: Option<i64>,
}

impl User {
    /// Every login key the user answers to, the username first.
    pub fn login_keys(&self, n: Normalization) -> Vec<LoginKey> {
        std::iter::once(&self.username)
            .chain(&self.aliases)
            .map(|u| u.key(n))
            .collect()
    }
}

/// An enrolled authenticator. A user with none is not enrolled and cannot use bypass codes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// Identifier.
    pub id: DeviceId,
    /// The owning user.
    pub user_id: UserId,
    /// What it is.
    pub kind: DeviceKind,
    /// A label for admins ("work phone").
    pub name: Option<String>,
    /// Creation time, Unix seconds.
    pub created_at: i64,
}

/// A stored bypass code: its metadata and keyed digest, never the code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodeRecord {
    /// Identifier.
    pub id: CodeId,
    /// The owning user.
    pub user_id: UserId,
    /// `HMAC-SHA256(key, "sparekey/v1" || user_id || 0x00 || code)`.
    pub digest: [u8; 32],
    /// Which digest scheme produced `digest` (1 is the one above).
    pub scheme: u32,
    /// Creation time, Unix seconds.
    pub created_at: i64,
    /// Who issued it (the audit actor).
    pub created_by: String,
    /// Last second at which it is no longer valid (valid while `now < expires_at`); `None` never expires.
    pub expires_at: Option<i64>,
    /// Uses left; `None` is unlimited.
    pub uses_remaining: Option<u32>,
    /// Uses as issued; 0 is unlimited.
    pub reuse_count: u32,
}

impl CodeRecord {
    /// Whether the code has expired at `now` (expiry is exact to the second).
    pub fn expired_at(&self, now: i64) -> bool {
        self.expires_at.is_some_and(|e| now >= e)
    }

    /// The code's metadata, for listing.
    pub fn info(&self) -> CodeInfo {
        CodeInfo {
            id: self.id.clone(),
            user_id: self.user_id.clone(),
            created_at: self.created_at,
            created_by: self.created_by.clone(),
            expires_at: self.expires_at,
            uses_remaining: self.uses_remaining,
            reuse_count: self.reuse_count,
        }
    }
}

/// What may be shown about a code after it was issued: everything but the code.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeInfo {
    /// Identifier.
    pub id: CodeId,
    /// The owning user.
    pub user_id: UserId,
    /// Creation time, Unix seconds.
    pub created_at: i64,
    /// Who issued it.
    pub created_by: String,
    /// Expiry, Unix seconds; `None` never expires.
    pub expires_at: Option<i64>,
    /// Uses left; `None` is unlimited.
    pub uses_remaining: Option<u32>,
    /// Uses as issued; 0 is unlimited.
    pub reuse_count: u32,
}

/// Checks an optional free-text field: at most [`MAX_TEXT_LEN`] bytes and no NUL.
pub(crate) fn check_text(field: &'static str, value: Option<String>) -> Result<Option<String>> {
    match value {
        None => Ok(None),
        Some(v) if v.is_empty() => Ok(None),
        Some(v) if v.len() > MAX_TEXT_LEN => Err(Error::invalid(
            field,
            format!("longer than {MAX_TEXT_LEN} bytes"),
        )),
        Some(v) if v.contains('\0') => Err(Error::invalid(field, "contains a NUL byte")),
        Some(v) => Ok(Some(v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_normalisation_strips_domain_and_realm_and_lowercases() {
        let n = Normalization::Simple;
        for login in [
            "Alice",
            "EXAMPLE\\alice",
            "alice@example.com",
            "CORP\\ALICE@corp.example",
        ] {
            assert_eq!(
                LoginKey::from_login(login, n).unwrap().as_str(),
                "alice",
                "{login}"
            );
        }
        assert_eq!(
            LoginKey::from_login("Alice@x", Normalization::None)
                .unwrap()
                .as_str(),
            "Alice@x"
        );
        assert_eq!(LoginKey::from_login("@x", n).unwrap().as_str(), "@x");
    }

    #[test]
    fn bad_names_are_refused() {
        assert!(Username::parse("").is_err());
        assert!(Username::parse("   ").is_err());
        assert!(Username::parse("a\0b").is_err());
        assert!(Username::parse("a\nb").is_err());
        assert!(Username::parse(&"x".repeat(MAX_NAME_LEN + 1)).is_err());
        assert_eq!(Username::parse(" bob ").unwrap().as_str(), "bob");
    }

    #[test]
    fn status_and_kind_parse() {
        assert_eq!("Bypass".parse::<Status>().unwrap(), Status::Bypass);
        assert!("locked".parse::<Status>().is_err());
        assert_eq!(
            "webauthn".parse::<DeviceKind>().unwrap(),
            DeviceKind::Webauthn
        );
        assert!("pager".parse::<DeviceKind>().is_err());
    }
}
