//! One query in, one response out: the reject ladder (drop, NOTIMP, FORMERR, BADVERS,
//! REFUSED), one world load per query, the lookup, and ECS/EDNS on the way out. Shared by
//! the UDP workers and the TCP connections; a bad packet becomes an rcode, never a panic.

use std::net::IpAddr;

use super::lookup::{Kind, Lookup, Scratch};
use super::response::{self, CLASS_IN, Meta, Writer, rcode};
use super::rrl::Class;
use super::stats::LocalStats;
use super::tsig;
use super::wire::{self, Reject};
use crate::dnssec::Signer;
use crate::dnssec::sign::{DNSKEY, NXNAME, RRSIG};
use crate::model::{ZoneId, rtype};
use crate::policy::Client;
use crate::world::World;

/// RFC 5936 / RFC 1995: zone transfers are not offered.
const AXFR: u16 = 252;
const IXFR: u16 = 251;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// What a worker (a UDP thread, a TCP connection) keeps from query to query.
pub struct Local {
    pub scratch: Scratch,
    pub stats: LocalStats,
    /// The lowercased question name of the query in hand.
    pub qname: wire::NameBuf,
    /// DNSSEC signature caches and buffers.
    pub signer: Signer,
}

/// RRSIG cache entries of a UDP worker (DNSSEC).
pub const UDP_CACHE_SLOTS: usize = 4096;
/// RRSIG cache entries of one TCP connection: small, as there may be a thousand of them.
pub const TCP_CACHE_SLOTS: usize = 16;

impl Local {
    /// Worker state with caches of `cache_slots` entries.
    pub fn new(cache_slots: usize) -> Local {
        Local {
            scratch: Scratch::default(),
            stats: LocalStats::default(),
            qname: [0; wire::MAX_NAME],
            signer: Signer::new(cache_slots, cache_slots >= UDP_CACHE_SLOTS),
        }
    }
}

impl Default for Local {
    /// Small caches: one-off use (explain, tests).
    fn default() -> Self {
        Local::new(TCP_CACHE_SLOTS)
    }
}

/// A response written into `out`: what the sender and the rate limiter need to know of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    /// The RRL bucket class (SPEC §9).
    pub class: Class,
    /// Octets of header and question at the start of `out` (all an RRL slip keeps).
    pub head_len: usize,
    /// Length of the lowercased question name in [`Local::qname`] (0 without a question).
    pub qname_len: usize,
    /// Set when the response depends on nothing but the query's octets, the world and, for
    /// a policy answer, what the client's reads return, so that it may be replayed
    /// ([`super::packet_cache`], [`super::ecs_cache`]): what to count for it.
    pub(super) reuse: Option<Reuse>,
}

/// What a replayed response counts (as [`LocalStats::query`] does for the original).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Reuse {
    pub zone: ZoneId,
    pub qtype: u16,
    pub rcode: u16,
    /// A policy decided the answer: the same for another client only if its reads return
    /// the same ([`super::ecs_cache`]).
    pub decided: bool,
}

impl Response {
    /// The lowercased question name this response answers.
    pub fn qname<'l>(&self, local: &'l Local) -> &'l [u8] {
        &local.qname[..self.qname_len]
    }

    pub(super) fn to(q: &wire::Query<'_>, class: Class) -> Response {
        Response {
            class,
            head_len: wire::HEADER_LEN + q.question.len(),
            qname_len: q.qname.len(),
            reuse: None,
        }
    }
}

/// Answer `packet` from `src` into `out`; `None` when nothing is to be sent. A panic while
/// answering becomes SERVFAIL for this query alone ([`super::guard`]).
#[inline]
pub fn handle(
    world: &World,
    packet: &[u8],
    src: &IpAddr,
    transport: Transport,
    seed: u64,
    out: &mut Vec<u8>,
    local: &mut Local,
) -> Option<Response> {
    super::guard::guarded(packet, src, out, local, |out, local| {
        answer(world, packet, src, transport, seed, out, local)
    })
}

/// [`handle`] without the guard: for a UDP worker, which guards its batches
/// ([`super::guard::batch`]).
#[inline]
pub(super) fn answer(
    world: &World,
    packet: &[u8],
    src: &IpAddr,
    transport: Transport,
    seed: u64,
    out: &mut Vec<u8>,
    local: &mut Local,
) -> Option<Response> {
    let Local {
        scratch,
        stats,
        qname,
        signer,
    } = local;
    let q = match wire::parse(packet, qname) {
        Ok(q) => q,
        Err((Reject::Drop, _)) => return None,
        Err((reject, id)) => {
            let flags = u16::from_be_bytes([packet[2], packet[3]]);
            let code = if reject == Reject::NotImp {
                rcode::NOTIMP
            } else {
                rcode::FORMERR
            };
            response::bare(out, id.unwrap_or(0), flags, code);
            stats.query(None, 0, u16::from(code));
            return Some(Response {
                class: Class::Error(None),
                head_len: wire::HEADER_LEN,
                qname_len: 0,
                reuse: None,
            });
        }
    };
    // RFC 8945 §5.2.2: no key is configured, so no signature can be checked.
    if let Some(t) = &q.tsig {
        tsig::badkey(out, &q, t);
        stats.query(None, q.qtype, tsig::NOTAUTH);
        return Some(Response::to(&q, Class::Error(None)));
    }
    let nsid = response::nsid_for(&q, world.nsid.as_deref());
    if q.opcode() != 0 {
        return error(out, &q, stats, u16::from(rcode::NOTIMP), nsid);
    }
    // EDNS and ECS are read in place: copying them (odd-sized, unaligned) right after the
    // parser wrote them stalled on store forwarding.
    if q.edns.as_ref().is_some_and(|e| e.version > 0) {
        return error(out, &q, stats, rcode::BADVERS, nsid);
    }
    let snap = &world.snapshot;
    let zone = (q.qclass == CLASS_IN)
        .then(|| snap.find_zone(q.qname))
        .flatten();
    let Some(zone) = zone.filter(|_| q.qtype != AXFR && q.qtype != IXFR && q.qtype != rtype::OPT)
    else {
        return error(out, &q, stats, u16::from(rcode::REFUSED), nsid);
    };
    // SPEC §11: a signed zone without its key is not served (unsigned answers under a DS
    // would be bogus); RFC 9824 §2: NXNAME is a meta-type, never asked.
    let key = snap.zone(zone).key.as_deref();
    if snap.zone(zone).dnssec.is_some() && key.is_none() {
        return error(out, &q, stats, u16::from(rcode::REFUSED), nsid);
    }
    if key.is_some() && q.qtype == NXNAME {
        return error(out, &q, stats, u16::from(rcode::FORMERR), nsid);
    }
    // A signed zone has no RRSIG RRset to hand out (each answer's RRsets are signed as they
    // go), and a NODATA would list RRSIG in its own NSEC bitmap, which validators reject:
    // NOTIMP, which RFC 8906 §3.1.2 allows for meta-types, as PowerDNS answers.
    if key.is_some() && q.qtype == RRSIG {
        return error(out, &q, stats, u16::from(rcode::NOTIMP), nsid);
    }
    let ecs = q.edns.as_ref().and_then(|e| e.ecs.as_ref());
    let client = Client {
        addr: ecs.map_or(*src, |e| e.addr),
        source_prefix: ecs.map(|e| e.source_prefix),
    };
    let lookup = Lookup {
        world,
        // The compiled GeoIP trees are walked per query: no per-worker cache in front of
        // them (a cache slot costs about what the walk of a few cached lines does).
        geo: world,
        client,
        seed,
    };
    let mut w = Writer::new(out, &q);
    let z = snap.zone(zone);
    let apex_dnskey = q.qtype == DNSKEY && q.qname == &*z.origin_wire;
    scratch.replay = None;
    let mut found = match key {
        Some(k) if apex_dnskey => crate::dnssec::sign::write_dnskey(z, k, &mut w),
        _ => lookup.run(zone, q.qname, q.qtype, &mut w, scratch),
    };
    if let Some(k) = key
        && q.edns.as_ref().is_some_and(|e| e.dnssec_ok)
    {
        signer.sign(z, k, &q, &mut w, &mut found, seed, stats);
    }
    let meta = Meta {
        rcode: u16::from(found.rcode),
        authoritative: found.authoritative,
        ecs: ecs.map(|e| (e, found.scope)),
        nsid,
    };
    let limit = (transport == Transport::Udp).then(|| response::udp_limit(&q));
    w.finish(&q, meta, limit);
    stats.query(Some(zone), q.qtype, u16::from(found.rcode));
    if let Some((policy, pool, fail_open)) = found.policy {
        stats.answer(policy, pool, fail_open);
        if fail_open {
            super::fail_open::answered(world, policy, pool);
        }
    }
    let class = match found.kind {
        Kind::Answer => Class::Answer { qtype: q.qtype },
        Kind::Nodata => Class::Nodata,
        Kind::Nxdomain => Class::Nxdomain(zone),
        Kind::Referral => Class::Referral(zone),
        Kind::Wildcard { encloser_len } => Class::Wildcard { zone, encloser_len },
        Kind::Error => Class::Error(Some(zone)),
    };
    // An unsigned zone over UDP: static data gets the same response for the same octets
    // until the world changes, and a replayable policy answer the same for clients whose
    // reads return the same. Which of these the caches keep is their own choice.
    let replayable = !found.decided || scratch.replay.is_some();
    let reuse = (transport == Transport::Udp && key.is_none() && replayable).then_some(Reuse {
        zone,
        qtype: q.qtype,
        rcode: u16::from(found.rcode),
        decided: found.decided,
    });
    Some(Response {
        reuse,
        ..Response::to(&q, class)
    })
}

/// An answer that is only an rcode (with the question and OPT), counted under no zone.
fn error(
    out: &mut Vec<u8>,
    q: &wire::Query<'_>,
    stats: &mut LocalStats,
    rcode: u16,
    nsid: Option<&[u8]>,
) -> Option<Response> {
    response::error_with_nsid(out, q, rcode, nsid);
    stats.query(None, q.qtype, rcode);
    Some(Response::to(q, Class::Error(None)))
}
