//! Request parsing without allocation: header, the one question (its name lowercased into a
//! stack buffer, the sent case kept for the echo), the OPT record with ECS (RFC 6891,
//! RFC 7871) and the TSIG record (RFC 8945), checked strictly, meta-RRs only where they may
//! be. Any other record is skipped over.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::tsig::{self, TKEY, TSIG, Tsig};
use crate::model::rtype::OPT;

/// RFC 1035 §4.1.1: the fixed header.
pub const HEADER_LEN: usize = 12;
/// RFC 1035 §2.3.4: names are at most 255 octets on the wire.
pub const MAX_NAME: usize = 255;
/// RFC 7871 §6: the EDNS option code of Client Subnet.
pub const ECS_OPTION: u16 = 8;
/// RFC 6891 §6.1.2: an OPT record up to its RDATA (root owner, TYPE, CLASS, TTL, RDLENGTH).
pub const OPT_FIXED: usize = 11;
/// RFC 5001 §2.3: the EDNS option code of the Name Server Identifier.
pub const NSID_OPTION: u16 = 3;

/// Why a packet gets no normal answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Too short, or a response: no reply at all.
    Drop,
    /// Malformed: FORMERR (with the question when it parsed).
    FormErr,
    /// Opcode other than QUERY: NOTIMP.
    NotImp,
}

/// A parsed query; borrows the packet for the question bytes.
#[derive(Debug)]
pub struct Query<'p> {
    pub id: u16,
    /// Second header word of the request (opcode, RD, CD ...).
    pub flags: u16,
    /// The question section exactly as sent (name, type, class), for the echo.
    pub question: &'p [u8],
    /// The question name, lowercased (in the worker's name buffer).
    pub qname: &'p [u8],
    pub qtype: u16,
    pub qclass: u16,
    pub edns: Option<Edns>,
    /// The TSIG record, last in the additional section.
    pub tsig: Option<Tsig<'p>>,
}

/// Where the lowercased question name is written: one per worker, reused.
pub type NameBuf = [u8; MAX_NAME];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edns {
    /// The requestor's UDP payload size.
    pub payload: u16,
    pub version: u8,
    pub dnssec_ok: bool,
    /// RFC 9824 §5: the CO ("Compact Answers OK") flag, 0x4000 of the OPT flags: the
    /// requestor wants NXDOMAIN in the header of a compact denial.
    pub compact_ok: bool,
    pub ecs: Option<Ecs>,
    /// RFC 5001 §2.1: the query carries an empty NSID option, asking who answers.
    pub nsid: bool,
}

/// A Client Subnet option, validated (RFC 7871 §7.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ecs {
    pub addr: IpAddr,
    pub source_prefix: u8,
}

impl Query<'_> {
    /// RFC 1035 §4.1.1 OPCODE: 0 is QUERY.
    pub fn opcode(&self) -> u8 {
        ((self.flags >> 11) & 0xf) as u8
    }
}

impl Ecs {
    /// Address family number (IANA: 1 IPv4, 2 IPv6).
    pub fn family(&self) -> u16 {
        if self.addr.is_ipv4() { 1 } else { 2 }
    }
}

/// Parse a query. `Err` says how to reply; a FORMERR before the question parsed carries no
/// question. Inlined into the handler, which would otherwise copy the whole `Query` out of
/// the `Result` right after it was written (a store-forwarding stall on every query).
#[inline(always)]
pub fn parse<'p>(
    packet: &'p [u8],
    name_buf: &'p mut NameBuf,
) -> Result<Query<'p>, (Reject, Option<u16>)> {
    if packet.len() < HEADER_LEN {
        return Err((Reject::Drop, None));
    }
    let id = u16::from_be_bytes([packet[0], packet[1]]);
    let flags = u16::from_be_bytes([packet[2], packet[3]]);
    if flags & 0x8000 != 0 {
        return Err((Reject::Drop, None));
    }
    // Another opcode parses as a query when it can, so that NOTIMP carries the question and
    // the OPT (the handler checks `opcode()`); else it gets a bare NOTIMP.
    let not_query = (flags >> 11) & 0xf != 0;
    let fail = if not_query {
        Reject::NotImp
    } else {
        Reject::FormErr
    };
    let count = |i: usize| u16::from_be_bytes([packet[4 + 2 * i], packet[5 + 2 * i]]);
    if count(0) != 1 {
        return Err((fail, Some(id)));
    }
    let at = read_question_name(packet, HEADER_LEN, name_buf).ok_or((fail, Some(id)))?;
    let qname = &name_buf[..at - HEADER_LEN];
    let fixed = packet.get(at..at + 4).ok_or((fail, Some(id)))?;
    let qtype = u16::from_be_bytes([fixed[0], fixed[1]]);
    let qclass = u16::from_be_bytes([fixed[2], fixed[3]]);
    let question = &packet[HEADER_LEN..at + 4];
    let records = usize::from(count(1)) + usize::from(count(2)) + usize::from(count(3));
    let additional_from = usize::from(count(1)) + usize::from(count(2));
    let (edns, tsig) = read_records(packet, at + 4, records, additional_from)
        .map_err(|r| (if not_query { fail } else { r }, Some(id)))?;
    Ok(Query {
        id,
        flags,
        question,
        qname,
        qtype,
        qclass,
        edns,
        tsig,
    })
}

/// The question name: uncompressed labels only (nothing earlier to point at), lowercased.
/// Length octets are at most 63, below `A`, so lowercasing the whole run leaves them be.
fn read_question_name(packet: &[u8], start: usize, out: &mut NameBuf) -> Option<usize> {
    let mut at = start;
    loop {
        let l = usize::from(*packet.get(at)?);
        if l > 63 {
            return None;
        }
        at += 1 + l;
        if at - start > MAX_NAME {
            return None;
        }
        if l == 0 {
            break;
        }
    }
    // Lowercased as it is copied: copying and then lowercasing in place reads back bytes
    // just stored, which stalls on store forwarding.
    let name = packet.get(start..at)?;
    for (d, s) in out.iter_mut().zip(name) {
        *d = s.to_ascii_lowercase();
    }
    Some(at)
}

/// Walk the remaining records; return the OPT and the TSIG of the additional section.
/// RFC 6891 §6.1.1: at most one OPT, in the additional section, owned by the root.
/// RFC 8945 §5.2: the TSIG is the last record of the additional section. RFC 2930 §4: a
/// query's TKEY sits in the additional section. Inlined into `parse` (so into the handler),
/// as `parse` is: its result, written and read right back, stalled on store forwarding.
#[inline(always)]
fn read_records(
    packet: &[u8],
    mut at: usize,
    n: usize,
    additional_from: usize,
) -> Result<(Option<Edns>, Option<Tsig<'_>>), Reject> {
    let mut edns = None;
    let mut tsig = None;
    for i in 0..n {
        let name_start = at;
        at = skip_name(packet, at).ok_or(Reject::FormErr)?;
        let fixed = packet.get(at..at + 10).ok_or(Reject::FormErr)?;
        let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
        let class = u16::from_be_bytes([fixed[2], fixed[3]]);
        let ttl = u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
        let rdlen = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
        let rdata = packet
            .get(at + 10..at + 10 + rdlen)
            .ok_or(Reject::FormErr)?;
        at += 10 + rdlen;
        let additional = i >= additional_from;
        match rtype {
            OPT => {
                if !additional || edns.is_some() || packet[name_start] != 0 {
                    return Err(Reject::FormErr);
                }
                let (ecs, nsid) = read_options(rdata)?;
                edns = Some(Edns {
                    payload: class,
                    version: (ttl >> 16) as u8,
                    dnssec_ok: ttl & 0x8000 != 0,
                    compact_ok: ttl & 0x4000 != 0,
                    ecs,
                    nsid,
                });
            }
            TSIG => {
                if !additional || i + 1 != n {
                    return Err(Reject::FormErr);
                }
                tsig = Some(
                    tsig::parse(packet, name_start, class, ttl, rdata).ok_or(Reject::FormErr)?,
                );
            }
            TKEY if !additional => return Err(Reject::FormErr),
            _ => {}
        }
    }
    if at != packet.len() {
        return Err(Reject::FormErr);
    }
    Ok((edns, tsig))
}

/// Skip a possibly compressed name; `None` when it runs off the packet.
fn skip_name(packet: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let l = *packet.get(at)?;
        match l {
            0 => return Some(at + 1),
            1..=63 => at += 1 + usize::from(l),
            0xc0..=0xff => {
                packet.get(at + 1)?;
                return Some(at + 2);
            }
            _ => return None,
        }
    }
}

/// EDNS options: ECS is validated, an empty NSID noted (RFC 5001 §2.3: a requestor sends it
/// empty; a non-empty one is not a request and is ignored), every other option ignored
/// (RFC 6891 §6.1.2).
#[inline(always)]
fn read_options(mut rdata: &[u8]) -> Result<(Option<Ecs>, bool), Reject> {
    let mut ecs = None;
    let mut nsid = false;
    while !rdata.is_empty() {
        let head = rdata.get(..4).ok_or(Reject::FormErr)?;
        let code = u16::from_be_bytes([head[0], head[1]]);
        let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
        let body = rdata.get(4..4 + len).ok_or(Reject::FormErr)?;
        rdata = &rdata[4 + len..];
        if code == ECS_OPTION {
            if ecs.is_some() {
                return Err(Reject::FormErr);
            }
            ecs = Some(read_ecs(body)?);
        } else if code == NSID_OPTION && body.is_empty() {
            nsid = true;
        }
    }
    Ok((ecs, nsid))
}

/// RFC 7871 §6 and §7.1.2: family 1 or 2, SOURCE within the family, SCOPE 0 in queries,
/// exactly ceil(SOURCE/8) address octets, and no bits set past SOURCE. Inlined, as
/// `read_records` is: its result, returned through memory and copied at once, stalled on
/// store forwarding.
#[inline(always)]
fn read_ecs(body: &[u8]) -> Result<Ecs, Reject> {
    let head = body.get(..4).ok_or(Reject::FormErr)?;
    let family = u16::from_be_bytes([head[0], head[1]]);
    let source = head[2];
    let scope = head[3];
    let addr_bytes = &body[4..];
    let max = match family {
        1 => 32,
        2 => 128,
        _ => return Err(Reject::FormErr),
    };
    if source > max || scope != 0 || addr_bytes.len() != usize::from(source).div_ceil(8) {
        return Err(Reject::FormErr);
    }
    if !ecs_bits_clear(source, addr_bytes) {
        return Err(Reject::FormErr);
    }
    let addr = ecs_address(family, addr_bytes).ok_or(Reject::FormErr)?;
    Ok(Ecs {
        addr,
        source_prefix: source,
    })
}

/// RFC 7871 §6: the address bits past the source prefix are zero.
#[inline(always)]
pub(crate) fn ecs_bits_clear(source: u8, octets: &[u8]) -> bool {
    source.is_multiple_of(8)
        || octets
            .last()
            .is_none_or(|b| b & (0xff >> (source % 8)) == 0)
}

/// The client address of an ECS option of `family` (1: IPv4, 2: IPv6) from its address
/// octets, the rest zero; `None` for another family or more octets than it has.
#[inline(always)]
pub(crate) fn ecs_address(family: u16, octets: &[u8]) -> Option<IpAddr> {
    // The address as an integer, octet by octet (no byte array read back as a word, which
    // stalls on store forwarding); an IPv4 one in 32 bits, as 128-bit shifts by a variable
    // count cost several instructions an octet. Spelled out per length: an iterator chain
    // here was left as a call.
    match family {
        1 => {
            let octet = |i: usize, shift: u32| u32::from(octets[i]) << shift;
            let bits = match octets.len() {
                0 => 0,
                1 => octet(0, 24),
                2 => octet(0, 24) | octet(1, 16),
                3 => octet(0, 24) | octet(1, 16) | octet(2, 8),
                4 => octet(0, 24) | octet(1, 16) | octet(2, 8) | octet(3, 0),
                _ => return None,
            };
            Some(IpAddr::V4(Ipv4Addr::from(bits)))
        }
        2 if octets.len() <= 16 => {
            let mut bits = 0u128;
            for (i, b) in octets.iter().enumerate() {
                bits |= u128::from(*b) << (120 - 8 * i);
            }
            Some(IpAddr::V6(Ipv6Addr::from(bits)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &[u8], opt: Option<&[u8]>) -> Vec<u8> {
        let mut p = vec![
            0x12,
            0x34,
            0x01,
            0x00,
            0,
            1,
            0,
            0,
            0,
            0,
            0,
            u8::from(opt.is_some()),
        ];
        p.extend_from_slice(name);
        p.extend_from_slice(&[0, 1, 0, 1]);
        if let Some(opt) = opt {
            p.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0]);
            p.extend_from_slice(&(opt.len() as u16).to_be_bytes());
            p.extend_from_slice(opt);
        }
        p
    }

    #[test]
    fn parses_question_and_lowercases() {
        let p = query(b"\x03WwW\x07example\x00", None);
        let mut buf = [0; MAX_NAME];
        let q = parse(&p, &mut buf).expect("valid");
        assert_eq!(q.qname, b"\x03www\x07example\x00");
        assert_eq!(&q.question[..4], b"\x03WwW");
        assert_eq!((q.id, q.qtype, q.qclass), (0x1234, 1, 1));
        assert!(q.edns.is_none());
    }

    #[test]
    fn validates_ecs() {
        let ok = query(b"\x01a\x00", Some(&[0, 8, 0, 7, 0, 1, 24, 0, 203, 0, 113]));
        let e = parse(&ok, &mut [0; MAX_NAME])
            .expect("valid")
            .edns
            .expect("edns");
        assert_eq!(
            e.ecs.expect("ecs").addr,
            "203.0.113.0".parse::<IpAddr>().expect("ip")
        );
        for (option, want) in [
            (&[0, 1, 32, 0, 198, 51, 100, 7][..], "198.51.100.7"),
            (&[0, 1, 8, 0, 10], "10.0.0.0"),
            (&[0, 1, 0, 0], "0.0.0.0"),
            (&[0, 2, 24, 0, 0x20, 0x01, 0x0d], "2001:d00::"),
            (&[0, 2, 0, 0], "::"),
        ] {
            let mut o = vec![0, 8, 0, option.len() as u8];
            o.extend_from_slice(option);
            let q = query(b"\x01a\x00", Some(&o));
            let e = parse(&q, &mut [0; MAX_NAME]).expect("valid").edns;
            assert_eq!(
                e.and_then(|e| e.ecs).map(|e| e.addr),
                Some(want.parse::<IpAddr>().expect("ip")),
                "{option:?}"
            );
        }
        for bad in [
            &[0, 8, 0, 7, 0, 1, 24, 0, 203, 0, 113, 1][..], // trailing byte in option
            &[0, 8, 0, 7, 0, 1, 24, 5, 203, 0, 113],        // scope set
            &[0, 8, 0, 7, 0, 3, 24, 0, 203, 0, 113],        // family 3
            &[0, 8, 0, 7, 0, 1, 33, 0, 203, 0, 113],        // prefix too long
            &[0, 8, 0, 7, 0, 1, 20, 0, 203, 0, 113],        // bits past the prefix
        ] {
            let mut b = bad.to_vec();
            b[3] = (b.len() - 4) as u8;
            assert_eq!(
                parse(&query(b"\x01a\x00", Some(&b)), &mut [0; MAX_NAME]).err(),
                Some((Reject::FormErr, Some(0x1234))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn rejects_what_it_must() {
        assert_eq!(
            parse(&[0; 5], &mut [0; MAX_NAME]).err(),
            Some((Reject::Drop, None))
        );
        let mut resp = query(b"\x00", None);
        resp[2] |= 0x80;
        assert_eq!(
            parse(&resp, &mut [0; MAX_NAME]).err(),
            Some((Reject::Drop, None))
        );
        let mut notify = query(b"\x00", None);
        notify[2] |= 4 << 3;
        let mut buf = [0; MAX_NAME];
        assert_eq!(parse(&notify, &mut buf).map(|q| q.opcode()).ok(), Some(4));
        notify[5] = 0; // no question: a bare NOTIMP
        assert_eq!(
            parse(&notify, &mut [0; MAX_NAME]).err().map(|e| e.0),
            Some(Reject::NotImp)
        );
        let mut two = query(b"\x00", None);
        two[5] = 2;
        assert_eq!(
            parse(&two, &mut [0; MAX_NAME]).err().map(|e| e.0),
            Some(Reject::FormErr)
        );
        let mut v1 = query(b"\x00", Some(&[]));
        let n = v1.len();
        v1[n - 5] = 1; // version byte of the OPT TTL
        assert_eq!(
            parse(&v1, &mut [0; MAX_NAME])
                .expect("parses")
                .edns
                .map(|e| e.version),
            Some(1)
        );
    }
}
