//! Shared test plumbing: temp zone directories, an in-process server on 127.0.0.1:0, and
//! DNS over real UDP/TCP sockets with responses parsed by hickory-proto.

#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hickory_proto::op::Message;
use meridian::app::{Running, start};
use meridian::settings::{LogFormat, Settings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// Every socket wait in these tests is bounded by this.
pub const IO_TIMEOUT: Duration = Duration::from_secs(3);

/// A fresh empty directory under the system temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "meridian-it-{}-{tag}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// A zone directory holding `files` (name, TOML text).
pub fn zone_dir(tag: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir = temp_dir(tag);
    for (name, text) in files {
        std::fs::write(dir.join(name), text).expect("write zone");
    }
    dir
}

/// Settings for an in-process server on port 0 with the shipped GeoIP database.
pub fn settings(zones: &Path, geoip: Option<&str>) -> Settings {
    Settings {
        listen: vec!["127.0.0.1:0".parse().expect("addr")],
        admin: None,
        admin_token_file: None,
        zones: zones.to_path_buf(),
        geoip: geoip.map(PathBuf::from),
        asn: None,
        state: temp_dir("state"),
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

pub struct Server {
    pub running: Running,
    pub dns: SocketAddr,
}

impl Server {
    pub async fn start(settings: Settings) -> Server {
        let running = start(settings).await.expect("server starts");
        let dns = running.dns[0];
        Server { running, dns }
    }

    /// The shipped example zone with the shipped database.
    pub async fn example() -> Server {
        Server::start(settings(Path::new("zones"), Some("geoip/test-city.mmdb"))).await
    }

    pub async fn udp(&self, packet: &[u8]) -> Option<Vec<u8>> {
        udp(self.dns, packet).await
    }

    pub async fn ask(&self, q: &Query) -> Message {
        let bytes = self.udp(&q.packet()).await.expect("a UDP reply");
        Message::from_vec(&bytes).expect("reply parses")
    }

    pub async fn ask_tcp(&self, q: &Query) -> Message {
        let bytes = tcp(self.dns, &[q.packet()])
            .await
            .pop()
            .expect("a TCP reply");
        Message::from_vec(&bytes).expect("reply parses")
    }

    pub async fn stop(self) {
        self.running.shutdown().await;
    }
}

/// A query built by hand, so tests can also build broken ones.
#[derive(Clone)]
pub struct Query {
    pub name: String,
    pub qtype: u16,
    pub id: u16,
    /// EDNS payload size; `None` sends no OPT.
    pub edns: Option<u16>,
    pub edns_version: u8,
    /// Raw EDNS options (code, data).
    pub options: Vec<(u16, Vec<u8>)>,
}

impl Query {
    pub fn new(name: &str, qtype: u16) -> Query {
        Query {
            name: name.to_string(),
            qtype,
            id: 0x4d52,
            edns: None,
            edns_version: 0,
            options: Vec::new(),
        }
    }

    pub fn edns(mut self, payload: u16) -> Query {
        self.edns = Some(payload);
        self
    }

    /// An ECS option for `addr/prefix` (address masked as RFC 7871 requires).
    pub fn ecs(mut self, addr: IpAddr, prefix: u8) -> Query {
        self.edns.get_or_insert(1232);
        let (family, bytes): (u16, Vec<u8>) = match addr {
            IpAddr::V4(a) => (1, a.octets().to_vec()),
            IpAddr::V6(a) => (2, a.octets().to_vec()),
        };
        let n = usize::from(prefix).div_ceil(8);
        let mut data = family.to_be_bytes().to_vec();
        data.extend_from_slice(&[prefix, 0]);
        let mut addr_bytes = bytes[..n].to_vec();
        if !prefix.is_multiple_of(8) {
            let last = addr_bytes.len() - 1;
            addr_bytes[last] &= 0xffu8 << (8 - prefix % 8);
        }
        data.extend_from_slice(&addr_bytes);
        self.options.push((8, data));
        self
    }

    pub fn packet(&self) -> Vec<u8> {
        let mut p = self.id.to_be_bytes().to_vec();
        p.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, u8::from(self.edns.is_some())]);
        for label in self.name.trim_end_matches('.').split('.') {
            p.push(label.len() as u8);
            p.extend_from_slice(label.as_bytes());
        }
        p.push(0);
        p.extend_from_slice(&self.qtype.to_be_bytes());
        p.extend_from_slice(&1u16.to_be_bytes());
        if let Some(payload) = self.edns {
            p.extend_from_slice(&[0, 0, 41]);
            p.extend_from_slice(&payload.to_be_bytes());
            p.extend_from_slice(&[0, self.edns_version, 0, 0]);
            let rdata: Vec<u8> = self
                .options
                .iter()
                .flat_map(|(code, data)| {
                    let mut o = code.to_be_bytes().to_vec();
                    o.extend_from_slice(&(data.len() as u16).to_be_bytes());
                    o.extend_from_slice(data);
                    o
                })
                .collect();
            p.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
            p.extend_from_slice(&rdata);
        }
        p
    }
}

/// One datagram out, the reply back (`None` after a short wait: the server stayed silent).
pub async fn udp(server: SocketAddr, packet: &[u8]) -> Option<Vec<u8>> {
    udp_wait(server, packet, Duration::from_millis(700)).await
}

/// As [`udp`], waiting at most `wait` for the reply.
pub async fn udp_wait(server: SocketAddr, packet: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    sock.send_to(packet, server).await.expect("send");
    let mut buf = vec![0u8; 65535];
    match tokio::time::timeout(wait, sock.recv(&mut buf)).await {
        Ok(Ok(n)) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

/// Several queries written at once on one connection (pipelined), their replies in order.
pub async fn tcp(server: SocketAddr, packets: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let s = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(server))
        .await
        .expect("connect in time")
        .expect("connect");
    tcp_exchange(s, packets).await
}

/// Write the queries at once on a connected stream; read their replies in order until one is
/// missing or late.
pub async fn tcp_exchange(mut s: TcpStream, packets: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for p in packets {
        out.extend_from_slice(&(p.len() as u16).to_be_bytes());
        out.extend_from_slice(p);
    }
    s.write_all(&out).await.expect("write");
    let mut replies = Vec::new();
    for _ in packets {
        let read = async {
            let len = s.read_u16().await.ok()?;
            let mut buf = vec![0u8; usize::from(len)];
            s.read_exact(&mut buf).await.ok()?;
            Some(buf)
        };
        match tokio::time::timeout(IO_TIMEOUT, read).await {
            Ok(Some(r)) => replies.push(r),
            _ => break,
        }
    }
    replies
}

/// The answer section's RDATA as text, sorted.
pub fn answers(m: &Message) -> Vec<String> {
    let mut v: Vec<String> = m.answers.iter().map(|r| r.data.to_string()).collect();
    v.sort();
    v
}

/// The ECS option of a response: (source prefix, scope prefix).
pub fn ecs_scope(m: &Message) -> Option<(u8, u8)> {
    use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};
    match m.edns.as_ref()?.option(EdnsCode::Subnet)? {
        EdnsOption::Subnet(s) => Some((s.source_prefix(), s.scope_prefix())),
        _ => None,
    }
}

/// A port on 127.0.0.1 where nothing listens (bound, then released).
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a throwaway port");
    l.local_addr().expect("local addr").port()
}

/// A loopback port free for both UDP and TCP right now, for a server started outside this
/// process (etcd, delv's target, pdns_recursor).
pub fn free_port() -> u16 {
    for _ in 0..32 {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let port = udp.local_addr().expect("addr").port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port");
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}
