//! The module's arguments (the words after `pam_sparekey.so` on a pam.d line) and the
//! `[pam]` section of the config file, parsed once into [`Settings`].
//!
//! Precedence: an argument on the pam.d line, then the `[pam]` section, then the default.
//! Anything unknown is a configuration error: a typo must not quietly change how a login
//! is decided.

use serde::Deserialize;
use std::fmt;
use std::path::PathBuf;

use sparekey::audit::sanitize;

/// The prompt shown when no `prompt=` is given.
pub const DEFAULT_PROMPT: &str = "Bypass code: ";

/// What to answer for a login the store does not know.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownUser {
    /// `PAM_USER_UNKNOWN`: the user must be in the store.
    #[default]
    Deny,
    /// `PAM_IGNORE`: the module does not apply; the rest of the stack decides (rollout).
    Ignore,
}

/// What a user in bypass status gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BypassStatus {
    /// Success without a prompt (Duo's meaning), audited.
    #[default]
    Allow,
    /// Refused like any other failure.
    Deny,
}

/// Where the code comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Authtok {
    /// Prompt for it.
    #[default]
    Prompt,
    /// Take `PAM_AUTHTOK` from an earlier module and never prompt.
    UseFirstPass,
    /// Try `PAM_AUTHTOK` first; prompt if it is absent, not a code, or wrong.
    TryFirstPass,
}

/// The module's arguments as given on the pam.d line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// `config=`: the config file (absolute path).
    pub config: Option<PathBuf>,
    /// `prompt=`.
    pub prompt: Option<String>,
    /// `unknown_user=`.
    pub unknown_user: Option<UnknownUser>,
    /// `bypass_status=`.
    pub bypass_status: Option<BypassStatus>,
    /// `use_first_pass` / `try_first_pass`.
    pub authtok: Authtok,
    /// `debug`.
    pub debug: bool,
}

/// Why the arguments were refused. Shown in syslog; never holds more than 64 bytes of
/// what the admin wrote, with control characters replaced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OptionError {
    /// An argument this module does not know.
    Unknown(String),
    /// A known option with a value it does not take.
    BadValue {
        /// The option.
        option: &'static str,
        /// Why the value is refused.
        why: String,
    },
    /// `use_first_pass` and `try_first_pass` together.
    Conflict,
}

impl fmt::Display for OptionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OptionError::Unknown(arg) => write!(f, "unknown option \"{arg}\""),
            OptionError::BadValue { option, why } => write!(f, "option {option}: {why}"),
            OptionError::Conflict => {
                f.write_str("use_first_pass and try_first_pass exclude each other")
            }
        }
    }
}

impl Options {
    /// Parses the pam.d arguments. Arguments that are not UTF-8 are unknown options.
    pub fn parse<'a>(args: impl IntoIterator<Item = &'a [u8]>) -> Result<Self, OptionError> {
        let mut o = Options::default();
        let mut first_pass = None;
        for raw in args {
            let arg = String::from_utf8_lossy(raw);
            let (name, value) = match arg.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (arg.as_ref(), None),
            };
            let bad = |option: &'static str, why: &str| OptionError::BadValue {
                option,
                why: why.to_owned(),
            };
            match (name, value) {
                ("config", Some(v)) => {
                    let p = PathBuf::from(v);
                    if !p.is_absolute() {
                        return Err(bad("config", "must be an absolute path"));
                    }
                    o.config = Some(p);
                }
                ("prompt", Some(v)) => {
                    check_prompt(v)?;
                    o.prompt = Some(v.to_owned());
                }
                ("unknown_user", Some(v)) => {
                    o.unknown_user = Some(match v {
                        "deny" => UnknownUser::Deny,
                        "ignore" => UnknownUser::Ignore,
                        _ => return Err(bad("unknown_user", "expected deny or ignore")),
                    });
                }
                ("bypass_status", Some(v)) => {
                    o.bypass_status = Some(match v {
                        "allow" => BypassStatus::Allow,
                        "deny" => BypassStatus::Deny,
                        _ => return Err(bad("bypass_status", "expected allow or deny")),
                    });
                }
                ("use_first_pass", None) => first_pass = merge(first_pass, Authtok::UseFirstPass)?,
                ("try_first_pass", None) => first_pass = merge(first_pass, Authtok::TryFirstPass)?,
                ("debug", None) => o.debug = true,
                _ => return Err(OptionError::Unknown(sanitize(&arg, 64))),
            }
        }
        o.authtok = first_pass.unwrap_or_default();
        Ok(o)
    }

    /// The settings in force: these arguments over the config's `[pam]` section over the
    /// defaults. Fails only on a bad `prompt` in the section.
    pub fn settings(&self, section: Option<&PamSection>) -> Result<Settings, OptionError> {
        let s = section.cloned().unwrap_or_default();
        if let Some(p) = &s.prompt {
            check_prompt(p)?;
        }
        Ok(Settings {
            prompt: self
                .prompt
                .clone()
                .or(s.prompt)
                .unwrap_or_else(|| DEFAULT_PROMPT.to_owned()),
            unknown_user: self.unknown_user.or(s.unknown_user).unwrap_or_default(),
            bypass_status: self.bypass_status.or(s.bypass_status).unwrap_or_default(),
            authtok: self.authtok,
            debug: self.debug || s.debug.unwrap_or(false),
        })
    }
}

fn check_prompt(p: &str) -> Result<(), OptionError> {
    if p.is_empty() || p.len() > 200 || p.chars().any(char::is_control) {
        return Err(OptionError::BadValue {
            option: "prompt",
            why: "must be 1 to 200 bytes of text without control characters".into(),
        });
    }
    Ok(())
}

fn merge(had: Option<Authtok>, new: Authtok) -> Result<Option<Authtok>, OptionError> {
    match had {
        Some(h) if h != new => Err(OptionError::Conflict),
        _ => Ok(Some(new)),
    }
}

/// The config file's `[pam]` section: defaults for every PAM service on the host.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PamSection {
    /// Default `prompt=`.
    pub prompt: Option<String>,
    /// Default `unknown_user=`.
    pub unknown_user: Option<UnknownUser>,
    /// Default `bypass_status=`.
    pub bypass_status: Option<BypassStatus>,
    /// Default `debug`.
    pub debug: Option<bool>,
}

/// Everything that decides how the module behaves on one call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The prompt.
    pub prompt: String,
    /// What an unknown user gets.
    pub unknown_user: UnknownUser,
    /// What a bypass user gets.
    pub bypass_status: BypassStatus,
    /// Where the code comes from.
    pub authtok: Authtok,
    /// Extra log lines.
    pub debug: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Options, OptionError> {
        Options::parse(args.iter().map(|a| a.as_bytes()))
    }

    #[test]
    fn no_arguments_give_the_defaults() {
        let s = parse(&[]).unwrap().settings(None).unwrap();
        assert_eq!(
            s,
            Settings {
                prompt: "Bypass code: ".into(),
                unknown_user: UnknownUser::Deny,
                bypass_status: BypassStatus::Allow,
                authtok: Authtok::Prompt,
                debug: false,
            }
        );
    }

    #[test]
    fn every_option_is_understood() {
        let o = parse(&[
            "config=/etc/sk/sk.toml",
            "prompt=Code please: ",
            "unknown_user=ignore",
            "bypass_status=deny",
            "try_first_pass",
            "debug",
        ])
        .unwrap();
        assert_eq!(
            o.config.as_deref(),
            Some(std::path::Path::new("/etc/sk/sk.toml"))
        );
        let s = o.settings(None).unwrap();
        assert_eq!(s.prompt, "Code please: ");
        assert_eq!(s.unknown_user, UnknownUser::Ignore);
        assert_eq!(s.bypass_status, BypassStatus::Deny);
        assert_eq!(s.authtok, Authtok::TryFirstPass);
        assert!(s.debug);
        assert_eq!(
            parse(&["use_first_pass"]).unwrap().authtok,
            Authtok::UseFirstPass
        );
    }

    #[test]
    fn unknown_and_malformed_options_are_refused() {
        assert_eq!(
            parse(&["debgu"]).unwrap_err(),
            OptionError::Unknown("debgu".into())
        );
        for bad in [
            "config=relative/path.toml",
            "config",
            "unknown_user=allow",
            "bypass_status=",
            "prompt=",
            "prompt=a\nb",
            "debug=yes",
            "use_first_pass=1",
        ] {
            assert!(parse(&[bad]).is_err(), "{bad} was accepted");
        }
        assert_eq!(
            parse(&["use_first_pass", "try_first_pass"]).unwrap_err(),
            OptionError::Conflict
        );
        assert!(parse(&["use_first_pass", "use_first_pass"]).is_ok());
        let long = format!("x{}\u{7}", "y".repeat(200));
        let e = parse(&[&long]).unwrap_err().to_string();
        assert!(e.len() < 100 && !e.contains('\u{7}'), "{e}");
    }

    #[test]
    fn arguments_override_the_config_section() {
        let section: PamSection = toml_section(
            "prompt = \"Token: \"\nunknown_user = \"ignore\"\nbypass_status = \"deny\"\ndebug = true\n",
        );
        let s = parse(&[]).unwrap().settings(Some(&section)).unwrap();
        assert_eq!(s.prompt, "Token: ");
        assert_eq!(s.unknown_user, UnknownUser::Ignore);
        assert_eq!(s.bypass_status, BypassStatus::Deny);
        assert!(s.debug);
        let s = parse(&["unknown_user=deny", "bypass_status=allow", "prompt=Code: "])
            .unwrap()
            .settings(Some(&section))
            .unwrap();
        assert_eq!(s.prompt, "Code: ");
        assert_eq!(s.unknown_user, UnknownUser::Deny);
        assert_eq!(s.bypass_status, BypassStatus::Allow);
    }

    fn toml_section(text: &str) -> PamSection {
        let file = std::path::Path::new("/etc/sk/sparekey.toml");
        let c = sparekey::Config::parse(
            &format!("[store]\npath = \"db\"\nkey_file = \"key\"\n[pam]\n{text}"),
            file,
        )
        .unwrap();
        c.section("pam").unwrap().unwrap()
    }

    #[test]
    fn unknown_keys_in_the_config_section_are_refused() {
        let c = sparekey::Config::parse(
            "[store]\npath = \"db\"\nkey_file = \"key\"\n[pam]\nunknown_usr = \"ignore\"\n",
            std::path::Path::new("/etc/sk/sparekey.toml"),
        )
        .unwrap();
        assert!(c.section::<PamSection>("pam").is_err());
        let section = PamSection {
            prompt: Some("a\u{0}b".into()),
            ..PamSection::default()
        };
        assert!(parse(&[]).unwrap().settings(Some(&section)).is_err());
    }
}
