//! Which files the module will believe. The config names the key and the store, and the
//! store says who is in bypass status, so anyone who can change one of them can let
//! themselves in: each must belong to root and be writable by no one else, and so must
//! every directory above it (a sticky directory such as `/tmp` excepted, since there only
//! a file's owner can replace it). The key file must also be unreadable by group and
//! others, which [`sparekey::DigestKey::load`] enforces.
//!
//! "Above it" means both the directories named on the way (where a symlink such as
//! `store.db -> /elsewhere/store.db` sits) and those the path really leads through. Each
//! file is then opened by the real path that was checked, with no symlink left in it, so
//! nobody can swap a link between the check and the open: the config from the very file
//! that was checked (one open, `fstat` on it), the key and the database by their real
//! paths.

use std::fs::{File, Metadata};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sparekey::{Config, Error, Store};

/// Why the module cannot go on: the `reason=` it logs, and the cause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unusable {
    /// `config_unusable`, `key_unusable` or `store_unavailable`.
    pub reason: &'static str,
    /// What is wrong, naming the file and, where there is one, the fix.
    pub why: String,
}

impl Unusable {
    pub(crate) fn config(why: String) -> Self {
        Unusable {
            reason: "config_unusable",
            why,
        }
    }

    fn key(why: String) -> Self {
        Unusable {
            reason: "key_unusable",
            why,
        }
    }

    fn store(why: String) -> Self {
        Unusable {
            reason: "store_unavailable",
            why,
        }
    }
}

/// The config file, checked and parsed.
pub fn load_config(path: &Path) -> Result<Config, Unusable> {
    let fail = |e: std::io::Error| Unusable::config(format!("config {}: {e}", path.display()));
    let real = std::fs::canonicalize(path).map_err(fail)?;
    check_ancestors(path, &real).map_err(Unusable::config)?;
    let mut f = File::open(&real).map_err(fail)?;
    let meta = f.metadata().map_err(fail)?;
    check_file(path, &real, &meta, "config").map_err(Unusable::config)?;
    let mut text = String::new();
    f.read_to_string(&mut text).map_err(fail)?;
    Config::parse(&text, path).map_err(|e| Unusable::config(e.to_string()))
}

/// Opens the store a trusted config names, after checking the key file and the database;
/// both are opened by the real paths that were checked.
pub fn open_store(config: &Config) -> Result<Store, Unusable> {
    let mut config = config.clone();
    if let Some(real) = check_path(&config.store.key_file, "key file").map_err(Unusable::key)? {
        config.store.key_file = real;
    }
    match &mut config.postgres {
        // The database is on a server that guards itself; the password to it is a local
        // file, trusted like the key file (the library refuses one others may read).
        Some(pg) => {
            if let Some(p) = &mut pg.password_file {
                if let Some(real) = check_path(p, "password file").map_err(Unusable::store)? {
                    *p = real;
                }
            }
        }
        None => {
            if let Some(real) = check_path(&config.store.path, "store").map_err(Unusable::store)? {
                config.store.path = real;
            }
        }
    }
    let mut store = Store::open(&config).map_err(|e| match e {
        Error::Key { .. } => Unusable::key(e.to_string()),
        Error::Config { .. } => Unusable::config(e.to_string()),
        _ => Unusable::store(e.to_string()),
    })?;
    // Best effort: a store that cannot take the checkpoint fails (or not) on its own.
    let _ = store.keep_log_short();
    Ok(store)
}

/// Checks a file named by the config and returns its real path, if it exists (a missing
/// one fails when opened, with the library's own message).
fn check_path(path: &Path, what: &str) -> Result<Option<PathBuf>, String> {
    let Ok(real) = std::fs::canonicalize(path) else {
        return Ok(None);
    };
    check_ancestors(path, &real)?;
    let meta = std::fs::metadata(&real).map_err(|e| format!("{what} {}: {e}", path.display()))?;
    check_file(path, &real, &meta, what)?;
    Ok(Some(real))
}

fn check_file(path: &Path, real: &Path, meta: &Metadata, what: &str) -> Result<(), String> {
    let shown = shown(path, real);
    if !meta.is_file() {
        return Err(format!("{what} {shown}: not a regular file"));
    }
    check_owner(&shown, meta, what, false)
}

/// The path as configured, and where it really leads if that is elsewhere.
fn shown(path: &Path, real: &Path) -> String {
    if path == real {
        path.display().to_string()
    } else {
        format!("{} (-> {})", path.display(), real.display())
    }
}

/// Every directory from `/` down to the file's own: those of the path as given (each
/// followed to what it names, where the next name is looked up), then those of its real
/// path.
fn check_ancestors(path: &Path, real: &Path) -> Result<(), String> {
    let mut dirs: Vec<PathBuf> = path.ancestors().skip(1).map(Path::to_owned).collect();
    dirs.reverse();
    let mut reals: Vec<PathBuf> = real.ancestors().skip(1).map(Path::to_owned).collect();
    reals.reverse();
    for d in reals {
        if !dirs.contains(&d) {
            dirs.push(d);
        }
    }
    for dir in &dirs {
        let meta =
            std::fs::metadata(dir).map_err(|e| format!("directory {}: {e}", dir.display()))?;
        check_owner(&dir.display().to_string(), &meta, "directory", true)?;
    }
    Ok(())
}

fn check_owner(shown: &str, meta: &Metadata, what: &str, is_dir: bool) -> Result<(), String> {
    let mode = meta.permissions().mode();
    if meta.uid() != 0 {
        return Err(format!(
            "{what} {shown}: owned by uid {}, not root; chown root it",
            meta.uid()
        ));
    }
    let sticky = is_dir && mode & 0o1000 != 0;
    if mode & 0o022 != 0 && !sticky {
        return Err(format!(
            "{what} {shown}: mode {:04o} lets group or others write it; chmod go-w it",
            mode & 0o7777
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::Permissions;

    fn running_as_root() -> bool {
        std::fs::metadata("/proc/self")
            .map(|m| m.uid() == 0)
            .unwrap_or(false)
    }

    #[test]
    fn a_root_owned_private_config_is_read_and_a_writable_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sparekey.toml");
        std::fs::write(&p, "[store]\npath = \"db\"\nkey_file = \"key\"\n").unwrap();
        std::fs::set_permissions(&p, Permissions::from_mode(0o644)).unwrap();
        if running_as_root() {
            let c = load_config(&p).unwrap();
            assert_eq!(c.store.path, dir.path().join("db"));
        } else {
            let e = load_config(&p).unwrap_err().why;
            assert!(e.contains("not root"), "{e}");
        }
        for mode in [0o664, 0o646, 0o666] {
            std::fs::set_permissions(&p, Permissions::from_mode(mode)).unwrap();
            let e = load_config(&p).unwrap_err().why;
            assert!(
                e.contains(&format!("{mode:04o}")) || e.contains("not root"),
                "{mode:o}: {e}"
            );
        }
    }

    #[test]
    fn a_writable_directory_above_the_config_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("etc");
        std::fs::create_dir(&sub).unwrap();
        let p = sub.join("sparekey.toml");
        std::fs::write(&p, "[store]\npath = \"db\"\nkey_file = \"key\"\n").unwrap();
        std::fs::set_permissions(&p, Permissions::from_mode(0o600)).unwrap();
        std::fs::set_permissions(&sub, Permissions::from_mode(0o777)).unwrap();
        let e = load_config(&p).unwrap_err().why;
        assert!(
            e.contains("directory") && (e.contains("0777") || e.contains("not root")),
            "{e}"
        );
        // A sticky directory (like /tmp) is fine: only the owner can replace a file there.
        std::fs::set_permissions(&sub, Permissions::from_mode(0o1777)).unwrap();
        if running_as_root() {
            load_config(&p).unwrap();
        }
    }

    #[test]
    fn a_symlink_in_a_directory_others_can_write_is_refused_and_a_safe_one_followed() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("sparekey.toml");
        std::fs::write(&real, "[store]\npath = \"db\"\nkey_file = \"key\"\n").unwrap();
        std::fs::set_permissions(&real, Permissions::from_mode(0o600)).unwrap();
        // Whoever can write `open` could point the link anywhere between a check and a read.
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, Permissions::from_mode(0o777)).unwrap();
        std::os::unix::fs::symlink(&real, open.join("link.toml")).unwrap();
        let e = load_config(&open.join("link.toml")).unwrap_err();
        assert_eq!(e.reason, "config_unusable");
        assert!(
            e.why.contains(&format!("directory {}", open.display())),
            "{e:?}"
        );
        std::fs::set_permissions(&open, Permissions::from_mode(0o755)).unwrap();
        if running_as_root() {
            // Relative paths in it are taken from where the link is, as the file says.
            let c = load_config(&open.join("link.toml")).unwrap();
            assert_eq!(c.store.path, open.join("db"));
        }
    }

    #[test]
    fn a_missing_config_is_an_error_naming_it() {
        let e = load_config(Path::new("/nonexistent/sparekey.toml"))
            .unwrap_err()
            .why;
        assert!(e.contains("/nonexistent/sparekey.toml"), "{e}");
    }
}
