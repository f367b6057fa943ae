//! Memory back to the OS after a zone load or a reload (issue 12).
//!
//! The binary's allocator (mimalloc, see main.rs) frees the pages of a big load's garbage
//! (file text, the toml tree of the policies, the builder's arrays) into its arenas and
//! returns them to the OS only later: a page becomes purgeable `purge_delay` after it was
//! freed, and the purge runs only when the allocator frees a page again on some thread.
//! After a load nothing does (the DNS path never allocates), so a served million-name
//! zone stayed at the load's peak (343 MB instead of 129 MB, `bigzone run`). This nudge
//! waits out the delay and then frees a few pages of its own, which lets the allocator
//! run the purge it has scheduled; it touches no zone data and takes no lock.

use std::time::Duration;

/// mimalloc's default `purge_delay` (its src/options.c: 1000 ms), with a margin.
const PURGE_WAIT: Duration = Duration::from_millis(1500);
/// A block above mimalloc's largest pooled object (MI_LARGE_MAX_OBJ_SIZE, an eighth of its
/// 4 MiB large page), so that each one is a page of its own, freed to an arena at once;
/// never written, so it costs no page of RAM.
const NUDGE_BLOCK: usize = 8 << 20;
/// Every page freed lets mimalloc purge one of its arenas (`max_arena/4 + 1` of them per
/// call); a big load leaves a handful, so this many rounds reach them all.
const NUDGE_ROUNDS: usize = 16;

/// After `PURGE_WAIT`, on a thread of its own, let the allocator return what a load freed.
pub fn return_freed_memory_later() {
    let spawned = std::thread::Builder::new()
        .name("meridian-trim".into())
        .spawn(|| {
            std::thread::sleep(PURGE_WAIT);
            for _ in 0..NUDGE_ROUNDS {
                let block: Vec<u8> = Vec::with_capacity(NUDGE_BLOCK);
                drop(std::hint::black_box(block));
            }
        });
    if let Err(e) = spawned {
        tracing::debug!("memory is not handed back after this load: {e}");
    }
}
