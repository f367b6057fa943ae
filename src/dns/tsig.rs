//! TSIG (RFC 8945) without keys: Meridian configures none, so every signed query is answered
//! NOTAUTH with TSIG error BADKEY (§5.2.2), its TSIG record echoed unsigned (§5.3.2: MAC size
//! 0, no MAC). Parsing checks the record can be interpreted (else FORMERR, §5.2); where it
//! may sit is checked by `wire`. Nothing here allocates.

use super::response;
use super::wire::{MAX_NAME, Query};

/// RFC 8945 §4.2: the TSIG RR type.
pub const TSIG: u16 = 250;
/// RFC 2930: the TKEY RR type (a meta-RR, like TSIG and OPT).
pub const TKEY: u16 = 249;
/// RFC 8945 §4.2: a TSIG record's CLASS MUST be ANY.
const CLASS_ANY: u16 = 255;
/// RFC 8945 §6: TSIG error BADKEY, "key not recognized".
const BADKEY: u16 = 17;
/// RFC 8945 §5.2.2 (RFC 2136 §2.2): RCODE NOTAUTH.
pub const NOTAUTH: u16 = 9;
/// Pointer hops followed in a compressed key name: more than a 255-octet name can need.
const MAX_POINTERS: usize = 128;

/// A query's TSIG record, interpreted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tsig<'p> {
    /// The request, for the key name (the owner name, possibly compressed).
    packet: &'p [u8],
    name_at: usize,
    /// Algorithm name, uncompressed (RFC 8945 §4.2, RFC 3597 §4).
    algorithm: &'p [u8],
    /// Time Signed (48 bits) and Fudge, echoed.
    time_and_fudge: &'p [u8],
    original_id: u16,
}

/// Interpret a TSIG record whose owner name starts at `name_at`; `None` means FORMERR.
pub fn parse<'p>(
    packet: &'p [u8],
    name_at: usize,
    class: u16,
    ttl: u32,
    rdata: &'p [u8],
) -> Option<Tsig<'p>> {
    if class != CLASS_ANY || ttl != 0 {
        return None;
    }
    name_len(packet, name_at)?;
    let alg_len = uncompressed_name_len(rdata)?;
    let algorithm = &rdata[..alg_len];
    let time_and_fudge = rdata.get(alg_len..alg_len + 8)?;
    let at = alg_len + 8;
    let mac_len = usize::from(be16(rdata, at)?);
    let at = at + 2 + mac_len;
    let original_id = be16(rdata, at)?;
    let other_len = usize::from(be16(rdata, at + 4)?);
    if rdata.len() != at + 6 + other_len {
        return None;
    }
    Some(Tsig {
        packet,
        name_at,
        algorithm,
        time_and_fudge,
        original_id,
    })
}

/// RFC 8945 §5.2.2 and §5.3.2: NOTAUTH, and the TSIG record with error BADKEY and no MAC,
/// after the OPT if the query had one.
pub fn badkey(out: &mut Vec<u8>, q: &Query<'_>, tsig: &Tsig<'_>) {
    response::error(out, q, NOTAUTH);
    copy_name(tsig.packet, tsig.name_at, out);
    out.extend_from_slice(&TSIG.to_be_bytes());
    out.extend_from_slice(&CLASS_ANY.to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes());
    let rdlen = tsig.algorithm.len() + 8 + 2 + 2 + 2 + 2;
    out.extend_from_slice(&(rdlen as u16).to_be_bytes());
    out.extend_from_slice(tsig.algorithm);
    out.extend_from_slice(tsig.time_and_fudge);
    out.extend_from_slice(&0u16.to_be_bytes()); // MAC size
    out.extend_from_slice(&tsig.original_id.to_be_bytes());
    out.extend_from_slice(&BADKEY.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes()); // other len
    let arcount = u16::from_be_bytes([out[10], out[11]]) + 1;
    out[10..12].copy_from_slice(&arcount.to_be_bytes());
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at + 2)?;
    Some(u16::from_be_bytes([s[0], s[1]]))
}

/// Length of the uncompressed name at the start of `b`.
fn uncompressed_name_len(b: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        let l = usize::from(*b.get(at)?);
        if l > 63 {
            return None;
        }
        at += 1 + l;
        if at > MAX_NAME {
            return None;
        }
        if l == 0 {
            return Some(at);
        }
    }
}

/// Length of the name at `at` once decompressed; `None` when it is broken, loops or is too
/// long.
fn name_len(packet: &[u8], at: usize) -> Option<usize> {
    let mut len = 0;
    let mut at = at;
    for _ in 0..MAX_POINTERS {
        let l = *packet.get(at)?;
        match l {
            0 => return Some(len + 1),
            1..=63 => {
                packet.get(at + 1..at + 1 + usize::from(l))?;
                len += 1 + usize::from(l);
                if len + 1 > MAX_NAME {
                    return None;
                }
                at += 1 + usize::from(l);
            }
            0xc0..=0xff => {
                let target = usize::from(u16::from_be_bytes([l & 0x3f, *packet.get(at + 1)?]));
                // Pointers point backwards (RFC 1035 §4.1.4: "a prior occurrence").
                if target >= at {
                    return None;
                }
                at = target;
            }
            _ => return None,
        }
    }
    None
}

/// Append the name at `at` decompressed; it was checked by [`name_len`].
fn copy_name(packet: &[u8], mut at: usize, out: &mut Vec<u8>) {
    for _ in 0..MAX_POINTERS + MAX_NAME {
        let Some(&l) = packet.get(at) else { break };
        match l {
            0 => break,
            1..=63 => {
                let end = (at + 1 + usize::from(l)).min(packet.len());
                out.extend_from_slice(&packet[at..end]);
                at = end;
            }
            _ => {
                let next = packet.get(at + 1).copied().unwrap_or(0);
                at = usize::from(u16::from_be_bytes([l & 0x3f, next]));
            }
        }
    }
    out.push(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rdata(mac: &[u8], other: &[u8]) -> Vec<u8> {
        let mut r = b"\x0bhmac-sha256\x00".to_vec();
        r.extend_from_slice(&[0, 0, 0x65, 0x5f, 0x00, 0x01, 0x01, 0x2c]);
        r.extend_from_slice(&(mac.len() as u16).to_be_bytes());
        r.extend_from_slice(mac);
        r.extend_from_slice(&[0x12, 0x34, 0, 0]);
        r.extend_from_slice(&(other.len() as u16).to_be_bytes());
        r.extend_from_slice(other);
        r
    }

    #[test]
    fn interprets_the_record_or_says_formerr() {
        let packet = b"\x03key\x00";
        let good = rdata(&[7; 32], &[]);
        let t = parse(packet, 0, CLASS_ANY, 0, &good).expect("valid");
        assert_eq!(
            (t.algorithm, t.original_id),
            (&b"\x0bhmac-sha256\x00"[..], 0x1234)
        );
        assert!(parse(packet, 0, 1, 0, &good).is_none(), "class IN");
        assert!(parse(packet, 0, CLASS_ANY, 5, &good).is_none(), "TTL 5");
        assert!(parse(packet, 0, CLASS_ANY, 0, &good[..good.len() - 1]).is_none());
        let mut long = good.clone();
        long.push(0);
        assert!(
            parse(packet, 0, CLASS_ANY, 0, &long).is_none(),
            "trailing byte"
        );
        let mut compressed_alg = good.clone();
        compressed_alg[0] = 0xc0;
        assert!(parse(packet, 0, CLASS_ANY, 0, &compressed_alg).is_none());
        assert!(
            parse(b"\xc0\x00", 0, CLASS_ANY, 0, &good).is_none(),
            "pointer loop"
        );
    }

    #[test]
    fn compressed_key_names_are_echoed_in_full() {
        let packet = b"\x03key\x07example\x00\x04tsig\xc0\x04";
        assert_eq!(name_len(packet, 13), Some(14));
        let mut out = Vec::new();
        copy_name(packet, 13, &mut out);
        assert_eq!(out, b"\x04tsig\x07example\x00");
    }
}
