//! Resolved settings of `serve`, `check`, `explain` and `geoip` (SPEC §1). The command line
//! fills [`Flags`]; flags and their `MERIDIAN_*` variables beat the `--config` file, which
//! beats the defaults. Lower layers (app, reload, admin) read [`Settings`] and never `cli`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::geo::{GeoDb, GeoError};

/// SPEC §1: where `serve` listens with no flags.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:5353";
/// SPEC §1: the admin API with no flags.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:8053";
/// SPEC §1: zone files with no flags.
pub const DEFAULT_ZONES: &str = "zones";
/// SPEC §1: the GeoIP database shipped in the checkout.
pub const DEFAULT_GEOIP: &str = "geoip/test-city.mmdb";
/// SPEC §1: overrides and other state with no flags.
pub const DEFAULT_STATE: &str = "state";
/// SPEC §10: where the cluster's keys live in etcd with no `--cluster-prefix`.
pub const DEFAULT_CLUSTER_PREFIX: &str = "/meridian/";
/// notes/etcd.md §4: a 6 s lease; a partitioned instance's verdicts leave the quorum after one
/// TTL, and an instance declares itself disconnected after two.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(6);
/// etcd's minimum lease TTL is 1.5 × its election timeout (1 s by default), rounded up.
pub const MIN_LEASE_TTL: Duration = Duration::from_secs(2);
/// A bound on `--cluster-lease-ttl`: a day-long lease would keep a dead instance's verdicts.
pub const MAX_LEASE_TTL: Duration = Duration::from_secs(300);

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// What the command line (flags and their variables) said; `None` where it said nothing.
#[derive(Debug, Default, Clone)]
pub struct Flags {
    pub config: Option<PathBuf>,
    pub listen: Vec<SocketAddr>,
    pub admin: Option<String>,
    pub admin_token_file: Option<PathBuf>,
    pub zones: Option<PathBuf>,
    pub geoip: Option<PathBuf>,
    pub asn: Option<PathBuf>,
    pub state: Option<PathBuf>,
    pub log_format: Option<LogFormat>,
    pub watch_zones: bool,
    pub cluster: Option<String>,
    pub instance: Option<String>,
    pub cluster_prefix: Option<String>,
    pub cluster_lease_ttl: Option<u64>,
    pub probe_source: Option<IpAddr>,
}

/// The `--config` file: the same settings as the flags.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    listen: Option<Vec<SocketAddr>>,
    admin: Option<String>,
    admin_token_file: Option<PathBuf>,
    zones: Option<PathBuf>,
    geoip: Option<PathBuf>,
    asn: Option<PathBuf>,
    state: Option<PathBuf>,
    log_format: Option<LogFormat>,
    watch_zones: Option<bool>,
    cluster: Option<String>,
    instance: Option<String>,
    cluster_prefix: Option<String>,
    cluster_lease_ttl: Option<u64>,
    probe_source: Option<IpAddr>,
}

/// Why the settings cannot be resolved.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: bad settings: {source}")]
    Parse {
        path: String,
        source: Box<toml::de::Error>,
    },
    #[error("--admin {0}: expected ADDR:PORT or off")]
    Admin(String),
    #[error("--cluster {0}: expected etcd client URLs like http://127.0.0.1:2379, comma separated")]
    Cluster(String),
    #[error("--instance {0:?}: expected 1 to 63 letters, digits, '-', '_' or '.'")]
    Instance(String),
    #[error("--cluster-prefix {0:?}: expected a path starting and ending with '/'")]
    Prefix(String),
    #[error("--cluster-lease-ttl {0}: expected {min} to {max} seconds", min = MIN_LEASE_TTL.as_secs(), max = MAX_LEASE_TTL.as_secs())]
    LeaseTtl(u64),
}

/// Resolved settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: Vec<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub admin_token_file: Option<PathBuf>,
    pub zones: PathBuf,
    /// `None` when the default database is absent (every client unlocated).
    pub geoip: Option<PathBuf>,
    pub asn: Option<PathBuf>,
    pub state: PathBuf,
    pub log_format: LogFormat,
    /// Reload when the zone directory changes.
    pub watch_zones: bool,
    /// This instance's name: NSID answers, the cluster's instance key.
    pub instance: String,
    /// `--cluster`: share verdicts and overrides through etcd.
    pub cluster: Option<ClusterSettings>,
    /// The local address every health probe binds to.
    pub probe_source: Option<IpAddr>,
}

/// `--cluster` and its companions (SPEC §10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// etcd v3 client URLs.
    pub endpoints: Vec<String>,
    /// Key prefix, starting and ending with `/`.
    pub prefix: String,
    /// TTL of the instance lease.
    pub lease_ttl: Duration,
}

impl Settings {
    /// Merge the flags over the `--config` file over the defaults.
    pub fn resolve(flags: Flags) -> Result<Settings, SettingsError> {
        let file = match &flags.config {
            Some(path) => read_file(path)?,
            None => FileSettings::default(),
        };
        let listen = match Some(flags.listen).filter(|l| !l.is_empty()) {
            Some(l) => l,
            None => file
                .listen
                .unwrap_or_else(|| vec![DEFAULT_LISTEN.parse().expect("valid default")]),
        };
        let admin_text = flags
            .admin
            .or(file.admin)
            .unwrap_or_else(|| DEFAULT_ADMIN.to_string());
        let admin = match admin_text.as_str() {
            "off" => None,
            a => Some(a.parse().map_err(|_| SettingsError::Admin(a.to_string()))?),
        };
        let geoip = match flags.geoip.or(file.geoip) {
            Some(p) => Some(p),
            None => Some(PathBuf::from(DEFAULT_GEOIP)).filter(|p| p.exists()),
        };
        Ok(Settings {
            listen,
            admin,
            admin_token_file: flags.admin_token_file.or(file.admin_token_file),
            zones: flags
                .zones
                .or(file.zones)
                .unwrap_or_else(|| DEFAULT_ZONES.into()),
            geoip,
            asn: flags.asn.or(file.asn),
            state: flags
                .state
                .or(file.state)
                .unwrap_or_else(|| DEFAULT_STATE.into()),
            log_format: flags.log_format.or(file.log_format).unwrap_or_default(),
            watch_zones: flags.watch_zones || file.watch_zones.unwrap_or(false),
            instance: instance_name(flags.instance.or(file.instance))?,
            cluster: cluster_settings(
                flags.cluster.or(file.cluster),
                flags.cluster_prefix.or(file.cluster_prefix),
                flags.cluster_lease_ttl.or(file.cluster_lease_ttl),
            )?,
            probe_source: flags.probe_source.or(file.probe_source),
        })
    }

    /// Open the configured GeoIP database, if any.
    pub fn open_geo(&self) -> Result<Option<GeoDb>, GeoError> {
        let Some(path) = &self.geoip else {
            return Ok(None);
        };
        GeoDb::open(path, self.asn.as_deref()).map(Some)
    }
}

/// `--instance`, else the host name (cut to a valid name), else `meridian`.
fn instance_name(given: Option<String>) -> Result<String, SettingsError> {
    match given {
        Some(name) if valid_instance(&name) => Ok(name),
        Some(name) => Err(SettingsError::Instance(name)),
        None => {
            let host = nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_default();
            let name: String = host
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                .take(MAX_INSTANCE_LEN)
                .collect();
            Ok(if name.is_empty() {
                "meridian".into()
            } else {
                name
            })
        }
    }
}

/// An instance name is one etcd key segment and one NSID payload: short, no `/`.
const MAX_INSTANCE_LEN: usize = 63;

fn valid_instance(name: &str) -> bool {
    (1..=MAX_INSTANCE_LEN).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn cluster_settings(
    urls: Option<String>,
    prefix: Option<String>,
    ttl: Option<u64>,
) -> Result<Option<ClusterSettings>, SettingsError> {
    let Some(urls) = urls.filter(|u| !u.trim().is_empty()) else {
        return Ok(None);
    };
    let endpoints: Vec<String> = urls.split(',').map(|u| u.trim().to_string()).collect();
    let valid = |u: &String| {
        let rest = u
            .strip_prefix("http://")
            .or_else(|| u.strip_prefix("https://"));
        rest.is_some_and(|r| !r.is_empty() && !r.contains('/'))
    };
    if !endpoints.iter().all(valid) {
        return Err(SettingsError::Cluster(urls));
    }
    let prefix = prefix.unwrap_or_else(|| DEFAULT_CLUSTER_PREFIX.to_string());
    if !prefix.starts_with('/') || !prefix.ends_with('/') {
        return Err(SettingsError::Prefix(prefix));
    }
    let lease_ttl = match ttl {
        None => DEFAULT_LEASE_TTL,
        Some(s) if (MIN_LEASE_TTL.as_secs()..=MAX_LEASE_TTL.as_secs()).contains(&s) => {
            Duration::from_secs(s)
        }
        Some(s) => return Err(SettingsError::LeaseTtl(s)),
    };
    Ok(Some(ClusterSettings {
        endpoints,
        prefix,
        lease_ttl,
    }))
}

fn read_file(path: &std::path::Path) -> Result<FileSettings, SettingsError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
        path: shown.clone(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| SettingsError::Parse {
        path: shown,
        source: Box::new(source),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_settings_are_checked() {
        assert_eq!(cluster_settings(None, None, None).expect("none"), None);
        let c = cluster_settings(
            Some("http://127.0.0.1:2379, http://127.0.0.1:22379".into()),
            None,
            None,
        )
        .expect("valid")
        .expect("some");
        assert_eq!(c.endpoints.len(), 2);
        assert_eq!(c.prefix, DEFAULT_CLUSTER_PREFIX);
        assert_eq!(c.lease_ttl, DEFAULT_LEASE_TTL);
        assert!(cluster_settings(Some("127.0.0.1:2379".into()), None, None).is_err());
        assert!(cluster_settings(Some("http://a:1".into()), Some("x/".into()), None).is_err());
        assert!(cluster_settings(Some("http://a:1".into()), None, Some(1)).is_err());
        assert!(cluster_settings(Some("http://a:1".into()), None, Some(301)).is_err());
        assert!(cluster_settings(Some("http://a:1".into()), None, Some(2)).is_ok());
    }

    #[test]
    fn instance_names_are_one_key_segment() {
        assert_eq!(instance_name(Some("ns1.eu".into())).expect("ok"), "ns1.eu");
        assert!(instance_name(Some("a/b".into())).is_err());
        assert!(instance_name(Some(String::new())).is_err());
        assert!(instance_name(Some("x".repeat(64))).is_err());
        assert!(valid_instance(&instance_name(None).expect("host name")));
    }
}
