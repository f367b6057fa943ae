//! `rrl-flood`: measures response rate limiting (SPEC §9) from outside, on loopback only.
//!
//! An attacker floods a DNS server with queries "from" a victim's /24. Loopback cannot carry
//! spoofed packets back to us, so the flood is sent from real sockets bound to many addresses
//! of one /24 inside 127.0.0.0/8 (`--victim-net`, default 127.0.2): what comes back to them is
//! exactly what a spoofed flood would reflect onto the victim. Meanwhile:
//! - resolvers inside the victim's /24 resolve the flooded name as a real resolver does: UDP
//!   with a timeout and retries, over TCP after a TC=1 reply;
//! - a resolver in another /24 (`--other-net`) asks the same name over UDP.
//!
//! Prints the amplification (reply bytes ÷ query bytes, UDP payloads), the full answers the
//! victim got each second, and how often each resolver got its answer. Bounded in time:
//! `--secs` (at most 120) plus the resolvers' last timeouts.
//!
//! usage: rrl-flood --server ADDR:PORT [--qname NAME] [--qtype TXT|A|...number]
//!        [--qps 5000] [--secs 10] [--nxdomain] [--resolver-qname NAME]
//!        [--victim-net 127.0.2] [--other-net 127.0.9] [--resolvers 4] [--tries 3]
//!        [--timeout-ms 300]
//! `--nxdomain` asks a random name under `--qname` each time (a random-NXDOMAIN flood).

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// The flood may not run longer than this, whatever `--secs` says.
const MAX_SECS: u64 = 120;
/// Flows of the flood: distinct (address, port) pairs, so that SO_REUSEPORT spreads them over
/// every worker of the server as a real spoofed flood (random ports) would be.
const FLOWS: u8 = 32;
/// How often the flood sends what is due and reads what came back.
const TICK: Duration = Duration::from_micros(500);
/// The other-/24 resolver asks this often (10 a second: under the 20/s limit of one bucket).
const OTHER_EVERY: Duration = Duration::from_millis(100);
/// A same-/24 resolver waits this long between resolutions.
const RESOLVE_EVERY: Duration = Duration::from_millis(50);
/// TCP connect, write and read deadline of a resolver's retry.
const TCP_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
struct Options {
    server: SocketAddr,
    qname: String,
    /// What the resolvers ask (default: `qname`); with `--nxdomain`, another name.
    resolver_qname: String,
    qtype: u16,
    qps: u64,
    secs: u64,
    nxdomain: bool,
    victim_net: String,
    other_net: String,
    resolvers: u8,
    tries: u32,
    timeout: Duration,
}

fn main() -> ExitCode {
    let opts = match parse_args(std::env::args().skip(1).collect()) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("rrl-flood: {e}");
            eprintln!("{}", USAGE);
            return ExitCode::from(2);
        }
    };
    if !opts.server.ip().is_loopback() {
        eprintln!("rrl-flood: loopback servers only");
        return ExitCode::from(2);
    }
    match run(&opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rrl-flood: {e}");
            ExitCode::FAILURE
        }
    }
}

const USAGE: &str = "usage: rrl-flood --server ADDR:PORT [--qname NAME] [--qtype TYPE] [--qps N] \
[--secs N] [--nxdomain] [--resolver-qname NAME] [--victim-net A.B.C] [--other-net A.B.C] [--resolvers N] [--tries N] \
[--timeout-ms N]";

fn parse_args(args: Vec<String>) -> Result<Options, String> {
    let mut o = Options {
        server: "127.0.0.1:5353".parse().expect("valid default"),
        qname: "txt.flood.test".into(),
        resolver_qname: String::new(),
        qtype: 16,
        qps: 5000,
        secs: 10,
        nxdomain: false,
        victim_net: "127.0.2".into(),
        other_net: "127.0.9".into(),
        resolvers: 4,
        tries: 3,
        timeout: Duration::from_millis(300),
    };
    let mut it = args.into_iter();
    while let Some(flag) = it.next() {
        if flag == "--nxdomain" {
            o.nxdomain = true;
            continue;
        }
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let bad = |_| format!("{flag} {value}: bad value");
        match flag.as_str() {
            "--server" => o.server = value.parse().map_err(bad)?,
            "--qname" => o.qname = value.trim_end_matches('.').to_string(),
            "--resolver-qname" => o.resolver_qname = value.trim_end_matches('.').to_string(),
            "--qtype" => o.qtype = qtype(&value).ok_or(format!("--qtype {value}: unknown"))?,
            "--qps" => o.qps = value.parse().map_err(|_| format!("--qps {value}"))?,
            "--secs" => o.secs = value.parse().map_err(|_| format!("--secs {value}"))?,
            "--victim-net" => o.victim_net = net24(&value)?,
            "--other-net" => o.other_net = net24(&value)?,
            "--resolvers" => {
                o.resolvers = value.parse().map_err(|_| format!("--resolvers {value}"))?
            }
            "--tries" => o.tries = value.parse().map_err(|_| format!("--tries {value}"))?,
            "--timeout-ms" => {
                let ms: u64 = value.parse().map_err(|_| format!("--timeout-ms {value}"))?;
                o.timeout = Duration::from_millis(ms);
            }
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if o.resolver_qname.is_empty() {
        o.resolver_qname = o.qname.clone();
    }
    o.secs = o.secs.clamp(1, MAX_SECS);
    o.resolvers = o.resolvers.min(50);
    o.tries = o.tries.clamp(1, 10);
    Ok(o)
}

fn qtype(s: &str) -> Option<u16> {
    match s.to_ascii_uppercase().as_str() {
        "A" => Some(1),
        "NS" => Some(2),
        "TXT" => Some(16),
        "AAAA" => Some(28),
        n => n.parse().ok(),
    }
}

/// `A.B.C` inside 127/8: the first three octets of a /24.
fn net24(s: &str) -> Result<String, String> {
    let ip: IpAddr = format!("{s}.1")
        .parse()
        .map_err(|_| format!("{s}: expected the first three octets of a /24, like 127.0.2"))?;
    if !ip.is_loopback() {
        return Err(format!("{s}: loopback (127.x.y) only"));
    }
    Ok(s.to_string())
}

/// Totals of the flood.
#[derive(Default)]
struct Flood {
    sent: u64,
    bytes_in: u64,
    replies: u64,
    bytes_out: u64,
    slips: u64,
    /// TC=1 replies with an OPT: the answer did not fit, nothing to do with RRL.
    truncated: u64,
    /// Replies that were not slips, per second of the flood.
    full_per_second: Vec<u64>,
}

/// What the resolvers of one kind got.
#[derive(Default)]
struct Resolved {
    asked: u64,
    over_udp: u64,
    over_tcp: u64,
}

fn run(o: &Options) -> Result<(), String> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut same = Vec::new();
    for i in 0..o.resolvers {
        let (o, stop) = (o.clone(), stop.clone());
        let src: IpAddr = addr(&o.victim_net, 200 + i)?;
        same.push(thread::spawn(move || same_prefix_resolver(&o, src, &stop)));
    }
    let other = {
        let (o, stop) = (o.clone(), stop.clone());
        let src: IpAddr = addr(&o.other_net, 1)?;
        thread::spawn(move || other_prefix_resolver(&o, src, &stop))
    };
    let flood = flood(o);
    stop.store(true, Ordering::Relaxed);
    let flood = flood?;
    let mut same_total = Resolved::default();
    for h in same {
        let r = h.join().map_err(|_| "a resolver thread panicked")??;
        same_total.asked += r.asked;
        same_total.over_udp += r.over_udp;
        same_total.over_tcp += r.over_tcp;
    }
    let other = other.join().map_err(|_| "the resolver thread panicked")??;
    report(o, &flood, &same_total, &other);
    Ok(())
}

fn addr(net: &str, host: u8) -> Result<IpAddr, String> {
    format!("{net}.{host}")
        .parse()
        .map_err(|_| format!("{net}.{host}: not an address"))
}

fn report(o: &Options, f: &Flood, same: &Resolved, other: &Resolved) {
    let ratio = f.bytes_out as f64 / f.bytes_in.max(1) as f64;
    let first = f.full_per_second.first().copied().unwrap_or(0);
    let after = &f.full_per_second[1.min(f.full_per_second.len())..];
    let max_after = after.iter().copied().max().unwrap_or(0);
    let mean_after = after.iter().sum::<u64>() as f64 / after.len().max(1) as f64;
    let pct = |n: u64, of: u64| 100.0 * n as f64 / of.max(1) as f64;
    println!(
        "flood: {} qps for {} s from {} flows in {}.0/24, {} {}",
        o.qps,
        o.secs,
        FLOWS,
        o.victim_net,
        if o.nxdomain {
            "random names under"
        } else {
            "qname"
        },
        o.qname
    );
    println!(
        "amplification: queries={} bytes_in={} replies={} bytes_out={} ratio={ratio:.3}",
        f.sent, f.bytes_in, f.replies, f.bytes_out
    );
    println!(
        "full answers to the victim: first_second={first} max_per_second_after={max_after} \
         mean_per_second_after={mean_after:.1} per_second={:?}",
        f.full_per_second
    );
    println!(
        "slips (TC=1, no records) to the victim: {} (too big for UDP, TC=1 with OPT: {})",
        f.slips, f.truncated
    );
    println!(
        "same-/24 resolvers ({} x, asking {}, {} UDP tries of {} ms, TCP after TC): resolved \
         {}/{} = {:.1}% (udp {}, tcp {})",
        o.resolvers,
        o.resolver_qname,
        o.tries,
        o.timeout.as_millis(),
        same.over_udp + same.over_tcp,
        same.asked,
        pct(same.over_udp + same.over_tcp, same.asked),
        same.over_udp,
        same.over_tcp
    );
    println!(
        "other-/24 resolver (asking {}, 1 UDP try): answered {}/{} = {:.1}%",
        o.resolver_qname,
        other.over_udp,
        other.asked,
        pct(other.over_udp, other.asked)
    );
}

/// Send `qps` queries a second for `secs` from [`FLOWS`] sockets of the victim's /24, and count
/// what comes back to them.
fn flood(o: &Options) -> Result<Flood, String> {
    let mut socks = Vec::new();
    for host in 1..=FLOWS {
        let s = UdpSocket::bind((addr(&o.victim_net, host)?, 0))
            .map_err(|e| format!("bind {}.{host}: {e}", o.victim_net))?;
        s.set_nonblocking(true).map_err(|e| e.to_string())?;
        socks.push(s);
    }
    let mut f = Flood {
        full_per_second: vec![0; o.secs as usize],
        ..Flood::default()
    };
    let mut rng = Rng::seeded();
    let mut buf = [0u8; 65535];
    let start = Instant::now();
    let end = start + Duration::from_secs(o.secs);
    let mut next = 0usize;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        let due = (now - start).as_secs_f64() * o.qps as f64;
        while (f.sent as f64) < due {
            let name = if o.nxdomain {
                format!("{:08x}.{}", rng.next() as u32, o.qname)
            } else {
                o.qname.clone()
            };
            let q = query(rng.next() as u16, &name, o.qtype, true);
            // A full socket buffer loses the query, as the network would.
            let _ = socks[next].send_to(&q, o.server);
            next = (next + 1) % socks.len();
            f.sent += 1;
            f.bytes_in += q.len() as u64;
        }
        let second = (now - start).as_secs() as usize;
        for s in &socks {
            while let Ok(n) = s.recv(&mut buf) {
                count_reply(&mut f, &buf[..n], second);
            }
        }
        thread::sleep(TICK);
    }
    // Replies still in flight belong to the last second.
    let drain_until = Instant::now() + Duration::from_millis(200);
    while Instant::now() < drain_until {
        for s in &socks {
            while let Ok(n) = s.recv(&mut buf) {
                count_reply(&mut f, &buf[..n], o.secs as usize - 1);
            }
        }
        thread::sleep(TICK);
    }
    Ok(f)
}

fn count_reply(f: &mut Flood, reply: &[u8], second: usize) {
    f.replies += 1;
    f.bytes_out += reply.len() as u64;
    if is_tc(reply) && arcount(reply) == 0 {
        f.slips += 1;
    } else if is_tc(reply) {
        f.truncated += 1;
    } else if let Some(n) = f.full_per_second.get_mut(second) {
        *n += 1;
    }
}

/// A resolver inside the victim's /24: resolves the flooded name again and again.
fn same_prefix_resolver(o: &Options, src: IpAddr, stop: &AtomicBool) -> Result<Resolved, String> {
    let sock = UdpSocket::bind((src, 0)).map_err(|e| format!("bind {src}: {e}"))?;
    sock.set_read_timeout(Some(o.timeout))
        .map_err(|e| e.to_string())?;
    let mut rng = Rng::seeded();
    let mut r = Resolved::default();
    while !stop.load(Ordering::Relaxed) {
        r.asked += 1;
        match resolve(o, &sock, src, &mut rng) {
            Some(Path::Udp) => r.over_udp += 1,
            Some(Path::Tcp) => r.over_tcp += 1,
            None => {}
        }
        thread::sleep(RESOLVE_EVERY);
    }
    Ok(r)
}

enum Path {
    Udp,
    Tcp,
}

/// Up to `tries` UDP queries, each waiting `timeout`; a TC=1 reply moves to TCP.
fn resolve(o: &Options, sock: &UdpSocket, src: IpAddr, rng: &mut Rng) -> Option<Path> {
    let mut buf = [0u8; 65535];
    for _ in 0..o.tries {
        let id = rng.next() as u16;
        let q = query(id, &o.resolver_qname, o.qtype, true);
        sock.send_to(&q, o.server).ok()?;
        let deadline = Instant::now() + o.timeout;
        while Instant::now() < deadline {
            let Ok(n) = sock.recv(&mut buf) else { break };
            let reply = &buf[..n];
            if n < 12 || u16::from_be_bytes([reply[0], reply[1]]) != id {
                continue; // a late reply to an earlier try
            }
            if is_tc(reply) {
                return tcp_resolve(o, src, rng).then_some(Path::Tcp);
            }
            return has_answer(reply).then_some(Path::Udp);
        }
    }
    None
}

/// One query over TCP from `src`: true when it got an answer.
fn tcp_resolve(o: &Options, src: IpAddr, rng: &mut Rng) -> bool {
    let mut attempt = || -> std::io::Result<bool> {
        use socket2::{Domain, Protocol, Socket, Type};
        let local = SocketAddr::new(src, 0);
        let s = Socket::new(
            Domain::for_address(local),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        s.bind(&local.into())?;
        s.connect_timeout(&o.server.into(), TCP_TIMEOUT)?;
        let mut s: std::net::TcpStream = s.into();
        s.set_read_timeout(Some(TCP_TIMEOUT))?;
        s.set_write_timeout(Some(TCP_TIMEOUT))?;
        let q = query(rng.next() as u16, &o.resolver_qname, o.qtype, false);
        let mut framed = (q.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&q);
        s.write_all(&framed)?;
        let mut len = [0u8; 2];
        s.read_exact(&mut len)?;
        let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
        s.read_exact(&mut reply)?;
        Ok(has_answer(&reply))
    };
    attempt().unwrap_or(false)
}

/// A resolver in another /24: one UDP try per question, which must be answered in full.
fn other_prefix_resolver(o: &Options, src: IpAddr, stop: &AtomicBool) -> Result<Resolved, String> {
    let sock = UdpSocket::bind((src, 0)).map_err(|e| format!("bind {src}: {e}"))?;
    sock.set_read_timeout(Some(o.timeout))
        .map_err(|e| e.to_string())?;
    let mut rng = Rng::seeded();
    let mut r = Resolved::default();
    let mut buf = [0u8; 65535];
    while !stop.load(Ordering::Relaxed) {
        r.asked += 1;
        let id = rng.next() as u16;
        let q = query(id, &o.resolver_qname, o.qtype, true);
        if sock.send_to(&q, o.server).is_ok() {
            let deadline = Instant::now() + o.timeout;
            while Instant::now() < deadline {
                match sock.recv(&mut buf) {
                    Ok(n) if n >= 12 && u16::from_be_bytes([buf[0], buf[1]]) == id => {
                        if !is_tc(&buf[..n]) && has_answer(&buf[..n]) {
                            r.over_udp += 1;
                        }
                        break;
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        }
        thread::sleep(OTHER_EVERY);
    }
    Ok(r)
}

/// A query for `name`/`qtype`, with an OPT asking for 4,096-octet replies when `edns` (what an
/// amplification attack sends).
fn query(id: u16, name: &str, qtype: u16, edns: bool) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, u8::from(edns)]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&[0, 1]);
    if edns {
        q.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0]);
    }
    q
}

/// ARCOUNT: an RRL slip has no OPT, a reply truncated for size keeps it.
fn arcount(reply: &[u8]) -> u16 {
    u16::from_be_bytes([reply[10], reply[11]])
}

fn is_tc(reply: &[u8]) -> bool {
    reply.len() >= 12 && reply[2] & 0x02 != 0
}

/// NOERROR with at least one answer record.
fn has_answer(reply: &[u8]) -> bool {
    reply.len() >= 12 && reply[3] & 0x0f == 0 && u16::from_be_bytes([reply[6], reply[7]]) > 0
}

/// xorshift64*, seeded from the clock: query ids and random names, nothing secret.
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        let salt = thread::current().id();
        let h = format!("{salt:?}")
            .bytes()
            .fold(t, |h, b| h.rotate_left(5) ^ u64::from(b));
        Rng(h | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}
