//! Resolved settings of `serve`, `check`, `explain` and `geoip` (SPEC §1). The command line
//! fills [`Flags`]; flags and their `MERIDIAN_*` variables beat the `--config` file, which
//! beats the defaults. Lower layers (app, reload, admin) read [`Settings`] and never `cli`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::config::values::parse_cidr;
use crate::dns::rrl;
use crate::geo::{GeoDb, GeoError};

/// SPEC §1: where `serve` listens with no flags.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:5353";
/// SPEC §1: the admin API with no flags.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:8053";
/// SPEC §1: zone files with no flags.
pub const DEFAULT_ZONES: &str = "zones";
/// SPEC §1: the GeoIP database shipped in the checkout.
pub const DEFAULT_GEOIP: &str = "geoip/test-city.mmdb";
/// Bound of `--udp-workers`: a thread and a socket each; far beyond any core count here.
pub const MAX_UDP_WORKERS: usize = 1024;
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
    pub rrl: RrlFlags,
    pub udp_workers: Option<usize>,
}

/// The `--rrl*` flags (SPEC §9).
#[derive(Debug, Default, Clone)]
pub struct RrlFlags {
    pub mode: Option<rrl::Mode>,
    pub rate: Option<u32>,
    pub slip: Option<u8>,
    pub ipv4_prefix: Option<u8>,
    pub ipv6_prefix: Option<u8>,
    /// Given: replaces the file's list (an empty value clears it).
    pub exempt: Option<Vec<IpNet>>,
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
    rrl: Option<rrl::Mode>,
    rrl_rate: Option<u32>,
    rrl_slip: Option<u8>,
    rrl_ipv4_prefix: Option<u8>,
    rrl_ipv6_prefix: Option<u8>,
    rrl_exempt: Option<Vec<String>>,
    udp_workers: Option<usize>,
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
    #[error("{0}")]
    Rrl(String),
    #[error("udp_workers {0}: expected 1 to {MAX_UDP_WORKERS}")]
    UdpWorkers(usize),
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
    /// Response rate limiting of UDP answers (SPEC §9).
    pub rrl: rrl::Config,
    /// UDP worker threads per listen address.
    pub udp_workers: usize,
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
        let rrl = resolve_rrl(&flags.rrl, &file)?;
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
        // One worker per CPU this process may run on (taskset and cgroups count).
        let udp_workers = flags
            .udp_workers
            .or(file.udp_workers)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        if !(1..=MAX_UDP_WORKERS).contains(&udp_workers) {
            return Err(SettingsError::UdpWorkers(udp_workers));
        }
        Ok(Settings {
            listen,
            udp_workers,
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
            rrl,
        })
    }

    /// Open the configured GeoIP database, if any.
    pub fn open_geo(&self) -> Result<Option<GeoDb>, GeoError> {
        let Some(path) = &self.geoip else {
            return Ok(None);
        };
        GeoDb::open(path, self.asn.as_deref()).map(Some)
    }

    /// Open the configured GeoIP database without compiling it, to show records.
    pub fn open_geo_reader(&self) -> Result<Option<GeoDb>, GeoError> {
        let Some(path) = &self.geoip else {
            return Ok(None);
        };
        GeoDb::open_reader(path, self.asn.as_deref()).map(Some)
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

/// The RRL settings: flags over the file over the defaults, checked.
fn resolve_rrl(flags: &RrlFlags, file: &FileSettings) -> Result<rrl::Config, SettingsError> {
    let d = rrl::Config::default();
    let exempt = match (&flags.exempt, &file.rrl_exempt) {
        (Some(list), _) => list.clone(),
        (None, Some(texts)) => texts
            .iter()
            .map(|t| parse_cidr(t).map_err(|e| SettingsError::Rrl(format!("rrl_exempt: {e}"))))
            .collect::<Result<_, _>>()?,
        (None, None) => d.exempt,
    };
    let config = rrl::Config {
        mode: flags.mode.or(file.rrl).unwrap_or(d.mode),
        rate: flags.rate.or(file.rrl_rate).unwrap_or(d.rate),
        slip: flags.slip.or(file.rrl_slip).unwrap_or(d.slip),
        ipv4_prefix: flags
            .ipv4_prefix
            .or(file.rrl_ipv4_prefix)
            .unwrap_or(d.ipv4_prefix),
        ipv6_prefix: flags
            .ipv6_prefix
            .or(file.rrl_ipv6_prefix)
            .unwrap_or(d.ipv6_prefix),
        exempt,
    };
    config.validate().map_err(SettingsError::Rrl)?;
    Ok(config)
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

    fn with_file(text: &str, flags: Flags) -> Result<Settings, SettingsError> {
        let path = std::env::temp_dir().join(format!(
            "meridian-settings-{}-{}.toml",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::write(&path, text).expect("write settings");
        let r = Settings::resolve(Flags {
            config: Some(path.clone()),
            ..flags
        });
        let _ = std::fs::remove_file(path);
        r
    }

    #[test]
    fn rate_limiting_is_on_by_default() {
        let s = Settings::resolve(Flags::default()).expect("defaults resolve");
        assert_eq!(s.rrl, rrl::Config::default());
        assert_eq!(s.rrl.mode, rrl::Mode::On);
        assert_eq!((s.rrl.rate, s.rrl.slip), (20, 2));
        assert_eq!((s.rrl.ipv4_prefix, s.rrl.ipv6_prefix), (24, 56));
        assert!(s.rrl.exempt.is_empty());
    }

    #[test]
    fn rrl_keys_of_the_file_apply_and_flags_beat_them() {
        let file = "rrl = \"log-only\"\nrrl_rate = 50\nrrl_slip = 0\nrrl_ipv4_prefix = 32\n\
                    rrl_ipv6_prefix = 64\nrrl_exempt = [\"127.0.0.1\", \"10.0.0.0/8\"]\n";
        let s = with_file(file, Flags::default()).expect("file resolves");
        let expect = rrl::Config {
            mode: rrl::Mode::LogOnly,
            rate: 50,
            slip: 0,
            ipv4_prefix: 32,
            ipv6_prefix: 64,
            exempt: vec![
                "127.0.0.1/32".parse().expect("net"),
                "10.0.0.0/8".parse().expect("net"),
            ],
        };
        assert_eq!(s.rrl, expect);
        let flags = Flags {
            rrl: RrlFlags {
                mode: Some(rrl::Mode::Off),
                rate: Some(7),
                exempt: Some(Vec::new()),
                ..RrlFlags::default()
            },
            ..Flags::default()
        };
        let s = with_file(file, flags).expect("flags resolve");
        assert_eq!((s.rrl.mode, s.rrl.rate, s.rrl.slip), (rrl::Mode::Off, 7, 0));
        assert!(s.rrl.exempt.is_empty());
    }

    #[test]
    fn bad_rrl_settings_are_errors() {
        for (text, needle) in [
            ("rrl_rate = 0\n", "rrl rate 0"),
            ("rrl_slip = 11\n", "rrl slip 11"),
            ("rrl_ipv4_prefix = 33\n", "ipv4 prefix 33"),
            ("rrl_exempt = [\"10.0.0.1/8\"]\n", "host bits"),
            ("rrl = \"sometimes\"\n", "bad settings"),
        ] {
            let e = with_file(text, Flags::default())
                .expect_err(text)
                .to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn udp_workers_default_to_the_cpus_and_are_bounded() {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let s = Settings::resolve(Flags::default()).expect("defaults resolve");
        assert_eq!(s.udp_workers, cpus);
        let two = Flags {
            udp_workers: Some(2),
            ..Flags::default()
        };
        assert_eq!(Settings::resolve(two).expect("2 workers").udp_workers, 2);
        for bad in [0, MAX_UDP_WORKERS + 1] {
            let flags = Flags {
                udp_workers: Some(bad),
                ..Flags::default()
            };
            assert!(matches!(
                Settings::resolve(flags),
                Err(SettingsError::UdpWorkers(n)) if n == bad
            ));
        }
    }
}
