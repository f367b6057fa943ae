//! `meridian serve`: load everything, start the DNS workers, the probers and the admin API,
//! reload on SIGHUP, stop cleanly on SIGINT/SIGTERM. [`start`] is also what the integration
//! tests run, on port 0.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;

use anyhow::{Context, Result, anyhow};
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::cluster::Cluster;
use crate::config::{self, LoadOptions};
use crate::dns::{listen, tcp};
use crate::health::overrides::OverrideStore;
use crate::health::prober::Prober;
use crate::health::{Clients, View, probe};
use crate::reload::Control;
use crate::settings::{LogFormat, Settings};
use crate::world::World;

/// Tries to find a port free for both UDP and TCP when asked for port 0.
const PORT_ZERO_ATTEMPTS: usize = 20;

/// A running server.
pub struct Running {
    pub control: Arc<Control>,
    /// DNS addresses actually bound (UDP and TCP on each).
    pub dns: Vec<SocketAddr>,
    pub admin: Option<SocketAddr>,
    stop_udp: Arc<AtomicBool>,
    stop: watch::Sender<bool>,
    udp_threads: Vec<JoinHandle<()>>,
    tasks: JoinSet<()>,
}

/// `meridian serve`.
pub fn serve(settings: Settings) -> Result<ExitCode> {
    init_logging(settings.log_format);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("meridian")
        .build()
        .context("cannot start the runtime")?;
    rt.block_on(async {
        // Handlers go in before anything listens, so an early SIGHUP cannot kill the process.
        let signals = Signals::install()?;
        let running = match start(settings).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("{e:#}");
                return Ok(ExitCode::FAILURE);
            }
        };
        signals.wait(&running.control).await;
        running.shutdown().await;
        Ok(ExitCode::SUCCESS)
    })
}

/// Load the configuration and start every part; errors if the zones do not load.
pub async fn start(settings: Settings) -> Result<Running> {
    probe::install_crypto_provider();
    crate::dns::guard::install_panic_hook();
    let mut snapshot = config::load_dir(&LoadOptions {
        zones_dir: &settings.zones,
        previous: None,
    })
    .map_err(|d| anyhow!("the zones do not load:\n{d}"))?;
    crate::reload::attach_keys(&mut snapshot, &settings.state);
    tracing::info!("{}", config::compile::summary(&snapshot));
    // The load's garbage is freed: let the allocator hand it back once its delay is over.
    crate::memory::return_freed_memory_later();
    let geo = settings.open_geo()?.map(Arc::new);
    if let (Some(path), Some(db)) = (&settings.geoip, &geo) {
        tracing::info!(path = %path.display(), "geoip database loaded: {}", db.metadata_summary());
    }
    let overrides = OverrideStore::load(&settings.state).map_err(|e| anyhow!("{e}"))?;
    let health = View::unknown(&snapshot).with_overrides(
        &snapshot,
        overrides.resolve(&snapshot),
        overrides.resolve_endpoints(&snapshot),
    );
    let snapshot = Arc::new(snapshot);
    let world = Arc::new(ArcSwap::from_pointee(
        World::new(snapshot.clone(), Arc::new(health), geo)
            .with_nsid(Some(Arc::from(settings.instance.as_str()))),
    ));
    let serving = world.load();
    if serving.geo.is_some() {
        tracing::info!("geoip compiled per policy: {}", serving.geo_trees.summary());
    }
    drop(serving);
    let cluster = settings
        .cluster
        .clone()
        .map(|c| Cluster::new(c, settings.instance.clone(), &settings.zones));
    let control = Arc::new(
        Control::new(settings.clone(), world.clone(), overrides).with_cluster(cluster.clone()),
    );

    let (stop, stop_rx) = watch::channel(false);
    let stop_udp = Arc::new(AtomicBool::new(false));
    let mut tasks = JoinSet::new();
    let mut udp_threads = Vec::new();
    let mut dns = Vec::new();
    let workers = settings.udp_workers;
    let fd_limit = crate::connections::raise_fd_limit();
    let tcp_limits = tcp::TcpLimits::for_fd_limit(fd_limit, settings.listen.len());
    tracing::info!(
        fd_limit,
        tcp_max = tcp_limits.caps.total,
        tcp_max_per_network = tcp_limits.caps.per_network,
        "open files limit and tcp connection caps"
    );
    let rrl = crate::dns::rrl::Shared::new(settings.rrl.clone());
    tracing::info!(rrl = ?settings.rrl, "response rate limiting");
    for addr in &settings.listen {
        let (sockets, tcp) = bind_dns(*addr, workers)?;
        let bound = tcp.local_addr()?;
        tracing::info!(%bound, workers = sockets.len(), "dns listening (udp+tcp)");
        dns.push(bound);
        udp_threads.extend(listen::spawn_udp(
            sockets,
            world.clone(),
            &control.dns_stats,
            &rrl,
            stop_udp.clone(),
        )?);
        tasks.spawn(tcp::serve_tcp(
            tcp,
            world.clone(),
            control.dns_stats.clone(),
            tcp_limits,
            stop_rx.clone(),
        ));
    }

    let weak: Weak<Control> = Arc::downgrade(&control);
    let sink: crate::health::prober::Sink = Arc::new(move |probes| {
        if let Some(c) = weak.upgrade() {
            c.publish_health(probes);
        }
    });
    let clients = Clients::new().with_source(settings.probe_source);
    let _ = control
        .prober
        .set(Prober::start_with(snapshot, sink, clients));
    if let Some(cluster) = &cluster {
        let weak = Arc::downgrade(&control);
        cluster.on_change(Box::new(move || {
            if let Some(c) = weak.upgrade() {
                c.cluster_changed();
            }
        }));
        tracing::info!(
            instance = %settings.instance,
            endpoints = ?cluster.settings.endpoints,
            prefix = %cluster.settings.prefix,
            "cluster: sharing verdicts and overrides through etcd"
        );
        tasks.spawn(cluster.run(stop_rx.clone()));
    }
    tasks.spawn(expire_overrides(Arc::downgrade(&control), stop_rx.clone()));

    if settings.watch_zones {
        tasks.spawn(crate::reload::watch_zones(control.clone(), stop_rx.clone()));
    }
    let admin = match settings.admin {
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("admin: cannot listen on {addr}"))?;
            let bound = listener.local_addr()?;
            tracing::info!(%bound, "admin listening");
            tasks.spawn(crate::admin::serve(
                listener,
                control.clone(),
                stop_rx.clone(),
            ));
            Some(bound)
        }
        None => None,
    };
    Ok(Running {
        control,
        dns,
        admin,
        stop_udp,
        stop,
        udp_threads,
        tasks,
    })
}

/// How often overrides are re-resolved, so one with an `until` stops applying on time.
const OVERRIDE_EXPIRY_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Re-resolve the overrides every [`OVERRIDE_EXPIRY_CHECK`] until `stop`.
async fn expire_overrides(control: Weak<Control>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(OVERRIDE_EXPIRY_CHECK) => {}
            _ = stop.changed() => return,
        }
        let Some(c) = control.upgrade() else { return };
        let _ = tokio::task::spawn_blocking(move || c.refresh_overrides()).await;
    }
}

/// UDP sockets (one per worker) and a TCP listener on the same address and port.
fn bind_dns(addr: SocketAddr, workers: usize) -> Result<(Vec<std::net::UdpSocket>, TcpListener)> {
    let attempts = if addr.port() == 0 {
        PORT_ZERO_ATTEMPTS
    } else {
        1
    };
    let mut last = None;
    for _ in 0..attempts {
        let sockets = listen::bind_udp(addr, workers)
            .with_context(|| format!("dns: cannot listen on udp {addr}"))?;
        let port = sockets[0].local_addr()?.port();
        match listen::bind_tcp(SocketAddr::new(addr.ip(), port)) {
            Ok(tcp) => return Ok((sockets, TcpListener::from_std(tcp)?)),
            Err(e) => last = Some(e),
        }
    }
    Err(anyhow!(
        "dns: cannot listen on tcp {addr}: {}",
        last.map_or_else(String::new, |e| e.to_string())
    ))
}

impl Running {
    /// Stop listening, stop probing, wait for the workers.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        self.stop_udp.store(true, Ordering::Relaxed);
        while self.tasks.join_next().await.is_some() {}
        if let Some(control) = Arc::into_inner(self.control)
            && let Some(prober) = control.prober.into_inner()
        {
            prober.shutdown().await;
        }
        let threads = std::mem::take(&mut self.udp_threads);
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
        tracing::info!("stopped");
    }
}

/// The signals `serve` acts on.
struct Signals {
    hup: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            hup: signal(SignalKind::hangup())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// SIGHUP reloads; SIGINT or SIGTERM returns.
    async fn wait(mut self, control: &Arc<Control>) {
        loop {
            tokio::select! {
                _ = self.hup.recv() => {
                    let c = control.clone();
                    // Compiling is blocking work: keep it off the runtime's async threads.
                    let _ = tokio::task::spawn_blocking(move || c.reload()).await;
                }
                _ = self.term.recv() => break,
                _ = self.int.recv() => break,
            }
        }
        tracing::info!("shutting down");
    }
}

/// Logs to stderr; hickory and the HTTP stack at warn so that nothing logs per query.
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,hickory_proto=warn,hyper=warn,reqwest=warn")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| LossyStderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Stderr that drops what it cannot write: a closed log pipe must not stop the server.
struct LossyStderr;

impl std::io::Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(std::io::stderr().write(buf).unwrap_or(buf.len()))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}
