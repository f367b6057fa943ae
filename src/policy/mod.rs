//! The policy engine: which pool answers a policy name for one client, right now.
//!
//! `answer(ctx, policy, client, seed, trace)` is a pure function of the snapshot, the health
//! view, the GeoIP database (behind [`Locate`]), the client and a seed. The DNS path, explain,
//! tests and benches all call it; randomness and time come in as arguments.
//! Sits below `dns` and `explain`, above `model`, `geo` and `health::View`.

mod geo;
mod latency;
mod replay;
mod scope;
mod select;
mod trace;
mod walk;
mod weighted;

use std::net::IpAddr;

pub use replay::{Reads, Replayer};
pub use scope::client_prefix;
pub use select::select_addresses;
pub use trace::{NoTrace, Recorder, Step, Trace};

use crate::geo::{Locate, Located};
use crate::health::View;
use crate::model::{PolicyId, PoolId, Snapshot};

/// Everything a decision reads besides the client.
pub struct Ctx<'a, L: Locate + ?Sized> {
    pub snap: &'a Snapshot,
    pub health: &'a View,
    pub geo: &'a L,
}

/// Who asks: the ECS address (masked to its source prefix) or the packet's source.
#[derive(Debug, Clone, Copy)]
pub struct Client {
    pub addr: IpAddr,
    /// ECS SOURCE PREFIX-LENGTH, when the query carried ECS.
    pub source_prefix: Option<u8>,
}

/// The result of answering one policy name.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    pub policy: PolicyId,
    pub outcome: Outcome,
    /// ECS SCOPE PREFIX-LENGTH: how much of the client address decided the answer.
    pub scope: u8,
    pub ttl: u32,
    pub max_answers: usize,
    /// Endpoint order seed: per query, or the client hash when sticky.
    pub order_seed: u64,
    /// The order seed is the sticky client hash, not the per-query seed.
    pub sticky_order: bool,
    /// The choice drew on the per-query seed (non-sticky weighted): another query from the
    /// same client may get another pool. Otherwise the decision is a function of the world
    /// and the client alone, and may be reused for them.
    pub uses_seed: bool,
    /// What the walk read of the client, to replay the decision for another client.
    pub reads: Reads,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answer from this pool; `fail_open` when nothing was up and every endpoint is answered.
    Pool { pool: PoolId, fail_open: bool },
    /// Nothing up and the policy says `fallback = "servfail"`.
    Servfail,
}

/// Answer one policy for one client. `seed` is a per-query random number (fixed in tests).
pub fn answer<L: Locate + ?Sized, T: Trace>(
    ctx: &Ctx<'_, L>,
    policy: PolicyId,
    client: Client,
    seed: u64,
    trace: &mut T,
) -> Decision {
    let mut walker = walk::Walker::new(ctx, client, seed, trace);
    let outcome = walker.top(policy);
    let p = ctx.snap.policy(policy);
    let scope = walker.scope.finish(client);
    Decision {
        policy,
        outcome,
        scope,
        ttl: p.ttl,
        max_answers: p.max_answers,
        order_seed: walker.order_seed,
        sticky_order: walker.sticky_order,
        uses_seed: walker.uses_seed,
        reads: walker.reads,
    }
}

/// Locate a client once: its record, if any, and the database network around it.
fn locate<L: Locate + ?Sized>(geo: &L, addr: IpAddr) -> Located {
    geo.locate(addr.to_canonical())
}
