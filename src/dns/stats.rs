//! DNS counters without a lock shared between cores: each worker counts into its own
//! [`LocalStats`] by snapshot ids, and now and then folds them, by name, into its own
//! [`WorkerTotals`], which `/metrics` sums over workers.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::rrl::Verdict;
use crate::connections::{Table, TableStats};
use crate::model::{PolicyId, PoolId, Snapshot, ZoneId, rtype};

/// Upper bounds (seconds) of the per-query response time histogram: 1 µs (a cached
/// answer on a release build takes a few) to 10 ms (a first DNSSEC signature, a worker
/// preempted on a busy core). Fixed, so counting one query is an index and an add.
pub const RESPONSE_TIME_BUCKETS: [f64; 12] = [
    0.000_001,
    0.000_002_5,
    0.000_005,
    0.000_01,
    0.000_025,
    0.000_05,
    0.000_1,
    0.000_25,
    0.000_5,
    0.001,
    0.005,
    0.01,
];

/// [`RESPONSE_TIME_BUCKETS`] in nanoseconds: a query is counted with integer compares.
const RESPONSE_TIME_BUCKETS_NS: [u64; RESPONSE_TIME_BUCKETS.len()] = {
    let mut ns = [0; RESPONSE_TIME_BUCKETS.len()];
    let mut i = 0;
    while i < ns.len() {
        ns[i] = (RESPONSE_TIME_BUCKETS[i] * 1e9 + 0.5) as u64;
        i += 1;
    }
    ns
};

/// A worker's counters since its last flush, keyed by ids of the snapshot it answered from.
#[derive(Default)]
pub struct LocalStats {
    /// (packed zone/qtype/rcode, count); a handful of keys, most recent first.
    queries: Vec<(u64, u64)>,
    /// (packed policy/pool/fail-open, count).
    answers: Vec<(u64, u64)>,
    buckets: [u64; RESPONSE_TIME_BUCKETS.len() + 1],
    /// Nanoseconds, summed as integers on the hot path.
    time_sum_ns: u64,
    pending: u64,
    rrl: RrlCounts,
    /// Queries whose answering panicked (answered SERVFAIL instead).
    panics: u64,
    /// Responses replayed from the packet cache.
    replayed: u64,
    dnssec: Dnssec,
    /// Signatures in this worker's cache, when it reports them.
    dnssec_cache: Option<u64>,
}

/// DNSSEC counters (SPEC §11).
#[derive(Default, Clone, Copy, Debug)]
pub struct Dnssec {
    /// RRSIGs computed.
    pub signatures: u64,
    /// RRSIGs taken from a worker's cache.
    pub cache_hits: u64,
    /// RRSIGs over the NSEC of a nonexistent name (one per unique name: the cost a
    /// random-subdomain flood imposes).
    pub negative_signatures: u64,
    /// Signatures held in the UDP workers' caches.
    pub cache_entries: u64,
}

/// Responses over the RRL limit (SPEC §9).
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub struct RrlCounts {
    /// Over the limit, whatever was done (log-only included).
    pub limited: u64,
    /// Sent as TC=1 with no records.
    pub slipped: u64,
    /// Not sent.
    pub dropped: u64,
}

impl LocalStats {
    pub fn query(&mut self, zone: Option<ZoneId>, qtype: u16, rcode: u16) {
        let zone = zone.map_or(NO_ZONE, |z| z.0);
        bump(
            &mut self.queries,
            u64::from(zone) << 32 | u64::from(qtype) << 16 | u64::from(rcode),
        );
        self.pending += 1;
    }

    pub fn answer(&mut self, policy: PolicyId, pool: PoolId, fail_open: bool) {
        bump(
            &mut self.answers,
            u64::from(policy.0) << 32 | u64::from(pool.0) << 1 | u64::from(fail_open),
        );
    }

    /// A response replayed from the packet cache (the query itself is counted by `query`).
    pub fn replayed(&mut self) {
        self.replayed += 1;
    }

    /// A query whose answering panicked.
    pub fn panic(&mut self) {
        self.panics += 1;
        self.pending += 1;
    }

    pub fn dnssec_signed(&mut self, negative: bool) {
        self.dnssec.signatures += 1;
        self.dnssec.negative_signatures += u64::from(negative);
    }

    pub fn dnssec_hit(&mut self) {
        self.dnssec.cache_hits += 1;
    }

    /// The worker's cache now holds `n` signatures.
    pub fn dnssec_cache(&mut self, n: u64) {
        self.dnssec_cache = Some(n);
    }

    /// What rate limiting did with one response.
    pub fn rrl(&mut self, verdict: Verdict) {
        let c = &mut self.rrl;
        match verdict {
            Verdict::Send => return,
            Verdict::Logged => {}
            Verdict::Slip => c.slipped += 1,
            Verdict::Drop => c.dropped += 1,
        }
        c.limited += 1;
    }

    /// One query's response time in nanoseconds, into a fixed bucket of this worker's own
    /// counters.
    pub fn response_time(&mut self, ns: u64) {
        self.response_times(ns, 1);
    }

    /// The response times of `count` queries that took `ns` nanoseconds each (the queries of
    /// one UDP batch, whose replies are sent together).
    pub fn response_times(&mut self, ns: u64, count: u64) {
        let i = RESPONSE_TIME_BUCKETS_NS
            .iter()
            .position(|b| ns <= *b)
            .unwrap_or(RESPONSE_TIME_BUCKETS.len());
        self.buckets[i] += count;
        self.time_sum_ns = self.time_sum_ns.saturating_add(ns.saturating_mul(count));
    }

    /// Queries counted since the last flush.
    pub fn pending(&self) -> u64 {
        self.pending
    }

    /// Responses replayed from the packet cache, not yet folded in.
    #[cfg(test)]
    pub(super) fn replayed_count(&self) -> u64 {
        self.replayed
    }

    /// The (zone, qtype, rcode) counts not yet folded in, most recent first.
    #[cfg(test)]
    pub(super) fn counted_queries(&self) -> &[(u64, u64)] {
        &self.queries
    }

    /// The (policy, pool, fail-open) counts not yet folded in.
    #[cfg(test)]
    pub(super) fn counted_answers(&self) -> &[(u64, u64)] {
        &self.answers
    }

    /// Fold into `totals`, naming ids with the snapshot they came from.
    pub fn flush(&mut self, snap: &Snapshot, totals: &WorkerTotals) {
        let mut t = totals.0.lock().expect("stats lock is never poisoned");
        for (key, n) in self.queries.drain(..) {
            let zone = (key >> 32) as u32;
            let zone = if zone == NO_ZONE {
                String::new()
            } else {
                snap.zone(ZoneId(zone)).origin.clone()
            };
            let (qtype, rcode) = ((key >> 16) as u16, key as u16);
            *t.queries
                .entry((zone, rtype::name(qtype).into_owned(), rcode_name(rcode)))
                .or_default() += n;
        }
        for (key, n) in self.answers.drain(..) {
            let p = snap.policy(PolicyId((key >> 32) as u32));
            let (pool, fail_open) = (PoolId((key as u32) >> 1), key & 1 == 1);
            let key = (
                snap.zone(p.zone).origin.clone(),
                p.name.clone(),
                snap.pool(pool).name.clone(),
            );
            *t.answers.entry(key.clone()).or_default() += n;
            if fail_open {
                *t.fail_open.entry(key).or_default() += n;
            }
        }
        for (d, s) in t.buckets.iter_mut().zip(self.buckets.iter_mut()) {
            *d += std::mem::take(s);
        }
        t.time_sum += std::mem::take(&mut self.time_sum_ns) as f64 / 1e9;
        let d = std::mem::take(&mut self.dnssec);
        t.dnssec.signatures += d.signatures;
        t.dnssec.cache_hits += d.cache_hits;
        t.dnssec.negative_signatures += d.negative_signatures;
        if let Some(n) = self.dnssec_cache {
            t.dnssec.cache_entries = n;
        }
        t.panics += std::mem::take(&mut self.panics);
        t.replayed += std::mem::take(&mut self.replayed);
        t.rrl.add(std::mem::take(&mut self.rrl));
        self.pending = 0;
    }
}

/// Zone id of queries answered by no zone (REFUSED, FORMERR ...).
const NO_ZONE: u32 = u32::MAX;

/// Count one `key` in a short list kept in most-recently-used order.
fn bump(list: &mut Vec<(u64, u64)>, key: u64) {
    match list.iter().position(|(k, _)| *k == key) {
        Some(0) => list[0].1 += 1,
        Some(i) => {
            list[i].1 += 1;
            list.swap(0, i);
        }
        None => list.insert(0, (key, 1)),
    }
}

/// Counters by name: (zone, qtype, rcode) and (zone, policy, pool).
#[derive(Default, Clone)]
pub struct Totals {
    pub queries: BTreeMap<(String, String, &'static str), u64>,
    pub answers: BTreeMap<(String, String, String), u64>,
    pub fail_open: BTreeMap<(String, String, String), u64>,
    /// Non-cumulative counts per bucket of [`RESPONSE_TIME_BUCKETS`], then +Inf.
    pub buckets: [u64; RESPONSE_TIME_BUCKETS.len() + 1],
    pub time_sum: f64,
    pub dnssec: Dnssec,
    /// Queries whose answering panicked and got SERVFAIL.
    pub panics: u64,
    /// UDP responses replayed from the workers' packet caches.
    pub replayed: u64,
    pub rrl: RrlCounts,
}

impl RrlCounts {
    fn add(&mut self, other: RrlCounts) {
        self.limited += other.limited;
        self.slipped += other.slipped;
        self.dropped += other.dropped;
    }
}

impl Totals {
    pub fn add(&mut self, other: &Totals) {
        for (k, v) in &other.queries {
            *self.queries.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.answers {
            *self.answers.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.fail_open {
            *self.fail_open.entry(k.clone()).or_default() += v;
        }
        for (d, s) in self.buckets.iter_mut().zip(other.buckets) {
            *d += s;
        }
        self.time_sum += other.time_sum;
        self.dnssec.signatures += other.dnssec.signatures;
        self.dnssec.cache_hits += other.dnssec.cache_hits;
        self.dnssec.negative_signatures += other.dnssec.negative_signatures;
        self.dnssec.cache_entries += other.dnssec.cache_entries;
        self.panics += other.panics;
        self.replayed += other.replayed;
        self.rrl.add(other.rrl);
    }
}

/// One worker's totals: locked by its worker once per flush and by a scrape.
#[derive(Default)]
pub struct WorkerTotals(pub Mutex<Totals>);

/// Every worker's totals, for `/metrics`.
#[derive(Default)]
pub struct DnsStats {
    workers: Mutex<Vec<Arc<WorkerTotals>>>,
    /// DNS workers (UDP threads, TCP accept loops) that have stopped, for `/healthz`.
    stopped: Arc<AtomicUsize>,
    /// The connection tables of the TCP listeners.
    tcp_tables: Mutex<Vec<Arc<Table>>>,
    /// TCP connections closed, by [`TcpClose`].
    tcp_closed: [AtomicU64; TcpClose::ALL.len()],
    /// The last sample of the negative-signature counter, for its per-second rate.
    negative_rate: Mutex<RateWindow>,
}

/// A counter's rate between two scrapes at least [`RATE_WINDOW`] apart.
#[derive(Default)]
struct RateWindow {
    last: Option<(std::time::Instant, u64)>,
    rate: f64,
}

/// Scrapes closer together than this keep the previous rate (a burst of scrapes would
/// otherwise divide by almost nothing).
const RATE_WINDOW: Duration = Duration::from_secs(1);

/// Why a TCP connection closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpClose {
    /// The client closed it.
    Eof,
    /// A socket error (reset by the client, mostly).
    Error,
    /// The server is stopping.
    Shutdown,
    /// No message began within the idle timeout.
    Idle,
    /// A started message did not arrive in full within the I/O timeout.
    ReadTimeout,
    /// Replies were not taken within the I/O timeout (a client that does not read).
    WriteTimeout,
    /// Closed to make room for a new connection under a full cap.
    Evicted,
    /// A frame too short to be a DNS message.
    BadFrame,
}

impl TcpClose {
    pub const ALL: [TcpClose; 8] = [
        TcpClose::Eof,
        TcpClose::Error,
        TcpClose::Shutdown,
        TcpClose::Idle,
        TcpClose::ReadTimeout,
        TcpClose::WriteTimeout,
        TcpClose::Evicted,
        TcpClose::BadFrame,
    ];

    /// The `reason` label of `meridian_tcp_closed_total`.
    pub fn label(self) -> &'static str {
        match self {
            TcpClose::Eof => "eof",
            TcpClose::Error => "error",
            TcpClose::Shutdown => "shutdown",
            TcpClose::Idle => "idle",
            TcpClose::ReadTimeout => "read_timeout",
            TcpClose::WriteTimeout => "write_timeout",
            TcpClose::Evicted => "evicted",
            TcpClose::BadFrame => "bad_frame",
        }
    }
}

/// TCP connection counters summed over listeners.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TcpTotals {
    pub table: TableStats,
    /// Closed connections by reason, in the order of [`TcpClose::ALL`].
    pub closed: [u64; TcpClose::ALL.len()],
}

/// Held by a DNS worker while it runs. Dropping it, when the worker returns or unwinds from
/// a panic, counts the worker as stopped; a panic is also logged, so that no worker dies
/// silently.
pub struct WorkerRunning {
    name: String,
    stopped: Arc<AtomicUsize>,
}

impl Drop for WorkerRunning {
    fn drop(&mut self) {
        self.stopped.fetch_add(1, Ordering::Relaxed);
        if std::thread::panicking() {
            tracing::error!(worker = %self.name, "dns worker died of a panic; /healthz answers 503");
        }
    }
}

impl DnsStats {
    /// A DNS worker starts: it holds the token for as long as it runs.
    pub fn worker_started(&self, name: String) -> WorkerRunning {
        WorkerRunning {
            name,
            stopped: self.stopped.clone(),
        }
    }

    /// DNS workers no longer running (dead, or stopped at shutdown).
    pub fn workers_stopped(&self) -> usize {
        self.stopped.load(Ordering::Relaxed)
    }

    /// Unique negative signatures per second, given the counter's total now: the rate since
    /// the previous sample (taken at least [`RATE_WINDOW`] before).
    pub fn negative_signature_rate(&self, total: u64) -> f64 {
        let mut w = self
            .negative_rate
            .lock()
            .expect("stats lock is never poisoned");
        let now = std::time::Instant::now();
        match w.last {
            Some((at, n)) if now.duration_since(at) >= RATE_WINDOW => {
                w.rate = total.saturating_sub(n) as f64 / now.duration_since(at).as_secs_f64();
                w.last = Some((now, total));
            }
            Some(_) => {}
            None => w.last = Some((now, total)),
        }
        w.rate
    }

    /// A new worker's own totals.
    pub fn register(&self) -> Arc<WorkerTotals> {
        let t = Arc::new(WorkerTotals::default());
        self.workers
            .lock()
            .expect("stats lock is never poisoned")
            .push(t.clone());
        t
    }

    /// A TCP listener's connection table, for its counters.
    pub fn register_tcp_table(&self, table: Arc<Table>) {
        self.tcp_tables
            .lock()
            .expect("stats lock is never poisoned")
            .push(table);
    }

    /// Count a closed TCP connection.
    pub fn tcp_closed(&self, why: TcpClose) {
        self.tcp_closed[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// TCP counters of every listener.
    pub fn tcp_totals(&self) -> TcpTotals {
        let mut t = TcpTotals::default();
        for table in self
            .tcp_tables
            .lock()
            .expect("stats lock is never poisoned")
            .iter()
        {
            let s = table.stats();
            t.table.open += s.open;
            t.table.evicted += s.evicted;
            t.table.refused += s.refused;
        }
        for (d, s) in t.closed.iter_mut().zip(&self.tcp_closed) {
            *d = s.load(Ordering::Relaxed);
        }
        t
    }

    /// The sum over workers.
    pub fn totals(&self) -> Totals {
        let mut sum = Totals::default();
        for w in self
            .workers
            .lock()
            .expect("stats lock is never poisoned")
            .iter()
        {
            sum.add(&w.0.lock().expect("stats lock is never poisoned"));
        }
        sum
    }
}

pub fn rcode_name(rcode: u16) -> &'static str {
    match rcode {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        9 => "NOTAUTH",
        16 => "BADVERS",
        _ => "OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_time_falls_in_the_first_bucket_that_holds_it() {
        assert_eq!(RESPONSE_TIME_BUCKETS_NS[0], 1_000);
        assert_eq!(RESPONSE_TIME_BUCKETS_NS[1], 2_500);
        assert_eq!(RESPONSE_TIME_BUCKETS_NS[11], 10_000_000);
        let mut s = LocalStats::default();
        for ns in [1_000, 1_001, 2_500, 10_000_000, 10_000_001] {
            s.response_time(ns);
        }
        // A batch of 16 whose replies were ready 2 µs after it arrived.
        s.response_times(2_000, 16);
        let mut want = [0; RESPONSE_TIME_BUCKETS.len() + 1];
        (want[0], want[1], want[11], want[12]) = (1, 2 + 16, 1, 1);
        assert_eq!(s.buckets, want);
        assert_eq!(
            s.time_sum_ns,
            1_000 + 1_001 + 2_500 + 10_000_000 + 10_000_001 + 16 * 2_000
        );
    }
}
