//! `[records."<name>"]` → static RRsets, RDATA encoded once into uncompressed wire format.

use toml::de::{DeTable, DeValue};

use super::compile::ZoneCx;
use super::diag::{FileCx, Span};
use super::raw;
use super::values;
use crate::model::{MAX_MESSAGE, MAX_RDATA, NameMap, RrSet, rtype, smallest_answer};

/// One owner name's static data.
pub(crate) struct Owner {
    /// The `[records."name"]` key.
    pub(crate) span: Span,
    pub(crate) rrsets: Vec<RrSet>,
}

/// Every `[records.*]` owner by name. A million of them is the bulk case, so nothing here
/// is allocated per owner beyond its name and RRsets (messages are built only on errors).
pub(crate) fn compile_records(t: &DeTable<'_>, zc: &ZoneCx, cx: &mut FileCx<'_>) -> NameMap<Owner> {
    let mut owners: NameMap<Owner> = NameMap::default();
    owners.reserve(t.len());
    // toml keeps tables in file order (its preserve_order feature), so no sort is needed.
    for (key, v) in t.iter() {
        let text = key.get_ref().as_ref();
        let name = match zc.owner(text) {
            Ok(n) => n,
            Err(e) => {
                cx.err(&key.span(), e);
                continue;
            }
        };
        if let Some(first) = owners.get(&name) {
            let (line, _) = cx.position(first.span.start);
            cx.err(
                &key.span(),
                format!("name {text} is written twice (also at line {line})"),
            );
            continue;
        }
        let table = match v.get_ref() {
            DeValue::Table(table) => table,
            _ => {
                let _ = raw::table(v, &what(text), cx);
                continue;
            }
        };
        let rrsets = compile_owner(table, text, &name, zc, cx);
        owners.insert(
            name,
            Owner {
                span: key.span(),
                rrsets,
            },
        );
    }
    owners
}

/// How messages name a `[records]` table.
fn what(text: &str) -> String {
    format!("[records.\"{text}\"]")
}

/// The RRsets of one owner, in file order.
fn compile_owner(
    t: &DeTable<'_>,
    text: &str,
    name: &[u8],
    zc: &ZoneCx,
    cx: &mut FileCx<'_>,
) -> Vec<RrSet> {
    let ttl = raw::get(t, "ttl")
        .and_then(|(_, v)| raw::u32_(v, "ttl", cx))
        .unwrap_or(zc.ttl);
    let mut rrsets = Vec::new();
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
        let mut rdatas: Vec<Box<[u8]>> = Vec::new();
        for (span, s) in items {
            match values::encode_rdata(t, s, &zc.origin) {
                Ok(rd) if rd.len() > MAX_RDATA => cx.err(
                    &span,
                    format!(
                        "{k} record of {text}: {} bytes of RDATA; RDLENGTH holds at most {MAX_RDATA} (RFC 1035 §3.2.1)",
                        rd.len()
                    ),
                ),
                Ok(rd) if !rdatas.iter().any(|r| **r == *rd) => rdatas.push(rd.into()),
                Ok(_) => {} // RFC 2181 §5: an RRset holds no duplicates.
                Err(e) => cx.err(&span, format!("{k} record of {text}: {e}")),
            }
        }
        let size = smallest_answer(name, rdatas.iter().map(|r| r.len()));
        if size > MAX_MESSAGE {
            cx.err(
                &key.span(),
                format!(
                    "{k} records of {text}: the smallest answer with them is {size} bytes; a DNS message holds at most {MAX_MESSAGE} (RFC 1035 §4.2.2)"
                ),
            );
        } else if !rdatas.is_empty() {
            rrsets.push(RrSet {
                rtype: t,
                ttl,
                rdatas,
            });
        }
    }
    if let Some(span) = cname {
        let apex = crate::model::wire::from_text(&zc.origin).is_some_and(|a| *a == *name);
        let others: Vec<String> = rrsets
            .iter()
            .filter(|r| r.rtype != rtype::CNAME)
            .map(|r| rtype::name(r.rtype).into_owned())
            .collect();
        if apex {
            cx.err(
                &span,
                format!("name {text} has a CNAME at the apex, beside the SOA"),
            );
        } else if !others.is_empty() {
            cx.err(
                &span,
                format!(
                    "name {text} has a CNAME beside other data ({})",
                    others.join(", ")
                ),
            );
        }
    }
    rrsets
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
