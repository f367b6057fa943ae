//! The log line SPEC §3 asks for when a policy fails open ("says so in logs and metrics"),
//! at most one per policy per [`FAIL_OPEN_LOG_INTERVAL`]. The metric counts every such
//! answer; the log tells an operator reading it which policy answers from a dead pool.
//!
//! The DNS path stays lock-free and allocation-free: a fail-open answer reads its policy's
//! "last logged" timestamp (one atomic in the world, shared by every worker), and only the
//! query that finds the interval passed, and wins the compare-exchange, formats and writes a
//! line. Nothing is formatted or handed to `tracing` for the other queries.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::model::{PolicyId, PoolId};
use crate::world::World;

/// One line per policy per minute: Prometheus' default `scrape_interval` is 1m, so the log is
/// as fine-grained as the `meridian_policy_fail_open_total` series an alert is built on,
/// while a policy failing open at 100,000 queries per second writes 1,440 lines a day, not
/// 8.6 billion.
pub const FAIL_OPEN_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Per policy of one snapshot: when its last fail-open line was written.
#[derive(Debug)]
pub struct FailOpenLog {
    /// Milliseconds since `epoch`, plus one; 0: never logged.
    last: Box<[AtomicU64]>,
    epoch: Instant,
}

impl FailOpenLog {
    /// Room for `policies` policies (a snapshot's `policies.len()`).
    pub fn new(policies: usize) -> FailOpenLog {
        FailOpenLog {
            last: (0..policies).map(|_| AtomicU64::new(0)).collect(),
            epoch: Instant::now(),
        }
    }

    /// Whether the fail-open answer of `policy` at `now` is the one to log: the policy's
    /// first, or the first [`FAIL_OPEN_LOG_INTERVAL`] after the last one logged.
    pub fn claim(&self, policy: PolicyId, now: Instant) -> bool {
        let Some(slot) = self.last.get(policy.0 as usize) else {
            return false;
        };
        let at = u64::try_from(now.saturating_duration_since(self.epoch).as_millis())
            .unwrap_or(u64::MAX - 1)
            + 1;
        let last = slot.load(Ordering::Relaxed);
        let interval = FAIL_OPEN_LOG_INTERVAL.as_millis() as u64;
        if last != 0 && at < last.saturating_add(interval) {
            return false;
        }
        // Of several workers racing past the interval, one writes the line.
        slot.compare_exchange(last, at, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}

/// A fail-open answer of `policy` from `pool`: log it if its interval allows.
pub(super) fn answered(world: &World, policy: PolicyId, pool: PoolId) {
    if world.fail_open_log.claim(policy, Instant::now()) {
        log(world, policy, pool);
    }
}

#[cold]
fn log(world: &World, policy: PolicyId, pool: PoolId) {
    let snap = &world.snapshot;
    let p = snap.policy(policy);
    tracing::warn!(
        zone = %snap.zone(p.zone).origin,
        policy = %p.name,
        pool = %snap.pool(pool).name,
        "policy fails open: no target is up, answering every endpoint of its first target \
         (logged once per policy per {}s; meridian_policy_fail_open_total counts every answer)",
        FAIL_OPEN_LOG_INTERVAL.as_secs()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_claim_per_policy_per_interval() {
        let log = FailOpenLog::new(2);
        let t0 = log.epoch;
        let (a, b) = (PolicyId(0), PolicyId(1));
        assert!(log.claim(a, t0));
        assert!(!log.claim(a, t0));
        assert!(!log.claim(a, t0 + FAIL_OPEN_LOG_INTERVAL - Duration::from_millis(1)));
        // Another policy has its own interval.
        assert!(log.claim(b, t0 + Duration::from_secs(1)));
        assert!(log.claim(a, t0 + FAIL_OPEN_LOG_INTERVAL));
        assert!(!log.claim(a, t0 + FAIL_OPEN_LOG_INTERVAL + Duration::from_secs(59)));
        assert!(log.claim(a, t0 + 2 * FAIL_OPEN_LOG_INTERVAL));
        // An id the snapshot does not have is never logged (and never panics).
        assert!(!log.claim(PolicyId(7), t0));
    }
}
