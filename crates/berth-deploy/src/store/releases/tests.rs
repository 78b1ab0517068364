//! Tests of the release records: numbering, order, updates, pruning, and all of it across a reopen.

use std::os::unix::fs::PermissionsExt;

use super::*;
use crate::release::ReleaseOutcome;

struct Fixture {
    tmp: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture { tmp: tempfile::tempdir().expect("temp dir") }
    }

    fn open(&self) -> Store {
        Store::open(&self.tmp.path().join("state.redb")).expect("open the store")
    }

    /// A release record with a read-only directory, as a snapshot leaves it.
    fn release(&self, service: &str, number: u32) -> Release {
        let dir = self.release_dir(service, number);
        if !dir.exists() {
            std::fs::create_dir_all(dir.join("app")).expect("create dir");
            std::fs::write(dir.join("app/app.toml"), "name = \"x\"").expect("write file");
            for (path, mode) in [(dir.join("app/app.toml"), 0o444), (dir.join("app"), 0o555), (dir.clone(), 0o555)] {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            }
        }
        Release {
            service: service.to_owned(),
            number,
            artifact_hash: format!("hash-{number}"),
            config_hash: "config".into(),
            commit: None,
            author: "ana".into(),
            created_ms: 1000 + u64::from(number),
            dir,
            program: None,
            strategy: None,
            outcome: ReleaseOutcome::Built,
            deploy_started_ms: None,
            deploy_finished_ms: None,
        }
    }

    fn release_dir(&self, service: &str, number: u32) -> PathBuf {
        self.tmp.path().join("releases").join(service).join(number.to_string())
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = remove_tree(&self.tmp.path().join("releases"));
    }
}

fn numbers(releases: &[Release]) -> Vec<u32> {
    releases.iter().map(|release| release.number).collect()
}

#[test]
fn numbers_count_up_per_service_and_survive_reopen() {
    let fixture = Fixture::new();
    {
        let store = fixture.open();
        assert_eq!(store.releases("web").expect("list"), []);
        assert_eq!(store.next_release_number("web").expect("number"), 1);
        assert_eq!(store.next_release_number("web").expect("number"), 2, "a number is reserved once taken");
        assert_eq!(store.next_release_number("api").expect("number"), 1, "per service");
    }
    let store = fixture.open();
    assert_eq!(store.next_release_number("web").expect("number"), 3);
}

#[test]
fn releases_are_listed_newest_first_per_service() {
    let fixture = Fixture::new();
    let store = fixture.open();
    for (service, number) in [("web", 1), ("web", 2), ("web-2", 1), ("web", 10), ("we", 3)] {
        store.put_release(&fixture.release(service, number)).expect("put");
    }
    assert_eq!(numbers(&store.releases("web").expect("list")), [10, 2, 1]);
    assert_eq!(numbers(&store.releases("web-2").expect("list")), [1]);
    assert_eq!(store.release("web", 2).expect("get"), Some(fixture.release("web", 2)));
    assert_eq!(store.release("web", 3).expect("get"), None);
    assert_eq!(store.next_release_number("web").expect("number"), 11, "never below a stored release");
}

#[test]
fn deploy_fields_are_updated_in_place() {
    let fixture = Fixture::new();
    {
        let store = fixture.open();
        store.put_release(&fixture.release("web", 1)).expect("put");
        let updated = store
            .update_release("web", 1, |release| {
                release.strategy = Some(berth_spec::Strategy::Canary);
                release.outcome = ReleaseOutcome::RolledBack { reason: "error rate 9.8% > 1%".into() };
                release.deploy_started_ms = Some(5000);
                release.deploy_finished_ms = Some(9000);
                release.number = 7;
            })
            .expect("update");
        assert_eq!(updated.number, 1, "the key fields stay");
        assert_eq!(updated.deploy_duration_ms(), Some(4000));
        let error = store.update_release("web", 2, |_| {}).expect_err("no such release");
        assert!(matches!(error, StoreError::NoRelease { number: 2, .. }), "{error:?}");
    }
    let store = fixture.open();
    let release = store.release("web", 1).expect("get").expect("stored");
    assert_eq!(release.strategy, Some(berth_spec::Strategy::Canary));
    assert_eq!(release.outcome.as_str(), "rolled-back");
    assert_eq!(release.outcome.reason(), Some("error rate 9.8% > 1%"));
}

#[test]
fn prune_keeps_the_newest_and_the_protected_and_removes_the_rest_from_disk() {
    let fixture = Fixture::new();
    {
        let store = fixture.open();
        for number in 1..=6 {
            store.put_release(&fixture.release("web", number)).expect("put");
        }
        store.put_release(&fixture.release("api", 1)).expect("put");
        // Left by a deploy that died between snapshot and record.
        let orphan = fixture.release("web", 0).dir;
        // The directory of a deploy in progress: newer than every record, so not an orphan yet.
        let in_progress = fixture.release("web", 7).dir;

        let pruned = store.prune_releases("web", 2, &[2]).expect("prune");
        assert_eq!(pruned, [4, 3, 1]);
        assert!(!orphan.exists(), "orphan directories below the kept releases go too");
        assert!(in_progress.exists());
    }
    let store = fixture.open();
    assert_eq!(numbers(&store.releases("web").expect("list")), [6, 5, 2]);
    for (number, kept) in [(1, false), (2, true), (3, false), (4, false), (5, true), (6, true)] {
        assert_eq!(fixture.release_dir("web", number).exists(), kept, "release {number}");
    }
    assert_eq!(numbers(&store.releases("api").expect("list")), [1], "other services are untouched");
    assert!(fixture.release_dir("api", 1).exists());
    assert_eq!(store.next_release_number("web").expect("number"), 7, "pruned numbers are not reused");
    assert_eq!(store.prune_releases("web", 3, &[]).expect("prune"), Vec::<u32>::new(), "nothing past the limit");
}
