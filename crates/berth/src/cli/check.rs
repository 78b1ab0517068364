//! `berth init` and `berth check`: scaffold a service, validate one.

use std::process::ExitCode;

use anyhow::Context;
use berth_spec::{Diagnostic, Severity};
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

pub fn check(args: &CheckArgs) -> anyhow::Result<ExitCode> {
    let file = args.dir.join("app.toml");
    let source = std::fs::read_to_string(&file).map_err(|error| {
        user(
            format!("cannot read {}: {error}", file.display()),
            "pass the directory holding app.toml, or create one with `berth init DIR`",
        )
    })?;
    let shown = file.display().to_string();
    match berth_spec::parse(&shown, &source) {
        Ok(spec) => {
            let notes = berth_spec::not_yet_acted_on(&spec);
            if args.json {
                let effective = serde_json::to_value(&spec)?;
                let res = json!({ "valid": true, "diagnostics": diagnostics_json(&notes), "effective": effective });
                println!("{}", serde_json::to_string_pretty(&res)?);
            } else {
                eprint!("{}", berth_spec::render_all(&notes, &source));
                eprintln!("{shown}: ok; effective config:");
                print!("{}", toml::to_string(&spec).context("failed to render the effective config")?);
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(diags) => {
            if args.json {
                let res = json!({ "valid": false, "diagnostics": diagnostics_json(&diags) });
                println!("{}", serde_json::to_string_pretty(&res)?);
            } else {
                eprint!("{}", berth_spec::render_all(&diags, &source));
                let n_errors = diags.iter().filter(|d| d.severity == Severity::Error).count();
                eprintln!("{shown}: {n_errors} error(s)");
            }
            Ok(ExitCode::from(1))
        }
    }
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
