//! Response writer: header, the question echoed as sent, answer / authority / additional
//! records and the OPT record, straight into a reused buffer. Owner names equal to the
//! question are compressed to a pointer at it. Truncation to the UDP limit happens here.

use super::wire::{Ecs, HEADER_LEN, NSID_OPTION, Query};
use crate::model::MAX_MESSAGE;

/// RFC 1035 §4.1.4: pointer to the question name, which always starts right after the
/// header.
const QNAME_POINTER: [u8; 2] = [0xc0, HEADER_LEN as u8];
/// The largest UDP payload Meridian sends (DNS Flag Day 2020: avoids IP fragmentation).
pub const MAX_UDP_PAYLOAD: u16 = 1232;
/// RFC 1035 §4.2.1: the UDP limit without EDNS.
pub const CLASSIC_UDP_PAYLOAD: u16 = 512;
/// RFC 1035: class IN; Meridian serves nothing else.
pub const CLASS_IN: u16 = 1;

pub mod rcode {
    pub const NOERROR: u8 = 0;
    pub const FORMERR: u8 = 1;
    pub const SERVFAIL: u8 = 2;
    pub const NXDOMAIN: u8 = 3;
    pub const NOTIMP: u8 = 4;
    pub const REFUSED: u8 = 5;
    /// RFC 6891: 16, split between the header (low 4 bits) and the OPT TTL.
    pub const BADVERS: u16 = 16;
}

/// Owner of a record.
#[derive(Clone, Copy)]
pub enum Owner<'a> {
    /// The question name, as a pointer (keeps the client's case).
    Qname,
    /// Any other name, lowercase wire format.
    Name(&'a [u8]),
}

/// Which section records go to; sections must be written in this order.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Section {
    Answer,
    Authority,
    Additional,
}

/// A response under construction in `buf`.
pub struct Writer<'b> {
    buf: &'b mut Vec<u8>,
    counts: [u16; 3],
    section: Section,
    /// Where the records start (after the header and question).
    question_end: usize,
    /// A record had more RDATA than RDLENGTH can say: the response is truncated.
    overflow: bool,
}

impl<'b> Writer<'b> {
    /// Start a response to `q`: header and question. The header is completed by `finish`.
    pub fn new(buf: &'b mut Vec<u8>, q: &Query<'_>) -> Self {
        buf.clear();
        buf.extend_from_slice(&q.id.to_be_bytes());
        buf.extend_from_slice(&[0; 2]);
        buf.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
        buf.extend_from_slice(q.question);
        Writer {
            question_end: buf.len(),
            buf,
            counts: [0; 3],
            section: Section::Answer,
            overflow: false,
        }
    }

    /// Move the records written so far into `into` (cleared first) and start the sections
    /// over; returns how many records each section had. DNSSEC rewrites them with their
    /// signatures (`dnssec::sign`).
    pub fn take_records(&mut self, into: &mut Vec<u8>) -> [u16; 3] {
        into.clear();
        into.extend_from_slice(&self.buf[self.question_end..]);
        self.buf.truncate(self.question_end);
        self.section = Section::Answer;
        std::mem::take(&mut self.counts)
    }

    /// Octets of the response so far.
    pub fn written(&self) -> usize {
        self.buf.len()
    }

    /// Add one record.
    pub fn record(
        &mut self,
        section: Section,
        owner: Owner<'_>,
        rtype: u16,
        ttl: u32,
        rdata: &[u8],
    ) {
        self.header(section, owner, rtype, ttl, rdata.len());
        self.buf.extend_from_slice(rdata);
    }

    /// The zone's SOA, written in place (no RDATA buffer per negative answer).
    pub fn soa(&mut self, section: Section, owner: Owner<'_>, ttl: u32, zone: &crate::model::Zone) {
        let soa = &zone.soa;
        let len = soa.mname.len() + soa.rname.len() + 20;
        self.header(section, owner, crate::model::rtype::SOA, ttl, len);
        self.buf.extend_from_slice(&soa.mname);
        self.buf.extend_from_slice(&soa.rname);
        for v in [zone.serial, soa.refresh, soa.retry, soa.expire, soa.minimum] {
            self.buf.extend_from_slice(&v.to_be_bytes());
        }
    }

    /// Owner, type, class, TTL and RDLENGTH of a record.
    fn header(&mut self, section: Section, owner: Owner<'_>, rtype: u16, ttl: u32, rdlen: usize) {
        debug_assert!(section >= self.section, "sections out of order");
        self.section = section;
        match owner {
            Owner::Qname => self.buf.extend_from_slice(&QNAME_POINTER),
            Owner::Name(n) => self.buf.extend_from_slice(n),
        }
        let [t0, t1] = rtype.to_be_bytes();
        let [c0, c1] = CLASS_IN.to_be_bytes();
        let [l0, l1, l2, l3] = ttl.to_be_bytes();
        // `check` keeps RDATA within RDLENGTH; should one not be, the response is cut to
        // TC=1 in `finish` instead of going out with a wrapped length.
        let [r0, r1] = u16::try_from(rdlen)
            .unwrap_or_else(|_| {
                self.overflow = true;
                u16::MAX
            })
            .to_be_bytes();
        self.buf
            .extend_from_slice(&[t0, t1, c0, c1, l0, l1, l2, l3, r0, r1]);
        let count = &mut self.counts[section as usize];
        *count = count.saturating_add(1);
    }

    /// Complete the header (and OPT), truncating to `limit` bytes when given, and always to
    /// [`MAX_MESSAGE`]: a response that does not fit keeps only its header, question and
    /// OPT, with TC=1. Over TCP that is the answer to data too large for any message (which
    /// `check` rejects where it can see it: CNAME chains and referrals add up at run time).
    pub fn finish(self, q: &Query<'_>, meta: Meta<'_>, limit: Option<usize>) {
        let Writer {
            buf,
            counts,
            overflow,
            ..
        } = self;
        let limit = limit.map_or(MAX_MESSAGE, |l| l.min(MAX_MESSAGE));
        let question_end = HEADER_LEN + q.question.len();
        let opt_len = if q.edns.is_some() { opt_size(&meta) } else { 0 };
        let mut counts = counts;
        let mut tc = false;
        if overflow || buf.len() + opt_len > limit {
            buf.truncate(question_end);
            counts = [0; 3];
            tc = true;
        }
        if let Some(edns) = &q.edns {
            write_opt(buf, meta, edns.dnssec_ok, edns.dnssec_ok && edns.compact_ok);
            counts[2] += 1;
        }
        write_header(buf, q, meta, tc, counts);
    }
}

/// What the header and OPT of a response say besides the records.
#[derive(Clone, Copy, Debug)]
pub struct Meta<'a> {
    /// Extended rcode (BADVERS = 16 spills into the OPT).
    pub rcode: u16,
    pub authoritative: bool,
    /// ECS to echo, with its scope.
    pub ecs: Option<(&'a Ecs, u8)>,
    /// The NSID payload to send (RFC 5001), when the query asked for it.
    pub nsid: Option<&'a [u8]>,
}

/// The NSID payload for `q`: the instance name when the query asked (RFC 5001 §2.1).
pub fn nsid_for<'a>(q: &Query<'_>, name: Option<&'a str>) -> Option<&'a [u8]> {
    name.filter(|_| q.edns.as_ref().is_some_and(|e| e.nsid))
        .map(str::as_bytes)
}

/// A response with no records: errors, and answers that carry only the header.
pub fn error(buf: &mut Vec<u8>, q: &Query<'_>, rcode: u16) {
    error_with_nsid(buf, q, rcode, None);
}

/// [`error`] carrying the NSID the query asked for.
pub fn error_with_nsid(buf: &mut Vec<u8>, q: &Query<'_>, rcode: u16, nsid: Option<&[u8]>) {
    let meta = Meta {
        rcode,
        authoritative: false,
        ecs: None,
        nsid,
    };
    Writer::new(buf, q).finish(q, meta, None);
}

/// An RRL slip (SPEC §9): the response cut to its first `head_len` octets (header and
/// question), with TC=1 and AA=1 and no records, not even the OPT, so that it is never bigger
/// than the query it answers. A resolver retries it over TCP.
pub fn slip(buf: &mut Vec<u8>, head_len: usize) {
    buf.truncate(head_len);
    if buf.len() < HEADER_LEN {
        return;
    }
    buf[2] |= 0x06;
    buf[6..12].fill(0);
}

/// A header-only reply when the question did not parse (FORMERR, NOTIMP): id and opcode
/// copied, no sections.
pub fn bare(buf: &mut Vec<u8>, id: u16, request_flags: u16, rcode: u8) {
    buf.clear();
    buf.extend_from_slice(&id.to_be_bytes());
    let flags = 0x8000 | (request_flags & 0x7900) | u16::from(rcode & 0xf);
    buf.extend_from_slice(&flags.to_be_bytes());
    buf.extend_from_slice(&[0; 8]);
}

fn write_header(buf: &mut [u8], q: &Query<'_>, meta: Meta<'_>, tc: bool, counts: [u16; 3]) {
    // QR, opcode copied, AA, TC, RD copied, CD copied (RFC 6840 §5.9).
    let mut flags = 0x8000 | (q.flags & 0x7800) | (q.flags & 0x0100) | (q.flags & 0x0010);
    if meta.authoritative {
        flags |= 0x0400;
    }
    if tc {
        flags |= 0x0200;
    }
    flags |= meta.rcode & 0xf;
    buf[2..4].copy_from_slice(&flags.to_be_bytes());
    buf[4..6].copy_from_slice(&1u16.to_be_bytes());
    buf[6..8].copy_from_slice(&counts[0].to_be_bytes());
    buf[8..10].copy_from_slice(&counts[1].to_be_bytes());
    buf[10..12].copy_from_slice(&counts[2].to_be_bytes());
}

fn opt_size(meta: &Meta<'_>) -> usize {
    11 + meta
        .ecs
        .map_or(0, |(e, _)| 8 + usize::from(e.source_prefix).div_ceil(8))
        + meta.nsid.map_or(0, |n| 4 + n.len())
}

/// RFC 6891 §6.1.2 OPT: our payload size, extended rcode, version 0, DO copied
/// (RFC 3225 §3), CO copied when DO is set (RFC 9824 §5: compact answers understood), the
/// ECS option echoed with its scope (RFC 7871 §7.2.1) and the NSID (RFC 5001 §2.3). Written
/// straight into the reused buffer: no allocation.
fn write_opt(buf: &mut Vec<u8>, meta: Meta<'_>, dnssec_ok: bool, compact_ok: bool) {
    let [p0, p1] = MAX_UDP_PAYLOAD.to_be_bytes();
    let do_bit = if dnssec_ok { 0x80 } else { 0 } | if compact_ok { 0x40 } else { 0 };
    let start = buf.len();
    buf.extend_from_slice(&[
        0,
        0,
        41,
        p0,
        p1,
        (meta.rcode >> 4) as u8,
        0,
        do_bit,
        0,
        0,
        0,
    ]);
    if let Some((ecs, scope)) = meta.ecs {
        let addr_len = usize::from(ecs.source_prefix).div_ceil(8);
        let [f0, f1] = ecs.family().to_be_bytes();
        let [l0, l1] = ((4 + addr_len) as u16).to_be_bytes();
        buf.extend_from_slice(&[0, 8, l0, l1, f0, f1, ecs.source_prefix, scope]);
        match ecs.addr {
            std::net::IpAddr::V4(a) => buf.extend_from_slice(&a.octets()[..addr_len]),
            std::net::IpAddr::V6(a) => buf.extend_from_slice(&a.octets()[..addr_len]),
        }
    }
    if let Some(id) = meta.nsid {
        buf.extend_from_slice(&NSID_OPTION.to_be_bytes());
        buf.extend_from_slice(&(id.len() as u16).to_be_bytes());
        buf.extend_from_slice(id);
    }
    let rdlen = (buf.len() - start - 11) as u16;
    buf[start + 9..start + 11].copy_from_slice(&rdlen.to_be_bytes());
}

/// The UDP size limit for a query (RFC 6891 §6.2.5: at least 512, capped at ours).
pub fn udp_limit(q: &Query<'_>) -> usize {
    match &q.edns {
        Some(e) => usize::from(e.payload.clamp(CLASSIC_UDP_PAYLOAD, MAX_UDP_PAYLOAD)),
        None => usize::from(CLASSIC_UDP_PAYLOAD),
    }
}
