//! Snapshots: copy a service directory into an immutable release directory, hash what was copied, and
//! record where it came from (git commit, author).
//!
//! Layout of `<state dir>/releases/<service>/<number>/`:
//! - `app/`: the service directory, less `.git`, `target`, `node_modules`, the `.berthignore` entries and the
//!   state dir (should it be inside),
//!   with `app.toml` replaced by the effective source the release was made from;
//! - `bin/<program>`: the program, when `run.command[0]` is a path that resolves outside `app/`.
//!
//! The copy is built in `<number>.partial/` and renamed into place when complete, so a crash never leaves
//! a half release under a release's name. Files end 0444 (0555 when executable) and directories 0555.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

use berth_spec::format_size_rounded;
use sha2::{Digest, Sha256};

use super::{GitCommit, Release, ReleaseError, ReleaseOutcome};
use crate::load::LoadedService;

/// The largest service directory a snapshot copies.
pub const DEFAULT_MAX_SNAPSHOT_BYTES: u64 = 512 * 1024 * 1024;

/// Directory names never copied, at any depth: version control, build outputs, dependencies.
const ALWAYS_EXCLUDED: [&str; 3] = [".git", "target", "node_modules"];

/// The file listing more names or paths to leave out, one per line.
const IGNORE_FILE: &str = ".berthignore";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotOptions {
    /// Recorded as the release's author.
    pub author: String,
    /// A service directory holding more bytes than this (after exclusions) is refused.
    pub max_bytes: u64,
}

/// Snapshots `service` as release `number` with the default options (the author is `$USER`); see
/// [`snapshot_with`].
pub fn snapshot(state_dir: &Path, service: &LoadedService, number: u32) -> Result<Release, ReleaseError> {
    snapshot_with(state_dir, service, number, &SnapshotOptions::default())
}

/// Copies `service` into `<state_dir>/releases/<service>/<number>/` and returns its record, with outcome
/// `Built`. The caller stores it (`Store::put_release`); `number` comes from `Store::next_release_number`.
pub fn snapshot_with(
    state_dir: &Path,
    service: &LoadedService,
    number: u32,
    options: &SnapshotOptions,
) -> Result<Release, ReleaseError> {
    let name = service.spec.name.get_ref().clone();
    let service_releases = state_dir.join("releases").join(&name);
    let dir = service_releases.join(number.to_string());
    if fs::symlink_metadata(&dir).is_ok() {
        return Err(ReleaseError::Exists { service: name, number, path: dir.display().to_string() });
    }
    let partial = service_releases.join(format!("{number}.partial"));
    if fs::symlink_metadata(&partial).is_ok() {
        // Left by a snapshot that was interrupted; its number was never recorded.
        remove_tree(&partial).map_err(io_err("remove the unfinished snapshot", &partial))?;
    }
    fs::create_dir_all(&partial).map_err(io_err("create", &partial))?;
    let copied = copy_release(service, state_dir, &partial, options.max_bytes);
    let copied = match copied {
        Ok(copied) => copied,
        Err(error) => {
            let _ = remove_tree(&partial);
            return Err(error);
        }
    };
    fs::rename(&partial, &dir).map_err(io_err("move the finished snapshot to", &dir))?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o555)).map_err(io_err("make read-only", &dir))?;

    Ok(Release {
        service: name,
        number,
        artifact_hash: copied.artifact_hash,
        config_hash: crate::translate::release_identity(&service.spec),
        commit: git_commit(&service.dir),
        author: options.author.clone(),
        created_ms: unix_ms_now(),
        program: copied.program.map(|file_name| dir.join("bin").join(file_name)),
        dir,
        strategy: None,
        outcome: ReleaseOutcome::Built,
        deploy_started_ms: None,
        deploy_finished_ms: None,
    })
}

impl Default for SnapshotOptions {
    fn default() -> Self {
        let author = ["USER", "LOGNAME"]
            .iter()
            .find_map(|var| std::env::var(var).ok().filter(|name| !name.is_empty()))
            .unwrap_or_else(user_name);
        SnapshotOptions { author, max_bytes: DEFAULT_MAX_SNAPSHOT_BYTES }
    }
}

/// Removes a directory tree that may be read-only (a release), making it writable first.
pub(crate) fn remove_tree(path: &Path) -> std::io::Result<()> {
    make_writable(path)?;
    fs::remove_dir_all(path)
}

/// The release number a directory under `releases/<service>/` stands for (`None` for `3.partial` and
/// anything else).
pub(crate) fn release_number_of(dir_name: &std::ffi::OsStr) -> Option<u32> {
    dir_name.to_str()?.parse().ok()
}

/// What `copy_release` made.
struct Copied {
    artifact_hash: String,
    /// The file name of the program copied into `bin/`.
    program: Option<String>,
}

/// One thing to copy, relative to the service directory.
struct Entry {
    relative: PathBuf,
    kind: EntryKind,
}

enum EntryKind {
    Dir,
    File { size: u64, executable: bool },
    Symlink { target: PathBuf },
}

/// What a snapshot leaves out besides `ALWAYS_EXCLUDED`: the `.berthignore` entries.
struct Excludes {
    /// Names matched at any depth.
    names: Vec<String>,
    /// Paths relative to the service directory.
    paths: Vec<PathBuf>,
    /// The state dir (store, logs, releases), should it be inside the service directory.
    absolute: Option<PathBuf>,
}

fn copy_release(
    service: &LoadedService,
    state_dir: &Path,
    partial: &Path,
    max_bytes: u64,
) -> Result<Copied, ReleaseError> {
    let name = service.spec.name.get_ref();
    let source_dir = fs::canonicalize(&service.dir).map_err(io_err("read", &service.dir))?;
    let excludes = Excludes::read(&source_dir, state_dir)?;
    let mut entries = Vec::new();
    walk(&source_dir, Path::new(""), &excludes, &mut entries)?;
    let total: u64 = entries.iter().map(Entry::size).sum();
    if total > max_bytes {
        return Err(ReleaseError::TooLarge {
            service: name.clone(),
            dir: service.dir.display().to_string(),
            size: format_size_rounded(total),
            bound: format_size_rounded(max_bytes),
            largest: largest_entries(&entries, 3),
        });
    }
    let program = program_outside(service, &source_dir, &entries)?;

    let mut hasher = Sha256::new();
    let app = partial.join("app");
    fs::create_dir(&app).map_err(io_err("create", &app))?;
    // The effective config first: it may differ from the file on disk, which is skipped below.
    fs::write(app.join("app.toml"), &service.source).map_err(io_err("write", &app.join("app.toml")))?;
    hash_entry(&mut hasher, b"config", Path::new("app.toml"), service.source.as_bytes());
    let mut dirs = vec![app.clone()];
    for entry in &entries {
        if entry.relative == Path::new("app.toml") {
            continue;
        }
        let from = source_dir.join(&entry.relative);
        let to = app.join(&entry.relative);
        match &entry.kind {
            EntryKind::Dir => {
                fs::create_dir(&to).map_err(io_err("create", &to))?;
                hash_entry(&mut hasher, b"dir", &entry.relative, b"");
                dirs.push(to);
            }
            EntryKind::File { executable, .. } => {
                let tag: &[u8] = if *executable { b"exec" } else { b"file" };
                hash_entry(&mut hasher, tag, &entry.relative, b"");
                copy_file(&from, &to, *executable, &mut hasher)?;
            }
            EntryKind::Symlink { target } => {
                hash_entry(&mut hasher, b"link", &entry.relative, target.as_os_str().as_encoded_bytes());
                std::os::unix::fs::symlink(target, &to).map_err(io_err("create the symlink", &to))?;
            }
        }
    }

    let program_name = match program {
        Some(source) => {
            let file_name = source.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let bin = partial.join("bin");
            fs::create_dir(&bin).map_err(io_err("create", &bin))?;
            let executable = fs::metadata(&source).map_err(io_err("read", &source))?.mode() & 0o111 != 0;
            hash_entry(&mut hasher, b"program", Path::new(&file_name), b"");
            copy_file(&source, &bin.join(&file_name), executable, &mut hasher)?;
            dirs.push(bin);
            Some(file_name)
        }
        None => None,
    };

    // Children before parents, so no directory is read-only before its contents are in place.
    for dir in dirs.iter().rev() {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o555)).map_err(io_err("make read-only", dir))?;
    }
    let artifact_hash = hasher.finalize().iter().map(|byte| format!("{byte:02x}")).collect();
    Ok(Copied { artifact_hash, program: program_name })
}

impl Excludes {
    fn read(source_dir: &Path, state_dir: &Path) -> Result<Excludes, ReleaseError> {
        let mut res = Excludes { names: Vec::new(), paths: Vec::new(), absolute: fs::canonicalize(state_dir).ok() };
        let file = source_dir.join(IGNORE_FILE);
        let text = match fs::read_to_string(&file) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(res),
            Err(error) => return Err(io_err("read", &file)(error)),
        };
        for line in text.lines().map(str::trim).filter(|line| !line.is_empty() && !line.starts_with('#')) {
            let line = line.trim_start_matches('/').trim_end_matches('/');
            if line.contains('/') {
                res.paths.push(PathBuf::from(line));
            } else if !line.is_empty() {
                res.names.push(line.to_owned());
            }
        }
        Ok(res)
    }

    fn excludes(&self, absolute: &Path, relative: &Path, is_dir: bool) -> bool {
        let by_name = relative.file_name().and_then(|name| name.to_str()).is_some_and(|name| {
            (is_dir && ALWAYS_EXCLUDED.contains(&name)) || self.names.iter().any(|listed| listed == name)
        });
        by_name || self.paths.iter().any(|path| path == relative) || self.absolute.as_deref() == Some(absolute)
    }
}

impl Entry {
    fn size(&self) -> u64 {
        match self.kind {
            EntryKind::File { size, .. } => size,
            EntryKind::Dir | EntryKind::Symlink { .. } => 0,
        }
    }
}

/// Appends everything under `root/relative` to `res`, sorted by name, parents before children.
fn walk(root: &Path, relative: &Path, excludes: &Excludes, res: &mut Vec<Entry>) -> Result<(), ReleaseError> {
    let dir = root.join(relative);
    let mut names: Vec<std::ffi::OsString> = fs::read_dir(&dir)
        .map_err(io_err("read", &dir))?
        .map(|entry| entry.map(|entry| entry.file_name()))
        .collect::<Result<_, _>>()
        .map_err(io_err("read", &dir))?;
    names.sort();
    for name in names {
        let relative = relative.join(&name);
        let absolute = root.join(&relative);
        let meta = fs::symlink_metadata(&absolute).map_err(io_err("read", &absolute))?;
        if excludes.excludes(&absolute, &relative, meta.is_dir()) {
            continue;
        }
        if meta.is_dir() {
            res.push(Entry { relative: relative.clone(), kind: EntryKind::Dir });
            walk(root, &relative, excludes, res)?;
        } else if meta.is_file() {
            let kind = EntryKind::File { size: meta.len(), executable: meta.mode() & 0o111 != 0 };
            res.push(Entry { relative, kind });
        } else if meta.is_symlink() {
            let target = fs::read_link(&absolute).map_err(io_err("read the symlink", &absolute))?;
            res.push(Entry { relative, kind: EntryKind::Symlink { target } });
        }
        // Sockets, FIFOs and devices are not part of an application's files.
    }
    Ok(())
}

/// The program to copy into `bin/`: `run.command[0]` when it is a relative path (one with a `/`) that
/// resolves to a file the snapshot does not hold, outside the service directory or in an excluded one.
/// A bare name is looked up in `PATH` when the service starts, and an absolute path is a system program:
/// neither is copied.
fn program_outside(
    service: &LoadedService,
    source_dir: &Path,
    entries: &[Entry],
) -> Result<Option<PathBuf>, ReleaseError> {
    let Some(program) = service.spec.run.command.first() else { return Ok(None) };
    if !program.contains('/') || Path::new(program).is_absolute() {
        return Ok(None);
    }
    let path = service.dir.join(&service.spec.run.workdir).join(program);
    let resolved = fs::canonicalize(&path).map_err(|error| match error.kind() {
        std::io::ErrorKind::NotFound => ReleaseError::ProgramMissing {
            service: service.spec.name.get_ref().clone(),
            program: program.clone(),
            path: normalize(&path).display().to_string(),
        },
        _ => io_err("read", &path)(error),
    })?;
    let in_snapshot = resolved.strip_prefix(source_dir).is_ok_and(|relative| {
        entries.iter().any(|entry| entry.relative == relative && matches!(entry.kind, EntryKind::File { .. }))
    });
    Ok((!in_snapshot).then_some(resolved))
}

fn copy_file(from: &Path, to: &Path, executable: bool, hasher: &mut Sha256) -> Result<(), ReleaseError> {
    let mut source = fs::File::open(from).map_err(io_err("read", from))?;
    let mut dest = fs::File::create_new(to).map_err(io_err("create", to))?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut len: u64 = 0;
    loop {
        let n = match source.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(io_err("read", from)(error)),
        };
        hasher.update(&buf[..n]);
        dest.write_all(&buf[..n]).map_err(io_err("write", to))?;
        len += n as u64;
    }
    // The length ends the contents, so that one file's end cannot pass for the next one's start.
    hasher.update(len.to_le_bytes());
    let mode = if executable { 0o555 } else { 0o444 };
    dest.set_permissions(fs::Permissions::from_mode(mode)).map_err(io_err("make read-only", to))
}

fn hash_entry(hasher: &mut Sha256, tag: &[u8], relative: &Path, data: &[u8]) {
    for part in [tag, relative.as_os_str().as_encoded_bytes(), data] {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
}

/// `git rev-parse HEAD` in `dir`, and whether anything under `dir` differs from it. `None` when `dir` is
/// not in a git work tree or git is not installed.
fn git_commit(dir: &Path) -> Option<GitCommit> {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|output| output.status.success())
            .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    };
    let sha = git(&["rev-parse", "--verify", "HEAD"]).filter(|sha| !sha.is_empty())?;
    let dirty = git(&["status", "--porcelain", "--", "."]).is_none_or(|status| !status.is_empty());
    Some(GitCommit { sha, dirty })
}

/// The name of the daemon's user from /etc/passwd (services often run without `$USER`), else `uid N`.
fn user_name() -> String {
    let uid = rustix::process::getuid().as_raw().to_string();
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .map(|line| line.split(':').collect::<Vec<&str>>())
        .find(|fields| fields.get(2) == Some(&uid.as_str()))
        .and_then(|fields| fields.first().map(|name| (*name).to_owned()))
        .unwrap_or_else(|| format!("uid {uid}"))
}

/// Gives the owner write permission on `path` and, for a directory, on everything under it.
fn make_writable(path: &Path) -> std::io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    if meta.is_symlink() {
        return Ok(());
    }
    fs::set_permissions(path, fs::Permissions::from_mode(meta.mode() | 0o700))?;
    if meta.is_dir() {
        for entry in fs::read_dir(path)? {
            make_writable(&entry?.path())?;
        }
    }
    Ok(())
}

/// The largest top-level entries, for the size error: `data/ (400.0MiB), video.mp4 (90.0MiB)`.
fn largest_entries(entries: &[Entry], n: usize) -> String {
    let mut sizes: std::collections::BTreeMap<PathBuf, (u64, bool)> = std::collections::BTreeMap::new();
    for entry in entries {
        let Some(Component::Normal(top)) = entry.relative.components().next() else { continue };
        let is_dir = entry.relative.components().count() > 1 || matches!(entry.kind, EntryKind::Dir);
        let slot = sizes.entry(PathBuf::from(top)).or_default();
        slot.0 += entry.size();
        slot.1 |= is_dir;
    }
    let mut sizes: Vec<(PathBuf, (u64, bool))> = sizes.into_iter().collect();
    sizes.sort_by_key(|(_, (size, _))| std::cmp::Reverse(*size));
    let shown: Vec<String> = sizes
        .iter()
        .take(n)
        .map(|(path, (size, is_dir))| {
            format!("{}{} ({})", path.display(), if *is_dir { "/" } else { "" }, format_size_rounded(*size))
        })
        .collect();
    shown.join(", ")
}

/// `a/b/../c` as `a/c`, without touching the filesystem (for messages about paths that do not exist).
fn normalize(path: &Path) -> PathBuf {
    let mut res = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                res.pop();
            }
            Component::CurDir => {}
            other => res.push(other),
        }
    }
    res
}

fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| since.as_millis() as u64)
        .unwrap_or(0)
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ReleaseError {
    let path = path.display().to_string();
    move |source| ReleaseError::Io { action, path, source }
}

#[cfg(test)]
mod tests;
