//! Which parts of a spec the platform acts on today, and notes for the parts it only parses.
//!
//! The spec describes the whole product, but the platform grows into it. Rather than silently
//! ignoring a key, `berth check` says so. When a feature lands, remove its key from
//! [`NOT_YET_ACTED_ON`]; nothing else changes.

use crate::diagnostic::{Diagnostic, Severity};
use crate::model::Spec;

/// Keys that are parsed and validated but that the platform does not act on yet, as dotted
/// paths (`"routes"`, or a nested key such as `"deploy.watch"`). Everything else is acted on: by the
/// supervisor (`name`, `kind`, `replicas`, `size`, `run`, `health`, `env`, `pools`), the gateway (`domains`,
/// `redirect_https`, `routes`) and `berth deploy` (`build`, `test`, `deploy`, and `routes.nfr` as the
/// canary analysis' default limits).
pub const NOT_YET_ACTED_ON: &[&str] = &["unit", "alerts", "dependencies", "autoscale"];

/// One note for each key in the file that the platform does not act on yet, in source order.
///
/// A key nested under another listed key is covered by the outer note. A spec without an
/// [`crate::Origin`] (built in code rather than parsed) gets no notes.
pub fn not_yet_acted_on(spec: &Spec) -> Vec<Diagnostic> {
    let origin = &spec.origin;
    let mut res = Vec::new();
    let mut covered: Vec<&str> = Vec::new();
    for key in &origin.keys {
        let is_listed = NOT_YET_ACTED_ON.contains(&key.path.as_str());
        let is_covered =
            covered.iter().any(|outer| key.path.strip_prefix(outer).is_some_and(|rest| rest.starts_with('.')));
        if !is_listed || is_covered {
            continue;
        }
        covered.push(&key.path);
        res.push(Diagnostic {
            severity: Severity::Note,
            message: format!("`{}` is parsed but not acted on yet", key.display),
            file: origin.file.clone(),
            span: Some(key.span.clone()),
            line: key.line,
            column: key.column,
            hint: None,
        });
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::explain::TABLE_KEYS;

    /// Top-level keys the platform acts on today; see [`NOT_YET_ACTED_ON`].
    const ACTED_ON: &[&str] = &[
        "name",
        "kind",
        "replicas",
        "size",
        "run",
        "build",
        "health",
        "env",
        "domains",
        "redirect_https",
        "routes",
        "pools",
        "test",
        "deploy",
    ];

    #[test]
    fn every_top_level_key_is_classified() {
        let (_, top_level) =
            TABLE_KEYS.iter().find(|(table, _)| *table == "the top level").expect("TABLE_KEYS lists the top level");
        for key in *top_level {
            let acted = ACTED_ON.contains(key);
            let not_yet = NOT_YET_ACTED_ON.contains(key);
            assert!(acted != not_yet, "`{key}` must be in exactly one of the two lists");
        }
    }

    #[test]
    fn one_note_per_outermost_key_in_source_order() {
        let source = "name = \"x\"\nunit = \"team\"\n[run]\ncommand = \"./x\"\n[dependencies]\nredis = {}\n[autoscale]\nmax = 3\ntarget_rps = 50\n";
        let spec = crate::parse("app.toml", source).expect("the test spec is valid");
        let notes = not_yet_acted_on(&spec);
        let shown: Vec<(&str, usize, usize)> =
            notes.iter().map(|note| (note.message.as_str(), note.line, note.column)).collect();
        assert_eq!(
            shown,
            [
                ("`unit` is parsed but not acted on yet", 2, 1),
                ("`[dependencies]` is parsed but not acted on yet", 5, 1),
                ("`[autoscale]` is parsed but not acted on yet", 7, 1),
            ]
        );
        assert!(notes.iter().all(|note| note.severity == Severity::Note && note.file == "app.toml"));
    }
}
