//! Criterion benches of the hot path on the shipped example zone and test database:
//! `policy::answer` per policy kind, and one whole query through `dns::handler::handle`.
//! Run: `cargo bench --bench answer`.

use std::hint::black_box;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use meridian::config::{LoadOptions, load_dir};
use meridian::dns::handler::{Local, Transport, handle};
use meridian::geo::GeoDb;
use meridian::health::View;
use meridian::model::ZoneId;
use meridian::policy::{self, Client, Ctx, NoTrace};
use meridian::world::World;

fn world() -> World {
    let snap = load_dir(&LoadOptions {
        zones_dir: Path::new("zones"),
        previous: None,
    })
    .expect("the example zone loads");
    let geo =
        GeoDb::open(Path::new("geoip/test-city.mmdb"), None).expect("the test database opens");
    let health = Arc::new(View::unknown(&snap));
    World::new(Arc::new(snap), health, Some(Arc::new(geo)))
}

fn policies(c: &mut Criterion) {
    let w = world();
    let ctx = Ctx {
        snap: &w.snapshot,
        health: &w.health,
        geo: &w.geo,
    };
    let client = Client {
        addr: "203.0.113.7".parse::<IpAddr>().expect("addr"),
        source_prefix: Some(24),
    };
    for name in ["www", "api", "canary", "fast", "eu-or-split"] {
        let id = w
            .snapshot
            .find_policy(ZoneId(0), name)
            .expect("example policy");
        let mut seed = 1u64;
        c.bench_function(&format!("answer/{name}"), |b| {
            b.iter(|| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                black_box(policy::answer(&ctx, id, client, seed, &mut NoTrace))
            })
        });
    }
}

fn query(name: &str, ecs: bool) -> Vec<u8> {
    let qname = meridian::model::wire::from_text(name).expect("valid name");
    let client: IpAddr = "203.0.113.0".parse().expect("addr");
    meridian::explain::query_packet(&qname, 1, client, ecs.then_some(24))
}

fn handler(c: &mut Criterion) {
    let w = world();
    let src: IpAddr = "127.0.0.1".parse().expect("addr");
    let mut out = Vec::with_capacity(1232);
    let mut local = Local::default();
    for (label, packet) in [
        ("handle/static", query("static.gslb.example.test", false)),
        ("handle/geo+ecs", query("www.gslb.example.test", true)),
        ("handle/nxdomain", query("nope.gslb.example.test", false)),
    ] {
        c.bench_function(label, |b| {
            b.iter(|| {
                black_box(handle(
                    &w,
                    &packet,
                    &src,
                    Transport::Udp,
                    7,
                    &mut out,
                    &mut local,
                ))
            })
        });
    }
}

criterion_group!(benches, policies, handler);
criterion_main!(benches);
