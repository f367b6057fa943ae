//! The command line: `serve`, `check`, `explain`, `geoip` (SPEC §1). Flags, their
//! `MERIDIAN_*` environment variables and the `--config` file merge into [`Settings`];
//! a flag beats its variable, which beats the file, which beats the default.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Deserialize;

use crate::config::{self, LoadOptions};
use crate::explain;
use crate::geo::GeoDb;
use crate::model::rtype;

/// SPEC §1: where `serve` listens with no flags.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:5353";
pub const DEFAULT_ADMIN: &str = "127.0.0.1:8053";
pub const DEFAULT_ZONES: &str = "zones";
pub const DEFAULT_GEOIP: &str = "geoip/test-city.mmdb";
pub const DEFAULT_STATE: &str = "state";

#[derive(Parser, Debug)]
#[command(
    name = "meridian",
    version,
    about = "Authoritative DNS traffic manager: geo, latency, weighted and failover answers from health-checked pools"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve DNS (UDP and TCP), run the health probes and the admin HTTP API.
    Serve(ServeArgs),
    /// Load and validate the zones and databases as `serve` would; print every problem.
    Check(CommonArgs),
    /// Answer one question offline and print the decision path.
    Explain(ExplainArgs),
    /// Print what the GeoIP database says about an address.
    Geoip(GeoipArgs),
}

/// Settings every command reads.
#[derive(Args, Debug, Default, Clone)]
pub struct CommonArgs {
    /// Zone directory (one TOML file per zone) [default: zones]
    #[arg(long, env = "MERIDIAN_ZONES")]
    pub zones: Option<PathBuf>,
    /// GeoIP database (.mmdb, City or Country layout) [default: geoip/test-city.mmdb]
    #[arg(long, env = "MERIDIAN_GEOIP")]
    pub geoip: Option<PathBuf>,
    /// Optional ASN database (.mmdb)
    #[arg(long, env = "MERIDIAN_ASN")]
    pub asn: Option<PathBuf>,
    /// Settings file (TOML: listen, admin, admin_token_file, zones, geoip, asn, state, log_format, watch_zones)
    #[arg(long, env = "MERIDIAN_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format
    #[arg(long, env = "MERIDIAN_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// DNS address, UDP and TCP (repeatable) [default: 127.0.0.1:5353]
    #[arg(long, env = "MERIDIAN_LISTEN", value_delimiter = ',')]
    pub listen: Vec<SocketAddr>,
    /// Admin HTTP address, or `off` [default: 127.0.0.1:8053]
    #[arg(long, env = "MERIDIAN_ADMIN")]
    pub admin: Option<String>,
    /// File holding the bearer token that admin changes need
    #[arg(long, env = "MERIDIAN_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// State directory (overrides.json) [default: state]
    #[arg(long, env = "MERIDIAN_STATE")]
    pub state: Option<PathBuf>,
    /// Reload when a file under the zone directory changes (polled every second)
    #[arg(long, env = "MERIDIAN_WATCH_ZONES")]
    pub watch_zones: bool,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Args, Debug)]
pub struct ExplainArgs {
    /// The name asked
    pub name: String,
    /// The type asked [default: A]
    #[arg(name = "TYPE")]
    pub qtype: Option<String>,
    /// The client: an address, or ADDR/LEN to ask as an ECS client subnet
    #[arg(long)]
    pub client: String,
    /// Pretend this pool is down (repeatable; `pool` or `zone/pool`)
    #[arg(long)]
    pub down: Vec<String>,
    /// Machine-readable output
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Args, Debug)]
pub struct GeoipArgs {
    /// The address to look up
    pub ip: IpAddr,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
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
    pub fn resolve(common: &CommonArgs, serve: Option<&ServeArgs>) -> Result<Settings> {
        let file = match &common.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("{}: cannot read", path.display()))?;
                toml::from_str::<FileSettings>(&text)
                    .with_context(|| format!("{}: bad settings", path.display()))?
            }
            None => FileSettings::default(),
        };
        let listen = match serve.map(|s| s.listen.clone()).filter(|l| !l.is_empty()) {
            Some(l) => l,
            None => file
                .listen
                .unwrap_or_else(|| vec![DEFAULT_LISTEN.parse().expect("valid default")]),
        };
        let admin_text = serve
            .and_then(|s| s.admin.clone())
            .or(file.admin)
            .unwrap_or_else(|| DEFAULT_ADMIN.to_string());
        let admin = match admin_text.as_str() {
            "off" => None,
            a => Some(
                a.parse()
                    .with_context(|| format!("--admin {a}: expected ADDR:PORT or off"))?,
            ),
        };
        let geoip = match common.geoip.clone().or(file.geoip) {
            Some(p) => Some(p),
            None => Some(PathBuf::from(DEFAULT_GEOIP)).filter(|p| p.exists()),
        };
        Ok(Settings {
            listen,
            admin,
            admin_token_file: serve
                .and_then(|s| s.admin_token_file.clone())
                .or(file.admin_token_file),
            zones: common
                .zones
                .clone()
                .or(file.zones)
                .unwrap_or_else(|| DEFAULT_ZONES.into()),
            geoip,
            asn: common.asn.clone().or(file.asn),
            state: serve
                .and_then(|s| s.state.clone())
                .or(file.state)
                .unwrap_or_else(|| DEFAULT_STATE.into()),
            log_format: common.log_format.or(file.log_format).unwrap_or_default(),
            watch_zones: serve.is_some_and(|s| s.watch_zones) || file.watch_zones.unwrap_or(false),
        })
    }
}

/// Run a parsed command line.
pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => {
            let settings = Settings::resolve(&args.common, Some(&args))?;
            crate::app::serve(settings)
        }
        Command::Check(common) => check(&Settings::resolve(&common, None)?),
        Command::Explain(args) => explain_cmd(&args),
        Command::Geoip(args) => {
            let settings = Settings::resolve(&args.common, None)?;
            let db = open_geo(&settings)?.context("no GeoIP database: pass --geoip FILE")?;
            print!("{}", crate::geo::render_geoip(&db, args.ip));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `meridian check`: everything `serve` would load, every problem printed.
fn check(settings: &Settings) -> Result<ExitCode> {
    let loaded = config::load_dir(&LoadOptions {
        zones_dir: &settings.zones,
        previous: None,
    });
    let geo = open_geo(settings);
    match (loaded, geo) {
        (Ok(snap), Ok(_)) => {
            println!("{}", config::compile::summary(&snap));
            Ok(ExitCode::SUCCESS)
        }
        (loaded, geo) => {
            if let Err(diags) = loaded {
                print!("{diags}");
            }
            if let Err(e) = geo {
                println!("{e:#}");
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Open the configured GeoIP database, if any.
pub fn open_geo(settings: &Settings) -> Result<Option<GeoDb>> {
    let Some(path) = &settings.geoip else {
        return Ok(None);
    };
    let db = GeoDb::open(path, settings.asn.as_deref()).map_err(anyhow::Error::from)?;
    Ok(Some(db))
}

fn explain_cmd(args: &ExplainArgs) -> Result<ExitCode> {
    let settings = Settings::resolve(&args.common, None)?;
    let snap = match config::load_dir(&LoadOptions {
        zones_dir: &settings.zones,
        previous: None,
    }) {
        Ok(s) => s,
        Err(diags) => {
            print!("{diags}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let geo = open_geo(&settings)?.map(std::sync::Arc::new);
    let qtype = parse_qtype(args.qtype.as_deref().unwrap_or("A"))?;
    let (addr, source_prefix) = parse_client(&args.client)?;
    let world = explain::offline_world(snap, geo, &args.down)?;
    let e = explain::explain(
        &world,
        &args.name,
        qtype,
        addr,
        source_prefix,
        std::time::SystemTime::now(),
    );
    if args.json {
        println!("{}", serde_json::to_string_pretty(&e.to_json())?);
    } else {
        print!("{}", e.to_text());
    }
    Ok(ExitCode::SUCCESS)
}

pub fn parse_qtype(s: &str) -> Result<u16> {
    match rtype::from_name(s) {
        Some(t) => Ok(t),
        None => bail!("unknown record type {s:?}"),
    }
}

/// `ADDR` or `ADDR/LEN` (an ECS client subnet, address masked to LEN).
pub fn parse_client(s: &str) -> Result<(IpAddr, Option<u8>)> {
    match s.split_once('/') {
        None => Ok((
            s.parse()
                .with_context(|| format!("--client {s}: not an address"))?,
            None,
        )),
        Some(_) => {
            let net: ipnet::IpNet = s
                .parse()
                .with_context(|| format!("--client {s}: not ADDR/LEN"))?;
            Ok((net.trunc().addr(), Some(net.prefix_len())))
        }
    }
}
