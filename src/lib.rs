//! Meridian: an authoritative DNS server that steers traffic between regions.
//!
//! ```text
//!  zones/*.toml ──► config (check/compile) ──► Snapshot (immutable, swapped on reload)
//!  geoip/*.mmdb ──► geo::GeoDb (compiled trie) ────┘                    │
//!  health::prober (HTTP/HTTPS/TCP tasks) ──► health::View ─────────────┤
//!                                                                       ▼
//!  UDP/TCP :5353 ─► dns (parse) ─► policy::answer (pure) ─► dns (encode) ─► response
//!  admin HTTP :8053 ─► /healthz /metrics /v1/status /v1/explain /v1/reload /v1/overrides
//! ```
//!
//! Module dependencies point one way:
//! `cli → app → {dns, admin, reload, health::prober} → policy → {model, geo, health::View}`.

pub mod admin;
pub mod app;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod connections;
pub mod dns;
pub mod dnssec;
pub mod explain;
pub mod geo;
pub mod health;
pub mod memory;
pub mod model;
pub mod policy;
pub mod prefix;
pub mod reload;
pub mod settings;
pub mod world;
