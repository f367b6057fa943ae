//! A per-worker cache of GeoIP answers. A lookup in the database costs a few hundred
//! nanoseconds, more than the rest of a query; resolvers and ECS subnets repeat, so each
//! worker keeps the last answers per address in a small direct-mapped table, cleared when
//! the world's database changes. Exact addresses are the keys, so a hit is always what the
//! database would say.

use std::cell::RefCell;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Arc;

use rustc_hash::FxBuildHasher;

use crate::geo::{GeoDb, Locate, Located};

#[derive(Clone, Copy)]
struct Slot {
    addr: Option<IpAddr>,
    located: Located,
}

pub struct GeoCache {
    /// Id of the database the slots came from (0: none).
    db: u64,
    slots: Box<[Slot]>,
}

const EMPTY: Slot = Slot {
    addr: None,
    located: Located {
        location: None,
        prefix_len: 0,
    },
};

impl GeoCache {
    /// A cache of `slots` entries (rounded up to a power of two).
    pub fn new(slots: usize) -> GeoCache {
        GeoCache {
            db: 0,
            slots: vec![EMPTY; slots.next_power_of_two()].into_boxed_slice(),
        }
    }

    fn locate(&mut self, db: &Option<Arc<GeoDb>>, ip: IpAddr) -> Located {
        let id = db.as_ref().map_or(0, |d| d.id());
        if id != self.db {
            self.slots.fill(EMPTY);
            self.db = id;
        }
        let i = (FxBuildHasher.hash_one(ip) as usize) & (self.slots.len() - 1);
        let slot = &mut self.slots[i];
        if slot.addr == Some(ip) {
            return slot.located;
        }
        let located = db.locate(ip);
        *slot = Slot {
            addr: Some(ip),
            located,
        };
        located
    }
}

/// The world's database seen through a worker's cache.
pub struct Cached<'a> {
    pub db: &'a Option<Arc<GeoDb>>,
    pub cache: &'a RefCell<GeoCache>,
}

impl Locate for Cached<'_> {
    fn locate(&self, ip: IpAddr) -> Located {
        self.cache.borrow_mut().locate(self.db, ip)
    }
}
