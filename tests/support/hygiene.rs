//! The suite-wide leak check. End-to-end tests record every code they issue, and as each
//! test's directory goes away they keep a copy of everything the programs under test left
//! there: stores with their WAL files, logs, syslog captures. `scripts/test` then searches
//! all of it for every recorded code (`scripts/hygiene-check`). Without
//! `SPAREKEY_HYGIENE_DIR` in the environment both calls do nothing. Shared by the test
//! binaries that issue codes (`#[path]`-included), with std alone.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Files larger than this are not kept (no test store comes near it).
const MAX_KEPT_FILE: u64 = 256 << 20;

fn root() -> Option<PathBuf> {
    std::env::var_os("SPAREKEY_HYGIENE_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Records codes that were issued, so the final search looks for them.
pub fn issued<S: AsRef<str>>(codes: impl IntoIterator<Item = S>) {
    let Some(root) = root() else { return };
    let mut text = String::new();
    for c in codes {
        text.push_str(c.as_ref());
        text.push('\n');
    }
    if text.is_empty() {
        return;
    }
    std::fs::create_dir_all(&root).unwrap();
    // One append per call: lines from parallel tests never interleave.
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(root.join("codes"))
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// A fresh directory under the kept tree, unique across processes and threads.
fn new_kept_dir(root: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let exe = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let dir = root
        .join("kept")
        .join(format!("{exe}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Keeps a copy of every regular file under `dir` (sockets, devices and symlinks are
/// skipped; nothing is followed out of `dir`).
pub fn keep(dir: &Path) {
    keep_except(dir, &[]);
}

/// Like [`keep`], without the files named in `inputs`: what the test itself wrote for the
/// programs to read (a load generator's list of users and codes), not what they wrote.
pub fn keep_except(dir: &Path, inputs: &[&str]) {
    let Some(root) = root() else { return };
    let to = new_kept_dir(&root);
    copy_tree(dir, &to, inputs);
}

/// Keeps text the test captured in memory (syslog lines, a process's output).
pub fn keep_text(name: &str, text: &str) {
    let Some(root) = root() else { return };
    let to = new_kept_dir(&root);
    std::fs::write(to.join(name), text).unwrap();
}

fn copy_tree(from: &Path, to: &Path, skip: &[&str]) {
    let Ok(entries) = std::fs::read_dir(from) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(kind) = e.file_type() else { continue };
        if skip.iter().any(|s| e.file_name() == *s) {
            continue;
        }
        let target = to.join(e.file_name());
        if kind.is_dir() {
            if std::fs::create_dir_all(&target).is_ok() {
                copy_tree(&e.path(), &target, skip);
            }
        } else if kind.is_file() && e.metadata().is_ok_and(|m| m.len() <= MAX_KEPT_FILE) {
            // A file may vanish or be unreadable (a test's deliberate fault): keep what can
            // be read.
            let _ = std::fs::copy(e.path(), &target);
        }
    }
}
