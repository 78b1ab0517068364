//! `cargo xtask dist`: the release binary, optimized with a profile of the gateway at work (PGO).
//!
//! Three steps, each in its own target directory under `target/pgo` so that the plain release build in
//! `target/release` stays as it is:
//!
//! 1. `berth` built with `-Cprofile-generate` (counters in every branch);
//! 2. that binary run as `berth gateway` in front of an upstream of this file's own (`train`), through a
//!    mix of traffic (keep-alive and fresh connections, small uploads, a paced client, HTTPS and HTTP/2
//!    through curl when it is installed), stopped with SIGINT so that it writes its counters, which
//!    `llvm-profdata` of rustc's own LLVM version merges;
//! 3. `berth` built again with `-Cprofile-use`: the paths the traffic took laid out together and inlined
//!    for it, the rest kept small.
//!
//! The profile is named after the instrumented binary, so a second `dist` without a code change reuses it
//! and cargo has nothing to rebuild (rustc reports the profile as an input of each crate, so a new one
//! rebuilds them all); a code change makes a new one and the older ones are removed.

mod train;

use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds the profile-optimized binary; returns its path.
pub(crate) fn build(root: &Path) -> Result<PathBuf, String> {
    let profdata = llvm_profdata()?;
    let pgo = root.join("target/pgo");
    let raw = pgo.join("raw");
    let generate = cargo_build(root, &pgo.join("generate"), Some(&format!("-Cprofile-generate={}", raw.display())))?;
    let profile = pgo.join(format!("berth-{:016x}.profdata", file_hash(&generate)?));
    if profile.is_file() {
        eprintln!("xtask: dist: the instrumented binary is unchanged; reusing {}", profile.display());
    } else {
        let _ = std::fs::remove_dir_all(&raw);
        eprintln!("xtask: dist: training {} as `berth gateway`", generate.display());
        let served = train::run(&generate)?;
        eprintln!("xtask: dist: {served} requests served in training");
        // Merged under another name first: only a whole profile may be found and reused by the next run.
        let partial = profile.with_extension("partial");
        let merged = Command::new(&profdata)
            .arg("merge")
            .arg("-o")
            .arg(&partial)
            .arg(&raw)
            .status()
            .map_err(|e| format!("{profdata}: {e}"))?;
        if !merged.success() {
            return Err(format!("`{profdata} merge` of {} failed", raw.display()));
        }
        // The profiles of earlier code go: one is kept.
        for old in std::fs::read_dir(&pgo).into_iter().flatten().flatten() {
            if old.file_name().to_string_lossy().ends_with(".profdata") {
                let _ = std::fs::remove_file(old.path());
            }
        }
        std::fs::rename(&partial, &profile).map_err(|e| format!("{}: {e}", profile.display()))?;
    }
    cargo_build(root, &pgo.join("use"), Some(&format!("-Cprofile-use={}", profile.display())))
}

/// `cargo build --release -p berth` into `target_dir`, with `flag` added to RUSTFLAGS; returns the binary.
pub(crate) fn cargo_build(root: &Path, target_dir: &Path, flag: Option<&str>) -> Result<PathBuf, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut build = Command::new(&cargo);
    build.args(["build", "--release", "-p", "berth", "--target-dir"]).arg(target_dir).current_dir(root);
    let mut shown = String::new();
    if let Some(flag) = flag {
        let rustflags = match std::env::var("RUSTFLAGS") {
            Ok(own) if !own.trim().is_empty() => format!("{own} {flag}"),
            _ => flag.to_owned(),
        };
        shown = format!("RUSTFLAGS='{rustflags}' ");
        build.env("RUSTFLAGS", rustflags);
    }
    eprintln!("xtask: {shown}cargo build --release -p berth --target-dir {}", target_dir.display());
    if !build.status().map_err(|e| format!("{cargo}: {e}"))?.success() {
        return Err(format!(
            "the release build of berth {}failed",
            flag.map(|f| format!("with {f} ")).unwrap_or_default()
        ));
    }
    Ok(target_dir.join("release/berth"))
}

/// `llvm-profdata` of the LLVM version rustc is built on: a raw profile is only read by its own version.
/// Looked for on `PATH` (`llvm-profdata-<major>`, then `llvm-profdata`) and then in rustc's sysroot, where
/// rustup's `llvm-tools` component puts the one of rustc's own LLVM.
fn llvm_profdata() -> Result<String, String> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let version = Command::new(&rustc).arg("-vV").output().map_err(|e| format!("{rustc} -vV: {e}"))?;
    let version = String::from_utf8_lossy(&version.stdout);
    let field = |name: &str| version.lines().find_map(|line| line.strip_prefix(name)).map(str::trim);
    let Some(major) = field("LLVM version: ").and_then(|v| v.split('.').next()) else {
        return Err(format!("`{rustc} -vV` does not say its LLVM version"));
    };
    let versioned = format!("llvm-profdata-{major}");
    let sysroot = Command::new(&rustc).args(["--print", "sysroot"]).output().ok();
    let from_rustup = sysroot.zip(field("host: ")).map(|(sysroot, host)| {
        let sysroot = String::from_utf8_lossy(&sysroot.stdout).trim().to_owned();
        format!("{sysroot}/lib/rustlib/{host}/bin/llvm-profdata")
    });
    for candidate in [Some(versioned.clone()), Some("llvm-profdata".to_owned()), from_rustup].into_iter().flatten() {
        let Ok(out) = Command::new(&candidate).arg("--version").output() else { continue };
        if String::from_utf8_lossy(&out.stdout).contains(&format!("LLVM version {major}.")) {
            return Ok(candidate);
        }
    }
    Err(format!(
        "PGO needs llvm-profdata from LLVM {major}, the version rustc is built on: install it with \
         `rustup component add llvm-tools` or `apt install llvm-{major}` (it provides {versioned})"
    ))
}

/// A hash of a file's bytes (stable within one toolchain, which is all the profile's name needs).
fn file_hash(path: &Path) -> Result<u64, String> {
    use std::hash::{Hash, Hasher};
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut hasher = std::hash::DefaultHasher::new();
    bytes.hash(&mut hasher);
    Ok(hasher.finish())
}
