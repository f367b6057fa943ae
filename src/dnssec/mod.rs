//! DNSSEC (SPEC §11): one P-256 CSK per zone (key.rs), online signing of DO=1 answers with
//! a bounded per-worker RRSIG cache (sign.rs, cache.rs) and compact denial of existence
//! (RFC 9824) for negative answers. Sits between the lookup and the response writer: the
//! lookup writes an unsigned answer, and for a signed zone this module rewrites its records
//! in place with their RRSIGs and NSEC proofs before the writer truncates and finishes it.

pub mod cache;
pub mod key;
pub mod sign;

use std::path::Path;
use std::sync::Arc;

pub use key::{KeyError, ZoneKey};
pub use sign::Signer;

use crate::model::{Snapshot, ZoneId};

/// Attach each `dnssec = true` zone's key from `state/keys/`. A zone whose key cannot be
/// loaded keeps `key: None`: serve answers it REFUSED rather than unsigned (a signed parent
/// would make unsigned answers bogus), and `check` reports it.
pub fn attach_keys(snap: &mut Snapshot, state: &Path) -> Vec<(ZoneId, KeyError)> {
    let mut problems = Vec::new();
    for (i, zone) in snap.zones.iter_mut().enumerate() {
        if zone.dnssec.is_none() {
            continue;
        }
        match key::load(&zone.origin_wire, state) {
            Ok(k) => zone.key = Some(Arc::new(k)),
            Err(e) => problems.push((ZoneId(i as u32), e)),
        }
    }
    problems
}

/// The key problems of a load as `file:line:col: message` lines (at the `dnssec` key).
pub fn key_diagnostics(
    snap: &Snapshot,
    problems: &[(ZoneId, KeyError)],
) -> crate::config::Diagnostics {
    let diags = problems
        .iter()
        .map(|(id, e)| {
            let zone = snap.zone(*id);
            let (line, col) = zone.dnssec.unwrap_or((0, 0));
            crate::config::Diagnostic {
                file: zone.file.clone(),
                line,
                col,
                message: e.to_string(),
            }
        })
        .collect();
    crate::config::Diagnostics(diags)
}
