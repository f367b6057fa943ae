//! A check's `quorum` applied to the verdicts of the live instances (SPEC §5, §10). Pure.

use crate::health::Health;
use crate::model::Quorum;

/// The count behind one endpoint's shared health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Instances that said down.
    pub down: u32,
    /// Instances with a verdict (up or down); `unknown` does not report.
    pub reporting: u32,
    /// Down verdicts needed to take the endpoint down.
    pub needed: u32,
    pub result: Health,
}

/// Count `verdicts` (one per live instance, this one's included) against `quorum`.
///
/// `majority`: down when more than half of the reporting instances say down. An integer N:
/// down when at least N say down; when fewer than N instances report at all, all of them
/// must say down, so a lone survivor of a cluster still takes a dead endpoint out (the
/// same as its local view) instead of serving it for ever.
pub fn decide(quorum: Quorum, verdicts: impl IntoIterator<Item = Health>) -> Tally {
    let (mut down, mut reporting) = (0u32, 0u32);
    for v in verdicts {
        match v {
            Health::Unknown => {}
            Health::Up => reporting += 1,
            Health::Down => {
                reporting += 1;
                down += 1;
            }
        }
    }
    let needed = match quorum {
        Quorum::Majority => reporting / 2 + 1,
        Quorum::AtLeast(n) => n.min(reporting).max(1),
    };
    let result = if reporting == 0 {
        Health::Unknown
    } else if down >= needed {
        Health::Down
    } else {
        Health::Up
    };
    Tally {
        down,
        reporting,
        needed,
        result,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Health::*;

    #[test]
    fn quorum_table() {
        let m = Quorum::Majority;
        let two = Quorum::AtLeast(2);
        for (quorum, verdicts, want) in [
            (m, &[Up, Up, Down][..], Up), // a minority keeps the endpoint
            (m, &[Up, Down, Down], Down), // a majority removes it
            (m, &[Down, Up], Up),         // one of two is not more than half
            (m, &[Down], Down),
            (m, &[Unknown, Unknown], Unknown),
            (m, &[Unknown, Down, Up], Up),
            (m, &[Unknown, Down, Down], Down),
            (two, &[Down, Up, Up], Up),
            (two, &[Down, Down, Up, Up, Up], Down), // N, not a majority
            (two, &[Down], Down),                   // fewer reporting than N
            (Quorum::AtLeast(1), &[Down, Up, Up], Down),
        ] {
            assert_eq!(
                decide(quorum, verdicts.iter().copied()).result,
                want,
                "{quorum:?} {verdicts:?}"
            );
        }
    }

    #[test]
    fn tally_counts() {
        let t = decide(Quorum::Majority, [Up, Down, Down, Unknown]);
        assert_eq!((t.down, t.reporting, t.needed), (2, 3, 2));
    }
}
