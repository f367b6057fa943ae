//! `GeoDb`: MaxMind DB (`.mmdb`) files of every layout Meridian knows, read through one
//! tolerant, zero-copy record type.
//!
//! Layouts (see /work/shared/notes/geoip.md §3.3):
//! - GeoIP2/GeoLite2 City and Country, DB-IP, our own test DB: `country.iso_code`,
//!   `registered_country.iso_code`, `continent.code`, `location.latitude/longitude`,
//!   `subdivisions[0].iso_code`;
//! - IPinfo Lite (flat): `country_code`, `continent_code`, `asn` as `"AS15169"`; its
//!   `country`/`continent` are names and are ignored;
//! - legacy IPinfo: `country`/`continent` as code strings;
//! - ip-location-db (flat): `country_code`, top-level `latitude`/`longitude` as float32.
//!
//! A lookup decodes the record into [`RawRecord`], whose fields borrow from the database
//! buffer and whose visitors skip what they do not need, so the DNS path allocates nothing.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use ipnet::IpNet;
use maxminddb::Reader;

use super::countries;
use super::record::{AsnRecord, RawRecord};
use super::trie::{GeoTrie, TrieStats};
use super::{Located, Location, Subdivision};

/// Opening a database failed; lookups themselves never fail (a bad record is "no match").
#[derive(Debug, thiserror::Error)]
pub enum GeoError {
    #[error("{path}: {message}")]
    Open { path: String, message: String },
}

/// A GeoIP database (City or Country layout) plus an optional ASN database.
pub struct GeoDb {
    city: Reader<Bytes>,
    /// The City/Country file the reader reads (shared, not copied): the trie is compiled
    /// from its search tree.
    city_bytes: Bytes,
    asn: Option<Reader<Bytes>>,
    /// The City/Country database compiled for the DNS path (trie.rs); `None` for a
    /// database opened only to show records (`meridian geoip`).
    trie: Option<Compiled>,
    /// Unique per opened database, so caches can tell a reopened file from the old one.
    id: u64,
    /// The files read and their stamps when read (`None` for bytes given in memory): a
    /// reload keeps this database, and skips compiling it again, while both are unchanged.
    files: Option<Files>,
}

/// The City/Country file and the optional ASN file a database was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Files {
    city: (PathBuf, Stamp),
    asn: Option<(PathBuf, Stamp)>,
}

/// What tells a replaced or rewritten file: device, inode, size, modification time.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    modified: Option<std::time::SystemTime>,
}

fn stamp(path: &Path) -> Result<Stamp, GeoError> {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(path).map_err(|e| open_error(path, &e.to_string()))?;
    Ok(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        modified: m.modified().ok(),
    })
}

struct Compiled {
    trie: GeoTrie,
    stats: TrieStats,
    took: std::time::Duration,
}

/// Source of [`GeoDb::id`].
static NEXT_DB_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn next_db_id() -> u64 {
    NEXT_DB_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Where a [`Location`]'s coordinates came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoordsSource {
    /// The database record's own `location` (or flat `latitude`/`longitude`).
    Record,
    /// The country's capital, from `geoip/countries.csv`.
    CountryTable,
    /// The continent's representative point.
    ContinentTable,
}

/// Everything the database says about one address, for `meridian geoip` and logs.
#[derive(Debug, Clone, PartialEq)]
pub struct GeoReport {
    /// The address looked up (`::ffff:a.b.c.d` already turned into `a.b.c.d`).
    pub ip: IpAddr,
    /// The database network that holds the address.
    pub network: IpNet,
    pub location: Location,
    pub coords_source: Option<CoordsSource>,
    /// True when the continent came from the countries table, not the record.
    pub continent_from_table: bool,
}

impl GeoDb {
    /// Unique per opened database (never reused in a process).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Load a City/Country database and optionally an ASN database into memory, and compile
    /// the City/Country one for lookups (a few seconds for a full GeoLite2-City: callers run
    /// this at start or on the reload thread, never on a DNS worker).
    pub fn open(city: &Path, asn: Option<&Path>) -> Result<GeoDb, GeoError> {
        Self::open_reader(city, asn)?
            .compiled()
            .map_err(|e| open_error(city, &e.to_string()))
    }

    /// Like [`GeoDb::open`] without compiling: for showing records, not for answering.
    pub fn open_reader(city: &Path, asn: Option<&Path>) -> Result<GeoDb, GeoError> {
        let read = |path: &Path| std::fs::read(path).map_err(|e| open_error(path, &e.to_string()));
        // Stamped before reading: a write after the stamp makes the next reload read again.
        let files = Files {
            city: (city.to_path_buf(), stamp(city)?),
            asn: asn
                .map(|p| stamp(p).map(|st| (p.to_path_buf(), st)))
                .transpose()?,
        };
        let asn = asn.map(|p| read(p).map(|b| (p, b))).transpose()?;
        let mut db = Self::parse(read(city)?, asn)
            .map_err(|(which, message)| open_error(which.unwrap_or(city), &message))?;
        db.files = Some(files);
        Ok(db)
    }

    /// True when this database was read from `city` (and `asn`) and neither file has been
    /// replaced or rewritten since: a reload then keeps it instead of compiling it again.
    pub fn unchanged(&self, city: &Path, asn: Option<&Path>) -> bool {
        let Some(files) = &self.files else {
            return false;
        };
        let same = |(path, st): &(PathBuf, Stamp), now: &Path| {
            path == now && stamp(now).is_ok_and(|n| &n == st)
        };
        same(&files.city, city)
            && match (&files.asn, asn) {
                (None, None) => true,
                (Some(f), Some(now)) => same(f, now),
                _ => false,
            }
    }

    /// Like [`GeoDb::open`], from bytes already in memory (tests, embedded databases).
    pub fn from_bytes(city: Vec<u8>, asn: Option<Vec<u8>>) -> Result<GeoDb, GeoError> {
        let named = |which: Option<&Path>| match which {
            None => "<city bytes>",
            Some(_) => "<asn bytes>",
        };
        Self::parse(city, asn.map(|b| (Path::new("asn"), b)))
            .map_err(|(which, message)| GeoError::Open {
                path: named(which).into(),
                message,
            })?
            .compiled()
            .map_err(|e| GeoError::Open {
                path: "<city bytes>".into(),
                message: e.to_string(),
            })
    }

    /// Readers over the files' bytes; an error names the ASN file (`Some`) or the City one.
    #[allow(clippy::type_complexity)]
    fn parse(
        city: Vec<u8>,
        asn: Option<(&Path, Vec<u8>)>,
    ) -> Result<GeoDb, (Option<&Path>, String)> {
        let city_bytes = Bytes::from(city);
        let city = Reader::from_source(city_bytes.clone()).map_err(|e| (None, e.to_string()))?;
        let asn = asn
            .map(|(p, b)| Reader::from_source(Bytes::from(b)).map_err(|e| (Some(p), e.to_string())))
            .transpose()?;
        Ok(GeoDb {
            id: next_db_id(),
            city,
            city_bytes,
            asn,
            trie: None,
            files: None,
        })
    }

    /// The same database with its trie built.
    fn compiled(mut self) -> Result<GeoDb, super::trie::TrieError> {
        let started = std::time::Instant::now();
        let (trie, stats) = GeoTrie::build(&self.city, &self.city_bytes, |raw| location_of(raw).0)?;
        self.trie = Some(Compiled {
            trie,
            stats,
            took: started.elapsed(),
        });
        Ok(self)
    }

    /// The compiled trie, if compiled.
    pub(super) fn compiled_trie(&self) -> Option<&GeoTrie> {
        self.trie.as_ref().map(|c| &c.trie)
    }

    /// Figures of the compiled trie and how long compiling took, if compiled.
    pub fn trie_stats(&self) -> Option<(TrieStats, std::time::Duration)> {
        self.trie.as_ref().map(|c| (c.stats, c.took))
    }

    /// What the database's own record says about `ip` (its network, the ASN database's
    /// number), for explanations; the DNS path uses [`super::Locate`], which may widen the
    /// prefix to the whole region of the same location and leaves `asn` out.
    pub fn locate_record(&self, ip: IpAddr) -> Located {
        let (report, network) = self.report(ip);
        Located {
            location: report.map(|r| r.location),
            prefix_len: network.prefix_len(),
        }
    }

    /// Everything known about `ip`, or `None` when the database has no record for it.
    pub fn describe(&self, ip: IpAddr) -> Option<GeoReport> {
        self.report(ip).0
    }

    /// The record's report (`None` on a miss) and the database network that holds `ip`:
    /// for a miss, the empty region around it, as the tree walk ends there too.
    pub fn report(&self, ip: IpAddr) -> (Option<GeoReport>, IpNet) {
        let ip = ip.to_canonical();
        let Ok(result) = self.city.lookup(ip) else {
            // An IPv6 address in an IPv4-only database: the whole family is empty.
            return (
                None,
                IpNet::new(ip, 0).expect("0 is a valid prefix").trunc(),
            );
        };
        let network = network_of(&result, ip);
        let Ok(Some(raw)) = result.decode::<RawRecord<'_>>() else {
            return (None, network);
        };
        let mut report = GeoReport {
            ip,
            network,
            location: Location {
                prefix_len: network.prefix_len(),
                ..Location::default()
            },
            coords_source: None,
            continent_from_table: false,
        };
        fill(&raw, &mut report);
        if report.location.asn.is_none() {
            report.location.asn = self.asn_of(ip);
        }
        (Some(report), network)
    }

    /// One line for the server log at start: type, build date, IP version, size.
    pub fn metadata_summary(&self) -> String {
        let mut line = summary(self.city.metadata());
        if let Some(c) = &self.trie {
            let s = c.stats;
            line.push_str(&format!(
                "; compiled in {} ms: {} tree nodes, {} records, {} locations, {} trie lines, {:.1} MiB",
                c.took.as_millis(),
                s.tree_nodes,
                s.records,
                s.classes,
                s.lines,
                s.bytes as f64 / (1024.0 * 1024.0)
            ));
        }
        if let Some(asn) = &self.asn {
            line.push_str("; asn: ");
            line.push_str(&summary(asn.metadata()));
        }
        line
    }

    /// `database_type` and build time of the City/Country database, for `meridian geoip`.
    pub fn database_line(&self) -> String {
        let meta = self.city.metadata();
        format!(
            "{}, built {}",
            meta.database_type,
            crate::clock::rfc3339_epoch(meta.build_epoch)
        )
    }

    /// The ASN database's (or nothing's) autonomous system number for `ip`.
    fn asn_of(&self, ip: IpAddr) -> Option<u32> {
        let result = self.asn.as_ref()?.lookup(ip).ok()?;
        let raw: AsnRecord = result.decode().ok()??;
        raw.number()
    }
}

impl super::Locate for GeoDb {
    /// The hot path: a walk of the compiled trie, no decode, no allocation (the reader's
    /// record when not compiled).
    fn locate(&self, ip: IpAddr) -> Located {
        match &self.trie {
            Some(c) => c.trie.locate(ip),
            None => self.locate_record(ip),
        }
    }
}

fn open_error(path: &Path, message: &str) -> GeoError {
    GeoError::Open {
        path: path.display().to_string(),
        message: message.to_owned(),
    }
}

/// The database network holding `ip`, in `ip`'s own family: an IPv4 address found in the
/// IPv4 subtree of an IPv6 database gets its IPv4 prefix (203.0.113.0/25, not /121).
fn network_of(result: &maxminddb::LookupResult<'_, Bytes>, ip: IpAddr) -> IpNet {
    let net = result.network().ok();
    match (net, ip) {
        (Some(n), IpAddr::V4(_)) if n.is_ipv4() => IpNet::new(n.network(), n.prefix()),
        // Matched above the IPv4 subtree: the record covers all of IPv4.
        (_, IpAddr::V4(v4)) => IpNet::new(IpAddr::V4(v4), 0),
        (Some(n), IpAddr::V6(_)) => IpNet::new(n.network(), n.prefix()),
        (None, IpAddr::V6(v6)) => IpNet::new(IpAddr::V6(v6), 128),
    }
    .map(|n| n.trunc())
    .expect("prefix comes from a tree walk of the address's own family")
}

/// Turn a raw record into the report's location, then fill gaps from the tables:
/// continent from the country, coordinates from the country, else from the continent.
fn fill(raw: &RawRecord<'_>, report: &mut GeoReport) {
    let prefix_len = report.location.prefix_len;
    let (location, coords_source, continent_from_table) = location_of(raw);
    report.location = Location {
        prefix_len,
        ..location
    };
    report.coords_source = coords_source;
    report.continent_from_table = continent_from_table;
}

/// A record's location (prefix 0), where its coordinates came from, and whether the
/// continent came from the countries table. The reader and the trie both decode with it.
fn location_of(raw: &RawRecord<'_>) -> (Location, Option<CoordsSource>, bool) {
    let mut loc = Location {
        country: raw.country(),
        ..Location::default()
    };
    loc.subdivision = loc
        .country
        .and(raw.subdivisions.0)
        .and_then(Subdivision::new);
    loc.continent = raw.continent();
    loc.asn = raw.asn();
    let table = loc.country.and_then(countries::country);
    let mut continent_from_table = false;
    if loc.continent.is_none() {
        loc.continent = table.map(|c| c.continent);
        continent_from_table = loc.continent.is_some();
    }
    let (coords, source) = match (raw.coords(), table, loc.continent) {
        (Some(c), _, _) => (Some(c), Some(CoordsSource::Record)),
        (None, Some(t), _) => (Some(t.coords), Some(CoordsSource::CountryTable)),
        (None, None, Some(cont)) => (
            countries::continent_coords(cont),
            Some(CoordsSource::ContinentTable),
        ),
        (None, None, None) => (None, None),
    };
    loc.coords = coords;
    (loc, coords.and(source), continent_from_table)
}

fn summary(meta: &maxminddb::Metadata) -> String {
    format!(
        "{} built {} (epoch {}), IPv{}, {} nodes, record size {}",
        meta.database_type,
        crate::clock::rfc3339_epoch(meta.build_epoch),
        meta.build_epoch,
        meta.ip_version,
        meta.node_count,
        meta.record_size
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geo::Locate;

    const CSV: &str = "192.0.2.0/25,EU,GB,ENG,51.5,-0.12,20,\n\
                       192.0.2.128/26,,DE,,,,,\n\
                       2001:db8::/33,OC,,,,,,\n";

    fn db() -> GeoDb {
        GeoDb::from_bytes(gen_mmdb::build(CSV).expect("csv"), None).expect("reader")
    }

    #[test]
    fn ipv4_prefix_is_counted_in_ipv4_bits() {
        let db = db();
        let r = db
            .describe("192.0.2.1".parse().expect("ip"))
            .expect("found");
        assert_eq!(
            (r.network.to_string(), r.location.prefix_len),
            ("192.0.2.0/25".into(), 25)
        );
        let r = db
            .describe("::ffff:192.0.2.130".parse().expect("ip"))
            .expect("found");
        assert_eq!(r.network.to_string(), "192.0.2.128/26");
        let r = db
            .describe("2001:db8::1".parse().expect("ip"))
            .expect("found");
        assert_eq!(r.network.to_string(), "2001:db8::/33");
    }

    #[test]
    fn gaps_are_filled_from_the_tables() {
        let db = db();
        let de = db
            .describe("192.0.2.130".parse().expect("ip"))
            .expect("found");
        assert_eq!(de.location.continent, Some(*b"EU"));
        assert!(de.continent_from_table);
        assert_eq!(de.coords_source, Some(CoordsSource::CountryTable));
        let oc = db
            .locate("2001:db8::1".parse().expect("ip"))
            .location
            .expect("found");
        assert_eq!(oc.coords, countries::continent_coords(*b"OC"));
        // A miss still says how far the empty region around the address reaches.
        let miss = db.locate("192.0.2.200".parse().expect("ip"));
        assert_eq!((miss.location, miss.prefix_len), (None, 26));
    }

    #[test]
    fn a_database_is_unchanged_until_its_file_is_rewritten() {
        let dir = std::env::temp_dir().join(format!("meridian-geo-stamp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("city.mmdb");
        std::fs::write(&path, gen_mmdb::build(CSV).expect("csv")).expect("write");
        let opened = GeoDb::open(&path, None).expect("opens");
        assert!(opened.unchanged(&path, None));
        assert!(!opened.unchanged(&dir.join("other.mmdb"), None));
        assert!(!opened.unchanged(&path, Some(&path)));
        // Bytes given in memory have no file to compare.
        assert!(!db().unchanged(&path, None));
        // Another database written in place of the file (other size).
        let bigger = format!("{CSV}198.51.100.0/24,NA,US,,,,,\n");
        std::fs::write(&path, gen_mmdb::build(&bigger).expect("csv")).expect("rewrite");
        assert!(!opened.unchanged(&path, None));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn summary_names_type_epoch_and_size() {
        let s = db().metadata_summary();
        assert!(
            s.starts_with(
                "Meridian-Test-City built 2026-01-01T00:00:00Z (epoch 1767225600), IPv6, "
            ),
            "{s}"
        );
        assert!(s.contains(" nodes, record size "), "{s}");
    }
}
