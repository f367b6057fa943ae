//! A per-worker cache of policy decisions. A decision that did not draw on the per-query
//! seed is a function of the world and the client alone, so a worker reuses it for the same
//! (world, policy, client) until the world changes (a reload, a health or override change).
//! Only the endpoint order is redrawn per query, as SPEC §3 asks.

use std::hash::BuildHasher;

use rustc_hash::FxBuildHasher;

use crate::model::PolicyId;
use crate::policy::{Client, Decision};
use crate::world::World;

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    policy: PolicyId,
    addr: std::net::IpAddr,
    source_prefix: Option<u8>,
}

pub struct DecisionCache {
    /// Generation of the world the slots came from.
    world: u64,
    slots: Box<[Option<(Key, Decision)>]>,
}

impl DecisionCache {
    /// A cache of `slots` entries (rounded up to a power of two).
    pub fn new(slots: usize) -> DecisionCache {
        DecisionCache {
            world: 0,
            slots: vec![None; slots.next_power_of_two()].into_boxed_slice(),
        }
    }

    /// The cached decision, or `decide()` (kept when it did not use the seed).
    pub fn get_or(
        &mut self,
        world: &World,
        policy: PolicyId,
        client: Client,
        seed: u64,
        decide: impl FnOnce() -> Decision,
    ) -> Decision {
        if world.generation != self.world {
            self.slots.fill(None);
            self.world = world.generation;
        }
        let key = Key {
            policy,
            addr: client.addr,
            source_prefix: client.source_prefix,
        };
        let i = (FxBuildHasher.hash_one(key) as usize) & (self.slots.len() - 1);
        if let Some((k, mut d)) = self.slots[i]
            && k == key
        {
            if !d.sticky_order {
                d.order_seed = seed;
            }
            return d;
        }
        let d = decide();
        if !d.uses_seed {
            self.slots[i] = Some((key, d));
        }
        d
    }
}
