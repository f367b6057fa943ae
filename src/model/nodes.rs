//! A zone's names and static RRsets in a handful of flat arrays (issue 12).
//!
//! A million-name zone held as a hash map of boxed names, each with a `Vec` of RRsets each
//! with a `Vec` of boxed RDATA, cost four to five allocations and about 400 bytes a name,
//! and the allocator could not hand the pages of a parse back while such small objects sat
//! among them. Here every name is an index: its wire bytes live in one arena, its RRsets in
//! one array, their RDATA (each behind a two-byte length) in another, and the hash table
//! holds only `u32` indexes, hashed over the name's bytes. About 70 bytes a name, and a
//! lookup on the DNS path still allocates nothing.

use hashbrown::HashTable;
use rustc_hash::FxBuildHasher;
use std::hash::BuildHasher;

use super::{PolicyId, rtype};

/// Offsets into the arenas are `u32`: a zone is refused when its names or RDATA would need
/// more than this many bytes (4 GiB, far beyond any zone file a server reads into memory).
const MAX_ARENA: usize = u32::MAX as usize;

/// Sentinel of "no policy" in a node entry.
const NO_POLICY: u32 = u32::MAX;

/// Every name of one zone (empty non-terminals included) with what it holds.
#[derive(Debug, Default)]
pub struct Nodes {
    index: HashTable<u32>,
    names: Vec<u8>,
    nodes: Vec<NodeEntry>,
    sets: Vec<SetEntry>,
    /// RDATA of every RRset, each as a big-endian `u16` length and the bytes.
    rdata: Vec<u8>,
}

#[derive(Debug, Clone, Copy, Default)]
struct NodeEntry {
    /// Offset of the wire name in `names`.
    name: u32,
    name_len: u8,
    delegation: bool,
    set_count: u16,
    /// Index of the node's first RRset in `sets`.
    first_set: u32,
    policy: u32,
}

#[derive(Debug, Clone, Copy)]
struct SetEntry {
    rtype: u16,
    count: u16,
    ttl: u32,
    /// Offset of the first RDATA in `rdata`.
    rdata: u32,
}

/// What a name holds, borrowed from its zone.
#[derive(Debug, Clone, Copy)]
pub struct Node<'a> {
    /// A published policy answering at this name.
    pub policy: Option<PolicyId>,
    /// NS at a name below the apex: a delegation (referral).
    pub delegation: bool,
    sets: &'a [SetEntry],
    rdata: &'a [u8],
}

/// One static RRset; RDATA in uncompressed wire format.
#[derive(Debug, Clone, Copy)]
pub struct RrSet<'a> {
    pub rtype: u16,
    pub ttl: u32,
    count: u16,
    /// From the first RDATA of the set to the end of the zone's RDATA.
    rdata: &'a [u8],
}

/// The RDATA of one RRset, in file order.
#[derive(Debug, Clone)]
pub struct Rdatas<'a> {
    left: u16,
    rest: &'a [u8],
}

fn hash(name: &[u8]) -> u64 {
    FxBuildHasher.hash_one(name)
}

impl Nodes {
    /// The node of a lowercase wire name.
    pub fn get(&self, name: &[u8]) -> Option<Node<'_>> {
        self.find(name).map(|id| self.node(id))
    }

    pub fn contains_key(&self, name: &[u8]) -> bool {
        self.find(name).is_some()
    }

    /// Number of names, empty non-terminals included.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Every name with its node, in the order they were added.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], Node<'_>)> + '_ {
        (0..self.nodes.len()).map(|i| (self.name(i as u32), self.node(i as u32)))
    }

    /// Every name, in the order they were added.
    pub fn names(&self) -> impl Iterator<Item = &[u8]> + '_ {
        (0..self.nodes.len()).map(|i| self.name(i as u32))
    }

    fn find(&self, name: &[u8]) -> Option<u32> {
        find(&self.index, &self.names, &self.nodes, name)
    }

    fn name(&self, id: u32) -> &[u8] {
        name_of(&self.names, self.nodes[id as usize])
    }

    fn node(&self, id: u32) -> Node<'_> {
        let e = self.nodes[id as usize];
        let first = e.first_set as usize;
        Node {
            policy: (e.policy != NO_POLICY).then_some(PolicyId(e.policy)),
            delegation: e.delegation,
            sets: self
                .sets
                .get(first..first + usize::from(e.set_count))
                .unwrap_or_default(),
            rdata: &self.rdata,
        }
    }
}

fn name_of(names: &[u8], e: NodeEntry) -> &[u8] {
    let start = e.name as usize;
    names
        .get(start..start + usize::from(e.name_len))
        .unwrap_or_default()
}

fn find(index: &HashTable<u32>, names: &[u8], nodes: &[NodeEntry], name: &[u8]) -> Option<u32> {
    index
        .find(hash(name), |&id| name_of(names, nodes[id as usize]) == name)
        .copied()
}

impl<'a> Node<'a> {
    /// The RRset of a type.
    pub fn rrset(&self, rtype: u16) -> Option<RrSet<'a>> {
        self.rrsets().find(|r| r.rtype == rtype)
    }

    /// Static RRsets, in file order.
    pub fn rrsets(&self) -> impl Iterator<Item = RrSet<'a>> + 'a {
        let rdata = self.rdata;
        self.sets.iter().map(move |s| RrSet {
            rtype: s.rtype,
            ttl: s.ttl,
            count: s.count,
            rdata: rdata.get(s.rdata as usize..).unwrap_or_default(),
        })
    }

    /// An empty non-terminal (or a name whose only content was removed).
    pub fn is_empty(&self) -> bool {
        self.sets.is_empty() && self.policy.is_none()
    }
}

impl<'a> RrSet<'a> {
    pub fn rdatas(&self) -> Rdatas<'a> {
        Rdatas {
            left: self.count,
            rest: self.rdata,
        }
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        usize::from(self.count)
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

impl<'a> Iterator for Rdatas<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.left == 0 {
            return None;
        }
        let (len, rest) = self.rest.split_first_chunk::<2>()?;
        let len = usize::from(u16::from_be_bytes(*len));
        let (rd, rest) = rest.split_at_checked(len)?;
        self.left -= 1;
        self.rest = rest;
        Some(rd)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(usize::from(self.left)))
    }
}

/// A zone's names too many (or too long) for `u32` offsets: see [`MAX_ARENA`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the zone holds more than {MAX_ARENA} bytes of names or RDATA")]
pub struct TooBig;

/// Builds [`Nodes`]: names are added in any order, records of one name may come scattered
/// (a master file may write them so); `finish` groups them into RRsets in file order.
#[derive(Debug, Default)]
pub struct NodesBuilder {
    index: HashTable<u32>,
    names: Vec<u8>,
    nodes: Vec<NodeEntry>,
    records: Vec<Record>,
    /// RDATA as added, unframed (`Record` holds offset and length).
    rdata: Vec<u8>,
    /// Whether `records` is still in node order (the usual case: no sort needed).
    in_order: bool,
}

#[derive(Debug, Clone, Copy)]
struct Record {
    node: u32,
    rtype: u16,
    len: u16,
    ttl: u32,
    at: u32,
}

impl NodesBuilder {
    /// Room for `names` names of about `name_len` bytes each.
    pub fn with_capacity(names: usize, name_len: usize) -> Self {
        NodesBuilder {
            index: HashTable::with_capacity(names),
            names: Vec::with_capacity(names.saturating_mul(name_len)),
            nodes: Vec::with_capacity(names),
            records: Vec::with_capacity(names),
            rdata: Vec::new(),
            in_order: true,
        }
    }

    /// Room for `names` more names of about `name_len` bytes.
    pub fn reserve(&mut self, names: usize, name_len: usize) {
        let (n, nodes) = (&self.names, &self.nodes);
        self.index
            .reserve(names, |&i| hash(name_of(n, nodes[i as usize])));
        self.names.reserve(names.saturating_mul(name_len));
        self.nodes.reserve(names);
        self.records.reserve(names);
    }

    /// The id of a name, if added.
    pub fn find(&self, name: &[u8]) -> Option<u32> {
        find(&self.index, &self.names, &self.nodes, name)
    }

    /// The id of a name, added when new (`true`).
    pub fn insert(&mut self, name: &[u8]) -> Result<(u32, bool), TooBig> {
        let id = u32::try_from(self.nodes.len())
            .ok()
            .filter(|id| *id != u32::MAX)
            .ok_or(TooBig)?;
        let offset = u32::try_from(self.names.len()).map_err(|_| TooBig)?;
        let name_len = u8::try_from(name.len()).map_err(|_| TooBig)?;
        if self.names.len() + name.len() > MAX_ARENA {
            return Err(TooBig);
        }
        // One probe finds the name or the slot for it.
        let (names, nodes) = (&self.names, &self.nodes);
        let entry = self.index.entry(
            hash(name),
            |&i| name_of(names, nodes[i as usize]) == name,
            |&i| hash(name_of(names, nodes[i as usize])),
        );
        match entry {
            hashbrown::hash_table::Entry::Occupied(e) => Ok((*e.get(), false)),
            hashbrown::hash_table::Entry::Vacant(e) => {
                e.insert(id);
                self.names.extend_from_slice(name);
                self.nodes.push(NodeEntry {
                    name: offset,
                    name_len,
                    policy: NO_POLICY,
                    ..NodeEntry::default()
                });
                Ok((id, true))
            }
        }
    }

    /// The wire name of an id.
    pub fn name(&self, id: u32) -> &[u8] {
        name_of(&self.names, self.nodes[id as usize])
    }

    /// Number of names.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// One record of a name. Within an RRset a duplicate is dropped and the first TTL
    /// stands (RFC 2181 §5, §5.2); that is settled in `finish`.
    pub fn add(&mut self, node: u32, rtype: u16, ttl: u32, rdata: &[u8]) -> Result<(), TooBig> {
        let len = u16::try_from(rdata.len()).map_err(|_| TooBig)?;
        let at = u32::try_from(self.rdata.len()).map_err(|_| TooBig)?;
        if self.rdata.len() + rdata.len() > MAX_ARENA {
            return Err(TooBig);
        }
        if self.records.last().is_some_and(|r| r.node > node) {
            self.in_order = false;
        }
        self.rdata.extend_from_slice(rdata);
        self.records.push(Record {
            node,
            rtype,
            len,
            ttl,
            at,
        });
        Ok(())
    }

    /// A published policy answers at this name.
    pub fn set_policy(&mut self, node: u32, policy: PolicyId) {
        self.nodes[node as usize].policy = policy.0;
    }

    /// Group the records into RRsets (file order of their first record, duplicates
    /// dropped), mark delegations (NS below `apex`), and freeze.
    pub fn finish(mut self, apex: &[u8]) -> Result<Nodes, TooBig> {
        if !self.in_order {
            // Stable: the records of one name keep their file order.
            self.records.sort_by_key(|r| r.node);
        }
        let mut sets: Vec<SetEntry> = Vec::with_capacity(self.records.len());
        let mut rdata: Vec<u8> = Vec::with_capacity(self.rdata.len() + 2 * self.records.len());
        let mut types: Vec<u16> = Vec::new();
        let mut start = 0;
        while start < self.records.len() {
            let node = self.records[start].node;
            let end = start
                + self.records[start..]
                    .iter()
                    .position(|r| r.node != node)
                    .unwrap_or(self.records.len() - start);
            let group = &self.records[start..end];
            types.clear();
            for r in group {
                if !types.contains(&r.rtype) {
                    types.push(r.rtype);
                }
            }
            let first_set = u32::try_from(sets.len()).map_err(|_| TooBig)?;
            for &t in &types {
                let set_start = rdata.len();
                let mut count: u16 = 0;
                let mut ttl = None;
                for r in group.iter().filter(|r| r.rtype == t) {
                    let rd = &self.rdata[r.at as usize..r.at as usize + usize::from(r.len)];
                    let dup = Rdatas {
                        left: count,
                        rest: &rdata[set_start..],
                    }
                    .any(|seen| seen == rd);
                    if dup {
                        continue;
                    }
                    count = count.checked_add(1).ok_or(TooBig)?;
                    ttl.get_or_insert(r.ttl);
                    rdata.extend_from_slice(&r.len.to_be_bytes());
                    rdata.extend_from_slice(rd);
                }
                sets.push(SetEntry {
                    rtype: t,
                    count,
                    ttl: ttl.unwrap_or_default(),
                    rdata: u32::try_from(set_start).map_err(|_| TooBig)?,
                });
            }
            let e = &mut self.nodes[node as usize];
            e.first_set = first_set;
            e.set_count = u16::try_from(types.len()).map_err(|_| TooBig)?;
            let name = name_of(&self.names, *e);
            e.delegation = name != apex && types.contains(&rtype::NS);
            start = end;
        }
        if rdata.len() > MAX_ARENA {
            return Err(TooBig);
        }
        // The builder's own arrays go before the zone is used: only the frozen ones stay.
        drop(self.records);
        drop(self.rdata);
        // Shrinking a big array copies it into fresh pages: only worth it for much slack.
        shrink(&mut self.names);
        shrink(&mut self.nodes);
        shrink(&mut sets);
        shrink(&mut rdata);
        Ok(Nodes {
            index: self.index,
            names: self.names,
            nodes: self.nodes,
            sets,
            rdata,
        })
    }
}

/// Give back a Vec's spare capacity when it is over an eighth of its length.
fn shrink<T>(v: &mut Vec<T>) {
    if v.capacity() - v.len() > v.len() / 8 {
        v.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::wire;

    fn name(s: &str) -> Box<[u8]> {
        wire::from_text(s).expect("valid name")
    }

    #[test]
    fn scattered_records_group_into_rrsets_in_file_order() {
        let apex = name("z.test.");
        let mut b = NodesBuilder::default();
        let (a, _) = b.insert(&name("a.z.test.")).expect("fits");
        let (c, _) = b.insert(&name("c.z.test.")).expect("fits");
        b.add(c, rtype::NS, 60, b"\x02ns\x00").expect("fits");
        b.add(a, rtype::A, 10, &[192, 0, 2, 1]).expect("fits");
        b.add(a, rtype::TXT, 20, b"\x01x").expect("fits");
        b.add(a, rtype::A, 99, &[192, 0, 2, 2]).expect("fits");
        b.add(a, rtype::A, 99, &[192, 0, 2, 1]).expect("fits");
        assert_eq!(b.insert(&name("A.z.test.")).expect("fits"), (a, false));
        let nodes = b.finish(&apex).expect("fits");
        let n = nodes.get(&name("a.z.test.")).expect("a is a name");
        let types: Vec<u16> = n.rrsets().map(|s| s.rtype).collect();
        assert_eq!(types, [rtype::A, rtype::TXT]);
        let set = n.rrset(rtype::A).expect("A");
        assert_eq!(set.ttl, 10, "the first TTL read stands");
        let rds: Vec<&[u8]> = set.rdatas().collect();
        assert_eq!(rds, [&[192, 0, 2, 1][..], &[192, 0, 2, 2][..]]);
        assert!(!n.delegation && n.policy.is_none());
        let c = nodes.get(&name("c.z.test.")).expect("c is a name");
        assert!(c.delegation);
        assert!(nodes.get(&name("b.z.test.")).is_none());
        assert_eq!(nodes.names().count(), 2);
    }

    #[test]
    fn names_without_records_are_empty_unless_a_policy_answers() {
        let mut b = NodesBuilder::default();
        let (p, _) = b.insert(&name("p.z.test.")).expect("fits");
        b.insert(&name("e.z.test.")).expect("fits");
        b.set_policy(p, PolicyId(7));
        let nodes = b.finish(&name("z.test.")).expect("fits");
        assert_eq!(
            nodes.get(&name("p.z.test.")).expect("p").policy,
            Some(PolicyId(7))
        );
        assert!(nodes.get(&name("e.z.test.")).expect("e").is_empty());
    }
}
