//! Response rate limiting over UDP (SPEC §9), in the BIND/NSD model. Each response is counted
//! in a bucket keyed by the client's prefix (the packet source cut to /24 or /56, never the
//! ECS address, which anyone can write) and the response's [`Class`]: answers per (qname,
//! qtype), NODATA per qname, NXDOMAIN, referrals and errors per zone, wildcard answers per
//! zone and wildcard. A bucket earns `rate` responses a second up to one second's worth (the
//! burst) and pays one per response, limited or not, down to `WINDOW` seconds of debt: a
//! flood that keeps going stays limited, one that stops is forgiven within the window. Over
//! the limit every `slip`-th response is a TC=1 reply with no records (a real resolver
//! retries over TCP, which is never limited); the others are dropped.
//!
//! Each UDP worker owns a [`Limiter`]: a fixed table, no lock, no allocation per response.
//! With SO_REUSEPORT the kernel sends each flow (source address and port) to one worker, so a
//! resolver that keeps its port meets one table, while a flood from many ports of one /24
//! meets every worker's: such a prefix may get up to `workers × rate` responses a second
//! before every table limits it. Keys are hashed with a seed drawn at start (SipHash), so an
//! attacker cannot aim keys at one slot to evict a victim's bucket.

use std::hash::{BuildHasher, Hasher, RandomState};
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use serde::Deserialize;

use crate::model::{Snapshot, ZoneId};

/// BIND `responses-per-second` is off by default; SPEC §9 sets 20, which a caching resolver
/// (asking each name once per TTL) never reaches.
pub const DEFAULT_RATE: u32 = 20;
/// BIND's largest `responses-per-second` (`DNS_RRL_MAX_RATE`); keeps the bucket arithmetic
/// in `i32`.
pub const MAX_RATE: u32 = 1000;
/// BIND and NSD default: every second limited response slips (RFC-less, ISC's RRL paper).
pub const DEFAULT_SLIP: u8 = 2;
/// BIND's largest `slip`.
pub const MAX_SLIP: u8 = 10;
/// BIND `ipv4-prefix-length` and NSD `rrl-ipv4-prefix-length` default.
pub const DEFAULT_IPV4_PREFIX: u8 = 24;
/// BIND `ipv6-prefix-length` default (NSD uses /64); SPEC §9 says /56.
pub const DEFAULT_IPV6_PREFIX: u8 = 56;
/// BIND `window` default: a bucket's debt is capped at this many seconds of its rate, and a
/// bucket untouched this long starts afresh.
const WINDOW: Duration = Duration::from_secs(15);
/// Buckets per worker: BIND's default `max-table-size` is 20,000 entries; a power of two near
/// it (about 400 KB per worker).
pub const TABLE_ENTRIES: usize = 16384;
/// Entries per set: a key may sit in any of these slots, the oldest one is evicted.
const WAYS: usize = 4;
/// Sets of the table.
const SETS: usize = TABLE_ENTRIES / WAYS;
/// A bucket's balance is in thousandths of a response, so that credit accrues per millisecond.
const MILLI: i32 = 1000;
/// At most one "limiting" log line per worker this often (the counters have the rest).
const LOG_EVERY: Duration = Duration::from_secs(1);

/// `--rrl on|off|log-only`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Limit: slip or drop what is over the rate.
    #[default]
    On,
    /// No rate limiting at all.
    Off,
    /// Count and log what would be limited, send everything.
    LogOnly,
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "on" => Ok(Mode::On),
            "off" => Ok(Mode::Off),
            "log-only" => Ok(Mode::LogOnly),
            _ => Err(format!("\"{s}\": expected on, off or log-only")),
        }
    }
}

/// RRL settings (SPEC §9), resolved and checked by `settings`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub mode: Mode,
    /// Responses per second per bucket, 1 to [`MAX_RATE`].
    pub rate: u32,
    /// 0: drop every limited response; n: every n-th one slips (at most [`MAX_SLIP`]).
    pub slip: u8,
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    /// Sources never limited.
    pub exempt: Vec<IpNet>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            mode: Mode::On,
            rate: DEFAULT_RATE,
            slip: DEFAULT_SLIP,
            ipv4_prefix: DEFAULT_IPV4_PREFIX,
            ipv6_prefix: DEFAULT_IPV6_PREFIX,
            exempt: Vec::new(),
        }
    }
}

impl Config {
    /// No rate limiting (the generic test harness, benchmarks from one address).
    pub fn off() -> Config {
        Config {
            mode: Mode::Off,
            ..Config::default()
        }
    }

    /// Why these values cannot be used, if they cannot.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_RATE).contains(&self.rate) {
            return Err(format!(
                "rrl rate {}: expected 1 to {MAX_RATE} responses per second (use --rrl off to disable)",
                self.rate
            ));
        }
        if self.slip > MAX_SLIP {
            return Err(format!("rrl slip {}: expected 0 to {MAX_SLIP}", self.slip));
        }
        if self.ipv4_prefix > 32 {
            return Err(format!(
                "rrl ipv4 prefix {}: expected 0 to 32",
                self.ipv4_prefix
            ));
        }
        if self.ipv6_prefix > 128 {
            return Err(format!(
                "rrl ipv6 prefix {}: expected 0 to 128",
                self.ipv6_prefix
            ));
        }
        Ok(())
    }
}

/// What a response is, for its bucket (SPEC §9). The handler says it; nothing re-parses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Records for the question: a bucket per (qname, qtype).
    Answer { qtype: u16 },
    /// NOERROR without records: a bucket per qname.
    Nodata,
    /// A bucket per zone: random names share it.
    Nxdomain(ZoneId),
    /// A bucket per zone.
    Referral(ZoneId),
    /// Synthesized from `*.<encloser>`: a bucket per zone and wildcard, the closest encloser
    /// being the last `encloser_len` octets of the qname.
    Wildcard { zone: ZoneId, encloser_len: u8 },
    /// SERVFAIL in a zone, or REFUSED, FORMERR, NOTIMP, BADVERS outside every zone (`None`):
    /// a bucket per zone, one for all of the latter.
    Error(Option<ZoneId>),
}

/// What to do with one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the rate, exempt, or RRL off: send it.
    Send,
    /// Over the rate in log-only mode: sent anyway, counted as limited.
    Logged,
    /// Over the rate: send a TC=1 reply with no records instead.
    Slip,
    /// Over the rate: send nothing.
    Drop,
}

/// What every worker of a server shares: the settings and the hash seed.
#[derive(Debug, Clone)]
pub struct Shared {
    config: Arc<Config>,
    seed: RandomState,
}

impl Shared {
    /// The settings, with a hash seed drawn now for the whole process.
    pub fn new(config: Config) -> Shared {
        Shared {
            config: Arc::new(config),
            seed: RandomState::new(),
        }
    }

    /// A worker's limiter, or `None` when RRL is off.
    pub fn limiter(&self) -> Option<Limiter> {
        (self.config.mode != Mode::Off).then(|| Limiter {
            shared: self.clone(),
            sets: vec![[Entry::default(); WAYS]; SETS].into_boxed_slice(),
            epoch: Instant::now(),
            now_ms: 0,
            next_log_ms: 0,
        })
    }
}

/// One bucket.
#[derive(Debug, Default, Clone, Copy)]
struct Entry {
    /// Keyed hash of (prefix, class, name); 0 marks a free slot.
    key: u64,
    /// Milliseconds since the limiter started, at the last response (0: free slot).
    stamp_ms: u64,
    /// Responses owed or in hand, in thousandths.
    balance: i32,
    /// Limited responses since the last slip.
    slips: u8,
}

/// A worker's table of buckets.
pub struct Limiter {
    shared: Shared,
    sets: Box<[[Entry; WAYS]]>,
    epoch: Instant,
    now_ms: u64,
    next_log_ms: u64,
}

impl Limiter {
    /// The time of the batch at hand (one clock read per batch).
    pub fn tick(&mut self, now: Instant) {
        let ms = now.saturating_duration_since(self.epoch).as_millis();
        self.now_ms = u64::try_from(ms).unwrap_or(u64::MAX);
    }

    /// Count one UDP response from `src` and say what to do with it. `qname` is the
    /// lowercased question name, `snap` the snapshot the response came from.
    pub fn check(&mut self, src: IpAddr, class: Class, qname: &[u8], snap: &Snapshot) -> Verdict {
        let config = &*self.shared.config;
        if config.exempt.iter().any(|net| net.contains(&src)) {
            return Verdict::Send;
        }
        let prefix = Prefix::of(src, config);
        let key = self.key(prefix, class, qname, snap);
        let (rate, slip, mode) = (config.rate, config.slip, config.mode);
        let now = self.now_ms;
        let entry = self.entry(key, rate);
        let was_limited = entry.balance < 0;
        if !debit(entry, now, rate) {
            return Verdict::Send;
        }
        let verdict = match mode {
            Mode::On => slip_or_drop(entry, slip),
            Mode::LogOnly | Mode::Off => Verdict::Logged,
        };
        if !was_limited {
            self.log_start(prefix, class);
        }
        verdict
    }

    /// The bucket of `key`: found in its set, or the set's oldest slot made into a fresh one.
    fn entry(&mut self, key: u64, rate: u32) -> &mut Entry {
        let now = self.now_ms;
        let set = &mut self.sets[(key as usize) % SETS];
        let at = set.iter().position(|e| e.key == key).unwrap_or_else(|| {
            let oldest = (0..WAYS)
                .min_by_key(|&i| set[i].stamp_ms)
                .expect("a set has slots");
            set[oldest] = Entry {
                key,
                stamp_ms: now,
                balance: burst(rate),
                slips: 0,
            };
            oldest
        });
        &mut set[at]
    }

    /// The keyed hash of a bucket: prefix, class, and the name the class counts by.
    fn key(&self, prefix: Prefix, class: Class, qname: &[u8], snap: &Snapshot) -> u64 {
        let mut h = self.shared.seed.build_hasher();
        h.write_u8(u8::from(prefix.v6));
        h.write_u128(prefix.bits);
        h.write_u8(prefix.len);
        let zone_name = |z: ZoneId| -> &[u8] { &snap.zone(z).origin_wire };
        match class {
            Class::Answer { qtype } => {
                h.write_u8(0);
                h.write_u16(qtype);
                h.write(qname);
            }
            Class::Nodata => {
                h.write_u8(1);
                h.write(qname);
            }
            Class::Nxdomain(z) => {
                h.write_u8(2);
                h.write(zone_name(z));
            }
            Class::Referral(z) => {
                h.write_u8(3);
                h.write(zone_name(z));
            }
            Class::Wildcard { zone, encloser_len } => {
                h.write_u8(4);
                h.write(zone_name(zone));
                let from = qname.len().saturating_sub(usize::from(encloser_len));
                h.write(&qname[from..]);
            }
            Class::Error(zone) => {
                h.write_u8(5);
                h.write(zone.map_or(&[][..], zone_name));
            }
        }
        // 0 marks a free slot.
        h.finish().max(1)
    }

    /// One line when a bucket starts being limited, at most one per worker per
    /// [`LOG_EVERY`]; the counters have the rest.
    fn log_start(&mut self, prefix: Prefix, class: Class) {
        if self.now_ms < self.next_log_ms {
            return;
        }
        self.next_log_ms = self.now_ms + LOG_EVERY.as_millis() as u64;
        tracing::info!(
            client = %prefix,
            class = ?class,
            mode = ?self.shared.config.mode,
            "rrl: responses over the rate limit"
        );
    }
}

/// A client's source prefix: the address cut to the configured length.
#[derive(Debug, Clone, Copy)]
struct Prefix {
    v6: bool,
    /// The address bits left of `len` (IPv4 in the low 32 bits).
    bits: u128,
    len: u8,
}

impl Prefix {
    fn of(src: IpAddr, config: &Config) -> Prefix {
        match src.to_canonical() {
            IpAddr::V4(a) => {
                let len = config.ipv4_prefix.min(32);
                let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                Prefix {
                    v6: false,
                    bits: u128::from(u32::from(a) & mask),
                    len,
                }
            }
            IpAddr::V6(a) => {
                let len = config.ipv6_prefix.min(128);
                let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                Prefix {
                    v6: true,
                    bits: u128::from(a) & mask,
                    len,
                }
            }
        }
    }
}

impl std::fmt::Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.v6 {
            write!(f, "{}/{}", std::net::Ipv6Addr::from(self.bits), self.len)
        } else {
            write!(
                f,
                "{}/{}",
                std::net::Ipv4Addr::from(self.bits as u32),
                self.len
            )
        }
    }
}

/// Credit `entry` for the time since its last response, debit one response; true when it
/// is over the limit.
fn debit(entry: &mut Entry, now_ms: u64, rate: u32) -> bool {
    let age = now_ms.saturating_sub(entry.stamp_ms);
    if age >= WINDOW.as_millis() as u64 {
        entry.balance = burst(rate);
        entry.slips = 0;
    } else {
        // age < 15,000 ms and rate ≤ 1,000: at most 1.5e7 thousandths, well inside i32.
        let credit = age as i32 * rate as i32;
        entry.balance = entry.balance.saturating_add(credit).min(burst(rate));
    }
    entry.stamp_ms = now_ms;
    entry.balance -= MILLI;
    if entry.balance >= 0 {
        return false;
    }
    let floor = -(WINDOW.as_secs() as i32) * burst(rate);
    entry.balance = entry.balance.max(floor);
    true
}

/// The most a bucket holds: one second of its rate (BIND's cap), in thousandths. The rate is
/// at most [`MAX_RATE`], so this cannot overflow.
fn burst(rate: u32) -> i32 {
    rate as i32 * MILLI
}

/// Every `slip`-th limited response of a bucket slips, the rest are dropped.
fn slip_or_drop(entry: &mut Entry, slip: u8) -> Verdict {
    if slip == 0 {
        return Verdict::Drop;
    }
    entry.slips += 1;
    if entry.slips >= slip {
        entry.slips = 0;
        Verdict::Slip
    } else {
        Verdict::Drop
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: u16 = 1;
    const AAAA: u16 = 28;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn limiter(config: Config) -> Limiter {
        Shared::new(config).limiter().expect("rrl is on")
    }

    /// `n` answers to `src` for `qname`/A at the limiter's current time.
    fn ask(l: &mut Limiter, src: &str, qname: &[u8], n: usize) -> Vec<Verdict> {
        let snap = Snapshot::default();
        (0..n)
            .map(|_| l.check(ip(src), Class::Answer { qtype: A }, qname, &snap))
            .collect()
    }

    fn count(v: &[Verdict], what: Verdict) -> usize {
        v.iter().filter(|x| **x == what).count()
    }

    fn at(l: &mut Limiter, ms: u64) {
        l.tick(l.epoch + Duration::from_millis(ms));
    }

    #[test]
    fn a_bucket_sends_its_burst_then_slips_every_second_limited_response() {
        let mut l = limiter(Config::default());
        let v = ask(&mut l, "192.0.2.1", b"\x03www\x00", 60);
        assert!(v[..20].iter().all(|x| *x == Verdict::Send), "{v:?}");
        let limited = &v[20..];
        assert_eq!(count(limited, Verdict::Send), 0, "{v:?}");
        for pair in limited.chunks(2) {
            assert_eq!(pair, [Verdict::Drop, Verdict::Slip]);
        }
    }

    #[test]
    fn credit_accrues_at_the_rate() {
        let mut l = limiter(Config::default());
        ask(&mut l, "192.0.2.1", b"\x01a\x00", 20);
        // 20/s is one response per 50 ms: a client at that pace is never limited.
        for step in 1..=100u64 {
            at(&mut l, step * 50);
            assert_eq!(ask(&mut l, "192.0.2.1", b"\x01a\x00", 1), [Verdict::Send]);
        }
        // Faster than that, it is.
        at(&mut l, 5_030);
        assert_ne!(ask(&mut l, "192.0.2.1", b"\x01a\x00", 1), [Verdict::Send]);
    }

    #[test]
    fn a_flood_stays_limited_while_it_lasts_and_is_forgiven_after_the_window() {
        let mut l = limiter(Config::default());
        let mut sent = 0;
        // 5,000 responses a second for 10 s: five a millisecond.
        for ms in 0..10_000u64 {
            at(&mut l, ms);
            sent += count(&ask(&mut l, "192.0.2.1", b"\x01a\x00", 5), Verdict::Send);
        }
        assert_eq!(sent, 20, "only the burst goes out");
        // Debt is paid at the rate: a flood that stops is forgiven within WINDOW.
        at(&mut l, 10_000 + WINDOW.as_millis() as u64);
        assert_eq!(ask(&mut l, "192.0.2.1", b"\x01a\x00", 1), [Verdict::Send]);
    }

    #[test]
    fn slip_zero_drops_all_and_slip_one_slips_all() {
        for (slip, expect) in [(0, Verdict::Drop), (1, Verdict::Slip)] {
            let mut l = limiter(Config {
                slip,
                ..Config::default()
            });
            let v = ask(&mut l, "192.0.2.1", b"\x01a\x00", 40);
            assert!(v[20..].iter().all(|x| *x == expect), "slip {slip}: {v:?}");
        }
        let mut l = limiter(Config {
            slip: MAX_SLIP,
            ..Config::default()
        });
        let v = ask(
            &mut l,
            "192.0.2.1",
            b"\x01a\x00",
            20 + 10 * usize::from(MAX_SLIP),
        );
        assert_eq!(count(&v, Verdict::Slip), 10);
    }

    #[test]
    fn buckets_are_per_ipv4_prefix() {
        let mut l = limiter(Config::default());
        ask(&mut l, "192.0.2.1", b"\x01a\x00", 20);
        // Same /24: the same bucket, already empty.
        assert_eq!(
            count(&ask(&mut l, "192.0.2.254", b"\x01a\x00", 2), Verdict::Send),
            0
        );
        // Another /24: its own.
        assert_eq!(
            count(&ask(&mut l, "192.0.3.1", b"\x01a\x00", 20), Verdict::Send),
            20
        );
        let mut l = limiter(Config {
            ipv4_prefix: 32,
            ..Config::default()
        });
        ask(&mut l, "192.0.2.1", b"\x01a\x00", 20);
        assert_eq!(
            count(&ask(&mut l, "192.0.2.2", b"\x01a\x00", 20), Verdict::Send),
            20
        );
    }

    #[test]
    fn buckets_are_per_ipv6_prefix_of_56_bits() {
        let mut l = limiter(Config::default());
        ask(&mut l, "2001:db8:0:1::1", b"\x01a\x00", 20);
        // 2001:db8:0:ff00::/56 holds 2001:db8:0:00ff::, not 2001:db8:0:0100::.
        assert_eq!(
            count(
                &ask(&mut l, "2001:db8:0:ff::9", b"\x01a\x00", 2),
                Verdict::Send
            ),
            0
        );
        assert_eq!(
            count(
                &ask(&mut l, "2001:db8:0:100::1", b"\x01a\x00", 20),
                Verdict::Send
            ),
            20
        );
        // An IPv4-mapped source counts as its IPv4 address.
        ask(&mut l, "198.51.100.1", b"\x01a\x00", 20);
        assert_eq!(
            count(
                &ask(&mut l, "::ffff:198.51.100.7", b"\x01a\x00", 2),
                Verdict::Send
            ),
            0
        );
    }

    #[test]
    fn answers_count_per_qname_and_qtype_nodata_per_qname() {
        let mut l = limiter(Config::default());
        let snap = Snapshot::default();
        let src = ip("192.0.2.1");
        let mut sends = |class: Class, qname: &[u8], n: usize| {
            (0..n)
                .filter(|_| l.check(src, class, qname, &snap) == Verdict::Send)
                .count()
        };
        assert_eq!(sends(Class::Answer { qtype: A }, b"\x01a\x00", 25), 20);
        assert_eq!(sends(Class::Answer { qtype: AAAA }, b"\x01a\x00", 25), 20);
        assert_eq!(sends(Class::Answer { qtype: A }, b"\x01b\x00", 25), 20);
        assert_eq!(sends(Class::Nodata, b"\x01a\x00", 25), 20);
        assert_eq!(sends(Class::Error(None), b"\x01x\x00", 15), 15);
        // Errors outside every zone share one bucket whatever the name.
        assert_eq!(sends(Class::Error(None), b"\x01y\x00", 15), 5);
    }

    #[test]
    fn exempt_sources_are_never_limited() {
        let mut l = limiter(Config {
            exempt: vec!["192.0.2.0/25".parse().expect("net")],
            ..Config::default()
        });
        assert_eq!(
            count(
                &ask(&mut l, "192.0.2.100", b"\x01a\x00", 500),
                Verdict::Send
            ),
            500
        );
        // The rest of the /24 is not exempt.
        assert_eq!(
            count(&ask(&mut l, "192.0.2.200", b"\x01a\x00", 30), Verdict::Send),
            20
        );
    }

    #[test]
    fn log_only_sends_everything_and_says_what_it_would_limit() {
        let mut l = limiter(Config {
            mode: Mode::LogOnly,
            ..Config::default()
        });
        let v = ask(&mut l, "192.0.2.1", b"\x01a\x00", 50);
        assert_eq!(count(&v, Verdict::Send), 20);
        assert_eq!(count(&v, Verdict::Logged), 30);
        assert!(Shared::new(Config::off()).limiter().is_none());
    }

    #[test]
    fn the_table_is_bounded_and_evicts_the_oldest_bucket() {
        let mut l = limiter(Config::default());
        ask(&mut l, "192.0.2.1", b"\x01a\x00", 40);
        assert!(!ask(&mut l, "192.0.2.1", b"\x01a\x00", 2).contains(&Verdict::Send));
        // Eight times the table's size in newer buckets (other /24s): every set turns over
        // (each set meets 32 new keys on average), so the limited bucket is gone.
        at(&mut l, 1);
        let snap = Snapshot::default();
        for i in 0..8 * TABLE_ENTRIES as u32 {
            let src = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + (i << 8)));
            l.check(src, Class::Answer { qtype: A }, b"\x01a\x00", &snap);
        }
        assert_eq!(l.sets.len() * WAYS, TABLE_ENTRIES);
        assert_eq!(ask(&mut l, "192.0.2.1", b"\x01a\x00", 1), [Verdict::Send]);
    }

    #[test]
    fn settings_out_of_range_are_refused() {
        let ok = Config::default();
        assert_eq!(ok.validate(), Ok(()));
        for bad in [
            Config {
                rate: 0,
                ..ok.clone()
            },
            Config {
                rate: MAX_RATE + 1,
                ..ok.clone()
            },
            Config {
                slip: MAX_SLIP + 1,
                ..ok.clone()
            },
            Config {
                ipv4_prefix: 33,
                ..ok.clone()
            },
            Config {
                ipv6_prefix: 129,
                ..ok
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        assert_eq!("log-only".parse(), Ok(Mode::LogOnly));
        assert!("maybe".parse::<Mode>().is_err());
    }

    #[test]
    fn rate_and_window_at_their_limits_do_not_overflow() {
        let mut l = limiter(Config {
            rate: MAX_RATE,
            ..Config::default()
        });
        for ms in 0..2 * WINDOW.as_millis() as u64 {
            if ms % 100 == 0 {
                at(&mut l, ms);
            }
            ask(&mut l, "192.0.2.1", b"\x01a\x00", 3);
        }
        at(&mut l, u64::MAX / 2);
        assert_eq!(ask(&mut l, "192.0.2.1", b"\x01a\x00", 1), [Verdict::Send]);
    }
}
