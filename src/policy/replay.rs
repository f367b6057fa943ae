//! Replaying a decision for another client. A walk notes each read of the client address
//! that can be repeated cheaply on its own: a geo policy's cidr match and its tree's class.
//! The walk is a function of the world, the seed and what its reads return, so a client
//! whose reads return the same as the decided client's gets the same decision, with the
//! scope its own reads give. A decision that read the client any other way (its GeoIP
//! record, coordinates, a latency row, the sticky network) or drew on the seed is not
//! replayed. The UDP workers keep ECS answers by their reads (`dns::ecs_cache`).

use super::scope::Scope;
use super::{Client, Ctx};
use crate::geo::Locate;
use crate::model::{PolicyId, PolicyKind};

/// Reads noted per walk: a geo policy makes two (cidr, then its tree); nested geo policies
/// make more, and a walk past this bound is not replayed.
const MAX_READS: usize = 4;

/// One read of the client address and what it returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Read {
    /// A geo policy's cidr rules: the index of the network matched, if any.
    Cidr {
        policy: PolicyId,
        entry: Option<u32>,
    },
    /// A geo policy's tree: the client's class.
    Tree { policy: PolicyId, class: u32 },
}

/// What one walk read of the client, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reads {
    reads: [Option<Read>; MAX_READS],
    /// The walk read the client in a way not noted, or made more than [`MAX_READS`] reads.
    opaque: bool,
}

impl Reads {
    pub(super) fn note(&mut self, read: Read) {
        match self.reads.iter_mut().find(|r| r.is_none()) {
            Some(slot) => *slot = Some(read),
            None => self.opaque = true,
        }
    }

    pub(super) fn opaque(&mut self) {
        self.opaque = true;
    }

    /// Every read of the client was noted.
    pub fn replayable(&self) -> bool {
        !self.opaque
    }
}

/// Replays decisions for one client, each read of it made once however many decisions
/// are tried (an ECS answer cache tries the answers it keeps for a question in turn).
pub struct Replayer<'c, 'a, L: Locate + ?Sized> {
    ctx: &'c Ctx<'a, L>,
    client: Client,
    /// The reads made so far, with the prefix each result holds over.
    made: [Option<(Read, u8)>; MAX_READS],
}

impl<'c, 'a, L: Locate + ?Sized> Replayer<'c, 'a, L> {
    /// Nothing is read until a decision is tried.
    pub fn new(ctx: &'c Ctx<'a, L>, client: Client) -> Self {
        Replayer {
            ctx,
            client,
            made: [None; MAX_READS],
        }
    }

    /// The scope for this client of a decision that made `reads`, when each read returns
    /// for this client what it returned then (the same world: the same snapshot, health
    /// and trees); `None` when one differs or the reads cannot be replayed.
    pub fn scope(&mut self, reads: &Reads) -> Option<u8> {
        if reads.opaque {
            return None;
        }
        let mut scope = Scope::default();
        for read in reads.reads.iter().map_while(Option::as_ref) {
            let (now, prefix) = self.read(read)?;
            if now != *read {
                return None;
            }
            scope.widen(prefix);
        }
        Some(scope.finish(self.client))
    }

    /// What `read` returns for this client, and the prefix over which it does.
    fn read(&mut self, read: &Read) -> Option<(Read, u8)> {
        let same = |made: &Read| match (made, read) {
            (Read::Cidr { policy: a, .. }, Read::Cidr { policy: b, .. })
            | (Read::Tree { policy: a, .. }, Read::Tree { policy: b, .. }) => a == b,
            _ => false,
        };
        if let Some(made) = self.made.iter().flatten().find(|(made, _)| same(made)) {
            return Some(*made);
        }
        let addr = self.client.addr.to_canonical();
        let result = match *read {
            Read::Cidr { policy, .. } => {
                let PolicyKind::Geo(rules) = &self.ctx.snap.policies.get(policy.0 as usize)?.kind
                else {
                    return None;
                };
                let (entry, scope) = rules.cidr.lookup_index(addr);
                (Read::Cidr { policy, entry }, scope)
            }
            Read::Tree { policy, .. } => {
                let c = self.ctx.geo.rule_targets(policy, addr)?;
                let class = c.class;
                (Read::Tree { policy, class }, c.prefix_len)
            }
        };
        if let Some(free) = self.made.iter_mut().find(|m| m.is_none()) {
            *free = Some(result);
        }
        Some(result)
    }
}
