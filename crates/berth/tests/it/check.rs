//! `berth check` on broken files: one clear error each, with file, line and column (issue #2, acceptance 4).

use berth_test_support::{temp_dir, write_service};

use crate::support::berth;

/// Runs `berth check` on `app_toml`; asserts failure and that stderr holds every `expected` piece.
fn check_fails(app_toml: &str, expected: &[&str]) {
    let root = temp_dir();
    let dir = write_service(&root.path().join("svc"), app_toml);
    let out = std::process::Command::new(berth()).arg("check").arg(&dir).output().expect("run berth check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stderr}");
    assert!(!out.status.success(), "berth check accepted:\n{app_toml}");
    for piece in expected {
        assert!(stderr.contains(piece), "missing {piece:?} in:\n{stderr}");
    }
    assert_eq!(stderr.matches("error:").count(), 1, "one error, not a cascade:\n{stderr}");
    assert!(stderr.contains("hint:"), "every error says what to do:\n{stderr}");
}

const RUN: &str = "\n[run]\ncommand = \"./app\"\n";

#[test]
fn bad_toml() {
    check_fails(&format!("name = \"web\"\nreplicas = = 2\n{RUN}"), &["app.toml:2:", "replicas = = 2"]);
}

#[test]
fn wrong_type() {
    check_fails(&format!("name = \"web\"\nreplicas = \"two\"\n{RUN}"), &["app.toml:2:12", "replicas", "whole number"]);
}

#[test]
fn unknown_key_suggests_the_closest() {
    check_fails(
        &format!("name = \"web\"\nreplica = 2\n{RUN}"),
        &["app.toml:2:1", "unknown key `replica`", "`replicas`"],
    );
}

#[test]
fn bad_duration() {
    check_fails(
        &format!("name = \"web\"\n{RUN}\n[health]\ninterval = \"5 seconds\"\n"),
        &["app.toml:7:12", "invalid duration", "500ms"],
    );
}

#[test]
fn negative_replicas() {
    check_fails(
        &format!("name = \"web\"\nreplicas = -1\n{RUN}"),
        &["app.toml:2:12", "`replicas` must be 0 or more, found -1"],
    );
}

#[test]
fn a_valid_file_prints_the_effective_config_and_what_is_not_acted_on() {
    let root = temp_dir();
    let dir = write_service(
        &root.path().join("svc"),
        &format!("name = \"web\"\n{RUN}\n[autoscale]\nmin = 1\nmax = 3\ntarget_cpu = \"70%\"\n"),
    );
    let out = std::process::Command::new(berth()).arg("check").arg(&dir).output().expect("run berth check");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("replicas = 1") && stdout.contains("[health]"),
        "effective config with defaults:\n{stdout}"
    );
    assert!(stderr.contains("autoscale") && stderr.contains("not acted on"), "{stderr}");
    let json = std::process::Command::new(berth()).arg("check").arg(&dir).arg("--json").output().expect("run");
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).expect("check --json prints JSON");
    assert_eq!(value["valid"], true);
    assert_eq!(value["effective"]["name"], "web");
}

#[test]
fn init_scaffolds_a_valid_service() {
    let root = temp_dir();
    let dir = root.path().join("payments");
    let out = std::process::Command::new(berth()).arg("init").arg(&dir).output().expect("run berth init");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(dir.join("alert.yaml").is_file());
    let check = std::process::Command::new(berth()).arg("check").arg(&dir).output().expect("run berth check");
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    let again = std::process::Command::new(berth()).arg("init").arg(&dir).output().expect("run berth init");
    assert!(!again.status.success(), "init does not overwrite without --force");
}

#[test]
fn the_platform_config_beside_the_services_is_checked_too() {
    let root = temp_dir();
    let platform = root.path().join("berth.toml");
    std::fs::write(&platform, "[gateway]\nhttps = \"127.0.0.1:8443\"\n\n[[certificates]]\ncert = \"certs/site.pem\"\nkey = \"certs/site.key\"\n")
        .expect("write berth.toml");
    let check = || std::process::Command::new(berth()).arg("check").arg(root.path()).output().expect("run berth check");
    let out = check();
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stderr}");
    assert!(!out.status.success(), "a missing certificate file is an error");
    assert!(stderr.contains("berth.toml:5:8") && stderr.contains("cannot read `certs/site.pem`"), "{stderr}");

    std::fs::create_dir_all(root.path().join("certs")).expect("mkdir");
    for file in ["certs/site.pem", "certs/site.key"] {
        std::fs::write(root.path().join(file), "").expect("write");
    }
    let out = check();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("http3 = true"), "effective config with defaults");
}
