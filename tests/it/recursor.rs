//! Behind a real ECS-caching resolver: PowerDNS Recursor (Debian `pdns-recursor`) started
//! on loopback, forwarding the zone to Meridian with ECS on. The recursor caches each answer
//! for the scope Meridian returned (RFC 7871 §7.3.1) and serves it to every client inside,
//! so a scope that is too wide hands one client's pool to another. Clients are asked outer
//! rule first, then the nested ones; each must get the pool Meridian gives it directly.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hickory_proto::op::Message;
use tokio::net::UdpSocket;

use crate::support::{
    IO_TIMEOUT, Query, Server, answers, free_port, ip, settings, temp_dir, zone_dir,
};

const RECURSOR: &str = "/usr/sbin/pdns_recursor";

/// How long the recursor may take to start answering.
const START_TIMEOUT: Duration = Duration::from_secs(10);

const ZONE: &str = r#"
origin = "e.test."
policy_ttl = 300
[soa]
mname = "ns.e.test."
rname = "h.e.test."
[pools.outer]
A = ["192.0.2.1"]
location = [39.04, -77.49]
[pools.mid]
A = ["192.0.2.2"]
location = [51.5, -0.12]
[pools.inner]
A = ["192.0.2.3"]
location = [1.35, 103.82]
[policies.www]
geo.cidr = { "127.0.0.0/8" = "outer", "127.64.0.0/10" = "mid", "127.64.1.0/24" = "inner" }
geo.default = "outer"
[policies.lat]
latency = ["outer", "mid", "inner"]
latency_table = "rtt.csv"
"#;

const RTT: &str = "client_prefix,pool,rtt_ms
127.0.0.0/8,outer,10
127.0.0.0/8,mid,50
127.0.0.0/8,inner,50
127.64.0.0/16,mid,10
127.64.0.0/16,outer,50
127.64.1.0/24,inner,10
127.64.1.0/24,mid,50
";

/// The recursor process, stopped by its PID when the test ends (also on panic).
struct Recursor {
    child: Child,
    dir: std::path::PathBuf,
    addr: SocketAddr,
}

impl Drop for Recursor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start pdns_recursor with ECS towards Meridian. Every address it may query is loopback:
/// the root hints name 127.0.0.1 and `dont-query` forbids everything else.
async fn start_recursor(meridian: SocketAddr) -> Recursor {
    assert!(
        Path::new(RECURSOR).exists(),
        "{RECURSOR} is missing: install pdns-recursor (.ci/run does)"
    );
    let dir = temp_dir("recursor");
    let port = free_port();
    std::fs::write(
        dir.join("root.hints"),
        ". 3600000 NS a.root.test.\na.root.test. 3600000 A 127.0.0.1\n",
    )
    .expect("write hints");
    let conf = format!(
        "local-address=127.0.0.1\n\
         local-port={port}\n\
         socket-dir={dir}\n\
         hint-file={dir}/root.hints\n\
         forward-zones=e.test={meridian}\n\
         dont-query=0.0.0.0/0, ::/0, !127.0.0.0/8\n\
         allow-from=127.0.0.0/8\n\
         edns-subnet-allow-list=e.test\n\
         ecs-add-for=127.0.0.0/8\n\
         ecs-ipv4-bits=24\n\
         dnssec=off\n\
         threads=1\n\
         pdns-distributes-queries=no\n\
         security-poll-suffix=\n\
         write-pid=no\n\
         daemon=no\n\
         disable-syslog=yes\n\
         log-timestamp=no\n\
         loglevel=6\n",
        dir = dir.display()
    );
    std::fs::write(dir.join("recursor.conf"), conf).expect("write config");
    let log = std::fs::File::create(dir.join("recursor.log")).expect("log file");
    let child = Command::new(RECURSOR)
        .arg(format!("--config-dir={}", dir.display()))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("pdns_recursor starts");
    let r = Recursor {
        child,
        dir: dir.clone(),
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
    };
    let deadline = Instant::now() + START_TIMEOUT;
    let probe = recursive("ready.e.test");
    while Instant::now() < deadline {
        if ask_from(ip("127.0.0.1"), r.addr, &probe).await.is_some() {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = std::fs::read_to_string(dir.join("recursor.log")).unwrap_or_default();
    panic!("pdns_recursor did not answer within {START_TIMEOUT:?}:\n{log}");
}

/// An A query with RD set, as a stub resolver sends it.
fn recursive(name: &str) -> Vec<u8> {
    let mut p = Query::new(name, 1).packet();
    // RFC 1035 §4.1.1: RD is the lowest bit of the third header octet.
    p[2] |= 1;
    p
}

/// One UDP query sent from `source` (any 127.x address is ours on Linux).
async fn ask_from(source: IpAddr, server: SocketAddr, packet: &[u8]) -> Option<Message> {
    let sock = UdpSocket::bind((source, 0)).await.expect("bind source");
    sock.send_to(packet, server).await.expect("send");
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(IO_TIMEOUT, sock.recv(&mut buf)).await {
        Ok(Ok(n)) => Message::from_vec(&buf[..n]).ok(),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caching_resolver_gives_every_client_its_own_pool() {
    let dir = zone_dir("recursor-zone", &[("e.toml", ZONE), ("rtt.csv", RTT)]);
    let s = Server::start(settings(&dir, Some("geoip/test-city.mmdb"))).await;
    let recursor = start_recursor(s.dns).await;
    // Outer rule first: a scope as wide as the outer rule would be cached for all of them.
    // (client source address, pool of www, pool of lat)
    let clients: &[(&str, &str, &str)] = &[
        ("127.1.2.3", "192.0.2.1", "192.0.2.1"),
        ("127.64.1.5", "192.0.2.3", "192.0.2.3"),
        ("127.64.9.9", "192.0.2.2", "192.0.2.2"),
        ("127.65.0.1", "192.0.2.2", "192.0.2.1"),
        ("127.128.0.1", "192.0.2.1", "192.0.2.1"),
        ("127.1.2.77", "192.0.2.1", "192.0.2.1"),
        ("127.64.1.200", "192.0.2.3", "192.0.2.3"),
        ("127.64.200.1", "192.0.2.2", "192.0.2.2"),
    ];
    for (column, name) in ["www.e.test", "lat.e.test"].into_iter().enumerate() {
        let packet = recursive(name);
        for &(client, www, lat) in clients {
            let want = [www, lat][column];
            let source = ip(client);
            let direct = ask_from(source, s.dns, &packet)
                .await
                .expect("Meridian answers");
            let via = ask_from(source, recursor.addr, &packet)
                .await
                .expect("the recursor answers");
            assert_eq!(answers(&direct), [want], "{name} directly from {client}");
            if answers(&via) != [want] {
                // The recursor's own account of what it cached, for whoever reads the failure.
                let log = std::fs::read_to_string(recursor.dir.join("recursor.log"));
                eprintln!("{}", log.unwrap_or_default());
            }
            assert_eq!(
                answers(&via),
                [want],
                "{name} from {client} through the recursor"
            );
        }
    }
    drop(recursor);
    s.stop().await;
}
