//! Connection caps shared by the TCP listeners (DNS over TCP and the admin API): a cap on
//! all connections, a cap per client network (IPv4 /24, IPv6 /56), and which connection
//! gives way when a cap is reached.
//!
//! RFC 7766 §6.2.3 lets a server limit connections in total and per client network, and
//! asks it to close idle connections first when it runs short. So a new connection over a
//! cap closes the connection that has been idle the longest under that cap (the client's
//! network for the per-network cap, all connections for the global one), and is refused only
//! when every connection under the cap is busy. Busy connections are bounded by their own
//! I/O deadlines, not by eviction.
//!
//! The table is locked on accept and on close only; while answering, a connection flips
//! its own atomic idle mark, which only an accept at a cap reads.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Notify;

/// RFC 7766 §6.2.3 and RFC 7871 §11.1: a client network is its IPv4 /24.
pub const NETWORK_V4_PREFIX: u8 = 24;
/// RFC 7871 §11.1 (and RRL's default in BIND and Knot): an IPv6 client network is its /56.
pub const NETWORK_V6_PREFIX: u8 = 56;

/// The caps of one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Connections in all.
    pub total: usize,
    /// Connections from one client network.
    pub per_network: usize,
}

/// A client network: the key of the per-network cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Network {
    V4(u32),
    V6(u64),
}

impl Network {
    /// The network of `ip` (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn of(ip: IpAddr) -> Network {
        match ip.to_canonical() {
            IpAddr::V4(a) => Network::V4(u32::from(a) & (u32::MAX << (32 - NETWORK_V4_PREFIX))),
            IpAddr::V6(a) => {
                let top = (u128::from(a) >> 64) as u64;
                Network::V6(top & (u64::MAX << (64 - NETWORK_V6_PREFIX)))
            }
        }
    }
}

/// The connection table of a listener.
pub struct Table {
    caps: Caps,
    epoch: Instant,
    inner: Mutex<Inner>,
    /// Connections closed to make room for a new one.
    evicted: AtomicU64,
    /// New connections refused because every connection under the cap was busy.
    refused: AtomicU64,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    total: usize,
    networks: HashMap<Network, Vec<Entry>>,
}

struct Entry {
    id: u64,
    slot: Arc<Slot>,
}

/// What a connection shares with the table: its idle mark and the eviction signal.
pub struct Slot {
    /// Milliseconds since the table's epoch, plus one, at which the connection became
    /// idle; 0 while it is busy.
    idle_since: AtomicU64,
    evict: Notify,
    evicted: std::sync::atomic::AtomicBool,
    epoch: Instant,
}

impl Slot {
    /// The connection waits for the start of a message, with nothing left to write.
    pub fn set_idle(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.idle_since.store(ms + 1, Ordering::Relaxed);
    }

    /// The connection is reading, answering or writing a message.
    pub fn set_busy(&self) {
        self.idle_since.store(0, Ordering::Relaxed);
    }

    /// Resolves once the table has closed this connection to make room.
    pub async fn evicted(&self) {
        self.evict.notified().await;
    }

    /// Whether the table has closed this connection to make room.
    pub fn is_evicted(&self) -> bool {
        self.evicted.load(Ordering::Relaxed)
    }

    fn idle_since(&self) -> Option<u64> {
        Some(self.idle_since.load(Ordering::Relaxed)).filter(|&t| t != 0)
    }
}

/// A connection's place in the table; dropping it frees the place.
pub struct Lease {
    table: Arc<Table>,
    network: Network,
    id: u64,
    pub slot: Arc<Slot>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut inner = self.table.lock();
        inner.remove(self.network, self.id);
    }
}

/// Counters of a table, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableStats {
    pub open: u64,
    pub evicted: u64,
    pub refused: u64,
}

impl Table {
    pub fn new(caps: Caps) -> Arc<Table> {
        Arc::new(Table {
            caps: Caps {
                total: caps.total.max(1),
                per_network: caps.per_network.clamp(1, caps.total.max(1)),
            },
            epoch: Instant::now(),
            inner: Mutex::new(Inner::default()),
            evicted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        })
    }

    pub fn caps(&self) -> Caps {
        self.caps
    }

    /// Admit a connection from `peer`, closing the longest-idle connection under a full cap
    /// to make room; `None` when the cap is full of busy connections. A new connection
    /// counts as idle until its first byte arrives.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Option<Lease> {
        let network = Network::of(peer);
        let mut inner = self.lock();
        let in_network = inner.networks.get(&network).map_or(0, Vec::len);
        let victim = if in_network >= self.caps.per_network {
            Some(inner.longest_idle(Some(network)))
        } else if inner.total >= self.caps.total {
            Some(inner.longest_idle(None))
        } else {
            None
        };
        match victim {
            None => {}
            Some(None) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            Some(Some((net, id))) => {
                if let Some(slot) = inner.remove(net, id) {
                    slot.evicted.store(true, Ordering::Relaxed);
                    slot.evict.notify_one();
                }
                self.evicted.fetch_add(1, Ordering::Relaxed);
            }
        }
        let slot = Arc::new(Slot {
            idle_since: AtomicU64::new(0),
            evict: Notify::new(),
            evicted: Default::default(),
            epoch: self.epoch,
        });
        slot.set_idle();
        inner.next_id += 1;
        let id = inner.next_id;
        inner.total += 1;
        inner.networks.entry(network).or_default().push(Entry {
            id,
            slot: slot.clone(),
        });
        drop(inner);
        Some(Lease {
            table: self.clone(),
            network,
            id,
            slot,
        })
    }

    pub fn stats(&self) -> TableStats {
        TableStats {
            open: self.lock().total as u64,
            evicted: self.evicted.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Nothing panics while holding it; recover the data if something ever did.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Inner {
    /// The connection idle the longest, in `network` or in all.
    fn longest_idle(&self, network: Option<Network>) -> Option<(Network, u64)> {
        let mut oldest: Option<(u64, Network, u64)> = None;
        let mut scan = |net: Network, entries: &[Entry]| {
            for e in entries {
                if let Some(t) = e.slot.idle_since()
                    && oldest.is_none_or(|o| t < o.0)
                {
                    oldest = Some((t, net, e.id));
                }
            }
        };
        match network {
            Some(n) => scan(n, self.networks.get(&n).map_or(&[][..], |v| &v[..])),
            None => self.networks.iter().for_each(|(n, v)| scan(*n, v)),
        }
        oldest.map(|(_, net, id)| (net, id))
    }

    /// Remove a connection (a no-op when it was evicted already).
    fn remove(&mut self, network: Network, id: u64) -> Option<Arc<Slot>> {
        let entries = self.networks.get_mut(&network)?;
        let i = entries.iter().position(|e| e.id == id)?;
        let entry = entries.swap_remove(i);
        if entries.is_empty() {
            self.networks.remove(&network);
        }
        self.total -= 1;
        Some(entry.slot)
    }
}

/// Raise the soft `RLIMIT_NOFILE` to the hard limit and return the limit in force: the caps
/// are sized from it (Knot sizes `tcp-max-clients` from it the same way).
pub fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                tracing::warn!(error = %e, soft, hard, "cannot raise the open files limit");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open files limit");
            FALLBACK_FD_LIMIT
        }
    }
}

/// The open files limit in force (the soft one).
pub fn fd_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit};
    getrlimit(Resource::RLIMIT_NOFILE).map_or(FALLBACK_FD_LIMIT, |(soft, _)| soft)
}

/// The usual soft limit, assumed when the limit cannot be read.
const FALLBACK_FD_LIMIT: u64 = 1024;

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn networks_are_v4_24_and_v6_56() {
        assert_eq!(Network::of(ip("192.0.2.7")), Network::of(ip("192.0.2.200")));
        assert_ne!(Network::of(ip("192.0.2.7")), Network::of(ip("192.0.3.7")));
        assert_eq!(
            Network::of(ip("::ffff:192.0.2.7")),
            Network::of(ip("192.0.2.1"))
        );
        assert_eq!(
            Network::of(ip("2001:db8:0:ff::1")),
            Network::of(ip("2001:db8:0:1::2"))
        );
        assert_ne!(
            Network::of(ip("2001:db8:0:100::1")),
            Network::of(ip("2001:db8::1"))
        );
    }

    #[test]
    fn a_full_network_gives_way_longest_idle_first_and_refuses_when_all_are_busy() {
        let t = Table::new(Caps {
            total: 10,
            per_network: 2,
        });
        let a = t.admit(ip("192.0.2.1")).expect("a");
        std::thread::sleep(std::time::Duration::from_millis(3));
        let b = t.admit(ip("192.0.2.2")).expect("b");
        // c takes a's place: a has been idle the longest.
        let c = t.admit(ip("192.0.2.3")).expect("c");
        assert!(a.slot.is_evicted() && !b.slot.is_evicted());
        assert_eq!(t.stats().open, 2);
        b.slot.set_busy();
        c.slot.set_busy();
        assert!(t.admit(ip("192.0.2.4")).is_none(), "all busy: refused");
        // Another network is not affected.
        let _d = t.admit(ip("198.51.100.1")).expect("d");
        assert_eq!(
            t.stats(),
            TableStats {
                open: 3,
                evicted: 1,
                refused: 1
            }
        );
        drop(a);
        assert_eq!(t.stats().open, 3, "an evicted lease frees nothing twice");
        drop(b);
        assert_eq!(t.stats().open, 2);
        assert!(t.admit(ip("192.0.2.4")).is_some(), "room again");
    }

    #[test]
    fn a_full_table_gives_way_across_networks() {
        let t = Table::new(Caps {
            total: 2,
            per_network: 2,
        });
        let a = t.admit(ip("192.0.2.1")).expect("a");
        std::thread::sleep(std::time::Duration::from_millis(3));
        let b = t.admit(ip("198.51.100.1")).expect("b");
        b.slot.set_busy();
        let c = t.admit(ip("203.0.113.1")).expect("c evicts a");
        assert!(a.slot.is_evicted() && !b.slot.is_evicted());
        let d = t
            .admit(ip("203.0.113.2"))
            .expect("d evicts c, the only idle one");
        assert!(c.slot.is_evicted());
        d.slot.set_busy();
        assert!(t.admit(ip("203.0.113.3")).is_none(), "all busy: refused");
    }
}
