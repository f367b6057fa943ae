//! `records_file = "name.zone"`: a zone's static records from an RFC 1035 master file
//! (`$ORIGIN`, `$TTL`, `$INCLUDE`, parentheses, escapes), read by NLnet Labs' `domain`
//! scanner one record at a time, with every problem at that file's own `file:line:col`.
//!
//! This is the bulk path: a million names load here without a TOML tree in memory. The
//! records become the same owners and RRsets as `[records.*]` tables; `compile` then checks
//! them against the TOML names of the zone.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use domain::base::name::Name;
use domain::base::rdata::ComposeRecordData;
use domain::base::{ToName, iana::Class};
use domain::rdata::ZoneRecordData;
use domain::zonefile::inplace::{Entry, Zonefile};

use super::diag::Diagnostic;
use super::statics::{self, Statics, Written};
use super::values;
use crate::model::{MAX_MESSAGE, MAX_RDATA, Nodes, Soa, rtype, smallest_answer, wire};

/// NSD's limit ("includes nested too deeply, skipped (>10)"): deeper is a loop in practice.
pub(crate) const MAX_INCLUDE_DEPTH: usize = 10;

/// Where a record was written: an index into [`Records::files`], a line and a column.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FilePos {
    pub(crate) file: u32,
    pub(crate) line: u32,
    pub(crate) col: u32,
}

/// The SOA of the file (at the apex).
pub(crate) struct FileSoa {
    pub(crate) at: FilePos,
    pub(crate) soa: Soa,
    pub(crate) serial: u32,
    pub(crate) ttl: u32,
}

/// Everything read from a records file and the files it includes.
#[derive(Default)]
pub(crate) struct Records {
    /// The records file first, then every included file in the order met.
    pub(crate) files: Vec<PathBuf>,
    pub(crate) soa: Option<FileSoa>,
}

impl Records {
    /// `file:line` of a position, for messages that point at this data from elsewhere.
    pub(crate) fn describe(&self, at: FilePos) -> String {
        statics::describe(&self.files, at)
    }
}

/// What the loader needs of its zone.
pub(crate) struct ZoneOf<'a> {
    /// Presentation, lowercase, trailing dot.
    pub(crate) origin: &'a str,
    pub(crate) origin_wire: &'a [u8],
    /// TTL of records that give none, when the file sets no `$TTL`.
    pub(crate) ttl: u32,
}

/// Read `path` (and what it includes) into the zone's statics; problems go into `diags`.
/// `Err` with a sentence when the file itself cannot be read (the caller points at
/// `records_file`). RRsets are checked once grouped: see [`check_owners`].
///
/// The scanner runs on a thread of its own and hands records over in batches, while this
/// thread files them into the zone: on two cores a big file loads in about two thirds of
/// the time (the scanner is most of the work).
pub(crate) fn load(
    path: &Path,
    zone: &ZoneOf<'_>,
    statics: &mut Statics,
    diags: &mut Vec<Diagnostic>,
) -> Result<Records, String> {
    let text = read(path)?;
    // A name a line, about 25 bytes each in a big file of A records.
    statics.reserve(text.len() / 25, zone.origin_wire.len() + 8);
    let origin = Name::<Bytes>::bytes_from_str(zone.origin)
        .map_err(|e| format!("bad origin {}: {e}", zone.origin))?;
    let scan = |sink: Sink<'_>, diags: &mut Vec<Diagnostic>| {
        let mut cx = Loader {
            zone,
            records: Records::default(),
            sink,
            diags,
            owner: Vec::with_capacity(256),
            rdata: Vec::with_capacity(512),
        };
        cx.file(path.to_path_buf(), &text, origin.clone(), 0);
        cx.sink.flush();
        cx.records
    };
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(BATCHES_IN_FLIGHT);
    // Filed batches go back to the scanner: the same few buffers serve the whole file
    // (fresh ones, freed on the other thread, had the allocator zero new pages all along).
    let (back_tx, back_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(BATCHES_IN_FLIGHT + 1);
    std::thread::scope(|s| {
        let scanner = std::thread::Builder::new()
            .name("meridian-zonefile".into())
            .spawn_scoped(s, || {
                let mut own = Vec::new();
                let sink = Sink::Channel {
                    tx,
                    back: back_rx,
                    batch: Vec::with_capacity(BATCH_BYTES),
                };
                let records = scan(sink, &mut own);
                (records, own)
            });
        let Ok(scanner) = scanner else {
            // No thread to be had: scan here.
            return Ok(scan(Sink::Direct(statics), diags));
        };
        for mut batch in rx {
            file_batch(&batch, statics);
            batch.clear();
            let _ = back_tx.try_send(batch);
        }
        match scanner.join() {
            Ok((records, own)) => {
                diags.extend(own);
                Ok(records)
            }
            Err(_) => Err(format!("the reader of {} failed", path.display())),
        }
    })
}

/// Bytes of records per batch from the scanning thread, and batches queued at most: the
/// hand-over holds about half a megabyte whatever the size of the file.
const BATCH_BYTES: usize = 64 << 10;
const BATCHES_IN_FLIGHT: usize = 8;

/// Where the scanner's records go: straight into the zone, or in batches to the thread that
/// files them (each record packed as owner length and owner, type, TTL, position, RDATA
/// length and RDATA).
enum Sink<'s> {
    Direct(&'s mut Statics),
    Channel {
        tx: std::sync::mpsc::SyncSender<Vec<u8>>,
        back: std::sync::mpsc::Receiver<Vec<u8>>,
        batch: Vec<u8>,
    },
}

impl Sink<'_> {
    fn record(&mut self, owner: &[u8], t: u16, ttl: u32, at: FilePos, rdata: &[u8]) {
        match self {
            Sink::Direct(statics) => file_record(statics, owner, t, ttl, at, rdata),
            Sink::Channel { batch, .. } => {
                // Owners are at most 255 bytes and RDATA at most MAX_RDATA (checked).
                batch.push(owner.len() as u8);
                batch.extend_from_slice(owner);
                batch.extend_from_slice(&t.to_be_bytes());
                batch.extend_from_slice(&ttl.to_be_bytes());
                for n in [at.file, at.line, at.col] {
                    batch.extend_from_slice(&n.to_be_bytes());
                }
                batch.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
                batch.extend_from_slice(rdata);
                if batch.len() >= BATCH_BYTES {
                    self.flush();
                }
            }
        }
    }

    fn flush(&mut self) {
        if let Sink::Channel { tx, back, batch } = self
            && !batch.is_empty()
        {
            let next = back
                .try_recv()
                .unwrap_or_else(|_| Vec::with_capacity(BATCH_BYTES));
            // The receiver only goes away once the scan is over.
            let _ = tx.send(std::mem::replace(batch, next));
        }
    }
}

/// The records of one batch into the zone.
fn file_batch(mut batch: &[u8], statics: &mut Statics) {
    fn take<'b>(b: &mut &'b [u8], n: usize) -> Option<&'b [u8]> {
        let (head, rest) = b.split_at_checked(n)?;
        *b = rest;
        Some(head)
    }
    fn u32_of(b: &mut &[u8]) -> Option<u32> {
        take(b, 4).map(|x| u32::from_be_bytes([x[0], x[1], x[2], x[3]]))
    }
    fn u16_of(b: &mut &[u8]) -> Option<u16> {
        take(b, 2).map(|x| u16::from_be_bytes([x[0], x[1]]))
    }
    let mut next = || -> Option<()> {
        let len = usize::from(*take(&mut batch, 1)?.first()?);
        let owner = take(&mut batch, len)?;
        let t = u16_of(&mut batch)?;
        let ttl = u32_of(&mut batch)?;
        let at = FilePos {
            file: u32_of(&mut batch)?,
            line: u32_of(&mut batch)?,
            col: u32_of(&mut batch)?,
        };
        let rd_len = usize::from(u16_of(&mut batch)?);
        let rdata = take(&mut batch, rd_len)?;
        file_record(statics, owner, t, ttl, at, rdata);
        Some(())
    };
    while next().is_some() {}
}

/// One record into the zone. RFC 2181 §5: an RRset holds no duplicates; §5.2: one TTL (the
/// first one read): the builder settles both when it groups the records.
fn file_record(statics: &mut Statics, owner: &[u8], t: u16, ttl: u32, at: FilePos, rdata: &[u8]) {
    let Some(id) = statics.insert(owner) else {
        return;
    };
    let w = &mut statics.written[id as usize];
    if matches!(w, Written::No) {
        *w = Written::File(at);
    }
    statics.add(id, t, ttl, rdata);
}

struct Loader<'a, 'd> {
    zone: &'a ZoneOf<'a>,
    records: Records,
    sink: Sink<'d>,
    diags: &'d mut Vec<Diagnostic>,
    /// Scratch buffers, reused for every record.
    owner: Vec<u8>,
    rdata: Vec<u8>,
}

impl Loader<'_, '_> {
    /// Scan one file; `$INCLUDE` recurses up to [`MAX_INCLUDE_DEPTH`].
    fn file(&mut self, path: PathBuf, text: &[u8], origin: Name<Bytes>, depth: usize) {
        let file = self.records.files.len() as u32;
        self.records.files.push(path);
        // The zone's `ttl` is the default of a file without `$TTL`. It goes in as a first
        // line of its own, so every position the scanner reports is one line too far.
        let prefix = format!("$TTL {}\n", self.zone.ttl);
        let mut zf = Zonefile::with_capacity(prefix.len() + text.len() + 1);
        zf.extend_from_slice(prefix.as_bytes());
        zf.extend_from_slice(text);
        if !text.ends_with(b"\n") {
            // The scanner wants the last entry ended ("short buffer" otherwise).
            zf.extend_from_slice(b"\n");
        }
        zf.set_origin(origin);
        zf.set_default_class(Class::IN);
        let mut entries = Entries::new(text);
        loop {
            // The scanner is third-party code fed with operator input: a panic in it becomes
            // a diagnostic, never a dead `check` or `serve`.
            let next = catch_unwind(AssertUnwindSafe(|| zf.next_entry()));
            let entry = match next {
                Ok(Ok(Some(e))) => e,
                Ok(Ok(None)) => return,
                Ok(Err(e)) => {
                    // Only the first: after a syntax error the scanner cannot go on.
                    let (line, col, message) = split_error(&e.to_string());
                    let line = line.saturating_sub(1) as u32;
                    // The scanner may point past the entry (at the next line when the last
                    // token was bad): then the entry's start is the better place.
                    let at = match entries.next_entry() {
                        Some(s) if line < s.line || line > s.last_line => at_file(file, s),
                        _ => FilePos {
                            file,
                            line,
                            col: col as u32,
                        },
                    };
                    self.err(at, message);
                    return;
                }
                Err(_) => {
                    let at = entries.next_entry().map_or(
                        FilePos {
                            file,
                            line: 0,
                            col: 0,
                        },
                        |s| at_file(file, s),
                    );
                    self.err(at, "the zone-file parser failed here");
                    return;
                }
            };
            let Some(span) = entries.next_entry() else {
                self.err(
                    FilePos {
                        file,
                        line: 0,
                        col: 0,
                    },
                    "entries out of step with the scanner",
                );
                return;
            };
            let at = at_file(file, span);
            match entry {
                Entry::Record(rec) => self.record(&rec, at),
                Entry::Include { path, origin } => {
                    let here = zf.origin().ok();
                    self.include(path.as_ref(), origin.or(here), at, depth);
                }
            }
        }
    }

    fn include(&mut self, rel: &str, origin: Option<Name<Bytes>>, at: FilePos, depth: usize) {
        let Some(origin) = origin else {
            self.err(at, "$INCLUDE with no origin known");
            return;
        };
        if depth + 1 > MAX_INCLUDE_DEPTH {
            self.err(
                at,
                format!("$INCLUDE nested more than {MAX_INCLUDE_DEPTH} deep (a loop?)"),
            );
            return;
        }
        let rel = Path::new(rel);
        // Relative to the including file, as records_file is to its zone file.
        let including = &self.records.files[at.file as usize];
        let path = including
            .parent()
            .map_or_else(|| rel.to_path_buf(), |d| d.join(rel));
        match read(&path) {
            Ok(text) => self.file(path, &text, origin, depth + 1),
            Err(e) => self.err(at, e),
        }
    }

    /// One record: checked, encoded, and added to its owner.
    fn record(&mut self, rec: &domain::zonefile::inplace::ScannedRecord, at: FilePos) {
        let mut owner = std::mem::take(&mut self.owner);
        owner.clear();
        let Ok(()) = rec.owner().compose_canonical(&mut owner);
        self.record_at(&owner, rec, at);
        self.owner = owner;
    }

    fn record_at(
        &mut self,
        owner: &[u8],
        rec: &domain::zonefile::inplace::ScannedRecord,
        at: FilePos,
    ) {
        if !wire::is_within(owner, self.zone.origin_wire) {
            self.err(
                at,
                format!(
                    "name {} is outside the origin {}",
                    wire::to_text(owner),
                    self.zone.origin
                ),
            );
            return;
        }
        if rec.class() != Class::IN {
            self.err(at, format!("class {} is not IN", rec.class()));
            return;
        }
        let t = rec.rtype().to_int();
        let ttl = rec.ttl().as_secs();
        if t == rtype::SOA {
            self.soa(owner, rec.data(), ttl, at);
            return;
        }
        if values::static_type(&rtype::name(t)).is_none() {
            self.err(
                at,
                format!(
                    "record type {} is not supported (static types: A, AAAA, CNAME, MX, TXT, SRV, CAA, NS, PTR; and the SOA at the apex)",
                    rec.rtype()
                ),
            );
            return;
        }
        self.rdata.clear();
        let Ok(()) = rec.data().compose_canonical_rdata(&mut self.rdata);
        if self.rdata.len() > MAX_RDATA {
            self.err(
                at,
                format!(
                    "{} bytes of RDATA; RDLENGTH holds at most {MAX_RDATA} (RFC 1035 §3.2.1)",
                    self.rdata.len()
                ),
            );
            return;
        }
        self.sink.record(owner, t, ttl, at, &self.rdata);
    }

    fn soa(&mut self, owner: &[u8], data: &ScannedData, ttl: u32, at: FilePos) {
        if owner != self.zone.origin_wire {
            self.err(at, "an SOA record is only allowed at the apex");
            return;
        }
        if let Some(first) = &self.records.soa {
            let first = self.records.describe(first.at);
            self.err(at, format!("a second SOA record (the first is at {first})"));
            return;
        }
        let ZoneRecordData::Soa(soa) = data else {
            return;
        };
        let name = |n: &domain::zonefile::inplace::ScannedDname| {
            let mut w = Vec::new();
            let Ok(()) = n.compose_canonical(&mut w);
            w.into_boxed_slice()
        };
        self.records.soa = Some(FileSoa {
            at,
            soa: Soa {
                mname: name(soa.mname()),
                rname: name(soa.rname()),
                refresh: soa.refresh().as_secs(),
                retry: soa.retry().as_secs(),
                expire: soa.expire().as_secs(),
                minimum: soa.minimum().as_secs(),
            },
            serial: soa.serial().into_int(),
            ttl,
        });
    }

    fn err(&mut self, at: FilePos, message: impl Into<String>) {
        self.err_at(at.file, at.line as usize, at.col as usize, message.into());
    }

    fn err_at(&mut self, file: u32, line: usize, col: usize, message: String) {
        self.diags.push(Diagnostic {
            file: self.records.files[file as usize].clone(),
            line,
            col,
            message,
        });
    }
}

/// SPEC §2 for the names of the records file, once their records are grouped: a CNAME
/// stands alone, holds one target, and is never at the apex; and every RRset fits a DNS
/// message.
pub(crate) fn check_owners(
    nodes: &Nodes,
    written: &[Written],
    origin_wire: &[u8],
    files: &[PathBuf],
    diags: &mut Vec<Diagnostic>,
) {
    for ((name, node), w) in nodes.iter().zip(written) {
        let (Written::File(at) | Written::Both(_, at)) = *w else {
            continue;
        };
        let mut problem = |m: String| diags.push(statics::file_err(files, at, m));
        for set in node.rrsets() {
            let size = smallest_answer(name, set.rdatas().map(|r| r.len()));
            if size > MAX_MESSAGE {
                problem(statics::rrset_too_big(
                    &rtype::name(set.rtype),
                    &wire::to_text(name),
                    size,
                ));
            }
        }
        let Some(cname) = node.rrset(rtype::CNAME) else {
            continue;
        };
        let text = wire::to_text(name);
        let others: Vec<_> = node
            .rrsets()
            .filter(|r| r.rtype != rtype::CNAME)
            .map(|r| rtype::name(r.rtype).into_owned())
            .collect();
        if let Some(m) = statics::cname_problem(&text, name == origin_wire, &others) {
            problem(m);
        } else if cname.len() > 1 {
            problem(format!(
                "name {text} has {} CNAME records (a name holds one)",
                cname.len()
            ));
        }
    }
}

/// A regular file's bytes (never a device or a directory, which could be endless).
fn read(path: &Path) -> Result<Vec<u8>, String> {
    match std::fs::metadata(path).map(|m| m.is_file()) {
        Ok(true) => std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display())),
        Ok(false) => Err(format!("{} is not a file", path.display())),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

type ScannedData = domain::zonefile::inplace::ScannedRecordData;

fn at_file(file: u32, s: Span) -> FilePos {
    FilePos {
        file,
        line: s.line,
        col: s.col,
    }
}

/// The scanner's errors read `line:col: message` (its fields are private).
fn split_error(s: &str) -> (usize, usize, String) {
    let mut parts = s.splitn(3, ':');
    let line = parts.next().and_then(|p| p.trim().parse().ok());
    let col = parts.next().and_then(|p| p.trim().parse().ok());
    match (line, col, parts.next()) {
        (Some(l), Some(c), Some(m)) => (l, c, m.trim().to_owned()),
        _ => (1, 1, s.to_owned()),
    }
}

/// Where each entry of a master file starts and ends, found by a pass of our own over the
/// text (the scanner keeps no positions of its entries): entries end at a line end outside
/// quotes and parentheses; blank lines, comments and the `$ORIGIN`/`$TTL` lines the scanner
/// handles by itself are not entries. One forward pass for the whole file.
struct Entries<'t> {
    text: &'t [u8],
    at: usize,
    line: u32,
    line_start: usize,
}

/// The lines of one entry: where it starts (line, column) and its last line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    line: u32,
    col: u32,
    last_line: u32,
}

impl<'t> Entries<'t> {
    fn new(text: &'t [u8]) -> Self {
        Entries {
            text,
            at: 0,
            line: 1,
            line_start: 0,
        }
    }

    /// The next entry, or `None` at the end of the text.
    fn next_entry(&mut self) -> Option<Span> {
        loop {
            self.skip_blanks();
            let rest = self.text.get(self.at..)?;
            if rest.is_empty() {
                return None;
            }
            let start = Span {
                line: self.line,
                col: (self.at - self.line_start) as u32 + 1,
                last_line: self.line,
            };
            let directive = self.at == self.line_start && is_directive(rest);
            let last_line = self.skip_entry();
            if !directive {
                return Some(Span { last_line, ..start });
            }
        }
    }

    /// Past spaces, line ends and comments.
    fn skip_blanks(&mut self) {
        while let Some(&b) = self.text.get(self.at) {
            match b {
                b' ' | b'\t' | b'\r' => self.at += 1,
                b'\n' => self.newline(),
                b';' => self.skip_comment(),
                _ => return,
            }
        }
    }

    fn skip_comment(&mut self) {
        while self.text.get(self.at).is_some_and(|b| *b != b'\n') {
            self.at += 1;
        }
    }

    fn newline(&mut self) {
        self.at += 1;
        self.line += 1;
        self.line_start = self.at;
    }

    /// Past one entry (its final line end included); returns its last line.
    fn skip_entry(&mut self) -> u32 {
        let mut depth = 0usize;
        let mut quoted = false;
        while let Some(&b) = self.text.get(self.at) {
            match b {
                b'\\' => self.at += 2,
                b'"' => {
                    quoted = !quoted;
                    self.at += 1;
                }
                b'\n' if quoted || depth > 0 => self.newline(),
                b'\n' => {
                    let last = self.line;
                    self.newline();
                    return last;
                }
                b';' if !quoted => self.skip_comment(),
                b'(' if !quoted => {
                    depth += 1;
                    self.at += 1;
                }
                b')' if !quoted => {
                    depth = depth.saturating_sub(1);
                    self.at += 1;
                }
                _ => self.at += 1,
            }
        }
        self.line
    }
}

fn is_directive(rest: &[u8]) -> bool {
    let word = rest
        .iter()
        .position(|b| b.is_ascii_whitespace())
        .map_or(rest, |end| &rest[..end]);
    word.eq_ignore_ascii_case(b"$TTL") || word.eq_ignore_ascii_case(b"$ORIGIN")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spans(text: &str) -> Vec<(u32, u32, u32)> {
        let mut e = Entries::new(text.as_bytes());
        std::iter::from_fn(|| e.next_entry())
            .map(|s| (s.line, s.col, s.last_line))
            .collect()
    }

    #[test]
    fn entries_skip_blanks_comments_and_directives() {
        let text = "$ORIGIN a.\n; comment\n\n@ IN SOA x y (\n 1 2 ; in parens\n 3 4 5 )\n  IN A 192.0.2.1\n$TTL 5\n$INCLUDE f\nt IN TXT \"a ; b\n\"\nlast IN A 192.0.2.2";
        assert_eq!(
            spans(text),
            [(4, 1, 6), (7, 3, 7), (9, 1, 9), (10, 1, 11), (12, 1, 12)]
        );
    }

    #[test]
    fn scanner_errors_are_split_into_line_col_and_message() {
        assert_eq!(split_error("3:7: bad thing"), (3, 7, "bad thing".into()));
        assert_eq!(split_error("odd"), (1, 1, "odd".into()));
    }
}
