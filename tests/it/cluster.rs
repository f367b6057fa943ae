//! Several instances sharing verdicts and overrides through a real etcd (SPEC §10, issue 10).
//!
//! Each test starts its own etcd 3 (Debian `etcd-server`) on loopback high ports with a
//! temporary data dir and stops it by PID; Meridian instances run in-process on 127.0.0.1 with
//! their probes bound to 127.0.0.11/.12/.13, against a backend that fails only for chosen
//! source addresses. Lease TTLs are 2 s (the setting's floor) to keep the tests short.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::Message;
use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};
use meridian::app::{Running, start};
use meridian::settings::{ClusterSettings, LogFormat, Settings};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;

use crate::support::{Query, free_port, temp_dir, udp};

/// etcd's binary (Debian `etcd-server`).
const ETCD: &str = "/usr/bin/etcd";
/// How long etcd may take to serve after a start (notes/etcd.md §1: 1.2–1.6 s to elect
/// itself at the default election timeout; these tests use a shorter one), with room for a
/// machine busy with a parallel test run.
const ETCD_READY: Duration = Duration::from_secs(30);
/// The lease TTL of these tests (the setting's floor).
const LEASE_TTL: Duration = Duration::from_secs(2);
/// Every admin request is bounded by this.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// Probe source addresses of the three instances.
const SOURCES: [&str; 3] = ["127.0.0.11", "127.0.0.12", "127.0.0.13"];

// ---------------------------------------------------------------------------------------
// etcd, started and stopped by PID

struct Etcd {
    child: Option<Child>,
    dir: PathBuf,
    client_port: u16,
    peer_port: u16,
}

impl Etcd {
    async fn start() -> Etcd {
        let dir = temp_dir("etcd");
        let mut e = Etcd {
            child: None,
            dir,
            client_port: free_port(),
            peer_port: free_port(),
        };
        e.spawn().await;
        e
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    async fn spawn(&mut self) {
        let client = self.url();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("etcd.log"))
            .expect("etcd log");
        let child = Command::new(ETCD)
            .args(["--name", "t", "--data-dir"])
            .arg(self.dir.join("data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .arg(format!("--initial-cluster=t={peer}"))
            .args(["--initial-cluster-state", "new"])
            // A single member elects itself faster with short timeouts.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd starts (apt-get install etcd-server)");
        self.child = Some(child);
        let deadline = Instant::now() + ETCD_READY;
        while Instant::now() < deadline {
            if let Ok(mut c) = self.client().await
                && tokio::time::timeout(Duration::from_secs(1), c.get("probe", None))
                    .await
                    .is_ok_and(|r| r.is_ok())
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "etcd did not serve within {ETCD_READY:?}; see {}",
            self.dir.display()
        );
    }

    async fn client(&self) -> Result<etcd_client::Client, etcd_client::Error> {
        let opts = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(1))
            .with_timeout(Duration::from_secs(1));
        etcd_client::Client::connect([self.url()], Some(opts)).await
    }

    /// SIGKILL by PID: the harshest stop.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------
// A backend that fails for chosen probe sources

#[derive(Clone)]
struct Backend {
    port: u16,
    failing: Arc<Mutex<HashSet<IpAddr>>>,
    tasks: Arc<Vec<JoinHandle<()>>>,
}

impl Backend {
    /// HTTP on 127.0.0.1 and 127.0.0.2, same port: the first answers 503 to the sources in
    /// `failing`, the second always 200.
    async fn start() -> Backend {
        let failing = Arc::new(Mutex::new(HashSet::new()));
        // The same port on both addresses; retry when the second is taken.
        for _ in 0..20 {
            let first = listen("127.0.0.1", 0);
            let port = first.local_addr().expect("addr").port();
            let Ok(second) = std::panic::catch_unwind(|| listen("127.0.0.2", port)) else {
                continue;
            };
            // Only the backend of 192.0.2.1 (on 127.0.0.1) fails for chosen sources.
            let tasks = vec![
                tokio::spawn(serve(first, Arc::clone(&failing))),
                tokio::spawn(serve(second, Arc::new(Mutex::new(HashSet::new())))),
            ];
            return Backend {
                port,
                failing,
                tasks: Arc::new(tasks),
            };
        }
        panic!("no port free on both 127.0.0.1 and 127.0.0.2");
    }

    fn fail_for(&self, sources: &[&str]) {
        *self.failing.lock().expect("failing") =
            sources.iter().map(|s| s.parse().expect("ip")).collect();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if Arc::strong_count(&self.tasks) == 1 {
            for t in self.tasks.iter() {
                t.abort();
            }
        }
    }
}

fn listen(ip: &str, port: u16) -> TcpListener {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_reuseaddr(true).expect("reuseaddr");
    socket
        .bind(SocketAddr::new(ip.parse().expect("ip"), port))
        .expect("bind backend");
    socket.listen(256).expect("listen")
}

async fn serve(listener: TcpListener, failing: Arc<Mutex<HashSet<IpAddr>>>) {
    loop {
        let Ok((mut conn, peer)) = listener.accept().await else {
            return;
        };
        let fail = failing.lock().expect("failing").contains(&peer.ip());
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.read(&mut buf)).await;
            let reply: &[u8] = if fail {
                b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\nconnection: close\r\n\r\nfail"
            } else {
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
            };
            let _ = conn.write_all(reply).await;
        });
    }
}

// ---------------------------------------------------------------------------------------
// Instances

const ZONE: &str = r#"
origin = "c.test."
[soa]
mname = "ns1.c.test."
rname = "hostmaster.c.test."
serial = 1
[records.ns1]
A = ["192.0.2.53"]
[pools.app]
A = ["192.0.2.1", "192.0.2.2"]
check = "web"
probe_address = { "192.0.2.1" = "127.0.0.1", "192.0.2.2" = "127.0.0.2" }
[pools.a]
A = ["198.51.100.1"]
[pools.b]
A = ["198.51.100.2"]
[pools.c]
A = ["198.51.100.3"]
[checks.web]
kind = "http"
port = PORT
path = "/health"
interval = "200ms"
timeout = "150ms"
rise = 1
fall = 1
[policies.www]
failover = ["app"]
[policies.sticky]
weighted = { a = 1, b = 1, c = 1 }
sticky = true
"#;

struct Instance {
    name: String,
    running: Running,
    dns: SocketAddr,
    admin: String,
    http: reqwest::Client,
}

fn zones(backend: &Backend) -> PathBuf {
    let dir = temp_dir("cluster-zones");
    std::fs::write(
        dir.join("c.toml"),
        ZONE.replace("PORT", &backend.port.to_string()),
    )
    .expect("write zone");
    dir
}

fn cluster_settings(endpoint: &str, prefix: &str) -> ClusterSettings {
    ClusterSettings {
        endpoints: vec![endpoint.to_string()],
        prefix: prefix.to_string(),
        lease_ttl: LEASE_TTL,
    }
}

impl Instance {
    async fn start(name: &str, zones: &Path, cluster: ClusterSettings, source: &str) -> Instance {
        Instance::start_with(
            name,
            zones,
            Some(cluster),
            source,
            &temp_dir("cluster-state"),
        )
        .await
    }

    async fn start_with(
        name: &str,
        zones: &Path,
        cluster: Option<ClusterSettings>,
        source: &str,
        state: &Path,
    ) -> Instance {
        meridian::health::probe::install_crypto_provider();
        let settings = Settings {
            listen: vec!["127.0.0.1:0".parse().expect("addr")],
            admin: Some("127.0.0.1:0".parse().expect("addr")),
            admin_token_file: None,
            zones: zones.to_path_buf(),
            geoip: None,
            asn: None,
            state: state.to_path_buf(),
            log_format: LogFormat::Text,
            watch_zones: false,
            instance: name.to_string(),
            cluster,
            probe_source: Some(source.parse().expect("source")),
            // Tests fire many queries from 127.0.0.1; the RRL tests turn it on.
            rrl: meridian::dns::rrl::Config::off(),
            udp_workers: 2,
        };
        let running = start(settings).await.expect("instance starts");
        let dns = running.dns[0];
        let admin = format!("http://{}", running.admin.expect("admin"));
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(HTTP_TIMEOUT)
            .build()
            .expect("client");
        Instance {
            name: name.to_string(),
            running,
            dns,
            admin,
            http,
        }
    }

    async fn get(&self, path: &str) -> Value {
        let resp = self
            .http
            .get(format!("{}{path}", self.admin))
            .send()
            .await
            .expect("admin GET");
        serde_json::from_str(&resp.text().await.expect("body")).expect("json")
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&str>,
        if_match: Option<&str>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.admin));
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        if let Some(m) = if_match {
            req = req.header("if-match", m);
        }
        let resp = req.send().await.expect("admin request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn metric(&self, name: &str) -> Option<f64> {
        let text = self
            .http
            .get(format!("{}/metrics", self.admin))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("body");
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    async fn status_cluster(&self) -> Value {
        self.get("/v1/status").await["cluster"].clone()
    }

    /// The A answer for `name` (sorted); `None` when no reply came.
    async fn answer(&self, name: &str) -> Option<Vec<String>> {
        let bytes = udp(self.dns, &Query::new(name, 1).packet()).await?;
        let m = Message::from_vec(&bytes).expect("reply parses");
        let mut v: Vec<String> = m.answers.iter().map(|r| r.data.to_string()).collect();
        v.sort();
        Some(v)
    }

    async fn stop(self) {
        self.running.shutdown().await;
    }
}

/// Poll `f` every 50 ms until it holds; the time it took, or a panic naming `what`.
async fn until<F, Fut>(what: &str, limit: Duration, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if f().await {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not within {limit:?}");
}

/// A fresh key prefix per test, so tests sharing nothing can still never collide.
fn prefix(tag: &str) -> String {
    format!("/meridian-it-{}-{tag}/", std::process::id())
}

async fn three(etcd_url: &str, zones: &Path, tag: &str) -> Vec<Instance> {
    let p = prefix(tag);
    let mut out = Vec::new();
    for (i, source) in SOURCES.iter().enumerate() {
        out.push(
            Instance::start(
                &format!("m{}", i + 1),
                zones,
                cluster_settings(etcd_url, &p),
                source,
            )
            .await,
        );
    }
    for m in &out {
        until(
            &format!("{} sees three instances", m.name),
            Duration::from_secs(10),
            || async {
                let c = m.status_cluster().await;
                c["connected"] == true && c["instances"].as_array().map_or(0, |a| a.len()) == 3
            },
        )
        .await;
    }
    out
}

const BOTH: [&str; 2] = ["192.0.2.1", "192.0.2.2"];
const ONE: [&str; 1] = ["192.0.2.2"];

async fn all_answer(ms: &[Instance], want: &[&str]) -> bool {
    for m in ms {
        if m.answer("www.c.test.").await.as_deref()
            != Some(&want.iter().map(|s| s.to_string()).collect::<Vec<_>>()[..])
        {
            return false;
        }
    }
    true
}

// ---------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_share_verdicts_overrides_and_sticky_answers() {
    let etcd = Etcd::start().await;
    let backend = Backend::start().await;
    let zones = zones(&backend);
    let ms = three(&etcd.url(), &zones, "share").await;
    until(
        "every endpoint up everywhere",
        Duration::from_secs(5),
        || all_answer(&ms, &BOTH),
    )
    .await;

    // NSID names the instance that answered (RFC 5001).
    for m in &ms {
        let mut q = Query::new("www.c.test.", 1);
        q.edns = Some(1232);
        q.options.push((3, Vec::new()));
        let bytes = udp(m.dns, &q.packet()).await.expect("reply");
        let reply = Message::from_vec(&bytes).expect("parses");
        let nsid = reply
            .edns
            .as_ref()
            .and_then(|e| e.option(EdnsCode::NSID).cloned())
            .expect("an NSID option");
        let EdnsOption::NSID(data) = nsid else {
            panic!("an NSID option, got {nsid:?}");
        };
        assert_eq!(String::from_utf8_lossy(data.as_ref()), m.name);
    }

    // 300 ECS clients get the same sticky answer from every instance.
    for i in 0..300u32 {
        let client: IpAddr = format!("10.{}.{}.0", i / 250, i % 250).parse().expect("ip");
        let q = Query::new("sticky.c.test.", 1).ecs(client, 24);
        let mut seen = Vec::new();
        for m in &ms {
            let bytes = udp(m.dns, &q.packet()).await.expect("a reply");
            let reply = Message::from_vec(&bytes).expect("parses");
            seen.push(crate::support::answers(&reply));
        }
        assert!(
            seen.iter().all(|a| *a == seen[0] && a.len() == 1),
            "client {client}: {seen:?}"
        );
    }

    // A minority failure (only m1's probes fail) keeps the endpoint everywhere.
    backend.fail_for(&[SOURCES[0]]);
    until(
        "m1 sees its own probe fail",
        Duration::from_secs(3),
        || async {
            let e = ms[0]
                .get("/v1/explain?name=www.c.test.&client=192.0.2.99")
                .await;
            e["cluster"]
                .as_array()
                .and_then(|c| c.iter().find(|l| l["address"] == "192.0.2.1"))
                .is_some_and(|l| l["verdicts"][0]["state"] == "down")
        },
    )
    .await;
    // Give the verdict time to reach the others, then check that nobody dropped it.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        all_answer(&ms, &BOTH).await,
        "a minority failure must keep the endpoint"
    );
    let e = ms[1]
        .get("/v1/explain?name=www.c.test.&client=192.0.2.99")
        .await;
    let line = e["cluster"]
        .as_array()
        .and_then(|c| c.iter().find(|l| l["address"] == "192.0.2.1"))
        .cloned()
        .expect("explain shows the cluster's verdicts");
    assert_eq!(line["result"], "up", "{line}");
    assert_eq!(line["down"], 1, "{line}");
    assert_eq!(line["reporting"], 3, "{line}");
    assert!(
        e["text"]
            .as_str()
            .expect("text")
            .contains("quorum majority"),
        "{e}"
    );

    // A majority failure removes it everywhere within 3 s, also on m3 whose probes pass.
    backend.fail_for(&SOURCES[..2]);
    let took = until(
        "majority failure removes the endpoint everywhere",
        Duration::from_secs(3),
        || all_answer(&ms, &ONE),
    )
    .await;
    eprintln!("majority failure applied everywhere in {took:?}");
    backend.fail_for(&[]);
    until("recovered everywhere", Duration::from_secs(3), || {
        all_answer(&ms, &BOTH)
    })
    .await;

    // An override set on m1 applies on m2 and m3 within 1 s.
    let (status, body) = ms[0]
        .send(
            reqwest::Method::PUT,
            "/v1/overrides/c.test/app/192.0.2.1",
            Some(r#"{"state": "down", "by": "alice", "why": "maintenance"}"#),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let revision = body["revision"].as_i64().expect("a revision");
    let took = until(
        "override on m1 applies everywhere",
        Duration::from_secs(1),
        || all_answer(&ms, &ONE),
    )
    .await;
    eprintln!("override applied everywhere in {took:?}");
    let listed = ms[2].get("/v1/overrides").await;
    let entry = &listed["overrides"][0];
    assert_eq!(
        (
            entry["state"].as_str(),
            entry["by"].as_str(),
            entry["why"].as_str()
        ),
        (Some("down"), Some("alice"), Some("maintenance")),
        "{listed}"
    );
    assert_eq!(entry["revision"].as_i64(), Some(revision));
    assert!(entry["at"].is_string());

    // A writer holding a stale revision gets 409 and the current value.
    let (status, body) = ms[1]
        .send(
            reqwest::Method::PUT,
            "/v1/overrides/c.test/app/192.0.2.1",
            Some(r#"{"state": "up"}"#),
            Some(&(revision - 1).to_string()),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["current"]["by"], "alice", "{body}");
    assert_eq!(body["current"]["revision"].as_i64(), Some(revision));
    // With the current revision it goes through; clearing brings the endpoint back.
    let (status, body) = ms[1]
        .send(
            reqwest::Method::DELETE,
            "/v1/overrides/c.test/app/192.0.2.1",
            None,
            Some(&revision.to_string()),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    until("cleared everywhere", Duration::from_secs(1), || {
        all_answer(&ms, &BOTH)
    })
    .await;
    // The local copy follows etcd.
    let copy = std::fs::read_to_string(ms[2].running.control.settings.state.join("overrides.json"))
        .expect("local copy");
    assert!(!copy.contains("alice"), "{copy}");

    for m in ms {
        m.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn losing_etcd_loses_no_query_and_each_follows_its_local_view() {
    let mut etcd = Etcd::start().await;
    let backend = Backend::start().await;
    let zones = zones(&backend);
    let ms = three(&etcd.url(), &zones, "partition").await;
    until(
        "every endpoint up everywhere",
        Duration::from_secs(5),
        || all_answer(&ms, &BOTH),
    )
    .await;
    // An override set while connected survives in the local copy.
    let (status, _) = ms[0]
        .send(
            reqwest::Method::PUT,
            "/v1/overrides/c.test/b",
            Some(r#"{"state": "drain", "by": "bob"}"#),
            None,
        )
        .await;
    assert_eq!(status, 200);
    // Every instance has it before etcd goes away (the test is about keeping it, not about
    // a race with its propagation).
    for m in &ms {
        until(
            &format!("{} sees the drain", m.name),
            Duration::from_secs(3),
            || async {
                m.get("/v1/status").await["pools"]
                    .as_array()
                    .and_then(|p| p.iter().find(|p| p["pool"] == "b").cloned())
                    .is_some_and(|p| p["override"] == "drain")
            },
        )
        .await;
    }

    etcd.stop();
    let stopped = Instant::now();
    // Ask every instance continuously until all three say they are disconnected.
    let mut asked = 0;
    loop {
        for m in &ms {
            assert!(
                m.answer("www.c.test.").await.is_some(),
                "{} lost a query",
                m.name
            );
            asked += 1;
        }
        let mut disconnected = 0;
        for m in &ms {
            if m.metric("meridian_cluster_connected").await == Some(0.0) {
                disconnected += 1;
            }
        }
        if disconnected == ms.len() {
            break;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(10),
            "meridian_cluster_connected not 0 everywhere within 10 s"
        );
    }
    eprintln!(
        "all disconnected {:?} after etcd stopped; {asked} queries, none lost",
        stopped.elapsed()
    );
    let c = ms[0].status_cluster().await;
    assert_eq!(c["connected"], false, "{c}");
    assert!(c["since"].is_string());

    // Each follows its local view: only m1's probes fail, and only m1 drops the endpoint.
    backend.fail_for(&[SOURCES[0]]);
    until(
        "m1 follows its own probes",
        Duration::from_secs(3),
        || async {
            let a = ms[0].answer("www.c.test.").await;
            a.as_deref() == Some(&["192.0.2.2".to_string()][..])
        },
    )
    .await;
    for m in &ms[1..] {
        assert_eq!(
            m.answer("www.c.test.").await,
            Some(BOTH.map(String::from).to_vec())
        );
    }
    // The last known overrides still apply.
    let pool_b = ms[2].get("/v1/status").await["pools"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["pool"] == "b").cloned())
        .expect("pool b");
    assert_eq!(pool_b["override"], "drain", "{pool_b}");

    // etcd comes back: all three reconnect, re-publish, and the quorum applies again (one of
    // three failing is a minority, so m1 answers the endpoint again).
    etcd.spawn().await;
    for m in &ms {
        until(
            &format!("{} reconnects", m.name),
            Duration::from_secs(10),
            || async { m.metric("meridian_cluster_connected").await == Some(1.0) },
        )
        .await;
    }
    until(
        "quorum applies again after the restart",
        Duration::from_secs(5),
        || all_answer(&ms, &BOTH),
    )
    .await;
    for m in ms {
        m.stop().await;
    }
}

// ---------------------------------------------------------------------------------------
// The store loop's recovery, through a TCP proxy the test can cut

/// A TCP forwarder from a loopback port to etcd; `cut` drops every connection and refuses
/// new ones (as a network partition would), `restore` lets them through again.
struct Proxy {
    port: u16,
    up: Arc<std::sync::atomic::AtomicBool>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    task: JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::new(Mutex::new(Vec::new()));
        let (u, c) = (Arc::clone(&up), Arc::clone(&conns));
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut down, _)) = listener.accept().await else {
                    return;
                };
                if !u.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // dropped: the client sees a reset
                }
                let h = tokio::spawn(async move {
                    if let Ok(mut upstream) = TcpStream::connect(("127.0.0.1", upstream)).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut upstream).await;
                    }
                });
                c.lock().expect("conns").push(h);
            }
        });
        Proxy {
            port,
            up,
            conns,
            task,
        }
    }

    fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for h in self.conns.lock().expect("conns").drain(..) {
            h.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

fn counter(c: &Value, name: &str) -> u64 {
    c[name].as_u64().unwrap_or_else(|| panic!("{name} in {c}"))
}

fn override_json(by: &str) -> String {
    format!(r#"{{"state":"down","by":"{by}"}}"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn store_loop_resumes_relists_and_regrants() {
    let etcd = Etcd::start().await;
    let proxy = Proxy::start(etcd.client_port).await;
    let backend = Backend::start().await;
    let zones = zones(&backend);
    let p = prefix("recovery");
    let m = Instance::start(
        "solo",
        &zones,
        cluster_settings(&format!("http://127.0.0.1:{}", proxy.port), &p),
        SOURCES[0],
    )
    .await;
    let mut direct = etcd.client().await.expect("direct client");
    let key = |pool: &str| format!("{p}v1/overrides/c.test./{pool}");
    let verdicts = format!("{p}v1/verdicts/solo/");
    let mref = &m;
    until(
        "solo connected with its verdicts in etcd",
        Duration::from_secs(10),
        || {
            let mut d = direct.clone();
            let v = verdicts.clone();
            let m = mref;
            async move {
                m.status_cluster().await["connected"] == true
                    && d.get(v, Some(etcd_client::GetOptions::new().with_prefix()))
                        .await
                        .is_ok_and(|r| r.kvs().len() == 2)
            }
        },
    )
    .await;
    let c0 = m.status_cluster().await;
    assert_eq!(
        (counter(&c0, "lease_grants"), counter(&c0, "relists")),
        (1, 1),
        "{c0}"
    );

    let has_override = |by: &'static str| {
        let m = &m;
        move || async move {
            m.get("/v1/overrides").await["overrides"]
                .as_array()
                .is_some_and(|o| o.iter().any(|e| e["by"] == by))
        }
    };

    // 1. A short cut (less than a TTL): the watch resumes from its last revision and gets
    //    the change made meanwhile, with no new list and the same lease.
    proxy.cut();
    direct
        .put(key("a"), override_json("during-cut"), None)
        .await
        .expect("put");
    tokio::time::sleep(Duration::from_millis(700)).await;
    proxy.restore();
    until(
        "change made during the cut arrives",
        Duration::from_secs(5),
        has_override("during-cut"),
    )
    .await;
    let c1 = m.status_cluster().await;
    assert!(counter(&c1, "watch_resumes") >= 1, "{c1}");
    assert_eq!(counter(&c1, "relists"), 1, "resumed, not re-listed: {c1}");
    assert_eq!(counter(&c1, "lease_grants"), 1, "{c1}");

    // 2. The revision it would resume from is compacted meanwhile: it lists again.
    proxy.cut();
    direct
        .put(key("b"), override_json("before-compaction"), None)
        .await
        .expect("put");
    let last = direct
        .put(key("c"), override_json("compacted"), None)
        .await
        .expect("put");
    let rev = last.header().expect("header").revision();
    direct.compact(rev, None).await.expect("compact");
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.restore();
    until(
        "re-listed after the compaction",
        Duration::from_secs(5),
        has_override("compacted"),
    )
    .await;
    let c2 = m.status_cluster().await;
    assert!(counter(&c2, "compactions") >= 1, "{c2}");
    assert_eq!(counter(&c2, "relists"), 2, "{c2}");
    assert!(
        m.get("/v1/overrides").await["overrides"]
            .as_array()
            .is_some_and(|o| o.len() == 3)
    );

    // 3. A cut longer than the lease: etcd drops the instance's keys; back, it grants a new
    //    lease and publishes its instance key and verdicts again.
    proxy.cut();
    until("the lease expires in etcd", Duration::from_secs(6), || {
        let mut d = direct.clone();
        let v = verdicts.clone();
        async move {
            d.get(v, Some(etcd_client::GetOptions::new().with_prefix()))
                .await
                .is_ok_and(|r| r.kvs().is_empty())
        }
    })
    .await;
    proxy.restore();
    until(
        "verdicts published again under a new lease",
        Duration::from_secs(8),
        || {
            let mut d = direct.clone();
            let v = verdicts.clone();
            async move {
                d.get(v, Some(etcd_client::GetOptions::new().with_prefix()))
                    .await
                    .is_ok_and(|r| r.kvs().len() == 2)
            }
        },
    )
    .await;
    let c3 = m.status_cluster().await;
    assert_eq!(counter(&c3, "lease_grants"), 2, "{c3}");
    until("connected again", Duration::from_secs(5), || async {
        m.status_cluster().await["connected"] == true
    })
    .await;
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn differing_zone_files_are_flagged() {
    let etcd = Etcd::start().await;
    let backend = Backend::start().await;
    let (same, other) = (zones(&backend), zones(&backend));
    std::fs::write(
        other.join("extra.toml"),
        "origin = \"x.test.\"\n[soa]\nmname = \"ns1.x.test.\"\nrname = \"h.x.test.\"\n",
    )
    .expect("write");
    let p = prefix("mismatch");
    let a = Instance::start("a", &same, cluster_settings(&etcd.url(), &p), SOURCES[0]).await;
    let b = Instance::start("b", &other, cluster_settings(&etcd.url(), &p), SOURCES[1]).await;
    until(
        "a flags b's zone files",
        Duration::from_secs(10),
        || async {
            a.status_cluster().await["zone_mismatch"] == serde_json::json!(["b"])
                && a.metric("meridian_cluster_zone_mismatch").await == Some(1.0)
        },
    )
    .await;
    let c = b.status_cluster().await;
    let flags: Vec<(String, bool)> = c["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .map(|i| {
            (
                i["name"].as_str().unwrap_or_default().to_string(),
                i["zones_match"] == true,
            )
        })
        .collect();
    assert_eq!(
        flags,
        [("a".to_string(), false), ("b".to_string(), true)],
        "{c}"
    );
    assert!(c["instances"][0]["last_seen"].is_string());
    assert!(c["instances"][0]["zones_digest"].is_string());
    a.stop().await;
    b.stop().await;
}

/// An override with `until` stops applying on time (no cluster needed), and a restart on
/// the same state directory keeps a clustered instance's last known overrides while etcd is
/// unreachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overrides_expire_and_the_local_copy_survives_a_restart_without_etcd() {
    let backend = Backend::start().await;
    let zones = zones(&backend);
    let lone = Instance::start_with("lone", &zones, None, SOURCES[0], &temp_dir("lone")).await;
    until("both endpoints up", Duration::from_secs(5), || async {
        lone.answer("www.c.test.").await == Some(BOTH.map(String::from).to_vec())
    })
    .await;
    let until_at =
        meridian::clock::rfc3339_millis(std::time::SystemTime::now() + Duration::from_millis(1500));
    let (status, body) = lone
        .send(
            reqwest::Method::PUT,
            "/v1/overrides/c.test/app/192.0.2.1",
            Some(&format!(
                r#"{{"state": "down", "why": "short", "until": "{until_at}"}}"#
            )),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        lone.answer("www.c.test.").await,
        Some(ONE.map(String::from).to_vec())
    );
    until("the override expires", Duration::from_secs(4), || async {
        lone.answer("www.c.test.").await == Some(BOTH.map(String::from).to_vec())
    })
    .await;
    assert_eq!(
        lone.get("/v1/overrides").await["overrides"][0]["active"],
        false
    );
    let (status, _) = lone
        .send(
            reqwest::Method::PUT,
            "/v1/overrides/c.test/app/192.0.2.1",
            Some(r#"{"state": "down", "until": "2000-01-01T00:00:00Z"}"#),
            None,
        )
        .await;
    assert_eq!(status, 400, "an `until` in the past is refused");
    lone.stop().await;

    // Clustered: set an override, lose etcd, restart on the same state dir: it still applies.
    let mut etcd = Etcd::start().await;
    let state = temp_dir("restart");
    let p = prefix("restart");
    let m = Instance::start_with(
        "r",
        &zones,
        Some(cluster_settings(&etcd.url(), &p)),
        SOURCES[0],
        &state,
    )
    .await;
    until("connected", Duration::from_secs(10), || async {
        m.status_cluster().await["connected"] == true
    })
    .await;
    let (status, _) = m
        .send(
            reqwest::Method::PUT,
            "/v1/overrides/c.test/app/192.0.2.1",
            Some(r#"{"state": "down"}"#),
            None,
        )
        .await;
    assert_eq!(status, 200);
    m.stop().await;
    etcd.stop();
    let m = Instance::start_with(
        "r",
        &zones,
        Some(cluster_settings(&etcd.url(), &p)),
        SOURCES[0],
        &state,
    )
    .await;
    assert_eq!(m.status_cluster().await["connected"], false);
    until(
        "the last known override applies",
        Duration::from_secs(3),
        || async { m.answer("www.c.test.").await == Some(ONE.map(String::from).to_vec()) },
    )
    .await;
    // Writes need etcd: refused rather than diverging from the other instances.
    let (status, body) = m
        .send(
            reqwest::Method::DELETE,
            "/v1/overrides/c.test/app/192.0.2.1",
            None,
            None,
        )
        .await;
    assert_eq!(status, 503, "{body}");
    m.stop().await;
}

/// The README's "override propagation" figure: 100 override changes set on one instance,
/// each timed from the PUT until both other instances answer accordingly over DNS.
/// `cargo test --release --test it cluster::override_propagation -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a figure for the README, not a check"]
async fn override_propagation() {
    const CHANGES: usize = 100;
    let etcd = Etcd::start().await;
    let backend = Backend::start().await;
    let zones = zones(&backend);
    let ms = three(&etcd.url(), &zones, "figure").await;
    until(
        "every endpoint up everywhere",
        Duration::from_secs(5),
        || all_answer(&ms, &BOTH),
    )
    .await;
    let path = "/v1/overrides/c.test/app/192.0.2.1";
    let mut took = Vec::with_capacity(CHANGES);
    for i in 0..CHANGES {
        let (method, body, want): (_, Option<&str>, &[&str]) = if i % 2 == 0 {
            (reqwest::Method::PUT, Some(r#"{"state": "down"}"#), &ONE)
        } else {
            (reqwest::Method::DELETE, None, &BOTH)
        };
        let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        let start = Instant::now();
        let (status, _) = ms[0].send(method, path, body, None).await;
        assert_eq!(status, 200);
        loop {
            let mut done = true;
            for m in &ms[1..] {
                done &= m.answer("www.c.test.").await.as_ref() == Some(&want);
            }
            if done {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "change {i} did not propagate"
            );
        }
        took.push(start.elapsed());
    }
    took.sort();
    let p = |q: f64| took[((took.len() as f64 * q).ceil() as usize).clamp(1, took.len()) - 1];
    println!(
        "override propagation over {CHANGES} changes (PUT on m1 until m2 and m3 answer it): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        p(0.50).as_secs_f64() * 1e3,
        p(0.99).as_secs_f64() * 1e3,
        took[took.len() - 1].as_secs_f64() * 1e3
    );
    for m in ms {
        m.stop().await;
    }
}

/// Issue 9: an override that arrives through the cluster is logged by every instance with
/// who set it, as it came from etcd. Two real `serve` processes share one etcd; the change
/// is made through the first one's admin API and read in the second one's JSON log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_override_from_the_cluster_is_logged_with_who_set_it() {
    use crate::logs::{Serve, field, message};
    meridian::health::probe::install_crypto_provider();
    let etcd = Etcd::start().await;
    let zones = crate::support::zone_dir(
        "cluster-logs",
        &[(
            "c.toml",
            "origin = \"cl.test.\"\n[soa]\nmname = \"ns.cl.test.\"\nrname = \"h.cl.test.\"\n\
             [pools.p]\nA = [\"192.0.2.1\"]\n[policies.www]\nfailover = [\"p\"]\n",
        )],
    );
    let prefix = prefix("logs");
    let url = etcd.url();
    let start = |name: &'static str| {
        Serve::start(
            &zones,
            &[
                "--cluster",
                &url,
                "--instance",
                name,
                "--cluster-prefix",
                &prefix,
                "--cluster-lease-ttl",
                "2",
            ],
        )
    };
    let (a, b) = (start("a"), start("b"));
    let connected = |v: &Value| message(v).starts_with("cluster: connected to etcd");
    a.wait_for("a connected", connected);
    b.wait_for("b connected", connected);
    let admin = a.bound("admin listening");
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(HTTP_TIMEOUT)
        .build()
        .expect("http client");
    let path = format!("http://{admin}/v1/overrides/cl.test/p");
    let put = http
        .put(&path)
        .body(r#"{"state":"down","by":"carol","why":"failover drill"}"#)
        .send()
        .await
        .expect("put");
    assert_eq!(put.status(), 200);
    let set = b.wait_for("b logging the override", |v| {
        message(v).starts_with("override set") && field(v, "via") == "cluster"
    });
    assert_eq!(
        (
            field(&set, "pool"),
            field(&set, "state"),
            field(&set, "by"),
            field(&set, "why")
        ),
        (
            &Value::from("p"),
            &Value::from("down"),
            &Value::from("carol"),
            &Value::from("failover drill")
        ),
        "{set}"
    );
    assert!(field(&set, "at").is_string(), "{set}");
    let del = http.delete(&path).send().await.expect("delete");
    assert_eq!(del.status(), 200);
    let cleared = b.wait_for("b logging the clear", |v| {
        message(v).starts_with("override cleared") && field(v, "via") == "cluster"
    });
    assert_eq!(field(&cleared, "previous"), "down", "{cleared}");
}
