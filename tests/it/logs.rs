//! What operators must see in the log of a real `meridian serve` process (issue 9): a policy
//! failing open (SPEC §3, at most one line per policy per interval), every endpoint up/down
//! change with the probe's reason, and every override change with who made it. The JSON log
//! on stderr is read line by line while the process runs.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{Query, closed_port, temp_dir, udp, zone_dir};

/// Longest wait for any expected log line.
const LOG_WAIT: Duration = Duration::from_secs(10);
/// Fail-open queries sent per policy: far more than the one line each may log.
const FAIL_OPEN_QUERIES: usize = 40;

/// A `meridian serve` child and every JSON line it has logged so far.
pub struct Serve {
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
}

impl Serve {
    /// `serve` on port 0 (DNS and admin) with `zones`, a fresh state directory and `extra`
    /// flags.
    pub fn start(zones: &std::path::Path, extra: &[&str]) -> Serve {
        let mut child = Command::new(env!("CARGO_BIN_EXE_meridian"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
                "--rrl",
                "off",
                "--log-format",
                "json",
                "--zones",
            ])
            .arg(zones)
            .arg("--state")
            .arg(temp_dir("logs-state"))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("serve starts");
        let stderr = child.stderr.take().expect("piped");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        // Ends when the child's stderr closes.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    sink.lock().expect("log lines").push(v);
                }
            }
        });
        Serve { child, lines }
    }

    /// The first logged line `pred` accepts, waiting up to [`LOG_WAIT`].
    pub fn wait_for(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + LOG_WAIT;
        loop {
            if let Some(v) = self
                .lines
                .lock()
                .expect("log lines")
                .iter()
                .find(|v| pred(v))
            {
                return v.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no log line for {what}; got:\n{}",
                self.dump()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every logged line `pred` accepts.
    fn all(&self, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        let lines = self.lines.lock().expect("log lines");
        lines.iter().filter(|v| pred(v)).cloned().collect()
    }

    fn dump(&self) -> String {
        let lines = self.lines.lock().expect("log lines");
        lines.iter().map(|v| format!("{v}\n")).collect()
    }

    /// The address a `... listening` line names.
    pub fn bound(&self, message: &str) -> SocketAddr {
        let v = self.wait_for(message, |v| v["fields"]["message"] == message);
        v["fields"]["bound"]
            .as_str()
            .expect("bound")
            .parse()
            .expect("addr")
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn message(v: &Value) -> &str {
    v["fields"]["message"].as_str().unwrap_or("")
}

pub fn field<'v>(v: &'v Value, name: &str) -> &'v Value {
    &v["fields"][name]
}

/// An HTTP backend on 127.0.0.1 that answers every request with `response` (at most
/// `limit` connections, each bounded by a read timeout), until `stop`.
fn http_backend(stop: Arc<AtomicBool>, limit: usize, response: &'static [u8]) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind backend");
    let port = l.local_addr().expect("addr").port();
    l.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        let mut served = 0;
        while served < limit && !stop.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((mut s, _)) => {
                    served += 1;
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf);
                    let _ = s.write_all(response);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    port
}

/// Ports of the backends behind the zone's checks.
struct Ports {
    closed: u16,
    live: u16,
    busy: u16,
    wrong_body: u16,
    silent: u16,
}

fn zone(p: &Ports) -> String {
    let Ports {
        closed,
        live,
        busy,
        wrong_body,
        silent,
    } = p;
    format!(
        r#"origin = "logs.test."
[soa]
mname = "ns1.logs.test."
rname = "hostmaster.logs.test."

[pools.dead]
A = ["198.51.100.1"]
check = "closed"
probe_address = {{ "198.51.100.1" = "127.0.0.1" }}

[pools.live]
A = ["198.51.100.2"]
check = "open"
probe_address = {{ "198.51.100.2" = "127.0.0.1" }}

[pools.busy]
A = ["198.51.100.3"]
check = "web"
probe_address = {{ "198.51.100.3" = "127.0.0.1" }}

[checks.closed]
kind = "tcp"
port = {closed}
interval = "200ms"
timeout = "200ms"
rise = 1
fall = 1

[checks.open]
kind = "tcp"
port = {live}
interval = "200ms"
timeout = "200ms"
rise = 1
fall = 2

[checks.web]
kind = "http"
port = {busy}
path = "/health"
interval = "200ms"
timeout = "200ms"
rise = 1
fall = 1

[pools.wrong]
A = ["198.51.100.4"]
check = "body"
probe_address = {{ "198.51.100.4" = "127.0.0.1" }}

[pools.silent]
A = ["198.51.100.5"]
check = "hang"
probe_address = {{ "198.51.100.5" = "127.0.0.1" }}

[checks.body]
kind = "http"
port = {wrong_body}
expect_body = "ok"
interval = "200ms"
timeout = "200ms"
rise = 1
fall = 1

[checks.hang]
kind = "http"
port = {silent}
interval = "200ms"
timeout = "200ms"
rise = 1
fall = 1

[policies.gone]
failover = ["dead"]

[policies.also-gone]
failover = ["busy", "dead"]

[policies.fine]
failover = ["live"]
"#
    )
}

/// Issue 9 item 2, end to end through a real process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_see_fail_open_health_changes_and_overrides_in_the_log() {
    meridian::health::probe::install_crypto_provider();
    let stop = Arc::new(AtomicBool::new(false));
    let busy = http_backend(
        stop.clone(),
        1000,
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    let wrong_body = http_backend(
        stop.clone(),
        1000,
        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\nnope",
    );
    let live = TcpListener::bind("127.0.0.1:0").expect("bind live backend");
    // Accepts connections (the kernel's backlog) and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind silent backend");
    let ports = Ports {
        closed: closed_port(),
        live: live.local_addr().expect("addr").port(),
        busy,
        wrong_body,
        silent: silent.local_addr().expect("addr").port(),
    };
    let dir = zone_dir("logs", &[("z.toml", &zone(&ports))]);
    let serve = Serve::start(&dir, &[]);
    let dns = serve.bound("dns listening (udp+tcp)");
    let admin = serve.bound("admin listening");

    // Endpoint changes, each with the probe's reason.
    let down = |addr: &'static str| {
        move |v: &Value| {
            message(v).starts_with("endpoint down")
                && field(v, "endpoints")
                    .as_str()
                    .is_some_and(|e| e.contains(addr))
        }
    };
    let dead = serve.wait_for("dead going down", down("198.51.100.1"));
    assert_eq!(field(&dead, "reason"), "connection refused", "{dead}");
    assert_eq!(field(&dead, "check"), "closed", "{dead}");
    assert_eq!(field(&dead, "endpoints"), "dead 198.51.100.1", "{dead}");
    assert_eq!(dead["level"], "WARN");
    let busy_down = serve.wait_for("busy going down", down("198.51.100.3"));
    assert_eq!(field(&busy_down, "reason"), "status 503", "{busy_down}");
    let wrong = serve.wait_for("wrong going down", down("198.51.100.4"));
    assert_eq!(field(&wrong, "reason"), "body lacks \"ok\"", "{wrong}");
    let hang = serve.wait_for("silent going down", down("198.51.100.5"));
    assert_eq!(field(&hang, "reason"), "timeout after 200ms", "{hang}");
    let up = serve.wait_for("live coming up", |v| {
        message(v).starts_with("endpoint up") && field(v, "endpoints") == "live 198.51.100.2"
    });
    assert_eq!(field(&up, "from"), "unknown", "{up}");
    assert!(field(&up, "rtt_ms").as_f64().is_some(), "{up}");

    // Fail-open: once the views without `dead` and `busy` are published, many answers and
    // one line per policy.
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("http client");
    let deadline = Instant::now() + LOG_WAIT;
    loop {
        let body = http
            .get(format!("http://{admin}/v1/status"))
            .send()
            .await
            .expect("status")
            .text()
            .await
            .expect("body");
        let status: Value = serde_json::from_str(&body).expect("json");
        let down = status["pools"]
            .as_array()
            .map_or(0, |pools| pools.iter().filter(|p| p["up"] == false).count());
        if down == 4 {
            break;
        }
        assert!(Instant::now() < deadline, "pools not down: {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for name in ["gone.logs.test", "also-gone.logs.test"] {
        for i in 0..FAIL_OPEN_QUERIES {
            let mut q = Query::new(name, 1);
            q.id = i as u16;
            udp(dns, &q.packet()).await.expect("an answer");
        }
    }
    let is_fail_open = |v: &Value| message(v).starts_with("policy fails open");
    serve.wait_for("also-gone failing open", |v| {
        is_fail_open(v) && field(v, "policy") == "also-gone"
    });
    // Counters fold every second; by then every fail-open line has long been written.
    let deadline = Instant::now() + LOG_WAIT;
    let series = |policy: &str, pool: &str| {
        format!(
            "meridian_policy_fail_open_total{{zone=\"logs.test.\",policy=\"{policy}\",pool=\"{pool}\"}} {FAIL_OPEN_QUERIES}\n"
        )
    };
    loop {
        let text = http
            .get(format!("http://{admin}/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("body");
        if text.contains(&series("gone", "dead")) && text.contains(&series("also-gone", "busy")) {
            break;
        }
        assert!(Instant::now() < deadline, "fail-open counters:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lines = serve.all(is_fail_open);
    let per_policy: Vec<(&str, &str)> = lines
        .iter()
        .map(|v| {
            (
                field(v, "policy").as_str().unwrap_or(""),
                field(v, "pool").as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        per_policy,
        [("gone", "dead"), ("also-gone", "busy")],
        "{lines:?}"
    );

    // Overrides: who set it, from where, allowed how.
    let url = format!("http://{admin}/v1/overrides/logs.test/live");
    let put = http
        .put(&url)
        .body(r#"{"state":"drain","by":"alice","why":"maintenance"}"#)
        .send()
        .await
        .expect("put");
    assert_eq!(put.status(), 200);
    let set = serve.wait_for("the override set", |v| {
        message(v).starts_with("override set")
    });
    assert_eq!(
        (
            field(&set, "pool"),
            field(&set, "state"),
            field(&set, "by"),
            field(&set, "auth")
        ),
        (
            &Value::from("live"),
            &Value::from("drain"),
            &Value::from("alice"),
            &Value::from("loopback peer")
        ),
        "{set}"
    );
    assert!(
        field(&set, "peer")
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{set}"
    );
    let del = http.delete(&url).send().await.expect("delete");
    assert_eq!(del.status(), 200);
    let cleared = serve.wait_for("the override cleared", |v| {
        message(v).starts_with("override cleared")
    });
    assert_eq!(field(&cleared, "previous"), "drain", "{cleared}");
    assert!(
        field(&cleared, "peer")
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{cleared}"
    );

    // The live backend dies: down after `fall` refusals, from up, with the reason.
    drop(live);
    let live_down = serve.wait_for("live going down", down("198.51.100.2"));
    assert_eq!(
        (
            field(&live_down, "from"),
            field(&live_down, "reason"),
            field(&live_down, "failures")
        ),
        (
            &Value::from("up"),
            &Value::from("connection refused"),
            &Value::from(2)
        ),
        "{live_down}"
    );
    stop.store(true, Ordering::Relaxed);
    drop(silent);
}
