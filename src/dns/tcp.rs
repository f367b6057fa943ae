//! DNS over TCP (RFC 7766): one tokio task per connection answering length-prefixed
//! messages in order, under the caps of a [`Table`] (all connections, and per client /24 or
//! /56) and three deadlines: idle between messages, receiving a started message, and
//! sending a reply. A client that stops reading is closed by the write deadline, one that
//! dribbles bytes by the read deadline, and an idle one gives way to a new client when a
//! cap is full.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::handler::{Local, TCP_CACHE_SLOTS, Transport, handle};
use super::stats::{DnsStats, TcpClose, WorkerTotals};
use super::wire::HEADER_LEN;
use crate::connections::{Caps, Lease, Table};
use crate::world::SharedWorld;

/// RFC 7766 §6.2.3 asks for an idle timeout "of the order of seconds"; 10 s is Knot's
/// `tcp-idle-timeout` default.
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time to receive the rest of a message once its first byte is in, and to hand one batch
/// of replies to the kernel. Knot's `tcp-io-timeout` is 500 ms, for the same two uses; 2 s
/// lets a 64 KiB answer through TCP slow start on a 300 ms path.
pub const TCP_IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Knot's `tcp-max-clients` default: half of the open files limit, the rest left for UDP
/// sockets, the admin API, probes and zone files.
pub const TCP_FD_SHARE: u64 = 2;
/// Upper bound on connections whatever the open files limit: each costs about 10 KiB of
/// buffers and caches here plus the kernel's socket buffers.
pub const TCP_MAX_CONNECTIONS: usize = 16_384;
/// One client network may hold this fraction of the cap (1/16): RFC 7766 §6.2.3 asks for a
/// per-client limit "much looser" than the one or two connections a client should open
/// (NAT, resolver farms), and an attacker then needs 16 networks to fill the table.
pub const TCP_NETWORK_SHARE: usize = 16;

/// Kernel send buffer of a connection (Linux doubles it for bookkeeping): one message of the
/// largest size (RFC 1035 §4.2.2: 65,535 bytes). Fixed rather than autotuned up to
/// `tcp_wmem` (4 MiB), so that a client that does not read meets the write deadline after
/// one full message instead of parking megabytes of replies in the kernel.
pub const TCP_SEND_BUFFER: usize = 64 * 1024;
/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 4096;
/// Replies are handed to the kernel once this much is pending, or when the input runs dry.
const WRITE_BATCH: usize = 16 * 1024;
/// Messages a connection answers before it lets the other tasks run: a client that
/// pipelines thousands of queries then delays a new client's first answer by one short
/// turn per busy connection, not by its whole backlog.
const MESSAGES_PER_TURN: usize = 16;
/// A connection folds its counters in after this many queries, and when it closes.
const TCP_STATS_FLUSH_QUERIES: u64 = 64;

/// Limits of a TCP listener (RFC 7766 §6.2).
#[derive(Debug, Clone, Copy)]
pub struct TcpLimits {
    /// Between messages.
    pub idle_timeout: Duration,
    /// Receiving a started message; sending replies.
    pub io_timeout: Duration,
    pub caps: Caps,
}

impl TcpLimits {
    /// Limits for `listeners` TCP listeners sharing an open files limit of `fd_limit`.
    pub fn for_fd_limit(fd_limit: u64, listeners: usize) -> TcpLimits {
        let share = fd_limit / TCP_FD_SHARE / listeners.max(1) as u64;
        TcpLimits::with_max_connections(
            usize::try_from(share).map_or(TCP_MAX_CONNECTIONS, |n| n.min(TCP_MAX_CONNECTIONS)),
        )
    }

    /// `max` connections in all, [`TCP_NETWORK_SHARE`] of them per client network.
    pub fn with_max_connections(max: usize) -> TcpLimits {
        TcpLimits {
            idle_timeout: TCP_IDLE_TIMEOUT,
            io_timeout: TCP_IO_TIMEOUT,
            caps: Caps {
                total: max.max(1),
                per_network: (max / TCP_NETWORK_SHARE).max(1),
            },
        }
    }
}

/// Serve TCP on `listener` until `stop` turns true.
pub async fn serve_tcp(
    listener: TcpListener,
    world: SharedWorld,
    stats: Arc<DnsStats>,
    limits: TcpLimits,
    mut stop: watch::Receiver<bool>,
) {
    let table = Table::new(limits.caps);
    stats.register_tcp_table(table.clone());
    let totals = stats.register();
    let name = listener
        .local_addr()
        .map_or_else(|_| "dns-tcp".into(), |a| format!("dns-tcp {a}"));
    let _running = stats.worker_started(name);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors, most likely: let closing connections free some.
                    tracing::warn!(error = %e, "tcp accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let peer = peer.ip().to_canonical();
        let Some(lease) = table.admit(peer) else {
            drop(stream);
            continue;
        };
        let conn = Connection {
            world: world.clone(),
            totals: totals.clone(),
            stats: stats.clone(),
            limits,
            peer,
            lease,
        };
        tokio::spawn(conn.run(stream, stop.clone()));
    }
}

/// One accepted connection.
struct Connection {
    world: SharedWorld,
    totals: Arc<WorkerTotals>,
    stats: Arc<DnsStats>,
    limits: TcpLimits,
    peer: IpAddr,
    lease: Lease,
}

/// Buffers of one connection, allocated once.
struct Buffers {
    /// Received bytes not yet answered: complete messages, then at most one partial one.
    input: Vec<u8>,
    chunk: Vec<u8>,
    /// One reply being built.
    reply: Vec<u8>,
    /// Length-prefixed replies not yet written.
    output: Vec<u8>,
    local: Local,
    seed: u64,
}

impl Buffers {
    /// Give back what one large message grew the buffers to (up to 64 KiB each), so that
    /// idle connections cost [`READ_CHUNK`]-sized buffers, not their largest message.
    fn shrink(&mut self) {
        for v in [&mut self.input, &mut self.reply, &mut self.output] {
            if v.capacity() > 2 * READ_CHUNK {
                v.shrink_to(READ_CHUNK);
            }
        }
    }
}

impl Connection {
    async fn run(self, stream: TcpStream, stop: watch::Receiver<bool>) {
        let mut b = Buffers {
            input: Vec::with_capacity(READ_CHUNK),
            chunk: vec![0; READ_CHUNK],
            reply: Vec::with_capacity(READ_CHUNK),
            output: Vec::with_capacity(READ_CHUNK),
            local: Local::new(TCP_CACHE_SLOTS),
            seed: rand::random::<u64>() | 1,
        };
        let close = self.serve(stream, &mut b, stop).await;
        self.stats.tcp_closed(close);
        b.local
            .stats
            .flush(&self.world.load().snapshot, &self.totals);
    }

    /// Read, answer every complete message in order, write; until a deadline, EOF, a bad
    /// frame, eviction or shutdown.
    async fn serve(
        &self,
        mut stream: TcpStream,
        b: &mut Buffers,
        mut stop: watch::Receiver<bool>,
    ) -> TcpClose {
        let _ = stream.set_nodelay(true);
        let _ = socket2::SockRef::from(&stream).set_send_buffer_size(TCP_SEND_BUFFER);
        let slot = &self.lease.slot;
        // When the first byte of the partial message at the end of `input` arrived.
        let mut partial_since: Option<Instant> = None;
        loop {
            let (consumed, bad_frame) = self.answer_complete(&mut stream, b).await;
            let consumed = match consumed {
                Ok(n) => n,
                Err(close) => return close,
            };
            b.input.drain(..consumed);
            // RFC 7766 §6.2.1: what was read is answered before the connection closes.
            if let Err(close) = self.write_out(&mut stream, &mut b.output).await {
                return close;
            }
            if bad_frame {
                return TcpClose::BadFrame;
            }
            if b.input.is_empty() {
                partial_since = None;
                b.shrink();
                slot.set_idle();
            } else if consumed > 0 || partial_since.is_none() {
                partial_since = Some(Instant::now());
            }
            let wait = match partial_since {
                None => self.limits.idle_timeout,
                Some(t) => self.limits.io_timeout.saturating_sub(t.elapsed()),
            };
            let read = tokio::select! {
                r = tokio::time::timeout(wait, stream.read(&mut b.chunk)) => r,
                () = slot.evicted() => return TcpClose::Evicted,
                _ = stop.changed() => return TcpClose::Shutdown,
            };
            match read {
                Ok(Ok(0)) => return TcpClose::Eof,
                Ok(Ok(n)) => {
                    slot.set_busy();
                    b.input.extend_from_slice(&b.chunk[..n]);
                }
                Ok(Err(_)) => return TcpClose::Error,
                Err(_) if partial_since.is_none() => return TcpClose::Idle,
                Err(_) => return TcpClose::ReadTimeout,
            }
        }
    }

    /// Answer the complete messages at the front of `input` into `output` (writing it out
    /// whenever it grows past [`WRITE_BATCH`]); returns the bytes consumed and whether a
    /// frame too short to be a DNS message ended the run (the framing cannot be trusted
    /// after it).
    async fn answer_complete(
        &self,
        stream: &mut TcpStream,
        b: &mut Buffers,
    ) -> (Result<usize, TcpClose>, bool) {
        let mut at = 0;
        // One world per batch; an Arc, as the batch may wait on a write.
        let world = self.world.load_full();
        let mut answered_in_turn = 0;
        while let Some(head) = b.input.get(at..at + 2) {
            let len = usize::from(u16::from_be_bytes([head[0], head[1]]));
            let Some(msg) = b.input.get(at + 2..at + 2 + len) else {
                break;
            };
            at += 2 + len;
            if len < HEADER_LEN {
                return (Ok(at), true);
            }
            let started = Instant::now();
            b.seed = xorshift(b.seed);
            let answered = handle(
                &world,
                msg,
                &self.peer,
                Transport::Tcp,
                b.seed,
                &mut b.reply,
                &mut b.local,
            )
            .is_some();
            b.local
                .stats
                .response_time(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX));
            if b.local.stats.pending() >= TCP_STATS_FLUSH_QUERIES {
                b.local.stats.flush(&world.snapshot, &self.totals);
            }
            if answered {
                // RFC 1035 §4.2.2: a 2-byte length. The writer keeps replies within it; were
                // one ever longer, sending nothing beats sending a wrapped length.
                match u16::try_from(b.reply.len()) {
                    Ok(len) => {
                        b.output.extend_from_slice(&len.to_be_bytes());
                        b.output.extend_from_slice(&b.reply);
                    }
                    Err(_) => tracing::error!(len = b.reply.len(), "tcp reply too long; not sent"),
                }
            }
            if b.output.len() >= WRITE_BATCH
                && let Err(close) = self.write_out(stream, &mut b.output).await
            {
                return (Err(close), false);
            }
            answered_in_turn += 1;
            if answered_in_turn == MESSAGES_PER_TURN {
                answered_in_turn = 0;
                tokio::task::yield_now().await;
            }
        }
        (Ok(at), false)
    }

    /// Hand `output` to the kernel within the I/O deadline.
    async fn write_out(
        &self,
        stream: &mut TcpStream,
        output: &mut Vec<u8>,
    ) -> Result<(), TcpClose> {
        if output.is_empty() {
            return Ok(());
        }
        match tokio::time::timeout(self.limits.io_timeout, stream.write_all(output)).await {
            Ok(Ok(())) => {
                output.clear();
                Ok(())
            }
            Ok(Err(_)) => Err(TcpClose::Error),
            Err(_) => {
                // Reset rather than leave the unsent replies to the kernel's orphan retries.
                let _ = stream.set_zero_linger();
                Err(TcpClose::WriteTimeout)
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

    #[test]
    fn caps_come_from_the_open_files_limit() {
        let l = TcpLimits::for_fd_limit(4096, 2);
        assert_eq!(
            l.caps,
            Caps {
                total: 1024,
                per_network: 64
            }
        );
        assert_eq!(
            TcpLimits::for_fd_limit(1 << 20, 1).caps.total,
            TCP_MAX_CONNECTIONS
        );
        assert_eq!(TcpLimits::for_fd_limit(8, 1).caps.per_network, 1);
    }
}
