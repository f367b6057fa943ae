//! A per-worker cache of RRSIG RDATA, keyed by a 128-bit keyed hash of what the signature
//! covers (key, owner, type, TTL and the canonical RDATA set). Fixed slots, allocated once
//! on first use and never grown: a flood of unique names only evicts, it cannot add memory.
//! Direct-mapped: one probe per lookup, no lock (each worker owns its cache).

/// RFC 4034 §3.1: 18 fixed octets, the signer's name (at most 255, RFC 1035 §2.3.4) and
/// the P-256 signature (64 octets, RFC 6605 §4).
pub const MAX_RRSIG_RDATA: usize = 18 + 255 + 64;

#[derive(Clone)]
struct Slot {
    /// 0 = empty (keys are never 0).
    key: u128,
    /// Unix seconds after which the signature is made anew.
    refresh_at: u64,
    len: u16,
    rdata: [u8; MAX_RRSIG_RDATA],
}

pub struct SigCache {
    slots: Option<Box<[Slot]>>,
    capacity: usize,
    used: usize,
}

impl SigCache {
    /// A cache of `capacity` slots (rounded up to a power of two); nothing allocated yet.
    pub fn new(capacity: usize) -> SigCache {
        SigCache {
            slots: None,
            capacity: capacity.max(1).next_power_of_two(),
            used: 0,
        }
    }

    /// The RRSIG RDATA stored under `key`, unless it is due for refresh at `now`.
    pub fn get(&self, key: u128, now: u64) -> Option<&[u8]> {
        let slot = &self.slots.as_ref()?[self.index(key)];
        (slot.key == key && now < slot.refresh_at).then(|| &slot.rdata[..usize::from(slot.len)])
    }

    /// Store `rdata` under `key` (evicting what shared its slot).
    pub fn put(&mut self, key: u128, refresh_at: u64, rdata: &[u8]) {
        if rdata.len() > MAX_RRSIG_RDATA {
            return;
        }
        let i = self.index(key);
        let capacity = self.capacity;
        let slots = self.slots.get_or_insert_with(|| {
            vec![
                Slot {
                    key: 0,
                    refresh_at: 0,
                    len: 0,
                    rdata: [0; MAX_RRSIG_RDATA],
                };
                capacity
            ]
            .into_boxed_slice()
        });
        let slot = &mut slots[i];
        if slot.key == 0 {
            self.used += 1;
        }
        slot.key = key;
        slot.refresh_at = refresh_at;
        slot.len = rdata.len() as u16;
        slot.rdata[..rdata.len()].copy_from_slice(rdata);
    }

    /// Slots in use.
    pub fn len(&self) -> usize {
        self.used
    }

    pub fn is_empty(&self) -> bool {
        self.used == 0
    }

    /// Slots in all (the bound).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn index(&self, key: u128) -> usize {
        (key as usize) & (self.capacity - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_refreshes() {
        let mut c = SigCache::new(8);
        assert!(c.get(5, 0).is_none());
        for k in 1..=10_000u128 {
            c.put(k, 100, &[k as u8; 3]);
        }
        assert_eq!((c.len(), c.capacity()), (8, 8));
        assert_eq!(c.get(10_000, 99), Some(&[16u8; 3][..]));
        assert!(c.get(10_000, 100).is_none(), "due for refresh");
        assert!(c.get(9_999 - 7, 0).is_none(), "evicted");
    }
}
