//! `[checks.*]` → [`CheckSpec`] and `[pools.*]` → [`Pool`], with the (probe address, check)
//! pairs deduplicated across every pool and zone (SPEC §5).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use toml::de::{DeTable, DeValue};

use super::compile::{Builder, Checks, PoolName, ZoneCx};
use super::diag::{FileCx, Span};
use super::raw::{self, Value};
use super::values;
use crate::model::{
    CheckKind, CheckSpec, Coords, Endpoint, Pool, PoolId, ProbeKey, Quorum, StatusSet,
};

const CHECK_KEYS: &[&str] = &[
    "kind",
    "port",
    "path",
    "host",
    "expect_status",
    "expect_body",
    "headers",
    "interval",
    "timeout",
    "rise",
    "fall",
    "ca_file",
    "tls_verify",
    "quorum",
];
const POOL_KEYS: &[&str] = &[
    "A",
    "AAAA",
    "location",
    "check",
    "min_healthy",
    "probe_address",
];

/// Well-known ports of the check kinds (RFC 9110 §4.2).
const HTTP_PORT: u16 = 80;
const HTTPS_PORT: u16 = 443;
/// SPEC §2 defaults of a check.
const DEFAULT_PATH: &str = "/";
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_RISE: u32 = 2;
const DEFAULT_FALL: u32 = 2;
/// The largest integer `quorum`: far above any real count of name servers (RFC 2182 asks
/// for at least two; the root zone has thirteen), small enough to print and compare.
const MAX_QUORUM: i64 = 1000;
/// A pool is up while at least this many endpoints are (SPEC §2).
const DEFAULT_MIN_HEALTHY: u32 = 1;

/// Every `[checks.*]` of the zone, by lowercase name.
pub(crate) fn compile_checks(t: &DeTable<'_>, zc: &ZoneCx, cx: &mut FileCx<'_>) -> Checks {
    let mut checks = Checks::new();
    for (key, v) in raw::entries(t) {
        let name = key.get_ref().to_string();
        let what = format!("[checks.{name}]");
        let Some(table) = raw::table(v, &what, cx) else {
            continue;
        };
        // A check with errors is still registered, so that pools naming it do not
        // report it missing too (the load fails anyway).
        let spec = compile_check(table, &key.span(), &what, zc, cx);
        checks.insert(name.to_ascii_lowercase(), (Arc::new(spec), name));
    }
    checks
}

fn compile_check(
    t: &DeTable<'_>,
    at: &Span,
    what: &str,
    zc: &ZoneCx,
    cx: &mut FileCx<'_>,
) -> CheckSpec {
    raw::check_keys(t, CHECK_KEYS, what, cx);
    let kind = match raw::get(t, "kind").map(|(_, v)| (v, raw::string(v, "kind", cx))) {
        Some((_, Some("http"))) => CheckKind::Http,
        Some((_, Some("https"))) => CheckKind::Https,
        Some((_, Some("tcp"))) => CheckKind::Tcp,
        Some((v, Some(other))) => {
            cx.err(
                &v.span(),
                format!("{what}: bad kind \"{other}\": use http, https or tcp"),
            );
            CheckKind::Http
        }
        Some((_, None)) => CheckKind::Http,
        None => {
            cx.err(at, format!("{what} has no `kind` (http, https or tcp)"));
            CheckKind::Http
        }
    };
    let port = match (raw::get(t, "port"), kind) {
        (Some((_, v)), _) => raw::int_in(v, "port", 1, 65535, cx).unwrap_or(0) as u16,
        (None, CheckKind::Http) => HTTP_PORT,
        (None, CheckKind::Https) => HTTPS_PORT,
        (None, CheckKind::Tcp) => {
            cx.err(at, format!("{what}: a tcp check needs a `port`"));
            0
        }
    };
    let string = |key: &str, cx: &mut FileCx<'_>| {
        raw::get(t, key)
            .and_then(|(_, v)| raw::string(v, key, cx).map(|s| (v.span(), s.to_owned())))
    };
    let path = string("path", cx).map_or(DEFAULT_PATH.to_owned(), |(span, p)| {
        if !p.starts_with('/') {
            cx.err(&span, format!("{what}: `path` must start with \"/\""));
        }
        p
    });
    let duration = |key: &str, default, cx: &mut FileCx<'_>| match string(key, cx) {
        Some((span, s)) => values::parse_duration(&s)
            .map_err(|e| cx.err(&span, e))
            .unwrap_or(default),
        None => default,
    };
    let interval = duration("interval", DEFAULT_INTERVAL, cx);
    let timeout = duration("timeout", DEFAULT_TIMEOUT, cx);
    if timeout > interval {
        let span = raw::get(t, "timeout")
            .or(raw::get(t, "interval"))
            .map_or(at.clone(), |(_, v)| v.span());
        cx.err(
            &span,
            format!(
                "{what}: `timeout` ({timeout:?}) must not be longer than `interval` ({interval:?})"
            ),
        );
    }
    let count = |key: &str, default, cx: &mut FileCx<'_>| match raw::get(t, key) {
        Some((_, v)) => {
            raw::int_in(v, key, 1, i64::from(u32::MAX), cx).map_or(default, |n| n as u32)
        }
        None => default,
    };
    CheckSpec {
        kind,
        port,
        path,
        host: string("host", cx).map(|(_, s)| s),
        expect_status: expect_status(t, cx),
        expect_body: string("expect_body", cx).map(|(_, s)| s),
        headers: headers(t, what, cx),
        interval,
        timeout,
        rise: count("rise", DEFAULT_RISE, cx),
        fall: count("fall", DEFAULT_FALL, cx),
        ca_file: string("ca_file", cx).map(|(span, s)| {
            let path = zc.dir.join(&s);
            if !path.is_file() {
                cx.err(
                    &span,
                    format!(
                        "{what}: ca_file \"{s}\" does not exist (looked for {})",
                        path.display()
                    ),
                );
            }
            path
        }),
        tls_verify: raw::get(t, "tls_verify")
            .and_then(|(_, v)| raw::boolean(v, "tls_verify", cx))
            .unwrap_or(true),
        quorum: quorum(t, what, cx),
    }
}

/// `quorum = "majority"` (the default) or an integer from 1 to [`MAX_QUORUM`].
fn quorum(t: &DeTable<'_>, what: &str, cx: &mut FileCx<'_>) -> Quorum {
    let Some((_, v)) = raw::get(t, "quorum") else {
        return Quorum::Majority;
    };
    match v.get_ref() {
        DeValue::String(s) if s.as_ref() == "majority" => Quorum::Majority,
        DeValue::Integer(_) => raw::int_in(v, "quorum", 1, MAX_QUORUM, cx)
            .map_or(Quorum::Majority, |n| Quorum::AtLeast(n as u32)),
        other => {
            let shown = match other {
                DeValue::String(s) => format!("\"{s}\""),
                o => raw::type_name(o).to_string(),
            };
            cx.err(
                &v.span(),
                format!("{what}: `quorum` must be \"majority\" or an integer, not {shown}"),
            );
            Quorum::Majority
        }
    }
}

/// `expect_status`: a code, a class string, or a list mixing both; default `2xx`.
fn expect_status(t: &DeTable<'_>, cx: &mut FileCx<'_>) -> StatusSet {
    let Some((_, v)) = raw::get(t, "expect_status") else {
        return StatusSet::default();
    };
    let mut set = StatusSet {
        codes: Vec::new(),
        classes: Vec::new(),
    };
    let items: Vec<&Value<'_>> = match v.get_ref() {
        DeValue::Array(a) => a.iter().collect(),
        _ => vec![v],
    };
    for item in items {
        let text = match item.get_ref() {
            DeValue::String(s) => s.to_string(),
            DeValue::Integer(_) => {
                raw::int_of(item.get_ref()).map_or_else(String::new, |n| n.to_string())
            }
            other => {
                cx.err(
                    &item.span(),
                    format!(
                        "`expect_status` must hold codes or classes like \"2xx\", not {}",
                        raw::type_name(other)
                    ),
                );
                continue;
            }
        };
        if let Err(e) = values::add_status(&mut set, &text) {
            cx.err(&item.span(), e);
        }
    }
    if set.codes.is_empty() && set.classes.is_empty() {
        cx.err(&v.span(), "`expect_status` is empty");
    }
    set
}

/// `headers = { "Name" = "value" }`, in file order.
fn headers(t: &DeTable<'_>, what: &str, cx: &mut FileCx<'_>) -> Vec<(String, String)> {
    let Some(table) = raw::get(t, "headers").and_then(|(_, v)| raw::table(v, "headers", cx)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (k, v) in raw::entries(table) {
        let name = k.get_ref().to_string();
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
            cx.err(&k.span(), format!("{what}: bad header name \"{name}\""));
        } else if let Some(value) = raw::string(v, &name, cx) {
            out.push((name, value.to_owned()));
        }
    }
    out
}

/// Every `[pools.*]` of the zone, added to the snapshot in file order.
pub(crate) fn compile_pools(
    t: &DeTable<'_>,
    zc: &ZoneCx,
    checks: &Checks,
    b: &mut Builder<'_>,
    cx: &mut FileCx<'_>,
) -> Vec<PoolName> {
    let mut names = Vec::new();
    for (key, v) in raw::entries(t) {
        let name = key.get_ref().to_string();
        let what = format!("pool \"{name}\"");
        if names
            .iter()
            .any(|p: &PoolName| p.name.eq_ignore_ascii_case(&name))
        {
            cx.err(
                &key.span(),
                format!("{what} is written twice (names are case-insensitive)"),
            );
        }
        let Some(table) = raw::table(v, &format!("[pools.{name}]"), cx) else {
            continue;
        };
        let pool = compile_pool(&name, table, &key.span(), &what, zc, checks, b, cx);
        let id = PoolId(b.snap.pools.len() as u32);
        b.snap.pools.push(pool);
        names.push(PoolName {
            name,
            span: key.span(),
            id,
        });
    }
    names
}

#[allow(clippy::too_many_arguments)] // one pool's context; a struct would only rename it
fn compile_pool(
    name: &str,
    t: &DeTable<'_>,
    at: &Span,
    what: &str,
    zc: &ZoneCx,
    checks: &Checks,
    b: &mut Builder<'_>,
    cx: &mut FileCx<'_>,
) -> Pool {
    raw::check_keys(t, POOL_KEYS, &format!("[pools.{name}]"), cx);
    let addrs = endpoints(t, what, cx);
    let (check, check_name) =
        match raw::get(t, "check").and_then(|(_, v)| raw::string(v, "check", cx).map(|s| (v, s))) {
            Some((v, s)) => match checks.get(&s.to_ascii_lowercase()) {
                Some((spec, n)) => (Some(spec.clone()), Some(n.clone())),
                None => {
                    cx.err(
                        &v.span(),
                        format!("{what}: check \"{s}\" names no [checks.*] entry"),
                    );
                    (None, None)
                }
            },
            None => (None, None),
        };
    let probes = probe_addresses(t, &addrs, what, cx);
    let endpoints = addrs
        .iter()
        .map(|&addr| Endpoint {
            addr,
            probe: check.as_ref().map(|c| {
                let at = probes.get(&addr).copied().unwrap_or(addr);
                b.probe(ProbeKey {
                    addr: at,
                    check: c.clone(),
                })
            }),
        })
        .collect();
    let min_healthy = match raw::get(t, "min_healthy") {
        Some((_, v)) => {
            let n = raw::int_in(v, "min_healthy", 1, i64::from(u32::MAX), cx).unwrap_or(1) as u32;
            if n as usize > addrs.len() && !addrs.is_empty() {
                cx.err(
                    &v.span(),
                    format!(
                        "{what}: min_healthy {n} is more than its {} addresses",
                        addrs.len()
                    ),
                );
            }
            n
        }
        None => DEFAULT_MIN_HEALTHY,
    };
    if addrs.is_empty() && raw::get(t, "A").is_none() && raw::get(t, "AAAA").is_none() {
        cx.err(at, format!("{what} has no addresses (`A` or `AAAA`)"));
    }
    Pool {
        name: name.to_owned(),
        zone: zc.zone,
        endpoints,
        location: location(t, what, cx),
        check,
        check_name,
        min_healthy,
    }
}

/// `A` then `AAAA`, each in file order; a duplicate is an error.
fn endpoints(t: &DeTable<'_>, what: &str, cx: &mut FileCx<'_>) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    for (key, v4) in [("A", true), ("AAAA", false)] {
        let Some(items) = raw::get(t, key).and_then(|(_, v)| raw::strings(v, key, cx)) else {
            continue;
        };
        for (span, s) in items {
            match values::parse_addr(s) {
                Ok(a) if a.is_ipv4() == v4 && out.contains(&a) => {
                    cx.err(&span, format!("{what}: address {a} is listed twice"))
                }
                Ok(a) if a.is_ipv4() == v4 => out.push(a),
                _ => cx.err(
                    &span,
                    format!("{what}: bad IPv{} address \"{s}\"", if v4 { 4 } else { 6 }),
                ),
            }
        }
    }
    out
}

/// `probe_address = { "answered" = "probed" }`; every key must be an address of the pool.
fn probe_addresses(
    t: &DeTable<'_>,
    addrs: &[IpAddr],
    what: &str,
    cx: &mut FileCx<'_>,
) -> HashMap<IpAddr, IpAddr> {
    let mut out = HashMap::new();
    let Some(table) =
        raw::get(t, "probe_address").and_then(|(_, v)| raw::table(v, "probe_address", cx))
    else {
        return out;
    };
    for (k, v) in raw::entries(table) {
        let key = k.get_ref();
        let from = match values::parse_addr(key) {
            Ok(a) if addrs.contains(&a) => a,
            Ok(_) => {
                cx.err(
                    &k.span(),
                    format!("{what}: probe_address key \"{key}\" is not an address of the pool"),
                );
                continue;
            }
            Err(e) => {
                cx.err(&k.span(), format!("{what}: probe_address key: {e}"));
                continue;
            }
        };
        let Some(s) = raw::string(v, "probe_address", cx) else {
            continue;
        };
        match values::parse_addr(s) {
            Ok(to) => {
                out.insert(from, to);
            }
            Err(e) => cx.err(&v.span(), format!("{what}: probe_address: {e}")),
        }
    }
    out
}

/// `location = [latitude, longitude]` in degrees.
fn location(t: &DeTable<'_>, what: &str, cx: &mut FileCx<'_>) -> Option<Coords> {
    let (_, v) = raw::get(t, "location")?;
    let bad = |cx: &mut FileCx<'_>| {
        cx.err(
            &v.span(),
            format!(
                "{what}: `location` must be [latitude, longitude] in degrees, like [53.35, -6.26]"
            ),
        );
        None
    };
    let DeValue::Array(items) = v.get_ref() else {
        return bad(cx);
    };
    let [lat, lon] = &items[..] else {
        return bad(cx);
    };
    let (lat, lon) = (
        raw::number(lat, "location", cx)?,
        raw::number(lon, "location", cx)?,
    );
    if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
        return bad(cx);
    }
    Some(Coords { lat, lon })
}
