//! The DNS front end: wire parsing (wire.rs), the reject ladder and one world load per query
//! (handler.rs) under a panic guard (guard.rs), TSIG without keys (tsig.rs), the
//! authoritative lookup (lookup.rs), response writing with EDNS, ECS and truncation
//! (response.rs), per-worker counters (stats.rs), the rate-limited fail-open log line
//! (fail_open.rs), response rate limiting of UDP (rrl.rs), replayed static responses
//! (packet_cache.rs) and ECS answers (ecs_cache.rs), the sockets (listen.rs) and DNS over
//! TCP (tcp.rs).

mod ecs_cache;
pub mod fail_open;
pub mod guard;
pub mod handler;
pub mod listen;
pub mod lookup;
pub mod packet_cache;
pub mod response;
pub mod rrl;
pub mod stats;
pub mod tcp;
pub mod tsig;
pub mod wire;
