//! The rise/fall machine of one (address, check) pair: pure, no I/O, no clock of its own.
//!
//! The prober feeds every probe result into [`record`]; the [`ProbeStatus`] it updates is
//! what the DNS path, explain and `/v1/status` read through the health view.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::health::view::{Health, ProbeStatus};
use crate::model::CheckSpec;

/// The outcome of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    pub ok: bool,
    /// From the start of the probe to its result (pass, failure or timeout).
    pub rtt: Duration,
    /// Why it failed, short and for operators ("connection refused", "status 503").
    pub error: Option<String>,
}

impl ProbeResult {
    pub fn pass(rtt: Duration) -> ProbeResult {
        ProbeResult {
            ok: true,
            rtt,
            error: None,
        }
    }

    pub fn fail(rtt: Duration, error: impl Into<String>) -> ProbeResult {
        ProbeResult {
            ok: false,
            rtt,
            error: Some(error.into()),
        }
    }
}

/// What a [`record`] changed, so the prober publishes only what is worth publishing.
/// Ordered: `Minor < Major`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    /// Only counters, the RTT and the time moved: publish lazily.
    Minor,
    /// The state flipped, a streak moved towards a flip, or the error text changed:
    /// publish soon.
    Major,
}

/// Apply one result to a probe's status (SPEC §5).
///
/// SPEC: "`unknown` counts as up, and the first probe runs at once when a check appears. A
/// result flips the state only after `rise`/`fall` consecutive results." Read literally,
/// `unknown` is left like any other state: it becomes `down` after `fall` consecutive
/// failures and `up` after `rise` consecutive passes. Until then it is still answered as up,
/// so a dead backend at start keeps receiving traffic for `fall` probes, exactly as an `up`
/// backend that dies would; nothing is marked down on a single failure.
pub fn record(
    status: &mut ProbeStatus,
    spec: &CheckSpec,
    result: &ProbeResult,
    now: SystemTime,
) -> Change {
    let before = (status.health, status.failures, status.passes);
    let error_before = status.last_error.clone();
    if result.ok {
        status.passes = status.passes.saturating_add(1);
        status.failures = 0;
        status.total_passes += 1;
        if status.health != Health::Up && status.passes >= spec.rise.max(1) {
            status.health = Health::Up;
        }
    } else {
        status.failures = status.failures.saturating_add(1);
        status.passes = 0;
        status.total_failures += 1;
        if status.health != Health::Down && status.failures >= spec.fall.max(1) {
            status.health = Health::Down;
        }
        let error = result.error.as_deref().unwrap_or("failed");
        if status.last_error.as_deref() != Some(error) {
            status.last_error = Some(Arc::from(error));
        }
    }
    status.last_rtt = Some(result.rtt);
    status.last_at = Some(now);
    classify(before, status, spec, error_before.as_deref())
}

/// Major when the state changed, a streak still matters for a flip (or just reset), or the
/// error text changed; a long run of identical results is minor.
fn classify(
    (health, failures, passes): (Health, u32, u32),
    now: &ProbeStatus,
    spec: &CheckSpec,
    error_before: Option<&str>,
) -> Change {
    let threshold = spec.rise.max(spec.fall).max(1);
    let streak_matters = |old: u32, new: u32| old != new && (new <= threshold || old == 0);
    if health != now.health
        || streak_matters(failures, now.failures)
        || streak_matters(passes, now.passes)
        || error_before != now.last_error.as_deref()
    {
        Change::Major
    } else {
        Change::Minor
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CheckKind, StatusSet};

    fn spec(rise: u32, fall: u32) -> CheckSpec {
        CheckSpec {
            kind: CheckKind::Tcp,
            port: 80,
            path: "/".into(),
            host: None,
            expect_status: StatusSet::default(),
            expect_body: None,
            headers: Vec::new(),
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise,
            fall,
            ca_file: None,
            tls_verify: true,
            quorum: Default::default(),
        }
    }

    fn pass() -> ProbeResult {
        ProbeResult::pass(Duration::from_millis(3))
    }

    fn fail(e: &str) -> ProbeResult {
        ProbeResult::fail(Duration::from_millis(5), e)
    }

    /// Feed results in order; return the health after each.
    fn run(spec: &CheckSpec, results: &[ProbeResult]) -> Vec<Health> {
        let mut st = ProbeStatus::default();
        results
            .iter()
            .map(|r| {
                record(&mut st, spec, r, SystemTime::UNIX_EPOCH);
                st.health
            })
            .collect()
    }

    #[test]
    fn unknown_needs_rise_passes_or_fall_failures() {
        use Health::*;
        let s = spec(2, 3);
        assert_eq!(run(&s, &[pass(), pass(), pass()]), [Unknown, Up, Up]);
        assert_eq!(
            run(&s, &[fail("x"), fail("x"), fail("x")]),
            [Unknown, Unknown, Down]
        );
        assert_eq!(
            run(&s, &[fail("x"), pass(), fail("x")]),
            [Unknown, Unknown, Unknown]
        );
    }

    #[test]
    fn flips_only_after_consecutive_results() {
        use Health::*;
        let s = spec(2, 2);
        let seq = [
            pass(),
            pass(),
            fail("a"),
            pass(),
            fail("a"),
            fail("a"),
            pass(),
            fail("a"),
            pass(),
            pass(),
        ];
        let want = [Unknown, Up, Up, Up, Up, Down, Down, Down, Down, Up];
        assert_eq!(run(&s, &seq), want);
    }

    #[test]
    fn rise_and_fall_of_one_flip_at_once() {
        use Health::*;
        let s = spec(1, 1);
        assert_eq!(run(&s, &[fail("a"), pass(), fail("a")]), [Down, Up, Down]);
        // 0 in a hand-built spec behaves like 1.
        assert_eq!(run(&spec(0, 0), &[pass(), fail("a")]), [Up, Down]);
    }

    #[test]
    fn tracks_streaks_totals_and_last_probe() {
        let s = spec(2, 2);
        let mut st = ProbeStatus::default();
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(7);
        record(&mut st, &s, &fail("connection refused"), t);
        record(&mut st, &s, &fail("connection refused"), t);
        assert_eq!((st.failures, st.passes), (2, 0));
        assert_eq!(st.last_error.as_deref(), Some("connection refused"));
        assert_eq!(st.last_rtt, Some(Duration::from_millis(5)));
        assert_eq!(st.last_at, Some(t));
        record(&mut st, &s, &pass(), t);
        assert_eq!((st.failures, st.passes), (0, 1));
        // The last error stays for explain ("last: connection refused").
        assert_eq!(st.last_error.as_deref(), Some("connection refused"));
        assert_eq!((st.total_passes, st.total_failures), (1, 2));
    }

    #[test]
    fn repeated_identical_results_are_minor() {
        let s = spec(2, 2);
        let mut st = ProbeStatus::default();
        let t = SystemTime::UNIX_EPOCH;
        let changes: Vec<Change> = (0..5).map(|_| record(&mut st, &s, &pass(), t)).collect();
        assert_eq!(
            changes,
            [
                Change::Major,
                Change::Major,
                Change::Minor,
                Change::Minor,
                Change::Minor
            ]
        );
        assert_eq!(record(&mut st, &s, &fail("a"), t), Change::Major);
        assert_eq!(record(&mut st, &s, &fail("a"), t), Change::Major); // flips down
        assert_eq!(record(&mut st, &s, &fail("a"), t), Change::Minor);
        assert_eq!(record(&mut st, &s, &fail("b"), t), Change::Major); // new error text
    }
}
