//! DNSSEC (SPEC §11) end to end: `meridian dnssec keygen|ds` and `check`, a signed zone
//! served on 127.0.0.1 and judged by real validators (delv, an unbound validating
//! resolver), negative controls that must fail, and a property test that every RRSIG of
//! every kind of answer verifies with hickory-proto's own verifier.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hickory_proto::dnssec::Verifier;
use hickory_proto::dnssec::rdata::{DNSKEY, DNSSECRData, RRSIG};
use hickory_proto::op::Message;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use crate::support::{Query, Server, free_port, settings, temp_dir};

const ZONE: &str = "tests/fixtures/dnssec/signed.toml";

fn meridian() -> Command {
    Command::new(env!("CARGO_BIN_EXE_meridian"))
}

/// A zone directory with the signed fixture and a state directory with its key.
fn signed_setup(tag: &str) -> (PathBuf, PathBuf) {
    let zones = temp_dir(&format!("{tag}-zones"));
    std::fs::copy(ZONE, zones.join("signed.toml")).expect("copy zone");
    let state = temp_dir(&format!("{tag}-state"));
    let out = meridian()
        .args(["dnssec", "keygen", "signed.test"])
        .arg("--zones")
        .arg(&zones)
        .arg("--state")
        .arg(&state)
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (zones, state)
}

/// `meridian dnssec ds` output.
fn ds_output(zones: &Path, state: &Path) -> String {
    let out = meridian()
        .args(["dnssec", "ds", "signed.test."])
        .arg("--zones")
        .arg(zones)
        .arg("--state")
        .arg(state)
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// `packet` (a query with an OPT last) with DO, and CO when asked.
fn with_do(mut packet: Vec<u8>, co: bool) -> Vec<u8> {
    let opt = packet
        .len()
        .checked_sub(11)
        .filter(|_| packet[packet.len() - 11..].starts_with(&[0, 0, 41]))
        .expect("the query ends with an OPT without options");
    packet[opt + 7] |= 0x80 | if co { 0x40 } else { 0 };
    packet
}

fn do_query(name: &str, qtype: u16) -> Vec<u8> {
    with_do(Query::new(name, qtype).edns(1232).packet(), false)
}

#[test]
fn keygen_check_and_ds_agree_with_the_tools() {
    let zones = temp_dir("dnssec-cli-zones");
    std::fs::copy(ZONE, zones.join("signed.toml")).expect("copy zone");
    let state = temp_dir("dnssec-cli-state");
    // check: the missing key is an error at the `dnssec` line, naming the command to run.
    let check = |state: &Path| {
        meridian()
            .arg("check")
            .arg("--zones")
            .arg(&zones)
            .arg("--state")
            .arg(state)
            .output()
            .expect("runs")
    };
    let bad = check(&state);
    assert_eq!(bad.status.code(), Some(1));
    let text = String::from_utf8_lossy(&bad.stdout);
    assert!(
        text.contains("signed.toml:6:1: zone signed.test. has `dnssec = true` but no key")
            && text.contains("meridian dnssec keygen signed.test."),
        "{text}"
    );
    let gen_ = |state: &Path| {
        meridian()
            .args(["dnssec", "keygen", "signed.test"])
            .arg("--zones")
            .arg(&zones)
            .arg("--state")
            .arg(state)
            .output()
            .expect("runs")
    };
    assert!(gen_(&state).status.success());
    let again = gen_(&state);
    assert!(!again.status.success(), "a second keygen must refuse");
    assert!(String::from_utf8_lossy(&again.stderr).contains("already has a key"));
    let files: Vec<_> = std::fs::read_dir(state.join("keys"))
        .expect("keys dir")
        .flatten()
        .collect();
    assert_eq!(files.len(), 1);
    use std::os::unix::fs::PermissionsExt;
    let mode = files[0].metadata().expect("meta").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let ok = check(&state);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );

    // The DS equals hickory's DS of the printed DNSKEY, and dnssec-dsfromkey's when there.
    let ds = ds_output(&zones, &state);
    let ds_line = ds.lines().next().expect("DS line");
    let dnskey_line = ds.lines().nth(1).expect("DNSKEY line");
    let fields: Vec<&str> = dnskey_line.split_whitespace().collect();
    assert_eq!(
        &fields[..6],
        &["signed.test.", "IN", "DNSKEY", "257", "3", "13"]
    );
    let key_b64 = fields[6];
    let key_bytes = base64_decode(key_b64);
    let public = hickory_proto::dnssec::PublicKeyBuf::new(
        key_bytes,
        hickory_proto::dnssec::Algorithm::ECDSAP256SHA256,
    );
    let name = Name::from_ascii("signed.test.").expect("name");
    let hds = hickory_proto::dnssec::rdata::DS::from_key(
        &public,
        &name,
        hickory_proto::dnssec::DigestType::SHA256,
    )
    .expect("ds");
    let hex: String = hds.digest().iter().map(|b| format!("{b:02X}")).collect();
    assert_eq!(
        ds_line,
        format!("signed.test. IN DS {} 13 2 {hex}", hds.key_tag())
    );
    if Path::new("/usr/bin/dnssec-dsfromkey").exists() {
        let file = state.join("dnskey.rr");
        std::fs::write(
            &file,
            format!("signed.test. 300 IN DNSKEY 257 3 13 {key_b64}\n"),
        )
        .expect("write");
        let out = Command::new("dnssec-dsfromkey")
            .args(["-2", "-f"])
            .arg(&file)
            .arg("signed.test")
            .output()
            .expect("runs");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), ds_line);
    }
    assert!(ds.contains("trust-anchors { \"signed.test.\" static-key 257 3 13 \""));
    assert!(ds.contains(&format!(
        "trust-anchor: \"signed.test. DS {}",
        hds.key_tag()
    )));
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|c| *c != b'=') {
        acc = acc << 6 | u32::from(val(c));
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

#[tokio::test]
async fn a_signed_zone_without_its_key_is_refused_not_served_unsigned() {
    let zones = temp_dir("dnssec-nokey");
    std::fs::copy(ZONE, zones.join("signed.toml")).expect("copy zone");
    std::fs::copy("zones/example.toml", zones.join("example.toml")).expect("copy zone");
    let server = Server::start(settings(&zones, None)).await;
    let m = server.ask(&Query::new("static.signed.test", 1)).await;
    assert_eq!(
        m.metadata.response_code,
        hickory_proto::op::ResponseCode::Refused
    );
    let m = server.ask(&Query::new("static.gslb.example.test", 1)).await;
    assert_eq!(
        m.metadata.response_code,
        hickory_proto::op::ResponseCode::NoError
    );
    assert!(!m.answers.is_empty(), "the other zone is still served");
    server.stop().await;
}

#[tokio::test]
async fn compact_denial_without_do_is_plain_and_type128_is_formerr() {
    let (zones, state) = signed_setup("dnssec-plain");
    let mut s = settings(&zones, None);
    s.state = state;
    let server = Server::start(s).await;
    let plain = server
        .ask(&Query::new("nope.signed.test", 1).edns(1232))
        .await;
    assert_eq!(
        plain.metadata.response_code,
        hickory_proto::op::ResponseCode::NXDomain
    );
    assert!(
        plain
            .authorities
            .iter()
            .all(|r| r.record_type() == RecordType::SOA)
    );
    let bytes = server
        .udp(&do_query("nope.signed.test", 1))
        .await
        .expect("reply");
    let m = Message::from_vec(&bytes).expect("parses");
    assert_eq!(
        m.metadata.response_code,
        hickory_proto::op::ResponseCode::NoError
    );
    let nsec = nsec_of(&m).expect("an NSEC");
    assert_eq!(nsec.0, "nope.signed.test.");
    assert_eq!(nsec.1, "\\000.nope.signed.test.");
    assert_eq!(
        nsec.2,
        vec![
            RecordType::RRSIG,
            RecordType::NSEC,
            RecordType::Unknown(128)
        ]
    );
    // CO: NXDOMAIN comes back, with the same proof and CO echoed.
    let co = with_do(Query::new("nope.signed.test", 1).edns(1232).packet(), true);
    let bytes = server.udp(&co).await.expect("reply");
    let m = Message::from_vec(&bytes).expect("parses");
    assert_eq!(
        m.metadata.response_code,
        hickory_proto::op::ResponseCode::NXDomain
    );
    assert!(nsec_of(&m).is_some());
    let opt_flags = bytes[bytes.len() - 11 + 7];
    assert_eq!(opt_flags & 0xc0, 0xc0, "DO and CO echoed");
    let bytes = server
        .udp(&do_query("nope.signed.test", 128))
        .await
        .expect("reply");
    let m = Message::from_vec(&bytes).expect("parses");
    assert_eq!(
        m.metadata.response_code,
        hickory_proto::op::ResponseCode::FormErr
    );
    // A query for type RRSIG: NOTIMP, not a NODATA whose bitmap lists RRSIG.
    for name in ["static.signed.test", "nope.signed.test"] {
        let bytes = server.udp(&do_query(name, 46)).await.expect("reply");
        let m = Message::from_vec(&bytes).expect("parses");
        assert_eq!(
            m.metadata.response_code,
            hickory_proto::op::ResponseCode::NotImp,
            "{name}"
        );
        assert!(m.answers.is_empty() && nsec_of(&m).is_none());
    }
    // NSEC TTL = min(SOA TTL 300, MINIMUM 60).
    let bytes = server
        .udp(&do_query("static.signed.test", 15))
        .await
        .expect("reply");
    let m = Message::from_vec(&bytes).expect("parses");
    let (owner, _, types, ttl) = nsec_of(&m).expect("NODATA NSEC");
    assert_eq!(owner, "static.signed.test.");
    assert_eq!(ttl, 60);
    assert_eq!(
        types,
        vec![
            RecordType::A,
            RecordType::AAAA,
            RecordType::RRSIG,
            RecordType::NSEC
        ]
    );
    let bytes = server
        .udp(&do_query("b.signed.test", 1))
        .await
        .expect("reply");
    let m = Message::from_vec(&bytes).expect("parses");
    assert_eq!(
        nsec_of(&m).expect("ENT NSEC").2,
        vec![RecordType::RRSIG, RecordType::NSEC]
    );
    // A referral to the unsigned child proves that it has no DS.
    let bytes = server
        .udp(&do_query("www.sub.signed.test", 1))
        .await
        .expect("reply");
    let m = Message::from_vec(&bytes).expect("parses");
    let (owner, _, types, _) = nsec_of(&m).expect("no-DS NSEC");
    assert_eq!(owner, "sub.signed.test.");
    assert_eq!(
        types,
        vec![RecordType::NS, RecordType::RRSIG, RecordType::NSEC]
    );
    server.stop().await;
}

/// (owner, next, types, ttl) of the first NSEC in authority.
fn nsec_of(m: &Message) -> Option<(String, String, Vec<RecordType>, u32)> {
    m.authorities.iter().find_map(|r| match &r.data {
        RData::DNSSEC(DNSSECRData::NSEC(n)) => Some((
            r.name.to_ascii().to_lowercase(),
            n.next_domain_name().to_ascii(),
            n.type_bit_maps().collect(),
            r.ttl,
        )),
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_answers_fit_or_truncate_and_are_complete_over_tcp() {
    let (zones, state) = signed_setup("dnssec-tc");
    let mut s = settings(&zones, None);
    s.state = state;
    let server = Server::start(s).await;
    // 512 bytes cannot hold the three A records, their RRSIG and the OPT... of a long name.
    let q = with_do(
        Query::new("static.signed.test", 1).edns(512).packet(),
        false,
    );
    let udp = server.udp(&q).await.expect("reply");
    let tcp = crate::support::tcp(server.dns, &[q]).await;
    let full = Message::from_vec(&tcp[0]).expect("parses");
    assert!(!full.metadata.truncation);
    assert!(
        full.answers
            .iter()
            .any(|r| r.record_type() == RecordType::RRSIG)
    );
    let small = Message::from_vec(&udp).expect("parses");
    if tcp[0].len() > 512 {
        assert!(small.metadata.truncation);
    } else {
        assert_eq!(small.answers.len(), full.answers.len());
    }
    // The large TXT+RRSIG apex answer over a 512-byte limit.
    let q = with_do(Query::new("signed.test", 48).edns(512).packet(), false);
    let m = Message::from_vec(&server.udp(&q).await.expect("reply")).expect("parses");
    assert!(m.metadata.truncation || m.answers.len() == 2);
    server.stop().await;
}

/// Run `cmd` with a bound on its time; (exit ok, stdout + stderr).
fn run_bounded(cmd: &mut Command, limit: Duration) -> (bool, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    let start = Instant::now();
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().expect("output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn delv(port: u16, anchors: &Path, name: &str, qtype: &str) -> String {
    run_bounded(
        Command::new("delv")
            .arg("@127.0.0.1")
            .args(["-p", &port.to_string(), "-a"])
            .arg(anchors)
            .args(["+root=signed.test", name, qtype]),
        Duration::from_secs(10),
    )
    .1
}

/// Every kind of answer validates with delv; a wrong anchor does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delv_fully_validates_every_kind_of_answer() {
    let (zones, state) = signed_setup("dnssec-delv");
    let anchors = state.join("anchors.conf");
    let ds = ds_output(&zones, &state);
    let line = ds
        .lines()
        .find(|l| l.starts_with("trust-anchors"))
        .expect("anchor line");
    std::fs::write(&anchors, line).expect("write anchors");
    let mut s = settings(&zones, Some("geoip/test-city.mmdb"));
    s.state = state.clone();
    let server = Server::start(s).await;
    let port = server.dns.port();
    let anchors2 = anchors.clone();
    let results = tokio::task::spawn_blocking(move || {
        let positive = [
            ("static.signed.test", "A"),
            ("static.signed.test", "AAAA"),
            ("dup.signed.test", "A"),
            ("StAtIc.SiGnEd.TeSt", "A"),
            ("signed.test", "SOA"),
            ("signed.test", "NS"),
            ("signed.test", "DNSKEY"),
            ("signed.test", "MX"),
            ("x.wild.signed.test", "A"),
            ("x.y.wild.signed.test", "TXT"),
            ("alias.signed.test", "A"),
            ("geo.signed.test", "A"),
            // The NSEC of a name (existing or not) is an answer, not a denial of itself.
            ("static.signed.test", "NSEC"),
            ("nope.signed.test", "NSEC"),
        ];
        let negative = [
            ("nope.signed.test", "A"),
            ("two.deep.nope.signed.test", "AAAA"),
            ("static.signed.test", "MX"),
            ("b.signed.test", "A"),
            ("x.wild.signed.test", "MX"),
            ("sub.signed.test", "DS"),
            // The default pool has no IPv6 address: NODATA proven by the NSEC bitmap.
            ("geo.signed.test", "AAAA"),
        ];
        let mut bad = Vec::new();
        for (n, t) in positive {
            let out = delv(port, &anchors2, n, t);
            if !out.contains("; fully validated") {
                bad.push(format!("{n} {t}: {out}"));
            }
        }
        // Weighted: 20 answers drawn and shuffled anew, each must validate.
        let mut seen = std::collections::HashSet::new();
        for _ in 0..20 {
            let out = delv(port, &anchors2, "weighted.signed.test", "A");
            if !out.contains("; fully validated") {
                bad.push(format!("weighted: {out}"));
            }
            let addrs: Vec<&str> = out
                .lines()
                .filter(|l| l.contains("\tA\t") || l.contains(" A "))
                .filter_map(|l| l.split_whitespace().last())
                .collect();
            seen.insert(addrs.join(","));
        }
        for (n, t) in negative {
            let out = delv(port, &anchors2, n, t);
            if !out.contains("; negative response, fully validated") {
                bad.push(format!("{n} {t}: {out}"));
            }
        }
        (bad, seen)
    })
    .await
    .expect("delv runs");
    assert!(
        results.0.is_empty(),
        "not validated:\n{}",
        results.0.join("\n")
    );
    assert!(
        results.1.len() > 1,
        "weighted answers varied: {:?}",
        results.1
    );

    // The negative control: another key's anchor must not validate.
    let other = temp_dir("dnssec-delv-other");
    let _ = meridian()
        .args(["dnssec", "keygen", "signed.test", "--zones"])
        .arg(&zones)
        .arg("--state")
        .arg(&other)
        .output()
        .expect("runs");
    let wrong = ds_output(&zones, &other);
    let wrong_line = wrong
        .lines()
        .find(|l| l.starts_with("trust-anchors"))
        .expect("line");
    let wrong_anchors = other.join("anchors.conf");
    std::fs::write(&wrong_anchors, wrong_line).expect("write");
    let out =
        tokio::task::spawn_blocking(move || delv(port, &wrong_anchors, "static.signed.test", "A"))
            .await
            .expect("runs");
    assert!(!out.contains("fully validated"), "{out}");
    assert!(
        out.contains("broken trust chain") || out.contains("no valid"),
        "{out}"
    );
    server.stop().await;
}

/// An unbound validating resolver on 127.0.0.1:`port` for `signed.test` at `auth`.
struct Unbound {
    child: Child,
    port: u16,
}

impl Unbound {
    fn start(dir: &Path, auth: u16, trust_anchor: &str) -> Unbound {
        let port = free_port();
        let conf = dir.join("unbound.conf");
        std::fs::write(
            &conf,
            format!(
                "server:\n  interface: 127.0.0.1\n  port: {port}\n  do-not-query-localhost: no\n  \
                 module-config: \"validator iterator\"\n  {trust_anchor}\n  username: \"\"\n  \
                 chroot: \"\"\n  directory: \"{dir}\"\n  pidfile: \"{dir}/unbound.pid\"\n  \
                 use-syslog: no\n  logfile: \"\"\n  verbosity: 1\n  num-threads: 1\n  \
                 val-log-level: 2\n  local-zone: \"test.\" nodefault\n\
                 remote-control:\n  control-enable: no\n\
                 stub-zone:\n  name: \"signed.test\"\n  stub-addr: 127.0.0.1@{auth}\n",
                dir = dir.display()
            ),
        )
        .expect("write conf");
        let child = Command::new("unbound")
            .args(["-d", "-c"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("unbound starts");
        let u = Unbound { child, port };
        // Ready when it answers anything (bounded).
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            let (_, out) = run_bounded(
                Command::new("dig").args([
                    "@127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "+tries=1",
                    "+time=1",
                    "signed.test",
                    "SOA",
                ]),
                Duration::from_secs(3),
            );
            if out.contains("status:") {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        u
    }

    /// (status, flags) of `dig +dnssec` through the resolver.
    fn ask(&self, name: &str, qtype: &str) -> (String, String) {
        let (_, out) = run_bounded(
            Command::new("dig").args([
                "@127.0.0.1",
                "-p",
                &self.port.to_string(),
                "+dnssec",
                "+tries=1",
                "+time=3",
                name,
                qtype,
            ]),
            Duration::from_secs(8),
        );
        let status = out
            .split("status: ")
            .nth(1)
            .and_then(|s| s.split(',').next())
            .unwrap_or("none")
            .to_string();
        let flags = out
            .split(";; flags: ")
            .nth(1)
            .and_then(|s| s.split(';').next())
            .unwrap_or("")
            .to_string();
        (status, flags)
    }
}

impl Drop for Unbound {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbound_validates_with_the_anchor_and_fails_with_a_wrong_one() {
    let (zones, state) = signed_setup("dnssec-unbound");
    let ds = ds_output(&zones, &state);
    let anchor = ds
        .lines()
        .find(|l| l.starts_with("trust-anchor:"))
        .expect("unbound line")
        .to_string();
    let mut s = settings(&zones, Some("geoip/test-city.mmdb"));
    s.state = state.clone();
    let server = Server::start(s).await;
    let auth = server.dns.port();
    let dir = state.clone();
    let (bad, wrong) = tokio::task::spawn_blocking(move || {
        let good = Unbound::start(&dir, auth, &anchor);
        let mut bad = Vec::new();
        for (n, t, status) in [
            ("static.signed.test", "A", "NOERROR"),
            ("x.wild.signed.test", "A", "NOERROR"),
            ("alias.signed.test", "A", "NOERROR"),
            ("geo.signed.test", "A", "NOERROR"),
            ("weighted.signed.test", "A", "NOERROR"),
            ("nope.signed.test", "A", "NOERROR"),
            ("two.deep.nope.signed.test", "AAAA", "NOERROR"),
            ("static.signed.test", "MX", "NOERROR"),
            ("b.signed.test", "A", "NOERROR"),
        ] {
            let (got, flags) = good.ask(n, t);
            if got != status || !flags.split_whitespace().any(|f| f == "ad") {
                bad.push(format!("{n} {t}: {got} [{flags}]"));
            }
        }
        drop(good);
        // One digit of the DS changed: the chain is broken, answers are SERVFAIL.
        let wrong_anchor = flip_last_hex_digit(&anchor);
        let wdir = dir.join("wrong");
        std::fs::create_dir_all(&wdir).expect("dir");
        let wrong = Unbound::start(&wdir, auth, &wrong_anchor);
        let got = wrong.ask("static.signed.test", "A");
        (bad, got)
    })
    .await
    .expect("unbound runs");
    assert!(bad.is_empty(), "not validated: {bad:?}");
    assert_eq!(wrong.0, "SERVFAIL", "a wrong anchor must fail: {wrong:?}");
    server.stop().await;
}

fn flip_last_hex_digit(anchor: &str) -> String {
    let mut s = anchor.trim_end_matches('"').to_string();
    let last = s.pop().expect("digit");
    s.push(if last == '0' { '1' } else { '0' });
    s.push('"');
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_signatures_and_explain_names_the_key() {
    let (zones, state) = signed_setup("dnssec-metrics");
    let mut s = settings(&zones, None);
    s.state = state.clone();
    let server = Server::start(s).await;
    for i in 0..5 {
        server
            .udp(&do_query("static.signed.test", 1))
            .await
            .expect("reply");
        server
            .udp(&do_query(&format!("nx{i}.signed.test"), 1))
            .await
            .expect("reply");
    }
    let value = |text: &str, name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1.0)
    };
    let start = Instant::now();
    let mut text = String::new();
    while start.elapsed() < Duration::from_secs(5) {
        text = meridian::admin::metrics::render(&server.running.control);
        let uses = value(&text, "meridian_dnssec_signatures_total") - 5.0
            + value(&text, "meridian_dnssec_cache_hits_total");
        if value(&text, "meridian_dnssec_negative_signatures_total") >= 5.0 && uses >= 10.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Five NSECs; static A and the SOA (shared by the denials) once per UDP worker that
    // saw them (at most two here), every other use of them a cache hit.
    assert_eq!(
        value(&text, "meridian_dnssec_negative_signatures_total"),
        5.0,
        "{text}"
    );
    let made = value(&text, "meridian_dnssec_signatures_total");
    let hits = value(&text, "meridian_dnssec_cache_hits_total");
    assert!((7.0..=9.0).contains(&made), "{text}");
    assert_eq!(made - 5.0 + hits, 10.0, "{text}");
    assert!(
        value(&text, "meridian_dnssec_cache_entries") >= 1.0,
        "{text}"
    );
    assert!(value(&text, "meridian_dnssec_negative_signatures_per_second") >= 0.0);
    server.stop().await;

    let out = meridian()
        .args([
            "explain",
            "static.signed.test",
            "A",
            "--client",
            "192.0.2.1",
            "--zones",
        ])
        .arg(&zones)
        .arg("--state")
        .arg(&state)
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let ds = ds_output(&zones, &state);
    let tag = ds.split_whitespace().nth(3).expect("tag");
    assert!(
        text.contains(&format!(
            "dnssec: signed online (ECDSAP256SHA256, key tag {tag})"
        )),
        "{text}"
    );
}

mod property {
    //! For random queries of every kind, every RRset in answer and authority carries an
    //! RRSIG that hickory-proto's verifier accepts against the served DNSKEY, and no RRset
    //! holds a record twice.

    use super::*;
    use meridian::dns::handler::{Local, Transport, UDP_CACHE_SLOTS, handle};
    use proptest::prelude::*;
    use std::sync::OnceLock;

    fn world() -> &'static meridian::world::World {
        static WORLD: OnceLock<meridian::world::World> = OnceLock::new();
        WORLD.get_or_init(|| {
            let (zones, state) = signed_setup("dnssec-prop");
            let mut snap = meridian::config::load_dir(&meridian::config::LoadOptions {
                zones_dir: &zones,
                previous: None,
            })
            .expect("loads");
            assert!(meridian::dnssec::attach_keys(&mut snap, &state).is_empty());
            let geo =
                meridian::geo::GeoDb::open(Path::new("geoip/test-city.mmdb"), None).expect("db");
            let health = std::sync::Arc::new(meridian::health::View::unknown(&snap));
            meridian::world::World::new(
                std::sync::Arc::new(snap),
                health,
                Some(std::sync::Arc::new(geo)),
            )
        })
    }

    const NAMES: &[&str] = &[
        "signed.test",
        "static.signed.test",
        "dup.signed.test",
        "x.wild.signed.test",
        "a.b.wild.signed.test",
        "alias.signed.test",
        "geo.signed.test",
        "weighted.signed.test",
        "b.signed.test",
        "a.b.signed.test",
        "nope.signed.test",
        "two.deep.nope.signed.test",
        "sub.signed.test",
        "www.sub.signed.test",
        "ns1.signed.test",
        "*.wild.signed.test",
    ];
    const TYPES: &[u16] = &[1, 28, 5, 6, 2, 15, 16, 48, 43, 255, 33, 257, 99];

    fn dnskey() -> DNSKEY {
        let snap = &world().snapshot;
        let key = snap.zones[0].key.as_ref().expect("key");
        DNSKEY::new(
            true,
            true,
            false,
            hickory_proto::dnssec::PublicKeyBuf::new(
                key.dnskey[4..].to_vec(),
                hickory_proto::dnssec::Algorithm::ECDSAP256SHA256,
            ),
        )
    }

    fn check_response(bytes: &[u8], key: &DNSKEY) -> Result<(), TestCaseError> {
        let m = Message::from_vec(bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        for (section, records) in [("answer", &m.answers), ("authority", &m.authorities)] {
            let mut sets: Vec<((Name, RecordType), Vec<&Record>)> = Vec::new();
            let mut sigs: Vec<(Name, RecordType, RRSIG)> = Vec::new();
            for r in records {
                let name = r.name.to_lowercase();
                if let RData::DNSSEC(DNSSECRData::RRSIG(sig)) = &r.data {
                    sigs.push((name, sig.input().type_covered, sig.clone()));
                    continue;
                }
                match sets
                    .iter_mut()
                    .find(|(k, _)| *k == (name.clone(), r.record_type()))
                {
                    Some((_, v)) => v.push(r),
                    None => sets.push(((name, r.record_type()), vec![r])),
                }
            }
            for ((name, rtype), set) in &sets {
                let mut datas: Vec<Vec<u8>> = set
                    .iter()
                    .map(|r| {
                        hickory_proto::serialize::binary::BinEncodable::to_bytes(&r.data)
                            .expect("enc")
                    })
                    .collect();
                datas.sort();
                let n = datas.len();
                datas.dedup();
                prop_assert_eq!(
                    n,
                    datas.len(),
                    "duplicate in {} {} {:?}",
                    section,
                    name,
                    rtype
                );
                let delegation = *rtype == RecordType::NS && section == "authority";
                if delegation {
                    continue;
                }
                let sig = sigs.iter().find(|(n, t, _)| n == name && t == rtype);
                let Some((_, _, sig)) = sig else {
                    return Err(TestCaseError::fail(format!(
                        "no RRSIG for {name} {rtype:?} in {section}"
                    )));
                };
                key.verify_rrsig(name, DNSClass::IN, sig, set.iter().copied())
                    .map_err(|e| TestCaseError::fail(format!("{name} {rtype:?}: {e}")))?;
            }
        }
        Ok(())
    }

    #[test]
    fn signed_answers_from_the_cache_allocate_nothing() {
        let queries: Vec<Vec<u8>> = [
            ("static.signed.test", 1, None),
            ("geo.signed.test", 1, Some(("81.2.69.142", 24))),
            ("geo.signed.test", 28, Some(("81.2.69.142", 24))),
            ("weighted.signed.test", 1, None),
            ("alias.signed.test", 1, None),
            ("x.wild.signed.test", 1, None),
            ("nope.signed.test", 1, None),
            ("static.signed.test", 15, None),
            ("signed.test", 48, None),
            ("www.sub.signed.test", 1, None),
        ]
        .iter()
        .map(|(n, t, ecs)| {
            let mut q = Query::new(n, *t).edns(1232);
            if let Some((a, l)) = ecs {
                q = q.ecs(a.parse().expect("ip"), *l);
            }
            let mut p = q.packet();
            let opt = 12 + n.len() + 2 + 4;
            p[opt + 7] |= 0x80;
            p
        })
        .collect();
        let mut local = Local::new(UDP_CACHE_SLOTS);
        let mut out = Vec::with_capacity(4096);
        let src = IpAddr::from([192, 0, 2, 1]);
        let mut rounds = || {
            for round in 0..100u64 {
                for q in &queries {
                    handle(
                        world(),
                        q,
                        &src,
                        Transport::Udp,
                        round,
                        &mut out,
                        &mut local,
                    );
                }
            }
        };
        // Warm up with every seed the measured rounds use: each weighted pool gets signed.
        rounds();
        let ((), stats) = densa_alloc::measure(rounds);
        assert!(
            stats.is_zero(),
            "heap operations while answering: {stats:?}"
        );
    }

    /// SPEC §11 / issue 11: a flood of unique nonexistent names fills only the small
    /// negative cache, never more than its fixed slots, and the answers' signatures stay.
    #[test]
    fn a_unique_name_flood_stays_within_the_cache_bound() {
        let mut local = Local::new(UDP_CACHE_SLOTS);
        let mut out = Vec::with_capacity(4096);
        let src = IpAddr::from([192, 0, 2, 1]);
        let ask = |name: &str, local: &mut Local, out: &mut Vec<u8>| {
            let mut p = Query::new(name, 1).edns(1232).packet();
            p[12 + name.len() + 2 + 4 + 7] |= 0x80;
            handle(world(), &p, &src, Transport::Udp, 7, out, local);
        };
        ask("static.signed.test", &mut local, &mut out);
        let before = local.signer.cached();
        let (_, negative_slots) = local.signer.cached_negatives();
        for i in 0..3 * negative_slots {
            ask(&format!("flood{i}.signed.test"), &mut local, &mut out);
        }
        let (negatives, slots) = local.signer.cached_negatives();
        assert!(negatives <= slots && slots == negative_slots);
        assert!(
            negatives > slots / 2,
            "the negative cache was used: {negatives}"
        );
        assert!(local.signer.cached() <= local.signer.capacity());
        // The answers' signatures (static A, then the SOA of the denials) were not evicted.
        assert!(local.signer.cached() - negatives >= before);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]
        #[test]
        fn every_rrsig_verifies_and_no_rrset_has_duplicates(
            name in 0..NAMES.len(),
            case in any::<u32>(),
            qtype in 0..TYPES.len(),
            ecs in proptest::option::of((any::<[u8; 4]>(), 8u8..=32)),
            co in any::<bool>(),
            seed in any::<u64>(),
        ) {
            let mixed: String = NAMES[name]
                .chars()
                .enumerate()
                .map(|(i, c)| if case >> (i % 32) & 1 == 1 { c.to_ascii_uppercase() } else { c })
                .collect();
            let mut q = Query::new(&mixed, TYPES[qtype]).edns(4096);
            if let Some((addr, len)) = ecs {
                q = q.ecs(IpAddr::from(addr), len);
            }
            let mut packet = q.packet();
            // Set DO (and CO) in the OPT TTL: it follows the question.
            let opt = 12 + mixed.len() + 2 + 4;
            packet[opt + 7] |= 0x80 | if co { 0x40 } else { 0 };
            let mut out = Vec::new();
            let mut local = Local::new(UDP_CACHE_SLOTS);
            // Twice: signed fresh, then from the cache.
            for _ in 0..2 {
                prop_assert!(handle(world(), &packet, &IpAddr::from([192, 0, 2, 1]), Transport::Tcp, seed, &mut out, &mut local).is_some());
                check_response(&out, &dnskey())?;
            }
        }
    }
}

/// The per-query response time histogram (`meridian_dns_response_seconds`, SPEC §7): queries
/// that sign (a fresh denial: ECDSA over an NSEC) mixed with plain static answers, asked one
/// at a time of one UDP worker. Each query is counted once, in its own bucket: the plain
/// answers stay several buckets below the signed ones, where one figure for every query
/// would have put them all together. (Queries that arrive together are timed until their
/// replies are ready to be sent together, so a burst would share its slowest answer's time.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_times_are_counted_per_query() {
    const QUERIES: usize = 60;
    const SIGNED_EVERY: usize = 6;
    let (zones, state) = signed_setup("dnssec-histogram");
    let mut s = settings(&zones, None);
    s.state = state;
    s.udp_workers = 1;
    let server = Server::start(s).await;
    let buckets = |text: &str| -> Vec<(f64, f64)> {
        text.lines()
            .filter_map(|l| l.strip_prefix("meridian_dns_response_seconds_bucket{le=\""))
            .filter_map(|l| {
                let (le, n) = l.split_once("\"} ")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, n.parse().ok()?))
            })
            .collect()
    };
    let before = buckets(&meridian::admin::metrics::render(&server.running.control));
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let mut buf = [0u8; 4096];
    let mut replies = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    for i in 0..QUERIES {
        let packet = if i % SIGNED_EVERY == 0 {
            do_query(&format!("nx{i}.signed.test"), 1)
        } else {
            Query::new("static.signed.test", 1).packet()
        };
        sock.send_to(&packet, server.dns).await.expect("send");
        match tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
            Ok(Ok(_)) => replies += 1,
            _ => break,
        }
    }
    assert_eq!(replies, QUERIES);
    // Workers fold their counters every second.
    let start = Instant::now();
    let delta = loop {
        let after = buckets(&meridian::admin::metrics::render(&server.running.control));
        let delta: Vec<(f64, f64)> = after
            .iter()
            .zip(&before)
            .map(|((le, a), (_, b))| (*le, a - b))
            .collect();
        if delta.last().is_some_and(|(_, n)| *n >= QUERIES as f64)
            || start.elapsed() > Duration::from_secs(5)
        {
            break delta;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    server.stop().await;
    assert_eq!(delta.last().map(|d| d.1), Some(QUERIES as f64), "{delta:?}");
    // Cumulative buckets: `plain` is the first that holds two thirds of the queries (all of
    // them plain answers); the signed ones must lie beyond the next bucket up (at least twice
    // as slow). An average over a batch would put every query in one bucket.
    let signed = QUERIES.div_ceil(SIGNED_EVERY) as f64;
    let plain = delta
        .iter()
        .position(|(_, n)| *n >= (QUERIES * 2 / 3) as f64)
        .expect("+Inf holds all");
    let above = QUERIES as f64 - delta.get(plain + 1).map_or(QUERIES as f64, |d| d.1);
    assert!(
        above >= signed * 0.8,
        "the signed answers should sit above the plain ones: {delta:?}"
    );
}
