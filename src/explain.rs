//! `meridian explain` and `GET /v1/explain` (SPEC §6): ask the real DNS path one question
//! and show why it answered what it did: the client's GeoIP record, the policy rules that
//! matched, every candidate with its health, fallbacks, and the answer with TTL and scope.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{Result, bail};
use hickory_proto::op::Message;
use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};
use serde_json::json;

use crate::cluster::{Cluster, ProbeQuorum};
use crate::dns::handler::{Local, Transport, handle};
use crate::dns::lookup::wildcard_node;
use crate::geo::{GeoDb, Location, code_str};
use crate::health::ProbeStatus;
use crate::health::view::rtt_ms;
use crate::health::{Override, View};
use crate::model::{PolicyId, PoolId, Snapshot, Target, rtype, wire};
use crate::policy::{self, Client, Ctx, Recorder, Step};
use crate::world::World;

/// CNAME hops explain follows to find the policy behind a name (as the DNS path does).
const MAX_CNAME_HOPS: usize = 8;

/// The decision for one question.
#[derive(Debug)]
pub struct Explanation {
    pub name: String,
    pub qtype: u16,
    pub client: IpAddr,
    pub source_prefix: Option<u8>,
    pub geoip: Option<Location>,
    /// Prefix of the database network around the client (the empty region on a miss).
    pub geoip_prefix: u8,
    pub policy: Option<String>,
    pub steps: Vec<Step>,
    pub rcode: String,
    pub answers: Vec<(String, u32, String)>,
    pub scope: Option<u8>,
    pub note: Option<String>,
    /// Every endpoint the policy can answer, with its probe's last result and RTT.
    pub endpoints: Vec<EndpointLine>,
    /// With a cluster: every instance's verdict on each endpoint the policy can answer.
    pub cluster: Vec<ClusterLine>,
    /// SPEC §11: whether DO=1 answers are signed, and with which key.
    pub dnssec: Dnssec,
}

/// One endpoint a policy can answer and what its probe last saw (SPEC §7: last RTT).
#[derive(Debug)]
pub struct EndpointLine {
    /// `us-east 198.51.100.10: up, last probe ok in 0.8 ms, 2s ago`
    pub text: String,
    /// As `/v1/status` shows the endpoint, with its pool.
    pub json: serde_json::Value,
}

/// One probed endpoint and what the cluster says about it.
#[derive(Debug)]
pub struct ClusterLine {
    pub pool: String,
    pub address: IpAddr,
    pub quorum: ProbeQuorum,
}

/// The DNSSEC state of the zone asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dnssec {
    /// No zone, or a zone without `dnssec = true`.
    Unsigned,
    /// Signed online with the key of this tag.
    Signed { key_tag: u16 },
    /// `dnssec = true` but no key loaded: the zone is answered REFUSED.
    NoKey,
}

/// A world for offline explain: health unknown (so up), `--down` pools overridden down.
pub fn offline_world(snap: Snapshot, geo: Option<Arc<GeoDb>>, down: &[String]) -> Result<World> {
    let mut overrides = vec![None; snap.pools.len()];
    for spec in down {
        let pools: Vec<_> = match spec.split_once('/') {
            Some((zone, pool)) => snap
                .find_zone_by_name(zone)
                .and_then(|z| snap.find_pool(z, pool))
                .into_iter()
                .collect(),
            None => (0..snap.zones.len())
                .filter_map(|z| snap.find_pool(crate::model::ZoneId(z as u32), spec))
                .collect(),
        };
        if pools.is_empty() {
            bail!("--down {spec}: no such pool");
        }
        for p in pools {
            overrides[p.0 as usize] = Some(Override::Down);
        }
    }
    let health = View::unknown(&snap).with_overrides(&snap, overrides, Default::default());
    Ok(World::new(Arc::new(snap), Arc::new(health), geo))
}

/// Ask `name`/`qtype` as `client` (an ECS subnet when `source_prefix` is given).
pub fn explain(
    world: &World,
    name: &str,
    qtype: u16,
    client: IpAddr,
    source_prefix: Option<u8>,
    now: SystemTime,
) -> Explanation {
    let mut e = Explanation {
        name: name.to_string(),
        qtype,
        client,
        source_prefix,
        geoip: None,
        geoip_prefix: 0,
        policy: None,
        steps: Vec::new(),
        rcode: String::new(),
        answers: Vec::new(),
        scope: None,
        note: None,
        endpoints: Vec::new(),
        cluster: Vec::new(),
        dnssec: Dnssec::Unsigned,
    };
    // The database's own record and network (and ASN); the answer below uses the compiled
    // trie, whose prefix may be wider (the scope shows that).
    let located = world
        .geo
        .as_ref()
        .map(|db| db.locate_record(client.to_canonical()))
        .unwrap_or_default();
    (e.geoip, e.geoip_prefix) = (located.location, located.prefix_len);
    let Some(qname) = wire::from_text(name) else {
        e.note = Some(format!("{name:?} is not a valid domain name"));
        return e;
    };
    e.name = wire::to_text(&qname);
    if let Some(zone) = world
        .snapshot
        .find_zone(&qname)
        .map(|z| world.snapshot.zone(z))
    {
        e.dnssec = match (&zone.dnssec, &zone.key) {
            (None, _) => Dnssec::Unsigned,
            (Some(_), Some(k)) => Dnssec::Signed { key_tag: k.key_tag },
            (Some(_), None) => Dnssec::NoKey,
        };
    }
    let seed = rand::random::<u64>();
    let packet = query_packet(&qname, qtype, client, source_prefix);
    let mut out = Vec::new();
    let src = if source_prefix.is_some() {
        IpAddr::from([127, 0, 0, 1])
    } else {
        client
    };
    handle(
        world,
        &packet,
        &src,
        Transport::Tcp,
        seed,
        &mut out,
        &mut Local::default(),
    );
    read_response(&out, &mut e);
    match policy_at(&world.snapshot, &qname) {
        Some(id) => {
            let snap = &world.snapshot;
            e.policy = Some(snap.policy(id).name.clone());
            let ctx = Ctx {
                snap,
                health: &world.health,
                geo: world,
            };
            let mut rec = Recorder::new(now);
            let masked = Client {
                addr: client,
                source_prefix,
            };
            let decision = policy::answer(&ctx, id, masked, seed, &mut rec);
            e.steps = rec.steps;
            e.endpoints = endpoint_lines(world, id, now);
            // Without ECS nothing is sent, but show the scope an ECS query would get.
            e.scope.get_or_insert(decision.scope);
        }
        None if world.snapshot.find_zone(&qname).is_none() => {
            e.note = Some("outside every zone: REFUSED".into());
        }
        None => e.note = Some("static data (no policy)".into()),
    }
    e
}

impl Explanation {
    /// Add each instance's verdict on every checked endpoint the policy can answer, with
    /// `local` this instance's own statuses (the world holds the quorum's result).
    pub fn add_cluster(&mut self, world: &World, cluster: &Cluster, local: &[ProbeStatus]) {
        let snap = &world.snapshot;
        let Some(policy) = wire::from_text(&self.name).and_then(|q| policy_at(snap, &q)) else {
            return;
        };
        for pool in policy_pools(snap, policy) {
            let p = snap.pool(pool);
            for e in &p.endpoints {
                let Some(id) = e.probe else { continue };
                let own = local.get(id.0 as usize).cloned().unwrap_or_default();
                self.cluster.push(ClusterLine {
                    pool: p.name.clone(),
                    address: e.addr,
                    quorum: cluster.explain_probe(snap.probe(id), &own),
                });
            }
        }
    }
}

/// Every endpoint of every pool `policy` can answer from, with its probe's last result.
fn endpoint_lines(world: &World, policy: PolicyId, now: SystemTime) -> Vec<EndpointLine> {
    let (snap, view) = (&world.snapshot, &world.health);
    let mut lines = Vec::new();
    for pool in policy_pools(snap, policy) {
        let p = snap.pool(pool);
        for (i, e) in p.endpoints.iter().enumerate() {
            let mut json = view.endpoint_json(snap, pool, i, e);
            json["pool"] = json!(p.name);
            let mut text = format!("{} {}: ", p.name, e.addr);
            if let Some(o) = view.override_of(pool).or(view.endpoint_override(pool, i)) {
                text.push_str(&format!("override {}, ", o.as_str()));
            }
            match view.probe_of(snap, e) {
                None => text.push_str("no check (always up)"),
                Some((_, s)) => {
                    text.push_str(s.health.as_str());
                    text.push_str(&probe_text(&s, now));
                }
            }
            lines.push(EndpointLine { text, json });
        }
    }
    lines
}

/// `, last probe fail in 1.0 ms, 4s ago (connection refused)`, or `, not probed yet`.
fn probe_text(s: &ProbeStatus, now: SystemTime) -> String {
    let (Some(result), Some(rtt)) = (s.last_result(), s.last_rtt) else {
        return ", not probed yet".into();
    };
    let mut text = format!(", last probe {result} in {:.1} ms", rtt_ms(rtt));
    if let Some(ago) = s.last_at.and_then(|at| now.duration_since(at).ok()) {
        text.push_str(&format!(", {}s ago", ago.as_secs()));
    }
    if result == "fail"
        && let Some(err) = &s.last_error
    {
        text.push_str(&format!(" ({err})"));
    }
    text
}

/// Every pool a policy can answer from, nested policies followed, in order of first mention.
fn policy_pools(snap: &Snapshot, policy: PolicyId) -> Vec<PoolId> {
    let mut pools = Vec::new();
    let mut seen = vec![false; snap.policies.len()];
    let mut todo = vec![policy];
    while let Some(id) = todo.pop() {
        if std::mem::replace(&mut seen[id.0 as usize], true) {
            continue;
        }
        let targets = snap.policy(id).kind.targets();
        for t in targets {
            match t {
                Target::Pool(p) if !pools.contains(&p) => pools.push(p),
                Target::Pool(_) => {}
                Target::Policy(p) => todo.push(p),
            }
        }
    }
    pools
}

/// The policy that answers `qname`, following CNAMEs inside the zone.
fn policy_at(snap: &Snapshot, qname: &[u8]) -> Option<PolicyId> {
    let mut name = qname.to_vec();
    for _ in 0..MAX_CNAME_HOPS {
        let zone = snap.zone(snap.find_zone(&name)?);
        let node = zone
            .nodes
            .get(&name[..])
            .or_else(|| wildcard_node(zone, &name))?;
        if let Some(p) = node.policy {
            return Some(p);
        }
        name = node.rrset(rtype::CNAME)?.rdatas().next()?.to_vec();
    }
    None
}

/// A query for `qname` (lowercase wire), as ECS client `client/source_prefix` when given.
pub fn query_packet(
    qname: &[u8],
    qtype: u16,
    client: IpAddr,
    source_prefix: Option<u8>,
) -> Vec<u8> {
    let mut p = vec![
        0,
        0,
        0,
        0,
        0,
        1,
        0,
        0,
        0,
        0,
        0,
        u8::from(source_prefix.is_some()),
    ];
    p.extend_from_slice(qname);
    p.extend_from_slice(&qtype.to_be_bytes());
    p.extend_from_slice(&1u16.to_be_bytes());
    if let Some(prefix) = source_prefix {
        let (family, bytes): (u16, Vec<u8>) = match client {
            IpAddr::V4(a) => (1, a.octets().to_vec()),
            IpAddr::V6(a) => (2, a.octets().to_vec()),
        };
        let n = usize::from(prefix).div_ceil(8);
        p.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0]);
        p.extend_from_slice(&((8 + n) as u16).to_be_bytes());
        p.extend_from_slice(&[0, 8]);
        p.extend_from_slice(&((4 + n) as u16).to_be_bytes());
        p.extend_from_slice(&family.to_be_bytes());
        p.extend_from_slice(&[prefix, 0]);
        p.extend_from_slice(&bytes[..n]);
    }
    p
}

fn read_response(out: &[u8], e: &mut Explanation) {
    let Ok(msg) = Message::from_vec(out) else {
        e.rcode = "no response".into();
        return;
    };
    e.rcode = crate::dns::stats::rcode_name(u16::from(msg.metadata.response_code)).to_string();
    for r in msg.answers.iter().chain(msg.authorities.iter()) {
        e.answers
            .push((r.record_type().to_string(), r.ttl, r.data.to_string()));
    }
    if let Some(edns) = &msg.edns
        && let Some(EdnsOption::Subnet(s)) = edns.option(EdnsCode::Subnet)
    {
        e.scope = Some(s.scope_prefix());
    }
}

impl Explanation {
    /// SPEC §6 text.
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "{} {} from {}",
            self.name,
            rtype::name(self.qtype),
            self.client
        );
        match self.source_prefix {
            Some(p) => out.push_str(&format!(" (ECS {}/{p})\n", self.client)),
            None => out.push_str(" (no ECS)\n"),
        }
        out.push_str(&format!(
            "  geoip: {}\n",
            geoip_text(self.geoip.as_ref(), self.geoip_prefix, self.client)
        ));
        if let Some(note) = &self.note {
            out.push_str(&format!("  {note}\n"));
        }
        for (depth, line) in merge_steps(&self.steps) {
            out.push_str(&format!("{}{line}\n", "  ".repeat(depth + 1)));
        }
        if !self.endpoints.is_empty() {
            out.push_str("  endpoints:\n");
        }
        for l in &self.endpoints {
            out.push_str(&format!("    {}\n", l.text));
        }
        for c in &self.cluster {
            out.push_str(&format!(
                "  cluster: {} {}: {}\n",
                c.pool,
                c.address,
                c.quorum.text()
            ));
        }
        out.push_str(&format!("  answer: {}\n", self.answer_text()));
        match self.dnssec {
            Dnssec::Unsigned => {}
            Dnssec::Signed { key_tag } => out.push_str(&format!(
                "  dnssec: signed online (ECDSAP256SHA256, key tag {key_tag}) for DO=1 queries\n"
            )),
            Dnssec::NoKey => out.push_str(
                "  dnssec: dnssec = true but no key loaded: the zone is answered REFUSED (meridian dnssec keygen)\n",
            ),
        }
        out
    }

    fn answer_text(&self) -> String {
        let answers: Vec<&str> = self
            .answers
            .iter()
            .filter(|(t, _, _)| t != "SOA")
            .map(|(_, _, d)| d.as_str())
            .collect();
        let mut s = if self.rcode == "NOERROR" {
            if answers.is_empty() {
                "NODATA".to_string()
            } else {
                answers.join(" ")
            }
        } else {
            self.rcode.clone()
        };
        if let Some((_, ttl, _)) = self.answers.first() {
            s.push_str(&format!("  TTL {ttl}"));
        }
        if self.rcode == "NOERROR" || self.rcode == "NXDOMAIN" {
            s.push_str(&format!("  ECS scope /{}", self.scope.unwrap_or(0)));
        }
        s
    }

    /// `--json` and `/v1/explain`.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "name": self.name,
            "type": rtype::name(self.qtype),
            "client": self.client.to_string(),
            "ecs": self.source_prefix.map(|p| format!("{}/{p}", self.client)),
            "geoip": self.geoip.as_ref().map(|l| geoip_json(l, self.client)),
            "policy": self.policy,
            "note": self.note,
            "trace": self.steps,
            "rcode": self.rcode,
            "answers": self.answers.iter().map(|(t, ttl, d)| json!({"type": t, "ttl": ttl, "data": d})).collect::<Vec<_>>(),
            "ecs_scope": self.scope,
            "endpoints": self.endpoints.iter().map(|l| &l.json).collect::<Vec<_>>(),
            "cluster": self.cluster.iter().map(|c| {
                let mut v = c.quorum.to_json();
                v["pool"] = json!(c.pool);
                v["address"] = json!(c.address.to_string());
                v
            }).collect::<Vec<_>>(),
            "dnssec": match self.dnssec {
                Dnssec::Unsigned => json!({"signed": false}),
                Dnssec::Signed { key_tag } => json!({"signed": true, "algorithm": 13, "key_tag": key_tag}),
                Dnssec::NoKey => json!({"signed": false, "missing_key": true}),
            },
            "text": self.to_text(),
        })
    }
}

/// Fold `policy` + `rule` into one line and `chosen` into its candidate line.
fn merge_steps(steps: &[Step]) -> Vec<(usize, String)> {
    let mut lines: Vec<(usize, String, &'static str)> = Vec::new();
    for s in steps {
        if let Some(last) = lines.last_mut() {
            if s.kind == "rule" && last.2 == "policy" && s.depth == last.0 + 1 {
                last.1.push_str(&format!(": {}", s.text));
                last.2 = "policy+rule";
                continue;
            }
            if s.kind == "chosen" || s.kind == "estimate" {
                let (pool, rest) = s.text.split_once(": ").unwrap_or((&s.text, ""));
                if let Some(line) = lines
                    .iter_mut()
                    .rev()
                    .find(|l| l.2 == "candidate" && l.1.starts_with(&format!("{pool}:")))
                {
                    if s.kind == "estimate" {
                        line.1.push_str(&format!(", {rest}"));
                    } else if !line.1.ends_with("-> chosen") {
                        line.1.push_str(" -> chosen");
                    }
                    continue;
                }
            }
        }
        lines.push((s.depth, s.text.clone(), s.kind));
    }
    lines.into_iter().map(|(d, t, _)| (d, t)).collect()
}

fn geoip_text(loc: Option<&Location>, prefix: u8, ip: IpAddr) -> String {
    let Some(l) = loc else {
        return match ipnet::IpNet::new(ip.to_canonical(), prefix) {
            Ok(net) => format!("no record (empty network {})", net.trunc()),
            Err(_) => "no record".into(),
        };
    };
    let mut parts = Vec::new();
    if let Some(c) = &l.country {
        parts.push(code_str(c).to_string());
    }
    if let (Some(c), Some(s)) = (&l.country, &l.subdivision) {
        parts.push(format!("subdivision {}-{}", code_str(c), s.as_str()));
    }
    if let Some(c) = &l.continent {
        parts.push(format!("continent {}", code_str(c)));
    }
    if let Some(c) = l.coords {
        parts.push(format!("{:.2},{:.2}", c.lat, c.lon));
    }
    if let Ok(net) = ipnet::IpNet::new(ip.to_canonical(), l.prefix_len) {
        parts.push(format!("network {}", net.trunc()));
    }
    parts.join(", ")
}

fn geoip_json(l: &Location, ip: IpAddr) -> serde_json::Value {
    json!({
        "country": l.country.as_ref().map(|c| code_str(c).to_string()),
        "subdivision": l.subdivision.map(|s| s.as_str().to_string()),
        "continent": l.continent.as_ref().map(|c| code_str(c).to_string()),
        "latitude": l.coords.map(|c| c.lat),
        "longitude": l.coords.map(|c| c.lon),
        "network": ipnet::IpNet::new(ip.to_canonical(), l.prefix_len).ok().map(|n| n.trunc().to_string()),
        "asn": l.asn,
    })
}

/// A record type by name (`A`, `aaaa`, `TYPE65`), for `--client`'s companion argument and
/// `/v1/explain?type=`.
pub fn parse_qtype(s: &str) -> Result<u16> {
    match rtype::from_name(s) {
        Some(t) => Ok(t),
        None => bail!("unknown record type {s:?}"),
    }
}

/// `ADDR` or `ADDR/LEN` (an ECS client subnet, address masked to LEN).
pub fn parse_client(s: &str) -> Result<(IpAddr, Option<u8>)> {
    match s.split_once('/') {
        None => match s.parse() {
            Ok(addr) => Ok((addr, None)),
            Err(_) => bail!("--client {s}: not an address"),
        },
        Some(_) => match s.parse::<ipnet::IpNet>() {
            Ok(net) => Ok((net.trunc().addr(), Some(net.prefix_len()))),
            Err(_) => bail!("--client {s}: not ADDR/LEN"),
        },
    }
}
