//! Probe load: what checking N HTTP endpoints every 2 s costs Meridian's prober, beside
//! HAProxy checking the same servers at the same rate.
//!
//! One local backend (this process) listens on N distinct loopback addresses (127.1.0.1 and
//! up, all inside 127.0.0.0/8) and answers `200 ok` to every request. Each peer runs as a child
//! process pinned to one core (`taskset -c CPU`) while this process runs on the other:
//! - `meridian serve` with a generated zone of N pools, one endpoint each, all under one http
//!   check (`interval = "2s"`, `timeout = "1s"`, `expect_body = "ok"`); probes/s come from its
//!   own counters (`meridian_probe_results_total` on `/metrics`);
//! - `haproxy` (Debian's) with one backend of the same N servers, `option httpchk GET /health`,
//!   `http-check expect string ok`, `inter 2s`, `timeout check 1s`.
//!
//! After a warm-up the child's CPU time (user + system, /proc/PID/stat) is sampled over the
//! measuring window: the figure is CPU seconds per second. The backend's own request count is
//! printed beside both. Every step is bounded in time; children are stopped by PID.
//!
//! Run: `cargo bench --bench probe_load -- [--endpoints N] [--secs S] [--warmup S]
//! [--rounds R] [--peer meridian|haproxy|both] [--cpu C] [--backend-cpu C] [--port P]
//! [--meridian PATH]` (PATH: another build to compare; default the one cargo just built).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Hard bounds, so a typo cannot start a run of hours or a million sockets.
const MAX_ENDPOINTS: usize = 60_000;
const MAX_SECS: u64 = 600;
const MAX_ROUNDS: usize = 20;
/// How long a child may take to start answering, and to stop after SIGTERM.
const START_TIMEOUT: Duration = Duration::from_secs(180);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// An idle backend connection is closed after this (keep-alive probes come every 2 s).
const BACKEND_IDLE: Duration = Duration::from_secs(30);
/// Open files of this process besides the backend's listeners and connections.
const FD_RESERVE: usize = 256;
/// USER_HZ on Linux: the unit of utime and stime in /proc/PID/stat.
const TICKS_PER_SEC: f64 = 100.0;

const BODY_RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok";

#[derive(Clone, Debug)]
struct Opts {
    endpoints: usize,
    secs: u64,
    warmup: u64,
    rounds: usize,
    peers: Vec<Peer>,
    cpu: usize,
    backend_cpu: usize,
    port: u16,
    admin_port: u16,
    meridian: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Peer {
    Meridian,
    Haproxy,
}

fn main() {
    let mut opts = parse_args();
    // A listener per endpoint, plus a connection per endpoint when the peer keeps them.
    let fits = fd_limit().saturating_sub(FD_RESERVE) / 2;
    if opts.endpoints > fits {
        println!(
            "probe_load: the open files limit ({}) holds {fits} endpoints, not {}: raise it with `ulimit -n` to measure more",
            fd_limit(),
            opts.endpoints
        );
        opts.endpoints = fits.max(1);
    }
    let work = std::env::temp_dir().join(format!("meridian-probe-load-{}", std::process::id()));
    std::fs::create_dir_all(&work).expect("scratch dir");
    // Pin this process (the backend) before any thread starts, so the children own `cpu`.
    let _ = Command::new("taskset")
        .args(["-a", "-p", "-c", &opts.backend_cpu.to_string()])
        .arg(std::process::id().to_string())
        .stdout(Stdio::null())
        .status();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("backend runtime");
    let served = Arc::new(AtomicU64::new(0));
    let addrs: Vec<Ipv4Addr> = (0..opts.endpoints).map(endpoint_addr).collect();
    rt.block_on(start_backend(&addrs, opts.port, served.clone()));
    println!(
        "probe_load: {} endpoints on 127.1.0.1.. port {}, interval 2s, warm-up {} s, window {} s, peer on cpu {}, backend on cpu {}",
        opts.endpoints, opts.port, opts.warmup, opts.secs, opts.cpu, opts.backend_cpu
    );
    let mut results: Vec<(Peer, f64, f64)> = Vec::new();
    // The backend runs on its own thread while the main thread measures.
    let _backend = std::thread::spawn(move || rt.block_on(std::future::pending::<()>()));
    for round in 1..=opts.rounds {
        for &peer in &opts.peers {
            let r = run_peer(peer, &opts, &addrs, &work, &served);
            match r {
                Ok((cpu, rate, backend_rate)) => {
                    println!(
                        "round {round} {peer:?}: {cpu:.3} CPU-s/s, {rate:.0} probes/s (backend saw {backend_rate:.0} requests/s), {:.1} µs/probe",
                        if rate > 0.0 { cpu / rate * 1e6 } else { 0.0 }
                    );
                    results.push((peer, cpu, rate));
                }
                Err(e) => println!("round {round} {peer:?}: failed: {e}"),
            }
        }
    }
    for &peer in &opts.peers {
        let cpus: Vec<f64> = results
            .iter()
            .filter(|r| r.0 == peer)
            .map(|r| r.1)
            .collect();
        let rates: Vec<f64> = results
            .iter()
            .filter(|r| r.0 == peer)
            .map(|r| r.2)
            .collect();
        if cpus.is_empty() {
            continue;
        }
        println!(
            "summary {peer:?}: {} endpoints, CPU-s/s median {:.3} (min {:.3}, max {:.3}), probes/s median {:.0}",
            opts.endpoints,
            median(&cpus),
            min(&cpus),
            max(&cpus),
            median(&rates)
        );
    }
    let _ = std::fs::remove_dir_all(&work);
}

fn parse_args() -> Opts {
    let mut o = Opts {
        endpoints: 10_000,
        secs: 20,
        warmup: 6,
        rounds: 1,
        peers: vec![Peer::Meridian, Peer::Haproxy],
        cpu: 0,
        backend_cpu: 1,
        port: 18080,
        admin_port: 18053,
        meridian: PathBuf::from(env!("CARGO_BIN_EXE_meridian")),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = |name: &str| {
            args.next()
                .unwrap_or_else(|| panic!("{name} needs a value"))
        };
        match a.as_str() {
            // `cargo bench` passes this to every bench binary.
            "--bench" => {}
            "--endpoints" => o.endpoints = val(&a).parse().expect("--endpoints N"),
            "--secs" => o.secs = val(&a).parse().expect("--secs S"),
            "--warmup" => o.warmup = val(&a).parse().expect("--warmup S"),
            "--rounds" => o.rounds = val(&a).parse().expect("--rounds R"),
            "--cpu" => o.cpu = val(&a).parse().expect("--cpu C"),
            "--backend-cpu" => o.backend_cpu = val(&a).parse().expect("--backend-cpu C"),
            "--port" => o.port = val(&a).parse().expect("--port P"),
            "--meridian" => o.meridian = PathBuf::from(val(&a)),
            "--peer" => {
                o.peers = match val(&a).as_str() {
                    "meridian" => vec![Peer::Meridian],
                    "haproxy" => vec![Peer::Haproxy],
                    "both" => vec![Peer::Meridian, Peer::Haproxy],
                    p => panic!("--peer {p}: meridian, haproxy or both"),
                }
            }
            other => panic!("unknown argument {other}; see the doc at the top of probe_load.rs"),
        }
    }
    assert!(
        (1..=MAX_ENDPOINTS).contains(&o.endpoints),
        "--endpoints 1..={MAX_ENDPOINTS}"
    );
    assert!(
        (1..=MAX_SECS).contains(&o.secs) && o.warmup <= MAX_SECS,
        "--secs/--warmup up to {MAX_SECS}"
    );
    assert!(
        (1..=MAX_ROUNDS).contains(&o.rounds),
        "--rounds 1..={MAX_ROUNDS}"
    );
    o
}

/// Endpoint `i` is 127.1.0.1 + i: distinct loopback addresses, all inside 127.0.0.0/8.
fn endpoint_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 1, 0, 1)) + i as u32)
}

// ---------------------------------------------------------------------------------------
// The backend: `200 ok` on every address, keep-alive for HTTP/1.1, close for HTTP/1.0.

async fn start_backend(addrs: &[Ipv4Addr], port: u16, served: Arc<AtomicU64>) {
    for &a in addrs {
        let listener = tokio::net::TcpListener::bind((a, port))
            .await
            .unwrap_or_else(|e| panic!("backend: cannot listen on {a}:{port}: {e}"));
        let served = served.clone();
        tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(serve_conn(sock, served.clone()));
            }
        });
    }
}

async fn serve_conn(mut sock: tokio::net::TcpStream, served: Arc<AtomicU64>) {
    let _ = sock.set_nodelay(true);
    let mut buf = vec![0u8; 4096];
    let mut have = 0;
    loop {
        let n = match tokio::time::timeout(BACKEND_IDLE, sock.read(&mut buf[have..])).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return,
        };
        have += n;
        // Answer every complete request in the buffer (requests carry no body).
        while let Some(end) = find(&buf[..have], b"\r\n\r\n") {
            let head = &buf[..end];
            let http10 = find(head, b"HTTP/1.0").is_some();
            let close = http10 || find_ci(head, b"connection: close");
            served.fetch_add(1, Ordering::Relaxed);
            if sock.write_all(BODY_RESPONSE).await.is_err() || close {
                return;
            }
            buf.copy_within(end + 4..have, 0);
            have -= end + 4;
        }
        if have == buf.len() {
            return; // a head larger than 4 KiB: not a probe
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn find_ci(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

// ---------------------------------------------------------------------------------------
// The peers.

/// Start `peer`, let it warm up, measure; returns (CPU-s/s, probes/s, backend requests/s).
fn run_peer(
    peer: Peer,
    o: &Opts,
    addrs: &[Ipv4Addr],
    work: &Path,
    served: &AtomicU64,
) -> Result<(f64, f64, f64), String> {
    let dir = work.join(format!("{peer:?}").to_lowercase());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let mut child = match peer {
        Peer::Meridian => start_meridian(o, addrs, &dir)?,
        Peer::Haproxy => start_haproxy(o, addrs, &dir)?,
    };
    let pid = child.id();
    let result = (|| {
        let deadline = Instant::now() + START_TIMEOUT;
        // Started when the backend sees probes and, for Meridian, /metrics answers.
        let before = served.load(Ordering::Relaxed);
        while served.load(Ordering::Relaxed) == before
            || peer == Peer::Meridian && meridian_probes(o.admin_port).is_err()
        {
            if Instant::now() > deadline {
                return Err("no probe reached the backend in time".to_string());
            }
            if let Ok(Some(st)) = child.try_wait() {
                return Err(format!("exited early: {st}; see {}", dir.display()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_secs(o.warmup));
        let probes = |peer| match peer {
            Peer::Meridian => meridian_probes(o.admin_port),
            Peer::Haproxy => Ok(0.0),
        };
        let (cpu0, p0, s0, t0) = (
            cpu_seconds(pid)?,
            probes(peer)?,
            served.load(Ordering::Relaxed),
            Instant::now(),
        );
        std::thread::sleep(Duration::from_secs(o.secs));
        let (cpu1, p1, s1, wall) = (
            cpu_seconds(pid)?,
            probes(peer)?,
            served.load(Ordering::Relaxed),
            t0.elapsed().as_secs_f64(),
        );
        let backend = (s1 - s0) as f64 / wall;
        let rate = match peer {
            Peer::Meridian => (p1 - p0) / wall,
            // HAProxy exports no total of checks run; the backend counts them.
            Peer::Haproxy => backend,
        };
        Ok(((cpu1 - cpu0) / wall, rate, backend))
    })();
    stop(&mut child);
    result.map_err(|e| {
        let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        format!(
            "{e}; log ends: {}",
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        )
    })
}

fn start_meridian(o: &Opts, addrs: &[Ipv4Addr], dir: &Path) -> Result<Child, String> {
    let zones = dir.join("zones");
    std::fs::create_dir_all(&zones).map_err(|e| e.to_string())?;
    let mut z = String::from(
        "origin = \"load.test.\"\n[soa]\nmname = \"ns1.load.test.\"\nrname = \"hostmaster.load.test.\"\n\n",
    );
    z += &format!(
        "[checks.web]\nkind = \"http\"\nport = {}\npath = \"/health\"\nexpect_body = \"ok\"\ninterval = \"2s\"\ntimeout = \"1s\"\nrise = 2\nfall = 2\n\n",
        o.port
    );
    for (i, a) in addrs.iter().enumerate() {
        z += &format!("[pools.p{i}]\nA = [\"{a}\"]\ncheck = \"web\"\n");
    }
    std::fs::write(zones.join("load.toml"), z).map_err(|e| e.to_string())?;
    Command::new("taskset")
        .args(["-c", &o.cpu.to_string()])
        .arg(&o.meridian)
        .args(["serve", "--listen", "127.0.0.1:0", "--admin"])
        .arg(format!("127.0.0.1:{}", o.admin_port))
        .arg("--zones")
        .arg(&zones)
        .arg("--state")
        .arg(dir.join("state"))
        .stdout(Stdio::null())
        .stderr(log_file(dir)?)
        .spawn()
        .map_err(|e| format!("meridian: {e}"))
}

fn start_haproxy(o: &Opts, addrs: &[Ipv4Addr], dir: &Path) -> Result<Child, String> {
    let mut c = String::from(
        "global\n    nbthread 1\n    log stderr format raw local0 err\n\ndefaults\n    mode http\n    timeout connect 1s\n    timeout client 10s\n    timeout server 10s\n    timeout check 1s\n\n",
    );
    // HAProxy refuses to start without a listener; this one is never used.
    c += &format!(
        "frontend unused\n    bind 127.0.0.1:{}\n    default_backend probes\n\n",
        o.admin_port + 1
    );
    c += "backend probes\n    option httpchk GET /health\n    http-check expect string ok\n    default-server inter 2s rise 2 fall 2\n";
    for (i, a) in addrs.iter().enumerate() {
        c += &format!("    server e{i} {a}:{} check\n", o.port);
    }
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(&cfg, c).map_err(|e| e.to_string())?;
    Command::new("taskset")
        .args(["-c", &o.cpu.to_string(), "/usr/sbin/haproxy", "-db", "-f"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(log_file(dir)?)
        .spawn()
        .map_err(|e| format!("haproxy: {e}"))
}

fn log_file(dir: &Path) -> Result<std::fs::File, String> {
    std::fs::File::create(dir.join("log")).map_err(|e| e.to_string())
}

/// SIGTERM by PID, then SIGKILL if it does not stop in time.
fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// User + system CPU seconds of a whole process.
fn cpu_seconds(pid: u32) -> Result<f64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
    let close = stat.rfind(')').ok_or("bad /proc stat")?;
    let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
    // After the name, field 3 of stat(5) is index 0: utime (14) is 11, stime (15) is 12.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok((ticks(11) + ticks(12)) as f64 / TICKS_PER_SEC)
}

/// The sum of `meridian_probe_results_total` over checks and results.
fn meridian_probes(admin_port: u16) -> Result<f64, String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], admin_port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("/metrics: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut text = String::new();
    s.read_to_string(&mut text)
        .map_err(|e| format!("/metrics: {e}"))?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("meridian_probe_results_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// The soft RLIMIT_NOFILE, as the server reads it.
fn fd_limit() -> usize {
    usize::try_from(meridian::connections::fd_limit()).unwrap_or(usize::MAX)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}
