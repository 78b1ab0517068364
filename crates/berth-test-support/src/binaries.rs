//! Locating the workspace and building the example binaries that tests run.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock, PoisonError};

/// The workspace root (two levels above this crate's manifest).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    match manifest_dir.ancestors().nth(2) {
        Some(root) => root.to_path_buf(),
        // Unreachable while this crate lives at crates/berth-test-support.
        None => manifest_dir.join("../.."),
    }
}

/// Builds the workspace package `name` (`$CARGO build -p <name>`, once per test process) into
/// the workspace's target directory and returns the path of its debug binary.
///
/// # Panics
///
/// Panics with cargo's stderr when the build fails.
pub fn example_bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    // Holding the lock across the build makes concurrent callers wait for one build.
    let mut built = BUILT.get_or_init(Mutex::default).lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(bin) = built.get(name) {
        return bin.clone();
    }

    let root = workspace_root();
    let target_dir = target_dir(&root);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let output = Command::new(&cargo)
        .args(["build", "-p", name])
        .current_dir(&root)
        .env("CARGO_TARGET_DIR", &target_dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|error| panic!("failed to run {cargo:?} build -p {name}: {error}"));
    if !output.status.success() {
        panic!("`cargo build -p {name}` failed ({}):\n{}", output.status, String::from_utf8_lossy(&output.stderr));
    }
    let bin = target_dir.join("debug").join(name);
    assert!(bin.is_file(), "`cargo build -p {name}` succeeded but {} does not exist", bin.display());
    built.insert(name.to_string(), bin.clone());
    bin
}

/// `CARGO_TARGET_DIR` (relative to the workspace root if relative), else `<root>/target`.
fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => root.join(dir),
        _ => root.join("target"),
    }
}

#[cfg(test)]
mod tests;
