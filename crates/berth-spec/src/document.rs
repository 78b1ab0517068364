//! Positions of keys in a parsed TOML document.
//!
//! Serde errors from `toml` carry a byte span but not which key they are about, and a parsed
//! [`crate::Spec`] no longer knows where its keys were written. This module flattens the spanned
//! document tree once, so we can ask "which key is at this position" (to name the key and table in
//! an error) and "where is this key" (to build the spec's [`Origin`]).

use std::ops::Range;

use toml::de::{DeTable, DeValue};

use crate::diagnostic::line_column;
use crate::model::{KeyOrigin, Origin};

/// Every key and array element of a document, in tree order.
pub(crate) struct Document {
    nodes: Vec<Node>,
}

/// One key (or array element) of the document.
pub(crate) struct Node {
    pub(crate) path: Vec<Segment>,
    /// The key's span; `None` for array elements.
    pub(crate) key_span: Option<Range<usize>>,
    /// The value's span; for tables written with a header, the header.
    pub(crate) value_span: Range<usize>,
    pub(crate) form: Form,
    /// Whether the key is written inside a `[table]` or `[[array]]` header.
    pub(crate) in_header: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    Key(String),
    Index(usize),
}

/// How a value was written; decides how messages name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Form {
    /// `[table]`, or one `[[array]]` element.
    HeaderTable,
    /// The key of a `[[array]]` of tables.
    ArrayOfTables,
    /// `key = { ... }`.
    InlineTable,
    /// A table created implicitly by a dotted key (`health.path = "/"`) or a nested header.
    DottedTable,
    /// Any other value.
    Value,
}

impl Document {
    pub(crate) fn new(source: &str, root: &DeTable<'_>) -> Document {
        let mut res = Document { nodes: Vec::new() };
        res.add_table(source, root, &[]);
        res
    }

    /// The deepest node whose key or value contains `span`.
    pub(crate) fn locate(&self, span: &Range<usize>) -> Option<&Node> {
        let contains = |outer: &Range<usize>| outer.start <= span.start && span.end <= outer.end.max(outer.start + 1);
        self.nodes
            .iter()
            .filter(|node| contains(&node.value_span) || node.key_span.as_ref().is_some_and(contains))
            .max_by_key(|node| node.path.len())
    }

    /// The node at exactly `path`.
    pub(crate) fn node(&self, path: &[Segment]) -> Option<&Node> {
        self.nodes.iter().find(|node| node.path == path)
    }

    /// Names the table at `path` the way the user wrote it: `[health]`, `[[routes]]`, `` `size` ``,
    /// or `` `rate_limit` in [[routes]] ``. `None` for the top level.
    pub(crate) fn describe_table(&self, path: &[Segment]) -> Option<String> {
        let (last, parent) = path.split_last()?;
        let dotted = || dotted_path(path);
        let form = self.node(path).map_or(Form::Value, |node| node.form);
        let res = match (form, last) {
            (Form::HeaderTable, Segment::Index(_)) | (Form::ArrayOfTables, _) => {
                format!("[[{}]]", dotted())
            }
            (Form::HeaderTable, Segment::Key(_)) => format!("[{}]", dotted()),
            (_, Segment::Index(_)) => return self.describe_table(parent),
            (_, Segment::Key(key)) => match self.describe_table(parent) {
                Some(parent) => format!("`{key}` in {parent}"),
                None => format!("`{key}`"),
            },
        };
        Some(res)
    }

    /// The positions of all keys, for a parsed spec.
    pub(crate) fn origin(&self, file: &str, source: &str) -> Origin {
        let mut keys: Vec<KeyOrigin> = Vec::new();
        for node in &self.nodes {
            let Some(key_span) = &node.key_span else {
                continue;
            };
            let path = dotted_path(&node.path);
            if keys.iter().any(|key| key.path == path) {
                continue;
            }
            let (display, span) = match node.form {
                Form::HeaderTable => (format!("[{path}]"), node.value_span.clone()),
                Form::ArrayOfTables => (format!("[[{path}]]"), node.value_span.clone()),
                Form::DottedTable if node.in_header => (format!("[{path}]"), key_span.clone()),
                _ => (path.clone(), key_span.clone()),
            };
            let (line, column) = line_column(source, span.start);
            keys.push(KeyOrigin { path, display, span, line, column });
        }
        keys.sort_by_key(|key| key.span.start);
        Origin { file: file.to_owned(), keys }
    }

    fn add_table(&mut self, source: &str, table: &DeTable<'_>, prefix: &[Segment]) {
        for (key, value) in table.iter() {
            let mut path = prefix.to_vec();
            path.push(Segment::Key(key.get_ref().to_string()));
            let value_span = value.span();
            let form = form_of(source, value.get_ref(), &value_span);
            let key_span = key.span();
            self.nodes.push(Node {
                path: path.clone(),
                in_header: is_in_header(source, key_span.start),
                key_span: Some(key_span),
                value_span,
                form,
            });
            self.add_children(source, value.get_ref(), &path);
        }
    }

    fn add_children(&mut self, source: &str, value: &DeValue<'_>, path: &[Segment]) {
        match value {
            DeValue::Table(table) => self.add_table(source, table, path),
            DeValue::Array(array) => {
                for (idx, element) in array.iter().enumerate() {
                    let mut element_path = path.to_vec();
                    element_path.push(Segment::Index(idx));
                    let value_span = element.span();
                    let form = form_of(source, element.get_ref(), &value_span);
                    self.nodes.push(Node {
                        path: element_path.clone(),
                        key_span: None,
                        value_span,
                        form,
                        in_header: false,
                    });
                    self.add_children(source, element.get_ref(), &element_path);
                }
            }
            _ => {}
        }
    }
}

/// The path as dotted keys, without array indices: `routes.rate_limit`.
pub(crate) fn dotted_path(path: &[Segment]) -> String {
    path.iter()
        .filter_map(|segment| match segment {
            Segment::Key(key) => Some(key.as_str()),
            Segment::Index(_) => None,
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// Whether the line holding `offset` is a table header.
fn is_in_header(source: &str, offset: usize) -> bool {
    let before = source.get(..offset).unwrap_or("");
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    before[line_start..].trim_start().starts_with('[')
}

fn form_of(source: &str, value: &DeValue<'_>, span: &Range<usize>) -> Form {
    let text = source.get(span.clone()).unwrap_or("");
    match value {
        DeValue::Table(_) if text.starts_with('[') => Form::HeaderTable,
        DeValue::Table(_) if text.starts_with('{') => Form::InlineTable,
        DeValue::Table(_) => Form::DottedTable,
        DeValue::Array(array) => {
            let first_is_header =
                array.first().is_some_and(|first| source.get(first.span()).is_some_and(|text| text.starts_with("[[")));
            if first_is_header { Form::ArrayOfTables } else { Form::Value }
        }
        _ => Form::Value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn document(source: &str) -> Document {
        let root = DeTable::parse(source).expect("test sources are valid TOML");
        Document::new(source, root.get_ref())
    }

    fn describe(source: &str, at: &str) -> Option<String> {
        let doc = document(source);
        let start = source.find(at).expect("the marker is in the source");
        let node = doc.locate(&(start..start + at.len())).expect("the marker is on a key or value");
        let (_, parent) = node.path.split_last().expect("a located node has a key");
        doc.describe_table(parent)
    }

    #[test]
    fn names_tables_as_written() {
        let source = "top = 1\nsize = { cpu = 1 }\n[health]\npath = \"/\"\n[[routes]]\npath = \"/a\"\nrate_limit = { key = \"ip\" }\n[routes.cache]\nmax_age = \"1s\"\n[dependencies.postgres]\nversion = \"15\"\n";
        assert_eq!(describe(source, "top"), None);
        assert_eq!(describe(source, "cpu"), Some("`size`".to_owned()));
        assert_eq!(describe(source, "\"/\""), Some("[health]".to_owned()));
        assert_eq!(describe(source, "\"/a\""), Some("[[routes]]".to_owned()));
        assert_eq!(describe(source, "key"), Some("`rate_limit` in [[routes]]".to_owned()));
        assert_eq!(describe(source, "max_age"), Some("[routes.cache]".to_owned()));
        assert_eq!(describe(source, "version"), Some("[dependencies.postgres]".to_owned()));
    }

    #[test]
    fn origin_lists_keys_in_source_order_with_header_spans() {
        let source = "name = \"x\"\n[[routes]]\npath = \"/a\"\n[[routes]]\npath = \"/b\"\n[autoscale]\nmax = 2\n";
        let origin = document(source).origin("app.toml", source);
        let shown: Vec<(&str, &str, usize)> =
            origin.keys.iter().map(|key| (key.path.as_str(), key.display.as_str(), key.line)).collect();
        assert_eq!(
            shown,
            [
                ("name", "name", 1),
                ("routes", "[[routes]]", 2),
                ("routes.path", "routes.path", 3),
                ("autoscale", "[autoscale]", 6),
                ("autoscale.max", "autoscale.max", 7),
            ]
        );
        let autoscale = origin.key("autoscale").expect("autoscale is in the source");
        assert_eq!(&source[autoscale.span.clone()], "[autoscale]");
    }
}
