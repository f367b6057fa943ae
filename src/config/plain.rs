//! Plain `[records."<name>"]` tables read straight from the zone file's text with the toml
//! crate's own lexer (`toml_parser`), so that the bulk of a big zone never becomes a spanned
//! toml tree (issue 12: a million such tables took 2 GB and 10 s through `DeTable`).
//!
//! A table is plain when its header is `[records.KEY]` and every line of its body is
//! `TYPE = "string"`, `TYPE = ["string", ...]` or `ttl = <decimal integer>` (comments and
//! blank lines allowed, no escapes in keys). [`find`] marks the byte ranges of such tables;
//! the toml crate then parses the file with those ranges blanked to spaces (same length, so
//! every position it reports stays right) and `records` reads them back with [`tables`].
//! Anything else in a `[records.*]` table, or `records` written any other way (`[records]`,
//! dotted keys, `[[records]]`, a key written twice), leaves that table, or the whole file,
//! to the toml crate as before, so every error message stays exactly what it was.

use std::borrow::Cow;
use std::ops::Range;

use std::collections::HashSet;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

use rustc_hash::FxBuildHasher;
use toml_parser::Source;
use toml_parser::lexer::{Lexer, TokenKind};

use super::diag::Span;

/// The plain tables of a file: merged byte ranges, each from a table header to the next
/// header (or the end of the file).
#[derive(Debug, Default)]
pub(crate) struct Plain {
    pub(crate) ranges: Vec<Range<usize>>,
    /// Hashes of their `KEY`s, to find one written twice, or again in a table left to the
    /// toml crate (a hash met twice by chance only costs reading the file the slow way).
    keys: HashSet<u64, BuildHasherDefault<Prehashed>>,
}

/// The hasher of a set of hashes.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

fn key_hash(key: &str) -> u64 {
    FxBuildHasher.hash_one(key)
}

impl Plain {
    /// Whether a plain table has this `KEY` (or one of the same hash).
    pub(crate) fn has_key(&self, key: &str) -> bool {
        self.keys.contains(&key_hash(key))
    }

    /// The text with every plain range blanked to spaces, same length (so every position
    /// in it is the real file's), except that a plain range at the end is cut off.
    pub(crate) fn blank(&self, text: &str) -> String {
        const SPACES: &str = "                                                                ";
        let end = match self.ranges.last() {
            Some(last) if last.end == text.len() => last.start,
            _ => text.len(),
        };
        let text = &text[..end];
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for r in self.ranges.iter().filter(|r| r.end <= end) {
            out.push_str(&text[at..r.start]);
            let mut left = r.len();
            while left > 0 {
                let n = left.min(SPACES.len());
                out.push_str(&SPACES[..n]);
                left -= n;
            }
            at = r.end;
        }
        out.push_str(&text[at..]);
        out
    }
}

/// The plain tables of `text`, or `None` when the file writes `records` in a way only the
/// toml crate reads (then it reads the whole file).
pub(crate) fn find(text: &str) -> Option<Plain> {
    let mut plain = Plain::default();
    // A plain table is at least `[records.x]` and a record: about 40 bytes in a big zone.
    plain.keys.reserve(text.len() / 40);
    let mut scratch = Batch::default();
    let mut t = Tokens::new(text, 0);
    let mut at_root = true;
    loop {
        let tok = t.next_significant();
        match tok.kind {
            TokenKind::Eof => return Some(plain),
            TokenKind::LeftSquareBracket => {
                at_root = false;
                let start = tok.start;
                if t.peek_kind() == TokenKind::LeftSquareBracket {
                    // `[[array.of.tables]]`: never `records`.
                    t.next();
                    let keys = t.header_keys()?;
                    (keys.first().map(|k| &**k) != Some("records")).then_some(())?;
                    t.expect_kind(TokenKind::RightSquareBracket)?;
                    t.end_of_line()?;
                    continue;
                }
                let keys = t.header_keys()?;
                t.end_of_line()?;
                if keys.first().map(|k| &**k) != Some("records") {
                    continue;
                }
                let [_, Cow::Borrowed(key)] = keys[..] else {
                    return None;
                };
                let body = t.offset();
                scratch.clear();
                match t.body(&mut scratch) {
                    Some(end) => {
                        if !plain.keys.insert(key_hash(key)) {
                            return None; // toml: a table defined twice.
                        }
                        match plain.ranges.last_mut() {
                            Some(last) if last.end == start => last.end = end,
                            _ => plain.ranges.push(start..end),
                        }
                        t = Tokens::new(text, end);
                    }
                    // Not plain: the toml crate reads this table, from its body on.
                    None => t = Tokens::new(text, body),
                }
            }
            _ => {
                // `key = value` (or something the toml crate will report).
                let first = t.key_value(tok)?;
                if at_root && first == "records" {
                    return None;
                }
            }
        }
    }
}

/// Plain tables as read back, many at a time: each table's key and its `key = value`
/// lines (a range of `entries`) in file order.
#[derive(Debug, Default)]
pub(crate) struct Batch<'i> {
    pub(crate) tables: Vec<Header<'i>>,
    pub(crate) entries: Vec<Entry<'i>>,
    /// Every string of the batch, referred to by `Value::Strings`.
    pub(crate) strings: Vec<(Span, &'i str)>,
}

/// The `[records.KEY]` of a plain table, and its entries in the batch.
#[derive(Debug)]
pub(crate) struct Header<'i> {
    pub(crate) key: &'i str,
    pub(crate) key_span: Span,
    pub(crate) entries: Range<usize>,
}

impl Batch<'_> {
    pub(crate) fn clear(&mut self) {
        self.tables.clear();
        self.entries.clear();
        self.strings.clear();
    }
}

/// `TYPE = ...` or `ttl = ...` of a plain table.
#[derive(Debug)]
pub(crate) struct Entry<'i> {
    pub(crate) key: &'i str,
    pub(crate) key_span: Span,
    pub(crate) value: Value,
}

#[derive(Debug)]
pub(crate) enum Value {
    /// One string, or an array of them: a range of `Batch::strings`.
    Strings { items: Range<usize> },
    /// A decimal integer that fits a u32.
    Integer(u32),
}

/// Plain tables read back per batch.
pub(crate) const BATCH_TABLES: usize = 4096;

/// Reads every plain table of `ranges` back, in file order, and calls `each` with every
/// [`BATCH_TABLES`] of them (and the rest at the end); the batch is cleared after each call
/// (`each` may swap it for another).
pub(crate) fn tables<'i>(
    text: &'i str,
    ranges: &[Range<usize>],
    mut each: impl FnMut(&mut Batch<'i>),
) {
    let mut batch = Batch::default();
    for r in ranges {
        let mut t = Tokens::new(&text[..r.end], r.start);
        loop {
            let tok = t.next_significant();
            if tok.kind != TokenKind::LeftSquareBracket {
                break; // Eof: every range holds only plain tables.
            }
            let Some(keys) = t.header_keys() else { break };
            let (Some(key_span), Some(()), [_, Cow::Borrowed(key)]) =
                (t.last_key_span.take(), t.end_of_line(), &keys[..])
            else {
                break;
            };
            let first = batch.entries.len();
            if t.body(&mut batch).is_none() {
                break;
            }
            batch.tables.push(Header {
                key,
                key_span,
                entries: first..batch.entries.len(),
            });
            if batch.tables.len() >= BATCH_TABLES {
                each(&mut batch);
                batch.clear();
            }
        }
    }
    if !batch.tables.is_empty() {
        each(&mut batch);
    }
}

/// A token with its kind and absolute byte range.
#[derive(Debug, Clone, Copy)]
struct Tok {
    kind: TokenKind,
    start: usize,
    end: usize,
}

/// The toml lexer over `text[base..]`, positions made absolute.
struct Tokens<'i> {
    text: &'i str,
    lexer: Lexer<'i>,
    base: usize,
    peeked: Option<Tok>,
    /// Span of the last key read by `header_keys`.
    last_key_span: Option<Span>,
}

impl<'i> Tokens<'i> {
    fn new(text: &'i str, base: usize) -> Self {
        Tokens {
            text,
            lexer: Source::new(&text[base..]).lex(),
            base,
            peeked: None,
            last_key_span: None,
        }
    }

    fn next(&mut self) -> Tok {
        if let Some(t) = self.peeked.take() {
            return t;
        }
        match self.lexer.next() {
            Some(t) => Tok {
                kind: t.kind(),
                start: self.base + t.span().start(),
                end: self.base + t.span().end(),
            },
            None => self.eof(self.text.len()),
        }
    }

    fn eof(&self, at: usize) -> Tok {
        Tok {
            kind: TokenKind::Eof,
            start: at,
            end: at,
        }
    }

    fn peek_kind(&mut self) -> TokenKind {
        let tok = self.next();
        self.peeked = Some(tok);
        tok.kind
    }

    /// Where the next token starts.
    fn offset(&mut self) -> usize {
        let tok = self.next();
        self.peeked = Some(tok);
        tok.start
    }

    fn raw(&self, tok: Tok) -> &'i str {
        &self.text[tok.start..tok.end]
    }

    fn span(&self, tok: Tok) -> Span {
        tok.start..tok.end
    }

    /// The next token that is not whitespace, a line end or a comment. Comments and line
    /// ends are checked as the toml crate would (a control character in a comment, a lone
    /// `\r`); a bad one ends the scan as if the file ended, so the caller gives up.
    fn next_significant(&mut self) -> Tok {
        loop {
            let tok = self.next();
            match tok.kind {
                TokenKind::Whitespace => {}
                TokenKind::Newline | TokenKind::Comment if self.trivia_ok(tok) => {}
                TokenKind::Newline | TokenKind::Comment => return self.eof(tok.start),
                _ => return tok,
            }
        }
    }

    fn trivia_ok(&self, tok: Tok) -> bool {
        let raw = self.raw(tok);
        match tok.kind {
            TokenKind::Newline => raw == "\n" || raw == "\r\n",
            // TOML: no control characters in comments but tab.
            _ => !raw.chars().any(|c| c.is_control() && c != '\t'),
        }
    }

    /// Past whitespace, then an optional comment, then a line end or the end of the file.
    fn end_of_line(&mut self) -> Option<()> {
        loop {
            let tok = self.next();
            match tok.kind {
                TokenKind::Whitespace => {}
                TokenKind::Comment if self.trivia_ok(tok) => {}
                TokenKind::Newline if self.trivia_ok(tok) => return Some(()),
                TokenKind::Eof => {
                    self.peeked = Some(tok);
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    fn expect_kind(&mut self, kind: TokenKind) -> Option<()> {
        (self.next().kind == kind).then_some(())
    }

    /// The keys of a table header after its `[`, through its `]`.
    fn header_keys(&mut self) -> Option<Vec<Cow<'i, str>>> {
        let mut keys = Vec::with_capacity(2);
        loop {
            let mut tok = self.next();
            if tok.kind == TokenKind::Whitespace {
                tok = self.next();
            }
            keys.push(self.simple_key(tok)?);
            self.last_key_span = Some(self.span(tok));
            let mut tok = self.next();
            if tok.kind == TokenKind::Whitespace {
                tok = self.next();
            }
            match tok.kind {
                TokenKind::Dot => {}
                TokenKind::RightSquareBracket => return Some(keys),
                _ => return None,
            }
        }
    }

    /// A key: bare (`A-Za-z0-9_-`), or a quoted string without escapes.
    fn simple_key(&self, tok: Tok) -> Option<Cow<'i, str>> {
        let raw = self.raw(tok);
        match tok.kind {
            TokenKind::Atom => {
                let bare = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
                (!raw.is_empty() && raw.bytes().all(bare)).then_some(Cow::Borrowed(raw))
            }
            TokenKind::BasicString | TokenKind::LiteralString => {
                self.string(tok).map(Cow::Borrowed)
            }
            _ => None,
        }
    }

    /// A one-line string without escapes, as the toml crate decodes it (no control
    /// characters but tab).
    fn string(&self, tok: Tok) -> Option<&'i str> {
        let raw = self.raw(tok);
        let inner = match tok.kind {
            TokenKind::BasicString => raw.strip_prefix('"')?.strip_suffix('"')?,
            TokenKind::LiteralString => raw.strip_prefix('\'')?.strip_suffix('\'')?,
            _ => return None,
        };
        let escape = tok.kind == TokenKind::BasicString && inner.contains('\\');
        let control = inner.chars().any(|c| c.is_control() && c != '\t');
        (!escape && !control).then_some(inner)
    }

    /// Past one `key = value` whose first token is `first`, value checked only enough to
    /// find its end (arrays and inline tables may span lines); the first key's text.
    fn key_value(&mut self, first: Tok) -> Option<Cow<'i, str>> {
        let key = match first.kind {
            TokenKind::Atom => Cow::Borrowed(self.raw(first)),
            // Escapes could spell `records`: such a file is left to the toml crate.
            TokenKind::BasicString | TokenKind::LiteralString => Cow::Borrowed(self.string(first)?),
            _ => return None,
        };
        // The rest of the key, then `=`.
        loop {
            match self.next().kind {
                TokenKind::Equals => break,
                TokenKind::Whitespace
                | TokenKind::Dot
                | TokenKind::Atom
                | TokenKind::BasicString
                | TokenKind::LiteralString => {}
                _ => return None,
            }
        }
        let mut depth = 0usize;
        loop {
            let tok = self.next();
            match tok.kind {
                TokenKind::LeftSquareBracket | TokenKind::LeftCurlyBracket => depth += 1,
                TokenKind::RightSquareBracket | TokenKind::RightCurlyBracket => {
                    depth = depth.checked_sub(1)?;
                }
                TokenKind::Newline if depth == 0 => return Some(key),
                TokenKind::Eof => {
                    self.peeked = Some(tok);
                    return (depth == 0).then_some(key);
                }
                _ => {}
            }
        }
    }

    /// A plain table's body, up to the next table header (not read) or the end of the
    /// file: its entries added to `table`, and where it ends. `None` when it is not plain.
    fn body(&mut self, table: &mut Batch<'i>) -> Option<usize> {
        let first = table.entries.len();
        loop {
            let tok = self.next_significant();
            match tok.kind {
                TokenKind::Eof => {
                    // A bad comment or line end reads as Eof too: only a real end is one.
                    return (tok.start == self.text.len()).then_some(tok.start);
                }
                TokenKind::LeftSquareBracket => {
                    self.peeked = Some(tok);
                    return Some(tok.start);
                }
                _ => {}
            }
            let key = match self.simple_key(tok)? {
                Cow::Borrowed(k) => k,
                Cow::Owned(_) => return None,
            };
            if table.entries[first..].iter().any(|e| e.key == key) {
                return None; // toml: a key written twice.
            }
            let key_span = self.span(tok);
            let mut eq = self.next();
            if eq.kind == TokenKind::Whitespace {
                eq = self.next();
            }
            (eq.kind == TokenKind::Equals).then_some(())?;
            let value = self.value(key, table)?;
            self.end_of_line()?;
            table.entries.push(Entry {
                key,
                key_span,
                value,
            });
        }
    }

    /// A plain value: strings for a record type (one for CNAME), an integer for `ttl`.
    fn value(&mut self, key: &str, table: &mut Batch<'i>) -> Option<Value> {
        let mut tok = self.next();
        if tok.kind == TokenKind::Whitespace {
            tok = self.next();
        }
        let start = table.strings.len();
        match tok.kind {
            TokenKind::Atom if key == "ttl" => {
                let raw = self.raw(tok);
                let decimal = raw.bytes().all(|b| b.is_ascii_digit())
                    && (raw == "0" || !raw.starts_with('0'))
                    && raw.len() <= 10;
                decimal.then(|| raw.parse().ok().map(Value::Integer))?
            }
            TokenKind::BasicString | TokenKind::LiteralString if key != "ttl" => {
                table.strings.push((self.span(tok), self.string(tok)?));
                Some(Value::Strings {
                    items: start..start + 1,
                })
            }
            TokenKind::LeftSquareBracket if key != "ttl" && key != "CNAME" => {
                self.array(table)?;
                Some(Value::Strings {
                    items: start..table.strings.len(),
                })
            }
            _ => None,
        }
    }

    /// The strings of an array after its `[`, through its `]` (lines, comments and a
    /// trailing comma allowed, as TOML allows them).
    fn array(&mut self, table: &mut Batch<'i>) -> Option<()> {
        let mut want_item = true;
        loop {
            let tok = self.next_significant();
            match tok.kind {
                TokenKind::RightSquareBracket => return Some(()),
                TokenKind::Comma if !want_item => want_item = true,
                TokenKind::BasicString | TokenKind::LiteralString if want_item => {
                    table.strings.push((self.span(tok), self.string(tok)?));
                    want_item = false;
                }
                _ => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(text: &str) -> Option<Vec<Range<usize>>> {
        find(text).map(|p| p.ranges)
    }

    #[test]
    fn plain_tables_are_found_and_merged() {
        let text = "origin = \"z.\"\n[soa]\nmname = \"a\"\n[records.www]\nA = [\"192.0.2.1\", # one\n \"192.0.2.2\",]\nttl = 60\n\n[records.\"@\"] # apex\nTXT = 'x'\n[pools.p]\nA = \"1.2.3.4\"\n";
        let r = ranges(text).expect("records only in plain tables");
        assert_eq!(r.len(), 1);
        let blanked = find(text).expect("plain").blank(text);
        assert_eq!(blanked.len(), text.len());
        assert!(blanked.contains("[soa]") && blanked.contains("[pools.p]"));
        assert!(!blanked.contains("records"));
        // A plain range at the end is cut off rather than blanked.
        let tail = format!("{text}[records.z]\nA = \"192.0.2.9\"\n");
        assert_eq!(find(&tail).expect("plain").blank(&tail), blanked);
        let mut seen = Vec::new();
        tables(text, &r, |b| {
            for t in &b.tables {
                let strings: usize = b.entries[t.entries.clone()]
                    .iter()
                    .map(|e| match &e.value {
                        Value::Strings { items } => items.len(),
                        Value::Integer(_) => 0,
                    })
                    .sum();
                seen.push((t.key.to_owned(), t.entries.len(), strings));
            }
        });
        assert_eq!(seen, [("www".to_owned(), 2, 2), ("@".to_owned(), 1, 1)]);
    }

    #[test]
    fn tables_that_are_not_plain_stay_with_toml() {
        // An escape, an integer record, a dotted key: each table left to toml.
        for body in [
            "TXT = \"a\\\"b\"",
            "A = 5",
            "A.x = \"1\"",
            "A = \"1\"\nA = \"2\"",
        ] {
            let text = format!("[records.a]\n{body}\n[records.b]\nA = \"192.0.2.1\"\n");
            let r = ranges(&text).expect("still eligible");
            assert_eq!(r.len(), 1, "{body}");
            assert!(text[r[0].clone()].starts_with("[records.b]"), "{body}");
        }
    }

    #[test]
    fn records_written_otherwise_leave_the_whole_file_to_toml() {
        for text in [
            "[records]\nwww = { A = \"192.0.2.1\" }\n",
            "records.www.A = \"192.0.2.1\"\n",
            "[records.a]\nA = \"192.0.2.1\"\n[records.a]\nA = \"192.0.2.2\"\n",
            "[records.a.b]\nA = \"192.0.2.1\"\n",
            "[[records]]\n",
            "x = [\n[records.a]\n",
        ] {
            assert!(ranges(text).is_none(), "{text}");
        }
    }
}
