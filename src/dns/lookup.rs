//! Authoritative lookup in one zone (RFC 1034 §4.3.2, RFC 4592 wildcards, RFC 8482 ANY):
//! delegations, exact names, CNAME chains inside the zone, policy names, NODATA and
//! NXDOMAIN with the SOA (TTL per RFC 2308).

use std::net::IpAddr;

use super::response::{Owner, Section, Writer, rcode};
use crate::geo::Locate;
use crate::model::{Node, PolicyId, PoolId, Zone, ZoneId, rtype, wire};
use crate::policy::{self, Client, Ctx, Decision, NoTrace, Outcome};
use crate::world::World;

/// CNAME hops followed inside the zone before giving up (loops included).
const MAX_CNAME_HOPS: usize = 8;

/// What the lookup decided besides the records written.
#[derive(Debug, Default, Clone, Copy)]
pub struct Found {
    pub rcode: u8,
    pub authoritative: bool,
    /// ECS scope of the answer (0 unless a policy read the client).
    pub scope: u8,
    /// The policy answer, for metrics.
    pub policy: Option<(PolicyId, PoolId, bool)>,
    /// What kind of response this is, for response rate limiting (SPEC §9).
    pub kind: Kind,
    /// A policy decided part of the answer: it may depend on the client and the per-query
    /// seed, not only on the question.
    pub decided: bool,
}

/// The kinds of response that RRL counts apart (the BIND/NSD classes, SPEC §9).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Records for the question (CNAME chains included).
    #[default]
    Answer,
    /// NOERROR without records for the question.
    Nodata,
    Nxdomain,
    /// A delegation: NS in authority, not authoritative.
    Referral,
    /// Synthesized from `*.<encloser>` (answer or NODATA), the closest encloser being the last
    /// `encloser_len` octets of the question name.
    Wildcard {
        encloser_len: u8,
    },
    /// SERVFAIL: a policy with nothing to answer.
    Error,
}

/// Reused per worker: no allocation per query.
#[derive(Default)]
pub struct Scratch {
    pub addrs: Vec<IpAddr>,
    /// Set by a policy answer that may be replayed for another client (cleared by the
    /// caller before the lookup).
    pub replay: Option<Replay>,
}

/// A policy answer as written, to answer another client whose reads of its address return
/// the same ([`policy::Replayer`]): the decision, and the address records it wrote.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Replay {
    pub decision: Decision,
    pub want_v6: bool,
    /// Offset in the response of the first address record.
    pub records_at: usize,
    /// Octets of each address record (they share owner, type and TTL).
    pub record_len: usize,
    pub count: usize,
}

/// Everything a lookup reads.
pub struct Lookup<'a, L: Locate + ?Sized> {
    pub world: &'a World,
    pub geo: &'a L,
    pub client: Client,
    pub seed: u64,
}

impl<L: Locate + ?Sized> Lookup<'_, L> {
    /// Answer `qname`/`qtype` from `zone` into `w`.
    pub fn run(
        &self,
        zone_id: ZoneId,
        qname: &[u8],
        qtype: u16,
        w: &mut Writer<'_>,
        scratch: &mut Scratch,
    ) -> Found {
        let zone = &self.world.snapshot.zone(zone_id);
        let mut found = Found {
            rcode: rcode::NOERROR,
            authoritative: true,
            ..Found::default()
        };
        let mut name: &[u8] = qname;
        let mut owner = Owner::Qname;
        for _ in 0..MAX_CNAME_HOPS {
            let exact = zone.nodes.get(name);
            let cut = match exact {
                // RFC 4035 §3.1.4.1: DS at a cut belongs to the parent, which answers it.
                Some(n) if n.delegation && qtype != rtype::DS => Some(name),
                _ => delegation_above(zone, name),
            };
            if let Some(cut) = cut {
                if owner_is_qname(owner) {
                    referral(zone, cut, w);
                    found.authoritative = false;
                    found.kind = Kind::Referral;
                }
                return found;
            }
            let wildcard = match exact {
                Some(_) => None,
                None => wildcard_match(zone, name),
            };
            let Some(node) = exact.or(wildcard.map(|(n, _)| n)) else {
                found.rcode = rcode::NXDOMAIN;
                found.kind = Kind::Nxdomain;
                negative(zone, w);
                return found;
            };
            // Only a wildcard met at the question name keys RRL by wildcard: its owner is
            // what a flood of random names under it has in common.
            if let (Some((_, encloser_len)), Owner::Qname) = (wildcard, owner) {
                found.kind = Kind::Wildcard { encloser_len };
            }
            if let Some(cname) = node.rrset(rtype::CNAME)
                && let Some(target) = cname.rdatas().next()
                && qtype != rtype::CNAME
            {
                w.record(Section::Answer, owner, rtype::CNAME, cname.ttl, target);
                if !wire::is_within(target, &zone.origin_wire) {
                    return found;
                }
                name = target;
                owner = Owner::Name(target);
                continue;
            }
            self.answer_node(zone, name, node, owner, qtype, w, scratch, &mut found);
            return found;
        }
        // A CNAME loop or an over-long chain: what was written stands (RFC 1034 §3.6.2).
        found
    }

    /// Answer from one node (exact or wildcard).
    #[allow(clippy::too_many_arguments)]
    fn answer_node(
        &self,
        zone: &Zone,
        name: &[u8],
        node: Node<'_>,
        owner: Owner<'_>,
        qtype: u16,
        w: &mut Writer<'_>,
        scratch: &mut Scratch,
        found: &mut Found,
    ) {
        let apex = name == &*zone.origin_wire;
        if let Some(policy) = node.policy {
            let written = self.answer_policy(policy, owner, qtype, w, scratch, found);
            if !written && found.rcode == rcode::NOERROR {
                nodata(zone, owner, w, found);
            }
            return;
        }
        if apex && (qtype == rtype::SOA || qtype == rtype::ANY) {
            w.soa(Section::Answer, owner, zone.soa_ttl, zone);
            return;
        }
        let rrset = if qtype == rtype::ANY {
            // RFC 8482 §4.1: answer with one RRset of the name.
            node.rrsets().next()
        } else {
            node.rrset(qtype)
        };
        match rrset {
            Some(set) => {
                for rd in set.rdatas() {
                    w.record(Section::Answer, owner, set.rtype, set.ttl, rd);
                }
            }
            None => nodata(zone, owner, w, found),
        }
    }

    /// A policy name: A/AAAA from the chosen pool. Returns whether records were written.
    fn answer_policy(
        &self,
        policy: PolicyId,
        owner: Owner<'_>,
        qtype: u16,
        w: &mut Writer<'_>,
        scratch: &mut Scratch,
        found: &mut Found,
    ) -> bool {
        let want_v6 = match qtype {
            rtype::A | rtype::ANY => false,
            rtype::AAAA => true,
            _ => return false,
        };
        found.decided = true;
        let decision = self.decide(policy);
        found.scope = found.scope.max(decision.scope);
        let Outcome::Pool { pool, fail_open } = decision.outcome else {
            found.rcode = rcode::SERVFAIL;
            found.kind = Kind::Error;
            return false;
        };
        found.policy = Some((policy, pool, fail_open));
        policy::select_addresses(
            &self.world.snapshot,
            &self.world.health,
            &decision,
            want_v6,
            &mut scratch.addrs,
        );
        let records_at = w.written();
        for addr in &scratch.addrs {
            match addr {
                IpAddr::V4(a) => {
                    w.record(Section::Answer, owner, rtype::A, decision.ttl, &a.octets())
                }
                IpAddr::V6(a) => w.record(
                    Section::Answer,
                    owner,
                    rtype::AAAA,
                    decision.ttl,
                    &a.octets(),
                ),
            }
        }
        let count = scratch.addrs.len();
        // Replayed with another seed, the same addresses come in another order: only a
        // seed-free choice of a pool that is up (failing open is logged per answer).
        let replayable = decision.reads.replayable()
            && !decision.uses_seed
            && !decision.sticky_order
            && !fail_open;
        if replayable && count > 0 {
            scratch.replay = Some(Replay {
                decision,
                want_v6,
                records_at,
                record_len: (w.written() - records_at) / count,
                count,
            });
        }
        count > 0
    }

    fn decide(&self, policy: PolicyId) -> Decision {
        let ctx = Ctx {
            snap: &self.world.snapshot,
            health: &self.world.health,
            geo: self.geo,
        };
        policy::answer(&ctx, policy, self.client, self.seed, &mut NoTrace)
    }
}

fn owner_is_qname(o: Owner<'_>) -> bool {
    matches!(o, Owner::Qname)
}

/// The highest delegation point strictly above `name` and below the apex (a name right
/// under the apex costs no lookup).
fn delegation_above<'z>(zone: &'z Zone, name: &'z [u8]) -> Option<&'z [u8]> {
    let mut cut = None;
    let mut at = wire::parent(name)?;
    while at.len() > zone.origin_wire.len() {
        if zone.nodes.get(at).is_some_and(|n| n.delegation) {
            cut = Some(at);
        }
        at = wire::parent(at)?;
    }
    cut
}

/// RFC 4592: `*.<closest encloser>` when the name does not exist.
pub(crate) fn wildcard_node<'z>(zone: &'z Zone, name: &[u8]) -> Option<Node<'z>> {
    wildcard_match(zone, name).map(|(node, _)| node)
}

/// The wildcard node for `name` and the length of its closest encloser (a suffix of `name`).
fn wildcard_match<'z>(zone: &'z Zone, name: &[u8]) -> Option<(Node<'z>, u8)> {
    let mut encloser = wire::parent(name)?;
    while !zone.nodes.contains_key(encloser) {
        if encloser.len() <= zone.origin_wire.len() {
            return None;
        }
        encloser = wire::parent(encloser)?;
    }
    let mut buf = [0u8; 257];
    buf[0] = 1;
    buf[1] = b'*';
    buf[2..2 + encloser.len()].copy_from_slice(encloser);
    let encloser_len = u8::try_from(encloser.len()).ok()?;
    zone.nodes
        .get(&buf[..2 + encloser.len()])
        .filter(|n| !n.is_empty())
        .map(|n| (n, encloser_len))
}

/// A referral: the cut's NS in authority, in-zone glue in additional.
fn referral(zone: &Zone, cut: &[u8], w: &mut Writer<'_>) {
    let Some(ns) = zone.nodes.get(cut).and_then(|n| n.rrset(rtype::NS)) else {
        return;
    };
    for rd in ns.rdatas() {
        w.record(Section::Authority, Owner::Name(cut), rtype::NS, ns.ttl, rd);
    }
    for target in ns.rdatas() {
        let Some(node) = zone.nodes.get(target) else {
            continue;
        };
        for t in [rtype::A, rtype::AAAA] {
            if let Some(set) = node.rrset(t) {
                for rd in set.rdatas() {
                    w.record(Section::Additional, Owner::Name(target), t, set.ttl, rd);
                }
            }
        }
    }
}

/// NODATA. For RRL it is NODATA only when nothing was written for the question: the end of
/// a CNAME chain stays an answer, and a wildcard's NODATA stays a wildcard response.
fn nodata(zone: &Zone, owner: Owner<'_>, w: &mut Writer<'_>, found: &mut Found) {
    if found.kind == Kind::Answer && owner_is_qname(owner) {
        found.kind = Kind::Nodata;
    }
    negative(zone, w);
}

/// NODATA / NXDOMAIN: the SOA in authority, TTL min(SOA TTL, MINIMUM) (RFC 2308 §3).
fn negative(zone: &Zone, w: &mut Writer<'_>) {
    let ttl = zone.soa_ttl.min(zone.soa.minimum);
    w.soa(
        Section::Authority,
        Owner::Name(&zone.origin_wire),
        ttl,
        zone,
    );
}
