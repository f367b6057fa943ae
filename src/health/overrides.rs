//! Operators' overrides of pools and of single endpoints (SPEC §5, §7
//! `PUT /v1/overrides/<zone>/<pool>[/<address>]`), kept in `<state_dir>/overrides.json` and
//! written atomically, so they survive restarts.
//!
//! Entries are keyed by zone origin and pool name as the operator wrote them (normalized to
//! lowercase, origin with its trailing dot), not by id: a reload renumbers pools, and an
//! entry for a pool that is gone stays in the file in case the pool comes back.
//! [`OverrideStore::resolve`] maps them onto a snapshot's ids for the health view.
//!
//! Each entry carries who set it, why, when, and an optional expiry (`until`); an expired
//! entry is ignored by `resolve`. With a cluster (SPEC §10) etcd holds the overrides and this
//! file is the local copy of the last known set ([`OverrideStore::replace_all`]).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::health::view::{EndpointOverrides, Override};
use crate::model::{PoolId, Snapshot};

/// The file under the state directory.
pub const FILE_NAME: &str = "overrides.json";

/// Format version written into the file, so a later layout can tell old files apart.
const FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum OverrideError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a valid overrides file: {source}", path.display())]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// (zone origin, pool name, endpoint address or `None` for the whole pool); names
/// lowercase, the origin ends with a dot.
pub type PoolRef = (String, String, Option<IpAddr>);

/// `zone pool` or `zone pool address`, as log lines name an override's target.
pub fn describe(zone: &str, pool: &str, address: Option<IpAddr>) -> String {
    match address {
        Some(a) => format!("{zone} {pool} {a}"),
        None => format!("{zone} {pool}"),
    }
}

/// One override: the state and who set it, why, when (RFC 3339), and until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverrideEntry {
    pub state: Override,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    /// RFC 3339; the override stops applying at that time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
}

impl OverrideEntry {
    /// A bare override (no who, why or expiry).
    pub fn new(state: Override) -> OverrideEntry {
        OverrideEntry {
            state,
            by: None,
            why: None,
            at: None,
            until: None,
        }
    }

    /// When it stops applying; `None` for never (an unparsable `until` also never expires,
    /// as the API refuses one, so it can only come from a hand-edited file).
    pub fn expires(&self) -> Option<SystemTime> {
        self.until.as_deref().and_then(crate::clock::parse_rfc3339)
    }

    /// Whether it applies at `now`.
    pub fn active(&self, now: SystemTime) -> bool {
        self.expires().is_none_or(|t| now < t)
    }
}

/// Overrides in memory, mirrored to `overrides.json` on every change.
#[derive(Debug, Clone)]
pub struct OverrideStore {
    path: PathBuf,
    pools: BTreeMap<PoolRef, OverrideEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct FileFormat {
    version: u32,
    pools: Vec<FileEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    zone: String,
    pool: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    address: Option<IpAddr>,
    state: Override,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    why: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    until: Option<String>,
}

impl OverrideStore {
    /// Read `<dir>/overrides.json`; a missing file is an empty store, an unreadable or
    /// corrupt one an error naming the file (never silently dropped overrides).
    pub fn load(dir: &Path) -> Result<OverrideStore, OverrideError> {
        let path = dir.join(FILE_NAME);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(OverrideStore {
                    path,
                    pools: BTreeMap::new(),
                });
            }
            Err(source) => return Err(OverrideError::Io { path, source }),
        };
        let file: FileFormat = match serde_json::from_slice(&text) {
            Ok(f) => f,
            Err(source) => return Err(OverrideError::Corrupt { path, source }),
        };
        let pools = file
            .pools
            .into_iter()
            .map(|e| {
                let key = normalize(&e.zone, &e.pool, e.address);
                let entry = OverrideEntry {
                    state: e.state,
                    by: e.by,
                    why: e.why,
                    at: e.at,
                    until: e.until,
                };
                (key, entry)
            })
            .collect();
        Ok(OverrideStore { path, pools })
    }

    /// Where the store lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Set the override of a pool (`address` `None`) or of one of its endpoints and persist
    /// it. On a write error nothing changes.
    pub fn set(
        &mut self,
        zone: &str,
        pool: &str,
        address: Option<IpAddr>,
        state: Override,
    ) -> Result<(), OverrideError> {
        self.set_entry(zone, pool, address, OverrideEntry::new(state))
    }

    /// [`OverrideStore::set`] with who, why, when and until.
    pub fn set_entry(
        &mut self,
        zone: &str,
        pool: &str,
        address: Option<IpAddr>,
        entry: OverrideEntry,
    ) -> Result<(), OverrideError> {
        let key = normalize(zone, pool, address);
        let before = self.pools.insert(key.clone(), entry);
        self.save()
            .inspect_err(|_| restore(&mut self.pools, key, before))
    }

    /// Make the store exactly `entries` (the cluster's set) and persist it when it changed.
    /// On a write error the memory copy is still replaced: it mirrors etcd, which is the
    /// truth, and the next change retries the write.
    pub fn replace_all(
        &mut self,
        entries: BTreeMap<PoolRef, OverrideEntry>,
    ) -> Result<bool, OverrideError> {
        if !self.replace_in_memory(entries) {
            return Ok(false);
        }
        self.persist().map(|()| true)
    }

    /// [`OverrideStore::replace_all`] without the write, so a caller can apply the new set
    /// first and [`OverrideStore::persist`] it after; whether anything changed.
    pub fn replace_in_memory(&mut self, entries: BTreeMap<PoolRef, OverrideEntry>) -> bool {
        let entries: BTreeMap<PoolRef, OverrideEntry> = entries
            .into_iter()
            .map(|((z, p, a), e)| (normalize(&z, &p, a), e))
            .collect();
        if entries == self.pools {
            return false;
        }
        self.pools = entries;
        true
    }

    /// Write the file now (see `save`).
    pub fn persist(&self) -> Result<(), OverrideError> {
        self.save()
    }

    /// Clear an override and persist it; returns what was there. On a write error nothing
    /// changes.
    pub fn clear(
        &mut self,
        zone: &str,
        pool: &str,
        address: Option<IpAddr>,
    ) -> Result<Option<Override>, OverrideError> {
        let key = normalize(zone, pool, address);
        let Some(before) = self.pools.remove(&key) else {
            return Ok(None);
        };
        match self.save() {
            Ok(()) => Ok(Some(before.state)),
            Err(e) => {
                self.pools.insert(key, before);
                Err(e)
            }
        }
    }

    pub fn get(&self, zone: &str, pool: &str, address: Option<IpAddr>) -> Option<Override> {
        self.pools
            .get(&normalize(zone, pool, address))
            .map(|e| e.state)
    }

    /// Every entry, pools of zones not loaded included, sorted by zone then pool.
    pub fn entries(&self) -> impl Iterator<Item = (&PoolRef, Override)> + '_ {
        self.pools.iter().map(|(k, v)| (k, v.state))
    }

    /// Every entry with who, why, when and until.
    pub fn full_entries(&self) -> &BTreeMap<PoolRef, OverrideEntry> {
        &self.pools
    }

    /// The earliest expiry still ahead of `now`, so the caller can re-resolve then.
    pub fn next_expiry(&self, now: SystemTime) -> Option<SystemTime> {
        self.pools
            .values()
            .filter_map(OverrideEntry::expires)
            .filter(|t| *t > now)
            .min()
    }

    /// The override of every pool of `snap` active now, indexed by `PoolId`.
    pub fn resolve(&self, snap: &Snapshot) -> Vec<Option<Override>> {
        let now = SystemTime::now();
        let mut out = vec![None; snap.pools.len()];
        for ((zone, pool, address), entry) in &self.pools {
            if address.is_none()
                && entry.active(now)
                && let Some(id) = find(snap, zone, pool)
            {
                out[id.0 as usize] = Some(entry.state);
            }
        }
        out
    }

    /// The endpoint overrides active now that name an endpoint of `snap`.
    pub fn resolve_endpoints(&self, snap: &Snapshot) -> EndpointOverrides {
        let now = SystemTime::now();
        let mut out = EndpointOverrides::default();
        for ((zone, pool, address), entry) in &self.pools {
            let (Some(addr), Some(id)) = (address, find(snap, zone, pool)) else {
                continue;
            };
            if !entry.active(now) {
                continue;
            }
            if let Some(i) = snap.pool(id).endpoints.iter().position(|e| e.addr == *addr) {
                out.insert((id, i), entry.state);
            }
        }
        out
    }

    /// Write the whole map to a temporary file in the same directory, fsync it, rename it
    /// over the old file and fsync the directory: a crash leaves the old or the new file,
    /// never half of one.
    fn save(&self) -> Result<(), OverrideError> {
        let io = |source| OverrideError::Io {
            path: self.path.clone(),
            source,
        };
        let file = FileFormat {
            version: FORMAT_VERSION,
            pools: self
                .pools
                .iter()
                .map(|((zone, pool, address), entry)| FileEntry {
                    zone: zone.clone(),
                    pool: pool.clone(),
                    address: *address,
                    state: entry.state,
                    by: entry.by.clone(),
                    why: entry.why.clone(),
                    at: entry.at.clone(),
                    until: entry.until.clone(),
                })
                .collect(),
        };
        let mut text = serde_json::to_vec_pretty(&file).expect("plain strings and enums serialize");
        text.push(b'\n');
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io)?;
        let tmp = dir.join(format!(".{FILE_NAME}.{}.tmp", std::process::id()));
        let written = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&text)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(e));
        }
        // The rename is durable once the directory is; some filesystems cannot fsync a
        // directory, and the data itself is already safe, so this one is best effort.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

fn restore(
    pools: &mut BTreeMap<PoolRef, OverrideEntry>,
    key: PoolRef,
    before: Option<OverrideEntry>,
) {
    match before {
        Some(state) => pools.insert(key, state),
        None => pools.remove(&key),
    };
}

/// Origins are case-insensitive and the trailing dot optional; pool names case-insensitive.
pub fn normalize(zone: &str, pool: &str, address: Option<IpAddr>) -> PoolRef {
    let zone = zone.trim_end_matches('.').to_ascii_lowercase() + ".";
    (
        zone,
        pool.to_ascii_lowercase(),
        address.map(|a| a.to_canonical()),
    )
}

fn find(snap: &Snapshot, zone: &str, pool: &str) -> Option<PoolId> {
    snap.find_pool(snap.find_zone_by_name(zone)?, pool)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("meridian-overrides-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[test]
    fn missing_file_is_empty_and_set_survives_a_reload() {
        let dir = tempdir("roundtrip");
        let mut store = OverrideStore::load(&dir).expect("missing file is fine");
        assert_eq!(store.entries().count(), 0);
        store
            .set("GSLB.example.test", "US-East", None, Override::Drain)
            .expect("set");
        store
            .set("gslb.example.test.", "eu-west", None, Override::Down)
            .expect("set");
        let again = OverrideStore::load(&dir).expect("reload");
        assert_eq!(
            again.get("gslb.example.test.", "us-east", None),
            Some(Override::Drain)
        );
        assert_eq!(
            again.get("gslb.example.test", "EU-WEST", None),
            Some(Override::Down)
        );
        let mut again = again;
        assert_eq!(
            again
                .clear("gslb.example.test", "us-east", None)
                .expect("clear"),
            Some(Override::Drain)
        );
        assert_eq!(
            again
                .clear("gslb.example.test", "us-east", None)
                .expect("clear"),
            None
        );
        let last = OverrideStore::load(&dir).expect("reload");
        assert_eq!(last.entries().count(), 1);
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(&dir)
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from(FILE_NAME)]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn corrupt_file_is_an_error_naming_it() {
        let dir = tempdir("corrupt");
        std::fs::write(dir.join(FILE_NAME), "{ not json").expect("write");
        let err = OverrideStore::load(&dir).expect_err("corrupt");
        assert!(err.to_string().contains("overrides.json"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
