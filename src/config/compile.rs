//! Zone directory → [`Snapshot`]: every `*.toml` file, in file-name order, names resolved
//! into ids, every problem collected (STYLE.md conventions 1 and 5).
//!
//! One file is one zone. Within it: top-level settings and `[soa]` here, `[checks]` and
//! `[pools]` in `pools`, `[records]` in `records`, `[policies]` in `policies`; this module
//! then lays out the zone's names (empty non-terminals and delegations included).

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use toml::de::DeTable;

use super::diag::{Diagnostic, Diagnostics, FileCx, Span};
use super::raw;
use super::statics::Statics;
use super::values;
use super::{plain, policies, pools, records, zonefile};
use crate::model::{
    CheckSpec, PolicyId, PoolId, ProbeId, ProbeKey, Snapshot, Soa, WireName, Zone, ZoneId, wire,
};

/// SPEC §2 defaults.
const DEFAULT_TTL: u32 = 300;
const DEFAULT_POLICY_TTL: u32 = 30;
const DEFAULT_REFRESH: u32 = 3600;
const DEFAULT_RETRY: u32 = 600;
const DEFAULT_EXPIRE: u32 = 1_209_600;
/// RFC 2308 negative-caching TTL; short, since policy names come and go with health.
const DEFAULT_MINIMUM: u32 = 30;

const ZONE_KEYS: &[&str] = &[
    "origin",
    "ttl",
    "policy_ttl",
    "latency_table",
    "records_file",
    "soa",
    "records",
    "pools",
    "checks",
    "policies",
    "dnssec",
];
const SOA_KEYS: &[&str] = &[
    "mname", "rname", "serial", "refresh", "retry", "expire", "minimum",
];

/// What to load, and the snapshot being replaced (for serials that grow on every reload).
pub struct LoadOptions<'a> {
    pub zones_dir: &'a Path,
    pub previous: Option<&'a Snapshot>,
}

/// One zone file's text, and the path its problems are reported under (files it names,
/// like `latency_table`, are relative to that path's directory).
#[derive(Debug, Clone)]
pub struct Source {
    pub path: PathBuf,
    pub text: String,
}

/// Load every `*.toml` in `zones_dir` (sorted by file name) into a Snapshot, or every
/// problem found.
pub fn load_dir(opts: &LoadOptions) -> Result<Snapshot, Diagnostics> {
    let mut diags = Vec::new();
    let sources: Vec<Source> = zone_files(opts.zones_dir, &mut diags)
        .into_iter()
        .filter_map(|path| match read_text(&path) {
            Ok(text) => Some(Source { path, text }),
            Err(d) => {
                diags.push(d);
                None
            }
        })
        .collect();
    compile_sources(&sources, opts.previous, diags)
}

/// Compile zone files already in memory, one [`Source`] per file, in the order given: what
/// `load_dir` does once it has read the directory. Tests and fuzzers start here.
pub fn load_sources(
    sources: &[Source],
    previous: Option<&Snapshot>,
) -> Result<Snapshot, Diagnostics> {
    compile_sources(sources, previous, Vec::new())
}

/// One zone file's text, reported under `path`.
pub fn load_str(path: &Path, text: &str) -> Result<Snapshot, Diagnostics> {
    let source = Source {
        path: path.to_path_buf(),
        text: text.to_owned(),
    };
    load_sources(std::slice::from_ref(&source), None)
}

fn compile_sources(
    sources: &[Source],
    previous: Option<&Snapshot>,
    mut diags: Vec<Diagnostic>,
) -> Result<Snapshot, Diagnostics> {
    let mut b = Builder {
        snap: Snapshot::default(),
        probe_ids: HashMap::new(),
        origins: HashMap::new(),
        previous,
    };
    for source in sources {
        let mut cx = FileCx::new(&source.path, &source.text, &mut diags);
        let mut blanked = None;
        if let Some((doc, plain)) = parse_zone(&source.text, &mut blanked, &mut cx) {
            let file = ZoneFile {
                doc: &doc,
                text: &source.text,
                plain: &plain,
                path: &source.path,
            };
            compile_zone(&file, &mut b, &mut cx);
        }
    }
    if !diags.is_empty() {
        return Err(Diagnostics(diags).sorted());
    }
    b.snap.loaded_at = Some(SystemTime::now());
    Ok(b.snap)
}

/// The zone file's toml tree, and the ranges of its plain `[records.*]` tables, which the
/// tree leaves out (see `plain`). When the tree of the blanked text has a problem, or the
/// plain tables could clash with the rest, the whole text is parsed as it is, so that every
/// message is the toml crate's own about the real file.
fn parse_zone<'t>(
    text: &'t str,
    blanked: &'t mut Option<String>,
    cx: &mut FileCx<'_>,
) -> Option<(DeTable<'t>, Vec<Range<usize>>)> {
    if let Some(p) = plain::find(text).filter(|p| !p.ranges.is_empty()) {
        let b = blanked.insert(p.blank(text));
        if let Some(doc) = raw::parse_clean(b) {
            let fits = match doc.get("records").map(|v| v.get_ref()) {
                None => true,
                Some(toml::de::DeValue::Table(t)) => t.keys().all(|k| !p.has_key(k.get_ref())),
                Some(_) => false,
            };
            if fits {
                return Some((doc, p.ranges));
            }
        }
    }
    raw::parse(text, cx).map(|doc| (doc, Vec::new()))
}

/// A zone file as `compile_zone` reads it.
struct ZoneFile<'a, 'i> {
    doc: &'a DeTable<'i>,
    text: &'a str,
    /// Plain `[records.*]` tables, not in `doc`.
    plain: &'a [Range<usize>],
    path: &'a Path,
}

/// A file's text; one that cannot be read, or is not UTF-8, is a problem (the latter at the
/// `line:col` of its first bad byte).
pub(crate) fn read_text(path: &Path) -> Result<String, Diagnostic> {
    let at = |line, col, message| Diagnostic {
        file: path.to_path_buf(),
        line,
        col,
        message,
    };
    let bytes = std::fs::read(path).map_err(|e| at(0, 0, format!("cannot read: {e}")))?;
    String::from_utf8(bytes).map_err(|e| {
        let good = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let good = std::str::from_utf8(good).expect("valid up to here");
        let line_start = good.rfind('\n').map_or(0, |i| i + 1);
        let line = good.matches('\n').count() + 1;
        let col = good[line_start..].chars().count() + 1;
        at(line, col, "not UTF-8 text (TOML files are UTF-8)".into())
    })
}

/// Summary line for `meridian check`: "ok: N zones, N names, N pools, N checks".
pub fn summary(snap: &Snapshot) -> String {
    let names: usize = snap.zones.iter().map(|z| z.name_count).sum();
    // Every `[checks.*]` table, as for names: one the operator wrote but no pool uses, or one
    // with the same settings as another, is still a check `check` validated.
    let checks: usize = snap.zones.iter().map(|z| z.check_count).sum();
    format!(
        "ok: {} zones, {} names, {} pools, {} checks",
        snap.zones.len(),
        names,
        snap.pools.len(),
        checks
    )
}

/// The snapshot under construction, shared by every file of one load.
pub(crate) struct Builder<'p> {
    pub(crate) snap: Snapshot,
    /// Dedupe of (probe address, check) across pools and zones.
    pub(crate) probe_ids: HashMap<ProbeKey, ProbeId>,
    /// Origins seen so far, with their file.
    origins: HashMap<WireName, PathBuf>,
    previous: Option<&'p Snapshot>,
}

impl Builder<'_> {
    /// The id of a (probe address, check) pair, added when new.
    pub(crate) fn probe(&mut self, key: ProbeKey) -> ProbeId {
        let probes = &mut self.snap.probes;
        *self.probe_ids.entry(key.clone()).or_insert_with(|| {
            probes.push(key);
            ProbeId(probes.len() as u32 - 1)
        })
    }
}

/// What the parts of one zone file share.
pub(crate) struct ZoneCx {
    /// Presentation format, lowercase, trailing dot.
    pub(crate) origin: String,
    pub(crate) origin_wire: WireName,
    pub(crate) zone: ZoneId,
    /// Directory of the zone file: `ca_file` and `latency_table` are relative to it.
    pub(crate) dir: PathBuf,
    pub(crate) ttl: u32,
    pub(crate) policy_ttl: u32,
    /// The zone-wide `latency_table`, if any.
    pub(crate) latency_table: Option<(Span, String)>,
}

impl ZoneCx {
    /// A name of this zone (owner or policy name), or an error sentence.
    pub(crate) fn owner(&self, s: &str) -> Result<WireName, String> {
        // The common case (`www`, `n123`) without the text round trip: a big zone has a
        // million of them.
        if let Some(name) = values::relative_name(s, &self.origin_wire) {
            return Ok(name);
        }
        values::resolve_name(s, &self.origin, true)
    }
}

/// The `*.toml` files of the directory, sorted by file name.
fn zone_files(dir: &Path, diags: &mut Vec<Diagnostic>) -> Vec<PathBuf> {
    let whole = |message: String| Diagnostic {
        file: dir.to_path_buf(),
        line: 0,
        col: 0,
        message,
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            diags.push(whole(format!(
                "cannot read the zones directory {}: {e}",
                dir.display()
            )));
            return Vec::new();
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .filter(|n| Path::new(n).extension().is_some_and(|x| x == "toml"))
        .map(|n| dir.join(n))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    if files.is_empty() {
        diags.push(whole(format!(
            "no zone files in {}/",
            dir.display().to_string().trim_end_matches('/')
        )));
    }
    files
}

/// One zone file's document → a Zone, its pools, policies and probes added to `b`.
fn compile_zone(file: &ZoneFile<'_, '_>, b: &mut Builder<'_>, cx: &mut FileCx<'_>) {
    let (doc, path) = (file.doc, file.path);
    raw::check_keys(doc, ZONE_KEYS, "the zone file", cx);
    let Some((origin, origin_wire)) = origin(doc, path, b, cx) else {
        return;
    };
    let get_u32 = |key, default, cx: &mut FileCx<'_>| match raw::get(doc, key) {
        Some((_, v)) => raw::u32_(v, key, cx).unwrap_or(default),
        None => default,
    };
    let zc = ZoneCx {
        origin,
        origin_wire: origin_wire.clone(),
        zone: ZoneId(b.snap.zones.len() as u32),
        dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
        ttl: get_u32("ttl", DEFAULT_TTL, cx),
        policy_ttl: get_u32("policy_ttl", DEFAULT_POLICY_TTL, cx),
        latency_table: raw::get(doc, "latency_table").and_then(|(_, v)| {
            raw::string(v, "latency_table", cx).map(|s| (v.span(), s.to_owned()))
        }),
    };
    // Room for every name at once (growing a big index rehashes it into fresh pages):
    // plain tables run from about 36 bytes a name, policies are one name each, and the
    // records file adds its own estimate.
    let plain_bytes: usize = file.plain.iter().map(|r| r.len()).sum();
    let policy_count = match doc.get("policies").map(|v| v.get_ref()) {
        Some(toml::de::DeValue::Table(t)) => t.len(),
        _ => 0,
    };
    let mut statics = Statics::new(&origin_wire, plain_bytes / 36 + policy_count + 64);
    let from_file = records_file(doc, &zc, &mut statics, cx);
    let files = from_file.as_ref().map_or(&[][..], |f| &f.files[..]);
    let (soa, serial, soa_ttl) = zone_soa(doc, &zc, b.previous, from_file.as_ref(), cx);
    let section = |key: &str, cx: &mut FileCx<'_>| {
        raw::get(doc, key).and_then(|(_, v)| raw::table(v, key, cx))
    };
    let checks = section("checks", cx)
        .map(|t| pools::compile_checks(t, &zc, cx))
        .unwrap_or_default();
    let pool_names = section("pools", cx)
        .map(|t| pools::compile_pools(t, &zc, &checks, b, cx))
        .unwrap_or_default();
    let tree = section("records", cx);
    records::compile_records(tree, file.text, file.plain, &zc, &mut statics, files, cx);
    let published = section("policies", cx)
        .map(|t| policies::compile_policies(t, &zc, &pool_names, b, cx))
        .unwrap_or_default();
    let dnssec = raw::get(doc, "dnssec").and_then(|(span, v)| {
        raw::boolean(v, "dnssec", cx)
            .filter(|on| *on)
            .map(|_| cx.position(span.start))
    });
    check_collisions(&zc, &pool_names, &statics, files, &published, cx);
    let name_count = statics.owner_count() + published.iter().filter(|p| p.publish).count();
    let nodes = statics.lay_out(&origin_wire, &published, cx);
    zonefile::check_owners(&nodes, &statics.written, &origin_wire, files, cx.diags);
    drop(statics);
    b.snap.zone_by_origin.insert(origin_wire.clone(), zc.zone);
    let labels = wire::label_count(&origin_wire);
    if !b.snap.origin_labels.contains(&labels) {
        b.snap.origin_labels.push(labels);
        b.snap.origin_labels.sort_unstable_by(|a, b| b.cmp(a));
    }
    b.snap.zones.push(Zone {
        origin: zc.origin,
        origin_wire,
        file: path.to_path_buf(),
        serial,
        soa,
        soa_ttl,
        policy_ttl: zc.policy_ttl,
        nodes,
        name_count,
        check_count: checks.len(),
        pools: pool_names.iter().map(|p| p.id).collect(),
        dnssec,
        key: None,
    });
}

/// The zone's origin (required, unique across files).
fn origin(
    doc: &DeTable<'_>,
    path: &Path,
    b: &mut Builder<'_>,
    cx: &mut FileCx<'_>,
) -> Option<(String, WireName)> {
    let Some((_, v)) = raw::get(doc, "origin") else {
        cx.err(
            &(0..0),
            "the zone has no `origin` (the delegated zone, like \"gslb.example.com.\")",
        );
        return None;
    };
    let text = raw::string(v, "origin", cx)?;
    let Some(wire) =
        wire::from_text(text).filter(|_| !text.is_empty() && !text.contains(char::is_whitespace))
    else {
        cx.err(&v.span(), format!("bad origin \"{text}\""));
        return None;
    };
    if let Some(first) = b.origins.get(&wire) {
        cx.err(
            &v.span(),
            format!(
                "origin {} is already the origin of {}",
                wire::to_text(&wire),
                first.display()
            ),
        );
        // Go on checking the rest of this file; the load fails anyway.
    }
    b.origins
        .entry(wire.clone())
        .or_insert_with(|| path.to_path_buf());
    Some((wire::to_text(&wire), wire))
}

/// `records_file`, read into `statics` when the zone names one.
fn records_file(
    doc: &DeTable<'_>,
    zc: &ZoneCx,
    statics: &mut Statics,
    cx: &mut FileCx<'_>,
) -> Option<zonefile::Records> {
    let (_, v) = raw::get(doc, "records_file")?;
    let rel = raw::string(v, "records_file", cx)?;
    let zone = zonefile::ZoneOf {
        origin: &zc.origin,
        origin_wire: &zc.origin_wire,
        ttl: zc.ttl,
    };
    match zonefile::load(&zc.dir.join(rel), &zone, statics, cx.diags) {
        Ok(r) => Some(r),
        Err(e) => {
            cx.err(&v.span(), format!("records_file: {e}"));
            None
        }
    }
}

/// The zone's SOA, serial and SOA TTL: from `[soa]`, or from the records file's SOA when
/// the zone file has no `[soa]` (a zone brought over from another server keeps its own).
fn zone_soa(
    doc: &DeTable<'_>,
    zc: &ZoneCx,
    previous: Option<&Snapshot>,
    from_file: Option<&zonefile::Records>,
    cx: &mut FileCx<'_>,
) -> (Soa, u32, u32) {
    match (
        from_file.and_then(|f| f.soa.as_ref().map(|s| (f, s))),
        raw::get(doc, "soa"),
    ) {
        (Some((_, s)), None) => (s.soa.clone(), s.serial, s.ttl),
        (Some((f, s)), Some((key, _))) => {
            let at = f.describe(s.at);
            cx.err(
                &key,
                format!("the SOA is given twice: by [soa] here and in {at}"),
            );
            let (soa, serial) = soa(doc, zc, previous, cx);
            (soa, serial, zc.ttl)
        }
        (None, _) => {
            let (soa, serial) = soa(doc, zc, previous, cx);
            (soa, serial, zc.ttl)
        }
    }
}

/// `[soa]` and the serial to serve.
fn soa(
    doc: &DeTable<'_>,
    zc: &ZoneCx,
    previous: Option<&Snapshot>,
    cx: &mut FileCx<'_>,
) -> (Soa, u32) {
    let root = wire::from_text(".").expect("the root is a valid name");
    let mut soa = Soa {
        mname: root.clone(),
        rname: root,
        refresh: DEFAULT_REFRESH,
        retry: DEFAULT_RETRY,
        expire: DEFAULT_EXPIRE,
        minimum: DEFAULT_MINIMUM,
    };
    let Some((key_span, v)) = raw::get(doc, "soa") else {
        cx.err(
            &(0..0),
            "the zone has no [soa] table (it needs at least `mname` and `rname`)",
        );
        return (soa, 0);
    };
    let Some(t) = raw::table(v, "soa", cx) else {
        return (soa, 0);
    };
    raw::check_keys(t, SOA_KEYS, "[soa]", cx);
    for (key, parse) in [("mname", false), ("rname", true)] {
        let Some((_, v)) = raw::get(t, key) else {
            cx.err(&key_span, format!("[soa] has no `{key}`"));
            continue;
        };
        let Some(s) = raw::string(v, key, cx) else {
            continue;
        };
        let name = if parse {
            values::parse_rname(s, &zc.origin)
        } else {
            values::resolve_name(s, &zc.origin, false)
        };
        match name {
            Ok(n) if key == "mname" => soa.mname = n,
            Ok(n) => soa.rname = n,
            Err(e) => cx.err(&v.span(), format!("soa {key}: {e}")),
        }
    }
    for (key, field) in [
        ("refresh", &mut soa.refresh),
        ("retry", &mut soa.retry),
        ("expire", &mut soa.expire),
        ("minimum", &mut soa.minimum),
    ] {
        if let Some((_, v)) = raw::get(t, key) {
            *field = raw::u32_(v, key, cx).unwrap_or(*field);
        }
    }
    let serial = match raw::get(t, "serial") {
        Some((_, v)) => raw::u32_(v, "serial", cx).unwrap_or(0),
        None => next_serial(&zc.origin, previous),
    };
    (soa, serial)
}

/// A serial that grows with every reload: the clock (seconds since 1970, as u32), or one
/// more than the previous serial of this origin when that is already ahead.
fn next_serial(origin: &str, previous: Option<&Snapshot>) -> u32 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as u32;
    let before = previous
        .and_then(|p| p.find_zone_by_name(origin).map(|id| p.zone(id).serial))
        .map_or(0, |s| s.wrapping_add(1));
    now.max(before)
}

/// A published policy of the zone, as `policies` hands it back.
pub(crate) struct PolicyName {
    pub(crate) name: String,
    pub(crate) span: Span,
    pub(crate) owner: Option<WireName>,
    pub(crate) id: PolicyId,
    pub(crate) publish: bool,
}

/// A pool of the zone, as `pools` hands it back.
pub(crate) struct PoolName {
    pub(crate) name: String,
    pub(crate) span: Span,
    pub(crate) id: PoolId,
}

/// SPEC §2: a name may be static, a pool's or a policy's, never two of these at once.
fn check_collisions(
    zc: &ZoneCx,
    pools: &[PoolName],
    names: &Statics,
    files: &[PathBuf],
    policies: &[PolicyName],
    cx: &mut FileCx<'_>,
) {
    // Where a static name is written: "line N" of this file, or "file:N" of the records file.
    let statics = |name: &[u8], cx: &FileCx<'_>| names.written_at(name, cx, files);
    for p in policies {
        let Some(owner) = &p.owner else { continue };
        if let Some(at) = statics(owner, cx) {
            cx.err(
                &p.span,
                format!(
                    "policy \"{}\" has the name of static records ({at})",
                    p.name
                ),
            );
        }
    }
    for pool in pools {
        let name = zc.owner(&pool.name).ok();
        if let Some(at) = name.as_ref().and_then(|n| statics(n, cx)) {
            cx.err(
                &pool.span,
                format!(
                    "pool \"{}\" has the name of static records ({at})",
                    pool.name
                ),
            );
        }
        let same = |p: &&PolicyName| {
            p.name.eq_ignore_ascii_case(&pool.name) || (name.is_some() && p.owner == name)
        };
        if let Some(p) = policies.iter().find(same) {
            let (line, _) = cx.position(p.span.start);
            cx.err(
                &pool.span,
                format!(
                    "pool \"{}\" has the name of policy \"{}\" (line {line})",
                    pool.name, p.name
                ),
            );
        }
    }
}

/// The check of a pool, shared by `Arc` among the pools of one zone.
pub(crate) type Checks = HashMap<String, (Arc<CheckSpec>, String)>;
