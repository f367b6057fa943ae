//! A binary prefix trie of CIDR networks, compiled once from a zone's rules (geo `cidr`
//! rules, latency-table rows) and read on the DNS path without allocating.
//!
//! A lookup walks the client's address bit by bit and returns two things at once: the
//! longest network that contains the client, and the ECS scope of that match (RFC 7871
//! §7.2.1), the shortest prefix of the client inside which the match is the same for every
//! address. That is the depth where the walk leaves the trie: where the path ends, plus one
//! bit when a more specific network branches off the other way at that depth. So a client of
//! `10.0.0.0/8` next to a `10.1.0.0/16` rule gets /14 (10.4.0.0/14 holds no other rule), not
//! /8. gdnsd compiles its whole GeoIP map the same way; a GeoIP database folded in as more
//! leaves would give the scope of the whole decision from this one walk.

use std::net::IpAddr;

use ipnet::IpNet;

/// No child / no entry.
const NONE: u32 = u32::MAX;

/// Networks mapped to values, longest prefix first.
#[derive(Debug)]
pub struct PrefixMap<V> {
    /// Every network with its value, longest prefix first, file order among equals.
    entries: Vec<(IpNet, V)>,
    /// Node 0 is the root of IPv4 (32 bits deep), node 1 the root of IPv6 (128).
    nodes: Vec<Node>,
}

#[derive(Debug, Clone, Copy)]
struct Node {
    child: [u32; 2],
    /// Index in `entries` of the network that ends at this node.
    entry: u32,
}

const EMPTY_NODE: Node = Node {
    child: [NONE, NONE],
    entry: NONE,
};

/// What a lookup found.
#[derive(Debug, PartialEq, Eq)]
pub struct Match<'a, V> {
    /// The longest network containing the address, and its value.
    pub entry: Option<(&'a IpNet, &'a V)>,
    /// The shortest prefix of the address inside which every address has this same match
    /// (0 when the map holds no network of the address's family).
    pub scope: u8,
}

// Copy whatever `V` is: a match only holds references.
impl<V> Clone for Match<'_, V> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<V> Copy for Match<'_, V> {}

impl<V> Default for PrefixMap<V> {
    fn default() -> Self {
        PrefixMap::new(Vec::new())
    }
}

impl<V> PrefixMap<V> {
    /// Build the trie. Networks are truncated to their prefix; of two equal networks the
    /// first one listed wins.
    pub fn new(mut entries: Vec<(IpNet, V)>) -> PrefixMap<V> {
        for e in &mut entries {
            e.0 = e.0.trunc();
        }
        entries.sort_by_key(|(net, _)| std::cmp::Reverse(net.prefix_len()));
        let mut map = PrefixMap {
            entries,
            nodes: vec![EMPTY_NODE, EMPTY_NODE],
        };
        // Insert shortest first so that, among equal networks, the first listed keeps the node.
        for i in (0..map.entries.len()).rev() {
            map.insert(i);
        }
        map
    }

    fn insert(&mut self, index: usize) {
        let net = self.entries[index].0;
        let (bits, mut node) = match net {
            IpNet::V4(n) => (u128::from(n.addr().to_bits()) << 96, 0usize),
            IpNet::V6(n) => (n.addr().to_bits(), 1usize),
        };
        for depth in 0..net.prefix_len() {
            let b = bit(bits, depth);
            if self.nodes[node].child[b] == NONE {
                self.nodes.push(EMPTY_NODE);
                self.nodes[node].child[b] = (self.nodes.len() - 1) as u32;
            }
            node = self.nodes[node].child[b] as usize;
        }
        // Entries are inserted from the last index to the first: the first listed of two
        // equal networks overwrites the later one.
        self.nodes[node].entry = index as u32;
    }

    /// The longest network containing `ip` and the scope of that answer. `ip` is taken as
    /// it is: callers canonicalize `::ffff:a.b.c.d` first if they want IPv4 rules to match.
    pub fn lookup(&self, ip: IpAddr) -> Match<'_, V> {
        let (best, scope) = self.lookup_index(ip);
        Match {
            entry: best.map(|i| {
                let (net, v) = &self.entries[i as usize];
                (net, v)
            }),
            scope,
        }
    }

    /// [`PrefixMap::lookup`] as the index of the network in [`PrefixMap::entries`].
    pub fn lookup_index(&self, ip: IpAddr) -> (Option<u32>, u8) {
        let (bits, max, mut node) = match ip {
            IpAddr::V4(a) => (u128::from(a.to_bits()) << 96, 32u8, 0usize),
            IpAddr::V6(a) => (a.to_bits(), 128u8, 1usize),
        };
        let mut best = NONE;
        let mut depth = 0u8;
        loop {
            let n = self.nodes[node];
            if n.entry != NONE {
                best = n.entry;
            }
            if depth == max {
                break;
            }
            let b = bit(bits, depth);
            if n.child[b] == NONE {
                // The match is constant below this depth, unless a network branches off the
                // other way here: then the scope must keep this one more bit.
                if n.child[1 - b] != NONE {
                    depth += 1;
                }
                break;
            }
            node = n.child[b] as usize;
            depth += 1;
        }
        ((best != NONE).then_some(best), depth)
    }

    /// Every network with its value, longest prefix first.
    pub fn entries(&self) -> &[(IpNet, V)] {
        &self.entries
    }

    /// Every network with its value, longest prefix first.
    pub fn iter(&self) -> std::slice::Iter<'_, (IpNet, V)> {
        self.entries.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Bit `depth` of a left-aligned 128-bit address (0 is the most significant).
fn bit(bits: u128, depth: u8) -> usize {
    ((bits >> (127 - u32::from(depth))) & 1) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(nets: &[&str]) -> PrefixMap<usize> {
        PrefixMap::new(
            nets.iter()
                .enumerate()
                .map(|(i, n)| (n.parse().expect("net"), i))
                .collect(),
        )
    }

    /// (client, matched network, scope)
    fn check(m: &PrefixMap<usize>, rows: &[(&str, Option<&str>, u8)]) {
        for (ip, want, scope) in rows {
            let got = m.lookup(ip.parse().expect("ip"));
            assert_eq!(
                (got.entry.map(|(n, _)| n.to_string()), got.scope),
                (want.map(str::to_owned), *scope),
                "{ip}"
            );
        }
    }

    #[test]
    fn nested_rules_cut_the_outer_scope() {
        let m = map(&[
            "10.0.0.0/8",
            "10.1.0.0/16",
            "192.0.2.0/24",
            "192.0.2.128/25",
        ]);
        check(
            &m,
            &[
                ("10.5.5.5", Some("10.0.0.0/8"), 14),
                ("10.1.2.3", Some("10.1.0.0/16"), 16),
                ("10.0.0.1", Some("10.0.0.0/8"), 16),
                ("10.200.0.1", Some("10.0.0.0/8"), 9),
                ("192.0.2.1", Some("192.0.2.0/24"), 25),
                ("192.0.2.200", Some("192.0.2.128/25"), 25),
                // Outside every rule: the empty region around the client.
                ("11.0.0.1", None, 8),
                ("200.0.0.1", None, 5),
                ("100.0.0.1", None, 2),
            ],
        );
    }

    #[test]
    fn families_are_separate_and_empty_maps_scope_zero() {
        let m = map(&["2001:db8::/32", "2001:db8:1::/48"]);
        check(
            &m,
            &[
                ("2001:db8:2::1", Some("2001:db8::/32"), 47),
                ("2001:db8:1::1", Some("2001:db8:1::/48"), 48),
                ("10.0.0.1", None, 0),
            ],
        );
        check(&map(&[]), &[("10.0.0.1", None, 0), ("::1", None, 0)]);
        check(
            &map(&["0.0.0.0/0", "10.0.0.1/32"]),
            &[
                ("10.0.0.1", Some("10.0.0.1/32"), 32),
                ("10.0.0.0", Some("0.0.0.0/0"), 32),
            ],
        );
    }

    #[test]
    fn the_first_of_two_equal_networks_wins() {
        let m = map(&["10.0.0.0/8", "10.0.0.0/8"]);
        let got = m.lookup("10.1.1.1".parse().expect("ip"));
        assert_eq!(got.entry.map(|(_, v)| *v), Some(0));
        assert_eq!(got.scope, 8);
    }
}
