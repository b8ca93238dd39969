//! Syslog lines, in Linux-PAM's own form: `pam_sparekey(<service>:<kind>): <message>`, to
//! `LOG_AUTHPRIV` through `/dev/log`. Without a syslog socket the module carries on and
//! says nothing: logging must never decide a login.
//!
//! No line ever carries a code: callers pass only names, outcomes and reasons, and a
//! login shaped like a code (typed into the name field) is written as `<redacted>`.

use std::fmt::Write as _;

use sparekey::audit::sanitize;

/// The PAM function a line comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `pam_sm_authenticate`.
    Auth,
    /// `pam_sm_acct_mgmt`.
    Account,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Auth => "auth",
            Kind::Account => "account",
        }
    }
}

/// How much a line matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// The config, the key or the store could not be used; a bug.
    Err,
    /// A refusal.
    Notice,
    /// A success, an ignored user.
    Info,
    /// Only with the `debug` option.
    Debug,
}

/// Where one call's lines go.
#[derive(Debug)]
pub struct Log {
    prefix: String,
    debug: bool,
    /// Lines kept instead of sent, for unit tests.
    #[cfg(test)]
    pub kept: std::cell::RefCell<Vec<String>>,
}

impl Log {
    /// Lines for one call of `kind` in `service`.
    pub fn new(service: &str, kind: Kind) -> Self {
        Log {
            prefix: format!("pam_sparekey({}:{})", sanitize(service, 64), kind.as_str()),
            debug: false,
            #[cfg(test)]
            kept: Default::default(),
        }
    }

    /// Turns `debug` lines on or off.
    pub fn set_debug(&mut self, on: bool) {
        self.debug = on;
    }

    /// Writes one line.
    pub fn line(&self, level: Level, message: &str) {
        if level == Level::Debug && !self.debug {
            return;
        }
        let line = format!("{}: {}", self.prefix, sanitize(message, 900));
        #[cfg(test)]
        {
            self.kept.borrow_mut().push(line);
        }
        #[cfg(not(test))]
        send(level, &line);
    }

    /// The outcome of an attempt: `user=... outcome=... [reason=...] [rhost=...] [tty=...]`.
    pub fn outcome(
        &self,
        level: Level,
        user: &str,
        outcome: &str,
        reason: Option<&str>,
        extra: &Extra<'_>,
    ) {
        let mut m = format!(
            "user={} outcome={outcome}",
            value(&sparekey::audit::display_login(user))
        );
        if let Some(r) = reason {
            let _ = write!(m, " reason={r}");
        }
        if let Some(code_id) = extra.code_id {
            let _ = write!(m, " code_id={code_id}");
        }
        if let Some(n) = extra.uses_remaining {
            let _ = write!(m, " uses_remaining={n}");
        }
        if let Some(h) = extra.rhost {
            let _ = write!(m, " rhost={}", value(&sanitize(h, 128)));
        }
        if let Some(t) = extra.tty {
            let _ = write!(m, " tty={}", value(&sanitize(t, 64)));
        }
        self.line(level, &m);
    }
}

/// What else a line about an outcome may name.
#[derive(Clone, Copy, Debug, Default)]
pub struct Extra<'a> {
    /// The remote host (`PAM_RHOST`).
    pub rhost: Option<&'a str>,
    /// The terminal (`PAM_TTY`).
    pub tty: Option<&'a str>,
    /// The id of the code that was used.
    pub code_id: Option<&'a str>,
    /// Uses the code has left.
    pub uses_remaining: Option<u32>,
}

/// A value from a client as one `key=value` field: quoted if it has a space, a quote or
/// an `=`, so that a login such as `x outcome=accept` cannot forge a field.
fn value(v: &str) -> String {
    if v.is_empty() || v.contains(|c: char| c.is_whitespace() || c == '"' || c == '=') {
        format!("\"{}\"", v.replace('"', "?"))
    } else {
        v.to_owned()
    }
}

#[cfg(not(test))]
fn send(level: Level, line: &str) {
    use syslog::{Facility, Formatter3164};

    // The program's name, as pam_syslog would show it (sshd, sudo, ...).
    let process = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "pam".to_owned());
    let formatter = Formatter3164 {
        facility: Facility::LOG_AUTHPRIV,
        hostname: None,
        process,
        pid: std::process::id(),
    };
    // No syslog socket (a container, a test): carry on quietly.
    let Ok(mut logger) = syslog::unix(formatter) else {
        return;
    };
    // A stuck syslog daemon must not hold up a login: wait a little, then drop the line.
    let limit = Some(std::time::Duration::from_millis(250));
    let _ = match &logger.backend {
        syslog::LoggerBackend::Unix(s) => s.set_write_timeout(limit),
        syslog::LoggerBackend::UnixStream(s) => s.get_ref().set_write_timeout(limit),
        _ => Ok(()),
    };
    let _ = match level {
        Level::Err => logger.err(line),
        Level::Notice => logger.notice(line),
        Level::Info => logger.info(line),
        Level::Debug => logger.debug(line),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_have_pam_form_and_never_a_code_shaped_login() {
        let log = Log::new("sshd", Kind::Auth);
        log.outcome(
            Level::Notice,
            "123456789",
            "reject",
            Some("unknown_user"),
            &Extra {
                rhost: Some("192.0.2.1"),
                tty: Some("ssh"),
                ..Extra::default()
            },
        );
        log.outcome(Level::Info, "alice", "accept", None, &Extra::default());
        log.line(Level::Debug, "not shown");
        let kept = log.kept.borrow();
        assert_eq!(
            kept[0],
            "pam_sparekey(sshd:auth): user=<redacted> outcome=reject reason=unknown_user rhost=192.0.2.1 tty=ssh"
        );
        assert_eq!(
            kept[1],
            "pam_sparekey(sshd:auth): user=alice outcome=accept"
        );
        assert_eq!(kept.len(), 2);
    }

    #[test]
    fn control_characters_cannot_forge_lines() {
        let log = Log::new("su\ndo", Kind::Account);
        log.outcome(
            Level::Info,
            "eve\nfake line",
            "accept",
            None,
            &Extra::default(),
        );
        log.outcome(
            Level::Info,
            "x outcome=accept \"",
            "reject",
            None,
            &Extra::default(),
        );
        let kept = log.kept.borrow();
        assert!(!kept[0].contains('\n'), "{}", kept[0]);
        assert_eq!(
            kept[0],
            "pam_sparekey(su?do:account): user=\"eve?fake line\" outcome=accept"
        );
        assert_eq!(
            kept[1],
            "pam_sparekey(su?do:account): user=\"x outcome=accept ?\" outcome=reject"
        );
    }
}
