//! Which addresses of the chosen pool go into the answer: the up endpoints of the asked
//! family (all of them when failing open), shuffled per query (hash order when sticky), at
//! most `max_answers`.

use std::net::IpAddr;

use super::{Decision, Outcome};
use crate::health::View;
use crate::model::Snapshot;

/// Fill `out` (cleared first) with the answer's addresses of one family.
pub fn select_addresses(
    snap: &Snapshot,
    health: &View,
    decision: &Decision,
    want_v6: bool,
    out: &mut Vec<IpAddr>,
) {
    out.clear();
    let Outcome::Pool { pool, fail_open } = decision.outcome else {
        return;
    };
    let p = snap.pool(pool);
    for (i, e) in p.endpoints.iter().enumerate() {
        if e.addr.is_ipv6() == want_v6 && (fail_open || health.endpoint_up(pool, i, e)) {
            out.push(e.addr);
        }
    }
    shuffle(out, decision.order_seed);
    out.truncate(decision.max_answers);
}

/// Fisher–Yates driven by splitmix64 from the seed: cheap, and the same seed gives the same
/// order (sticky clients see a stable order). Each index is drawn by multiply-shift
/// (Lemire), not `%`: a 64-bit division per endpoint was most of the shuffle's cost.
fn shuffle(items: &mut [IpAddr], seed: u64) {
    let mut state = seed;
    for i in (1..items.len()).rev() {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let j = ((u128::from(z) * (i as u128 + 1)) >> 64) as usize;
        items.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn shuffles_reach_every_order_and_repeat_per_seed() {
        let items: Vec<IpAddr> = (1..=3).map(|i| IpAddr::from([192, 0, 2, i])).collect();
        let mut seen = HashSet::new();
        for seed in 0..600u64 {
            let mut a = items.clone();
            shuffle(&mut a, seed);
            let mut b = items.clone();
            shuffle(&mut b, seed);
            assert_eq!(a, b, "seed {seed}");
            seen.insert(a);
        }
        assert_eq!(seen.len(), 6);
    }
}
