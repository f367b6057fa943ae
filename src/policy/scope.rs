//! ECS scope (RFC 7871 §7.2.1): how much of the client address decided the answer.
//! Each rule that read the address widens the scope; the result never exceeds the source
//! prefix the client sent.

use std::net::IpAddr;

use super::Client;

/// RFC 7871 §11.1: truncate IPv4 clients to 24 bits; sticky hashing uses the same network.
pub(super) const STICKY_V4_PREFIX: u8 = 24;
/// RFC 7871 §11.1 suggests 56 bits for IPv6.
pub(super) const STICKY_V6_PREFIX: u8 = 56;

/// The client's network used for sticky hashing and as the scope of an unlocated client.
pub fn client_prefix(addr: IpAddr) -> u8 {
    match addr.to_canonical() {
        IpAddr::V4(_) => STICKY_V4_PREFIX,
        IpAddr::V6(_) => STICKY_V6_PREFIX,
    }
}

/// Bits in front of an IPv4 address mapped into IPv6 (`::ffff:a.b.c.d`, RFC 4291 §2.5.5.2).
const MAPPED_V4_OFFSET: u8 = 96;

/// The scope of one policy walk: the longest of the prefixes inside which each input the
/// walk read (a rule trie's match, the GeoIP network, the sticky network) is constant. Their
/// intersection is the longest of them, since all contain the client.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Scope {
    /// Counted in the bits of the canonical address (IPv4 for `::ffff:a.b.c.d`).
    prefix: u8,
    /// Some input read the client address.
    read: bool,
}

impl Scope {
    pub(super) fn widen(&mut self, prefix: u8) {
        self.prefix = self.prefix.max(prefix);
        self.read = true;
    }

    /// In the bits of the address the client sent, capped at the source prefix (0 when
    /// nothing read the client; without ECS nothing is sent).
    pub(super) fn finish(self, client: Client) -> u8 {
        let mapped = client.addr.is_ipv6() && client.addr.to_canonical().is_ipv4();
        let prefix = match (self.read, mapped) {
            (false, _) => 0,
            (true, true) => self.prefix + MAPPED_V4_OFFSET,
            (true, false) => self.prefix,
        };
        match client.source_prefix {
            Some(source) => prefix.min(source),
            None => prefix,
        }
    }
}
