//! The compiled classification trie: the whole database walked once at load and turned into
//! a binary decision tree whose leaves are classes (distinct [`Location`]s), as gdnsd does.
//!
//! Why: a lookup through the reader walks the `.mmdb` tree and then decodes a City record
//! (names in eight languages skipped one by one), which costs more than the rest of a query.
//! Here a lookup is the same walk over a smaller tree and one table read, with no decode.
//!
//! Build: one depth-first walk of the database's search tree, each tree node once (the IPv4
//! aliases `::ffff:0:0/96` and `2002::/16` point at the IPv4 subtree, so they share its
//! compiled form and answer like the reader); each distinct record is decoded once and
//! interned as a class; a node whose two halves are the same leaf becomes that leaf, so every
//! leaf covers a maximal region of one class, and the
//! depth at which a lookup meets its leaf is the shortest prefix of the address inside which
//! every address gets the same [`Located`]: an exact ECS scope input (issue 9).

use std::net::IpAddr;

use maxminddb::Reader;
use rustc_hash::FxHashMap;

use super::record::RawRecord;
use super::{Located, Location};

/// A child reference with this bit set is a leaf: the low bits are its class.
const LEAF: u32 = 1 << 31;
/// Class 0: the database has no record there (`Located::location` is `None`).
const MISS: u32 = LEAF;
/// IPv4 addresses live at `::a.b.c.d` in the tree, below 96 zero bits (MaxMind's layout).
const V4_DEPTH: u8 = 96;

/// A database compiled for lookups. Immutable once built; shared by every DNS worker.
pub(super) struct GeoTrie {
    /// Internal nodes: `[child for bit 0, child for bit 1]`, each a node index or a leaf.
    nodes: Box<[[u32; 2]]>,
    /// Class id → location; class 0 is `None` (no record).
    classes: Box<[Option<Location>]>,
    /// The reference of `::/0`.
    root: u32,
    /// Where IPv4 lookups start: the reference reached by 96 zero bits and its depth (less
    /// than 96 when a leaf covers the whole of IPv4); the root in an IPv4-only database.
    v4_start: (u32, u8),
    /// Depth of the IPv4 subtree: 96, or 0 in an IPv4-only database (whose tree holds IPv4
    /// bits from the top of the key).
    v4_base: u8,
    /// An IPv4-only database: IPv6 lookups miss with prefix 0, as the reader's do.
    v4_only: bool,
}

/// Figures of one compilation, for the load log line and the README.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrieStats {
    /// Nodes of the database's own search tree.
    pub tree_nodes: usize,
    /// Distinct records decoded.
    pub records: usize,
    /// Distinct locations (classes), the miss class included.
    pub classes: usize,
    /// Internal nodes of the trie.
    pub nodes: usize,
    /// Heap bytes of the compiled trie (nodes and class table).
    pub bytes: usize,
}

/// Building failed: the database's tree could not be walked to the end.
#[derive(Debug, thiserror::Error)]
#[error("cannot compile the database: {0}")]
pub(super) struct TrieError(String);

impl GeoTrie {
    /// Walk the database's search tree once and compile it. `buf` is the database file the
    /// reader was opened on; `decode` turns a record into its location (a record that does
    /// not decode is no record, as for the reader).
    pub(super) fn build<S: AsRef<[u8]>>(
        reader: &Reader<S>,
        buf: &[u8],
        decode: impl Fn(&RawRecord<'_>) -> Location,
    ) -> Result<(GeoTrie, TrieStats), TrieError> {
        let meta = reader.metadata();
        let v4_only = meta.ip_version == 4;
        let node_count = usize::try_from(meta.node_count).unwrap_or(usize::MAX);
        let node_bytes = usize::from(meta.record_size) / 4;
        if !matches!(meta.record_size, 24 | 28 | 32) || node_count >= IN_PROGRESS as usize {
            return Err(TrieError("unsupported record size or node count".into()));
        }
        let tree = node_count
            .checked_mul(node_bytes)
            .and_then(|len| buf.get(..len))
            .ok_or_else(|| TrieError("the search tree is longer than the file".into()))?;
        let mut w = Walker {
            reader,
            decode: &decode,
            tree,
            record_size: meta.record_size,
            node_count,
            bits: if v4_only { 32 } else { 128 },
            memo: vec![UNSEEN; node_count],
            nodes: Vec::new(),
            pairs: FxHashMap::default(),
            classes: vec![None],
            class_of: FxHashMap::default(),
            by_pointer: FxHashMap::default(),
        };
        let root = match node_count {
            0 => MISS,
            _ => w.visit(0, 0, 0)?,
        };
        if w.nodes.len() >= LEAF as usize || w.classes.len() >= (IN_PROGRESS & !LEAF) as usize {
            return Err(TrieError("more than 2^31 nodes or classes".into()));
        }
        let records = w.by_pointer.len();
        let mut trie = GeoTrie {
            nodes: w.nodes.into_boxed_slice(),
            classes: w.classes.into_boxed_slice(),
            root,
            v4_start: (root, 0),
            v4_base: 0,
            v4_only,
        };
        if !v4_only {
            trie.v4_start = trie.walk(root, 0, 0, V4_DEPTH);
            trie.v4_base = V4_DEPTH;
        }
        let stats = TrieStats {
            tree_nodes: node_count,
            records,
            classes: trie.classes.len(),
            nodes: trie.nodes.len(),
            bytes: std::mem::size_of_val(&*trie.nodes) + std::mem::size_of_val(&*trie.classes),
        };
        Ok((trie, stats))
    }

    /// Follow `key`'s bits from `r` at `depth` until a leaf or `stop`; the reference and
    /// depth reached. Every internal node sits above depth 128 (a network is at most 128
    /// bits long), so the shift never overflows.
    #[inline]
    fn walk(&self, mut r: u32, mut depth: u8, key: u128, stop: u8) -> (u32, u8) {
        while r & LEAF == 0 && depth < stop {
            let bit = (key >> (127 - u32::from(depth))) as usize & 1;
            r = self.nodes[r as usize][bit];
            depth += 1;
        }
        (r, depth)
    }

    /// What the reader would say about `ip`, with the prefix widened to the whole region of
    /// the same class. Allocation-free.
    pub(super) fn locate(&self, ip: IpAddr) -> Located {
        let (leaf, prefix_len) = match ip.to_canonical() {
            IpAddr::V4(v4) => {
                let (start, depth) = self.v4_start;
                let key = u128::from(u32::from(v4)) << (V4_DEPTH - self.v4_base);
                let (leaf, depth) = self.walk(start, depth, key, 128);
                (leaf, depth.saturating_sub(self.v4_base))
            }
            IpAddr::V6(_) if self.v4_only => return Located::default(),
            IpAddr::V6(v6) => self.walk(self.root, 0, u128::from(v6), 128),
        };
        // Only a malformed tree leaves the walk on a node; that is no record.
        let class = match leaf & LEAF {
            0 => 0,
            _ => (leaf & !LEAF) as usize,
        };
        let location = self
            .classes
            .get(class)
            .copied()
            .flatten()
            .map(|l| Location { prefix_len, ..l });
        Located {
            location,
            prefix_len,
        }
    }
}

/// `memo` marks: a tree node not visited yet, and one being visited (a cycle if met again).
const UNSEEN: u32 = u32::MAX;
const IN_PROGRESS: u32 = u32::MAX - 1;

/// One depth-first walk of the `.mmdb` search tree. The tree is a DAG (the IPv4 aliases
/// point at the IPv4 subtree), so each tree node is compiled once and its result memoized:
/// what a subtree compiles to does not depend on where it hangs.
struct Walker<'a, S: AsRef<[u8]>, F> {
    reader: &'a Reader<S>,
    decode: &'a F,
    /// The search tree's bytes.
    tree: &'a [u8],
    record_size: u16,
    node_count: usize,
    /// Address bits of the tree: 32 or 128.
    bits: u8,
    /// Tree node → compiled reference, or a mark.
    memo: Vec<u32>,
    nodes: Vec<[u32; 2]>,
    /// Nodes whose two children are leaves, interned: the commonest repeated subtree.
    pairs: FxHashMap<[u32; 2], u32>,
    classes: Vec<Option<Location>>,
    class_of: FxHashMap<ClassKey, u32>,
    /// Data pointer → class leaf: each record is decoded once.
    by_pointer: FxHashMap<usize, u32>,
}

impl<S: AsRef<[u8]>, F: Fn(&RawRecord<'_>) -> Location> Walker<'_, S, F> {
    /// The record pointed to by tree node `node`'s child `side` (the MaxMind DB spec's
    /// 24-, 28- and 32-bit layouts).
    fn child(&self, node: usize, side: usize) -> Option<usize> {
        let n = node * usize::from(self.record_size) / 4;
        let b = self.tree.get(n..n + usize::from(self.record_size) / 4)?;
        let be = |x: &[u8]| x.iter().fold(0usize, |a, &v| a << 8 | usize::from(v));
        Some(match (self.record_size, side) {
            (24, 0) => be(&b[..3]),
            (24, _) => be(&b[3..6]),
            (28, 0) => usize::from(b[3] >> 4) << 24 | be(&b[..3]),
            (28, _) => usize::from(b[3] & 0x0f) << 24 | be(&b[4..7]),
            (_, 0) => be(&b[..4]),
            (_, _) => be(&b[4..8]),
        })
    }

    /// Compile the tree record `value` met at `depth` on the path `path` (address bits from
    /// the top of a 128-bit word).
    fn visit(&mut self, value: usize, depth: u8, path: u128) -> Result<u32, TrieError> {
        if value == self.node_count {
            return Ok(MISS);
        }
        if value > self.node_count {
            return self.leaf(value, path);
        }
        match self.memo[value] {
            UNSEEN => {}
            IN_PROGRESS => return Err(TrieError("the search tree has a cycle".into())),
            done => return Ok(done),
        }
        if depth >= self.bits {
            return Err(TrieError(
                "the search tree is deeper than an address".into(),
            ));
        }
        self.memo[value] = IN_PROGRESS;
        let bad = || TrieError("a search tree node is outside the tree".into());
        let (l, r) = (
            self.child(value, 0).ok_or_else(bad)?,
            self.child(value, 1).ok_or_else(bad)?,
        );
        let left = self.visit(l, depth + 1, path)?;
        let right = self.visit(r, depth + 1, path | 1 << (127 - u32::from(depth)))?;
        let compiled = self.join(left, right);
        self.memo[value] = compiled;
        Ok(compiled)
    }

    /// A node of two halves; the leaf itself when both halves are the same leaf, so every
    /// leaf covers a maximal region of its class.
    fn join(&mut self, left: u32, right: u32) -> u32 {
        let leaves = left & right & LEAF != 0;
        if leaves && left == right {
            return left;
        }
        if leaves && let Some(&n) = self.pairs.get(&[left, right]) {
            return n;
        }
        let n = u32::try_from(self.nodes.len()).unwrap_or(LEAF).min(LEAF);
        self.nodes.push([left, right]);
        if leaves {
            self.pairs.insert([left, right], n);
        }
        n
    }

    /// The class leaf of the record at data pointer `value`, first met on `path`: decoded
    /// through the reader's own lookup of that address (the only public way to a record),
    /// which must land on the same record.
    fn leaf(&mut self, value: usize, path: u128) -> Result<u32, TrieError> {
        if let Some(&leaf) = self.by_pointer.get(&value) {
            return Ok(leaf);
        }
        let ip = match self.bits {
            32 => IpAddr::V4(((path >> 96) as u32).into()),
            _ => IpAddr::V6(path.into()),
        };
        let result = self
            .reader
            .lookup(ip)
            .map_err(|e| TrieError(format!("{ip}: {e}")))?;
        if result.offset().map(|o| o + self.node_count + 16) != Some(value) {
            return Err(TrieError(format!("{ip}: the reader finds another record")));
        }
        let location = match result.decode::<RawRecord<'_>>() {
            Ok(Some(raw)) => Some(Location {
                prefix_len: 0,
                asn: None,
                ..(self.decode)(&raw)
            }),
            _ => None,
        };
        let leaf = match location {
            None => MISS,
            Some(l) => {
                let next = self.classes.len() as u32 | LEAF;
                let leaf = *self.class_of.entry(key_of(&l)).or_insert(next);
                if leaf == next {
                    self.classes.push(Some(l));
                }
                leaf
            }
        };
        self.by_pointer.insert(value, leaf);
        Ok(leaf)
    }
}

/// A [`Location`] as a hash key (coordinates by their bits).
type ClassKey = (
    Option<[u8; 2]>,
    Option<super::Subdivision>,
    Option<[u8; 2]>,
    Option<(u64, u64)>,
);

fn key_of(l: &Location) -> ClassKey {
    (
        l.country,
        l.subdivision,
        l.continent,
        l.coords.map(|c| (c.lat.to_bits(), c.lon.to_bits())),
    )
}

#[cfg(test)]
mod tests {
    use super::super::{GeoDb, Locate};
    use super::*;

    /// Two /26 halves of one /25 with the same record, a /26 of another country, then
    /// nothing; a /24 whose first half has another record of the same location.
    const CSV: &str = "192.0.2.0/26,EU,GB,ENG,51.5,-0.12,20,\n\
                       192.0.2.64/26,EU,GB,ENG,51.5,-0.12,20,\n\
                       192.0.2.128/26,EU,DE,,,,,\n\
                       198.51.100.0/24,NA,US,CA,37.77,-122.42,20,\n\
                       198.51.100.0/25,NA,US,CA,37.77,-122.42,50,\n\
                       2001:db8::/33,OC,,,,,,\n";

    fn db() -> GeoDb {
        GeoDb::from_bytes(gen_mmdb::build(CSV).expect("csv"), None).expect("compiles")
    }

    fn at(db: &GeoDb, ip: &str) -> Located {
        db.locate(ip.parse().expect("ip"))
    }

    #[test]
    fn equal_neighbours_merge_into_the_widest_uniform_prefix() {
        let db = db();
        // Both /26s are GB: one /25.
        let gb = at(&db, "192.0.2.1");
        assert_eq!(gb.prefix_len, 25);
        assert_eq!(gb.location.map(|l| l.prefix_len), Some(25));
        assert_eq!(at(&db, "192.0.2.100"), gb);
        // A record with another accuracy radius is the same location (the radius is not
        // read): the whole /24 is one class, though the reader has two networks there.
        assert_eq!(at(&db, "198.51.100.200").prefix_len, 24);
        let raw = db.locate_record("198.51.100.1".parse().expect("ip"));
        assert_eq!(raw.prefix_len, 25);
        assert_eq!(at(&db, "198.51.100.1").prefix_len, 24);
    }

    #[test]
    fn a_miss_reports_the_whole_empty_region() {
        let db = db();
        let miss = at(&db, "192.0.2.200");
        assert_eq!((miss.location, miss.prefix_len), (None, 26));
        // 192.0.3.0/24 is empty, and so is 192.0.0.0/23 beside it: 192.0.3.x and 192.0.0.x
        // are in different regions at /24 and /23 respectively.
        assert_eq!(at(&db, "192.0.3.1").prefix_len, 24);
        assert_eq!(at(&db, "192.0.0.1").prefix_len, 23);
        assert_eq!(at(&db, "2001:db8:8000::1").prefix_len, 33);
        assert!(at(&db, "2001:db8:8000::1").location.is_none());
    }

    #[test]
    fn classes_are_interned_and_the_trie_is_small() {
        let (stats, _) = db().trie_stats().expect("compiled");
        // Miss, GB, DE, US, OC.
        assert_eq!(stats.classes, 5);
        assert!(stats.nodes < 200, "{stats:?}");
        assert!(stats.tree_nodes > stats.nodes, "{stats:?}");
    }

    #[test]
    fn ipv4_only_databases_miss_every_ipv6_address() {
        use gen_mmdb::mmdb_writer::{IpVersion, Value, Writer};
        let mut w = Writer::builder("flat").ip_version(IpVersion::V4).build();
        let mut rec = std::collections::BTreeMap::new();
        rec.insert("country_code".to_string(), Value::from("SE"));
        w.insert_value(
            "89.160.20.0/24".parse::<ipnet::IpNet>().expect("net"),
            Value::Map(rec),
        )
        .expect("insert");
        let db = GeoDb::from_bytes(w.to_bytes().expect("bytes"), None).expect("compiles");
        let se = at(&db, "89.160.20.7");
        assert_eq!(se.location.and_then(|l| l.country), Some(*b"SE"));
        assert_eq!(se.prefix_len, 24);
        assert_eq!(at(&db, "::ffff:89.160.20.7"), se);
        assert_eq!(at(&db, "2001:db8::1"), Located::default());
        assert_eq!(
            db.locate_record("2001:db8::1".parse().expect("ip")),
            Located::default()
        );
    }
}
