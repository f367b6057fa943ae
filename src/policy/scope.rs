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

/// Accumulates the widest prefix any rule depended on.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Scope {
    prefix: u8,
}

impl Scope {
    pub(super) fn widen(&mut self, prefix: u8) {
        self.prefix = self.prefix.max(prefix);
    }

    /// Capped at the source prefix (0 when the query had no ECS: then it is not sent).
    pub(super) fn finish(self, client: Client) -> u8 {
        match client.source_prefix {
            Some(source) => self.prefix.min(source),
            None => self.prefix,
        }
    }
}
