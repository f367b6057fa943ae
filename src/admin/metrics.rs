//! `GET /metrics`: every Meridian metric, defined here and nowhere else, in the Prometheus
//! text exposition format (version 0.0.4).
//!
//! Nothing is counted here: a scrape reads the counters the DNS workers fold into their
//! totals (`dns::stats`, every second or every 4096 queries), the prober's per-check stats,
//! the current world (snapshot + health view) and the control plane's counters, and renders
//! them. The DNS hot path is never touched by a scrape beyond one short lock per worker.
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `meridian_dns_queries_total` | counter | `zone`, `qtype`, `rcode` | DNS queries answered, by zone origin (`""` when the query matched no zone: REFUSED, FORMERR), query type (`A`, `AAAA`, `TYPE65`...) and response code (`NOERROR`, `NXDOMAIN`, `REFUSED`, `SERVFAIL`, `FORMERR`, `NOTIMP`, `NOTAUTH` (a TSIG-signed query), `BADVERS`, `OTHER`) |
//! | `meridian_policy_answers_total` | counter | `zone`, `policy`, `pool` | answers given by a policy, by the pool it chose (fail-open answers included) |
//! | `meridian_policy_fail_open_total` | counter | `zone`, `policy`, `pool` | answers given while no target of the policy was up, so it answered its first target as if every endpoint were up (SPEC §3 "all down") |
//! | `meridian_dns_response_seconds` | histogram | | time to answer one query, from its arrival (UDP: its batch's) to its reply being ready to send (UDP: its batch's replies, sent together), buckets 1 µs to 10 ms |
//! | `meridian_tcp_connections` | gauge | | DNS-over-TCP connections open |
//! | `meridian_tcp_evicted_total` | counter | | idle TCP connections closed to make room for a new one under a full cap (global, or the client's /24 or /56) |
//! | `meridian_tcp_refused_total` | counter | | new TCP connections refused because the cap was full of busy connections |
//! | `meridian_tcp_closed_total` | counter | `reason` | TCP connections closed: `eof`, `error`, `shutdown`, `idle` (idle timeout), `read_timeout` (a started message not complete in time), `write_timeout` (replies not taken in time), `evicted`, `bad_frame` (a frame shorter than a DNS header) |
//! | `meridian_dns_packet_cache_hits_total` | counter | | UDP responses replayed from a worker's packet cache (static data of an unsigned zone, asked without EDNS options) or ECS answer cache (answers asked with ECS alone, for clients whose reads match); they are counted in `meridian_dns_queries_total` too |
//! | `meridian_rrl_limited_total` | counter | | UDP responses over the response rate limit (SPEC §9), whatever was done with them (in `--rrl log-only` they were sent) |
//! | `meridian_rrl_slipped_total` | counter | | limited responses sent as TC=1 replies with no records (the client may retry over TCP) |
//! | `meridian_rrl_dropped_total` | counter | | limited responses not sent |
//! | `meridian_dnssec_signatures_total` | counter | | RRSIGs computed (SPEC §11): answers, proofs, compact denials |
//! | `meridian_dnssec_cache_hits_total` | counter | | RRSIGs served from a worker's signature cache |
//! | `meridian_dnssec_cache_entries` | gauge | | signatures held in the UDP workers' caches (fixed slots: bounded) |
//! | `meridian_dnssec_negative_signatures_total` | counter | | RRSIGs over the NSEC of a nonexistent name, one per unique name |
//! | `meridian_dnssec_negative_signatures_per_second` | gauge | | the same, per second, between the last two scrapes at least 1 s apart |
//! | `meridian_probe_results_total` | counter | `check`, `result` | health probes run, by check (its name in the zones, `web`; `kind:port/path` when no pool names it) and result (`ok`, `fail`) |
//! | `meridian_probe_duration_seconds` | histogram | `check` | duration of health probes, by check, buckets 1 ms to 10 s |
//! | `meridian_pool_up` | gauge | `zone`, `pool` | 1 when the pool may be answered (overrides allow it and at least `min_healthy` endpoints are up), else 0 |
//! | `meridian_endpoint_up` | gauge | `zone`, `pool`, `address` | 1 when the endpoint's probe says up or has no result yet (or the pool has no check), 0 when it is down; overrides are not applied here, see `meridian_pool_override` |
//! | `meridian_pool_override` | gauge | `zone`, `pool`, `state` | 1 for the operator override in force on the pool (`state` = `up`, `down`, `drain`), 0 for the other states; all three 0 when the probes decide |
//! | `meridian_zone_serial` | gauge | `zone` | SOA serial of the zone being served |
//! | `meridian_panics_total` | counter | | queries whose answering panicked: each got SERVFAIL and one log line with the query (a bug; the worker goes on) |
//! | `meridian_reloads_total` | counter | | reloads that succeeded (SIGHUP or `POST /v1/reload`) |
//! | `meridian_reload_errors_total` | counter | | reloads that failed (the previous configuration kept serving) |
//! | `meridian_uptime_seconds` | gauge | | seconds since the server started |
//! | `meridian_build_info` | gauge | `version` | always 1; the running version in its label |
//! | `meridian_cluster_connected` | gauge | | with `--cluster`: 1 while etcd answered within two lease TTLs (shared verdicts and overrides apply), 0 while the instance follows its local view |
//! | `meridian_cluster_instances` | gauge | | with `--cluster`: live instances (their lease holds), this one included |
//! | `meridian_cluster_zone_mismatch` | gauge | | with `--cluster`: live instances whose zone files differ from this one's |
//! | `meridian_cluster_recoveries_total` | counter | `kind` | with `--cluster`: store loop recoveries: `lease_grant`, `relist`, `watch_resume`, `compaction` |

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::AppState;
use crate::dns::stats::{Dnssec, RESPONSE_TIME_BUCKETS, TcpClose, TcpTotals, Totals};
use crate::health::Override;
use crate::health::prober::ProbeStats;
use crate::reload::Control;
use crate::world::World;

/// The content type of the text exposition format, version 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A metric family: what `# HELP` and `# TYPE` say about it.
#[derive(Debug)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

pub const DNS_QUERIES: Metric = Metric {
    name: "meridian_dns_queries_total",
    kind: Kind::Counter,
    help: "DNS queries answered, by zone (empty when no zone matched), query type and response code.",
};
pub const POLICY_ANSWERS: Metric = Metric {
    name: "meridian_policy_answers_total",
    kind: Kind::Counter,
    help: "Policy answers, by zone, policy and the pool it chose.",
};
pub const POLICY_FAIL_OPEN: Metric = Metric {
    name: "meridian_policy_fail_open_total",
    kind: Kind::Counter,
    help: "Policy answers given with no target up (failed open to the first target).",
};
pub const DNS_RESPONSE_SECONDS: Metric = Metric {
    name: "meridian_dns_response_seconds",
    kind: Kind::Histogram,
    help: "Time to answer one DNS query, in seconds.",
};
pub const TCP_CONNECTIONS: Metric = Metric {
    name: "meridian_tcp_connections",
    kind: Kind::Gauge,
    help: "DNS-over-TCP connections open.",
};
pub const TCP_EVICTED: Metric = Metric {
    name: "meridian_tcp_evicted_total",
    kind: Kind::Counter,
    help: "Idle DNS-over-TCP connections closed to make room for a new one under a full cap.",
};
pub const TCP_REFUSED: Metric = Metric {
    name: "meridian_tcp_refused_total",
    kind: Kind::Counter,
    help: "DNS-over-TCP connections refused: the cap (global or the client's /24 or /56) was full of busy connections.",
};
pub const TCP_CLOSED: Metric = Metric {
    name: "meridian_tcp_closed_total",
    kind: Kind::Counter,
    help: "DNS-over-TCP connections closed, by reason.",
};
pub const PACKET_CACHE_HITS: Metric = Metric {
    name: "meridian_dns_packet_cache_hits_total",
    kind: Kind::Counter,
    help: "UDP responses replayed from a worker's packet or ECS answer cache (also counted in meridian_dns_queries_total).",
};
pub const RRL_LIMITED: Metric = Metric {
    name: "meridian_rrl_limited_total",
    kind: Kind::Counter,
    help: "UDP responses over the response rate limit (sent anyway in log-only mode).",
};
pub const RRL_SLIPPED: Metric = Metric {
    name: "meridian_rrl_slipped_total",
    kind: Kind::Counter,
    help: "Rate-limited responses sent as TC=1 replies with no records.",
};
pub const RRL_DROPPED: Metric = Metric {
    name: "meridian_rrl_dropped_total",
    kind: Kind::Counter,
    help: "Rate-limited responses not sent.",
};
pub const DNSSEC_SIGNATURES: Metric = Metric {
    name: "meridian_dnssec_signatures_total",
    kind: Kind::Counter,
    help: "RRSIGs computed (answers, proofs and compact denials of nonexistent names).",
};
pub const DNSSEC_CACHE_HITS: Metric = Metric {
    name: "meridian_dnssec_cache_hits_total",
    kind: Kind::Counter,
    help: "RRSIGs taken from a worker's signature cache instead of being computed.",
};
pub const DNSSEC_CACHE_ENTRIES: Metric = Metric {
    name: "meridian_dnssec_cache_entries",
    kind: Kind::Gauge,
    help: "Signatures held in the UDP workers' caches (bounded: fixed slots per worker).",
};
pub const DNSSEC_NEGATIVE: Metric = Metric {
    name: "meridian_dnssec_negative_signatures_total",
    kind: Kind::Counter,
    help: "RRSIGs computed over the compact-denial NSEC of a nonexistent name (one per unique name).",
};
pub const DNSSEC_NEGATIVE_RATE: Metric = Metric {
    name: "meridian_dnssec_negative_signatures_per_second",
    kind: Kind::Gauge,
    help: "Unique negative signatures per second, between the last two scrapes at least 1 s apart.",
};
pub const PROBE_RESULTS: Metric = Metric {
    name: "meridian_probe_results_total",
    kind: Kind::Counter,
    help: "Health probes run, by check and result (ok or fail).",
};
pub const PROBE_DURATION: Metric = Metric {
    name: "meridian_probe_duration_seconds",
    kind: Kind::Histogram,
    help: "Duration of health probes, by check, in seconds.",
};
pub const POOL_UP: Metric = Metric {
    name: "meridian_pool_up",
    kind: Kind::Gauge,
    help: "1 when the pool may be answered (overrides and min_healthy applied), else 0.",
};
pub const ENDPOINT_UP: Metric = Metric {
    name: "meridian_endpoint_up",
    kind: Kind::Gauge,
    help: "1 when the endpoint's probe says up or unknown (or it has no check), 0 when down; overrides not applied.",
};
pub const POOL_OVERRIDE: Metric = Metric {
    name: "meridian_pool_override",
    kind: Kind::Gauge,
    help: "1 for the operator override in force on the pool (state up, down or drain), else 0.",
};
pub const ZONE_SERIAL: Metric = Metric {
    name: "meridian_zone_serial",
    kind: Kind::Gauge,
    help: "SOA serial of the zone being served.",
};
pub const PANICS: Metric = Metric {
    name: "meridian_panics_total",
    kind: Kind::Counter,
    help: "Queries whose answering panicked; each got SERVFAIL and a log line (a bug: please report).",
};
pub const RELOADS: Metric = Metric {
    name: "meridian_reloads_total",
    kind: Kind::Counter,
    help: "Successful reloads.",
};
pub const RELOAD_ERRORS: Metric = Metric {
    name: "meridian_reload_errors_total",
    kind: Kind::Counter,
    help: "Failed reloads (the previous configuration kept serving).",
};
pub const UPTIME: Metric = Metric {
    name: "meridian_uptime_seconds",
    kind: Kind::Gauge,
    help: "Seconds since the server started.",
};
pub const BUILD_INFO: Metric = Metric {
    name: "meridian_build_info",
    kind: Kind::Gauge,
    help: "Always 1; the running version is in the version label.",
};

pub const CLUSTER_CONNECTED: Metric = Metric {
    name: "meridian_cluster_connected",
    kind: Kind::Gauge,
    help: "1 while etcd answered within two lease TTLs, 0 while following the local view.",
};
pub const CLUSTER_INSTANCES: Metric = Metric {
    name: "meridian_cluster_instances",
    kind: Kind::Gauge,
    help: "Live instances of the cluster (their lease holds), this one included.",
};
pub const CLUSTER_ZONE_MISMATCH: Metric = Metric {
    name: "meridian_cluster_zone_mismatch",
    kind: Kind::Gauge,
    help: "Live instances whose zone files differ from this one's.",
};
pub const CLUSTER_RECOVERIES: Metric = Metric {
    name: "meridian_cluster_recoveries_total",
    kind: Kind::Counter,
    help: "Store loop recoveries, by kind (lease_grant, relist, watch_resume, compaction).",
};

/// Every family, in the order a scrape renders them.
pub const ALL: &[&Metric] = &[
    &DNS_QUERIES,
    &POLICY_ANSWERS,
    &POLICY_FAIL_OPEN,
    &DNS_RESPONSE_SECONDS,
    &TCP_CONNECTIONS,
    &TCP_EVICTED,
    &TCP_REFUSED,
    &TCP_CLOSED,
    &PACKET_CACHE_HITS,
    &RRL_LIMITED,
    &RRL_SLIPPED,
    &RRL_DROPPED,
    &DNSSEC_SIGNATURES,
    &DNSSEC_CACHE_HITS,
    &DNSSEC_CACHE_ENTRIES,
    &DNSSEC_NEGATIVE,
    &DNSSEC_NEGATIVE_RATE,
    &PROBE_RESULTS,
    &PROBE_DURATION,
    &POOL_UP,
    &ENDPOINT_UP,
    &POOL_OVERRIDE,
    &ZONE_SERIAL,
    &PANICS,
    &RELOADS,
    &RELOAD_ERRORS,
    &UPTIME,
    &BUILD_INFO,
    &CLUSTER_CONNECTED,
    &CLUSTER_INSTANCES,
    &CLUSTER_ZONE_MISMATCH,
    &CLUSTER_RECOVERIES,
];

/// Override states, each a series of [`POOL_OVERRIDE`] for every pool.
const OVERRIDE_STATES: [Override; 3] = [Override::Up, Override::Down, Override::Drain];

/// The handler.
pub(super) async fn scrape(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        render(&state.control),
    )
}

/// Every metric, computed now.
pub fn render(control: &Control) -> String {
    let mut out = Exposition::default();
    let totals = control.dns_stats.totals();
    dns_metrics(&mut out, &totals);
    tcp_metrics(&mut out, &control.dns_stats.tcp_totals());
    let rate = control
        .dns_stats
        .negative_signature_rate(totals.dnssec.negative_signatures);
    dnssec_metrics(&mut out, &totals.dnssec, rate);
    probe_metrics(
        &mut out,
        &control.prober.get().map(|p| p.stats()).unwrap_or_default(),
    );
    health_metrics(&mut out, &control.world.load_full());
    process_metrics(&mut out, control);
    cluster_metrics(&mut out, control);
    out.text
}

/// Only with `--cluster`: a scrape of a lone instance does not grow.
fn cluster_metrics(out: &mut Exposition, control: &Control) {
    let Some(cluster) = &control.cluster else {
        return;
    };
    let state = cluster.state();
    out.family(&CLUSTER_CONNECTED);
    out.sample(CLUSTER_CONNECTED.name, &[], u64::from(state.connected));
    out.family(&CLUSTER_INSTANCES);
    out.sample(CLUSTER_INSTANCES.name, &[], state.instances.len() as u64);
    out.family(&CLUSTER_ZONE_MISMATCH);
    out.sample(
        CLUSTER_ZONE_MISMATCH.name,
        &[],
        cluster.zone_mismatch(&state).len() as u64,
    );
    out.family(&CLUSTER_RECOVERIES);
    let s = &cluster.stats;
    for (kind, n) in [
        ("lease_grant", &s.lease_grants),
        ("relist", &s.relists),
        ("watch_resume", &s.watch_resumes),
        ("compaction", &s.compactions),
    ] {
        out.sample(
            CLUSTER_RECOVERIES.name,
            &[("kind", kind)],
            n.load(Ordering::Relaxed),
        );
    }
}

fn dns_metrics(out: &mut Exposition, totals: &Totals) {
    out.family(&DNS_QUERIES);
    for ((zone, qtype, rcode), n) in &totals.queries {
        out.sample(
            DNS_QUERIES.name,
            &[("zone", zone), ("qtype", qtype), ("rcode", rcode)],
            *n,
        );
    }
    for (metric, series) in [
        (&POLICY_ANSWERS, &totals.answers),
        (&POLICY_FAIL_OPEN, &totals.fail_open),
    ] {
        out.family(metric);
        for ((zone, policy, pool), n) in series {
            out.sample(
                metric.name,
                &[("zone", zone), ("policy", policy), ("pool", pool)],
                *n,
            );
        }
    }
    out.family(&DNS_RESPONSE_SECONDS);
    // The workers count per bucket (the last one is +Inf); Prometheus buckets are cumulative.
    let cumulative: Vec<u64> = totals
        .buckets
        .iter()
        .scan(0u64, |sum, n| {
            *sum += n;
            Some(*sum)
        })
        .collect();
    let count = cumulative.last().copied().unwrap_or(0);
    out.histogram(
        DNS_RESPONSE_SECONDS.name,
        &[],
        &RESPONSE_TIME_BUCKETS,
        &cumulative,
        count,
        totals.time_sum,
    );
    for (metric, n) in [
        (&PACKET_CACHE_HITS, totals.replayed),
        (&RRL_LIMITED, totals.rrl.limited),
        (&RRL_SLIPPED, totals.rrl.slipped),
        (&RRL_DROPPED, totals.rrl.dropped),
    ] {
        out.family(metric);
        out.sample(metric.name, &[], n);
    }
}

fn tcp_metrics(out: &mut Exposition, t: &TcpTotals) {
    for (metric, value) in [
        (&TCP_CONNECTIONS, t.table.open),
        (&TCP_EVICTED, t.table.evicted),
        (&TCP_REFUSED, t.table.refused),
    ] {
        out.family(metric);
        out.sample(metric.name, &[], value);
    }
    out.family(&TCP_CLOSED);
    for (why, n) in TcpClose::ALL.iter().zip(t.closed) {
        out.sample(TCP_CLOSED.name, &[("reason", why.label())], n);
    }
}

fn dnssec_metrics(out: &mut Exposition, d: &Dnssec, negative_rate: f64) {
    for (metric, value) in [
        (&DNSSEC_SIGNATURES, d.signatures),
        (&DNSSEC_CACHE_HITS, d.cache_hits),
        (&DNSSEC_CACHE_ENTRIES, d.cache_entries),
        (&DNSSEC_NEGATIVE, d.negative_signatures),
    ] {
        out.family(metric);
        out.sample(metric.name, &[], value);
    }
    out.family(&DNSSEC_NEGATIVE_RATE);
    out.sample(DNSSEC_NEGATIVE_RATE.name, &[], negative_rate);
}

fn probe_metrics(out: &mut Exposition, stats: &ProbeStats) {
    out.family(&PROBE_RESULTS);
    for c in &stats.checks {
        out.sample(
            PROBE_RESULTS.name,
            &[("check", &c.label), ("result", "ok")],
            c.ok,
        );
        out.sample(
            PROBE_RESULTS.name,
            &[("check", &c.label), ("result", "fail")],
            c.fail,
        );
    }
    out.family(&PROBE_DURATION);
    for c in &stats.checks {
        let h = &c.duration;
        out.histogram(
            PROBE_DURATION.name,
            &[("check", &c.label)],
            h.bounds,
            &h.counts,
            h.count,
            h.sum,
        );
    }
}

fn health_metrics(out: &mut Exposition, world: &World) {
    let (snap, health) = (&*world.snapshot, &*world.health);
    let pools = || {
        snap.zones
            .iter()
            .flat_map(|z| z.pools.iter().map(move |p| (z, *p)))
    };
    out.family(&POOL_UP);
    for (zone, id) in pools() {
        let up = health.pool_up(snap, id);
        out.sample(
            POOL_UP.name,
            &[("zone", &zone.origin), ("pool", &snap.pool(id).name)],
            u64::from(up),
        );
    }
    out.family(&ENDPOINT_UP);
    // Keyed so that an address listed twice in a pool is still one series.
    let mut endpoints = BTreeMap::new();
    for (zone, id) in pools() {
        let pool = snap.pool(id);
        for e in &pool.endpoints {
            let up = health.endpoint_health(e).is_up();
            endpoints.insert(
                (zone.origin.as_str(), pool.name.as_str(), e.addr.to_string()),
                up,
            );
        }
    }
    for ((zone, pool, address), up) in &endpoints {
        out.sample(
            ENDPOINT_UP.name,
            &[("zone", zone), ("pool", pool), ("address", address)],
            u64::from(*up),
        );
    }
    out.family(&POOL_OVERRIDE);
    for (zone, id) in pools() {
        let current = health.override_of(id);
        for state in OVERRIDE_STATES {
            let labels = [
                ("zone", zone.origin.as_str()),
                ("pool", &snap.pool(id).name),
                ("state", state.as_str()),
            ];
            out.sample(
                POOL_OVERRIDE.name,
                &labels,
                u64::from(current == Some(state)),
            );
        }
    }
    out.family(&ZONE_SERIAL);
    for zone in &snap.zones {
        out.sample(
            ZONE_SERIAL.name,
            &[("zone", &zone.origin)],
            u64::from(zone.serial),
        );
    }
}

fn process_metrics(out: &mut Exposition, control: &Control) {
    out.family(&PANICS);
    out.sample(PANICS.name, &[], control.dns_stats.totals().panics);
    out.family(&RELOADS);
    out.sample(RELOADS.name, &[], control.reloads.load(Ordering::Relaxed));
    out.family(&RELOAD_ERRORS);
    out.sample(
        RELOAD_ERRORS.name,
        &[],
        control.reload_errors.load(Ordering::Relaxed),
    );
    out.family(&UPTIME);
    out.sample(UPTIME.name, &[], control.started.elapsed().as_secs_f64());
    out.family(&BUILD_INFO);
    out.sample(
        BUILD_INFO.name,
        &[("version", env!("CARGO_PKG_VERSION"))],
        1u64,
    );
}

/// A sample value: counts print as integers, everything else as a float.
trait Value {
    fn write(&self, out: &mut String);
}

impl Value for u64 {
    fn write(&self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

impl Value for f64 {
    fn write(&self, out: &mut String) {
        out.push_str(&float(*self));
    }
}

/// The text being built; writing to a `String` cannot fail.
#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    /// `# HELP` and `# TYPE`, before the family's samples (also when it has none yet).
    fn family(&mut self, m: &Metric) {
        let _ = writeln!(self.text, "# HELP {} {}", m.name, escape_help(m.help));
        let _ = writeln!(self.text, "# TYPE {} {}", m.name, m.kind.as_str());
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Value) {
        self.text.push_str(name);
        write_labels(&mut self.text, labels, None);
        self.text.push(' ');
        value.write(&mut self.text);
        self.text.push('\n');
    }

    /// `_bucket` lines (`cumulative[i]` observations at most `bounds[i]`, then `+Inf` =
    /// `count`), `_sum` and `_count`.
    fn histogram(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        bounds: &[f64],
        cumulative: &[u64],
        count: u64,
        sum: f64,
    ) {
        for (bound, n) in bounds.iter().zip(cumulative) {
            self.bucket(name, labels, &float(*bound), *n);
        }
        self.bucket(name, labels, "+Inf", count);
        self.sample(&format!("{name}_sum"), labels, sum);
        self.sample(&format!("{name}_count"), labels, count);
    }

    fn bucket(&mut self, name: &str, labels: &[(&str, &str)], le: &str, n: u64) {
        let _ = write!(self.text, "{name}_bucket");
        write_labels(&mut self.text, labels, Some(le));
        let _ = writeln!(self.text, " {n}");
    }
}

/// `{a="x",b="y"}` (nothing when there are no labels), with an `le` label last if given.
fn write_labels(out: &mut String, labels: &[(&str, &str)], le: Option<&str>) {
    if labels.is_empty() && le.is_none() {
        return;
    }
    out.push('{');
    let all = labels.iter().copied().chain(le.map(|v| ("le", v)));
    for (i, (name, value)) in all.enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{name}=\"{}\"", escape_label_value(value));
    }
    out.push('}');
}

/// Label values escape backslash, double quote and line feed.
fn escape_label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// HELP text escapes backslash and line feed.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Go's ParseFloat syntax: `+Inf`, `-Inf`, `NaN`, else Rust's shortest round-trip decimal.
fn float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_and_help_are_escaped() {
        let mut out = Exposition::default();
        out.sample("m", &[("a", "x\"y\\z\nw"), ("b", "plain")], 3u64);
        assert_eq!(out.text, "m{a=\"x\\\"y\\\\z\\nw\",b=\"plain\"} 3\n");
        assert_eq!(escape_help("a\\b\nc"), "a\\\\b\\nc");
    }

    #[test]
    fn samples_without_labels_have_no_braces() {
        let mut out = Exposition::default();
        out.sample("m", &[], 0.5f64);
        out.sample("n", &[], 7u64);
        assert_eq!(out.text, "m 0.5\nn 7\n");
    }

    #[test]
    fn response_time_buckets_become_cumulative() {
        let mut totals = Totals::default();
        totals.buckets[2] = 2; // ≤ 5 µs
        totals.buckets[5] = 1; // ≤ 50 µs
        totals.buckets[RESPONSE_TIME_BUCKETS.len()] = 4; // over 10 ms: +Inf only
        totals.time_sum = 0.25;
        let mut out = Exposition::default();
        dns_metrics(&mut out, &totals);
        let t = &out.text;
        assert!(
            t.contains("meridian_dns_response_seconds_bucket{le=\"0.000001\"} 0\n"),
            "{t}"
        );
        assert!(
            t.contains("meridian_dns_response_seconds_bucket{le=\"0.0000025\"} 0\n"),
            "{t}"
        );
        assert!(
            t.contains("meridian_dns_response_seconds_bucket{le=\"0.000005\"} 2\n"),
            "{t}"
        );
        assert!(
            t.contains("meridian_dns_response_seconds_bucket{le=\"0.00001\"} 2\n"),
            "{t}"
        );
        assert!(
            t.contains("meridian_dns_response_seconds_bucket{le=\"0.00005\"} 3\n"),
            "{t}"
        );
        assert!(
            t.contains("meridian_dns_response_seconds_bucket{le=\"0.01\"} 3\n"),
            "{t}"
        );
        assert!(
            t.contains("meridian_dns_response_seconds_bucket{le=\"+Inf\"} 7\n"),
            "{t}"
        );
        assert!(
            t.contains("meridian_dns_response_seconds_sum 0.25\n"),
            "{t}"
        );
        assert!(t.contains("meridian_dns_response_seconds_count 7\n"), "{t}");
    }

    #[test]
    fn histogram_labels_come_before_le() {
        let mut out = Exposition::default();
        out.histogram("h", &[("check", "tcp:443")], &[0.5, 1.0], &[1, 2], 3, 2.5);
        assert_eq!(
            out.text,
            "h_bucket{check=\"tcp:443\",le=\"0.5\"} 1\nh_bucket{check=\"tcp:443\",le=\"1\"} 2\n\
             h_bucket{check=\"tcp:443\",le=\"+Inf\"} 3\nh_sum{check=\"tcp:443\"} 2.5\nh_count{check=\"tcp:443\"} 3\n"
        );
    }

    #[test]
    fn floats_use_prometheus_spellings() {
        assert_eq!(float(f64::INFINITY), "+Inf");
        assert_eq!(float(f64::NEG_INFINITY), "-Inf");
        assert_eq!(float(f64::NAN), "NaN");
        assert_eq!(float(0.000_005), "0.000005");
        assert_eq!(float(10.0), "10");
    }

    #[test]
    fn every_family_is_named_once_with_its_kind_suffix() {
        let mut names: Vec<&str> = ALL.iter().map(|m| m.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL.len());
        for m in ALL {
            assert!(m.name.starts_with("meridian_"), "{}", m.name);
            assert_eq!(
                m.kind == Kind::Counter,
                m.name.ends_with("_total"),
                "{}",
                m.name
            );
        }
    }
}
