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

/// A reference with this bit set is a leaf: bits 28..31 say how many levels below the top
/// of its line the leaf's region starts, the low 28 bits are its class.
const LEAF: u32 = 1 << 31;
const CLASS: u32 = (1 << 28) - 1;
/// Class 0: the database has no record there (`Located::location` is `None`).
const MISS: u32 = LEAF;
/// IPv4 addresses live at `::a.b.c.d` in the tree, below 96 zero bits (MaxMind's layout).
const V4_DEPTH: u8 = 96;
/// Address bits one line decides. 4 bits make a line of 16 references, one 64-byte cache
/// line: an IPv4 lookup reads at most 8 lines where a binary walk reads up to 32 nodes
/// (measured on GeoLite2-City: see the README's GeoIP section).
const STRIDE: u8 = 4;

/// 16 references, one per value of the next 4 address bits; aligned so a line is read with
/// one cache miss.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
#[repr(align(64))]
struct Line([u32; 1 << STRIDE]);

/// A database compiled for lookups. Immutable once built; shared by every DNS worker.
pub(super) struct GeoTrie {
    /// The multibit trie: a reference is a line index or a leaf.
    lines: Box<[Line]>,
    /// Class id → location; class 0 is `None` (no record).
    classes: Box<[Option<Location>]>,
    /// The merged binary trie the lines were cut from, children before parents, kept so
    /// that policies' projections ([`GeoTrie::project`]) need not walk the database again;
    /// empty in a projection.
    binary: Box<[[u32; 2]]>,
    /// The binary trie's root reference.
    binary_root: u32,
    /// The reference of `::/0` (of `0.0.0.0/0` in an IPv4-only database).
    root: u32,
    /// Where IPv4 lookups start: the reference of the IPv4 subtree and its depth (less than
    /// 96 when a leaf covers the whole of IPv4); the root in an IPv4-only database.
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
    /// Nodes of the merged binary trie (before it is cut into lines).
    pub nodes: usize,
    /// Lines (16 references each) of the compiled trie.
    pub lines: usize,
    /// Heap bytes of the compiled trie (lines and class table).
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
            merged: Merged::default(),
            classes: vec![None],
            class_of: FxHashMap::default(),
            by_pointer: FxHashMap::default(),
        };
        let root = match node_count {
            0 => MISS,
            _ => w.visit(0, 0, 0)?,
        };
        if w.merged.nodes.len() >= LEAF as usize || w.classes.len() > CLASS as usize {
            return Err(TrieError("more than 2^28 locations or 2^31 nodes".into()));
        }
        let records = w.by_pointer.len();
        let (merged, classes) = (w.merged, w.classes);
        drop(w.memo);
        let trie = GeoTrie::assemble(merged.nodes, classes, root, v4_only, true);
        let stats = trie.stats(node_count, records);
        Ok((trie, stats))
    }

    /// The trie of what `keep` makes of each location (`None`: nothing of interest, as no
    /// record), its equal neighbours merged again: the decision tree of one policy's rules,
    /// as gdnsd compiles one per map. `keep` is called once per class, in class order.
    /// Smaller than the whole trie, and each leaf's depth is the widest prefix over which
    /// `keep`'s result holds.
    pub(super) fn project(&self, mut keep: impl FnMut(&Location) -> Option<Location>) -> GeoTrie {
        let mut classes = vec![None];
        let mut class_of = FxHashMap::default();
        let leaf_of: Vec<u32> = self
            .classes
            .iter()
            .map(|c| match c.as_ref().and_then(&mut keep) {
                None => MISS,
                Some(l) => intern(&mut classes, &mut class_of, l),
            })
            .collect();
        let mut merged = Merged::default();
        let mut now = Vec::with_capacity(self.binary.len());
        let map = |r: u32, now: &[u32]| match r & LEAF {
            0 => now.get(r as usize).copied().unwrap_or(MISS),
            _ => leaf_of.get((r & CLASS) as usize).copied().unwrap_or(MISS),
        };
        // Children come before their parents: one pass bottom-up.
        for &[l, r] in self.binary.iter() {
            let joined = merged.join(map(l, &now), map(r, &now));
            now.push(joined);
        }
        let root = map(self.binary_root, &now);
        drop(now);
        GeoTrie::assemble(merged.nodes, classes, root, self.v4_only, false)
    }

    /// Cut the merged binary trie into lines. `keep_binary`: keep it for projections.
    fn assemble(
        nodes: Vec<[u32; 2]>,
        classes: Vec<Option<Location>>,
        root: u32,
        v4_only: bool,
        keep_binary: bool,
    ) -> GeoTrie {
        // Where IPv4 starts in the binary trie: 96 zero bits down, or a leaf above.
        let mut v4 = (root, 0u8);
        while !v4_only && v4.0 & LEAF == 0 && v4.1 < V4_DEPTH {
            v4 = (nodes.get(v4.0 as usize).map_or(MISS, |n| n[0]), v4.1 + 1);
        }
        let mut cut = Cutter {
            nodes: &nodes,
            memo: vec![UNSEEN; nodes.len()],
            lines: Vec::new(),
        };
        let line_root = cut.reference(root);
        let v4_start = (cut.reference(v4.0), v4.1);
        let lines = cut.lines.into_boxed_slice();
        GeoTrie {
            lines,
            classes: classes.into_boxed_slice(),
            binary: if keep_binary {
                nodes.into_boxed_slice()
            } else {
                Box::default()
            },
            binary_root: root,
            root: line_root,
            v4_start,
            v4_base: if v4_only { 0 } else { V4_DEPTH },
            v4_only,
        }
    }

    /// Figures of this trie, compiled from a tree of `tree_nodes` nodes and `records`
    /// distinct records.
    fn stats(&self, tree_nodes: usize, records: usize) -> TrieStats {
        TrieStats {
            tree_nodes,
            records,
            classes: self.classes.len(),
            nodes: self.binary.len(),
            lines: self.lines.len(),
            bytes: self.bytes(),
        }
    }

    /// Heap bytes of the lines, the class table and the kept binary trie.
    pub(super) fn bytes(&self) -> usize {
        std::mem::size_of_val(&*self.lines)
            + std::mem::size_of_val(&*self.classes)
            + std::mem::size_of_val(&*self.binary)
    }

    /// Follow `key`'s bits (from the top of the word) from reference `r` at `depth` to its
    /// leaf: the class and the depth where the leaf's region starts. A line sits at most 124
    /// bits deep in a well-formed tree; anything else ends as no record.
    #[inline]
    fn walk(&self, mut r: u32, mut depth: u8, key: u128) -> (u32, u8) {
        while r & LEAF == 0 {
            let Some(line) = self.lines.get(r as usize) else {
                return (0, depth);
            };
            if depth > 128 - STRIDE {
                return (0, depth);
            }
            let bits = (key >> (128 - STRIDE - depth)) as usize & ((1 << STRIDE) - 1);
            r = line.0[bits];
            if r & LEAF != 0 {
                return (r & CLASS, depth + (r >> 28 & 7) as u8);
            }
            depth += STRIDE;
        }
        (r & CLASS, depth + (r >> 28 & 7) as u8)
    }

    /// What the reader would say about `ip`, with the prefix widened to the whole region of
    /// the same class. Allocation-free.
    pub(super) fn locate(&self, ip: IpAddr) -> Located {
        let (class, prefix_len) = self.classify(ip);
        let location = self
            .classes
            .get(class as usize)
            .copied()
            .flatten()
            .map(|l| Location { prefix_len, ..l });
        Located {
            location,
            prefix_len,
        }
    }

    /// The class of `ip` (0: no record) and the prefix length of its leaf.
    #[inline]
    pub(super) fn classify(&self, ip: IpAddr) -> (u32, u8) {
        match ip.to_canonical() {
            IpAddr::V4(v4) => {
                let key = u128::from(u32::from(v4)) << (V4_DEPTH - self.v4_base);
                let (start, depth) = self.v4_start;
                let (class, depth) = self.walk(start, depth, key);
                (class, depth.saturating_sub(self.v4_base))
            }
            IpAddr::V6(_) if self.v4_only => (0, 0),
            IpAddr::V6(v6) => self.walk(self.root, 0, u128::from(v6)),
        }
    }

    /// Each class's location, by class id (class 0, no record, is `None`).
    pub(super) fn classes(&self) -> &[Option<Location>] {
        &self.classes
    }
}

/// Cuts the merged binary trie into lines of [`STRIDE`] levels (its leaves pushed down into
/// every reference they cover, each noting its own depth).
struct Cutter<'a> {
    nodes: &'a [[u32; 2]],
    /// Binary node → its line, once cut (shared subtrees stay shared).
    memo: Vec<u32>,
    lines: Vec<Line>,
}

impl Cutter<'_> {
    /// The reference of binary reference `r`: a leaf stays a leaf (0 levels down), a node
    /// becomes a line.
    fn reference(&mut self, r: u32) -> u32 {
        if r & LEAF != 0 {
            return r;
        }
        if let Some(&done) = self.memo.get(r as usize)
            && done != UNSEEN
        {
            return done;
        }
        let mut line = Line([MISS; 1 << STRIDE]);
        for (bits, slot) in line.0.iter_mut().enumerate() {
            let mut at = r;
            let mut level = 0;
            while level < STRIDE && at & LEAF == 0 {
                let bit = bits >> (STRIDE - 1 - level) & 1;
                at = self.nodes.get(at as usize).map_or(MISS, |n| n[bit]);
                level += 1;
            }
            *slot = match at & LEAF {
                0 => self.reference(at),
                _ => at | u32::from(level) << 28,
            };
        }
        let index = self.lines.len() as u32;
        self.lines.push(line);
        if let Some(m) = self.memo.get_mut(r as usize) {
            *m = index;
        }
        index
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
    merged: Merged,
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
        let compiled = self.merged.join(left, right);
        self.memo[value] = compiled;
        Ok(compiled)
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
            Some(l) => intern(&mut self.classes, &mut self.class_of, l),
        };
        self.by_pointer.insert(value, leaf);
        Ok(leaf)
    }
}

/// A binary trie being built bottom-up: children are pushed before their parents.
#[derive(Default)]
struct Merged {
    nodes: Vec<[u32; 2]>,
    /// Nodes whose two children are leaves, interned: the commonest repeated subtree.
    pairs: FxHashMap<[u32; 2], u32>,
}

impl Merged {
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
}

/// The leaf of class `l`, added to `classes` when new.
fn intern(
    classes: &mut Vec<Option<Location>>,
    class_of: &mut FxHashMap<ClassKey, u32>,
    l: Location,
) -> u32 {
    let next = classes.len() as u32 | LEAF;
    let leaf = *class_of.entry(key_of(&l)).or_insert(next);
    if leaf == next {
        classes.push(Some(l));
    }
    leaf
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
