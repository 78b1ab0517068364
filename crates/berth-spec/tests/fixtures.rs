//! Fixture tests: every file in `fixtures/invalid` renders to its snapshot, and every file in
//! `fixtures/valid` parses and survives a round trip through the effective config.

use std::fs;
use std::path::{Path, PathBuf};

use berth_spec::{Severity, Spec, not_yet_acted_on, parse, release_hash, render_all};

/// Fixtures the task asks for; the test fails if one goes missing.
const REQUIRED_INVALID: &[&str] = &[
    "bad_toml",
    "wrong_type",
    "unknown_key",
    "unknown_key_nested",
    "bad_duration",
    "bare_number_duration",
    "negative_replicas",
    "bad_name",
    "timeout_over_interval",
    "bad_size",
    "several_semantic_errors",
];

#[test]
fn invalid_fixtures_render_to_their_snapshots() {
    let fixtures = fixtures_in("invalid");
    for required in REQUIRED_INVALID {
        assert!(fixtures.iter().any(|(name, _)| name == required), "missing fixture invalid/{required}.toml");
    }
    for (name, path) in fixtures {
        let source = read(&path);
        let file = format!("invalid/{name}.toml");
        let diags = match parse(&file, &source) {
            Ok(spec) => panic!("{file} parsed, expected errors: {spec:#?}"),
            Err(diags) => diags,
        };
        assert!(!diags.is_empty(), "{file}: an error result without diagnostics");
        for diag in &diags {
            assert_eq!(diag.severity, Severity::Error, "{file}: {diag}");
            assert!(diag.hint.is_some(), "{file}: error without a hint: {diag}");
            assert!(!diag.message.ends_with('.'), "{file}: message ends with a period: {diag}");
        }
        insta::with_settings!({ description => source.clone(), omit_expression => true }, {
            insta::assert_snapshot!(format!("invalid__{name}"), render_all(&diags, &source));
        });
    }
}

#[test]
fn several_semantic_errors_are_reported_together() {
    let source = read(&fixture_dir("invalid").join("several_semantic_errors.toml"));
    let diags = parse("app.toml", &source).expect_err("the fixture is invalid");
    assert!(diags.len() >= 10, "only {} diagnostics", diags.len());
    let lines: Vec<usize> = diags.iter().map(|diag| diag.line).collect();
    let mut sorted = lines.clone();
    sorted.sort_unstable();
    assert_eq!(lines, sorted, "diagnostics are in source order");
}

#[test]
fn valid_fixtures_parse_and_round_trip() {
    for (name, path) in fixtures_in("valid") {
        let source = read(&path);
        let spec = parse_ok(&format!("valid/{name}.toml"), &source);
        let effective = toml::to_string(&spec).expect("a spec serializes to TOML");
        let reparsed = parse_ok(&format!("effective {name}"), &effective);
        assert_eq!(reparsed, spec, "{name}: effective config parses to a different spec");
        assert_eq!(release_hash(&reparsed), release_hash(&spec));
        insta::with_settings!({ description => source.clone(), omit_expression => true }, {
            insta::assert_snapshot!(format!("effective__{name}"), effective);
        });
    }
}

#[test]
fn full_fixture_reads_every_value() {
    let source = read(&fixture_dir("valid").join("full.toml"));
    let spec = parse_ok("full.toml", &source);
    assert_eq!(spec.size.cpu_millis, 500);
    assert_eq!(spec.size.memory_bytes, 300_000_000);
    assert_eq!(spec.size.preset, None);
    assert_eq!(spec.run.command, ["./bin/payments", "--port", "8080"]);
    assert_eq!(spec.health.interval.get_ref().as_secs(), 90);
    assert_eq!(spec.routes.len(), 3);
    let nfr = spec.routes[0].nfr.as_ref().expect("the first route has an nfr");
    assert_eq!(nfr.error_rate, Some(0.005));
    assert_eq!(spec.autoscale.as_ref().and_then(|a| a.target_cpu), Some(0.7));
    let analysis = &spec.deploy.analysis;
    assert_eq!(analysis.error_rate, Some(0.02));
    assert_eq!(analysis.p90, Some(std::time::Duration::from_millis(300)));
    assert_eq!(analysis.min_requests.as_ref().map(|n| *n.get_ref()), Some(200));
    assert_eq!(spec.pools["batch"].replicas, 1);
    let json = serde_json::to_value(&spec).expect("a spec serializes to JSON");
    assert_eq!(json["health"]["interval"], "1m30s");
    assert_eq!(json["size"]["memory"], "300MB");
    assert_eq!(json["routes"][0]["rate_limit"]["key"], "header:X-Api-Key");
}

#[test]
fn minimal_fixture_gets_the_documented_defaults() {
    let source = read(&fixture_dir("valid").join("minimal.toml"));
    let spec = parse_ok("minimal.toml", &source);
    assert_eq!(*spec.replicas.get_ref(), 1);
    assert_eq!(spec.size.preset.as_deref(), Some("small"));
    assert_eq!(spec.size.cpu_millis, 250);
    assert_eq!(spec.size.memory_bytes, 128 << 20);
    assert_eq!(spec.health.path.get_ref(), "/healthz");
    assert_eq!(spec.run.stop_timeout.as_secs(), 5);
    assert!(not_yet_acted_on(&spec).is_empty());
}

#[test]
fn notes_for_keys_not_acted_on() {
    let source = read(&fixture_dir("valid").join("full.toml"));
    let spec = parse_ok("valid/full.toml", &source);
    let notes = not_yet_acted_on(&spec);
    assert!(notes.iter().all(|note| note.severity == Severity::Note));
    insta::assert_snapshot!("notes__full", render_all(&notes, &source));
}

fn parse_ok(file: &str, source: &str) -> Spec {
    match parse(file, source) {
        Ok(spec) => spec,
        Err(diags) => panic!("{file} did not parse:\n{}", render_all(&diags, source)),
    }
}

fn fixtures_in(kind: &str) -> Vec<(String, PathBuf)> {
    let dir = fixture_dir(kind);
    let mut res: Vec<(String, PathBuf)> = fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("cannot list {}: {error}", dir.display()))
        .map(|entry| entry.expect("a readable directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .map(|path| {
            let name = path.file_stem().expect("a .toml file has a stem").to_string_lossy().into_owned();
            (name, path)
        })
        .collect();
    res.sort();
    res
}

fn fixture_dir(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(kind)
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()))
}
