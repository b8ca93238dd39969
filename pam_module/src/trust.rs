//! Which files the module will believe. The config names the key and the store, and the
//! store says who is in bypass status, so anyone who can change one of them can let
//! themselves in: each must belong to root and be writable by no one else, and so must
//! every directory above it (a sticky directory such as `/tmp` excepted, since there only
//! a file's owner can replace it). The key file must also be unreadable by group and
//! others, which [`sparekey::DigestKey::load`] enforces.
//!
//! The config is read from the very file that was checked (one open, `fstat` on it), so
//! it cannot be swapped between the check and the read.

use std::fs::{File, Metadata};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sparekey::{Config, Store};

/// The config file, checked and parsed.
pub fn load_config(path: &Path) -> Result<Config, String> {
    let real =
        std::fs::canonicalize(path).map_err(|e| format!("config {}: {e}", path.display()))?;
    check_ancestors(&real)?;
    let mut f = File::open(&real).map_err(|e| format!("config {}: {e}", path.display()))?;
    let meta = f
        .metadata()
        .map_err(|e| format!("config {}: {e}", path.display()))?;
    check_file(&real, &meta, "config")?;
    let mut text = String::new();
    f.read_to_string(&mut text)
        .map_err(|e| format!("config {}: {e}", path.display()))?;
    Config::parse(&text, path).map_err(|e| e.to_string())
}

/// Opens the store a trusted config names, after checking the key file and the database.
pub fn open_store(config: &Config) -> Result<Store, String> {
    check_path(&config.store.key_file, "key file")?;
    match &config.postgres {
        // The database is on a server that guards itself; the password to it is a local
        // file, trusted like the key file (the library refuses one others may read).
        Some(pg) => {
            if let Some(p) = &pg.password_file {
                check_path(p, "password file")?;
            }
        }
        None => check_path(&config.store.path, "store")?,
    }
    Store::open(config).map_err(|e| e.to_string())
}

/// Checks a file named by the config, if it exists (a missing one fails when opened, with
/// the library's own message).
fn check_path(path: &Path, what: &str) -> Result<(), String> {
    let Ok(real) = std::fs::canonicalize(path) else {
        return Ok(());
    };
    check_ancestors(&real)?;
    let meta = std::fs::metadata(&real).map_err(|e| format!("{what} {}: {e}", path.display()))?;
    check_file(&real, &meta, what)
}

fn check_file(path: &Path, meta: &Metadata, what: &str) -> Result<(), String> {
    if !meta.is_file() {
        return Err(format!("{what} {}: not a regular file", path.display()));
    }
    check_owner(path, meta, what, false)
}

/// Every directory from `/` down to the file's own.
fn check_ancestors(real: &Path) -> Result<(), String> {
    let dirs: Vec<PathBuf> = real.ancestors().skip(1).map(Path::to_owned).collect();
    for dir in dirs.iter().rev() {
        let meta =
            std::fs::metadata(dir).map_err(|e| format!("directory {}: {e}", dir.display()))?;
        check_owner(dir, &meta, "directory", true)?;
    }
    Ok(())
}

fn check_owner(path: &Path, meta: &Metadata, what: &str, is_dir: bool) -> Result<(), String> {
    let mode = meta.permissions().mode();
    if meta.uid() != 0 {
        return Err(format!(
            "{what} {}: owned by uid {}, not root; chown root it",
            path.display(),
            meta.uid()
        ));
    }
    let sticky = is_dir && mode & 0o1000 != 0;
    if mode & 0o022 != 0 && !sticky {
        return Err(format!(
            "{what} {}: mode {:04o} lets group or others write it; chmod go-w it",
            path.display(),
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
            let e = load_config(&p).unwrap_err();
            assert!(e.contains("not root"), "{e}");
        }
        for mode in [0o664, 0o646, 0o666] {
            std::fs::set_permissions(&p, Permissions::from_mode(mode)).unwrap();
            let e = load_config(&p).unwrap_err();
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
        let e = load_config(&p).unwrap_err();
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
    fn a_missing_config_is_an_error_naming_it() {
        let e = load_config(Path::new("/nonexistent/sparekey.toml")).unwrap_err();
        assert!(e.contains("/nonexistent/sparekey.toml"), "{e}");
    }
}
