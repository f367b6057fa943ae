//! The compiled GeoIP trie beside the reader on a real database: compile time, size, peak
//! memory, nanoseconds per lookup for random addresses, and a spot check that both agree.
//! Run: `cargo bench --bench geo_lookup -- PATH/GeoLite2-City.mmdb [LOOKUPS]`
//! (the database is the user's own; nothing is downloaded).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::Instant;

use meridian::geo::{GeoDb, Locate, Located};

/// xorshift64*: a fixed sequence, so runs compare.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// `VmHWM` and `VmRSS` of this process in MiB, from /proc (Linux).
fn memory() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

fn same(a: &Located, b: &Located) -> bool {
    let strip = |l: &Located| {
        l.location.map(|mut l| {
            l.prefix_len = 0;
            l.asn = None;
            l
        })
    };
    strip(a) == strip(b)
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let Some(path) = args.first() else {
        eprintln!("usage: cargo bench --bench geo_lookup -- DB.mmdb [LOOKUPS]");
        std::process::exit(2);
    };
    let n: usize = args
        .get(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2_000_000);
    let t = Instant::now();
    let reader = GeoDb::open_reader(Path::new(path), None).expect("the database opens");
    let read = t.elapsed();
    let (_, rss_reader) = memory();
    drop(reader);
    let t = Instant::now();
    let db = GeoDb::open(Path::new(path), None).expect("the database compiles");
    let total = t.elapsed();
    let (hwm, rss) = memory();
    let (stats, took) = db.trie_stats().expect("compiled");
    println!("read {read:?}; open+compile {total:?} (compile {took:?})");
    println!(
        "{} tree nodes, {} records, {} locations, {} merged binary nodes, {} lines, {:.1} MiB compiled",
        stats.tree_nodes,
        stats.records,
        stats.classes,
        stats.nodes,
        stats.lines,
        stats.bytes as f64 / 1048576.0
    );
    println!("RSS: reader only {rss_reader:.0} MiB; with trie {rss:.0} MiB; peak {hwm:.0} MiB");

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let v4: Vec<IpAddr> = (0..n)
        .map(|_| IpAddr::V4(Ipv4Addr::from(rng.next() as u32)))
        .collect();
    // IPv6: inside 2000::/4, where the allocations are.
    let v6: Vec<IpAddr> = (0..n / 4)
        .map(|_| {
            let r = u128::from(rng.next()) << 64 | u128::from(rng.next());
            IpAddr::V6(Ipv6Addr::from(r >> 4 | 2u128 << 124))
        })
        .collect();
    for (family, addrs) in [("IPv4", &v4), ("IPv6", &v6)] {
        let t = Instant::now();
        let mut found = 0usize;
        for &ip in addrs.iter() {
            found += black_box(db.locate(ip)).location.is_some() as usize;
        }
        let trie = t.elapsed().as_nanos() as f64 / addrs.len() as f64;
        let t = Instant::now();
        for &ip in addrs.iter() {
            black_box(db.locate_record(ip));
        }
        let raw = t.elapsed().as_nanos() as f64 / addrs.len() as f64;
        println!(
            "{family}: trie {trie:.0} ns/lookup, reader {raw:.0} ns/lookup ({:.1}x); {found} of {} located",
            raw / trie,
            addrs.len()
        );
    }

    // Spot check: the trie and the reader agree at random addresses and at random addresses
    // inside the prefix the trie returned.
    let mut checked = 0usize;
    for &ip in v4.iter().take(200_000).chain(v6.iter().take(50_000)) {
        let got = db.locate(ip);
        assert!(same(&got, &db.locate_record(ip)), "{ip}: {got:?}");
        let other = match ip {
            IpAddr::V4(a) => {
                let m = u32::MAX.checked_shr(u32::from(got.prefix_len)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & !m | rng.next() as u32 & m))
            }
            IpAddr::V6(a) => {
                let m = u128::MAX
                    .checked_shr(u32::from(got.prefix_len))
                    .unwrap_or(0);
                let r = u128::from(rng.next()) << 64 | u128::from(rng.next());
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & !m | r & m))
            }
        };
        assert!(
            same(&got, &db.locate_record(other)),
            "{ip} -> /{}: {other} differs",
            got.prefix_len
        );
        checked += 1;
    }
    println!("agreement: {checked} addresses and as many inside their prefixes");
}
