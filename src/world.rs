//! The world one query sees: the compiled snapshot, the health view built for it and the
//! GeoIP database, swapped together so that a query loads one consistent state once.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::geo::GeoDb;
use crate::health::View;
use crate::model::Snapshot;

pub struct World {
    pub snapshot: Arc<Snapshot>,
    /// Indexed like `snapshot`.
    pub health: Arc<View>,
    pub geo: Option<Arc<GeoDb>>,
}

/// The current world, read lock-free by every DNS worker.
pub type SharedWorld = Arc<ArcSwap<World>>;

/// The DNS path locates clients through the world's database, if one is loaded.
impl crate::geo::Locate for Option<Arc<GeoDb>> {
    fn locate(&self, ip: std::net::IpAddr) -> Option<crate::geo::Location> {
        self.as_ref()?.locate(ip)
    }
}
