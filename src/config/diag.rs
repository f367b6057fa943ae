//! Config problems as data: each one a `file:line:col: message` (STYLE.md convention 5).

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem found while loading zone files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file as given (`zones/www.toml`), or the zones directory itself.
    pub file: PathBuf,
    /// 1-based; 0 when the problem is about the file or directory as a whole.
    pub line: usize,
    /// 1-based, in characters.
    pub col: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.col,
                self.message
            )
        }
    }
}

/// Every problem of one load.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    /// Sorted by file, line, column (then message), duplicates removed.
    pub fn sorted(mut self) -> Self {
        self.0.sort_by(|a, b| {
            (&a.file, a.line, a.col, &a.message).cmp(&(&b.file, b.line, b.col, &b.message))
        });
        self.0.dedup();
        self
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut all: Vec<&Diagnostic> = self.0.iter().collect();
        all.sort_by(|a, b| (&a.file, a.line, a.col).cmp(&(&b.file, b.line, b.col)));
        for d in all {
            writeln!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// Byte offsets of one file's text → line and column, and the list problems go into.
pub(crate) struct FileCx<'d> {
    pub(crate) file: PathBuf,
    /// Built at the first position asked for: a big zone with no problem never needs it.
    line_starts: std::cell::OnceCell<Vec<usize>>,
    text: &'d str,
    pub(crate) diags: &'d mut Vec<Diagnostic>,
}

/// A byte range in the current file.
pub(crate) type Span = Range<usize>;

impl<'d> FileCx<'d> {
    pub(crate) fn new(file: &Path, text: &'d str, diags: &'d mut Vec<Diagnostic>) -> Self {
        FileCx {
            file: file.to_path_buf(),
            line_starts: std::cell::OnceCell::new(),
            text,
            diags,
        }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub(crate) fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line_starts = self.line_starts.get_or_init(|| {
            let mut starts = vec![0];
            starts.extend(self.text.match_indices('\n').map(|(i, _)| i + 1));
            starts
        });
        let line = line_starts.partition_point(|&s| s <= offset);
        let start = line_starts[line - 1];
        let col = self
            .text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count());
        (line, col + 1)
    }

    /// Report a problem at the start of `span`.
    pub(crate) fn err(&mut self, span: &Span, message: impl Into<String>) {
        let (line, col) = self.position(span.start);
        self.diags.push(Diagnostic {
            file: self.file.clone(),
            line,
            col,
            message: message.into(),
        });
    }

    /// Number of problems reported so far (all files).
    pub(crate) fn count(&self) -> usize {
        self.diags.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_in_characters() {
        let mut d = Vec::new();
        let cx = FileCx::new(Path::new("z.toml"), "ab\nçd = 1\n", &mut d);
        assert_eq!(cx.position(0), (1, 1));
        assert_eq!(cx.position(3), (2, 1));
        assert_eq!(cx.position(6), (2, 3)); // "ç" is two bytes, one column
    }

    #[test]
    fn display_sorts_by_file_line_col() {
        let d = |f: &str, line, col, m: &str| Diagnostic {
            file: f.into(),
            line,
            col,
            message: m.into(),
        };
        let all = Diagnostics(vec![
            d("b.toml", 1, 1, "x"),
            d("a.toml", 9, 2, "y"),
            d("a.toml", 3, 4, "z"),
        ]);
        assert_eq!(
            all.to_string(),
            "a.toml:3:4: z\na.toml:9:2: y\nb.toml:1:1: x\n"
        );
    }
}
