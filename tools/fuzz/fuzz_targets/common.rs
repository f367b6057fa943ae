//! What both targets require of every reply, and the clients they ask from.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::op::Message;
use meridian::dns::handler::{Local, Transport, handle};
use meridian::world::World;

/// RFC 1035 §4.2.2: the most a TCP message can hold.
const MAX_MESSAGE: usize = 65_535;
/// The largest UDP reply Meridian sends (`dns::response::MAX_UDP_PAYLOAD`).
const MAX_UDP: usize = 1232;

/// Clients the targets ask from: unlocated loopback, addresses the test GeoIP database
/// locates (GB, a documentation range), and IPv6.
pub const CLIENTS: [IpAddr; 4] = [
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)),
    IpAddr::V4(Ipv4Addr::new(81, 2, 69, 1)),
    IpAddr::V4(Ipv4Addr::new(203, 0, 113, 200)),
    IpAddr::V6(Ipv6Addr::LOCALHOST),
];

/// Answer `packet` as a worker would; when there is a reply it must parse with
/// hickory-proto, carry the query's id and fit its transport.
pub fn answer_and_reparse(
    world: &World,
    packet: &[u8],
    src: IpAddr,
    transport: Transport,
    out: &mut Vec<u8>,
    local: &mut Local,
) {
    let seed = packet.len() as u64 | 1;
    if handle(world, packet, &src, transport, seed, out, local).is_none() {
        return;
    }
    let reply = Message::from_vec(out).unwrap_or_else(|e| {
        panic!("the reply does not parse: {e}\nquery: {packet:02x?}\nreply: {out:02x?}")
    });
    if let Some(id) = packet.get(..2) {
        assert_eq!(
            reply.metadata.id,
            u16::from_be_bytes([id[0], id[1]]),
            "id echoed"
        );
    }
    let limit = match transport {
        Transport::Udp => MAX_UDP,
        Transport::Tcp => MAX_MESSAGE,
    };
    assert!(out.len() <= limit, "{} bytes over {transport:?}", out.len());
}

/// A query for `qname` (wire format) and `qtype`, with EDNS when `edns`.
#[allow(dead_code, reason = "zone_text asks queries; packet includes this module too")]
pub fn query(qname: &[u8], qtype: u16, edns: bool) -> Vec<u8> {
    let mut p = vec![0x12, 0x34, 0, 0, 0, 1, 0, 0, 0, 0, 0, u8::from(edns)];
    p.extend_from_slice(qname);
    p.extend_from_slice(&qtype.to_be_bytes());
    p.extend_from_slice(&1u16.to_be_bytes());
    if edns {
        // OPT: root owner, payload 1232, DO=1, no options.
        p.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0x80, 0, 0, 0]);
    }
    p
}
