//! The world one query sees: the compiled snapshot, the health view built for it and the
//! GeoIP database, swapped together so that a query loads one consistent state once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;

use crate::dns::fail_open::FailOpenLog;
use crate::geo::GeoDb;
use crate::health::View;
use crate::model::Snapshot;

pub struct World {
    pub snapshot: Arc<Snapshot>,
    /// Indexed like `snapshot`.
    pub health: Arc<View>,
    pub geo: Option<Arc<GeoDb>>,
    /// Unique per world (never reused in a process): per-worker caches key on it.
    pub generation: u64,
    /// The instance name NSID answers carry (RFC 5001); `None` answers no NSID.
    pub nsid: Option<Arc<str>>,
    /// When each policy of `snapshot` last logged a fail-open answer; shared by the worlds
    /// of one snapshot (a new health view must not restart the interval).
    pub fail_open_log: Arc<FailOpenLog>,
}

/// Source of [`World::generation`].
static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

impl World {
    pub fn new(snapshot: Arc<Snapshot>, health: Arc<View>, geo: Option<Arc<GeoDb>>) -> World {
        World {
            fail_open_log: Arc::new(FailOpenLog::new(snapshot.policies.len())),
            snapshot,
            health,
            geo,
            generation: NEXT_GENERATION.fetch_add(1, Ordering::Relaxed),
            nsid: None,
        }
    }

    /// The same world sharing the fail-open log of `previous` when both serve one snapshot.
    pub fn sharing_log_of(mut self, previous: &World) -> World {
        if Arc::ptr_eq(&self.snapshot, &previous.snapshot) {
            self.fail_open_log = previous.fail_open_log.clone();
        }
        self
    }

    /// The same world answering NSID with `name`.
    pub fn with_nsid(mut self, name: Option<Arc<str>>) -> World {
        self.nsid = name;
        self
    }
}

/// The current world, read lock-free by every DNS worker.
pub type SharedWorld = Arc<ArcSwap<World>>;

/// The DNS path locates clients through the world's database, if one is loaded.
impl crate::geo::Locate for Option<Arc<GeoDb>> {
    fn locate(&self, ip: std::net::IpAddr) -> crate::geo::Located {
        self.as_ref().map(|db| db.locate(ip)).unwrap_or_default()
    }
}
