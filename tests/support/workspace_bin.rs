//! The workspace's binaries for tests of another package: a test can only name its own
//! package's binaries (`CARGO_BIN_EXE_*`), so this asks cargo to build `sparekey` and
//! `sparekey-radiusd` and returns where they are (under `cargo test --workspace` they are
//! already built and fresh; cargo does not hold its build lock while tests run). Shared
//! by the test binaries that need them (`#[path]`-included), with std and serde_json.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The path of a binary of `sparekey-cli` or `sparekey-radiusd` (`"sparekey"`,
/// `"sparekey-radiusd"`), built on first use.
pub fn workspace_bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<Vec<PathBuf>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        // Cargo runs a test with variables that describe its package (CARGO_PKG_NAME,
        // CARGO_MANIFEST_DIR, ...), and ring's build script is rerun when one of those
        // changes: inherited, they would rebuild ring and everything above it here, and
        // again at the next top-level build. Cargo's own settings (CARGO_HOME,
        // CARGO_TARGET_DIR, ...) are kept.
        let mut cargo = Command::new(env!("CARGO"));
        for (k, _) in std::env::vars_os() {
            if describes_package(&k.to_string_lossy()) {
                cargo.env_remove(&k);
            }
        }
        let out = cargo
            .args([
                "build",
                "--bins",
                "-p",
                "sparekey-cli",
                "-p",
                "sparekey-radiusd",
            ])
            .arg("--message-format=json-render-diagnostics")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stderr(Stdio::inherit())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cargo build -p sparekey-cli -p sparekey-radiusd failed"
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|m| m["executable"].as_str().map(PathBuf::from))
            .collect()
    });
    built
        .iter()
        .find(|p| p.file_name().is_some_and(|f| f == name))
        .unwrap_or_else(|| panic!("cargo built no {name}"))
        .clone()
}

/// Whether cargo sets `var` for a test to describe the test's package.
fn describes_package(var: &str) -> bool {
    ["CARGO_PKG_", "CARGO_BIN_", "CARGO_MANIFEST_"]
        .iter()
        .any(|p| var.starts_with(p))
        || [
            "CARGO_CRATE_NAME",
            "CARGO_PRIMARY_PACKAGE",
            "CARGO_TARGET_TMPDIR",
            "CARGO_RUSTC_CURRENT_DIR",
            "OUT_DIR",
        ]
        .contains(&var)
}
