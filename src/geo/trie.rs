//! The compiled classification trie: the whole database walked once at load and turned into
//! a binary decision tree whose leaves are classes (distinct [`Location`]s), as gdnsd does.
//!
//! Why: a lookup through the reader walks the `.mmdb` tree and then decodes a City record
//! (names in eight languages skipped one by one), which costs more than the rest of a query.
//! Here a lookup is the same walk over a smaller tree and one table read, with no decode.
//!
//! Build: every network of the database (aliases included, so `2002::/16` answers like the
//! reader) in tree order; each distinct record is decoded once (keyed by its data offset) and
//! interned; subtrees are built bottom-up and hash-consed, and a node whose two halves are the
//! same leaf becomes that leaf. So every leaf covers a maximal region of one class, and the
//! depth at which a lookup meets its leaf is the shortest prefix of the address inside which
//! every address gets the same [`Located`]: an exact ECS scope input (issue 9).

use std::net::IpAddr;

use maxminddb::{Reader, WithinOptions};
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
    /// Where IPv4 lookups start: the reference reached by 96 zero bits, and its depth (less
    /// than 96 when a leaf covers the whole of IPv4).
    v4_start: (u32, u8),
    /// An IPv4-only database: IPv6 lookups miss with prefix 0, as the reader's do.
    v4_only: bool,
}

/// Figures of one compilation, for the load log line and the README.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrieStats {
    /// Networks the database iteration yielded (IPv4 aliases counted again).
    pub networks: usize,
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
    /// Walk every network of `reader` once and compile it. `decode` turns a record into its
    /// location; a record that does not decode is no record, as for the reader.
    pub(super) fn build(
        reader: &Reader<Vec<u8>>,
        decode: impl Fn(&RawRecord<'_>) -> Location,
    ) -> Result<(GeoTrie, TrieStats), TrieError> {
        let v4_only = reader.metadata().ip_version == 4;
        let all = match v4_only {
            true => "0.0.0.0/0",
            false => "::/0",
        };
        let within = reader
            .within(
                all.parse().expect("a valid network"),
                WithinOptions::default().include_aliased_networks(),
            )
            .map_err(|e| TrieError(e.to_string()))?;
        let mut classes = Classifier {
            classes: vec![None],
            class_of: FxHashMap::default(),
            by_offset: FxHashMap::default(),
            networks: 0,
            error: None,
        };
        let mut tree = Tree {
            nodes: Vec::new(),
            interned: FxHashMap::default(),
            full: false,
        };
        let mut items = within
            .map(|r| classes.item(r, &decode))
            .map_while(|i| i)
            .peekable();
        let root = tree.subtree(0, 0, &mut items);
        let leftover = items.next().is_some();
        drop(items);
        if let Some(e) = classes.error.take() {
            return Err(TrieError(e));
        }
        if leftover {
            return Err(TrieError("networks out of tree order".into()));
        }
        if tree.full || classes.classes.len() >= LEAF as usize {
            return Err(TrieError("more than 2^31 nodes or classes".into()));
        }
        let mut trie = GeoTrie {
            nodes: tree.nodes.into_boxed_slice(),
            classes: classes.classes.into_boxed_slice(),
            root,
            v4_start: (root, 0),
            v4_only,
        };
        trie.v4_start = trie.walk(root, 0, 0, V4_DEPTH);
        let stats = TrieStats {
            networks: classes.networks,
            records: classes.by_offset.len(),
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
                let (leaf, depth) = self.walk(start, depth, u128::from(u32::from(v4)), 128);
                (leaf, depth.saturating_sub(V4_DEPTH))
            }
            IpAddr::V6(_) if self.v4_only => return Located::default(),
            IpAddr::V6(v6) => self.walk(self.root, 0, u128::from(v6), 128),
        };
        let location = self
            .classes
            .get((leaf & !LEAF) as usize)
            .copied()
            .flatten()
            .map(|l| Location { prefix_len, ..l });
        Located {
            location,
            prefix_len,
        }
    }
}

/// One network of the iteration: first address (IPv4 at `::a.b.c.d`), length, class leaf.
type Item = (u128, u8, u32);

/// Interns the records met during the iteration into classes.
struct Classifier {
    classes: Vec<Option<Location>>,
    class_of: FxHashMap<ClassKey, u32>,
    /// Data offset → class leaf: each record is decoded once.
    by_offset: FxHashMap<usize, u32>,
    networks: usize,
    error: Option<String>,
}

/// The nodes built so far.
struct Tree {
    nodes: Vec<[u32; 2]>,
    /// Hash-consing: equal subtrees (the IPv4 aliases above all) are stored once.
    interned: FxHashMap<[u32; 2], u32>,
    /// Node indexes ran into the leaf bit (never with a real database).
    full: bool,
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

impl Classifier {
    /// Turn one iteration result into an item; the first error stops the iteration.
    fn item(
        &mut self,
        r: Result<maxminddb::LookupResult<'_, Vec<u8>>, maxminddb::MaxMindDbError>,
        decode: &impl Fn(&RawRecord<'_>) -> Location,
    ) -> Option<Item> {
        let fail = |c: &mut Classifier, e: String| {
            c.error.get_or_insert(e);
            None
        };
        let r = match r {
            Ok(r) => r,
            Err(e) => return fail(self, e.to_string()),
        };
        let net = match r.network() {
            Ok(n) => n,
            Err(e) => return fail(self, e.to_string()),
        };
        let (start, len) = match net.network() {
            IpAddr::V4(a) => (u128::from(u32::from(a)), net.prefix() + V4_DEPTH),
            IpAddr::V6(a) => (u128::from(a), net.prefix()),
        };
        self.networks += 1;
        let Some(offset) = r.offset() else {
            return Some((start, len, MISS));
        };
        let leaf = match self.by_offset.get(&offset) {
            Some(&leaf) => leaf,
            None => {
                let location = match r.decode::<RawRecord<'_>>() {
                    Ok(Some(raw)) => Some(Location {
                        prefix_len: 0,
                        asn: None,
                        ..decode(&raw)
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
                self.by_offset.insert(offset, leaf);
                leaf
            }
        };
        Some((start, len, leaf))
    }
}

impl Tree {
    /// The subtree of the network `prefix/depth`, consuming the items inside it. Items are
    /// in address order and disjoint, as the iteration yields them.
    fn subtree(&mut self, prefix: u128, depth: u8, items: &mut impl PeekItems) -> u32 {
        let Some((start, len, leaf)) = items.peek_item() else {
            return MISS;
        };
        let inside = depth == 0 || (start ^ prefix) >> (128 - u32::from(depth)) == 0;
        if !inside {
            return MISS;
        }
        if len <= depth || depth >= 128 {
            // The network is this whole region (shorter is impossible in a tree walk).
            items.next_item();
            return leaf;
        }
        let left = self.subtree(prefix, depth + 1, items);
        let right = self.subtree(prefix | 1 << (127 - u32::from(depth)), depth + 1, items);
        if left == right && left & LEAF != 0 {
            return left;
        }
        let next = self.nodes.len() as u32;
        if next >= LEAF {
            self.full = true;
            return MISS;
        }
        let r = *self.interned.entry([left, right]).or_insert(next);
        if r == next {
            self.nodes.push([left, right]);
        }
        r
    }
}

/// A peekable stream of items (what `subtree` needs of it).
trait PeekItems {
    fn peek_item(&mut self) -> Option<Item>;
    fn next_item(&mut self);
}

impl<I: Iterator<Item = Item>> PeekItems for std::iter::Peekable<I> {
    fn peek_item(&mut self) -> Option<Item> {
        self.peek().copied()
    }
    fn next_item(&mut self) {
        self.next();
    }
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
        assert!(stats.networks >= 6, "{stats:?}");
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
