//! `weighted`: one up target with probability w / Σw over the up targets. With `sticky`,
//! weighted rendezvous hashing of the client network with the name: a client keeps its
//! target on every instance and across restarts, and only a failed target's clients move.

use std::net::IpAddr;

use super::Trace;
use super::scope::client_prefix;
use super::walk::Walker;
use crate::geo::Locate;
use crate::model::{PoolId, Target};

/// Targets evaluated on the stack; longer lists spill to the heap.
const STACK_TARGETS: usize = 32;

pub(super) fn choose<L: Locate + ?Sized, T: Trace>(
    w: &mut Walker<'_, '_, L, T>,
    policy_name: &str,
    targets: &[(Target, u32)],
    sticky: bool,
) -> Option<PoolId> {
    let mut stack = [None; STACK_TARGETS];
    let mut heap = Vec::new();
    let evals: &mut [Option<PoolId>] = if targets.len() <= STACK_TARGETS {
        &mut stack[..targets.len()]
    } else {
        heap.resize(targets.len(), None);
        &mut heap
    };
    let snap = w.ctx.snap;
    w.note("rule", || {
        let weights: Vec<String> = targets
            .iter()
            .map(|(t, weight)| format!("{} {weight}", snap.target_name(*t)))
            .collect();
        let how = if sticky {
            "sticky by client network"
        } else {
            "random"
        };
        format!("{how}, weights {}", weights.join(", "))
    });
    for (slot, (t, _)) in evals.iter_mut().zip(targets) {
        *slot = w.eval(*t);
    }
    // Route 53 semantics: weight 0 targets answer only when no weighted target is up.
    let positive = targets
        .iter()
        .zip(evals.iter())
        .any(|((_, weight), e)| e.is_some() && *weight > 0);
    let weight_of = |weight: u32| if positive { u64::from(weight) } else { 1 };
    let index = if sticky {
        let key = sticky_key(w.client.addr, policy_name);
        w.read_client(client_prefix(w.client.addr));
        w.order_seed = key;
        w.sticky_order = true;
        rendezvous(w, key, targets, evals, weight_of)
    } else {
        let total: u64 = targets
            .iter()
            .zip(evals.iter())
            .filter(|(_, e)| e.is_some())
            .map(|((_, weight), _)| weight_of(*weight))
            .sum();
        w.uses_seed = true;
        pick(w.seed, total, targets, evals, weight_of)
    };
    let pool = evals[index?]?;
    w.note_chosen(pool);
    Some(pool)
}

/// The target whose cumulative weight range holds `seed % total`.
fn pick(
    seed: u64,
    total: u64,
    targets: &[(Target, u32)],
    evals: &[Option<PoolId>],
    weight_of: impl Fn(u32) -> u64,
) -> Option<usize> {
    if total == 0 {
        return None;
    }
    let mut r = seed % total;
    for (i, ((_, weight), e)) in targets.iter().zip(evals).enumerate() {
        if e.is_none() {
            continue;
        }
        let wt = weight_of(*weight);
        if r < wt {
            return Some(i);
        }
        r -= wt;
    }
    None
}

/// Weighted rendezvous hashing: the highest `w / -ln(u)` wins, `u` from the hash of the
/// client key with the target's name (names, not positions, so edits elsewhere move nobody).
fn rendezvous<L: Locate + ?Sized, T: Trace>(
    w: &Walker<'_, '_, L, T>,
    key: u64,
    targets: &[(Target, u32)],
    evals: &[Option<PoolId>],
    weight_of: impl Fn(u32) -> u64,
) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, ((t, weight), e)) in targets.iter().zip(evals).enumerate() {
        let wt = weight_of(*weight);
        if e.is_none() || wt == 0 {
            continue;
        }
        let name = w.ctx.snap.target_name(*t).as_bytes();
        let h = fmix64(fnv1a(key.to_be_bytes().iter().chain(name)));
        // 53 random bits, never 0, so ln(u) < 0.
        let u = ((h >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        let score = wt as f64 / -u.ln();
        if best.is_none_or(|(_, s)| score > s) {
            best = Some((i, score));
        }
    }
    best.map(|(i, _)| i)
}

/// Stable hash of the client's network (/24, /56) with the policy name.
pub(super) fn sticky_key(addr: IpAddr, policy_name: &str) -> u64 {
    let mut bytes = [0u8; 16];
    let len = match addr.to_canonical() {
        IpAddr::V4(a) => {
            let o = a.octets();
            bytes[..3].copy_from_slice(&o[..3]);
            4
        }
        IpAddr::V6(a) => {
            let o = a.octets();
            bytes[..7].copy_from_slice(&o[..7]);
            16
        }
    };
    fmix64(fnv1a(bytes[..len].iter().chain(policy_name.as_bytes())))
}

/// FNV-1a, 64-bit: stable across builds and hosts (std's hasher makes no such promise).
fn fnv1a<'b>(bytes: impl Iterator<Item = &'b u8>) -> u64 {
    bytes.fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// MurmurHash3's 64-bit finaliser: spreads FNV's weak low bits.
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sticky_key_depends_on_the_client_network_only() {
        let a = sticky_key("192.0.2.1".parse().expect("addr"), "canary");
        let b = sticky_key("192.0.2.200".parse().expect("addr"), "canary");
        let c = sticky_key("192.0.3.1".parse().expect("addr"), "canary");
        let d = sticky_key("::ffff:192.0.2.9".parse().expect("addr"), "canary");
        assert_eq!(a, b);
        assert_eq!(a, d);
        assert_ne!(a, c);
        assert_ne!(a, sticky_key("192.0.2.1".parse().expect("addr"), "other"));
    }
}
