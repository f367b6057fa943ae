//! The admin HTTP API of SPEC §7 over real sockets: a server started in-process on
//! 127.0.0.1:0 (DNS and admin), spoken to with reqwest and with UDP DNS queries.
//!
//! Each test starts its own server on its own temp dirs, so they run in parallel. Waits are
//! polls bounded by [`POLL_LIMIT`] (the DNS workers fold counters every second, the first
//! probe of a check lands within milliseconds on loopback).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use meridian::app::{Running, start};
use meridian::settings::{LogFormat, Settings};
use serde_json::{Value, json};
use tokio::net::UdpSocket;

use crate::support::closed_port;

/// Longest any poll in this module waits for a condition.
const POLL_LIMIT: Duration = Duration::from_secs(4);
const POLL_STEP: Duration = Duration::from_millis(50);
/// Per HTTP request and per DNS attempt.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const DNS_TIMEOUT: Duration = Duration::from_millis(500);
const DNS_ATTEMPTS: usize = 4;

const ZONE: &str = "admin.test.";
const PRIMARY: &str = "198.51.100.1";
const SECONDARY: &str = "198.51.100.2";

/// A failover policy over two check-less pools (always up), and one over a pool whose TCP
/// check probes a closed port on 127.0.0.1 (down after its first probe).
fn zone_toml(serial: u32, closed_port: u16) -> String {
    format!(
        r#"origin = "{ZONE}"
policy_ttl = 5

[soa]
mname = "ns1.{ZONE}"
rname = "hostmaster.{ZONE}"
serial = {serial}

[records.ns1]
A = ["192.0.2.53"]

[pools.primary]
A = ["{PRIMARY}"]

[pools.secondary]
A = ["{SECONDARY}"]

[pools.dead]
A = ["198.51.100.3"]
check = "closed"
probe_address = {{ "198.51.100.3" = "127.0.0.1" }}

[checks.closed]
kind = "tcp"
port = {closed_port}
interval = "1s"
timeout = "500ms"
rise = 1
fall = 1

[policies.api]
failover = ["primary", "secondary"]

[policies.tail]
failover = ["dead", "secondary"]
"#
    )
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "meridian-admin-{tag}-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(path.join("zones")).expect("create temp zones dir");
        std::fs::create_dir_all(path.join("state")).expect("create temp state dir");
        TempDir(path)
    }
    fn zone_file(&self) -> PathBuf {
        self.0.join("zones").join("zone.toml")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn settings(dir: &TempDir, token_file: Option<PathBuf>) -> Settings {
    let geoip = Path::new(env!("CARGO_MANIFEST_DIR")).join("geoip/test-city.mmdb");
    Settings {
        listen: vec!["127.0.0.1:0".parse().expect("addr")],
        admin: Some("127.0.0.1:0".parse().expect("addr")),
        admin_token_file: token_file,
        zones: dir.0.join("zones"),
        geoip: geoip.exists().then_some(geoip),
        asn: None,
        state: dir.0.join("state"),
        log_format: LogFormat::Text,
        watch_zones: false,
        instance: "test".into(),
        cluster: None,
        probe_source: None,
        // Tests fire many queries from 127.0.0.1; the RRL tests turn it on.
        rrl: meridian::dns::rrl::Config::off(),
        udp_workers: 2,
    }
}

/// A running server and an HTTP client for its admin API.
struct Server {
    running: Running,
    http: reqwest::Client,
    base: String,
    dns: SocketAddr,
}

impl Server {
    async fn start(settings: Settings) -> Server {
        meridian::health::probe::install_crypto_provider();
        let running = start(settings).await.expect("server starts");
        let admin = running.admin.expect("admin is on");
        let dns = running.dns[0];
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .expect("http client");
        Server {
            running,
            http,
            base: format!("http://{admin}"),
            dns,
        }
    }

    async fn get(&self, path: &str) -> (u16, String) {
        self.send(reqwest::Method::GET, path, None, None).await
    }

    async fn get_json(&self, path: &str) -> (u16, Value) {
        let (status, body) = self.get(path).await;
        (status, parse_json(&body))
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (u16, String) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.expect("admin request");
        let status = resp.status().as_u16();
        (status, resp.text().await.expect("admin body"))
    }

    async fn change(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (u16, Value) {
        let (status, body) = self.send(method, path, token, body).await;
        (status, parse_json(&body))
    }

    /// The A addresses DNS answers for `name` over UDP.
    async fn resolve(&self, name: &str) -> Vec<String> {
        let m = udp_query(self.dns, name, 1).await;
        m.answers.iter().map(|r| r.data.to_string()).collect()
    }

    async fn metrics(&self) -> BTreeMap<String, f64> {
        let (status, text) = self.get("/metrics").await;
        assert_eq!(status, 200);
        check_exposition(&text)
    }

    async fn status(&self) -> Value {
        let (code, v) = self.get_json("/v1/status").await;
        assert_eq!(code, 200, "{v}");
        v
    }

    async fn stop(self) {
        self.running.shutdown().await;
    }
}

fn parse_json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// Poll `f` until it returns `Some`, for at most [`POLL_LIMIT`].
async fn poll<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + POLL_LIMIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(POLL_STEP).await;
    }
}

/// One question over UDP, retried a few times (UDP may drop).
async fn udp_query(server: SocketAddr, name: &str, qtype: u16) -> Message {
    let sock = UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind udp client");
    for attempt in 0..DNS_ATTEMPTS {
        let id = 0x4d00 + attempt as u16;
        sock.send_to(&query_packet(id, name, qtype), server)
            .await
            .expect("send query");
        let mut buf = vec![0u8; 4096];
        if let Ok(Ok((n, _))) = tokio::time::timeout(DNS_TIMEOUT, sock.recv_from(&mut buf)).await {
            let m = Message::from_vec(&buf[..n]).expect("response parses");
            if m.metadata.id == id {
                return m;
            }
        }
    }
    panic!("no DNS answer for {name} from {server}");
}

/// A plain query (RFC 1035 §4.1): header with RD, one question of class IN.
fn query_packet(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut p = Vec::with_capacity(64);
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        p.push(label.len() as u8);
        p.extend_from_slice(label.as_bytes());
    }
    p.push(0);
    p.extend_from_slice(&qtype.to_be_bytes());
    p.extend_from_slice(&1u16.to_be_bytes());
    p
}

// ---------------------------------------------------------------------------------------
// Prometheus text exposition format 0.0.4, checked line by line.

/// Check every line of `text` against the exposition grammar and return the samples, keyed
/// by the series as written (`name{a="x",b="y"}`).
fn check_exposition(text: &str) -> BTreeMap<String, f64> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut helps: BTreeMap<String, ()> = BTreeMap::new();
    let mut closed: Vec<String> = Vec::new();
    let mut current: Option<String> = None;
    let mut samples = BTreeMap::new();
    assert!(text.ends_with('\n'), "the exposition ends with a line feed");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, _help) = rest.split_once(' ').unwrap_or((rest, ""));
            assert!(is_metric_name(name), "HELP of a bad name: {line}");
            assert!(
                helps.insert(name.to_string(), ()).is_none(),
                "second HELP: {line}"
            );
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(is_metric_name(name), "TYPE of a bad name: {line}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            assert!(
                types.insert(name.to_string(), kind.to_string()).is_none(),
                "second TYPE: {line}"
            );
            assert!(
                !closed.contains(&name.to_string()),
                "TYPE after samples: {line}"
            );
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "unexpected line: {line:?}"
        );
        let (series, name, value) = parse_sample(line);
        let family =
            family_of(&name, &types).unwrap_or_else(|| panic!("sample with no TYPE: {line}"));
        if current.as_deref() != Some(family.as_str()) {
            assert!(
                !closed.contains(&family),
                "samples of {family} are not contiguous"
            );
            if let Some(c) = current.take() {
                closed.push(c);
            }
            current = Some(family.clone());
        }
        assert!(
            samples.insert(series, value).is_none(),
            "duplicate series: {line}"
        );
    }
    check_histograms(&samples, &types);
    samples
}

/// `name{labels} value`: the series as written, the name, the value.
fn parse_sample(line: &str) -> (String, String, f64) {
    let name_end = line
        .find(['{', ' '])
        .unwrap_or_else(|| panic!("no value: {line}"));
    let name = &line[..name_end];
    assert!(is_metric_name(name), "bad metric name: {line}");
    let mut rest = &line[name_end..];
    if rest.starts_with('{') {
        let end = parse_labels(rest).unwrap_or_else(|| panic!("bad labels: {line}"));
        rest = &rest[end..];
    }
    let series = &line[..line.len() - rest.len()];
    let value = rest
        .strip_prefix(' ')
        .unwrap_or_else(|| panic!("no space before the value: {line}"));
    assert!(!value.contains(' '), "timestamps are not emitted: {line}");
    let v = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().unwrap_or_else(|_| panic!("bad value: {line}")),
    };
    (series.to_string(), name.to_string(), v)
}

/// Length of `{name="value",...}` at the start of `s`, with the escapes `\\`, `\"`, `\n`.
fn parse_labels(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 1;
    if b.get(i) == Some(&b'}') {
        return Some(2);
    }
    loop {
        let start = i;
        while b
            .get(i)
            .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
        {
            i += 1;
        }
        let label = &s[start..i];
        if label.is_empty() || label.as_bytes()[0].is_ascii_digit() || label.starts_with("__") {
            return None;
        }
        if b.get(i) != Some(&b'=') || b.get(i + 1) != Some(&b'"') {
            return None;
        }
        i += 2;
        loop {
            match b.get(i)? {
                b'\\' => {
                    if !matches!(b.get(i + 1)?, b'\\' | b'"' | b'n') {
                        return None;
                    }
                    i += 2;
                }
                b'"' => break,
                b'\n' => return None,
                _ => i += 1,
            }
        }
        i += 1;
        match b.get(i)? {
            b',' => i += 1,
            b'}' => return Some(i + 1),
            _ => return None,
        }
    }
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// The TYPE'd family a sample belongs to (histograms own `_bucket`, `_sum`, `_count`).
fn family_of(name: &str, types: &BTreeMap<String, String>) -> Option<String> {
    if let Some(kind) = types.get(name) {
        return (kind != "histogram").then(|| name.to_string());
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let base = name.strip_suffix(suffix)?;
        (types.get(base)? == "histogram").then(|| base.to_string())
    })
}

/// Buckets of each histogram series never decrease, end with `+Inf`, which equals `_count`.
fn check_histograms(samples: &BTreeMap<String, f64>, types: &BTreeMap<String, String>) {
    for (family, _) in types.iter().filter(|(_, k)| *k == "histogram") {
        let bucket_prefix = format!("{family}_bucket{{");
        let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for (s, v) in samples
            .iter()
            .filter(|(s, _)| s.starts_with(&bucket_prefix))
        {
            let labels = &s[bucket_prefix.len()..s.len() - 1];
            let (others, le) = match labels.rsplit_once(",le=\"") {
                Some((o, le)) => (o.to_string(), le),
                None => (
                    String::new(),
                    labels.strip_prefix("le=\"").expect("le label"),
                ),
            };
            let le = le.trim_end_matches('"');
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().expect("le is a number")
            };
            series.entry(others).or_default().push((bound, *v));
        }
        for (labels, mut buckets) in series {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            assert!(
                buckets.windows(2).all(|w| w[0].1 <= w[1].1),
                "{family}{{{labels}}}: buckets decrease"
            );
            let last = buckets.last().expect("some bucket");
            assert!(last.0.is_infinite(), "{family}{{{labels}}}: no +Inf bucket");
            let braces = if labels.is_empty() {
                String::new()
            } else {
                format!("{{{labels}}}")
            };
            assert_eq!(
                samples.get(&format!("{family}_count{braces}")),
                Some(&last.1),
                "{family}{braces}: +Inf != _count"
            );
            assert!(
                samples.contains_key(&format!("{family}_sum{braces}")),
                "{family}{braces}: no _sum"
            );
        }
    }
}

fn queries_series(qtype: &str, rcode: &str) -> String {
    format!("meridian_dns_queries_total{{zone=\"{ZONE}\",qtype=\"{qtype}\",rcode=\"{rcode}\"}}")
}

/// Wait until the probes of the `dead` pool have taken it down.
async fn wait_dead_down(server: &Server) {
    poll("the dead pool to go down", || async {
        let s = server.status().await;
        let dead = s["pools"]
            .as_array()?
            .iter()
            .find(|p| p["pool"] == "dead")?
            .clone();
        (dead["up"] == false).then_some(())
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// The tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_metrics_and_status_describe_the_running_server() {
    let dir = TempDir::new("metrics");
    std::fs::write(dir.zone_file(), zone_toml(1, closed_port())).expect("write zone");
    let server = Server::start(settings(&dir, None)).await;

    assert_eq!(server.get("/healthz").await, (200, "ok\n".to_string()));
    let (code, body) = server.get_json("/nope").await;
    assert_eq!((code, body["error"].is_string()), (404, true), "{body}");

    let before = server
        .metrics()
        .await
        .get(&queries_series("A", "NOERROR"))
        .copied()
        .unwrap_or(0.0);
    for _ in 0..3 {
        assert_eq!(server.resolve(&format!("api.{ZONE}")).await, [PRIMARY]);
    }
    udp_query(server.dns, &format!("nothing.{ZONE}"), 1).await;
    let metrics = poll("the query counters", || async {
        let m = server.metrics().await;
        let noerror = m
            .get(&queries_series("A", "NOERROR"))
            .copied()
            .unwrap_or(0.0);
        let nxdomain = m
            .get(&queries_series("A", "NXDOMAIN"))
            .copied()
            .unwrap_or(0.0);
        (noerror >= before + 3.0 && nxdomain >= 1.0).then_some(m)
    })
    .await;
    let answers =
        format!("meridian_policy_answers_total{{zone=\"{ZONE}\",policy=\"api\",pool=\"primary\"}}");
    assert!(metrics[&answers] >= 3.0, "{answers}");
    assert!(metrics["meridian_dns_response_seconds_count"] >= 4.0);
    assert_eq!(
        metrics[&format!("meridian_pool_up{{zone=\"{ZONE}\",pool=\"primary\"}}")],
        1.0
    );
    assert_eq!(
        metrics[&format!(
            "meridian_endpoint_up{{zone=\"{ZONE}\",pool=\"secondary\",address=\"{SECONDARY}\"}}"
        )],
        1.0
    );
    for state in ["up", "down", "drain"] {
        assert_eq!(
            metrics[&format!(
                "meridian_pool_override{{zone=\"{ZONE}\",pool=\"primary\",state=\"{state}\"}}"
            )],
            0.0
        );
    }
    assert_eq!(
        metrics[&format!("meridian_zone_serial{{zone=\"{ZONE}\"}}")],
        1.0
    );
    assert_eq!(metrics["meridian_reloads_total"], 0.0);
    assert_eq!(metrics["meridian_reload_errors_total"], 0.0);
    assert!(metrics["meridian_uptime_seconds"] >= 0.0);
    assert_eq!(
        metrics[&format!(
            "meridian_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        )],
        1.0
    );

    // Static data asked again is replayed from a worker's packet cache, answered as in
    // full and counted both as a query and as a hit.
    let hits = poll("the packet cache hits", || async {
        for _ in 0..3 {
            let m = udp_query(server.dns, &format!("nothing.{ZONE}"), 1).await;
            assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
            assert_eq!(m.metadata.id & 0xff00, 0x4d00, "the query's own ID");
        }
        let m = server.metrics().await;
        m.get("meridian_dns_packet_cache_hits_total")
            .copied()
            .filter(|h| *h >= 1.0)
            .map(|h| (h, m))
    })
    .await;
    let nxdomain = hits.1[&queries_series("A", "NXDOMAIN")];
    assert!(
        nxdomain >= hits.0 + 1.0,
        "{nxdomain} NXDOMAIN, {} hits",
        hits.0
    );

    // The closed port fails its probe: the pool, its endpoint and the probe counters show it.
    wait_dead_down(&server).await;
    let metrics = poll("the probe counters", || async {
        let m = server.metrics().await;
        m.iter()
            .any(|(k, v)| {
                k.starts_with("meridian_probe_results_total{check=\"closed\"")
                    && k.ends_with("result=\"fail\"}")
                    && *v >= 1.0
            })
            .then_some(m)
    })
    .await;
    assert_eq!(
        metrics[&format!("meridian_pool_up{{zone=\"{ZONE}\",pool=\"dead\"}}")],
        0.0
    );
    assert_eq!(
        metrics[&format!(
            "meridian_endpoint_up{{zone=\"{ZONE}\",pool=\"dead\",address=\"198.51.100.3\"}}"
        )],
        0.0
    );
    assert!(
        metrics
            .keys()
            .any(|k| k.starts_with("meridian_probe_duration_seconds_bucket{check=\"closed\""))
    );

    let s = server.status().await;
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert!(s["uptime_seconds"].as_f64().expect("uptime") >= 0.0);
    assert!(s["started_at"].as_str().expect("started_at").ends_with('Z'));
    let zone = &s["zones"][0];
    assert_eq!(
        (&zone["origin"], &zone["serial"]),
        (&json!(ZONE), &json!(1))
    );
    assert!(zone["file"].as_str().expect("file").ends_with("zone.toml"));
    assert!(zone["loaded_at"].is_string());
    let pools = s["pools"].as_array().expect("pools");
    assert_eq!(pools.len(), 3);
    let primary = pools
        .iter()
        .find(|p| p["pool"] == "primary")
        .expect("primary");
    assert_eq!(primary["zone"], ZONE);
    assert_eq!(primary["up"], true);
    assert_eq!(primary["override"], Value::Null);
    assert_eq!(primary["check"], Value::Null);
    assert_eq!(primary["endpoints"][0]["address"], PRIMARY);
    assert_eq!(primary["endpoints"][0]["state"], "up");
    let dead = pools.iter().find(|p| p["pool"] == "dead").expect("dead");
    assert_eq!(
        (&dead["check"], &dead["min_healthy"]),
        (&json!("closed"), &json!(1))
    );
    let e = &dead["endpoints"][0];
    assert_eq!(e["address"], "198.51.100.3");
    assert_eq!(e["probe_address"], "127.0.0.1");
    assert_eq!(e["state"], "down");
    assert_eq!(e["last_result"], "fail");
    assert!(e["last_error"].is_string(), "{e}");
    assert!(
        e["last_rtt_ms"].is_number() && e["last_at"].is_string(),
        "{e}"
    );
    assert!(e["failures"].as_u64().expect("failures") >= 1);
    assert_eq!(e["passes"], 0);
    assert_eq!(s["overrides"], json!([]));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_answers_from_live_health_and_rejects_bad_parameters() {
    let dir = TempDir::new("explain");
    std::fs::write(dir.zone_file(), zone_toml(1, closed_port())).expect("write zone");
    let server = Server::start(settings(&dir, None)).await;

    let (code, e) = server
        .get_json(&format!("/v1/explain?name=api.{ZONE}&client=192.0.2.7"))
        .await;
    assert_eq!(code, 200, "{e}");
    assert_eq!(
        (&e["name"], &e["type"], &e["client"]),
        (
            &json!(format!("api.{ZONE}")),
            &json!("A"),
            &json!("192.0.2.7")
        )
    );
    assert_eq!(e["policy"], "api");
    assert_eq!(e["answers"][0]["data"], PRIMARY);
    assert!(e["trace"].as_array().is_some_and(|t| !t.is_empty()), "{e}");
    assert!(
        e["text"].as_str().expect("text").contains("policy api"),
        "{e}"
    );

    let (code, e) = server
        .get_json(&format!(
            "/v1/explain?name=api.{ZONE}&type=aaaa&client=81.2.69.142/24"
        ))
        .await;
    assert_eq!(code, 200, "{e}");
    assert_eq!(
        (&e["type"], &e["ecs"]),
        (&json!("AAAA"), &json!("81.2.69.0/24"))
    );

    // Live health: once the probes take `dead` down, `tail` moves on to `secondary`.
    wait_dead_down(&server).await;
    let (_, e) = server
        .get_json(&format!("/v1/explain?name=tail.{ZONE}&client=192.0.2.7"))
        .await;
    assert_eq!(e["answers"][0]["data"], SECONDARY, "{e}");

    for query in [
        "client=192.0.2.7".to_string(),
        "name=&client=192.0.2.7".to_string(),
        format!("name=api.{ZONE}&type=BOGUS&client=192.0.2.7"),
        format!("name=api.{ZONE}&client=not-an-address"),
        format!("name=api.{ZONE}&client=192.0.2.7/33"),
        "name=a..b&client=192.0.2.7".to_string(),
    ] {
        let (code, body) = server.get_json(&format!("/v1/explain?{query}")).await;
        assert_eq!(code, 400, "{query}: {body}");
        assert!(body["error"].is_string(), "{query}: {body}");
    }
    server.stop().await;
}

/// SPEC §7: `/v1/explain` lists every endpoint the policy can answer with its probe's last
/// result and RTT: a TCP check on a real listener passes, one on a closed port fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_shows_each_endpoints_last_probe_rtt() {
    let dir = TempDir::new("explain-rtt");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a live backend");
    let open = listener.local_addr().expect("addr").port();
    let zone = format!(
        "{}\n[pools.live]\nA = [\"198.51.100.4\"]\ncheck = \"open\"\nprobe_address = {{ \"198.51.100.4\" = \"127.0.0.1\" }}\n\
         [checks.open]\nkind = \"tcp\"\nport = {open}\ninterval = \"1s\"\ntimeout = \"500ms\"\nrise = 1\nfall = 1\n\
         [policies.both]\nfailover = [\"dead\", \"live\"]\n",
        zone_toml(1, closed_port())
    );
    std::fs::write(dir.zone_file(), zone).expect("write zone");
    let server = Server::start(settings(&dir, None)).await;
    let e = poll("both probes to report", || async {
        let (_, e) = server
            .get_json(&format!("/v1/explain?name=both.{ZONE}&client=192.0.2.7"))
            .await;
        let results: Vec<&Value> = e["endpoints"]
            .as_array()?
            .iter()
            .map(|x| &x["last_result"])
            .collect();
        (results == [&json!("fail"), &json!("ok")]).then_some(e)
    })
    .await;
    let (dead, live) = (&e["endpoints"][0], &e["endpoints"][1]);
    assert_eq!(
        (&dead["pool"], &dead["address"], &dead["state"]),
        (&json!("dead"), &json!("198.51.100.3"), &json!("down")),
        "{e}"
    );
    assert_eq!(
        (&live["pool"], &live["address"], &live["state"]),
        (&json!("live"), &json!("198.51.100.4"), &json!("up")),
        "{e}"
    );
    for x in [dead, live] {
        let rtt = x["last_rtt_ms"].as_f64().unwrap_or(-1.0);
        assert!((0.0..500.0).contains(&rtt), "{x}");
    }
    assert_eq!(e["answers"][0]["data"], "198.51.100.4", "{e}");
    let text = e["text"].as_str().expect("text");
    assert!(
        text.contains("    dead 198.51.100.3: down, last probe fail in ")
            && text.contains("    live 198.51.100.4: up, last probe ok in "),
        "{text}"
    );
    drop(listener);
    server.stop().await;
}

/// SPEC §5: editing a check keeps its endpoints' last verdict. The edit makes the check slow
/// to fall (3 failures, 2 s apart): had the reload reset the dead endpoint to unknown (= up),
/// `tail` would answer it for seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_a_check_keeps_the_last_verdict() {
    let dir = TempDir::new("edit-check");
    let port = closed_port();
    std::fs::write(dir.zone_file(), zone_toml(1, port)).expect("write zone");
    let server = Server::start(settings(&dir, None)).await;
    wait_dead_down(&server).await;
    assert_eq!(server.resolve(&format!("tail.{ZONE}")).await, [SECONDARY]);
    let edited = zone_toml(2, port)
        .replace("interval = \"1s\"", "interval = \"2s\"")
        .replace("fall = 1", "fall = 3");
    std::fs::write(dir.zone_file(), edited).expect("edit the check");
    let (code, body) = server
        .change(reqwest::Method::POST, "/v1/reload", None, None)
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        server.resolve(&format!("tail.{ZONE}")).await,
        [SECONDARY],
        "the dead endpoint came back up with the edited check"
    );
    let s = server.status().await;
    let dead = s["pools"]
        .as_array()
        .expect("pools")
        .iter()
        .find(|p| p["pool"] == "dead")
        .expect("dead pool")
        .clone();
    assert_eq!(dead["up"], false, "{dead}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_new_serials_or_keeps_the_old_config() {
    let dir = TempDir::new("reload");
    let port = closed_port();
    std::fs::write(dir.zone_file(), zone_toml(1, port)).expect("write zone");
    let server = Server::start(settings(&dir, None)).await;
    let post = reqwest::Method::POST;

    std::fs::write(
        dir.zone_file(),
        zone_toml(2, port).replace(PRIMARY, "198.51.100.11"),
    )
    .expect("edit zone");
    let (code, body) = server.change(post.clone(), "/v1/reload", None, None).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body, json!({"zones": [{"origin": ZONE, "serial": 2}]}));
    assert_eq!(
        server.resolve(&format!("api.{ZONE}")).await,
        ["198.51.100.11"]
    );

    // A broken zone: 422 with every error at file:line:col; the serial-2 config keeps serving.
    let broken = zone_toml(3, port)
        .replace(PRIMARY, "198.51.100.11")
        .replace(
            &format!("A = [\"{SECONDARY}\"]"),
            "A = [\"not-an-address\"]\nbogus_key = 1",
        );
    std::fs::write(dir.zone_file(), broken).expect("break zone");
    let (code, body) = server.change(post, "/v1/reload", None, None).await;
    assert_eq!(code, 422, "{body}");
    let errors = body["errors"].as_array().expect("errors");
    assert!(errors.len() >= 2, "{body}");
    for e in errors {
        let e = e.as_str().expect("error text");
        let at = e
            .split("zone.toml:")
            .nth(1)
            .unwrap_or_else(|| panic!("no file: {e}"));
        let mut pos = at.splitn(3, ':');
        assert!(
            pos.next().is_some_and(|l| l.parse::<u32>().is_ok()),
            "no line: {e}"
        );
        assert!(
            pos.next().is_some_and(|c| c.parse::<u32>().is_ok()),
            "no column: {e}"
        );
    }
    assert_eq!(
        server.resolve(&format!("api.{ZONE}")).await,
        ["198.51.100.11"]
    );
    assert_eq!(server.status().await["zones"][0]["serial"], 2);
    let m = server.metrics().await;
    assert_eq!(
        (
            m["meridian_reloads_total"],
            m["meridian_reload_errors_total"]
        ),
        (1.0, 1.0)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overrides_need_the_token_move_answers_and_survive_a_restart() {
    let dir = TempDir::new("token");
    std::fs::write(dir.zone_file(), zone_toml(1, closed_port())).expect("write zone");
    let token_file = dir.0.join("token");
    std::fs::write(&token_file, "  t0ken-for-tests\n").expect("write token");
    let server = Server::start(settings(&dir, Some(token_file.clone()))).await;
    let (put, delete) = (reqwest::Method::PUT, reqwest::Method::DELETE);
    let path = format!("/v1/overrides/{ZONE}/primary");
    let down = Some(r#"{"state":"down"}"#);
    let token = Some("t0ken-for-tests");

    for (who, code) in [
        (None, 401),
        (Some("wrong"), 401),
        (Some("t0ken-for-tests-"), 401),
    ] {
        let (c, body) = server.change(put.clone(), &path, who, down).await;
        assert_eq!(c, code, "{who:?}: {body}");
        assert!(body["error"].is_string(), "{body}");
    }
    let (c, _) = server
        .change(reqwest::Method::POST, "/v1/reload", None, None)
        .await;
    assert_eq!(c, 401);
    assert_eq!(server.resolve(&format!("api.{ZONE}")).await, [PRIMARY]);

    for (p, body, code) in [
        (path.as_str(), Some("{}"), 400),
        (path.as_str(), Some(r#"{"state":"sideways"}"#), 400),
        (path.as_str(), Some("not json"), 400),
        (path.as_str(), None, 400),
        ("/v1/overrides/nozone.test./primary", down, 404),
        (&format!("/v1/overrides/{ZONE}/nopool"), down, 404),
    ] {
        let (c, v) = server.change(put.clone(), p, token, body).await;
        assert_eq!(c, code, "{p} {body:?}: {v}");
        assert!(v["error"].is_string(), "{v}");
    }

    // Down: the failover policy answers from the next pool, over real DNS.
    let (c, v) = server
        .change(put.clone(), "/v1/overrides/ADMIN.test/primary", token, down)
        .await;
    assert_eq!(c, 200, "{v}");
    for (k, want) in [
        ("zone", json!(ZONE)),
        ("pool", json!("primary")),
        ("state", json!("down")),
        ("previous", json!(null)),
        ("up", json!(false)),
        // Who, why, when: the peer when the body names nobody.
        ("by", json!("127.0.0.1")),
        ("why", json!(null)),
        ("until", json!(null)),
    ] {
        assert_eq!(v[k], want, "{k}: {v}");
    }
    assert!(v["at"].is_string(), "{v}");
    assert_eq!(server.resolve(&format!("api.{ZONE}")).await, [SECONDARY]);
    let m = server.metrics().await;
    assert_eq!(
        m[&format!("meridian_pool_override{{zone=\"{ZONE}\",pool=\"primary\",state=\"down\"}}")],
        1.0
    );
    assert_eq!(
        m[&format!("meridian_pool_up{{zone=\"{ZONE}\",pool=\"primary\"}}")],
        0.0
    );

    // Delete: back to the probes (no check: up).
    let (c, v) = server.change(delete.clone(), &path, token, None).await;
    assert_eq!(c, 200, "{v}");
    assert_eq!(
        (&v["state"], &v["previous"], &v["up"]),
        (&Value::Null, &json!("down"), &json!(true))
    );
    assert_eq!(server.resolve(&format!("api.{ZONE}")).await, [PRIMARY]);
    let (c, _) = server.change(delete, &path, None, None).await;
    assert_eq!(c, 401);

    // Drain, then restart on the same state dir: still pinned.
    let (c, v) = server
        .change(put, &path, token, Some(r#"{"state":"drain"}"#))
        .await;
    assert_eq!(c, 200, "{v}");
    server.stop().await;
    let server = Server::start(settings(&dir, Some(token_file))).await;
    let s = server.status().await;
    let listed = |o: &Value| -> Vec<(String, String, String, bool)> {
        o.as_array()
            .expect("overrides")
            .iter()
            .map(|e| {
                (
                    e["zone"].as_str().unwrap_or_default().to_string(),
                    e["pool"].as_str().unwrap_or_default().to_string(),
                    e["state"].as_str().unwrap_or_default().to_string(),
                    e["active"] == json!(true),
                )
            })
            .collect()
    };
    let want = vec![(
        ZONE.to_string(),
        "primary".to_string(),
        "drain".to_string(),
        true,
    )];
    assert_eq!(listed(&s["overrides"]), want, "{s}");
    let primary = s["pools"]
        .as_array()
        .expect("pools")
        .iter()
        .find(|p| p["pool"] == "primary")
        .cloned()
        .expect("primary");
    assert_eq!(
        (&primary["override"], &primary["up"]),
        (&json!("drain"), &json!(false))
    );
    assert_eq!(server.resolve(&format!("api.{ZONE}")).await, [SECONDARY]);
    let (c, v) = server.get_json("/v1/overrides").await;
    assert_eq!(c, 200, "{v}");
    assert_eq!(listed(&v["overrides"]), want, "{v}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_loopback_peers_may_change() {
    let dir = TempDir::new("loopback");
    std::fs::write(dir.zone_file(), zone_toml(1, closed_port())).expect("write zone");
    let server = Server::start(settings(&dir, None)).await;
    let path = format!("/v1/overrides/{ZONE}/secondary");
    // The peer is 127.0.0.1: accepted with no header (a non-loopback peer's refusal:
    // changes_from_a_non_loopback_peer_are_refused_inside_a_namespace).
    let (c, v) = server
        .change(reqwest::Method::PUT, &path, None, Some(r#"{"state":"up"}"#))
        .await;
    assert_eq!(c, 200, "{v}");
    assert_eq!((&v["state"], &v["up"]), (&json!("up"), &json!(true)));
    let (c, v) = server
        .change(reqwest::Method::DELETE, &path, None, None)
        .await;
    assert_eq!(c, 200, "{v}");
    let (c, v) = server
        .change(reqwest::Method::POST, "/v1/reload", None, None)
        .await;
    assert_eq!(c, 200, "{v}");
    let (c, v) = server
        .change(reqwest::Method::GET, "/v1/reload", None, None)
        .await;
    assert_eq!(c, 405, "{v}");
    server.stop().await;
}

/// A documentation address (RFC 5737) given to the loopback device of a private network
/// namespace: a peer there that is not on loopback, with every packet inside the namespace.
const NETNS_ADDR: &str = "192.0.2.1";
/// Set for the inner run of [`changes_from_a_non_loopback_peer_are_refused_inside_a_namespace`].
const NETNS_ENV: &str = "MERIDIAN_TEST_IN_NETNS";

/// SPEC §7 over a real socket: without a token file, a change from a non-loopback peer is
/// refused (403) while a read from it is served, and the same change from a loopback peer
/// on the same listener is applied. Runs this test binary again inside a new user and
/// network namespace (`unshare -rn`, no privilege needed), where
/// [`non_loopback_peer_inner`] gives `lo` the address [`NETNS_ADDR`].
#[test]
fn changes_from_a_non_loopback_peer_are_refused_inside_a_namespace() {
    let probe = std::process::Command::new("unshare")
        .args(["-rn", "true"])
        .status();
    assert!(
        probe.as_ref().is_ok_and(|s| s.success()),
        "this test needs unprivileged user and network namespaces (`unshare -rn true`): {probe:?}"
    );
    let exe = std::env::current_exe().expect("the test binary");
    let out = std::process::Command::new("unshare")
        .arg("-rn")
        .arg(&exe)
        .args([
            "--exact",
            "admin::non_loopback_peer_inner",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(NETNS_ENV, "1")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("unshare runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("1 passed"),
        "the inner test must have run:\n{text}"
    );
}

/// The part of the test above that runs inside the namespace; on its own it does nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by changes_from_a_non_loopback_peer_are_refused_inside_a_namespace"]
async fn non_loopback_peer_inner() {
    if std::env::var_os(NETNS_ENV).is_none() {
        return;
    }
    for args in [
        &["link", "set", "lo", "up"][..],
        &["addr", "add", &format!("{NETNS_ADDR}/32"), "dev", "lo"],
    ] {
        let status = std::process::Command::new("ip")
            .args(args)
            .status()
            .expect("ip (iproute2) runs");
        assert!(status.success(), "ip {args:?}");
    }
    let dir = TempDir::new("netns");
    std::fs::write(dir.zone_file(), zone_toml(1, closed_port())).expect("write zone");
    let mut s = settings(&dir, None);
    s.admin = Some(format!("{NETNS_ADDR}:0").parse().expect("addr"));
    let server = Server::start(s).await;
    let client = |from: &str| {
        reqwest::Client::builder()
            .no_proxy()
            .local_address(Some(ip_addr(from)))
            .timeout(REQUEST_TIMEOUT)
            .build()
            .expect("http client")
    };
    let url = format!("{}/v1/overrides/{ZONE}/primary", server.base);
    let outside = client(NETNS_ADDR);
    let refused = outside
        .put(&url)
        .body(r#"{"state":"down"}"#)
        .send()
        .await
        .expect("put");
    assert_eq!(refused.status().as_u16(), 403);
    let body = refused.text().await.expect("body");
    assert!(body.contains("loopback only"), "{body}");
    for (method, path) in [
        (reqwest::Method::DELETE, url.clone()),
        (reqwest::Method::POST, format!("{}/v1/reload", server.base)),
    ] {
        let r = outside.request(method, &path).send().await.expect("change");
        assert_eq!(r.status().as_u16(), 403, "{path}");
    }
    // Reads stay open to it, and nothing changed.
    let status = outside
        .get(format!("{}/v1/status", server.base))
        .send()
        .await
        .expect("status");
    assert_eq!(status.status().as_u16(), 200);
    let status = parse_json(&status.text().await.expect("body"));
    assert_eq!(status["overrides"], json!([]), "{status}");
    assert_eq!(server.resolve(&format!("api.{ZONE}")).await, [PRIMARY]);
    // The same change from loopback, on the same listener, is applied.
    let ok = client("127.0.0.1")
        .put(&url)
        .body(r#"{"state":"down"}"#)
        .send()
        .await
        .expect("put");
    assert_eq!(ok.status().as_u16(), 200);
    assert_eq!(server.resolve(&format!("api.{ZONE}")).await, [SECONDARY]);
    server.stop().await;
}

fn ip_addr(s: &str) -> std::net::IpAddr {
    s.parse().expect("address")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_overrides_take_one_address_out_and_survive_a_restart() {
    let dir = TempDir::new("endpoint");
    let zone = format!(
        r#"origin = "{ZONE}"
[soa]
mname = "ns1.{ZONE}"
rname = "hostmaster.{ZONE}"
[pools.multi]
A = ["198.51.100.10", "198.51.100.11"]
[pools.backup]
A = ["198.51.100.20"]
[policies.web]
failover = ["multi", "backup"]
"#
    );
    std::fs::write(dir.zone_file(), zone).expect("write zone");
    let name = format!("web.{ZONE}");
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let server = Server::start(settings(&dir, None)).await;
    assert_eq!(
        sorted(server.resolve(&name).await),
        ["198.51.100.10", "198.51.100.11"]
    );
    let path = format!("/v1/overrides/{ZONE}/multi/198.51.100.11");
    let (c, v) = server
        .change(
            reqwest::Method::PUT,
            &path,
            None,
            Some(r#"{"state":"drain"}"#),
        )
        .await;
    assert_eq!(c, 200, "{v}");
    assert_eq!(v["address"], json!("198.51.100.11"));
    assert_eq!(server.resolve(&name).await, ["198.51.100.10"]);
    let status = server.status().await;
    let endpoint = status["pools"]
        .as_array()
        .expect("pools")
        .iter()
        .find(|p| p["pool"] == "multi")
        .and_then(|p| {
            p["endpoints"]
                .as_array()?
                .iter()
                .find(|e| e["address"] == "198.51.100.11")
                .cloned()
        })
        .expect("the endpoint in /v1/status");
    assert_eq!(
        (&endpoint["override"], &endpoint["answered"]),
        (&json!("drain"), &json!(false))
    );

    let (c, _) = server
        .change(
            reqwest::Method::PUT,
            &format!("/v1/overrides/{ZONE}/multi/192.0.2.1"),
            None,
            Some(r#"{"state":"down"}"#),
        )
        .await;
    assert_eq!(c, 404, "not an endpoint of the pool");
    let (c, _) = server
        .change(
            reqwest::Method::PUT,
            &format!("/v1/overrides/{ZONE}/multi/nope"),
            None,
            Some(r#"{"state":"down"}"#),
        )
        .await;
    assert_eq!(c, 400, "not an address");

    server.stop().await;
    let server = Server::start(settings(&dir, None)).await;
    assert_eq!(
        server.resolve(&name).await,
        ["198.51.100.10"],
        "kept across a restart"
    );
    let (c, v) = server
        .change(reqwest::Method::DELETE, &path, None, None)
        .await;
    assert_eq!(c, 200, "{v}");
    assert_eq!(
        sorted(server.resolve(&name).await),
        ["198.51.100.10", "198.51.100.11"]
    );
    server.stop().await;
}
