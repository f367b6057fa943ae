//! Online signing of one response (RFC 4035 §3.1). The lookup has written an unsigned
//! answer; for a DO=1 query to a signed zone [`Signer::sign`] takes its records back and
//! writes them again, each RRset de-duplicated and followed by its RRSIG, and adds the
//! compact denial NSEC (RFC 9824) to negative answers and the no-DS NSEC to referrals.
//!
//! Signatures come from the worker's cache when the same RRset (owner, type, TTL, RDATA
//! set: order does not matter, RFC 4034 §6.3) was signed before; negative proofs of
//! nonexistent names, one per name, go to a small cache of their own so that a flood of
//! unique names never evicts the answers' signatures. Everything is reused per worker.

use std::hash::{BuildHasher, Hasher};
use std::ops::Range;
use std::time::{SystemTime, UNIX_EPOCH};

use super::cache::{MAX_RRSIG_RDATA, SigCache};
use super::key::{ALGORITHM, ZoneKey};
use crate::dns::lookup::{Found, wildcard_node};
use crate::dns::response::{Owner, Section, Writer, rcode};
use crate::dns::stats::LocalStats;
use crate::dns::wire::Query;
use crate::model::{Zone, rtype, wire};

/// RFC 4034 §3, §4, §2.
pub const RRSIG: u16 = 46;
pub const NSEC: u16 = 47;
pub const DNSKEY: u16 = 48;
/// RFC 9824 §2: the NXNAME meta-type in compact denial bitmaps.
pub const NXNAME: u16 = 128;

/// Signatures start this long in the past, for clients with slow clocks (Knot uses 90 min,
/// notes/dnssec.md §4).
const INCEPTION_BACKDATE: u64 = 3600;
/// Signature validity: about a day, as Knot's onlinesign docs advise ("in the order of
/// hours"; their example is 25 h). Bounds how long a replayed old answer stays valid.
const VALIDITY: u64 = 86_400;
/// Up to a tenth of the validity is added at random, so expirations spread out.
const VALIDITY_JITTER: u64 = VALIDITY / 10;
/// A cached signature is made anew after half its validity: well before it expires, and
/// still valid for any resolver that cached it for up to a TTL.
const REFRESH_AFTER: u64 = VALIDITY / 2;
/// Negative-proof cache slots per answer-cache slot: nonexistent names are mostly one-shot.
const NEGATIVE_SHARE: usize = 16;

/// Per-worker signing state: caches and reused buffers.
pub struct Signer {
    answers: SigCache,
    negatives: SigCache,
    /// The unsigned records, moved out of the response.
    body: Vec<u8>,
    recs: Vec<Rec>,
    /// Canonical order of one RRset (indices into `recs`).
    order: Vec<usize>,
    /// Which records of the RRset are first of their RDATA (the rest are duplicates).
    keep: Vec<bool>,
    /// The data to sign (RFC 4034 §3.1.8.1).
    tbs: Vec<u8>,
    /// Two independently keyed hashers: a 128-bit cache key nobody outside can aim at.
    hash: (
        std::collections::hash_map::RandomState,
        std::collections::hash_map::RandomState,
    ),
    /// Whether this worker reports its cache size (long-lived UDP workers do).
    report_size: bool,
}

/// One record of the unsigned response.
#[derive(Clone)]
struct Rec {
    section: Section,
    /// `None`: the question name (written as a pointer).
    owner: Option<Range<usize>>,
    rtype: u16,
    ttl: u32,
    rdata: Range<usize>,
}

/// What a negative answer or referral must prove, and about which name.
struct Proof {
    /// `None`: the question name.
    owner: Option<Range<usize>>,
    kind: ProofKind,
}

enum ProofKind {
    /// RFC 9824 §3: the name does not exist (bitmap RRSIG NSEC NXNAME).
    NxName,
    /// The name exists without the asked type (bitmap: its types).
    NoData,
    /// A referral to an unsigned child: NS RRSIG NSEC at the cut, no DS.
    NoDs,
}

/// Which cache an RRSIG goes to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Answer,
    Negative,
}

impl Signer {
    /// Signing state with an answer cache of `slots` entries.
    pub fn new(slots: usize, report_size: bool) -> Signer {
        Signer {
            answers: SigCache::new(slots),
            negatives: SigCache::new((slots / NEGATIVE_SHARE).max(4)),
            body: Vec::new(),
            recs: Vec::new(),
            order: Vec::new(),
            keep: Vec::new(),
            tbs: Vec::new(),
            hash: Default::default(),
            report_size,
        }
    }

    /// Signatures cached (answers and negative proofs).
    pub fn cached(&self) -> usize {
        self.answers.len() + self.negatives.len()
    }

    /// The most signatures this worker ever holds.
    pub fn capacity(&self) -> usize {
        self.answers.capacity() + self.negatives.capacity()
    }

    /// Negative proofs cached (bounded apart from the answers' signatures).
    pub fn cached_negatives(&self) -> (usize, usize) {
        (self.negatives.len(), self.negatives.capacity())
    }

    /// Rewrite the response in `w` with signatures and proofs; adjusts `found.rcode` for
    /// compact denial (NXDOMAIN → NOERROR, unless the query set CO).
    #[allow(clippy::too_many_arguments)]
    pub fn sign(
        &mut self,
        zone: &Zone,
        key: &ZoneKey,
        q: &Query<'_>,
        w: &mut Writer<'_>,
        found: &mut Found,
        seed: u64,
        stats: &mut LocalStats,
    ) {
        let counts = w.take_records(&mut self.body);
        if !self.parse(counts) {
            // Not our own writer's output: leave nothing half signed.
            return;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let proof = self.proof(zone, q, found);
        if matches!(
            proof,
            Some(Proof {
                kind: ProofKind::NxName,
                ..
            })
        ) {
            let co = q.edns.as_ref().is_some_and(|e| e.compact_ok);
            found.rcode = if co { rcode::NXDOMAIN } else { rcode::NOERROR };
        }
        let cx = Cx {
            zone,
            key,
            q,
            now,
            seed,
        };
        let mut proof = proof;
        // A query for the NSEC of a name is answered with it: the NSEC exists (it is
        // synthesized for every name), so a denial that lists NSEC in its own bitmap would
        // be bogus (RFC 4035 §3.1.3.1: NODATA only for a type absent from the bitmap).
        let mut skip_soa = false;
        if q.qtype == NSEC
            && let Some(p) = proof.take_if(|p| p.owner.is_none() && found.rcode == rcode::NOERROR)
        {
            self.write_proof(&cx, &p, Section::Answer, w, stats);
            skip_soa = true;
        }
        let mut i = 0;
        while i < self.recs.len() {
            let r = &self.recs[i];
            if skip_soa && r.section == Section::Authority && r.rtype == rtype::SOA {
                i += 1;
                continue;
            }
            if r.section == Section::Additional
                && let Some(p) = proof.take()
            {
                self.write_proof(&cx, &p, Section::Authority, w, stats);
            }
            let end = self.rrset_end(i);
            self.write_rrset(&cx, i..end, w, stats);
            i = end;
        }
        if let Some(p) = proof {
            self.write_proof(&cx, &p, Section::Authority, w, stats);
        }
        if self.report_size {
            stats.dnssec_cache(self.cached() as u64);
        }
    }

    /// Split the taken records; false when they do not parse as the writer's records.
    fn parse(&mut self, counts: [u16; 3]) -> bool {
        self.recs.clear();
        let body = &self.body;
        let mut at = 0;
        for (section, n) in [Section::Answer, Section::Authority, Section::Additional]
            .into_iter()
            .zip(counts)
        {
            for _ in 0..n {
                let owner = if body.get(at) == Some(&0xc0) {
                    at += 2;
                    None
                } else {
                    let Some(end) = name_end(body, at) else {
                        return false;
                    };
                    let r = at..end;
                    at = end;
                    Some(r)
                };
                let Some(fixed) = body.get(at..at + 10) else {
                    return false;
                };
                let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
                let ttl = u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
                let len = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
                let rdata = at + 10..at + 10 + len;
                if rdata.end > body.len() {
                    return false;
                }
                at = rdata.end;
                self.recs.push(Rec {
                    section,
                    owner,
                    rtype,
                    ttl,
                    rdata,
                });
            }
        }
        at == body.len()
    }

    /// What the answer must prove: a negative answer carries the SOA in authority; a
    /// referral carries NS of a name below the apex.
    fn proof(&self, zone: &Zone, q: &Query<'_>, found: &Found) -> Option<Proof> {
        let authority = self.recs.iter().filter(|r| r.section == Section::Authority);
        let mut negative = false;
        let mut cut = None;
        for r in authority {
            match r.rtype {
                rtype::SOA => negative = true,
                rtype::NS if self.owner(r, q) != &*zone.origin_wire => cut = r.owner.clone(),
                _ => {}
            }
        }
        if negative {
            // The name denied is the end of the CNAME chain, if any.
            let owner = self
                .recs
                .iter()
                .rfind(|r| r.section == Section::Answer && r.rtype == rtype::CNAME)
                .map(|r| r.rdata.clone());
            let kind = if found.rcode == rcode::NXDOMAIN {
                ProofKind::NxName
            } else {
                ProofKind::NoData
            };
            return Some(Proof { owner, kind });
        }
        (!found.authoritative && cut.is_some()).then_some(Proof {
            owner: cut,
            kind: ProofKind::NoDs,
        })
    }

    /// The owner of a record, lowercase wire.
    fn owner<'a>(&'a self, r: &Rec, q: &'a Query<'_>) -> &'a [u8] {
        match &r.owner {
            None => q.qname,
            Some(range) => &self.body[range.clone()],
        }
    }

    /// End of the RRset starting at `i`: same section, owner and type.
    fn rrset_end(&self, i: usize) -> usize {
        let first = &self.recs[i];
        let same = |r: &Rec| {
            r.section == first.section
                && r.rtype == first.rtype
                && r.ttl == first.ttl
                && match (&r.owner, &first.owner) {
                    (None, None) => true,
                    (Some(a), Some(b)) => self.body[a.clone()] == self.body[b.clone()],
                    _ => false,
                }
        };
        let mut end = i + 1;
        while end < self.recs.len() && same(&self.recs[end]) {
            end += 1;
        }
        end
    }

    /// One RRset: its records in the order written, duplicates dropped, then its RRSIG.
    fn write_rrset(
        &mut self,
        cx: &Cx<'_>,
        set: Range<usize>,
        w: &mut Writer<'_>,
        stats: &mut LocalStats,
    ) {
        // Canonical order (RFC 4034 §6.3) and duplicates marked, in O(n log n).
        let (body, recs) = (&self.body, &self.recs);
        let rdata = |i: usize| &body[recs[i].rdata.clone()];
        self.order.clear();
        self.order.extend(set.clone());
        self.order.sort_by(|&a, &b| rdata(a).cmp(rdata(b)));
        self.keep.clear();
        self.keep.resize(set.len(), false);
        let mut previous: Option<usize> = None;
        for &i in &self.order {
            if previous.is_none_or(|p| rdata(p) != rdata(i)) {
                self.keep[i - set.start] = true;
            }
            previous = Some(i);
        }
        let keep = &self.keep;
        self.order.retain(|&i| keep[i - set.start]);
        let first = self.recs[set.start].clone();
        let owner = match &first.owner {
            None => Owner::Qname,
            Some(r) => Owner::Name(&self.body[r.clone()]),
        };
        for i in set.clone().filter(|i| self.keep[i - set.start]) {
            let r = &self.recs[i];
            w.record(
                r.section,
                owner,
                r.rtype,
                r.ttl,
                &self.body[r.rdata.clone()],
            );
        }
        let owner_lc = match &first.owner {
            None => cx.q.qname,
            Some(r) => &self.body[r.clone()],
        };
        // RFC 4035 §2.2: delegation NS and glue are not signed; RRSIGs are never signed.
        let delegation = first.rtype == rtype::NS && owner_lc != &*cx.zone.origin_wire;
        if first.section == Section::Additional || delegation || first.rtype == RRSIG {
            return;
        }
        let rdatas = self
            .order
            .iter()
            .map(|&i| &self.body[self.recs[i].rdata.clone()]);
        let mut sig = [0u8; MAX_RRSIG_RDATA];
        let Some(len) = rrsig(
            cx,
            &mut Caches {
                answers: &mut self.answers,
                negatives: &mut self.negatives,
                hash: &self.hash,
                tbs: &mut self.tbs,
            },
            Kind::Answer,
            owner_lc,
            first.rtype,
            first.ttl,
            rdatas,
            &mut sig,
            stats,
        ) else {
            return;
        };
        w.record(first.section, owner, RRSIG, first.ttl, &sig[..len]);
    }

    /// The NSEC of a proof and its RRSIG, in authority (or in answer, to a query for NSEC).
    fn write_proof(
        &mut self,
        cx: &Cx<'_>,
        p: &Proof,
        section: Section,
        w: &mut Writer<'_>,
        stats: &mut LocalStats,
    ) {
        let name: &[u8] = match &p.owner {
            None => cx.q.qname,
            Some(r) => &self.body[r.clone()],
        };
        let mut rdata = [0u8; NSEC_RDATA];
        let mut len = next_name(name, &mut rdata);
        let mut types = TypeSet::default();
        let kind = match p.kind {
            ProofKind::NxName => {
                types.add(NXNAME);
                Kind::Negative
            }
            ProofKind::NoDs => {
                types.add(rtype::NS);
                Kind::Answer
            }
            ProofKind::NoData => {
                node_types(cx.zone, name, &mut types);
                types.remove(cx.q.qtype);
                Kind::Answer
            }
        };
        types.add(RRSIG);
        types.add(NSEC);
        len += types.bitmap(&mut rdata[len..]);
        // RFC 9824 §3 / RFC 4034 §4: the NSEC TTL is the negative TTL, min(SOA TTL, MINIMUM).
        let ttl = cx.zone.soa_ttl.min(cx.zone.soa.minimum);
        let owner = match &p.owner {
            None => Owner::Qname,
            Some(r) => Owner::Name(&self.body[r.clone()]),
        };
        w.record(section, owner, NSEC, ttl, &rdata[..len]);
        let mut sig = [0u8; MAX_RRSIG_RDATA];
        let Some(slen) = rrsig(
            cx,
            &mut Caches {
                answers: &mut self.answers,
                negatives: &mut self.negatives,
                hash: &self.hash,
                tbs: &mut self.tbs,
            },
            kind,
            name,
            NSEC,
            ttl,
            std::iter::once(&rdata[..len]),
            &mut sig,
            stats,
        ) else {
            return;
        };
        w.record(section, owner, RRSIG, ttl, &sig[..slen]);
    }
}

/// The query-wide inputs of signing.
struct Cx<'a> {
    zone: &'a Zone,
    key: &'a ZoneKey,
    q: &'a Query<'a>,
    now: u64,
    seed: u64,
}

/// The caches and the TBS buffer, borrowed apart from the records being read.
struct Caches<'a> {
    answers: &'a mut SigCache,
    negatives: &'a mut SigCache,
    hash: &'a (
        std::collections::hash_map::RandomState,
        std::collections::hash_map::RandomState,
    ),
    tbs: &'a mut Vec<u8>,
}

/// The RRSIG RDATA over one RRset (`rdatas` in canonical order, no duplicates), from the
/// cache or signed now; its length in `out`.
#[allow(clippy::too_many_arguments)]
fn rrsig<'r>(
    cx: &Cx<'_>,
    c: &mut Caches<'_>,
    kind: Kind,
    owner: &[u8],
    rtype: u16,
    ttl: u32,
    rdatas: impl Iterator<Item = &'r [u8]> + Clone,
    out: &mut [u8; MAX_RRSIG_RDATA],
    stats: &mut LocalStats,
) -> Option<usize> {
    let key = cache_key(c.hash, cx.key.id, owner, rtype, ttl, rdatas.clone());
    let cache = match kind {
        Kind::Answer => &mut *c.answers,
        Kind::Negative => &mut *c.negatives,
    };
    if let Some(hit) = cache.get(key, cx.now) {
        out[..hit.len()].copy_from_slice(hit);
        stats.dnssec_hit();
        return Some(hit.len());
    }
    let inception = cx.now.saturating_sub(INCEPTION_BACKDATE);
    let expiration = cx.now + VALIDITY + cx.seed % (VALIDITY_JITTER + 1);
    let tbs = &mut *c.tbs;
    tbs.clear();
    tbs.extend_from_slice(&rtype.to_be_bytes());
    tbs.push(ALGORITHM);
    tbs.push(rrsig_labels(owner));
    tbs.extend_from_slice(&ttl.to_be_bytes());
    // RFC 4034 §3.1.5: serial number arithmetic on 32 bits (RFC 1982).
    tbs.extend_from_slice(&(expiration as u32).to_be_bytes());
    tbs.extend_from_slice(&(inception as u32).to_be_bytes());
    tbs.extend_from_slice(&cx.key.key_tag.to_be_bytes());
    tbs.extend_from_slice(&cx.key.signer);
    let head = tbs.len();
    for rd in rdatas {
        tbs.extend_from_slice(owner);
        tbs.extend_from_slice(&rtype.to_be_bytes());
        tbs.extend_from_slice(&crate::dns::response::CLASS_IN.to_be_bytes());
        tbs.extend_from_slice(&ttl.to_be_bytes());
        tbs.extend_from_slice(&(rd.len() as u16).to_be_bytes());
        tbs.extend_from_slice(rd);
    }
    let signature = cx.key.sign(tbs)?;
    let sig = signature.as_ref();
    let len = head + sig.len();
    if len > MAX_RRSIG_RDATA {
        return None;
    }
    out[..head].copy_from_slice(&tbs[..head]);
    out[head..len].copy_from_slice(sig);
    cache.put(key, cx.now + REFRESH_AFTER, &out[..len]);
    stats.dnssec_signed(kind == Kind::Negative);
    Some(len)
}

/// RFC 4034 §3.1.3: the owner's labels, not counting a leading `*`. Answers synthesized
/// from a wildcard are signed as the QNAME itself (as if it existed: the same claim compact
/// denial makes for every name), so they need no NSEC proof of the wildcard expansion.
fn rrsig_labels(owner: &[u8]) -> u8 {
    let n = wire::label_count(owner);
    let star = owner.get(..2) == Some(b"\x01*");
    (n - usize::from(star)) as u8
}

/// A 128-bit keyed hash of what an RRSIG covers; never 0 (the empty slot).
fn cache_key<'r>(
    hash: &(
        std::collections::hash_map::RandomState,
        std::collections::hash_map::RandomState,
    ),
    key_id: u64,
    owner: &[u8],
    rtype: u16,
    ttl: u32,
    rdatas: impl Iterator<Item = &'r [u8]> + Clone,
) -> u128 {
    let one = |state: &std::collections::hash_map::RandomState| {
        let mut h = state.build_hasher();
        h.write_u64(key_id);
        h.write(owner);
        h.write_u16(rtype);
        h.write_u32(ttl);
        for rd in rdatas.clone() {
            h.write_usize(rd.len());
            h.write(rd);
        }
        h.finish()
    };
    (u128::from(one(&hash.0)) << 64 | u128::from(one(&hash.1))).max(1)
}

/// RFC 4034 §4.1: NSEC RDATA is the next name (≤ 255) and bitmap windows 0 and 1 (≤ 2 × 34).
const NSEC_RDATA: usize = 255 + 68;

/// RFC 9824 §3: the next name is `\000.<name>`, the immediate successor of the name in
/// canonical order (lowercase, RFC 6840 §5.1 aside, so that signatures cache whatever the
/// query's case). A name too long for one more label gets itself as next.
fn next_name(name: &[u8], out: &mut [u8]) -> usize {
    if name.len() + 2 <= crate::dns::wire::MAX_NAME {
        out[0] = 1;
        out[1] = 0;
        out[2..2 + name.len()].copy_from_slice(name);
        2 + name.len()
    } else {
        out[..name.len()].copy_from_slice(name);
        name.len()
    }
}

/// The types present at `name` for a NODATA proof: static RRsets, A/AAAA for a policy,
/// SOA/DNSKEY at the apex; only NS at a delegation (RFC 4035 §2.3). An empty non-terminal
/// has none (its bitmap is RRSIG NSEC).
fn node_types(zone: &Zone, name: &[u8], types: &mut TypeSet) {
    let Some(node) = zone.nodes.get(name).or_else(|| wildcard_node(zone, name)) else {
        return;
    };
    if node.delegation {
        types.add(rtype::NS);
        return;
    }
    for set in node.rrsets() {
        types.add(set.rtype);
    }
    if node.policy.is_some() {
        types.add(rtype::A);
        types.add(rtype::AAAA);
    }
    if name == &*zone.origin_wire {
        types.add(rtype::SOA);
        types.add(DNSKEY);
    }
}

/// RFC 4034 §4.1.2 type bitmap over windows 0 and 1 (every type Meridian serves is below
/// 512; CAA is 257).
#[derive(Default)]
struct TypeSet {
    bits: [[u8; 32]; 2],
}

impl TypeSet {
    fn add(&mut self, t: u16) {
        if let Some(w) = self.bits.get_mut(usize::from(t >> 8)) {
            w[usize::from(t & 0xff) / 8] |= 0x80 >> (t & 7);
        }
    }

    fn remove(&mut self, t: u16) {
        if let Some(w) = self.bits.get_mut(usize::from(t >> 8)) {
            w[usize::from(t & 0xff) / 8] &= !(0x80 >> (t & 7));
        }
    }

    /// The wire bitmap into `out`; its length.
    fn bitmap(&self, out: &mut [u8]) -> usize {
        let mut at = 0;
        for (window, bits) in self.bits.iter().enumerate() {
            let Some(last) = bits.iter().rposition(|b| *b != 0) else {
                continue;
            };
            out[at] = window as u8;
            out[at + 1] = (last + 1) as u8;
            out[at + 2..at + 3 + last].copy_from_slice(&bits[..=last]);
            at += 3 + last;
        }
        at
    }
}

/// End of an uncompressed name starting at `at`.
fn name_end(buf: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let l = usize::from(*buf.get(at)?);
        if l > 63 {
            return None;
        }
        at += 1 + l;
        if l == 0 {
            return Some(at);
        }
    }
}

/// The apex DNSKEY RRset (written for every query of it, with or without DO: it is zone
/// data; its RRSIG comes with DO like any other).
pub fn write_dnskey(zone: &Zone, key: &ZoneKey, w: &mut Writer<'_>) -> Found {
    w.record(
        Section::Answer,
        Owner::Qname,
        DNSKEY,
        zone.soa_ttl,
        &key.dnskey,
    );
    Found {
        rcode: rcode::NOERROR,
        authoritative: true,
        ..Found::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nxname_bitmap_is_rrsig_nsec_type128() {
        let mut t = TypeSet::default();
        for x in [NXNAME, RRSIG, NSEC] {
            t.add(x);
        }
        let mut out = [0u8; 70];
        let n = t.bitmap(&mut out);
        let mut want = vec![0u8, 17];
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0x03, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x80]);
        assert_eq!(&out[..n], &want[..]);
    }

    #[test]
    fn bitmap_spans_two_windows_and_removes() {
        let mut t = TypeSet::default();
        for x in [rtype::A, rtype::CAA, rtype::MX] {
            t.add(x);
        }
        t.remove(rtype::MX);
        let mut out = [0u8; 70];
        let n = t.bitmap(&mut out);
        assert_eq!(&out[..n], &[0, 1, 0x40, 1, 1, 0x40]);
    }

    #[test]
    fn labels_skip_a_leading_star() {
        let n = wire::from_text("*.a.example.").expect("name");
        assert_eq!(rrsig_labels(&n), 2);
        let n = wire::from_text("b.a.example.").expect("name");
        assert_eq!(rrsig_labels(&n), 3);
    }
}
