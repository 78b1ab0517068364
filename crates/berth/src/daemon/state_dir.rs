//! The state directory: its lock (one daemon per dir), the API token, and `daemon.json`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use berth_api::wire::DaemonInfo;

use crate::cli::error::user;

/// Creates the state dir (0700) and returns its canonical path: replicas carry it in their environment,
/// and the next daemon finds them by it.
pub fn prepare(dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("failed to create the state dir {}", dir.display()))?;
    dir.canonicalize().with_context(|| format!("failed to resolve the state dir {}", dir.display()))
}

/// Holds an exclusive lock on `<dir>/daemon.lock` for as long as the returned file lives.
pub fn lock(dir: &Path) -> anyhow::Result<File> {
    let path = dir.join("daemon.lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("failed to open {}", path.display()))?;
    if rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        let pid = std::fs::read(dir.join("daemon.json"))
            .ok()
            .and_then(|bytes| serde_json::from_slice::<DaemonInfo>(&bytes).ok())
            .map(|info| format!(" (pid {})", info.pid))
            .unwrap_or_default();
        return Err(user(
            format!("another berth daemon{pid} is running with state dir {}", dir.display()),
            "use `berth ps` to talk to it, `berth down` to stop it, or pass another --state-dir",
        ));
    }
    Ok(file)
}

/// The bearer token of the control API: created once, readable by the owner only.
pub fn ensure_token(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join("token");
    if let Ok(token) = std::fs::read_to_string(&path) {
        let token = token.trim().to_owned();
        if token.len() >= 32 {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            return Ok(token);
        }
    }
    let mut bytes = [0u8; 32];
    rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty())
        .context("failed to get random bytes for the API token")?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    write_private(&path, token.as_bytes())?;
    Ok(token)
}

pub fn write_info(dir: &Path, info: &DaemonInfo) -> anyhow::Result<()> {
    write_private(&dir.join("daemon.json"), &serde_json::to_vec(info)?)
}

pub fn remove_info(dir: &Path) {
    let _ = std::fs::remove_file(dir.join("daemon.json"));
}

/// Writes a 0600 file atomically (temp file + rename), so a reader never sees half of it.
fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("failed to write {}", tmp.display()))?;
    file.write_all(contents)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("failed to write {}", path.display()))
}
