//! Tests of snapshots: a service directory laid out like the examples (`examples/<name>/` with its program
//! in the repository's `target/release/`), snapshotted into a temp state dir.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::*;
use crate::load::load_dir;

struct Fixture {
    _tmp: tempfile::TempDir,
    /// `<tmp>/repo/examples/svc`
    service_dir: PathBuf,
    /// `<tmp>/repo/target/release/svc`, outside the service directory.
    program: PathBuf,
    state_dir: PathBuf,
}

const SPEC: &str = "name = \"svc\"\n[run]\ncommand = \"../../target/release/svc --port 1\"\n";

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().expect("temp dir");
        let repo = tmp.path().join("repo");
        let service_dir = repo.join("examples/svc");
        for dir in ["sub", ".git/objects", "target/debug", "node_modules/left-pad", "data", "sub/cache"] {
            fs::create_dir_all(service_dir.join(dir)).expect("create dir");
        }
        let files = [
            ("app.toml", SPEC),
            ("index.html", "<h1>hello</h1>"),
            ("sub/page.html", "page"),
            ("sub/cache/blob", "cached"),
            (".git/HEAD", "ref: refs/heads/main"),
            ("target/debug/svc", "old build"),
            ("node_modules/left-pad/index.js", "module.exports = 1"),
            ("data/big.db", "database"),
            ("notes.log", "log"),
            (".berthignore", "# left out\n/data/\nnotes.log\nsub/cache\n"),
        ];
        for (path, text) in files {
            fs::write(service_dir.join(path), text).expect("write file");
        }
        write_executable(&service_dir.join("run.sh"), "#!/bin/sh\n");
        let program = repo.join("target/release/svc");
        fs::create_dir_all(program.parent().expect("has a parent")).expect("create dir");
        write_executable(&program, "binary v1");
        let state_dir = tmp.path().join("state");
        Fixture { _tmp: tmp, service_dir, program, state_dir }
    }

    fn service(&self) -> LoadedService {
        load_dir(&self.service_dir).expect("the fixture spec is valid")
    }

    fn snapshot(&self, number: u32) -> Release {
        snapshot(&self.state_dir, &self.service(), number).expect("snapshot")
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // Releases are read-only: without this, a non-root user could not delete the temp dir.
        let _ = remove_tree(&self.state_dir);
    }
}

fn write_executable(path: &Path, text: &str) {
    fs::write(path, text).expect("write file");
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).expect("chmod");
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).expect("stat").permissions().mode() & 0o777
}

/// Every path under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    let mut res = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(next) = stack.pop() {
        for entry in fs::read_dir(&next).expect("read dir") {
            let path = entry.expect("entry").path();
            res.push(path.strip_prefix(dir).expect("below dir").display().to_string());
            if path.is_dir() {
                stack.push(path);
            }
        }
    }
    res.sort();
    res
}

#[test]
fn program_outside_the_service_dir_is_copied_and_run_from_the_release() {
    let fixture = Fixture::new();
    let release = fixture.snapshot(1);
    let dir = fixture.state_dir.join("releases/svc/1");
    assert_eq!(release.dir, dir);
    assert_eq!(release.number, 1);
    assert_eq!(release.outcome, ReleaseOutcome::Built);
    let copy = dir.join("bin/svc");
    assert_eq!(release.program.as_deref(), Some(copy.as_path()));
    assert_eq!(fs::read_to_string(&copy).expect("read copy"), "binary v1");
    assert_eq!(mode(&copy), 0o555, "executable, read-only");

    // The release runs its copy, even after the original is rebuilt.
    write_executable(&fixture.program, "binary v2");
    let loaded = release.load().expect("load the release");
    assert_eq!(loaded.dir, dir.join("app"));
    assert_eq!(loaded.program.as_deref(), Some(copy.as_path()));
    let mut config = crate::translate::to_service_config(&loaded.spec, &loaded.dir, None);
    crate::translate::set_program(&mut config, loaded.program.as_deref().expect("has a program"));
    assert_eq!(config.command, [copy.display().to_string(), "--port".into(), "1".into()]);
    assert_eq!(config.release, release.config_hash, "the config hash is the supervisor's release identity");
}

#[test]
fn excluded_paths_are_left_out_and_the_copy_is_read_only() {
    let fixture = Fixture::new();
    let release = fixture.snapshot(1);
    let app = release.app_dir();
    assert_eq!(
        tree(&app),
        [".berthignore", "app.toml", "index.html", "run.sh", "sub", "sub/page.html"],
        ".git, target, node_modules and the .berthignore entries are not copied"
    );
    assert_eq!(
        tree(&release.dir),
        [
            "app",
            "app/.berthignore",
            "app/app.toml",
            "app/index.html",
            "app/run.sh",
            "app/sub",
            "app/sub/page.html",
            "bin",
            "bin/svc"
        ]
    );
    assert_eq!(mode(&app.join("index.html")), 0o444);
    assert_eq!(mode(&app.join("run.sh")), 0o555, "the executable bit is kept");
    for dir in [&release.dir, &app, &app.join("sub"), &release.dir.join("bin")] {
        assert_eq!(mode(dir), 0o555, "{}", dir.display());
    }
    assert!(!fixture.state_dir.join("releases/svc/1.partial").exists());
}

#[test]
fn a_program_inside_an_excluded_directory_is_copied_too() {
    let fixture = Fixture::new();
    fs::write(fixture.service_dir.join("app.toml"), "name = \"svc\"\n[run]\ncommand = \"./target/debug/svc\"\n")
        .expect("write app.toml");
    let release = fixture.snapshot(1);
    let copy = release.dir.join("bin/svc");
    assert_eq!(release.program.as_deref(), Some(copy.as_path()));
    assert_eq!(fs::read_to_string(copy).expect("read copy"), "old build");

    // A program the snapshot holds runs from the snapshot, as the spec says.
    fs::write(fixture.service_dir.join("app.toml"), "name = \"svc\"\n[run]\ncommand = \"./run.sh\"\n")
        .expect("write app.toml");
    let release = fixture.snapshot(2);
    assert_eq!(release.program, None);
    assert!(!release.dir.join("bin").exists());
}

#[test]
fn a_state_dir_inside_the_service_dir_is_not_copied_into_itself() {
    let fixture = Fixture::new();
    let state_dir = fixture.service_dir.join("state");
    let first = snapshot(&state_dir, &fixture.service(), 1).expect("snapshot");
    let second = snapshot(&state_dir, &fixture.service(), 2).expect("snapshot");
    assert!(!second.app_dir().join("state").exists(), "the releases are not part of the service");
    assert_eq!(second.artifact_hash, first.artifact_hash);
    remove_tree(&state_dir).expect("clean up");
}

#[test]
fn a_missing_program_is_refused_with_its_path() {
    let fixture = Fixture::new();
    fs::remove_file(&fixture.program).expect("remove program");
    let error = snapshot(&fixture.state_dir, &fixture.service(), 1).expect_err("no program");
    let expected_path = fixture.program.display().to_string();
    assert!(
        matches!(&error, ReleaseError::ProgramMissing { path, .. } if *path == expected_path),
        "{error:?} should name {expected_path}"
    );
    assert!(error.hint().is_some_and(|hint| hint.contains("[build]")));
    assert!(!fixture.state_dir.join("releases/svc/1").exists(), "nothing is left behind");
    assert!(!fixture.state_dir.join("releases/svc/1.partial").exists(), "nothing is left behind");
}

#[test]
fn a_directory_over_the_size_bound_is_refused() {
    let fixture = Fixture::new();
    fs::create_dir(fixture.service_dir.join("videos")).expect("create dir");
    fs::write(fixture.service_dir.join("videos/intro.mp4"), vec![0u8; 3 * 1024 * 1024]).expect("write file");
    let options = SnapshotOptions { author: "ana".into(), max_bytes: 2 * 1024 * 1024 };
    let error = snapshot_with(&fixture.state_dir, &fixture.service(), 1, &options).expect_err("too large");
    let message = error.to_string();
    assert!(message.contains("over the release size bound of 2.0MiB"), "{message}");
    assert!(message.contains("largest entries: videos/ (3.0MiB)"), "{message}");
    assert!(error.hint().is_some_and(|hint| hint.contains(".berthignore")));
    assert!(!fixture.state_dir.join("releases/svc/1.partial").exists(), "nothing is left behind");

    // Listing it in .berthignore is the way out.
    fs::write(fixture.service_dir.join(".berthignore"), "videos\n").expect("write .berthignore");
    snapshot_with(&fixture.state_dir, &fixture.service(), 1, &options).expect("fits once excluded");
}

#[test]
fn the_hash_follows_contents_not_modification_times() {
    let fixture = Fixture::new();
    let first = fixture.snapshot(1);
    assert_eq!(first.artifact_hash.len(), 64, "hex SHA-256");

    let touched = fs::File::options().write(true).open(fixture.service_dir.join("index.html")).expect("open");
    touched.set_modified(std::time::SystemTime::UNIX_EPOCH).expect("set mtime");
    assert_eq!(fixture.snapshot(2).artifact_hash, first.artifact_hash, "a new mtime is not a new artifact");
    fs::write(fixture.service_dir.join("target/debug/svc"), "rebuilt").expect("write file");
    assert_eq!(fixture.snapshot(3).artifact_hash, first.artifact_hash, "excluded files do not count");

    fs::write(fixture.service_dir.join("index.html"), "<h1>hello!</h1>").expect("write file");
    let edited = fixture.snapshot(4);
    assert_ne!(edited.artifact_hash, first.artifact_hash, "a file's contents count");
    write_executable(&fixture.program, "binary v2");
    let rebuilt = fixture.snapshot(5);
    assert_ne!(rebuilt.artifact_hash, edited.artifact_hash, "the copied program counts");
    assert_eq!(rebuilt.config_hash, first.config_hash, "the config did not change");
    fs::set_permissions(fixture.service_dir.join("run.sh"), fs::Permissions::from_mode(0o644)).expect("chmod");
    assert_ne!(fixture.snapshot(6).artifact_hash, rebuilt.artifact_hash, "the executable bit counts");
}

#[test]
fn the_effective_source_is_what_the_release_runs() {
    let fixture = Fixture::new();
    let mut service = fixture.service();
    service.source = SPEC.replace("--port 1", "--port 2");
    let release = snapshot(&fixture.state_dir, &service, 1).expect("snapshot");
    assert_eq!(fs::read_to_string(release.app_dir().join("app.toml")).expect("read"), service.source);
    assert_eq!(release.load().expect("load").spec.run.command[2], "2");
}

#[test]
fn a_release_number_is_used_once_and_leftovers_are_replaced() {
    let fixture = Fixture::new();
    fixture.snapshot(1);
    let error = snapshot(&fixture.state_dir, &fixture.service(), 1).expect_err("exists");
    assert!(matches!(error, ReleaseError::Exists { number: 1, .. }), "{error:?}");

    // An interrupted snapshot leaves `<n>.partial`, read-only in places; the next try replaces it.
    let partial = fixture.state_dir.join("releases/svc/2.partial");
    fs::create_dir_all(partial.join("app")).expect("create dir");
    fs::write(partial.join("app/stale"), "x").expect("write file");
    fs::set_permissions(partial.join("app"), fs::Permissions::from_mode(0o555)).expect("chmod");
    let release = fixture.snapshot(2);
    assert!(!release.app_dir().join("stale").exists());
    assert!(!partial.exists());
}

#[test]
fn git_commit_and_dirty_state_are_recorded() {
    let fixture = Fixture::new();
    let author = SnapshotOptions { author: "ana".into(), ..SnapshotOptions::default() };
    let release = snapshot_with(&fixture.state_dir, &fixture.service(), 1, &author).expect("snapshot");
    assert_eq!(release.commit, None, "not a git work tree");
    assert_eq!(release.author, "ana");

    let repo = fixture.service_dir.parent().and_then(Path::parent).expect("repo dir");
    fs::remove_dir_all(fixture.service_dir.join(".git")).expect("remove fake .git");
    let git = |args: &[&str]| {
        let status = std::process::Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "init.defaultBranch=main"])
            .args(args)
            .current_dir(repo)
            .stdout(Stdio::null())
            .status()
            .expect("git runs");
        assert!(status.success(), "git {args:?}");
    };
    git(&["init", "-q"]);
    git(&["add", "-A"]);
    git(&["commit", "-qm", "first"]);
    let head =
        std::process::Command::new("git").args(["rev-parse", "HEAD"]).current_dir(repo).output().expect("git runs");
    let head = String::from_utf8_lossy(&head.stdout).trim().to_owned();

    let clean = fixture.snapshot(2);
    assert_eq!(clean.commit, Some(GitCommit { sha: head.clone(), dirty: false }));
    fs::write(fixture.service_dir.join("index.html"), "edited").expect("write file");
    let dirty = fixture.snapshot(3);
    assert_eq!(dirty.commit, Some(GitCommit { sha: head, dirty: true }));
}
