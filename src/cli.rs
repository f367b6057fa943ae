//! The command line: `serve`, `check`, `explain`, `geoip` (SPEC §1). Flags and their
//! `MERIDIAN_*` environment variables become [`Flags`], which `settings` merges with the
//! `--config` file and the defaults.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::config::values::parse_cidr;
use crate::config::{self, LoadOptions};
use crate::dns::rrl;
use crate::explain;
use crate::explain::{parse_client, parse_qtype};
use crate::health::OverrideStore;
use crate::settings::{Flags, LogFormat, RrlFlags, Settings};

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
    /// DNSSEC keys: create a zone's key, print its DS and trust anchors.
    #[command(subcommand)]
    Dnssec(DnssecCommand),
}

#[derive(Subcommand, Debug)]
pub enum DnssecCommand {
    /// Create the zone's ECDSA P-256 key (CSK) under STATE/keys/ (refuses if it has one).
    Keygen(DnssecArgs),
    /// Print the zone's DS, DNSKEY and trust-anchor lines for delv and unbound.
    Ds(DnssecArgs),
}

#[derive(Args, Debug)]
pub struct DnssecArgs {
    /// The zone (its origin)
    pub zone: String,
    #[command(flatten)]
    pub common: CommonArgs,
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
    /// Settings file (TOML: listen, admin, admin_token_file, zones, geoip, asn, state, log_format, watch_zones, cluster, instance, cluster_prefix, cluster_lease_ttl, probe_source, rrl, rrl_rate, rrl_slip, rrl_ipv4_prefix, rrl_ipv6_prefix, rrl_exempt, udp_workers)
    #[arg(long, env = "MERIDIAN_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format
    #[arg(long, env = "MERIDIAN_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// State directory (overrides.json, keys/) [default: state]
    #[arg(long, env = "MERIDIAN_STATE")]
    pub state: Option<PathBuf>,
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
    /// Reload when a file under the zone directory changes (polled every second)
    #[arg(long, env = "MERIDIAN_WATCH_ZONES")]
    pub watch_zones: bool,
    /// Share health verdicts and overrides through etcd: v3 client URLs, comma separated
    #[arg(long, env = "MERIDIAN_CLUSTER")]
    pub cluster: Option<String>,
    /// This instance's name (NSID, cluster key) [default: the host name]
    #[arg(long, env = "MERIDIAN_INSTANCE")]
    pub instance: Option<String>,
    /// Key prefix in etcd [default: /meridian/]
    #[arg(long, env = "MERIDIAN_CLUSTER_PREFIX")]
    pub cluster_prefix: Option<String>,
    /// Seconds of the instance lease in etcd, 2 to 300 [default: 6]
    #[arg(long, env = "MERIDIAN_CLUSTER_LEASE_TTL")]
    pub cluster_lease_ttl: Option<u64>,
    /// Local address every health probe binds to
    #[arg(long, env = "MERIDIAN_PROBE_SOURCE")]
    pub probe_source: Option<IpAddr>,
    /// UDP worker threads (one SO_REUSEPORT socket each) per listen address [default: the
    /// number of CPUs this process may run on]
    #[arg(long, env = "MERIDIAN_UDP_WORKERS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub udp_workers: Option<u16>,
    #[command(flatten)]
    pub rrl: RrlArgs,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Response rate limiting of UDP answers (SPEC §9); TCP is never limited.
#[derive(Args, Debug, Default, Clone)]
pub struct RrlArgs {
    /// Response rate limiting: on, off or log-only (count and log, limit nothing) [default: on]
    #[arg(long = "rrl", env = "MERIDIAN_RRL", value_name = "on|off|log-only")]
    pub mode: Option<rrl::Mode>,
    /// Responses per second per client prefix and response class [default: 20]
    #[arg(long = "rrl-rate", env = "MERIDIAN_RRL_RATE", value_parser = clap::value_parser!(u32).range(1..=i64::from(rrl::MAX_RATE)))]
    pub rate: Option<u32>,
    /// Every N-th limited response is a TC=1 reply with no records, the others are dropped (0: drop all) [default: 2]
    #[arg(long = "rrl-slip", env = "MERIDIAN_RRL_SLIP", value_parser = clap::value_parser!(u8).range(0..=i64::from(rrl::MAX_SLIP)))]
    pub slip: Option<u8>,
    /// IPv4 client prefix length that shares a bucket [default: 24]
    #[arg(long = "rrl-ipv4-prefix", env = "MERIDIAN_RRL_IPV4_PREFIX", value_parser = clap::value_parser!(u8).range(0..=32))]
    pub ipv4_prefix: Option<u8>,
    /// IPv6 client prefix length that shares a bucket [default: 56]
    #[arg(long = "rrl-ipv6-prefix", env = "MERIDIAN_RRL_IPV6_PREFIX", value_parser = clap::value_parser!(u8).range(0..=128))]
    pub ipv6_prefix: Option<u8>,
    /// Client prefixes never limited, comma-separated (CIDR or address) [default: none]
    #[arg(long = "rrl-exempt", env = "MERIDIAN_RRL_EXEMPT", value_name = "CIDR,...", value_delimiter = ',', num_args = 0.., value_parser = parse_cidr)]
    pub exempt: Option<Vec<ipnet::IpNet>>,
}

impl RrlArgs {
    fn flags(&self) -> RrlFlags {
        RrlFlags {
            mode: self.mode,
            rate: self.rate,
            slip: self.slip,
            ipv4_prefix: self.ipv4_prefix,
            ipv6_prefix: self.ipv6_prefix,
            exempt: self.exempt.clone(),
        }
    }
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

impl CommonArgs {
    fn flags(&self) -> Flags {
        Flags {
            config: self.config.clone(),
            zones: self.zones.clone(),
            geoip: self.geoip.clone(),
            asn: self.asn.clone(),
            log_format: self.log_format,
            state: self.state.clone(),
            ..Flags::default()
        }
    }
}

impl ServeArgs {
    fn flags(&self) -> Flags {
        Flags {
            listen: self.listen.clone(),
            admin: self.admin.clone(),
            admin_token_file: self.admin_token_file.clone(),
            watch_zones: self.watch_zones,
            cluster: self.cluster.clone(),
            instance: self.instance.clone(),
            cluster_prefix: self.cluster_prefix.clone(),
            cluster_lease_ttl: self.cluster_lease_ttl,
            probe_source: self.probe_source,
            rrl: self.rrl.flags(),
            udp_workers: self.udp_workers.map(usize::from),
            ..self.common.flags()
        }
    }
}

/// Run a parsed command line.
pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => {
            let settings = Settings::resolve(args.flags())?;
            crate::app::serve(settings)
        }
        Command::Check(common) => check(&Settings::resolve(common.flags())?),
        Command::Explain(args) => explain_cmd(&args),
        Command::Dnssec(cmd) => dnssec_cmd(&cmd),
        Command::Geoip(args) => {
            let settings = Settings::resolve(args.common.flags())?;
            let db = settings
                .open_geo_reader()?
                .context("no GeoIP database: pass --geoip FILE")?;
            print!("{}", crate::geo::render_geoip(&db, args.ip));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `meridian check`: everything `serve` would load (zones, keys, databases, the overrides
/// file), every problem printed.
fn check(settings: &Settings) -> Result<ExitCode> {
    let loaded = config::load_dir(&LoadOptions {
        zones_dir: &settings.zones,
        previous: None,
    })
    .and_then(|mut snap| {
        // SPEC §11: a signed zone's key must be there, or serve will not answer the zone.
        let problems = crate::dnssec::attach_keys(&mut snap, &settings.state);
        match problems.is_empty() {
            true => Ok(snap),
            false => Err(crate::dnssec::key_diagnostics(&snap, &problems)),
        }
    });
    let geo = settings.open_geo();
    // `serve` refuses to start on an unreadable or corrupt overrides file: same file, same
    // message.
    let overrides = OverrideStore::load(&settings.state);
    match (loaded, geo, overrides) {
        (Ok(snap), Ok(_), Ok(_)) => {
            println!("{}", config::compile::summary(&snap));
            // The process ends here: freeing a million names one by one would take longer
            // than the OS takes to drop the whole address space.
            std::mem::forget(snap);
            Ok(ExitCode::SUCCESS)
        }
        (loaded, geo, overrides) => {
            if let Err(diags) = loaded {
                print!("{diags}");
            }
            if let Err(e) = geo {
                println!("{e}");
            }
            if let Err(e) = overrides {
                println!("{e}");
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

fn explain_cmd(args: &ExplainArgs) -> Result<ExitCode> {
    let settings = Settings::resolve(args.common.flags())?;
    let mut snap = match config::load_dir(&LoadOptions {
        zones_dir: &settings.zones,
        previous: None,
    }) {
        Ok(s) => s,
        Err(diags) => {
            print!("{diags}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let _ = crate::dnssec::attach_keys(&mut snap, &settings.state);
    let geo = settings.open_geo()?.map(std::sync::Arc::new);
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

/// `meridian dnssec keygen|ds ZONE`: the zone must be one of the zone files.
fn dnssec_cmd(cmd: &DnssecCommand) -> Result<ExitCode> {
    let (DnssecCommand::Keygen(args) | DnssecCommand::Ds(args)) = cmd;
    let settings = Settings::resolve(args.common.flags())?;
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
    let Some(id) = snap.find_zone_by_name(&args.zone) else {
        anyhow::bail!("no zone {} in {}", args.zone, settings.zones.display());
    };
    let zone = snap.zone(id);
    let key = match cmd {
        DnssecCommand::Keygen(_) => {
            let key = crate::dnssec::key::generate(&zone.origin_wire, &settings.state)?;
            eprintln!(
                "created {} (key tag {}); every instance serving {} must use this same file",
                key.path.display(),
                key.key_tag,
                zone.origin
            );
            if zone.dnssec.is_none() {
                eprintln!(
                    "note: {} does not say `dnssec = true` yet; answers stay unsigned until it does",
                    zone.file.display()
                );
            }
            key
        }
        DnssecCommand::Ds(_) => crate::dnssec::key::load(&zone.origin_wire, &settings.state)?,
    };
    print!("{}", key.presentation());
    Ok(ExitCode::SUCCESS)
}
