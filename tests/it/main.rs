//! The one integration test binary: every module below starts real servers on 127.0.0.1.

// Test modules share helpers through `pub`; in a binary crate that lint only adds noise.
#![allow(unreachable_pub)]

mod admin;
mod admin_limits;
mod check;
mod cli;
mod cluster;
mod dns;
mod dnssec;
mod geo;
mod hardening;
mod health;
mod logs;
mod policy;
mod records_file;
mod recursor;
mod rrl;
mod scope;
mod support;
mod tcp;
mod tsig;

/// Counts allocations per thread (dns::answering_a_query_allocates_nothing).
#[global_allocator]
static ALLOCATOR: densa_alloc::CountingAllocator = densa_alloc::CountingAllocator::system();
