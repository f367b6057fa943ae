//! The zone file as toml's spanned document, and typed accessors over it that report a
//! wrong type or an unknown key at its `line:col` instead of stopping at the first one
//! (serde's `deny_unknown_fields` would).

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::diag::{FileCx, Span};

/// A value of the document with its position.
pub type Value<'i> = Spanned<DeValue<'i>>;
/// A key of the document with its position.
pub type Key<'i> = Spanned<std::borrow::Cow<'i, str>>;

/// Parse a zone file; every syntax error is reported, and `None` returned when any.
pub(crate) fn parse<'i>(text: &'i str, cx: &mut FileCx<'_>) -> Option<DeTable<'i>> {
    let (doc, errors) = DeTable::parse_recoverable(text);
    if errors.is_empty() {
        return Some(doc.into_inner());
    }
    // Only the first: after it, the parser's recovery mostly reports its own confusion.
    if let Some(e) = errors.first() {
        let span = e.span().unwrap_or(0..0);
        cx.err(&span, format!("TOML syntax: {}", e.message()));
    }
    None
}

/// Parse a zone file that must have no syntax error (its plain `[records.*]` tables
/// blanked): `None` at the first, and the caller parses the real text with [`parse`].
pub(crate) fn parse_clean(text: &str) -> Option<DeTable<'_>> {
    let (doc, errors) = DeTable::parse_recoverable(text);
    errors.is_empty().then(|| doc.into_inner())
}

/// The entries of a table in file order (toml keeps them sorted by key).
pub fn entries<'a, 'i>(table: &'a DeTable<'i>) -> Vec<(&'a Key<'i>, &'a Value<'i>)> {
    let mut all: Vec<_> = table.iter().collect();
    all.sort_by_key(|(k, _)| k.span().start);
    all
}

/// Report every key of `table` not in `allowed`, as `unknown key "x" in <what>`.
pub(crate) fn check_keys(table: &DeTable<'_>, allowed: &[&str], what: &str, cx: &mut FileCx<'_>) {
    for (key, _) in entries(table) {
        if !allowed.contains(&key.get_ref().as_ref()) {
            cx.err(
                &key.span(),
                format!("unknown key \"{}\" in {what}", key.get_ref()),
            );
        }
    }
}

/// A key's value with the key's span (for errors about the key itself).
pub(crate) fn get<'a, 'i>(table: &'a DeTable<'i>, key: &str) -> Option<(Span, &'a Value<'i>)> {
    table.get_key_value(key).map(|(k, v)| (k.span(), v))
}

/// The TOML type of a value, for messages.
pub(crate) fn type_name(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// `key` as a string, or an error "`key` must be a string".
pub(crate) fn string<'a>(v: &'a Value<'_>, key: &str, cx: &mut FileCx<'_>) -> Option<&'a str> {
    match v.get_ref() {
        DeValue::String(s) => Some(s.as_ref()),
        other => {
            cx.err(
                &v.span(),
                format!("`{key}` must be a string, not {}", type_name(other)),
            );
            None
        }
    }
}

/// The integer of a value, if it is one that fits an i64.
pub(crate) fn int_of(v: &DeValue<'_>) -> Option<i64> {
    match v {
        DeValue::Integer(i) => i64::from_str_radix(&i.as_str().replace('_', ""), i.radix()).ok(),
        _ => None,
    }
}

/// `key` as an integer in `min..=max`.
pub(crate) fn int_in(
    v: &Value<'_>,
    key: &str,
    min: i64,
    max: i64,
    cx: &mut FileCx<'_>,
) -> Option<i64> {
    match int_of(v.get_ref()) {
        Some(n) if (min..=max).contains(&n) => Some(n),
        Some(n) => {
            cx.err(
                &v.span(),
                format!("`{key}` must be between {min} and {max}, not {n}"),
            );
            None
        }
        None => {
            cx.err(
                &v.span(),
                format!("`{key}` must be an integer, not {}", type_name(v.get_ref())),
            );
            None
        }
    }
}

/// `key` as a u32 (TTLs, SOA timers, counts).
pub(crate) fn u32_(v: &Value<'_>, key: &str, cx: &mut FileCx<'_>) -> Option<u32> {
    int_in(v, key, 0, i64::from(u32::MAX), cx).map(|n| n as u32)
}

/// `key` as a boolean.
pub(crate) fn boolean(v: &Value<'_>, key: &str, cx: &mut FileCx<'_>) -> Option<bool> {
    match v.get_ref() {
        DeValue::Boolean(b) => Some(*b),
        other => {
            cx.err(
                &v.span(),
                format!("`{key}` must be true or false, not {}", type_name(other)),
            );
            None
        }
    }
}

/// `key` as a number (integer or float).
pub(crate) fn number(v: &Value<'_>, key: &str, cx: &mut FileCx<'_>) -> Option<f64> {
    match v.get_ref() {
        DeValue::Float(f) => f.as_str().replace('_', "").parse().ok(),
        DeValue::Integer(_) => int_of(v.get_ref()).map(|n| n as f64),
        other => {
            cx.err(
                &v.span(),
                format!("`{key}` must be a number, not {}", type_name(other)),
            );
            None
        }
    }
}

/// `key` as a table.
pub(crate) fn table<'a, 'i>(
    v: &'a Value<'i>,
    key: &str,
    cx: &mut FileCx<'_>,
) -> Option<&'a DeTable<'i>> {
    match v.get_ref() {
        DeValue::Table(t) => Some(t),
        other => {
            cx.err(
                &v.span(),
                format!("`{key}` must be a table, not {}", type_name(other)),
            );
            None
        }
    }
}

/// `key` as one string or an array of strings, each with its span. Wrong items are
/// reported and left out.
pub(crate) fn strings<'a>(
    v: &'a Value<'_>,
    key: &str,
    cx: &mut FileCx<'_>,
) -> Option<Vec<(Span, &'a str)>> {
    match v.get_ref() {
        DeValue::String(s) => Some(vec![(v.span(), s.as_ref())]),
        DeValue::Array(items) => Some(
            items
                .iter()
                .filter_map(|item| string(item, key, cx).map(|s| (item.span(), s)))
                .collect(),
        ),
        other => {
            cx.err(
                &v.span(),
                format!(
                    "`{key}` must be a string or an array of strings, not {}",
                    type_name(other)
                ),
            );
            None
        }
    }
}
