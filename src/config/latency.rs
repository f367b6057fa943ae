//! Latency tables: `client_prefix,pool,rtt_ms` rows after a header line (SPEC §3), one
//! CSV file per table, relative to the zone file.

use std::collections::HashMap;
use std::sync::Arc;

use ipnet::IpNet;

use super::compile::ZoneCx;
use super::diag::{FileCx, Span};
use super::values;
use crate::model::{LatencyTable, PoolId};
use crate::prefix::PrefixMap;

/// Load and check a table; problems are reported at the CSV's own `file:line:col`.
pub(crate) fn load(
    rel: &str,
    at: &Span,
    zc: &ZoneCx,
    pools: &HashMap<String, PoolId>,
    cx: &mut FileCx<'_>,
) -> Option<Arc<LatencyTable>> {
    let path = zc.dir.join(rel);
    let text = match std::fs::metadata(&path).map(|m| m.is_file()) {
        Ok(true) => super::compile::read_text(&path),
        Ok(false) => {
            cx.err(
                at,
                format!("latency_table {} is not a file", path.display()),
            );
            return None;
        }
        Err(e) => {
            cx.err(
                at,
                format!("cannot read latency_table {}: {e}", path.display()),
            );
            return None;
        }
    };
    let text = match text {
        Ok(t) => t,
        Err(d) if d.line == 0 => {
            cx.err(
                at,
                format!(
                    "cannot read latency_table {}: {}",
                    path.display(),
                    d.message
                ),
            );
            return None;
        }
        Err(d) => {
            cx.diags.push(d);
            return None;
        }
    };
    let mut csv = FileCx::new(&path, &text, &mut *cx.diags);
    let errors = csv.count();
    let mut rows: Vec<(IpNet, Vec<(PoolId, u32)>)> = Vec::new();
    let mut offset = 0;
    let mut header = true;
    for line in text.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        let line = line.trim_end_matches(['\n', '\r']);
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        if std::mem::take(&mut header) {
            continue;
        }
        if let Some((net, pool, rtt)) = row(line, start, pools, &mut csv) {
            match rows.iter_mut().find(|(n, _)| *n == net) {
                Some((_, r)) => r.push((pool, rtt)),
                None => rows.push((net, vec![(pool, rtt)])),
            }
        }
    }
    if csv.count() != errors {
        return None;
    }
    Some(Arc::new(LatencyTable {
        file: path,
        rows: PrefixMap::new(rows),
    }))
}

/// One `client_prefix,pool,rtt_ms` row starting at byte `start` of the file.
fn row(
    line: &str,
    start: usize,
    pools: &HashMap<String, PoolId>,
    csv: &mut FileCx<'_>,
) -> Option<(IpNet, PoolId, u32)> {
    let mut fields = Vec::new();
    let mut at = start;
    for f in line.split(',') {
        let lead = f.len() - f.trim_start().len();
        fields.push((at + lead..at + f.len(), f.trim()));
        at += f.len() + 1;
    }
    let [(net_span, net), (pool_span, pool), (rtt_span, rtt)] = &fields[..] else {
        csv.err(
            &(start..start),
            format!(
                "a row needs 3 fields (client_prefix,pool,rtt_ms), not {}",
                fields.len()
            ),
        );
        return None;
    };
    let net = values::parse_cidr(net)
        .map_err(|e| csv.err(net_span, e))
        .ok();
    let pool = match pools.get(&pool.to_ascii_lowercase()) {
        Some(id) => Some(*id),
        None => {
            csv.err(
                pool_span,
                format!("pool \"{pool}\" is not a pool of the zone"),
            );
            None
        }
    };
    let rtt = rtt
        .parse::<u32>()
        .map_err(|_| {
            csv.err(
                rtt_span,
                format!("bad rtt_ms \"{rtt}\": use a whole number of milliseconds"),
            )
        })
        .ok();
    Some((net?, pool?, rtt?))
}
