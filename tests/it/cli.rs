//! The built binary: `check` exit codes and output, `serve` on port 0 with SIGHUP and
//! SIGTERM, `explain` and `geoip`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hickory_proto::op::Message;

use crate::support::{Query, answers, udp, zone_dir};

fn meridian() -> Command {
    Command::new(env!("CARGO_BIN_EXE_meridian"))
}

#[test]
fn check_passes_the_example_and_fails_a_broken_zone_with_every_error() {
    let ok = meridian().args(["check"]).output().expect("runs");
    assert!(ok.status.success());
    assert_eq!(
        String::from_utf8_lossy(&ok.stdout),
        "ok: 1 zones, 10 names, 3 pools, 2 checks\n"
    );

    let dir = zone_dir(
        "cli-bad",
        &[(
            "bad.toml",
            "origin = \"bad.test.\"\nbogus = 1\n[soa]\nmname = \"ns.bad.test.\"\nrname = \"h.bad.test.\"\n[policies.www]\nfailover = [\"nowhere\"]\n",
        )],
    );
    let bad = meridian()
        .args(["check", "--zones"])
        .arg(&dir)
        .output()
        .expect("runs");
    assert_eq!(bad.status.code(), Some(1));
    let out = String::from_utf8_lossy(&bad.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].ends_with("bad.toml:2:1: unknown key `bogus`")
            || lines[0].contains("bad.toml:2:1:"),
        "{out}"
    );
    assert!(
        lines[1].contains("bad.toml:7:") && lines[1].contains("nowhere"),
        "{out}"
    );
}

#[test]
fn every_command_has_help() {
    for args in [
        &["--help"][..],
        &["serve", "--help"],
        &["check", "--help"],
        &["explain", "--help"],
        &["geoip", "--help"],
    ] {
        let out = meridian().args(args).output().expect("runs");
        assert!(out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage"),
            "{args:?}"
        );
    }
}

#[test]
fn explain_prints_the_decision_path() {
    let out = meridian()
        .args([
            "explain",
            "www.gslb.example.test",
            "--client",
            "203.0.113.7/24",
            "--down",
            "eu-west",
        ])
        .output()
        .expect("runs");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("www.gslb.example.test. A from 203.0.113.0 (ECS 203.0.113.0/24)\n"),
        "{text}"
    );
    assert!(text.contains("geoip: GB"), "{text}");
    assert!(
        text.contains("policy www (geo): continent EU -> [eu-west, us-east]"),
        "{text}"
    );
    assert!(text.contains("eu-west: down (override down)"), "{text}");
    assert!(
        text.contains("us-east: up") && text.contains("-> chosen"),
        "{text}"
    );
    assert!(
        text.contains("answer: 198.51.100.1") && text.contains("TTL 30  ECS scope /24"),
        "{text}"
    );
    // Offline, no probe has run: every endpoint says so (SPEC §7's last RTT needs `serve`).
    assert!(
        text.contains("  endpoints:\n")
            && text.contains("    us-east 198.51.100.10: unknown, not probed yet\n")
            && text.contains("    eu-west 203.0.113.10: override down, unknown, not probed yet\n"),
        "{text}"
    );

    let json = meridian()
        .args([
            "explain",
            "api.gslb.example.test",
            "A",
            "--client",
            "127.0.0.1",
            "--json",
        ])
        .output()
        .expect("runs");
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json");
    assert_eq!(v["policy"], "api");
    assert_eq!(v["rcode"], "NOERROR");
}

#[test]
fn geoip_prints_the_record() {
    let out = meridian()
        .args(["geoip", "198.51.100.7"])
        .output()
        .expect("runs");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("country: US") && text.contains("subdivision: US-CA"),
        "{text}"
    );
}

/// The bound DNS address, read from the JSON log.
fn wait_for_dns(child: &mut Child) -> SocketAddr {
    let stderr = child.stderr.take().expect("piped");
    let deadline = Instant::now() + Duration::from_secs(20);
    for line in BufReader::new(stderr).lines() {
        let line = line.expect("log line");
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
            && v["fields"]["message"] == "dns listening (udp+tcp)"
        {
            return v["fields"]["bound"]
                .as_str()
                .expect("bound")
                .parse()
                .expect("addr");
        }
        assert!(Instant::now() < deadline, "no listening line");
    }
    panic!("serve exited before listening");
}

#[tokio::test]
async fn serve_reloads_on_sighup_and_stops_on_sigterm() {
    let example = std::fs::read_to_string("zones/example.toml").expect("example");
    let dir = zone_dir("cli-serve", &[("example.toml", &example)]);
    let state = crate::support::temp_dir("cli-state");
    let mut child = meridian()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "off",
            "--log-format",
            "json",
            "--zones",
        ])
        .arg(&dir)
        .arg("--state")
        .arg(&state)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve starts");
    let dns = wait_for_dns(&mut child);
    let ask = || async {
        let reply = udp(dns, &Query::new("static.gslb.example.test", 1).packet())
            .await
            .expect("reply");
        answers(&Message::from_vec(&reply).expect("parses"))
    };
    assert_eq!(ask().await, ["192.0.2.1", "192.0.2.2"]);

    std::fs::write(
        dir.join("example.toml"),
        example.replace("192.0.2.1\", \"192.0.2.2", "192.0.2.88"),
    )
    .expect("edit");
    let pid = child.id().to_string();
    signal(&pid, "-HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while ask().await != ["192.0.2.88"] {
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    signal(&pid, "-TERM");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(Instant::now() < deadline, "SIGTERM did not stop serve");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn signal(pid: &str, sig: &str) {
    let status = Command::new("kill")
        .args([sig, pid])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill {sig} {pid}");
}

/// SPEC §9: `serve` limits UDP responses with no flag; `MERIDIAN_RRL=off` turns it off.
#[tokio::test]
async fn serve_rate_limits_by_default_and_the_variable_turns_it_off() {
    let example = std::fs::read_to_string("zones/example.toml").expect("example");
    let dir = zone_dir("cli-rrl", &[("example.toml", &example)]);
    for (variable, limited) in [(None, true), (Some("off"), false)] {
        let mut cmd = meridian();
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "off",
            "--log-format",
            "json",
            "--zones",
        ])
        .arg(&dir)
        .arg("--state")
        .arg(crate::support::temp_dir("cli-rrl-state"))
        .env_remove("MERIDIAN_RRL")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        if let Some(v) = variable {
            cmd.env("MERIDIAN_RRL", v);
        }
        let mut child = cmd.spawn().expect("serve starts");
        let dns = wait_for_dns(&mut child);
        // 60 queries at once from one socket: one flow, so one worker and one bucket.
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        for id in 1..=60u16 {
            let mut q = Query::new("static.gslb.example.test", 1);
            q.id = id;
            sock.send_to(&q.packet(), dns).await.expect("send");
        }
        let mut full = 0;
        let mut buf = [0u8; 1500];
        let deadline = tokio::time::Instant::now() + Duration::from_millis(600);
        while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
            let m = Message::from_vec(&buf[..n]).expect("parses");
            if !m.metadata.truncation {
                full += 1;
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        if limited {
            assert!((20..=22).contains(&full), "default: {full} of 60 answered");
        } else {
            assert_eq!(full, 60, "MERIDIAN_RRL=off");
        }
    }
}

/// A state directory whose overrides.json does not parse (`tests/fixtures/state/<case>/`),
/// and the exact output `check --state` prints for it (`<case>.expected`).
const CORRUPT_STATE: &str = "tests/fixtures/state/corrupt";

/// SPEC §1: `check` loads what `serve` would. A corrupt overrides file stops `serve`; `check`
/// reports it with the same message (golden), and still prints the zones' own errors beside it.
#[test]
fn check_reports_a_corrupt_overrides_file_as_serve_does() {
    let out = meridian()
        .args(["check", "--state", CORRUPT_STATE])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let got = String::from_utf8_lossy(&out.stdout).into_owned();
    let golden = format!("{CORRUPT_STATE}.expected");
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::write(&golden, &got).expect("write golden");
    }
    let want = std::fs::read_to_string(&golden).expect("golden file");
    assert_eq!(got, want);

    // `serve` with the same state directory refuses to start with that message.
    let serve = meridian()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "off",
            "--log-format",
            "json",
            "--state",
            CORRUPT_STATE,
        ])
        .stdout(Stdio::null())
        .output()
        .expect("runs");
    assert_eq!(serve.status.code(), Some(1));
    let logged: Vec<String> = String::from_utf8_lossy(&serve.stderr)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["level"] == "ERROR")
        .filter_map(|v| v["fields"]["message"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(logged, [want.trim_end()], "serve's error log");

    // With the zones broken as well, both kinds of problem are listed.
    let dir = zone_dir("cli-check-state", &[("bad.toml", "origin = 1\n")]);
    let both = meridian()
        .args(["check", "--state", CORRUPT_STATE, "--zones"])
        .arg(&dir)
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&both.stdout);
    assert!(
        text.contains("bad.toml:1:") && text.ends_with(&want),
        "{text}"
    );
}

/// A readable overrides file is no problem for `check`.
#[test]
fn check_accepts_a_valid_overrides_file() {
    let state = crate::support::temp_dir("cli-check-ok-state");
    std::fs::write(
        state.join("overrides.json"),
        r#"{"version": 1, "pools": [{"zone": "gslb.example.test.", "pool": "eu-west", "state": "drain", "by": "ops"}]}"#,
    )
    .expect("write");
    let out = meridian()
        .args(["check", "--state"])
        .arg(&state)
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ok: 1 zones, 10 names, 3 pools, 2 checks\n"
    );
}
