//! Repository checks run as tests: every Rust module starts with a `//!` doc comment, the tree is formatted,
//! and the bench scripts parse.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if name == "target" || name.to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_module_says_what_it_is_for() {
    let mut files = Vec::new();
    for dir in ["crates", "examples", "xtask"] {
        rust_files(&root().join(dir), &mut files);
    }
    let missing: Vec<String> = files
        .iter()
        .filter(|path| !path.ends_with("tests.rs"))
        .filter(|path| {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            !text.trim_start().starts_with("//!")
        })
        .map(|path| path.strip_prefix(root()).unwrap_or(path).display().to_string())
        .collect();
    assert!(missing.is_empty(), "modules without a `//!` doc comment:\n{}", missing.join("\n"));
}

#[test]
fn the_tree_is_formatted() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = std::process::Command::new(cargo).args(["fmt", "--all", "--", "--check"]).current_dir(root()).output();
    match out {
        Ok(out) => assert!(
            out.status.success(),
            "run `cargo fmt --all`:\n{}",
            String::from_utf8_lossy(&out.stdout).lines().take(40).collect::<Vec<_>>().join("\n")
        ),
        Err(error) => panic!("cannot run cargo fmt: {error}"),
    }
}

#[test]
fn the_bench_scripts_parse() {
    let mut scripts = Vec::new();
    let mut dirs = vec![root().join("bench")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|error| panic!("{}: {error}", dir.display())) {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|ext| ext == "sh") {
                scripts.push(path);
            }
        }
    }
    assert!(scripts.len() >= 3, "bench scripts found: {scripts:?}");
    for script in scripts {
        let out = std::process::Command::new("bash").arg("-n").arg(&script).output();
        match out {
            Ok(out) => assert!(
                out.status.success(),
                "bash -n {} failed:\n{}",
                script.display(),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(error) => panic!("cannot run bash: {error}"),
        }
    }
}
