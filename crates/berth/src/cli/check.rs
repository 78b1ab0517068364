//! `berth init` and `berth check`: scaffold a service, validate its `app.toml` (and a platform `berth.toml`).

use std::process::ExitCode;

use anyhow::Context;
use std::path::Path;

use berth_spec::{Diagnostic, PlatformConfig, Severity};
use serde_json::json;

use super::args::{CheckArgs, InitArgs};
use super::error::user;

pub fn init(args: &InitArgs) -> anyhow::Result<ExitCode> {
    let name = match &args.name {
        Some(name) => name.clone(),
        None => std::path::absolute(&args.dir)?
            .file_name()
            .map(|name| name.to_string_lossy().to_lowercase())
            .unwrap_or_else(|| "app".to_owned()),
    };
    if !berth_spec::is_dns_label(&name) {
        return Err(user(
            format!("`{name}` cannot be a service name"),
            "names are DNS labels: lowercase letters, digits and `-`, at most 63; pass one with --name",
        ));
    }
    std::fs::create_dir_all(&args.dir).with_context(|| format!("failed to create {}", args.dir.display()))?;
    let files =
        [("app.toml", berth_spec::template::app_toml(&name)), ("alert.yaml", berth_spec::template::alert_yaml(&name))];
    for (file, _) in &files {
        let path = args.dir.join(file);
        if path.exists() && !args.force {
            return Err(user(format!("{} already exists", path.display()), "pass --force to overwrite it"));
        }
    }
    for (file, contents) in &files {
        let path = args.dir.join(file);
        std::fs::write(&path, contents).with_context(|| format!("failed to write {}", path.display()))?;
        eprintln!("created {}", path.display());
    }
    eprintln!("next: edit [run] command in app.toml, then `berth check {0}` and `berth up {0}`", args.dir.display());
    Ok(ExitCode::SUCCESS)
}

/// Checks `DIR/app.toml` and, when there is one, the platform config `DIR/berth.toml`.
pub fn check(args: &CheckArgs) -> anyhow::Result<ExitCode> {
    let app_file = args.dir.join("app.toml");
    let platform_file = args.dir.join(PlatformConfig::FILE_NAME);
    if !app_file.exists() && !platform_file.is_file() {
        return Err(user(
            format!("no app.toml or {} in {}", PlatformConfig::FILE_NAME, args.dir.display()),
            "pass the directory holding app.toml, or create one with `berth init DIR`",
        ));
    }
    let mut checked = Checked { valid: true, json: args.json, ..Checked::default() };
    let mut app = None;
    if app_file.exists() {
        app = checked.file(&app_file, |shown, source| {
            berth_spec::parse(shown, source).map(|spec| {
                let notes = berth_spec::not_yet_acted_on(&spec);
                (serde_json::to_value(&spec), toml::to_string(&spec), notes)
            })
        })?;
    }
    let mut platform = None;
    if platform_file.is_file() {
        platform = checked.file(&platform_file, |shown, source| {
            berth_spec::parse_platform(shown, source).and_then(|config| {
                let missing = missing_certificates(&config, &platform_file, shown, source);
                if missing.is_empty() {
                    Ok((serde_json::to_value(&config), toml::to_string(&config), Vec::new()))
                } else {
                    Err(missing)
                }
            })
        })?;
    }
    if args.json {
        let res = json!({
            "valid": checked.valid,
            "diagnostics": diagnostics_json(&checked.diagnostics),
            "effective": app,
            "platform": platform,
        });
        println!("{}", serde_json::to_string_pretty(&res)?);
    } else {
        print!("{}", checked.human);
    }
    Ok(if checked.valid { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// What `check` found in the files it read.
#[derive(Default)]
struct Checked {
    valid: bool,
    /// Machine output: nothing on stderr.
    json: bool,
    diagnostics: Vec<Diagnostic>,
    /// Effective configs for stdout; diagnostics go to stderr as they are found.
    human: String,
}

type CheckResult = Result<
    (Result<serde_json::Value, serde_json::Error>, Result<String, toml::ser::Error>, Vec<Diagnostic>),
    Vec<Diagnostic>,
>;

impl Checked {
    /// Checks one file; returns its effective config when it is valid.
    fn file(
        &mut self,
        file: &Path,
        check: impl FnOnce(&str, &str) -> CheckResult,
    ) -> anyhow::Result<Option<serde_json::Value>> {
        let source = std::fs::read_to_string(file).map_err(|error| {
            user(format!("cannot read {}: {error}", file.display()), "check the file's permissions")
        })?;
        let shown = file.display().to_string();
        match check(&shown, &source) {
            Ok((value, text, notes)) => {
                if !self.json {
                    eprint!("{}", berth_spec::render_all(&notes, &source));
                    eprintln!("{shown}: ok; effective config:");
                }
                self.human.push_str(&text.context("failed to render the effective config")?);
                self.diagnostics.extend(notes);
                Ok(Some(value?))
            }
            Err(diags) => {
                if !self.json {
                    eprint!("{}", berth_spec::render_all(&diags, &source));
                    let n_errors = diags.iter().filter(|d| d.severity == Severity::Error).count();
                    eprintln!("{shown}: {n_errors} error(s)");
                }
                self.valid = false;
                self.diagnostics.extend(diags);
                Ok(None)
            }
        }
    }
}

/// Certificate and key files named in the platform config that cannot be read.
fn missing_certificates(config: &PlatformConfig, file: &Path, shown: &str, source: &str) -> Vec<Diagnostic> {
    let base = file.parent().unwrap_or(Path::new("."));
    let paths = config.certificates.iter().flat_map(|c| [&c.cert, &c.key]);
    paths
        .filter_map(|path| {
            let error = std::fs::File::open(base.join(path.get_ref())).err()?;
            Some(
                Diagnostic::error(shown, format!("cannot read `{}`: {error}", path.get_ref()))
                    .at(source, path.span())
                    .with_hint(format!(
                        "paths are relative to {}; check the path and the file's permissions",
                        file.display()
                    )),
            )
        })
        .collect()
}

fn diagnostics_json(diags: &[Diagnostic]) -> serde_json::Value {
    diags
        .iter()
        .map(|d| {
            json!({
                "severity": format!("{:?}", d.severity).to_lowercase(),
                "message": d.message,
                "file": d.file,
                "line": d.line,
                "column": d.column,
                "hint": d.hint,
            })
        })
        .collect()
}
