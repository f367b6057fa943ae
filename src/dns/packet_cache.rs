//! A UDP worker's cache of whole responses, as PowerDNS's packet cache: a query whose
//! response depends on nothing but its own octets and the world (static data of an unsigned
//! zone, asked without EDNS options: no policy decided, no client address or per-query seed
//! read) is answered again by copying the response and writing the new query's ID into it.
//!
//! Keyed by the query's octets after its ID and by the world's generation, so a new world
//! (a reload, a health change) empties it at once. Direct-mapped, allocated once per
//! worker; a query or response too large for a slot is answered in full and not kept. A
//! hit counts the query as answering it in full would (the same zone, type and rcode) and
//! leaves the question name for the rate limiter, so nothing downstream can tell a
//! replayed response from a fresh one; `meridian_dns_packet_cache_hits_total` counts hits.

use std::hash::Hasher;
use std::net::IpAddr;

use rustc_hash::FxHasher;

use super::ecs_cache::{EcsCache, ecs_tail};
use super::handler::{Local, Response, Transport, answer};
use crate::world::World;

/// Slots of one worker's cache: hot static names times their types and flag variants fit
/// many times over; a collision only costs the evicted query a full answer.
const SLOTS: usize = 256;
/// Largest query kept, after its ID: a question and an OPT record come to about 50 octets.
const KEY_MAX: usize = 128;
/// Largest response kept: a static answer of a few records and its OPT record.
const RESPONSE_MAX: usize = 512;
/// Longest question name kept (wire form), for the rate limiter's bucket: the name is part
/// of the key, so no kept query has a longer one.
const QNAME_MAX: usize = KEY_MAX;
/// Octets of the DNS message ID at the start of a query and its response.
pub(super) const ID_LEN: usize = 2;

struct Slot {
    /// Generation of the world answered from; 0: empty (world generations start at 1).
    generation: u64,
    key_len: usize,
    key: [u8; KEY_MAX],
    response_len: usize,
    response: [u8; RESPONSE_MAX],
    qname: [u8; QNAME_MAX],
    reply: Response,
}

pub struct PacketCache {
    /// Each slot's hash tag (0: empty), kept apart from the slots so that a miss reads four
    /// octets in L1 instead of a slot's cache line.
    tags: [u32; SLOTS],
    slots: Box<[Slot]>,
    /// Queries whose only option is ECS.
    ecs: EcsCache,
}

impl Default for PacketCache {
    fn default() -> Self {
        PacketCache::new()
    }
}

impl PacketCache {
    pub fn new() -> PacketCache {
        let empty = || Slot {
            generation: 0,
            key_len: 0,
            key: [0; KEY_MAX],
            response_len: 0,
            response: [0; RESPONSE_MAX],
            qname: [0; QNAME_MAX],
            reply: Response {
                class: super::rrl::Class::Error(None),
                head_len: 0,
                qname_len: 0,
                reuse: None,
            },
        };
        PacketCache {
            tags: [0; SLOTS],
            slots: (0..SLOTS).map(|_| empty()).collect(),
            ecs: EcsCache::new(),
        }
    }

    /// The cache of queries whose only option is ECS.
    #[cfg(test)]
    pub(super) fn ecs(&self) -> &EcsCache {
        &self.ecs
    }

    /// [`answer`] over UDP, through the cache for a query without EDNS options, and through
    /// the ECS answer cache for one whose only option is ECS.
    pub fn answer(
        &mut self,
        world: &World,
        packet: &[u8],
        src: &IpAddr,
        seed: u64,
        out: &mut Vec<u8>,
        local: &mut Local,
    ) -> Option<Response> {
        let Some(key) = packet
            .get(ID_LEN..)
            .filter(|k| k.len() <= KEY_MAX && without_options(packet))
        else {
            if let Some(addr_len) = ecs_tail(packet) {
                return self
                    .ecs
                    .answer(world, packet, addr_len, src, seed, out, local);
            }
            return answer(world, packet, src, Transport::Udp, seed, out, local);
        };
        let (index, tag) = slot_of(key);
        let slot = &mut self.slots[index];
        if self.tags[index] == tag
            && let Some(reuse) = slot.reply.reuse
            && slot.generation == world.generation
            && slot.key[..slot.key_len] == *key
        {
            let reply = slot.reply;
            out.clear();
            out.extend_from_slice(&packet[..ID_LEN]);
            out.extend_from_slice(&slot.response[ID_LEN..slot.response_len]);
            local.qname[..reply.qname_len].copy_from_slice(&slot.qname[..reply.qname_len]);
            local
                .stats
                .query(Some(reuse.zone), reuse.qtype, reuse.rcode);
            local.stats.replayed();
            return Some(reply);
        }
        let reply = answer(world, packet, src, Transport::Udp, seed, out, local)?;
        if reply.reuse.is_some_and(|r| !r.decided)
            && out.len() <= RESPONSE_MAX
            && reply.qname_len <= QNAME_MAX
        {
            slot.generation = world.generation;
            slot.key_len = key.len();
            slot.key[..key.len()].copy_from_slice(key);
            slot.response_len = out.len();
            slot.response[..out.len()].copy_from_slice(out);
            slot.qname[..reply.qname_len].copy_from_slice(&local.qname[..reply.qname_len]);
            slot.reply = reply;
            self.tags[index] = tag;
        }
        Some(reply)
    }
}

/// No additional record, or only an OPT record without options, at the end of the query:
/// nothing asked with ECS (every subnet would take a slot of its own for an answer that is
/// the same for all of them), NSID or a cookie. Checked in a few octets, so that a query
/// with ECS (a geo answer) pays nothing for the cache.
#[inline]
fn without_options(packet: &[u8]) -> bool {
    // An OPT record with RDLENGTH 0 ends the packet.
    const EMPTY_OPT: usize = super::wire::OPT_FIXED;
    let n = packet.len();
    match packet.get(10..12) {
        Some([0, 0]) => true,
        Some([0, 1]) if n >= super::wire::HEADER_LEN + EMPTY_OPT => {
            packet[n - EMPTY_OPT..n - EMPTY_OPT + 3] == [0, 0, 41] && packet[n - 2..] == [0, 0]
        }
        _ => false,
    }
}

/// The slot of a query's octets after its ID, and their tag there (never 0).
#[inline]
pub(super) fn slot_of(key: &[u8]) -> (usize, u32) {
    let mut h = FxHasher::default();
    h.write(key);
    let h = h.finish();
    ((h >> 56) as usize % SLOTS, h as u32 | 1)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::health::View;

    fn world() -> World {
        let snap = crate::config::load_str(
            "example.toml".as_ref(),
            &std::fs::read_to_string("zones/example.toml").expect("example zone"),
        )
        .expect("example zone loads");
        let health = View::unknown(&snap);
        World::new(Arc::new(snap), Arc::new(health), None)
    }

    /// An OPT record's DO bit and options.
    type Opt<'a> = Option<(bool, &'a [u8])>;

    /// A query with ID `id` for `name` (dotted), with an OPT record (payload 1232, DO as
    /// given, then `options`) when `opt` is set.
    fn query(id: u16, name: &str, qtype: u16, opt: Opt<'_>) -> Vec<u8> {
        let mut p = id.to_be_bytes().to_vec();
        p.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, u8::from(opt.is_some())]);
        // The name as written (case kept), then QTYPE and class IN.
        let labels = name.split('.').filter(|l| !l.is_empty());
        p.extend(labels.flat_map(|l| std::iter::once(l.len() as u8).chain(l.bytes())));
        p.extend([0].into_iter().chain(qtype.to_be_bytes()).chain([0, 1]));
        if let Some((dnssec_ok, options)) = opt {
            p.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, u8::from(dnssec_ok) << 7, 0]);
            p.extend_from_slice(&(options.len() as u16).to_be_bytes());
            p.extend_from_slice(options);
        }
        p
    }

    #[test]
    fn only_queries_without_edns_options_are_looked_up() {
        let nsid: &[u8] = &[0, 3, 0, 0];
        assert!(without_options(&query(1, "a.test", 1, None)));
        assert!(without_options(&query(
            1,
            "a.test",
            1,
            Some((true, &[][..]))
        )));
        assert!(!without_options(&query(
            1,
            "a.test",
            1,
            Some((false, nsid))
        )));
        let ecs: &[u8] = &[0, 8, 0, 7, 0, 1, 24, 0, 203, 0, 113];
        assert!(!without_options(&query(1, "a.test", 1, Some((false, ecs)))));
        assert!(!without_options(&[0; 11]));
        assert!(!without_options(&[
            0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0
        ]));
    }

    /// What answering in full gives: the response, the reply and the counters.
    fn fresh(world: &World, packet: &[u8]) -> (Vec<u8>, Option<Response>, Local) {
        let mut local = Local::default();
        let mut out = Vec::new();
        let src: IpAddr = "127.0.0.1".parse().expect("ip");
        let reply = answer(world, packet, &src, Transport::Udp, 7, &mut out, &mut local);
        (out, reply, local)
    }

    #[test]
    fn a_replayed_response_is_the_response_in_full() {
        let world = world();
        let src: IpAddr = "127.0.0.1".parse().expect("ip");
        let ecs: &[u8] = &[0, 8, 0, 7, 0, 1, 24, 0, 203, 0, 113];
        let nsid: &[u8] = &[0, 3, 0, 0];
        let asks: Vec<(&str, u16, Opt<'_>, bool)> = vec![
            // (name, type, OPT, replayed)
            ("static.gslb.example.test", 1, None, true),
            ("STATIC.gslb.Example.test", 1, None, true),
            ("static.gslb.example.test", 28, Some((false, &[][..])), true),
            // NSID: answered in full (any EDNS option keeps a query out of the cache).
            ("static.gslb.example.test", 1, Some((false, nsid)), false),
            ("gslb.example.test", 6, None, true),
            ("gslb.example.test", 2, None, true),
            ("docs.gslb.example.test", 5, None, true),
            ("x.wild.gslb.example.test", 1, None, true),
            ("nothing.gslb.example.test", 1, None, true),
            ("static.gslb.example.test", 16, None, true),
            // A policy decides: never replayed without ECS (the ECS answer cache keeps
            // answers by what they read of the client, which is then the packet's source).
            ("www.gslb.example.test", 1, None, false),
            ("docs.gslb.example.test", 1, None, false),
            // Static data asked with ECS: replayed by the ECS answer cache.
            ("static.gslb.example.test", 1, Some((false, ecs)), true),
            // Outside every zone: REFUSED, answered in full each time.
            ("example.org", 1, None, false),
        ];
        let mut cache = PacketCache::new();
        for (name, qtype, opt, replayed) in asks {
            for (round, id) in [0x1111u16, 0x2222, 0x3333].into_iter().enumerate() {
                let packet = query(id, name, qtype, opt);
                let (want, want_reply, want_local) = fresh(&world, &packet);
                let mut local = Local::default();
                let mut out = vec![0xee; 3];
                let reply = cache.answer(&world, &packet, &src, 7, &mut out, &mut local);
                assert_eq!(out, want, "{name} {qtype} round {round}");
                assert_eq!(reply, want_reply, "{name} {qtype}");
                let len = reply.map_or(0, |r| r.qname_len);
                assert_eq!(local.qname[..len], want_local.qname[..len]);
                assert_eq!(local.stats.pending(), want_local.stats.pending());
                assert_eq!(
                    local.stats.counted_queries(),
                    want_local.stats.counted_queries(),
                    "{name} {qtype}"
                );
                let hit = replayed && round > 0;
                assert_eq!(
                    local.stats.replayed_count(),
                    u64::from(hit),
                    "{name} {round}"
                );
            }
        }
        // A new world (same zone): nothing is replayed from the old one.
        let next = world.with_health(Arc::new(View::unknown(&world.snapshot)));
        assert_ne!(next.generation, world.generation);
        let packet = query(9, "static.gslb.example.test", 1, None);
        let index = slot_of(&packet[ID_LEN..]).0;
        assert_eq!(cache.slots[index].generation, world.generation);
        let mut out = Vec::new();
        cache.answer(&next, &packet, &src, 7, &mut out, &mut Local::default());
        assert_eq!(cache.slots[index].generation, next.generation);
        assert_eq!(out, fresh(&next, &packet).0);
    }
    /// Ask `packet` with a fresh `Local`: the response, and whether it was replayed.
    fn ask(cache: &mut PacketCache, world: &World, packet: &[u8]) -> (Vec<u8>, bool) {
        let src: IpAddr = "127.0.0.1".parse().expect("ip");
        let mut local = Local::default();
        let mut out = Vec::new();
        cache.answer(world, packet, &src, 7, &mut out, &mut local);
        (out, local.stats.replayed_count() == 1)
    }

    #[test]
    fn queries_and_responses_up_to_a_slot_are_kept_and_one_slot_holds_one() {
        // TXT strings of 459 and 460 octets make responses of exactly 512 and 513.
        let zone = format!(
            "origin = \"t.test.\"\n[soa]\nmname = \"ns1.t.test.\"\nrname = \"h.t.test.\"\n\
             [records.\"@\"]\nNS = [\"ns1.t.test.\"]\n[records.ns1]\nA = [\"192.0.2.53\"]\n\
             [records.\"*.w\"]\nA = [\"192.0.2.9\"]\n\
             [records.bia]\nTXT = [\"{}\"]\n[records.bib]\nTXT = [\"{}\"]\n",
            "x".repeat(459),
            "x".repeat(460)
        );
        let snap = crate::config::load_str("t.toml".as_ref(), &zone).expect("zone loads");
        let health = View::unknown(&snap);
        let world = World::new(Arc::new(snap), Arc::new(health), None);
        let mut cache = PacketCache::new();
        let edns = Some((false, &[][..]));
        for (name, len, kept) in [
            ("bia.t.test", RESPONSE_MAX, true),
            ("bib.t.test", RESPONSE_MAX + 1, false),
        ] {
            let packet = query(1, name, 16, edns);
            let want = fresh(&world, &packet).0;
            assert_eq!(want.len(), len, "{name}");
            assert_eq!(ask(&mut cache, &world, &packet), (want.clone(), false));
            assert_eq!(ask(&mut cache, &world, &packet), (want, kept), "{name}");
        }
        // Questions of KEY_MAX octets after the ID are kept; one more and they are not.
        for (extra, kept) in [(0, true), (1, false)] {
            let name = format!("{}.{}.w.t.test", "a".repeat(51), "b".repeat(51 + extra));
            let packet = query(1, &name, 1, None);
            assert_eq!(packet.len() - ID_LEN, KEY_MAX + extra);
            let want = fresh(&world, &packet).0;
            assert_eq!(ask(&mut cache, &world, &packet), (want.clone(), false));
            assert_eq!(ask(&mut cache, &world, &packet), (want, kept), "+{extra}");
        }
        // Two questions of one slot: each evicts the other.
        let packet = |i: usize| query(1, &format!("n{i}.w.t.test"), 1, None);
        let slot = |i: usize| slot_of(&packet(i)[ID_LEN..]).0;
        let other = (1..10 * SLOTS)
            .find(|&i| slot(i) == slot(0))
            .expect("a second question of slot 0's");
        for (i, replayed) in [(0, false), (0, true), (other, false), (0, false), (0, true)] {
            let (out, hit) = ask(&mut cache, &world, &packet(i));
            assert_eq!((out, hit), (fresh(&world, &packet(i)).0, replayed), "n{i}");
        }
    }
}
