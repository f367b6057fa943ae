//! Request bytes → `dns::handler::handle` → the reply must parse again (hickory-proto),
//! echo the id and fit UDP's or TCP's limit. A panic anywhere on the way is a crash (the
//! per-query guard catches it in production, but libFuzzer's panic hook aborts first).
//!
//! Input: one byte of choices (transport, client), then the DNS message.

#![no_main]

#[path = "common.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use meridian::config::{Source, load_sources};
use meridian::dns::handler::{Local, Transport};
use meridian::geo::GeoDb;
use meridian::health::View;
use meridian::world::World;

/// The shipped example zone beside `zones/edge.toml` (delegation, wildcards, CNAME chains,
/// answers near the UDP limit), with the test GeoIP database.
fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let sources: Vec<Source> = [
            root.join("zones/example.toml"),
            root.join("tools/fuzz/zones/edge.toml"),
        ]
        .into_iter()
        .map(|path: PathBuf| Source {
            text: std::fs::read_to_string(&path).expect("fuzz zone"),
            path,
        })
        .collect();
        let snap = load_sources(&sources, None).expect("the fuzz zones load");
        let geo = GeoDb::open(&root.join("geoip/test-city.mmdb"), None).expect("test database");
        let health = Arc::new(View::unknown(&snap));
        World::new(Arc::new(snap), health, Some(Arc::new(geo)))
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&choice, packet)) = data.split_first() else {
        return;
    };
    let transport = if choice & 1 == 0 {
        Transport::Udp
    } else {
        Transport::Tcp
    };
    let src = common::CLIENTS[usize::from(choice >> 1) % common::CLIENTS.len()];
    let mut out = Vec::new();
    let mut local = Local::default();
    common::answer_and_reparse(world(), packet, src, transport, &mut out, &mut local);
});
