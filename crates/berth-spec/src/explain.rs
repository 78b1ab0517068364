//! Turns `toml` and serde errors into diagnostics a person can act on.
//!
//! Serde's messages are written for programmers ("invalid type: string \"two\", expected u32") and
//! do not say which key or table they are about. This module recognises each message shape,
//! finds the key from the error's position in the [`Document`], and rewrites the message in the
//! vocabulary of `app.toml` with a hint: "`replicas` must be a whole number, found a string".

use crate::de::{EXPECTATION_HINTS, HINT, KEY};
use crate::diagnostic::Diagnostic;
use crate::document::{Document, Form, Segment, dotted_path};

/// Where each key may appear, for "`command` belongs in [run]" hints. A test checks this
/// against the model, so it cannot drift.
pub(crate) const TABLE_KEYS: &[(&str, &[&str])] = &[
    (
        "the top level",
        &[
            "name",
            "kind",
            "unit",
            "replicas",
            "size",
            "alerts",
            "domains",
            "redirect_https",
            "env",
            "run",
            "build",
            "test",
            "health",
            "dependencies",
            "routes",
            "deploy",
            "autoscale",
            "pools",
        ],
    ),
    ("[run]", &["command", "workdir", "stop_timeout", "env", "protocol"]),
    ("[build]", &["command", "workdir", "env"]),
    ("[test]", &["command", "workdir", "env"]),
    ("[health]", &["path", "interval", "timeout", "healthy_threshold", "unhealthy_threshold", "start_period"]),
    ("[dependencies]", &["services", "postgres", "redis"]),
    ("[[routes]]", &["path", "timeout", "per_try_timeout", "nfr", "cache", "rate_limit"]),
    ("`nfr` in [[routes]]", &["p50", "p90", "p99", "error_rate"]),
    ("`cache` in [[routes]]", &["max_age", "stale_while_revalidate", "private"]),
    ("`rate_limit` in [[routes]]", &["key", "rate", "burst", "overrides", "pools"]),
    (
        "[deploy]",
        &[
            "strategy",
            "max_surge",
            "max_unavailable",
            "canary_steps",
            "step_pause",
            "keep_old_for",
            "watch",
            "health_deadline",
            "analysis",
            "sticky",
        ],
    ),
    ("`analysis` in [deploy]", &["error_rate", "p90", "min_requests"]),
    ("[autoscale]", &["min", "max", "target_cpu", "target_rps"]),
    ("`size`", &["cpu", "memory"]),
];

/// The only keys that may be written as `[[arrays of tables]]`.
const ARRAYS_OF_TABLES: &[&str] = &["routes"];

/// Keys whose value is one of a fixed set of strings. A test checks this against the model.
pub(crate) const CHOICES: &[(&str, &[&str])] = &[
    ("kind", &["business", "infrastructure"]),
    ("deploy.strategy", &["rolling", "bluegreen", "canary"]),
    ("run.protocol", &["http1", "h2c"]),
];

/// A TOML syntax error: `toml`'s message without its own rendering, at its position.
pub(crate) fn syntax_error(file: &str, source: &str, error: &toml::de::Error) -> Diagnostic {
    let mut message = lowercase_first(error.message().lines().next().unwrap_or("invalid TOML").trim());
    let at = error.span().and_then(|span| source.get(span.start..)).and_then(|rest| rest.chars().next());
    let value_missing =
        message.starts_with("string values must be quoted") && at.is_none_or(|c| c == '\n' || c == '\r' || c == '#');
    if value_missing {
        message = "missing value after `=`".to_owned();
    } else if message.starts_with("string values must be quoted") {
        message = "string values must be quoted".to_owned();
    }
    let unquoted =
        error.span().and_then(|span| source.get(span)).filter(|text| !text.is_empty() && !text.contains(['"', '\n']));
    let hint = if value_missing {
        "write a value after `=`, e.g. `replicas = 2` or `name = \"hello\"`".to_owned()
    } else if let (true, Some(text)) = (message == "string values must be quoted", unquoted) {
        format!("put text in double quotes: `\"{text}\"`")
    } else {
        syntax_hint(&message)
    };
    let diag = Diagnostic::error(file, format!("invalid TOML: {message}")).with_hint(hint);
    match error.span() {
        Some(span) => diag.at(source, span),
        None => diag,
    }
}

/// A data error from deserializing the document into a [`crate::Spec`].
pub(crate) fn data_error(file: &str, source: &str, doc: &Document, error: &toml::de::Error) -> Diagnostic {
    let raw = error.message().trim();
    let span = error.span();
    let path: Vec<Segment> =
        span.as_ref().and_then(|span| doc.locate(span)).map(|node| node.path.clone()).unwrap_or_default();
    let value_text = span.as_ref().and_then(|span| source.get(span.clone())).unwrap_or("");
    let explained = if let Some(explained) = misplaced_array_of_tables(doc, &path) {
        explained
    } else if let Some(rest) = raw.strip_prefix("unknown field ") {
        unknown_key(doc, &path, rest)
    } else if let Some(rest) = raw.strip_prefix("missing field ") {
        return missing_key(file, source, doc, span, rest);
    } else if let Some(rest) = raw.strip_prefix("invalid type: ") {
        invalid_type(doc, &path, rest, value_text)
    } else if let Some(rest) = raw.strip_prefix("invalid value: ") {
        invalid_value(doc, &path, rest)
    } else if let Some(rest) = raw.strip_prefix("unknown variant ") {
        unknown_variant(doc, &path, rest)
    } else if raw.starts_with("wanted string or table") {
        not_a_choice(doc, &path, value_text)
    } else if raw.contains(KEY) || raw.contains(HINT) {
        custom(doc, &path, raw)
    } else {
        let (subject, _) = subject(doc, &path);
        Explained { message: format!("{}: {subject}", lowercase_first(raw)), hint: FALLBACK_HINT.to_owned() }
    };
    let diag = Diagnostic::error(file, explained.message).with_hint(explained.hint);
    match span {
        Some(span) => diag.at(source, span),
        None => diag,
    }
}

/// The closest candidate to `word`, if any is close enough to be a likely typo.
pub(crate) fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|candidate| (strsim::jaro_winkler(word, candidate), candidate))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|(a, _), (b, _)| a.total_cmp(b))
        .map(|(_, candidate)| candidate)
}

const FALLBACK_HINT: &str = "compare with the annotated app.toml that `berth init` writes, which shows every key";

struct Explained {
    message: String,
    hint: String,
}

fn unknown_key(doc: &Document, path: &[Segment], rest: &str) -> Explained {
    let (key, expected) = match rest.split_once(", ") {
        Some((key, expected)) => (unquote(key), backticked(expected)),
        None => (unquote(rest), Vec::new()),
    };
    let table = path.split_last().map_or(&[][..], |(_, parent)| parent);
    let location = doc.describe_table(table);
    // `[helth]` is a table to the user, though serde sees a key.
    let written_as = |name: &str| match doc.node(path).map(|node| node.form) {
        Some(Form::HeaderTable | Form::DottedTable) if is_header_line(doc, path) => {
            format!("table `[{}]`", dotted_with(table, name))
        }
        Some(Form::ArrayOfTables) => format!("table `[[{}]]`", dotted_with(table, name)),
        _ => format!("key `{name}`"),
    };
    let message = match &location {
        Some(location) => format!("unknown {} in {location}", written_as(key)),
        None => format!("unknown {}", written_as(key)),
    };
    let here = location.as_deref().unwrap_or("the top level");
    let elsewhere: Vec<&str> = TABLE_KEYS
        .iter()
        .filter(|(table, keys)| *table != here && keys.contains(&key))
        .map(|(table, _)| *table)
        .collect();
    let hint = if let Some(suggestion) = closest(key, expected.iter().copied()) {
        let suggestion = written_as(suggestion);
        let suggestion =
            suggestion.strip_prefix("table ").or_else(|| suggestion.strip_prefix("key ")).unwrap_or(&suggestion);
        format!("did you mean {suggestion}?")
    } else if !elsewhere.is_empty() {
        let tables = or_list(&elsewhere);
        if elsewhere == ["the top level"] {
            format!("`{key}` belongs at the top level: move it above the first [table] header")
        } else {
            format!("`{key}` belongs in {tables}: move it there")
        }
    } else if expected.is_empty() {
        format!("{here} takes no keys: remove `{key}`")
    } else {
        let keys: Vec<String> = expected.iter().map(|key| format!("`{key}`")).collect();
        format!("valid keys here are {}", keys.join(", "))
    };
    Explained { message, hint }
}

fn missing_key(
    file: &str,
    source: &str,
    doc: &Document,
    span: Option<std::ops::Range<usize>>,
    rest: &str,
) -> Diagnostic {
    let key = unquote(rest);
    // The span of a missing-key error is the table that lacks it. For the top level, that is the
    // whole file, which is better left unquoted.
    let table = span.as_ref().and_then(|span| doc.locate(span)).filter(|node| Some(&node.value_span) == span.as_ref());
    let location = table.and_then(|node| doc.describe_table(&node.path));
    let message = match &location {
        Some(location) => format!("missing key `{key}` in {location}"),
        None => format!("missing key `{key}`"),
    };
    let example = match key {
        "name" => "name = \"my-service\"".to_owned(),
        "run" => "[run]\ncommand = [\"./bin/my-service\"]".to_owned(),
        "command" => "command = [\"./bin/my-service\"]".to_owned(),
        "path" => "path = \"/api\"".to_owned(),
        "max" => "max = 4".to_owned(),
        "rate" => "rate = \"20/s\"".to_owned(),
        "cpu" => "cpu = \"500m\"".to_owned(),
        "memory" => "memory = \"256MiB\"".to_owned(),
        "max_age" => "max_age = \"60s\"".to_owned(),
        other => format!("{other} = ..."),
    };
    let hint = match (&location, key) {
        (None, "run") => format!("add a [run] table with the command that starts the service:\n{example}"),
        (None, _) => format!("add `{example}` at the top of the file"),
        (Some(location), _) => format!("add `{example}` to {location}"),
    };
    let diag = Diagnostic::error(file, message).with_hint(hint);
    match table {
        Some(node) => diag.at(source, node.value_span.clone()),
        None => diag,
    }
}

fn invalid_type(doc: &Document, path: &[Segment], rest: &str, value_text: &str) -> Explained {
    let (found, expected) = rest.split_once(", expected ").unwrap_or((rest, "something else"));
    let (subject, key) = subject(doc, path);
    let key = key.unwrap_or("value");
    let is_item = matches!(path.last(), Some(Segment::Index(_)));
    let header = dotted_path(path);
    let found_kind = found.split(' ').next().unwrap_or(found);
    // `toml` hands dates and times to serde as maps; the document knows better.
    let written_as_value = doc.node(path).is_some_and(|node| node.form == Form::Value);
    let found_phrase = match found_kind {
        "map" if written_as_value => "a date or time",
        "string" => "a string",
        "integer" => "a number",
        "floating" => "a decimal number",
        "boolean" => "a boolean",
        "sequence" => "an array",
        "map" => "a table",
        _ => found,
    };
    let table_hint = format!("write a table: `{key} = {{ ... }}` or a [{header}] header");
    let (expected_phrase, hint) = match expected {
        "u8" | "u16" | "u32" | "u64" | "usize" | "i8" | "i16" | "i32" | "i64" => {
            let unquoted = value_text.trim_matches(|c| c == '"' || c == '\'');
            let is_quoted_number = found_kind == "string" && unquoted.parse::<i64>().is_ok();
            let hint = match (is_item, is_quoted_number) {
                (true, true) => format!("remove the quotes: `{unquoted}`"),
                (true, false) => "write each item as a whole number without quotes".to_owned(),
                (false, true) => format!("remove the quotes: `{key} = {unquoted}`"),
                (false, false) => format!("write a whole number without quotes, e.g. `{key} = 2`"),
            };
            ("a whole number".to_owned(), hint)
        }
        "a string" => {
            let is_scalar = !value_text.is_empty() && matches!(found_kind, "integer" | "floating" | "boolean");
            let hint = match (is_item, is_scalar) {
                (true, true) => format!("put each item in double quotes: `\"{value_text}\"`"),
                (true, false) => "write each item as text in double quotes".to_owned(),
                (false, true) => format!("put the value in double quotes: `{key} = \"{value_text}\"`"),
                (false, false) => format!("write text in double quotes, e.g. `{key} = \"value\"`"),
            };
            ("a string".to_owned(), hint)
        }
        "a boolean" => {
            ("`true` or `false`".to_owned(), format!("write `{key} = true` or `{key} = false`, without quotes"))
        }
        "a sequence" => ("an array".to_owned(), format!("write an array in square brackets, e.g. `{key} = [\"...\"]`")),
        "a map" => ("a table".to_owned(), table_hint),
        other if other.starts_with("struct ") => ("a table".to_owned(), table_hint),
        other => {
            let hint = EXPECTATION_HINTS
                .iter()
                .find(|(expectation, _)| *expectation == other)
                .map_or(FALLBACK_HINT, |(_, hint)| hint);
            (other.to_owned(), hint.to_owned())
        }
    };
    Explained { message: format!("{subject} must be {expected_phrase}, found {found_phrase}"), hint }
}

/// `[[health]]` where `[health]` is meant: serde reads the array as a struct's fields in order
/// and reports a confusing type error, so look for an array of tables the model has no place for.
fn misplaced_array_of_tables(doc: &Document, path: &[Segment]) -> Option<Explained> {
    (1..=path.len()).find_map(|len| {
        let prefix = &path[..len];
        let node = doc.node(prefix)?;
        let dotted = dotted_path(prefix);
        if node.form != Form::ArrayOfTables || ARRAYS_OF_TABLES.contains(&dotted.as_str()) {
            return None;
        }
        Some(Explained {
            message: format!("`[[{dotted}]]` is not an array of tables"),
            hint: format!("write `[{dotted}]` with single brackets, once"),
        })
    })
}

/// A value of the wrong type for a field with a fixed set of string values (`kind`).
fn not_a_choice(doc: &Document, path: &[Segment], value_text: &str) -> Explained {
    let (subject, key) = subject(doc, path);
    let key = key.unwrap_or("value");
    let choices = CHOICES.iter().find(|(choice_key, _)| *choice_key == dotted_path(path)).map(|(_, choices)| *choices);
    let hint = match choices {
        Some(choices) => {
            let quoted: Vec<String> = choices.iter().map(|choice| format!("`{key} = \"{choice}\"`")).collect();
            let quoted: Vec<&str> = quoted.iter().map(String::as_str).collect();
            format!("write {}", or_list(&quoted))
        }
        None => format!("write the value in double quotes, e.g. `{key} = \"...\"`"),
    };
    Explained { message: format!("{subject} must be a string, found `{value_text}`"), hint }
}

fn invalid_value(doc: &Document, path: &[Segment], rest: &str) -> Explained {
    let (found, expected) = rest.split_once(", expected ").unwrap_or((rest, ""));
    let (subject, key) = subject(doc, path);
    let key = key.unwrap_or("value");
    let number = found.strip_prefix("integer ").map(|text| text.trim_matches('`'));
    let max = match expected {
        "u8" => Some(u64::from(u8::MAX)),
        "u16" => Some(u64::from(u16::MAX)),
        "u32" => Some(u64::from(u32::MAX)),
        _ => None,
    };
    match (number, max) {
        (Some(number), Some(_)) if number.starts_with('-') => Explained {
            message: format!("{subject} must be 0 or more, found {number}"),
            hint: format!("use a whole number from 0 up, e.g. `{key} = 2`"),
        },
        (Some(number), Some(max)) => Explained {
            message: format!("{subject} is too large, found {number}"),
            hint: format!("use a whole number no larger than {max}"),
        },
        _ => Explained { message: format!("{subject} has an invalid value: {found}"), hint: format!("use {expected}") },
    }
}

fn unknown_variant(doc: &Document, path: &[Segment], rest: &str) -> Explained {
    let (variant, expected) = rest.split_once(", ").unwrap_or((rest, ""));
    let variant = unquote(variant);
    let choices = backticked(expected);
    let (subject, _) = subject(doc, path);
    let quoted: Vec<String> = choices.iter().map(|choice| format!("`{choice}`")).collect();
    let quoted: Vec<&str> = quoted.iter().map(String::as_str).collect();
    let hint = match closest(variant, choices.iter().copied()) {
        Some(suggestion) => format!("did you mean `{suggestion}`?"),
        None => format!("use {}", or_list(&quoted)),
    };
    Explained { message: format!("{subject} must be {}, found `{variant}`", or_list(&quoted)), hint }
}

fn custom(doc: &Document, path: &[Segment], raw: &str) -> Explained {
    let (message, hint) = raw.split_once(HINT).unwrap_or((raw, FALLBACK_HINT));
    let (subject, _) = subject(doc, path);
    Explained { message: message.replace(KEY, &subject), hint: hint.to_owned() }
}

/// Names the key at `path` with its table: "`interval` in [health]", "each item of `command`
/// in [run]". Also returns the bare key name for examples in hints.
fn subject<'a>(doc: &Document, path: &'a [Segment]) -> (String, Option<&'a str>) {
    let last_key = path.iter().enumerate().rev().find_map(|(idx, segment)| match segment {
        Segment::Key(key) => Some((idx, key.as_str())),
        Segment::Index(_) => None,
    });
    let Some((key_idx, key)) = last_key else {
        return ("the value".to_owned(), None);
    };
    let name = if key_idx + 1 < path.len() { format!("each item of `{key}`") } else { format!("`{key}`") };
    let res = match doc.describe_table(&path[..key_idx]) {
        Some(table) => format!("{name} in {table}"),
        None => name,
    };
    (res, Some(key))
}

fn syntax_hint(message: &str) -> String {
    let hint = if message.contains("duplicate key") || message.contains("duplicate") {
        "a key or table can be defined only once: remove or rename one of them"
    } else if message.contains("string") || message.contains("invalid") && message.contains("`\"`") {
        "text values go in double quotes, e.g. `name = \"hello\"`"
    } else if message.contains("key with no value") || message.contains("expected `=`") {
        "write each setting as `key = value` on its own line"
    } else {
        "check the TOML syntax near this position (see https://toml.io)"
    };
    hint.to_owned()
}

/// Whether the key at `path` is written in a `[table]` header line.
fn is_header_line(doc: &Document, path: &[Segment]) -> bool {
    doc.node(path).is_some_and(|node| node.in_header)
}

/// `table` and `name` as a dotted key: `routes.cache`.
fn dotted_with(table: &[Segment], name: &str) -> String {
    let parent = dotted_path(table);
    if parent.is_empty() { name.to_owned() } else { format!("{parent}.{name}") }
}

/// `` `x` `` to `x`.
fn unquote(text: &str) -> &str {
    text.trim().trim_matches('`')
}

/// All `` `quoted` `` words in a serde list such as "expected one of `a`, `b`".
fn backticked(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

/// "a", "a or b", "a, b or c".
fn or_list(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [only] => (*only).to_owned(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

fn lowercase_first(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests;
