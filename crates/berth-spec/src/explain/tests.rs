//! Tests for message rewriting, and that [`TABLE_KEYS`] matches the model.

use super::*;

const BASE: &str = "name = \"x\"\n[run]\ncommand = [\"./x\"]\n";

/// Where each table of [`TABLE_KEYS`] is written, to put a probe key into it.
fn table_source(table: &str, key_line: &str) -> String {
    match table {
        "the top level" => format!("{key_line}\n{BASE}"),
        "[run]" => format!("name = \"x\"\n[run]\ncommand = [\"./x\"]\n{key_line}\n"),
        "[[routes]]" => format!("{BASE}[[routes]]\npath = \"/a\"\n{key_line}\n"),
        "`nfr` in [[routes]]" => format!("{BASE}[[routes]]\npath = \"/a\"\n[routes.nfr]\n{key_line}\n"),
        "`cache` in [[routes]]" => {
            format!("{BASE}[[routes]]\npath = \"/a\"\n[routes.cache]\nmax_age = \"1s\"\n{key_line}\n")
        }
        "`rate_limit` in [[routes]]" => {
            format!("{BASE}[[routes]]\npath = \"/a\"\n[routes.rate_limit]\nrate = \"1/s\"\n{key_line}\n")
        }
        "`analysis` in [deploy]" => format!("{BASE}[deploy]\nanalysis = {{ {key_line} }}\n"),
        "`size`" => format!("size = {{ cpu = \"1\", memory = \"1MiB\", {key_line} }}\n{BASE}"),
        header => format!("{BASE}{header}\n{key_line}\n"),
    }
}

fn first_error(source: &str) -> Option<Diagnostic> {
    crate::parse("app.toml", source).err().and_then(|diags| diags.into_iter().next())
}

#[test]
fn table_keys_lists_exactly_the_accepted_keys() {
    for (table, keys) in TABLE_KEYS {
        // A probe key is rejected, and the hint lists exactly the keys of the table.
        let source = table_source(table, "zzz_probe = 1");
        let diag = first_error(&source).unwrap_or_else(|| panic!("probe accepted in {table}"));
        assert!(diag.message.starts_with("unknown key `zzz_probe`"), "{table}: {}", diag.message);
        let hint = diag.hint.unwrap_or_default();
        let mut listed = backticked(&hint);
        let mut expected = keys.to_vec();
        listed.sort_unstable();
        expected.sort_unstable();
        assert_eq!(listed, expected, "{table}: TABLE_KEYS differs from the model");
        // And each listed key is accepted there (any other error is fine).
        for key in *keys {
            let source = table_source(table, &format!("{key} = true"));
            if let Some(diag) = first_error(&source) {
                assert!(!diag.message.starts_with("unknown key"), "{table}: `{key}` rejected: {}", diag.message);
            }
        }
    }
}

#[test]
fn suggestions_need_a_close_match() {
    assert_eq!(closest("replica", ["replicas", "name"]), Some("replicas"));
    assert_eq!(closest("timout", ["timeout", "interval"]), Some("timeout"));
    assert_eq!(closest("frobnicate", ["path", "interval"]), None);
}

#[test]
fn lists_read_naturally() {
    assert_eq!(or_list(&[]), "");
    assert_eq!(or_list(&["a"]), "a");
    assert_eq!(or_list(&["a", "b"]), "a or b");
    assert_eq!(or_list(&["a", "b", "c"]), "a, b or c");
    assert_eq!(backticked("expected one of `a`, `b`"), ["a", "b"]);
}

#[test]
fn choices_match_the_model() {
    for (key, choices) in CHOICES {
        let line = |value: &str| match key.split_once('.') {
            // BASE ends inside [run]: a [run] key goes right after it, any other table gets its header.
            Some(("run", key)) => format!("{BASE}{key} = {value}\n"),
            Some((table, key)) => format!("{BASE}[{table}]\n{key} = {value}\n"),
            None => format!("{key} = {value}\n{BASE}"),
        };
        for choice in *choices {
            let source = line(&format!("\"{choice}\""));
            assert!(first_error(&source).is_none(), "{key} = {choice:?} rejected");
        }
        let diag = first_error(&line("\"zzz\"")).expect("an unknown choice is rejected");
        let words = backticked(&diag.message);
        assert_eq!(&words[1..words.len() - 1], *choices, "{}", diag.message);
        let diag = first_error(&line("1")).expect("a number is rejected");
        assert!(diag.message.ends_with("must be a string, found `1`"), "{}", diag.message);
    }
}
