//! Resolved settings of `serve`, `check`, `explain` and `geoip` (SPEC §1). The command line
//! fills [`Flags`]; flags and their `MERIDIAN_*` variables beat the `--config` file, which
//! beats the defaults. Lower layers (app, reload, admin) read [`Settings`] and never `cli`.

use std::net::SocketAddr;
use std::path::PathBuf;

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
