//! `[records."<name>"]` → static RRsets, RDATA encoded once into uncompressed wire format,
//! straight into the zone's [`Statics`].
//!
//! Tables come two ways, compiled the same way and in file order: plain ones read from the
//! text by `plain` (the bulk of a big zone), the rest from the toml crate's spanned tree.

use std::ops::Range;

use toml::de::{DeTable, DeValue};

use super::compile::ZoneCx;
use super::diag::{FileCx, Span};
use super::plain;
use super::raw::{self, Key, Value};
use super::statics::{Statics, Written, cname_problem, describe, rrset_too_big};
use super::values;
use crate::model::{MAX_MESSAGE, MAX_RDATA, WireName, rtype, smallest_answer, wire};

/// Every `[records.*]` owner of the zone: those of the toml tree (`tree`) and the plain
/// tables in `ranges` of `text`, in file order.
pub(crate) fn compile_records(
    tree: Option<&DeTable<'_>>,
    text: &str,
    ranges: &[Range<usize>],
    zc: &ZoneCx,
    statics: &mut Statics,
    files: &[std::path::PathBuf],
    cx: &mut FileCx<'_>,
) {
    let mut o = Owners {
        zc,
        statics,
        files,
        rdata: Vec::with_capacity(512),
        records: Vec::with_capacity(16),
    };
    // toml keeps tables in file order (its preserve_order feature).
    let tree: Vec<(&Key<'_>, &Value<'_>)> = tree.map(|t| t.iter().collect()).unwrap_or_default();
    let mut next = 0;
    let mut compile = |batch: &plain::Batch<'_>, cx: &mut FileCx<'_>| {
        for table in &batch.tables {
            while let Some((key, v)) = tree
                .get(next)
                .filter(|(k, _)| k.span().start < table.key_span.start)
            {
                o.toml_owner(key, v, cx);
                next += 1;
            }
            o.plain_owner(table, batch, cx);
        }
    };
    read_plain(text, ranges, |batch| compile(batch, cx));
    for (key, v) in &tree[next..] {
        o.toml_owner(key, v, cx);
    }
}

/// The plain tables of `ranges`, a batch at a time to `compile`. When there are many, a
/// thread of its own reads them (the lexing is about half the work) while this one
/// compiles; emptied batches go back to it, so a few buffers serve the whole file.
fn read_plain<'i>(
    text: &'i str,
    ranges: &[Range<usize>],
    mut compile: impl FnMut(&plain::Batch<'i>),
) {
    let bytes: usize = ranges.iter().map(|r| r.len()).sum();
    if bytes < THREAD_FROM_BYTES {
        plain::tables(text, ranges, |batch| compile(batch));
        return;
    }
    let (tx, rx) = std::sync::mpsc::sync_channel::<plain::Batch<'i>>(BATCHES_IN_FLIGHT);
    let (back_tx, back_rx) = std::sync::mpsc::sync_channel(BATCHES_IN_FLIGHT + 1);
    std::thread::scope(|s| {
        let reader = std::thread::Builder::new()
            .name("meridian-records".into())
            .spawn_scoped(s, move || {
                plain::tables(text, ranges, |batch| {
                    let next = back_rx.try_recv().unwrap_or_default();
                    // The receiver only goes away once the reading is over.
                    let _ = tx.send(std::mem::replace(batch, next));
                });
            });
        if reader.is_err() {
            // No thread to be had: read here.
            plain::tables(text, ranges, |batch| compile(batch));
            return;
        }
        for mut batch in rx {
            compile(&batch);
            batch.clear();
            let _ = back_tx.try_send(batch);
        }
    });
}

/// Plain tables of fewer bytes than this are read on the compiling thread (about 25,000
/// one-record tables: a thread would cost more than it saves).
const THREAD_FROM_BYTES: usize = 1 << 20;
/// Batches read ahead of the compiling thread at most.
const BATCHES_IN_FLIGHT: usize = 4;

/// Compiles owners one at a time, with buffers reused from one to the next (a big zone has
/// a million of them).
struct Owners<'a, 'z> {
    zc: &'z ZoneCx,
    statics: &'a mut Statics,
    files: &'a [std::path::PathBuf],
    /// The current owner's RDATA, and its records as (type, TTL, range of `rdata`).
    rdata: Vec<u8>,
    records: Vec<(u16, u32, Range<usize>)>,
}

/// An owner whose records are compiled: its node, its name, and whether its records go
/// into the zone (not when the records file has the name too: that is reported).
struct Begun {
    id: u32,
    name: WireName,
    add: bool,
}

impl Owners<'_, '_> {
    /// A table of the toml tree.
    fn toml_owner(&mut self, key: &Key<'_>, v: &Value<'_>, cx: &mut FileCx<'_>) {
        let text = key.get_ref().as_ref();
        let Some((id, name)) = self.resolve(text, &key.span(), cx) else {
            return;
        };
        let DeValue::Table(t) = v.get_ref() else {
            let _ = raw::table(v, &what(text), cx);
            return;
        };
        let begun = self.begin(id, name, &key.span(), cx);
        let ttl = raw::get(t, "ttl")
            .and_then(|(_, v)| raw::u32_(v, "ttl", cx))
            .unwrap_or(self.zc.ttl);
        let mut cname: Option<Span> = None;
        for (key, v) in t.iter() {
            let k = key.get_ref().as_ref();
            if k == "ttl" {
                continue;
            }
            let Some(t) = values::static_type(k) else {
                unknown_key(k, &key.span(), &what(text), cx);
                continue;
            };
            if t == rtype::CNAME {
                cname = Some(key.span());
                if !matches!(v.get_ref(), DeValue::String(_)) {
                    cx.err(
                        &v.span(),
                        format!(
                            "`CNAME` must be one string, not {} (a name holds one CNAME)",
                            raw::type_name(v.get_ref())
                        ),
                    );
                    continue;
                }
            }
            let Some(items) = raw::strings(v, k, cx) else {
                continue;
            };
            self.rrset(t, k, &key.span(), ttl, text, &begun.name, items, cx);
        }
        self.finish(begun, text, cname, cx);
    }

    /// A plain table of a batch (every value already of the right type).
    fn plain_owner(
        &mut self,
        table: &plain::Header<'_>,
        batch: &plain::Batch<'_>,
        cx: &mut FileCx<'_>,
    ) {
        let entries = &batch.entries[table.entries.clone()];
        let text = table.key;
        let Some((id, name)) = self.resolve(text, &table.key_span, cx) else {
            return;
        };
        let begun = self.begin(id, name, &table.key_span, cx);
        let ttl = entries
            .iter()
            .find_map(|e| match e.value {
                plain::Value::Integer(n) if e.key == "ttl" => Some(n),
                _ => None,
            })
            .unwrap_or(self.zc.ttl);
        let mut cname: Option<Span> = None;
        for e in entries {
            let plain::Value::Strings { items } = &e.value else {
                continue; // `ttl`
            };
            let Some(t) = values::static_type(e.key) else {
                unknown_key(e.key, &e.key_span, &what(text), cx);
                continue;
            };
            if t == rtype::CNAME {
                cname = Some(e.key_span.clone());
            }
            let items = batch.strings[items.clone()].iter().cloned();
            self.rrset(t, e.key, &e.key_span, ttl, text, &begun.name, items, cx);
        }
        self.finish(begun, text, cname, cx);
    }

    /// The owner's node, unless its name is bad or already written in TOML.
    fn resolve(&mut self, text: &str, key: &Span, cx: &mut FileCx<'_>) -> Option<(u32, WireName)> {
        let name = match self.zc.owner(text) {
            Ok(n) => n,
            Err(e) => {
                cx.err(key, e);
                return None;
            }
        };
        let id = self.statics.insert(&name)?;
        match self.statics.written[id as usize] {
            Written::Toml(first) | Written::Both(first, _) => {
                let (line, _) = cx.position(first as usize);
                cx.err(
                    key,
                    format!("name {text} is written twice (also at line {line})"),
                );
                None
            }
            Written::No | Written::File(_) => Some((id, name)),
        }
    }

    /// Mark the owner as written here; a name the records file has too is reported.
    fn begin(&mut self, id: u32, name: WireName, key: &Span, cx: &mut FileCx<'_>) -> Begun {
        let at = u32::try_from(key.start).unwrap_or(u32::MAX);
        let w = &mut self.statics.written[id as usize];
        let add = match *w {
            Written::File(f) => {
                *w = Written::Both(at, f);
                cx.err(
                    key,
                    format!(
                        "name {} is also in the records file ({})",
                        wire::to_text(&name),
                        describe(self.files, f)
                    ),
                );
                false
            }
            _ => {
                *w = Written::Toml(at);
                true
            }
        };
        self.rdata.clear();
        self.records.clear();
        Begun { id, name, add }
    }

    /// One `TYPE = ...` of the owner: its records encoded, duplicates dropped, and kept
    /// unless their smallest answer would not fit a message.
    #[allow(clippy::too_many_arguments)]
    fn rrset<'s>(
        &mut self,
        t: u16,
        k: &str,
        key: &Span,
        ttl: u32,
        text: &str,
        name: &[u8],
        items: impl IntoIterator<Item = (Span, &'s str)>,
        cx: &mut FileCx<'_>,
    ) {
        let first = self.records.len();
        let rdata_start = self.rdata.len();
        for (span, s) in items {
            match values::encode_rdata(t, s, &self.zc.origin) {
                Ok(rd) if rd.len() > MAX_RDATA => cx.err(
                    &span,
                    format!(
                        "{k} record of {text}: {} bytes of RDATA; RDLENGTH holds at most {MAX_RDATA} (RFC 1035 §3.2.1)",
                        rd.len()
                    ),
                ),
                // RFC 2181 §5: an RRset holds no duplicates.
                Ok(rd) if self.records[first..].iter().any(|(_, _, r)| self.rdata[r.clone()] == *rd) => {}
                Ok(rd) => {
                    let at = self.rdata.len();
                    self.rdata.extend_from_slice(&rd);
                    self.records.push((t, ttl, at..self.rdata.len()));
                }
                Err(e) => cx.err(&span, format!("{k} record of {text}: {e}")),
            }
        }
        let lens = self.records[first..].iter().map(|(_, _, r)| r.len());
        let size = smallest_answer(name, lens);
        if size > MAX_MESSAGE {
            cx.err(key, rrset_too_big(k, text, size));
            self.records.truncate(first);
            self.rdata.truncate(rdata_start);
        }
    }

    /// SPEC §2 on CNAMEs, then the owner's records into the zone.
    fn finish(&mut self, begun: Begun, text: &str, cname: Option<Span>, cx: &mut FileCx<'_>) {
        if let Some(span) = cname {
            let mut others: Vec<String> = Vec::new();
            for (t, _, _) in &self.records {
                let n = rtype::name(*t).into_owned();
                if *t != rtype::CNAME && !others.contains(&n) {
                    others.push(n);
                }
            }
            let at_apex = *begun.name == *self.zc.origin_wire;
            if let Some(m) = cname_problem(text, at_apex, &others) {
                cx.err(&span, m);
            }
        }
        if begun.add {
            for (t, ttl, r) in &self.records {
                self.statics.add(begun.id, *t, *ttl, &self.rdata[r.clone()]);
            }
        }
    }
}

/// How messages name a `[records]` table.
fn what(text: &str) -> String {
    format!("[records.\"{text}\"]")
}

fn unknown_key(k: &str, span: &Span, what: &str, cx: &mut FileCx<'_>) {
    let hint = if k.eq_ignore_ascii_case("SOA") {
        " (the SOA comes from [soa])"
    } else if values::static_type(&k.to_ascii_uppercase()).is_some() {
        " (record types are written in capitals)"
    } else {
        " (record types: A, AAAA, CNAME, MX, TXT, SRV, CAA, NS, PTR; and `ttl`)"
    };
    cx.err(span, format!("unknown key \"{k}\" in {what}{hint}"));
}
