//! Zone text → `config::load_str`: never a panic; every problem points inside the input;
//! and a zone that loads is then asked for every name it holds (A, AAAA, TXT, ANY, MX,
//! over UDP and TCP, with and without EDNS), each reply parsing again: no panic on any
//! input `check` accepts.

#![no_main]

#[path = "common.rs"]
mod common;

use std::path::Path;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use meridian::dns::handler::{Local, Transport};
use meridian::health::View;
use meridian::world::World;

/// Where the text is said to come from; files it names (latency tables) are looked for
/// beside it, where there are none.
const PATH: &str = "fuzz-nowhere/zone.toml";
/// Types asked of every name: A, AAAA, TXT, ANY, MX, NS, SOA, CNAME.
const QTYPES: [u16; 8] = [1, 28, 16, 255, 15, 2, 6, 5];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let snap = match meridian::config::load_str(Path::new(PATH), text) {
        Ok(snap) => snap,
        Err(diags) => {
            let lines = text.split('\n').count();
            for d in &diags.0 {
                if d.file == Path::new(PATH) {
                    assert!(d.line <= lines, "{d} is past line {lines}");
                }
            }
            return;
        }
    };
    let names: Vec<Box<[u8]>> = snap
        .zones
        .iter()
        .flat_map(|z| z.nodes.names().map(Box::from))
        .take(64)
        .collect();
    let health = Arc::new(View::unknown(&snap));
    let world = World::new(Arc::new(snap), health, None);
    let mut out = Vec::new();
    let mut local = Local::default();
    for (i, name) in names.iter().enumerate() {
        for qtype in QTYPES {
            for transport in [Transport::Udp, Transport::Tcp] {
                let packet = common::query(name, qtype, i % 2 == 0);
                let src = common::CLIENTS[i % common::CLIENTS.len()];
                common::answer_and_reparse(&world, &packet, src, transport, &mut out, &mut local);
            }
        }
    }
});
