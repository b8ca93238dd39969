//! The one TOML file every program reads. Unknown keys are refused, relative paths are
//! taken from the file's directory, and every error names the file and the key.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::model::Normalization;

/// Where the config is looked for when none is given and `$SPAREKEY_CONFIG` is unset.
pub const DEFAULT_PATH: &str = "/etc/sparekey/sparekey.toml";
/// The environment variable naming the config file.
pub const ENV_VAR: &str = "SPAREKEY_CONFIG";

/// The whole configuration file.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the store and the key are. With `[store] url`, `store.path` is empty and
    /// [`Config::postgres`] says where the store is; see [`Config::location`].
    pub store: StoreConfig,
    /// `[store] url` and `password_file`: a PostgreSQL store instead of a SQLite file.
    pub postgres: Option<PostgresConfig>,
    /// Lockout, trash and login matching.
    pub policy: Policy,
    /// The RADIUS server's section, validated by that front end.
    pub radius: Option<toml::Table>,
    /// The PAM module's defaults, validated by that front end.
    pub pam: Option<toml::Table>,
    /// The admin API's section, validated by that front end.
    pub admin_api: Option<toml::Table>,
    /// The file this was read from.
    pub file: PathBuf,
}

/// The file as written: `[store]` is split into [`StoreConfig`] and [`PostgresConfig`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    store: StoreSection,
    #[serde(default)]
    policy: Policy,
    #[serde(default)]
    radius: Option<toml::Table>,
    #[serde(default)]
    pam: Option<toml::Table>,
    #[serde(default)]
    admin_api: Option<toml::Table>,
}

/// `[store]` as written: exactly one of `path` and `url`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreSection {
    #[serde(default)]
    path: Option<PathBuf>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    password_file: Option<PathBuf>,
    key_file: PathBuf,
    #[serde(default = "default_busy_timeout_ms")]
    busy_timeout_ms: u32,
    #[serde(default)]
    synchronous: Synchronous,
}

/// `[store]`: the key, the wait bounds, and the SQLite file.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The SQLite database; empty when the store is PostgreSQL ([`Config::postgres`]).
    pub path: PathBuf,
    /// The 32-byte digest key (mode 0600).
    pub key_file: PathBuf,
    /// How long a writer waits for another before giving up, in milliseconds. On
    /// PostgreSQL it also bounds connecting, each statement and each lock wait.
    pub busy_timeout_ms: u32,
    /// SQLite only: `full` (default: a consumed code stays consumed across power loss) or
    /// `normal`.
    pub synchronous: Synchronous,
}

/// `[store] url` and `password_file`: where a PostgreSQL store is and how to log in.
#[derive(Clone)]
pub struct PostgresConfig {
    /// `postgres://user@host:port/db?sslmode=...`; may hold a password (never printed).
    pub url: String,
    /// A file (mode 0600) whose first line is the password, instead of one in the URL.
    pub password_file: Option<PathBuf>,
}

impl PostgresConfig {
    /// The URL with any password replaced by `***`, for messages and logs.
    pub fn redacted_url(&self) -> String {
        crate::store::postgres::redact_url(&self.url)
    }
}

impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &self.redacted_url())
            .field("password_file", &self.password_file)
            .finish()
    }
}

/// Which backend a config names, for the code that must tell them apart.
#[derive(Debug, Clone, Copy)]
pub enum Location<'a> {
    /// A SQLite database file.
    Sqlite(&'a Path),
    /// A PostgreSQL database.
    Postgres(&'a PostgresConfig),
}

impl std::fmt::Display for Location<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Sqlite(p) => write!(f, "{}", p.display()),
            Location::Postgres(pg) => f.write_str(&pg.redacted_url()),
        }
    }
}

/// SQLite's `synchronous` setting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// fsync on every commit.
    #[default]
    Full,
    /// fsync at checkpoints only: a power cut may roll back the last commits.
    Normal,
}

/// `[policy]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Consecutive failures that lock a user out; 0 turns lockout off.
    #[serde(default = "default_lockout_threshold")]
    pub lockout_threshold: u32,
    /// Seconds after which a lockout clears itself; 0 (default) waits for an admin.
    #[serde(default)]
    pub lockout_auto_unlock_secs: u64,
    /// Days a deleted user stays in the trash before `purge` removes them (1-30).
    #[serde(default = "default_trash_retention_days")]
    pub trash_retention_days: u32,
    /// How logins are matched to usernames and aliases.
    #[serde(default)]
    pub username_normalization: Normalization,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            lockout_threshold: default_lockout_threshold(),
            lockout_auto_unlock_secs: 0,
            trash_retention_days: default_trash_retention_days(),
            username_normalization: Normalization::default(),
        }
    }
}

fn default_busy_timeout_ms() -> u32 {
    5000
}
fn default_lockout_threshold() -> u32 {
    10
}
fn default_trash_retention_days() -> u32 {
    7
}

impl Config {
    /// The config file to use: `explicit`, else `$SPAREKEY_CONFIG`, else [`DEFAULT_PATH`].
    pub fn locate(explicit: Option<&Path>) -> PathBuf {
        explicit
            .map(Path::to_owned)
            .or_else(|| {
                std::env::var_os(ENV_VAR)
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from)
            })
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH))
    }

    /// Reads and checks a config file.
    pub fn load(file: &Path) -> Result<Self> {
        let text = std::fs::read(file).map_err(|e| config_error(file, e.to_string()))?;
        let text =
            String::from_utf8(text).map_err(|_| config_error(file, "not valid UTF-8".into()))?;
        Self::parse(&text, file)
    }

    /// Parses config text as if read from `file` (relative paths are taken from its directory).
    pub fn parse(text: &str, file: &Path) -> Result<Self> {
        let raw: ConfigFile =
            toml::from_str(text).map_err(|e| config_error(file, toml_message(&e)))?;
        let base = file.parent().unwrap_or(Path::new("."));
        let s = raw.store;
        let (path, postgres) = match (s.path, s.url) {
            (Some(path), None) => {
                if s.password_file.is_some() {
                    return Err(config_error(
                        file,
                        "store.password_file: only for a PostgreSQL store (store.url)".into(),
                    ));
                }
                (resolve(base, &path, file, "store.path")?, None)
            }
            (None, Some(url)) => {
                crate::store::postgres::check_url(&url)
                    .map_err(|m| config_error(file, format!("store.url: {m}")))?;
                let password_file = match s.password_file {
                    Some(p) => Some(resolve(base, &p, file, "store.password_file")?),
                    None => None,
                };
                (PathBuf::new(), Some(PostgresConfig { url, password_file }))
            }
            (Some(_), Some(_)) => {
                return Err(config_error(
                    file,
                    "store.path and store.url: give one, not both (path: SQLite, url: PostgreSQL)"
                        .into(),
                ));
            }
            (None, None) => {
                return Err(config_error(
                    file,
                    "store.path or store.url: one is required (path: SQLite, url: PostgreSQL)"
                        .into(),
                ));
            }
        };
        let c = Config {
            store: StoreConfig {
                path,
                key_file: resolve(base, &s.key_file, file, "store.key_file")?,
                busy_timeout_ms: s.busy_timeout_ms,
                synchronous: s.synchronous,
            },
            postgres,
            policy: raw.policy,
            radius: raw.radius,
            pam: raw.pam,
            admin_api: raw.admin_api,
            file: file.to_owned(),
        };
        c.check()?;
        Ok(c)
    }

    /// Where the store is: a SQLite file or a PostgreSQL database.
    pub fn location(&self) -> Location<'_> {
        match &self.postgres {
            Some(pg) => Location::Postgres(pg),
            None => Location::Sqlite(&self.store.path),
        }
    }

    fn check(&self) -> Result<()> {
        let p = &self.policy;
        if !(1..=30).contains(&p.trash_retention_days) {
            return Err(config_error(
                &self.file,
                "policy.trash_retention_days: must be 1 to 30".into(),
            ));
        }
        if p.lockout_threshold > 1000 {
            return Err(config_error(
                &self.file,
                "policy.lockout_threshold: must be at most 1000".into(),
            ));
        }
        if self.store.busy_timeout_ms == 0 || self.store.busy_timeout_ms > 600_000 {
            return Err(config_error(
                &self.file,
                "store.busy_timeout_ms: must be 1 to 600000".into(),
            ));
        }
        Ok(())
    }

    /// A front end's own section, parsed into its type; `None` when the section is absent.
    pub fn section<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        let table = match name {
            "radius" => &self.radius,
            "pam" => &self.pam,
            "admin_api" => &self.admin_api,
            _ => return Err(config_error(&self.file, format!("no section [{name}]"))),
        };
        let Some(table) = table else { return Ok(None) };
        T::deserialize(toml::Value::Table(table.clone()))
            .map(Some)
            .map_err(|e| config_error(&self.file, format!("[{name}]: {}", toml_message(&e))))
    }

    /// The text `sparekey init` writes for a store in `dir` (an absolute path).
    pub fn init_text(dir: &Path) -> String {
        format!(
            "# sparekey configuration, read by the sparekey CLI, pam_sparekey.so and sparekey-radiusd.\n\
             \n\
             [store]\n\
             path = {db}\n\
             key_file = {key}\n\
             # busy_timeout_ms = 5000\n\
             # synchronous = \"full\"\n\
             \n\
             [policy]\n\
             # lockout_threshold = 10          # consecutive failures; 0 turns lockout off\n\
             # lockout_auto_unlock_secs = 0    # 0: only `sparekey user unlock` clears a lockout\n\
             # trash_retention_days = 7        # 1 to 30\n\
             # username_normalization = \"simple\"\n",
            db = toml_string(&dir.join("sparekey.db")),
            key = toml_string(&dir.join("sparekey.key")),
        )
    }
}

fn toml_string(p: &Path) -> String {
    toml::Value::String(p.to_string_lossy().into_owned()).to_string()
}

fn resolve(base: &Path, p: &Path, file: &Path, key: &str) -> Result<PathBuf> {
    if p.as_os_str().is_empty() {
        return Err(config_error(file, format!("{key}: must not be empty")));
    }
    Ok(if p.is_absolute() {
        p.to_owned()
    } else {
        base.join(p)
    })
}

fn config_error(file: &Path, message: String) -> Error {
    Error::Config {
        file: file.to_owned(),
        message,
    }
}

/// toml's messages span several lines with a source excerpt; one line reads better in logs.
fn toml_message(e: &impl std::fmt::Display) -> String {
    e.to_string()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('|') && !is_excerpt(l))
        .collect::<Vec<_>>()
        .join(": ")
}

/// A line of the file that the TOML error quotes (`12 | secret = ...`): it may hold a
/// secret, and the message goes to logs, so it is left out (the line number stays).
fn is_excerpt(line: &str) -> bool {
    let digits = line.bytes().take_while(u8::is_ascii_digit).count();
    digits > 0 && line[digits..].trim_start().starts_with('|')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config> {
        Config::parse(text, Path::new("/etc/sk/sparekey.toml"))
    }

    #[test]
    fn minimal_config_gets_defaults_and_resolved_paths() {
        let c = parse("[store]\npath = \"db\"\nkey_file = \"/k/key\"\n").unwrap();
        assert_eq!(c.store.path, Path::new("/etc/sk/db"));
        assert_eq!(c.store.key_file, Path::new("/k/key"));
        assert_eq!(c.policy.lockout_threshold, 10);
        assert_eq!(c.policy.trash_retention_days, 7);
        assert_eq!(c.store.synchronous, Synchronous::Full);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_file_and_key() {
        let e = parse("[store]\npath = \"db\"\nkey_file = \"k\"\npaht = 1\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/etc/sk/sparekey.toml") && e.contains("paht"),
            "{e}"
        );
        let e = parse(
            "[store]\npath = \"db\"\nkey_file = \"k\"\n[policy]\ntrash_retention_days = 31\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("trash_retention_days"), "{e}");
        let e = parse("[stor]\n").unwrap_err().to_string();
        assert!(e.contains("stor"), "{e}");
        let e = parse("[store]\npath = \"db\"\nkey_file = \"k\"\n[radius]\nsecret = \"hunter2\"\nsecret = 1\n")
            .unwrap_err()
            .to_string();
        assert!(
            !e.contains("hunter2") && e.contains("line 6"),
            "excerpts may hold secrets: {e}"
        );
        // The faulty line itself is not quoted either.
        let e = parse("[store]\npath = \"db\"\nkey_file = \"k\"\n[radius]\nsecret = hunter2\n")
            .unwrap_err()
            .to_string();
        assert!(
            !e.contains("hunter2") && e.contains("line 5"),
            "excerpts may hold secrets: {e}"
        );
        assert!(parse("[store]\npath = \"\"\nkey_file = \"k\"\n").is_err());
        assert!(parse("[store]\npath = \"db\"\nkey_file = \"k\"\n[policy]\nusername_normalization = \"loose\"\n").is_err());
    }

    #[test]
    fn a_store_is_a_path_or_a_url_never_both() {
        let c = parse(
            "[store]\nurl = \"postgres://sk@db.example/sparekey?sslmode=verify-full\"\n\
             password_file = \"db.pw\"\nkey_file = \"k\"\n",
        )
        .unwrap();
        let pg = c.postgres.as_ref().unwrap();
        assert_eq!(
            pg.password_file.as_deref(),
            Some(Path::new("/etc/sk/db.pw"))
        );
        assert!(matches!(c.location(), Location::Postgres(_)));
        let c = parse("[store]\npath = \"db\"\nkey_file = \"k\"\n").unwrap();
        assert!(matches!(c.location(), Location::Sqlite(p) if p == Path::new("/etc/sk/db")));
        for (text, key) in [
            (
                "path = \"db\"\nurl = \"postgres://sk@h/db\"\n",
                "store.path and store.url",
            ),
            ("", "store.path or store.url"),
            (
                "path = \"db\"\npassword_file = \"pw\"\n",
                "store.password_file",
            ),
            ("url = \"mysql://h/db\"\n", "store.url"),
            (
                "url = \"postgres://sk:hunter2@h/db?sslmode=prefer\"\n",
                "store.url",
            ),
        ] {
            let e = parse(&format!("[store]\n{text}key_file = \"k\"\n"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("/etc/sk/sparekey.toml") && e.contains(key),
                "{e}"
            );
            assert!(!e.contains("hunter2"), "{e}");
        }
        let c = parse("[store]\nurl = \"postgres://sk:hunter2@h/db\"\nkey_file = \"k\"\n").unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!c.location().to_string().contains("hunter2"));
    }

    #[test]
    fn init_text_parses_back() {
        let c = parse(&Config::init_text(Path::new("/var/lib/sk \"x\""))).unwrap();
        assert_eq!(c.store.path, Path::new("/var/lib/sk \"x\"/sparekey.db"));
    }

    #[test]
    fn front_end_sections_are_parsed_by_their_owner() {
        #[derive(Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        struct R {
            #[allow(dead_code)]
            listen: Vec<String>,
        }
        let c = parse(
            "[store]\npath = \"db\"\nkey_file = \"k\"\n[radius]\nlisten = [\"127.0.0.1:1812\"]\n",
        )
        .unwrap();
        assert!(c.section::<R>("radius").unwrap().is_some());
        assert!(c.section::<R>("pam").unwrap().is_none());
        let c = parse("[store]\npath = \"db\"\nkey_file = \"k\"\n[radius]\nlisen = 1\n").unwrap();
        let e = c.section::<R>("radius").unwrap_err().to_string();
        assert!(e.contains("[radius]") && e.contains("lisen"), "{e}");
    }
}
