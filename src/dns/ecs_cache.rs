//! A UDP worker's cache of ECS answers. Real traffic asks the same few names from many
//! client subnets, and a geo answer is the same for every subnet of one class of the
//! policy's tree: a query whose only EDNS option is ECS is answered again from a kept
//! response of the same octets (the ECS address aside) when each read the kept decision
//! made of its client returns the same for this client ([`Replayer`]). The addresses
//! are then drawn again with this query's seed, the scope is this client's own, and the
//! ECS address is its own: the response is octet for octet what answering in full gives.
//!
//! Keyed by the query's octets after its ID up to the ECS address and by the world's
//! generation; each key's set keeps answers for up to [`WAYS`] distinct reads (the classes
//! of one policy). A static answer asked with ECS depends on no read and is kept as well.
//! Allocated once per worker.

use std::net::IpAddr;

use super::handler::{Local, Response, Transport, answer};
use super::lookup::Replay;
use super::packet_cache::ID_LEN;
use super::wire::{self, ECS_OPTION, OPT_FIXED};
use crate::policy::{self, Client, Ctx, Decision, Replayer};
use crate::world::World;

/// Sets, each for one question (hot geo names times their types and ECS prefix lengths).
const SETS: usize = 32;
/// Answers kept per question: the classes of a policy's tree that traffic meets most.
const WAYS: usize = 8;
/// Largest query kept, after its ID and before the ECS address.
const KEY_MAX: usize = 128;
/// Largest response kept: a policy answer of a few addresses with its OPT record.
const RESPONSE_MAX: usize = 512;
/// Longest question name kept (wire form): part of the key.
const QNAME_MAX: usize = KEY_MAX;
/// The ECS option up to its address (code, length, family, source and scope prefixes).
const ECS_FIXED: usize = 8;
/// The longest ECS address (IPv6).
const ADDR_MAX: usize = 16;

struct Entry {
    /// `None`: no policy decided; the response is the same for every client.
    replay: Option<Replay>,
    response_len: usize,
    response: [u8; RESPONSE_MAX],
    reply: Response,
}

struct Set {
    /// Generation of the world answered from; 0: empty (world generations start at 1).
    generation: u64,
    tag: u32,
    key_len: usize,
    key: [u8; KEY_MAX],
    qname: [u8; QNAME_MAX],
    /// Entries in use, and the next one to replace when all are.
    filled: usize,
    next: usize,
    /// The entry that answered last.
    last_hit: usize,
    entries: [Entry; WAYS],
}

pub(super) struct EcsCache {
    sets: Box<[Set]>,
}

impl EcsCache {
    pub(super) fn new() -> EcsCache {
        let entry = || Entry {
            replay: None,
            response_len: 0,
            response: [0; RESPONSE_MAX],
            reply: Response {
                class: super::rrl::Class::Error(None),
                head_len: 0,
                qname_len: 0,
                reuse: None,
            },
        };
        let set = || Set {
            generation: 0,
            tag: 0,
            key_len: 0,
            key: [0; KEY_MAX],
            qname: [0; QNAME_MAX],
            filled: 0,
            next: 0,
            last_hit: 0,
            entries: std::array::from_fn(|_| entry()),
        };
        EcsCache {
            sets: (0..SETS).map(|_| set()).collect(),
        }
    }

    /// [`answer`] over UDP for a query whose only EDNS option is ECS, its address being the
    /// last `addr_len` octets of `packet` ([`ecs_tail`]).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn answer(
        &mut self,
        world: &World,
        packet: &[u8],
        addr_len: usize,
        src: &IpAddr,
        seed: u64,
        out: &mut Vec<u8>,
        local: &mut Local,
    ) -> Option<Response> {
        let end = packet.len() - addr_len;
        let Some(key) = packet.get(ID_LEN..end).filter(|k| k.len() <= KEY_MAX) else {
            return answer(world, packet, src, Transport::Udp, seed, out, local);
        };
        let (index, tag) = super::packet_cache::slot_of(key);
        let set = &mut self.sets[index % SETS];
        if set.tag == tag
            && set.generation == world.generation
            && set.key[..set.key_len] == *key
            && let Some(reply) = replay(set, world, packet, addr_len, seed, out, local)
        {
            return Some(reply);
        }
        let reply = answer(world, packet, src, Transport::Udp, seed, out, local)?;
        // A policy answer is kept with what its decision read of the client.
        let kept = match reply.reuse {
            Some(r) if r.decided => local.scratch.replay.map(Some),
            Some(_) => Some(None),
            None => None,
        };
        if let Some(kept) = kept
            && out.len() <= RESPONSE_MAX
            && reply.qname_len <= QNAME_MAX
            && echoes(out, packet, addr_len)
            && ecs_parsed(packet, addr_len)
        {
            if set.tag != tag
                || set.generation != world.generation
                || set.key[..set.key_len] != *key
            {
                set.generation = world.generation;
                set.tag = tag;
                set.key_len = key.len();
                set.key[..key.len()].copy_from_slice(key);
                set.qname[..reply.qname_len].copy_from_slice(&local.qname[..reply.qname_len]);
                set.filled = 0;
                set.next = 0;
                set.last_hit = 0;
            }
            let slot = if set.filled < WAYS {
                set.filled += 1;
                set.filled - 1
            } else {
                set.next = (set.next + 1) % WAYS;
                set.next
            };
            let entry = &mut set.entries[slot];
            entry.replay = kept;
            entry.response_len = out.len();
            entry.response[..out.len()].copy_from_slice(out);
            entry.reply = reply;
        }
        Some(reply)
    }
}

/// The response of `set` for this query's client, when one of its answers holds for it.
fn replay(
    set: &mut Set,
    world: &World,
    packet: &[u8],
    addr_len: usize,
    seed: u64,
    out: &mut Vec<u8>,
    local: &mut Local,
) -> Option<Response> {
    let n = packet.len();
    let addr = &packet[n - addr_len..];
    let family = u16::from_be_bytes([packet[n - addr_len - 4], packet[n - addr_len - 3]]);
    let source = packet[n - addr_len - 2];
    // Else FORMERR, answered in full.
    if !wire::ecs_bits_clear(source, addr) {
        return None;
    }
    let client = Client {
        addr: wire::ecs_address(family, addr)?,
        source_prefix: Some(source),
    };
    let ctx = Ctx {
        snap: &world.snapshot,
        health: &world.health,
        geo: world,
    };
    let mut replayer = Replayer::new(&ctx, client);
    // The answer that held last first: traffic from one class comes in runs.
    let first = set.last_hit;
    let order = std::iter::once(first).chain((0..set.filled).filter(|&i| i != first));
    for i in order.filter(|&i| i < set.filled) {
        let entry = &set.entries[i];
        let reply = entry.reply;
        let Some(reuse) = reply.reuse else { continue };
        let scope = match &entry.replay {
            None => None,
            Some(r) => match replayer.scope(&r.decision.reads) {
                Some(scope) => Some(scope),
                None => continue,
            },
        };
        let response = &entry.response[..entry.response_len];
        out.clear();
        out.extend_from_slice(&packet[..ID_LEN]);
        out.extend_from_slice(&response[ID_LEN..]);
        let len = out.len();
        out[len - addr_len..].copy_from_slice(addr);
        if let (Some(scope), Some(r)) = (scope, &entry.replay) {
            out[len - addr_len - 1] = scope;
            if !redraw(world, r, seed, out, &mut local.scratch.addrs) {
                return None;
            }
        }
        local.qname[..reply.qname_len].copy_from_slice(&set.qname[..reply.qname_len]);
        local
            .stats
            .query(Some(reuse.zone), reuse.qtype, reuse.rcode);
        if let Some(r) = &entry.replay
            && let policy::Outcome::Pool { pool, fail_open } = r.decision.outcome
        {
            local.stats.answer(r.decision.policy, pool, fail_open);
        }
        local.stats.replayed();
        set.last_hit = i;
        return Some(reply);
    }
    None
}

/// Draw the answer's addresses again with this query's seed, as answering in full does,
/// into the address records of `out`; false if they no longer fit them.
fn redraw(world: &World, r: &Replay, seed: u64, out: &mut [u8], addrs: &mut Vec<IpAddr>) -> bool {
    let decision = Decision {
        order_seed: seed,
        ..r.decision
    };
    policy::select_addresses(&world.snapshot, &world.health, &decision, r.want_v6, addrs);
    if addrs.len() != r.count || r.records_at + r.count * r.record_len > out.len() {
        return false;
    }
    for (i, addr) in addrs.iter().enumerate() {
        let end = r.records_at + (i + 1) * r.record_len;
        match addr {
            IpAddr::V4(a) if r.record_len >= 4 => out[end - 4..end].copy_from_slice(&a.octets()),
            IpAddr::V6(a) if r.record_len >= 16 => out[end - 16..end].copy_from_slice(&a.octets()),
            _ => return false,
        }
    }
    true
}

/// When the only additional record of `packet` is an OPT record whose only option is ECS
/// (so that the ECS address ends the packet): the length of that address. Checked in a few
/// octets; [`ecs_parsed`] confirms it with the parser before anything is kept.
#[inline]
pub(super) fn ecs_tail(packet: &[u8]) -> Option<usize> {
    if packet.get(10..12)? != [0, 1] {
        return None;
    }
    let n = packet.len();
    for addr_len in 0..=ADDR_MAX {
        let opt = n.checked_sub(addr_len + ECS_FIXED + OPT_FIXED)?;
        let ecs = opt + OPT_FIXED;
        // The source prefix first: it rules out every length but one.
        if usize::from(packet[ecs + 6]).div_ceil(8) != addr_len {
            continue;
        }
        let rdlen = (ECS_FIXED + addr_len) as u16;
        let option_len = (ECS_FIXED - 4 + addr_len) as u16;
        if packet[opt..opt + 3] == [0, 0, 41]
            && packet[opt + 9..opt + 11] == rdlen.to_be_bytes()
            && packet[ecs..ecs + 2] == ECS_OPTION.to_be_bytes()
            && packet[ecs + 2..ecs + 4] == option_len.to_be_bytes()
        {
            return Some(addr_len);
        }
    }
    None
}

/// The parser reads `packet` as [`ecs_tail`] does: an ECS option whose address is its last
/// `addr_len` octets.
fn ecs_parsed(packet: &[u8], addr_len: usize) -> bool {
    let mut name = [0; wire::MAX_NAME];
    let Ok(q) = wire::parse(packet, &mut name) else {
        return false;
    };
    let n = packet.len();
    q.edns.and_then(|e| e.ecs).is_some_and(|e| {
        usize::from(e.source_prefix).div_ceil(8) == addr_len
            && e.source_prefix == packet[n - addr_len - 2]
            && wire::ecs_address(e.family(), &packet[n - addr_len..]) == Some(e.addr)
    })
}

/// `response` ends with the ECS option of `packet` (RFC 7871 §7.2.1: echoed with its
/// scope), and is not truncated: what a replay rewrites is where it expects.
fn echoes(response: &[u8], packet: &[u8], addr_len: usize) -> bool {
    let tail = ECS_FIXED + addr_len;
    let (Some(r), Some(p)) = (
        response.len().checked_sub(tail).map(|at| &response[at..]),
        packet.len().checked_sub(tail).map(|at| &packet[at..]),
    ) else {
        return false;
    };
    let truncated = response.get(2).is_none_or(|flags| flags & 0x02 != 0);
    // Everything but the scope (octet 7) is echoed as asked.
    !truncated && r[..7] == p[..7] && r[8..] == p[8..]
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::geo::GeoDb;
    use crate::health::view::EndpointOverrides;
    use crate::health::{Override, View};

    /// The example zone, and a zone of geo policies nested and going on down the chain.
    fn world() -> World {
        let mut zone = std::fs::read_to_string("zones/example.toml").expect("example zone");
        zone.push_str(
            "\n[policies.chain]\nfallback = \"next\"\n\
             geo.cidr = { \"81.2.69.0/25\" = \"ap-south\", \"2001:db8:8000::/33\" = \"eu-west\" }\n\
             geo.subdivision = { \"GB-ENG\" = \"eu-west\" }\n\
             geo.continent = { EU = \"us-east\", NA = [\"ap-south\", \"us-east\"] }\n\
             geo.default = \"eu-west\"\n\
             [policies.split]\nweighted = { us-east = 3, eu-west = 1 }\n\
             [policies.nested]\nfailover = [\"ap-south\", \"www\", \"chain\"]\n\
             [records.alias]\nCNAME = \"nested.gslb.example.test.\"\n",
        );
        let snap = crate::config::load_str("example.toml".as_ref(), &zone).expect("zone loads");
        let health = View::unknown(&snap);
        let db = GeoDb::open("geoip/test-city.mmdb".as_ref(), None).expect("test database");
        World::new(Arc::new(snap), Arc::new(health), Some(Arc::new(db)))
    }

    /// A query for `name` whose only EDNS option is ECS of `family` and `source` bits with
    /// these address octets.
    fn query(id: u16, name: &str, qtype: u16, family: u16, source: u8, addr: &[u8]) -> Vec<u8> {
        let mut p = id.to_be_bytes().to_vec();
        p.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1]);
        let labels = name.split('.').filter(|l| !l.is_empty());
        p.extend(labels.flat_map(|l| std::iter::once(l.len() as u8).chain(l.bytes())));
        p.extend([0].into_iter().chain(qtype.to_be_bytes()).chain([0, 1]));
        let option_len = 4 + addr.len() as u16;
        p.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0]);
        p.extend_from_slice(&(option_len + 4).to_be_bytes());
        p.extend_from_slice(&ECS_OPTION.to_be_bytes());
        p.extend_from_slice(&option_len.to_be_bytes());
        p.extend_from_slice(&family.to_be_bytes());
        p.extend_from_slice(&[source, 0]);
        p.extend_from_slice(addr);
        p
    }

    /// The ECS address of `source` bits of an address (the rest cut off).
    fn subnet(addr: IpAddr, source: u8) -> (u16, Vec<u8>) {
        let (family, masked) = match ipnet::IpNet::new(addr, source).expect("prefix").trunc() {
            ipnet::IpNet::V4(n) => (1, n.addr().octets().to_vec()),
            ipnet::IpNet::V6(n) => (2, n.addr().octets().to_vec()),
        };
        let len = usize::from(source).div_ceil(8);
        (family, masked[..len].to_vec())
    }

    /// What answering in full gives for `packet` with `seed`.
    fn fresh(world: &World, packet: &[u8], seed: u64) -> (Vec<u8>, Option<Response>, Local) {
        let mut local = Local::default();
        let mut out = Vec::new();
        let src: IpAddr = "127.0.0.1".parse().expect("ip");
        let reply = answer(
            world,
            packet,
            &src,
            Transport::Udp,
            seed,
            &mut out,
            &mut local,
        );
        (out, reply, local)
    }

    /// Ask through the cache and in full; both must give the same octets, reply and counts.
    /// Returns whether the cache answered.
    fn same(
        cache: &mut super::super::packet_cache::PacketCache,
        world: &World,
        packet: &[u8],
        seed: u64,
    ) -> bool {
        let (want, want_reply, want_local) = fresh(world, packet, seed);
        let src: IpAddr = "127.0.0.1".parse().expect("ip");
        let mut local = Local::default();
        let mut out = vec![0xee; 3];
        let reply = cache.answer(world, packet, &src, seed, &mut out, &mut local);
        assert_eq!(out, want, "{packet:?}");
        assert_eq!(reply, want_reply);
        let len = reply.map_or(0, |r| r.qname_len);
        assert_eq!(local.qname[..len], want_local.qname[..len]);
        assert_eq!(
            local.stats.counted_queries(),
            want_local.stats.counted_queries()
        );
        assert_eq!(
            local.stats.counted_answers(),
            want_local.stats.counted_answers()
        );
        local.stats.replayed_count() == 1
    }

    #[test]
    fn a_replayed_ecs_answer_is_the_answer_in_full() {
        let world = world();
        let mut cache = super::super::packet_cache::PacketCache::new();
        // Clients in and around the test database's networks, cidr rules and elsewhere.
        let v4: Vec<IpAddr> = [
            "81.2.69.1",
            "81.2.69.200",
            "198.51.100.7",
            "198.51.100.250",
            "203.0.113.9",
            "203.0.113.200",
            "10.1.2.3",
            "10.200.0.1",
            "192.0.2.77",
            "8.8.4.4",
            "1.2.3.4",
            "89.160.20.113",
            "2.125.160.216",
            "175.16.199.1",
            "216.160.83.57",
        ]
        .iter()
        .map(|a| a.parse().expect("ip"))
        .collect();
        let v6: Vec<IpAddr> = [
            "2001:db8::1",
            "2001:db8:8000::1",
            "2001:db8:ffff::1",
            "2a02:cf40::1",
            "2001:218::1",
            "::ffff:81.2.69.1",
            "::ffff:198.51.100.7",
            "2c0f:f248::1",
        ]
        .iter()
        .map(|a| a.parse().expect("ip"))
        .collect();
        let names = [
            ("www", 1),
            ("www", 28),
            ("www", 15),
            ("chain", 1),
            ("chain", 28),
            ("nested", 1),
            ("alias", 1),
            ("docs", 1),
            ("api", 1),
            ("canary", 1),
            ("fast", 1),
            ("eu-or-split", 1),
            ("split", 1),
            ("static", 1),
            ("nothing", 1),
            ("x.wild", 1),
        ];
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut hits = std::collections::HashMap::<&str, (u32, u32)>::new();
        for round in 0..6000u32 {
            let r = next();
            let (name, qtype) = names[r as usize % names.len()];
            let v6_client = (r >> 8) % 3 == 0;
            let pool = if v6_client { &v6 } else { &v4 };
            let base = pool[(r >> 16) as usize % pool.len()];
            // Vary the low bits, so that subnets of one network and of its neighbours come.
            let addr = match base {
                IpAddr::V4(a) => {
                    IpAddr::from((u32::from(a) ^ ((r >> 24) as u32 & 0x3ff)).to_be_bytes())
                }
                IpAddr::V6(a) => IpAddr::from(
                    (u128::from(a) ^ (u128::from((r >> 24) & 0xffff) << 64)).to_be_bytes(),
                ),
            };
            let sources: &[u8] = if v6_client {
                &[56, 48, 128, 0, 33]
            } else {
                &[24, 32, 20, 0, 9]
            };
            let source = sources[(r >> 40) as usize % sources.len()];
            let (family, octets) = subnet(addr, source);
            let fqdn = format!("{name}.gslb.example.test");
            let packet = query(round as u16, &fqdn, qtype, family, source, &octets);
            assert_eq!(ecs_tail(&packet), Some(octets.len()));
            let hit = same(&mut cache, &world, &packet, next());
            let h = hits.entry(name).or_default();
            h.0 += u32::from(hit);
            h.1 += 1;
        }
        // Choices that read the client's record (latency), its network (sticky) or the seed
        // (weighted) are never replayed.
        for name in ["fast", "canary", "split"] {
            assert_eq!(hits[name].0, 0, "{name}");
        }
        // A failover whose first target is up reads nothing: the same for every client.
        assert!(hits["eu-or-split"].0 > 0);
        // Geo answers and static data are: ask the hot names from /24s of many clients.
        for name in ["www", "chain", "nested", "alias", "static"] {
            let fqdn = format!("{name}.gslb.example.test");
            let mut hit = 0;
            for i in 0..500 {
                let base = v4[(next() as usize) % v4.len()];
                let (family, octets) = subnet(base, 24);
                let packet = query(i, &fqdn, 1, family, 24, &octets);
                hit += u32::from(same(&mut cache, &world, &packet, next()));
            }
            assert!(hit > 400, "{name}: {hit} of 500");
        }
        // Bits past the source prefix: FORMERR, as in full, even when the rest is kept.
        let good = query(1, "www.gslb.example.test", 1, 1, 20, &[81, 2, 64]);
        same(&mut cache, &world, &good, 1);
        assert!(same(&mut cache, &world, &good, 2));
        let bad = query(1, "www.gslb.example.test", 1, 1, 20, &[81, 2, 69]);
        assert!(!same(&mut cache, &world, &bad, 3));
        // A pool down: a new world, whose answers are worked out anew.
        let snap = &world.snapshot;
        let mut overrides = vec![None; snap.pools.len()];
        let eu = snap
            .pools
            .iter()
            .position(|p| p.name == "eu-west")
            .expect("pool");
        overrides[eu] = Some(Override::Down);
        let down = View::unknown(snap).with_overrides(snap, overrides, EndpointOverrides::new());
        let next_world = world.with_health(Arc::new(down));
        let eu_client = query(7, "www.gslb.example.test", 1, 1, 24, &[81, 2, 69]);
        same(&mut cache, &world, &eu_client, 5);
        assert!(same(&mut cache, &world, &eu_client, 6));
        assert!(!same(&mut cache, &next_world, &eu_client, 7));
        assert!(same(&mut cache, &next_world, &eu_client, 8));
    }

    #[test]
    fn questions_answers_and_responses_up_to_the_bounds_are_kept() {
        // Ten cidr rules: ten distinct reads of one question, for a set of WAYS answers.
        let mut zone = String::from(
            "origin = \"t.test.\"\n[soa]\nmname = \"ns1.t.test.\"\nrname = \"h.t.test.\"\n\
             [records.\"@\"]\nNS = [\"ns1.t.test.\"]\n[records.ns1]\nA = [\"192.0.2.53\"]\n\
             [records.\"*.w\"]\nA = [\"192.0.2.9\"]\n[pools.a]\nA = [\"192.0.2.1\"]\n\
             [pools.b]\nA = [\"192.0.2.2\"]\n[policies.many]\ngeo.default = \"a\"\ngeo.cidr = { ",
        );
        let rules: Vec<String> = (0..10)
            .map(|i| format!("\"10.{i}.0.0/16\" = \"b\""))
            .collect();
        zone.push_str(&rules.join(", "));
        zone.push_str(" }\n");
        // A TXT record whose response with an ECS /24 is RESPONSE_MAX octets, and one more:
        // header, question, the record (its text in two strings, each with a length octet)
        // and the OPT record with ECS.
        let txt_len = |name_len: usize| RESPONSE_MAX - 12 - (name_len + 4) - (2 + 10 + 2) - 22;
        let (bia, bib) = (txt_len(12), txt_len(12) + 1);
        zone.push_str(&format!(
            "[records.bia]\nTXT = [\"{}\"]\n[records.bib]\nTXT = [\"{}\"]\n",
            "x".repeat(bia),
            "x".repeat(bib)
        ));
        let snap = crate::config::load_str("t.toml".as_ref(), &zone).expect("zone loads");
        let health = View::unknown(&snap);
        let world = World::new(Arc::new(snap), Arc::new(health), None);
        let mut cache = super::super::packet_cache::PacketCache::new();
        let set_of = |cache: &super::super::packet_cache::PacketCache, packet: &[u8]| {
            let key = &packet[ID_LEN..packet.len() - 3];
            let set = &cache.ecs().sets[super::super::packet_cache::slot_of(key).0 % SETS];
            (set.key[..set.key_len] == *key).then_some(set.filled)
        };
        let many = |i: u16, net: u8| query(i, "many.t.test", 1, 1, 24, &[10, net, 7]);
        // More classes than ways: the set stays full, the answers are replaced in turn, and
        // every answer is still the full one; a class asked twice in a row is then kept.
        for round in 0..3 {
            for net in 0..10 {
                same(
                    &mut cache,
                    &world,
                    &many(net.into(), net),
                    u64::from(round * 10 + net),
                );
            }
            assert_eq!(set_of(&cache, &many(0, 0)), Some(WAYS));
        }
        for net in 0..10 {
            same(&mut cache, &world, &many(1, net), 1);
            assert!(same(&mut cache, &world, &many(2, net), 2), "{net}");
        }
        // Responses of RESPONSE_MAX octets are kept; one more and they are not.
        for (name, len, kept) in [
            ("bia.t.test", RESPONSE_MAX, true),
            ("bib.t.test", RESPONSE_MAX + 1, false),
        ] {
            let packet = query(1, name, 16, 1, 24, &[192, 0, 2]);
            assert_eq!(fresh(&world, &packet, 1).0.len(), len, "{name}");
            assert!(!same(&mut cache, &world, &packet, 1));
            assert_eq!(same(&mut cache, &world, &packet, 2), kept, "{name}");
        }
        // Keys of KEY_MAX octets (after the ID, before the address) are kept; one more and
        // they are not.
        for (extra, kept) in [(0, true), (1, false)] {
            let name = format!("{}.{}.w.t.test", "a".repeat(41), "b".repeat(42 + extra));
            let packet = query(1, &name, 1, 1, 24, &[192, 0, 2]);
            assert_eq!(packet.len() - ID_LEN - 3, KEY_MAX + extra);
            assert!(!same(&mut cache, &world, &packet, 1));
            assert_eq!(same(&mut cache, &world, &packet, 2), kept, "{extra}");
        }
    }

    #[test]
    fn only_an_ecs_option_ending_the_query_is_found() {
        let q = query(1, "a.test", 1, 1, 24, &[192, 0, 2]);
        assert_eq!(ecs_tail(&q), Some(3));
        assert_eq!(ecs_tail(&query(1, "a.test", 1, 2, 0, &[])), Some(0));
        assert_eq!(ecs_tail(&query(1, "a.test", 1, 2, 128, &[7; 16])), Some(16));
        // The source prefix and the address length disagree.
        assert_eq!(ecs_tail(&query(1, "a.test", 1, 1, 16, &[192, 0, 2])), None);
        // A cookie after ECS, or before it: the OPT record holds more than ECS.
        let opt = q.len() - (OPT_FIXED + ECS_FIXED + 3);
        let cookie = [0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8];
        let mut after = q.clone();
        after.extend_from_slice(&cookie);
        after[opt + 10] += cookie.len() as u8;
        assert_eq!(ecs_tail(&after), None);
        let mut before = q[..opt + OPT_FIXED].to_vec();
        before.extend_from_slice(&cookie);
        before.extend_from_slice(&q[opt + OPT_FIXED..]);
        before[opt + 10] += cookie.len() as u8;
        assert_eq!(ecs_tail(&before), None);
        let mut answered = Vec::new();
        let src: IpAddr = "127.0.0.1".parse().expect("ip");
        let world = world();
        for p in [&after, &before] {
            let reply = answer(
                &world,
                p,
                &src,
                Transport::Udp,
                1,
                &mut answered,
                &mut Local::default(),
            );
            assert!(reply.is_some());
        }
        // No OPT record, or more than one additional record.
        let mut two = q.clone();
        two[11] = 2;
        assert_eq!(ecs_tail(&two), None);
        assert_eq!(ecs_tail(&q[..12]), None);
    }
}
