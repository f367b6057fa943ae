//! Big zones (issue 12, SPEC §12): generate a zone of N static names and P policies, in TOML
//! and as a records_file master file, then measure `meridian check` (time, peak memory) beside
//! `nsd-checkzone` on the same master file, and `meridian serve`: time to the first answer,
//! steady RSS, and a reload under a steady query load (its time, lost queries, the slowest
//! reply, RSS after). Everything runs on 127.0.0.1 and every wait is bounded.
//!
//! ```text
//! cargo run --release -p bigzone -- gen /tmp/bigzone --names 1000000 --policies 50000
//! cargo run --release -p bigzone -- run /tmp/bigzone --meridian target/release/meridian
//! ```

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{BufWriter, Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Origin of the generated zone.
const ORIGIN: &str = "big.example.test.";
/// Pools every generated policy chooses among.
const POOLS: [&str; 8] = [
    "us-east",
    "us-west",
    "eu-west",
    "eu-central",
    "ap-south",
    "ap-east",
    "sa-east",
    "af-south",
];
/// Bound on waiting for the server to answer after start.
const START_LIMIT: Duration = Duration::from_secs(120);
/// Bound on a reload, and on waiting for the replies of the load.
const RELOAD_LIMIT: Duration = Duration::from_secs(60);
/// A query with no reply after this is lost.
const REPLY_LIMIT: Duration = Duration::from_secs(2);
/// Queries per second of the background load during the reload: steady, well below what
/// one core answers, so that a slow reply means the reload got in the way.
const LOAD_QPS: u64 = 2000;
/// Load before the reload starts and after it ends.
const LOAD_MARGIN: Duration = Duration::from_secs(1);
/// How long after the first answer (and after a reload) RSS is read, once settled.
const SETTLE: Duration = Duration::from_secs(3);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("gen") => generate(&args[1..]),
        Some("run") => run(&args[1..]),
        Some("peak") => peak(&args[1..]),
        _ => Err("usage: bigzone gen DIR [--names N] [--policies P] | bigzone run DIR [--meridian BIN] [--port PORT]".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bigzone: {e}");
            ExitCode::FAILURE
        }
    }
}

type Result<T> = std::result::Result<T, String>;

/// `--flag value` of the arguments, parsed.
fn flag<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> Result<T> {
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{name} needs a value")),
        None => Ok(default),
    }
}

fn dir_arg(args: &[String]) -> Result<PathBuf> {
    args.first()
        .filter(|a| !a.starts_with("--"))
        .map(PathBuf::from)
        .ok_or_else(|| "a directory is needed".into())
}

// ---------------------------------------------------------------- generator

/// `gen DIR`: DIR/toml/big.toml (everything in TOML) and DIR/zonefile/{big.toml,big.zone}
/// (the same names in a master file, policies in TOML).
fn generate(args: &[String]) -> Result<()> {
    let dir = dir_arg(args)?;
    let names: u32 = flag(args, "--names", 1_000_000)?;
    let policies: u32 = flag(args, "--policies", 50_000)?;
    for sub in ["toml", "zonefile"] {
        std::fs::create_dir_all(dir.join(sub)).map_err(|e| e.to_string())?;
    }
    let io = |e: std::io::Error| e.to_string();
    let mut toml = BufWriter::new(std::fs::File::create(dir.join("toml/big.toml")).map_err(io)?);
    write_head(&mut toml, true).map_err(io)?;
    write_policies(&mut toml, policies).map_err(io)?;
    writeln!(
        toml,
        "[records.\"@\"]\nNS = [\"ns1\"]\n[records.ns1]\nA = [\"192.0.2.53\"]"
    )
    .map_err(io)?;
    for i in 0..names {
        writeln!(toml, "[records.n{i}]\nA = [\"{}\"]", address(i)).map_err(io)?;
    }
    toml.flush().map_err(io)?;

    let mut head =
        BufWriter::new(std::fs::File::create(dir.join("zonefile/big.toml")).map_err(io)?);
    write_head(&mut head, false).map_err(io)?;
    write_policies(&mut head, policies).map_err(io)?;
    head.flush().map_err(io)?;
    let mut zone =
        BufWriter::new(std::fs::File::create(dir.join("zonefile/big.zone")).map_err(io)?);
    writeln!(
        zone,
        "$ORIGIN {ORIGIN}\n$TTL 300\n@ IN SOA ns1 hostmaster.example.test. 1 3600 600 1209600 30\n@ IN NS ns1\nns1 IN A 192.0.2.53"
    )
    .map_err(io)?;
    for i in 0..names {
        writeln!(zone, "n{i} IN A {}", address(i)).map_err(io)?;
    }
    zone.flush().map_err(io)?;
    println!(
        "generated {names} names and {policies} policies in {}/toml and {}/zonefile",
        dir.display(),
        dir.display()
    );
    Ok(())
}

fn address(i: u32) -> String {
    format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255)
}

/// Origin, SOA (TOML variant only: the master file has its own) and pools.
fn write_head(w: &mut impl Write, soa: bool) -> std::io::Result<()> {
    writeln!(w, "origin = \"{ORIGIN}\"\nttl = 300")?;
    if soa {
        writeln!(
            w,
            "[soa]\nmname = \"ns1.{ORIGIN}\"\nrname = \"hostmaster.example.test.\"\nserial = 1"
        )?;
    } else {
        writeln!(w, "records_file = \"big.zone\"")?;
    }
    for (i, p) in POOLS.iter().enumerate() {
        writeln!(
            w,
            "[pools.{p}]\nA = [\"198.51.{i}.10\", \"198.51.{i}.11\"]\nAAAA = [\"2001:db8:{i}::10\"]\nlocation = [{}.0, {}.0]",
            10 + i * 5,
            i as i64 * 20 - 80
        )?;
    }
    Ok(())
}

/// One policy of each kind in turn, over two pools each.
fn write_policies(w: &mut impl Write, n: u32) -> std::io::Result<()> {
    for i in 0..n as usize {
        let (a, b) = (POOLS[i % 8], POOLS[(i + 3) % 8]);
        writeln!(w, "[policies.p{i}]")?;
        match i % 4 {
            0 => writeln!(w, "failover = [\"{a}\", \"{b}\"]")?,
            1 => writeln!(w, "weighted = {{ {a} = 3, {b} = 1 }}")?,
            2 => writeln!(w, "latency = [\"{a}\", \"{b}\"]")?,
            _ => writeln!(
                w,
                "geo.continent = {{ EU = \"{a}\", NA = \"{b}\" }}\ngeo.default = \"{b}\""
            )?,
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- measurements

/// `peak -- CMD ARGS`: run one command, print its wall time and peak RSS (getrusage of the
/// children of this process, which has only that one).
fn peak(args: &[String]) -> Result<()> {
    let cmd = args.iter().skip_while(|a| *a == "--").collect::<Vec<_>>();
    let (prog, rest) = cmd.split_first().ok_or("peak needs a command")?;
    let started = Instant::now();
    let status = Command::new(prog)
        .args(rest)
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("{prog}: {e}"))?;
    let secs = started.elapsed().as_secs_f64();
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
        .map_err(|e| e.to_string())?;
    println!("{secs:.3} {} {}", usage.max_rss(), status.success());
    Ok(())
}

/// Wall seconds and peak RSS in MB of one command, measured by a child `bigzone peak`.
fn measure(cmd: &[&str]) -> Result<(f64, f64)> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = Command::new(me)
        .arg("peak")
        .arg("--")
        .args(cmd)
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    let f: Vec<&str> = text.split_whitespace().collect();
    match f[..] {
        [secs, kb, "true"] => Ok((
            secs.parse().map_err(|_| "bad peak output")?,
            kb.parse::<f64>().map_err(|_| "bad peak output")? / 1024.0,
        )),
        _ => Err(format!("{} failed: {text}", cmd.join(" "))),
    }
}

/// `run DIR`: every figure, printed as it comes.
fn run(args: &[String]) -> Result<()> {
    let dir = dir_arg(args)?;
    let meridian: String = flag(args, "--meridian", "target/release/meridian".to_string())?;
    let port: u16 = flag(args, "--port", 15_360)?;
    let zones_toml = dir.join("toml");
    let zones_file = dir.join("zonefile");
    let names = count_names(&zones_file.join("big.zone"))?;
    println!("zone: {names} static names (see {})", dir.display());

    let zone_file = zones_file.join("big.zone");
    let nsd = measure(&["nsd-checkzone", ORIGIN, path_str(&zone_file)?]);
    let check = |zones: &Path| measure(&[&meridian, "check", "--zones", path_str(zones)?]);
    let (t_file, m_file) = check(&zones_file)?;
    let (t_toml, m_toml) = check(&zones_toml)?;
    println!("check, names in TOML:          {t_toml:6.2} s  peak {m_toml:6.0} MB");
    println!("check, names in records_file:  {t_file:6.2} s  peak {m_file:6.0} MB");
    match nsd {
        Ok((t, m)) => println!(
            "nsd-checkzone, same file:      {t:6.2} s  peak {m:6.0} MB   (records_file/nsd: time {:.2}x, memory {:.2}x)",
            t_file / t,
            m_file / m
        ),
        Err(e) => println!("nsd-checkzone: not measured ({e})"),
    }
    for (label, zones) in [("TOML", &zones_toml), ("records_file", &zones_file)] {
        let probe = format!("n{}.{ORIGIN}", names.saturating_sub(1));
        serve(&meridian, zones, port, label, &probe, names)?;
    }
    Ok(())
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .ok_or_else(|| format!("{} is not UTF-8", p.display()))
}

/// Static names of the master file (its `nN` lines).
fn count_names(zone: &Path) -> Result<u32> {
    let text = std::fs::read_to_string(zone).map_err(|e| format!("{}: {e}", zone.display()))?;
    let generated =
        |l: &&str| l.starts_with('n') && l[1..].starts_with(|c: char| c.is_ascii_digit());
    Ok(text.lines().filter(generated).count() as u32)
}

/// One `serve` run: first answer, steady RSS, reload under load, RSS after.
fn serve(bin: &str, zones: &Path, port: u16, label: &str, probe: &str, names: u32) -> Result<()> {
    let state = std::env::temp_dir().join(format!("bigzone-state-{}", std::process::id()));
    let listen = format!("127.0.0.1:{port}");
    let admin = format!("127.0.0.1:{}", port + 1);
    let started = Instant::now();
    let child = Command::new(bin)
        .args(["serve", "--zones", path_str(zones)?, "--listen", &listen])
        .args(["--admin", &admin, "--state", path_str(&state)?])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{bin}: {e}"))?;
    let mut server = Server(child);
    let sock = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    sock.connect(&listen).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_millis(20)))
        .map_err(|e| e.to_string())?;
    let first = loop {
        if started.elapsed() > START_LIMIT {
            return Err(format!("no answer within {START_LIMIT:?}"));
        }
        if answered(&sock, probe) {
            break started.elapsed();
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    std::thread::sleep(SETTLE);
    let steady = rss_mb(server.0.id())?;
    let load = Load::start(&listen, names)?;
    std::thread::sleep(LOAD_MARGIN);
    let t0 = Instant::now();
    let status = post_reload(&admin)?;
    let reload = t0.elapsed();
    std::thread::sleep(LOAD_MARGIN);
    let result = load.finish();
    std::thread::sleep(SETTLE);
    let after = rss_mb(server.0.id())?;
    println!(
        "serve, names in {label}: first answer {:.2} s, steady RSS {steady:.0} MB; reload under {LOAD_QPS} qps: {:.2} s (HTTP {status}), {} of {} queries lost, slowest reply {:.1} ms, p99 {:.2} ms, RSS after {after:.0} MB ({:.2}x steady)",
        first.as_secs_f64(),
        reload.as_secs_f64(),
        result.lost,
        result.sent,
        result.slowest.as_secs_f64() * 1000.0,
        result.p99.as_secs_f64() * 1000.0,
        after / steady
    );
    server.stop();
    let _ = std::fs::remove_dir_all(&state);
    Ok(())
}

/// The server process, stopped (by its PID) however `serve` returns.
struct Server(Child);

impl Server {
    fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// VmRSS of a process in MB.
fn rss_mb(pid: u32) -> Result<f64> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| e.to_string())?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .ok_or_else(|| "no VmRSS".into())
}

/// `POST /v1/reload` on the admin port; returns the HTTP status when the reload is done.
fn post_reload(admin: &str) -> Result<u16> {
    let mut s = TcpStream::connect(admin).map_err(|e| format!("admin {admin}: {e}"))?;
    s.set_read_timeout(Some(RELOAD_LIMIT))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "POST /v1/reload HTTP/1.1\r\nHost: {admin}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).map_err(|e| e.to_string())?;
    std::str::from_utf8(&head[9..12])
        .ok()
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| "bad HTTP reply".into())
}

/// One A query for `name`, with `id`.
fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(64);
    q.extend(id.to_be_bytes());
    q.extend([0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend(label.bytes());
    }
    q.extend([0, 0, 1, 0, 1]);
    q
}

/// Whether `name` gets a NOERROR answer with records.
fn answered(sock: &UdpSocket, name: &str) -> bool {
    if sock.send(&query(1, name)).is_err() {
        return false;
    }
    let mut buf = [0u8; 1500];
    match sock.recv(&mut buf) {
        Ok(n) if n >= 12 => buf[3] & 0x0f == 0 && u16::from_be_bytes([buf[6], buf[7]]) > 0,
        _ => false,
    }
}

/// A steady stream of queries (static names and policy names in turn) with every reply
/// timed by its id.
struct Load {
    stop: Arc<AtomicBool>,
    sender: std::thread::JoinHandle<u64>,
    receiver: std::thread::JoinHandle<Vec<Duration>>,
}

struct LoadResult {
    sent: u64,
    lost: u64,
    slowest: Duration,
    p99: Duration,
}

impl Load {
    fn start(server: &str, names: u32) -> Result<Load> {
        let sock = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        sock.connect(server).map_err(|e| e.to_string())?;
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .map_err(|e| e.to_string())?;
        let recv_sock = sock.try_clone().map_err(|e| e.to_string())?;
        let stop = Arc::new(AtomicBool::new(false));
        let sent_at: Arc<Mutex<HashMap<u16, Instant>>> = Arc::default();
        let sender = {
            let (stop, sent_at) = (stop.clone(), sent_at.clone());
            std::thread::spawn(move || send_loop(&sock, names, &stop, &sent_at))
        };
        let receiver = {
            let stop = stop.clone();
            std::thread::spawn(move || receive_loop(&recv_sock, &stop, &sent_at))
        };
        Ok(Load {
            stop,
            sender,
            receiver,
        })
    }

    fn finish(self) -> LoadResult {
        self.stop.store(true, Ordering::Relaxed);
        let sent = self.sender.join().unwrap_or(0);
        let mut times = self.receiver.join().unwrap_or_default();
        times.sort();
        let p99 = times
            .get((times.len() * 99 / 100).min(times.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default();
        LoadResult {
            sent,
            lost: sent.saturating_sub(times.len() as u64),
            slowest: times.last().copied().unwrap_or_default(),
            p99,
        }
    }
}

/// Paced sending, one millisecond's share at a time; returns how many were sent. Ids are
/// distinct across the run (bounded below 65,536 queries).
fn send_loop(
    sock: &UdpSocket,
    names: u32,
    stop: &AtomicBool,
    sent_at: &Mutex<HashMap<u16, Instant>>,
) -> u64 {
    let started = Instant::now();
    let mut sent: u64 = 0;
    let mut name = String::new();
    while !stop.load(Ordering::Relaxed) && sent < u64::from(u16::MAX) {
        let due = started.elapsed().as_millis() as u64 * LOAD_QPS / 1000;
        while sent < due && sent < u64::from(u16::MAX) {
            name.clear();
            let k = sent.wrapping_mul(2_654_435_761);
            // Every fourth query a policy name, the rest static names across the zone.
            if sent.is_multiple_of(4) {
                let _ = write!(name, "p{}.{ORIGIN}", k % 1000);
            } else {
                let _ = write!(name, "n{}.{ORIGIN}", k % u64::from(names.max(1)));
            }
            let id = sent as u16;
            sent_at
                .lock()
                .expect("not poisoned")
                .insert(id, Instant::now());
            let _ = sock.send(&query(id, &name));
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    sent
}

/// Reply times by id; after `stop`, keeps reading for up to [`REPLY_LIMIT`].
fn receive_loop(
    sock: &UdpSocket,
    stop: &AtomicBool,
    sent_at: &Mutex<HashMap<u16, Instant>>,
) -> Vec<Duration> {
    let mut times = Vec::new();
    let mut buf = [0u8; 1500];
    let mut stopped: Option<Instant> = None;
    loop {
        if stopped.is_none() && stop.load(Ordering::Relaxed) {
            stopped = Some(Instant::now());
        }
        if stopped.is_some_and(|s| s.elapsed() > REPLY_LIMIT) {
            break;
        }
        let Ok(n) = sock.recv(&mut buf) else {
            continue;
        };
        if n < 12 || buf[3] & 0x0f != 0 {
            continue;
        }
        let id = u16::from_be_bytes([buf[0], buf[1]]);
        if let Some(t) = sent_at.lock().expect("not poisoned").remove(&id)
            && t.elapsed() <= REPLY_LIMIT
        {
            times.push(t.elapsed());
        }
    }
    times
}
