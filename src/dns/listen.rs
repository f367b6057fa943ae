//! Sockets. UDP: one thread per core per address on its own SO_REUSEPORT socket, receiving
//! and sending in batches (recvmmsg/sendmmsg) with buffers allocated once, loading the world
//! once per batch; nothing is shared between workers but the world pointer. A worker holds
//! peer addresses in the socket's own family (`sockaddr_in`, 16 octets, or `sockaddr_in6`),
//! not in a 128-octet `sockaddr_storage`: each is copied several times per query. Each UDP worker
//! rate-limits its responses with its own table (rrl.rs). The TCP listener is bound here and
//! served by `tcp.rs` (never rate-limited).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::Cache;
use nix::sys::socket::{
    MsgFlags, MultiHeaders, SockaddrIn, SockaddrIn6, SockaddrLike, recvmmsg, sendmmsg,
};
use socket2::{Domain, Protocol, Socket, Type};

use super::guard;
use super::handler::{Local, Response, UDP_CACHE_SLOTS};
use super::packet_cache::PacketCache;
use super::response;
use super::rrl::{self, Limiter, Verdict};
use super::stats::{DnsStats, WorkerTotals};
use crate::world::{SharedWorld, World};

/// Datagrams taken per recvmmsg call: 16, as gdnsd (dnsio_udp.c). Against 64, the static kind
/// of `tools/bench/side-by-side.sh` went from 0.84 to 1.01 of gdnsd on an idle machine.
const BATCH: usize = 16;
/// Largest query accepted over UDP; bigger datagrams are truncated and fail to parse.
const UDP_RECV_SIZE: usize = 4096;
/// Kernel receive buffer per socket: absorbs bursts while a worker is busy.
const UDP_RCVBUF: usize = 4 << 20;
/// How often a blocked worker wakes to notice shutdown.
const UDP_POLL: Duration = Duration::from_millis(200);
/// Counters are folded into the shared totals after this many queries or this long.
const STATS_FLUSH_QUERIES: u64 = 4096;
const STATS_FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Pending TCP connections the kernel queues before `accept`.
const TCP_BACKLOG: i32 = 1024;

/// Bind one SO_REUSEPORT UDP socket per worker on `addr` (port 0 picks one port for all).
pub fn bind_udp(addr: SocketAddr, workers: usize) -> io::Result<Vec<std::net::UdpSocket>> {
    let mut sockets = Vec::with_capacity(workers);
    let mut addr = addr;
    for _ in 0..workers.max(1) {
        let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        if addr.is_ipv6() {
            s.set_only_v6(true)?;
        }
        s.set_reuse_port(true)?;
        never_fragment(&s, addr.is_ipv6());
        // Best effort: the kernel caps it at net.core.rmem_max.
        let _ = s.set_recv_buffer_size(UDP_RCVBUF);
        s.bind(&addr.into())?;
        s.set_read_timeout(Some(UDP_POLL))?;
        let sock: std::net::UdpSocket = s.into();
        addr = sock.local_addr()?;
        sockets.push(sock);
    }
    Ok(sockets)
}

/// Replies are never fragmented and ignore path MTU reports. IPv4: DF set and path MTU
/// ignored (`IP_PMTUDISC_PROBE`; RFC 9715 recommends DF on IPv4 responses, and BIND sets it
/// since DNS Flag Day 2020); IPv6: OMIT, as gdnsd, NSD and Knot. A spoofed ICMP
/// "fragmentation needed" cannot shrink what we send, no reply is ever split (answers stay
/// within 1232 octets), and a DF datagram from an unconnected socket gets IP ID 0 instead
/// of one drawn from the kernel's shared, hashed ID table (`__ip_select_ident`, about 60 ns
/// of each reply). Best effort: a kernel without PROBE or OMIT (before Linux 3.13, some
/// sandboxes) gets OMIT or DONT, and one without any keeps its default.
fn never_fragment(s: &Socket, v6: bool) {
    use rustix::net::sockopt::{self, Ipv4PathMtuDiscovery as V4, Ipv6PathMtuDiscovery as V6};
    let set = if v6 {
        sockopt::set_ipv6_mtu_discover(s, V6::OMIT)
            .or_else(|_| sockopt::set_ipv6_mtu_discover(s, V6::DONT))
    } else {
        sockopt::set_ip_mtu_discover(s, V4::PROBE)
            .or_else(|_| sockopt::set_ip_mtu_discover(s, V4::OMIT))
            .or_else(|_| sockopt::set_ip_mtu_discover(s, V4::DONT))
    };
    if let Err(e) = set {
        tracing::warn!(error = %e, "udp replies keep the kernel's path MTU discovery");
    }
}

/// A non-blocking TCP listener; IPv6 addresses listen on IPv6 only, so that `[::]:53` and
/// `0.0.0.0:53` can both be given, as for UDP.
pub fn bind_tcp(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.listen(TCP_BACKLOG)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// Start a worker thread per socket, each with its own rate limiter; they stop when `stop`
/// is set.
pub fn spawn_udp(
    sockets: Vec<std::net::UdpSocket>,
    world: SharedWorld,
    stats: &DnsStats,
    rrl: &rrl::Shared,
    stop: Arc<AtomicBool>,
) -> io::Result<Vec<JoinHandle<()>>> {
    let mut handles = Vec::new();
    for (i, sock) in sockets.into_iter().enumerate() {
        let world = world.clone();
        let totals = stats.register();
        let stop = stop.clone();
        let name = format!("dns-udp-{i}");
        let running = stats.worker_started(name.clone());
        let limiter = rrl.limiter();
        let v6 = sock.local_addr()?.is_ipv6();
        let h = std::thread::Builder::new().name(name).spawn(move || {
            let _running = running;
            if v6 {
                udp_worker::<SockaddrIn6>(sock, world, totals, limiter, stop)
            } else {
                udp_worker::<SockaddrIn>(sock, world, totals, limiter, stop)
            }
        })?;
        handles.push(h);
    }
    Ok(handles)
}

/// A peer address of the socket's family: what a worker receives from and replies to.
trait Peer: SockaddrLike + Copy + Send + 'static {
    /// The client address, `None` for a source port of 0 (nothing can be sent back to it).
    fn client(&self) -> Option<IpAddr>;
}

impl Peer for SockaddrIn {
    fn client(&self) -> Option<IpAddr> {
        (self.port() != 0).then(|| IpAddr::V4(self.ip()))
    }
}

impl Peer for SockaddrIn6 {
    fn client(&self) -> Option<IpAddr> {
        (self.port() != 0).then(|| IpAddr::V6(self.ip()).to_canonical())
    }
}

/// Buffers of one worker, allocated once.
struct Batch<S> {
    recv: Vec<[u8; UDP_RECV_SIZE]>,
    lens: [usize; BATCH],
    peers: [Option<S>; BATCH],
    /// Each peer's client address, worked out as the batch comes in: built just before
    /// answering, the address was copied while its bytes were still being stored (a
    /// store-forwarding stall on every query).
    clients: [Option<IpAddr>; BATCH],
    out: Vec<Vec<u8>>,
    send_peers: Vec<Option<S>>,
    send_index: Vec<usize>,
}

impl<S: Peer> Batch<S> {
    /// Queue slot `i`'s reply for sending, unless the rate limiter drops it (or slips it).
    #[inline]
    fn pass_on(
        &mut self,
        i: usize,
        reply: Option<Response>,
        world: &World,
        limiter: &mut Option<Limiter>,
        local: &mut Local,
    ) {
        let (Some(reply), Some(peer), Some(src)) = (reply, self.peers[i], self.clients[i]) else {
            return;
        };
        if let Some(l) = limiter {
            let verdict = l.check(src, reply.class, reply.qname(local), &world.snapshot);
            local.stats.rrl(verdict);
            match verdict {
                Verdict::Send | Verdict::Logged => {}
                Verdict::Slip => response::slip(&mut self.out[i], reply.head_len),
                Verdict::Drop => return,
            }
        }
        self.send_peers.push(Some(peer));
        self.send_index.push(i);
    }
}

fn udp_worker<S: Peer>(
    sock: std::net::UdpSocket,
    world: SharedWorld,
    totals: Arc<WorkerTotals>,
    mut limiter: Option<Limiter>,
    stop: Arc<AtomicBool>,
) {
    let fd = sock.as_raw_fd();
    let mut cache = Cache::new(world);
    let mut b = Batch {
        recv: vec![[0u8; UDP_RECV_SIZE]; BATCH],
        lens: [0; BATCH],
        peers: [None; BATCH],
        clients: [None; BATCH],
        out: (0..BATCH).map(|_| Vec::with_capacity(1232)).collect(),
        send_peers: Vec::with_capacity(BATCH),
        send_index: Vec::with_capacity(BATCH),
    };
    let mut recv_headers = MultiHeaders::<S>::preallocate(BATCH, None);
    let mut send_headers = MultiHeaders::<S>::preallocate(BATCH, None);
    let mut local = Local::new(UDP_CACHE_SLOTS);
    let mut packet_cache = PacketCache::new();
    // The TSC where it is invariant, else the OS clock (quanta decides once per process).
    let clock = quanta::Clock::new();
    let mut seed = rand::random::<u64>() | 1;
    let mut last_world: Option<Arc<World>> = None;
    let mut last_flush = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let n = match receive(fd, &mut recv_headers, &mut b) {
            Ok(n) => n,
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => 0,
            Err(e) => {
                tracing::warn!(error = %e, "udp receive failed");
                std::thread::sleep(Duration::from_millis(10));
                0
            }
        };
        // Each query's response time runs from its batch's arrival to its batch's replies
        // being ready: they are sent together, so two clock reads time them all exactly. (The
        // send is left out, as TCP leaves out its write: on loopback it includes delivering
        // the reply to the client's socket.)
        let arrived = clock.raw();
        let world = cache.load();
        // Counters hold ids of the snapshot they came from: fold them in before it changes.
        if last_world.as_ref().is_none_or(|p| !Arc::ptr_eq(p, world))
            && let Some(prev) = last_world.replace(world.clone())
        {
            local.stats.flush(&prev.snapshot, &totals);
        }
        let started = Instant::now();
        if let Some(l) = &mut limiter {
            l.tick(started);
        }
        let mut timed = 0;
        b.send_peers.clear();
        b.send_index.clear();
        // One guard for the batch; a panic answers the query in hand with SERVFAIL, as
        // `handle` does, and the rest of the batch is guarded anew.
        let mut next = 0;
        while next < n {
            let mut at = next;
            let outcome = guard::batch(|| {
                for i in next..n {
                    at = i;
                    let Some(src) = &b.clients[i] else { continue };
                    seed = xorshift(seed);
                    let packet = &b.recv[i][..b.lens[i]];
                    let reply =
                        packet_cache.answer(world, packet, src, seed, &mut b.out[i], &mut local);
                    timed += 1;
                    b.pass_on(i, reply, world, &mut limiter, &mut local);
                }
            });
            let Err(payload) = outcome else { break };
            let i = at;
            let reply = b.clients[i].and_then(|src| {
                let packet = &b.recv[i][..b.lens[i]];
                guard::servfail(packet, &src, &mut b.out[i], &mut local, payload.as_ref())
            });
            timed += 1;
            b.pass_on(i, reply, world, &mut limiter, &mut local);
            next = i + 1;
        }
        if timed > 0 {
            let ready = clock.raw();
            local
                .stats
                .response_times(clock.delta_as_nanos(arrived, ready), timed);
        }
        send(fd, &mut send_headers, &b);
        if local.stats.pending() >= STATS_FLUSH_QUERIES || started - last_flush >= STATS_FLUSH_EVERY
        {
            local.stats.flush(&world.snapshot, &totals);
            last_flush = started;
        }
    }
    if let Some(w) = last_world {
        local.stats.flush(&w.snapshot, &totals);
    }
}

/// One recvmmsg: blocks for the first datagram (up to the socket timeout), then takes what
/// is queued.
fn receive<S: Peer>(
    fd: i32,
    headers: &mut MultiHeaders<S>,
    b: &mut Batch<S>,
) -> nix::Result<usize> {
    let mut bufs = b.recv.iter_mut();
    let mut slices: [[io::IoSliceMut<'_>; 1]; BATCH] = std::array::from_fn(|_| {
        [io::IoSliceMut::new(
            bufs.next().expect("one receive buffer per batch slot"),
        )]
    });
    let results = recvmmsg(
        fd,
        headers,
        slices.iter_mut(),
        MsgFlags::MSG_WAITFORONE,
        None,
    )?;
    let mut n = 0;
    for (i, msg) in results.enumerate() {
        b.lens[i] = msg.bytes;
        b.peers[i] = msg.address;
        b.clients[i] = msg.address.and_then(|p| p.client());
        n = i + 1;
    }
    Ok(n)
}

/// One sendmmsg for every reply of the batch (retried for what the kernel did not take).
fn send<S: Peer>(fd: i32, headers: &mut MultiHeaders<S>, b: &Batch<S>) {
    let mut from = 0;
    while from < b.send_index.len() {
        let pending = &b.send_index[from..];
        let slices: [[io::IoSlice<'_>; 1]; BATCH] = std::array::from_fn(|k| {
            [io::IoSlice::new(
                pending.get(k).map_or(&[][..], |&i| &b.out[i][..]),
            )]
        });
        match sendmmsg(
            fd,
            headers,
            slices[..pending.len()].iter(),
            &b.send_peers[from..],
            [],
            MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(sent) => {
                let sent = sent.count();
                if sent == 0 {
                    return;
                }
                from += sent;
            }
            Err(nix::errno::Errno::EINTR) => {}
            // The send buffer is full: the rest of the batch is dropped, as UDP may, rather
            // than holding the worker (and every query queued behind it).
            Err(nix::errno::Errno::EAGAIN) => return,
            Err(e) => {
                // A bad peer address fails the first message: skip it and go on.
                tracing::debug!(error = %e, "udp send failed");
                from += 1;
            }
        }
    }
}

fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^ (x << 17)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::net::sockopt;

    #[test]
    fn udp_sockets_never_fragment_and_ignore_path_mtu() {
        for s in bind_udp("127.0.0.1:0".parse().expect("v4"), 2).expect("bind v4") {
            assert_eq!(
                sockopt::ip_mtu_discover(&s).expect("read back"),
                sockopt::Ipv4PathMtuDiscovery::PROBE
            );
        }
        // IPv6 may be off on a test machine: check it where ::1 binds.
        if let Ok(v6) = bind_udp("[::1]:0".parse().expect("v6"), 1) {
            assert_eq!(
                sockopt::ipv6_mtu_discover(&v6[0]).expect("read back"),
                sockopt::Ipv6PathMtuDiscovery::OMIT
            );
        }
    }
}
