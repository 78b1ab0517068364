//! Temporary directories and service directories for tests.

use std::fs;
use std::path::{Path, PathBuf};

/// A fresh temporary directory, removed when the value is dropped.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("berth-test-")
        .tempdir()
        .unwrap_or_else(|error| panic!("failed to create a temporary directory: {error}"))
}

/// Creates `dir` (and its parents), writes `app.toml` into it and returns `dir`.
pub fn write_service(dir: &Path, app_toml: &str) -> PathBuf {
    fs::create_dir_all(dir).unwrap_or_else(|error| panic!("failed to create {}: {error}", dir.display()));
    let manifest = dir.join("app.toml");
    fs::write(&manifest, app_toml).unwrap_or_else(|error| panic!("failed to write {}: {error}", manifest.display()));
    dir.to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_service_creates_nested_dirs() {
        let tmp = temp_dir();
        let dir = write_service(&tmp.path().join("svc/web"), "name = \"web\"\n");
        assert_eq!(dir, tmp.path().join("svc/web"));
        assert_eq!(fs::read_to_string(dir.join("app.toml")).unwrap(), "name = \"web\"\n");
    }
}
