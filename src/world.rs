//! The world one query sees: the compiled snapshot, the health view built for it and the
//! GeoIP database, swapped together so that a query loads one consistent state once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;

use crate::dns::fail_open::FailOpenLog;
use crate::geo::{GeoDb, Locate, Located, PolicyTrees};
use crate::health::View;
use crate::model::{PolicyId, Snapshot};

pub struct World {
    pub snapshot: Arc<Snapshot>,
    /// Indexed like `snapshot`.
    pub health: Arc<View>,
    pub geo: Option<Arc<GeoDb>>,
    /// Each geo policy's decision tree over `geo`: built with the world, shared by the
    /// worlds of one snapshot and database.
    pub geo_trees: Arc<PolicyTrees>,
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
    /// A world, its geo policy trees built: up to a few tenths of a second with a full City
    /// database, so called at start and on the reload thread only.
    pub fn new(snapshot: Arc<Snapshot>, health: Arc<View>, geo: Option<Arc<GeoDb>>) -> World {
        let trees = Arc::new(PolicyTrees::build(&snapshot, geo.as_deref()));
        World::with_trees(snapshot, health, geo, trees)
    }

    /// A world of trees already built for `snapshot` and `geo`.
    pub fn with_trees(
        snapshot: Arc<Snapshot>,
        health: Arc<View>,
        geo: Option<Arc<GeoDb>>,
        geo_trees: Arc<PolicyTrees>,
    ) -> World {
        World {
            fail_open_log: Arc::new(FailOpenLog::new(snapshot.policies.len())),
            geo_trees,
            snapshot,
            health,
            geo,
            generation: NEXT_GENERATION.fetch_add(1, Ordering::Relaxed),
            nsid: None,
        }
    }

    /// The same snapshot and database seen through another health view: a new generation
    /// sharing everything else (trees, fail-open log, NSID).
    pub fn with_health(&self, health: Arc<View>) -> World {
        World {
            snapshot: self.snapshot.clone(),
            health,
            geo: self.geo.clone(),
            geo_trees: self.geo_trees.clone(),
            generation: NEXT_GENERATION.fetch_add(1, Ordering::Relaxed),
            nsid: self.nsid.clone(),
            fail_open_log: self.fail_open_log.clone(),
        }
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
impl Locate for Option<Arc<GeoDb>> {
    fn locate(&self, ip: std::net::IpAddr) -> Located {
        self.as_ref().map(|db| db.locate(ip)).unwrap_or_default()
    }
}

/// The DNS path: the world's database, and its geo policies' trees.
impl Locate for World {
    fn locate(&self, ip: std::net::IpAddr) -> Located {
        self.geo.locate(ip)
    }

    fn locate_for(&self, policy: PolicyId, ip: std::net::IpAddr) -> Option<Located> {
        self.geo_trees.locate(policy, ip)
    }

    fn rule_targets(
        &self,
        policy: PolicyId,
        ip: std::net::IpAddr,
    ) -> Option<crate::geo::RuleClass<'_>> {
        self.geo_trees.rule_targets(policy, ip)
    }
}
