//! Diagnostics: a message about a place in a file, and the one renderer that prints them.
//!
//! `berth check` and the daemon both print diagnostics with [`Diagnostic::render`], so a user
//! sees the same text wherever a problem is found:
//!
//! ```text
//! error: unknown key `replica`
//!   --> examples/hello/app.toml:3:1
//!    |
//!  3 | replica = 2
//!    | ^^^^^^^
//!    = hint: did you mean `replicas`?
//! ```

use std::fmt;
use std::ops::Range;

use serde::Serialize;

/// How bad a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The file cannot be used.
    Error,
    /// The file works, but probably not as intended.
    Warning,
    /// Information, such as a key the platform does not act on yet.
    Note,
}

/// A message about a place in a file, with a hint that says what to do.
///
/// `Display` gives a one-line form for logs (`app.toml:3:1: error: unknown key ...`); use
/// [`Diagnostic::render`] to show it to a person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    /// Lowercase, no trailing period.
    pub message: String,
    /// The file name, as given by the caller.
    pub file: String,
    /// Byte range in the source, or `None` when the problem is about the file as a whole.
    pub span: Option<Range<usize>>,
    /// 1-based line of `span.start`; 0 without a span.
    pub line: usize,
    /// 1-based column of `span.start`, counted in characters; 0 without a span.
    pub column: usize,
    /// What to do about it.
    pub hint: Option<String>,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Note => "note",
        })
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.span {
            Some(_) => write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?,
            None => write!(f, "{}: ", self.file)?,
        }
        write!(f, "{}: {}", self.severity, self.message)
    }
}

impl std::error::Error for Diagnostic {}

impl Diagnostic {
    /// A diagnostic about the file as a whole; add a position with [`Diagnostic::at`].
    pub fn new(severity: Severity, file: &str, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity,
            message: message.into(),
            file: file.to_owned(),
            span: None,
            line: 0,
            column: 0,
            hint: None,
        }
    }

    /// An error about the file as a whole.
    pub fn error(file: &str, message: impl Into<String>) -> Diagnostic {
        Diagnostic::new(Severity::Error, file, message)
    }

    /// Points the diagnostic at `span` in `source`, computing line and column. An empty span
    /// (the position of a defaulted value) leaves the diagnostic without a position.
    pub fn at(mut self, source: &str, span: Range<usize>) -> Diagnostic {
        if span.is_empty() && span.start == 0 {
            return self;
        }
        let (line, column) = line_column(source, span.start);
        self.span = Some(span);
        self.line = line;
        self.column = column;
        self
    }

    /// Sets the hint.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Diagnostic {
        self.hint = Some(hint.into());
        self
    }

    /// Renders the diagnostic with the source line it points at. `source` must be the text the
    /// span refers to; a span outside it is clamped rather than trusted.
    pub fn render(&self, source: &str) -> String {
        let line_number = self.span.as_ref().map(|_| self.line.max(1));
        let gutter = line_number.map_or(1, |n| n.to_string().len());
        let pad = " ".repeat(gutter + 2);
        let mut res = format!("{}: {}\n", self.severity, self.message);
        match (&self.span, line_number) {
            (Some(span), Some(line_number)) => {
                res.push_str(&format!(
                    "{} --> {}:{}:{}\n",
                    " ".repeat(gutter),
                    self.file,
                    line_number,
                    self.column.max(1)
                ));
                let (text, caret_pad, caret_len) = excerpt(source, span);
                res.push_str(&format!("{pad}|\n"));
                res.push_str(&format!(" {line_number} | {text}\n"));
                res.push_str(&format!("{pad}| {caret_pad}{}\n", "^".repeat(caret_len)));
            }
            _ => res.push_str(&format!("{} --> {}\n", " ".repeat(gutter), self.file)),
        }
        if let Some(hint) = &self.hint {
            let mut lines = hint.lines();
            if let Some(first) = lines.next() {
                res.push_str(&format!("{pad}= hint: {first}\n"));
            }
            for line in lines {
                res.push_str(&format!("{pad}        {line}\n"));
            }
        }
        res
    }
}

/// Renders diagnostics one after another, separated by blank lines.
pub fn render_all(diags: &[Diagnostic], source: &str) -> String {
    diags.iter().map(|diag| diag.render(source)).collect::<Vec<_>>().join("\n")
}

/// 1-based line and character column of a byte offset. Offsets past the end (or inside a
/// multi-byte character) are clamped to the nearest character boundary before them.
pub(crate) fn line_column(source: &str, offset: usize) -> (usize, usize) {
    let offset = floor_char_boundary(source, offset);
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = source[line_start..offset].chars().count() + 1;
    (line, column)
}

/// The source line containing `span.start`, the padding before the caret (tabs kept so the caret
/// lines up) and the caret length: the span's length in characters, cut at the end of the line,
/// at least 1.
fn excerpt(source: &str, span: &Range<usize>) -> (String, String, usize) {
    let start = floor_char_boundary(source, span.start);
    let end = floor_char_boundary(source, span.end.max(start));
    let line_start = source[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = source[start..].find('\n').map_or(source.len(), |i| start + i);
    let line = source[line_start..line_end].trim_end_matches('\r');
    let caret_pad: String = source[line_start..start].chars().map(|c| if c == '\t' { '\t' } else { ' ' }).collect();
    let caret_end = end.min(line_start + line.len()).max(start);
    let caret_len = source[start..caret_end].chars().count().max(1);
    (line.to_owned(), caret_pad, caret_len)
}

fn floor_char_boundary(source: &str, offset: usize) -> usize {
    let mut offset = offset.min(source.len());
    while !source.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_documented_shape() {
        let source = "name = \"hello\"\n\nreplica = 2\n";
        let diag = Diagnostic::error("examples/hello/app.toml", "unknown key `replica`")
            .at(source, 16..23)
            .with_hint("did you mean `replicas`?");
        assert_eq!(
            diag.render(source),
            "error: unknown key `replica`\n  --> examples/hello/app.toml:3:1\n   |\n 3 | replica = 2\n   | ^^^^^^^\n   = hint: did you mean `replicas`?\n"
        );
    }

    #[test]
    fn widens_the_gutter_for_long_line_numbers() {
        let source = format!("{}x = 1\n", "\n".repeat(11));
        let diag = Diagnostic::error("a.toml", "bad").at(&source, 11..12);
        assert_eq!(diag.render(&source), "error: bad\n   --> a.toml:12:1\n    |\n 12 | x = 1\n    | ^\n");
    }

    #[test]
    fn counts_columns_in_characters_and_cuts_carets_at_the_line_end() {
        let source = "s = \"é\" # x\ny = 2";
        let offset = source.find('#').expect("the test source has a comment");
        let diag = Diagnostic::error("a.toml", "bad").at(source, offset..source.len());
        assert_eq!((diag.line, diag.column), (1, 9));
        assert!(diag.render(source).contains("  |         ^^^\n"));
    }

    #[test]
    fn displays_on_one_line() {
        let source = "a = 1\nb = 2\n";
        let diag = Diagnostic::error("a.toml", "bad `b`").at(source, 6..7);
        assert_eq!(diag.to_string(), "a.toml:2:1: error: bad `b`");
        assert_eq!(Diagnostic::error("a.toml", "bad").to_string(), "a.toml: error: bad");
    }

    #[test]
    fn renders_without_a_span() {
        let diag = Diagnostic::error("a.toml", "missing key `name`").with_hint("add it");
        assert_eq!(diag.line, 0);
        assert_eq!(diag.render(""), "error: missing key `name`\n  --> a.toml\n   = hint: add it\n");
    }

    #[test]
    fn clamps_spans_past_the_end() {
        let source = "a = ";
        let diag = Diagnostic::error("a.toml", "eof").at(source, 4..4);
        assert_eq!((diag.line, diag.column), (1, 5));
        assert!(diag.render(source).ends_with("   |     ^\n"));
        let diag = Diagnostic::error("a.toml", "far").at(source, 99..120);
        assert!(diag.render(source).contains(" 1 | a = \n"));
    }

    #[test]
    fn indents_multi_line_hints() {
        let diag = Diagnostic::error("a.toml", "x").with_hint("one\ntwo");
        assert!(diag.render("").ends_with("   = hint: one\n           two\n"));
    }
}
