//! `latency`: the up target with the lowest estimated round-trip time: a latency table row
//! for the client's longest matching prefix, else the great-circle distance between the
//! client and the pool. Targets with a table row rank first; ties break by list order.

use super::Trace;
use super::walk::{Walker, distance_km};
use crate::geo::Locate;
use crate::model::{LatencyTable, PoolId, Target};

/// Rank of one candidate: table rows before distances, then the smaller value.
#[derive(Clone, Copy, PartialEq, PartialOrd)]
enum Estimate {
    Rtt(u32),
    Km(f64),
    Unknown,
}

impl Estimate {
    fn text(self) -> String {
        match self {
            Estimate::Rtt(ms) => format!("{ms} ms (table)"),
            Estimate::Km(km) => format!("{km:.0} km"),
            Estimate::Unknown => "no estimate".into(),
        }
    }
}

pub(super) fn choose<L: Locate + ?Sized, T: Trace>(
    w: &mut Walker<'_, '_, L, T>,
    targets: &[Target],
    table: Option<&LatencyTable>,
) -> Option<PoolId> {
    let addr = w.client.addr.to_canonical();
    let found = table.map(|t| t.lookup(addr));
    if let Some(m) = found {
        // Inside this scope every client has the same row (or the same lack of one).
        w.read_client(m.scope);
    }
    let rows = found.and_then(|m| m.entry);
    if let Some((net, _)) = rows {
        w.note("rule", || format!("latency table row {net}"));
    }
    let mut best: Option<(PoolId, Estimate)> = None;
    for &t in targets {
        let Some(pool) = w.eval(t) else { continue };
        let est = estimate(w, pool, rows.map(|(_, r)| r.as_slice()));
        let snap = w.ctx.snap;
        w.note("estimate", || {
            format!("{}: {}", snap.pool(pool).name, est.text())
        });
        if best.is_none_or(|(_, b)| est < b) {
            best = Some((pool, est));
        }
    }
    let (pool, _) = best?;
    w.note_chosen(pool);
    Some(pool)
}

fn estimate<L: Locate + ?Sized, T: Trace>(
    w: &mut Walker<'_, '_, L, T>,
    pool: PoolId,
    rows: Option<&[(PoolId, u32)]>,
) -> Estimate {
    if let Some(rtt) = rows.and_then(|r| r.iter().find(|(p, _)| *p == pool)) {
        return Estimate::Rtt(rtt.1);
    }
    let to = w.ctx.snap.pool(pool).location;
    match (w.client_coords(), to) {
        (Some(from), Some(to)) => Estimate::Km(distance_km(from, to)),
        _ => Estimate::Unknown,
    }
}
