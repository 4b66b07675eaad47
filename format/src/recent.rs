//! The addresses of the latest ALLOC and FREE records, which ALLOC_REUSE and FREE_RECENT
//! records name by position instead of by address (SPEC.md). Most frees are of blocks
//! allocated a few events before, and malloc hands recently freed blocks out first: naming
//! such an address by a one-byte position instead of an address delta made event records
//! 36 % smaller after compression (alloc_heavy.py, 4.2 M events). Encoder and decoder keep
//! the same rings, updated by the same records, in their `DeltaState` (`delta.rs`).

/// How far back a position reaches.
pub const DEPTH: usize = 256;

/// The latest [`DEPTH`] addresses of one kind of record.
#[derive(Clone)]
pub struct Ring {
    addresses: Box<[u64; DEPTH]>,
    count: u64,
}

impl Default for Ring {
    fn default() -> Self {
        Ring {
            addresses: Box::new([0; DEPTH]),
            count: 0,
        }
    }
}

impl Ring {
    pub fn push(&mut self, address: u64) {
        self.addresses[(self.count % DEPTH as u64) as usize] = address;
        self.count += 1;
    }

    /// Forgets every address (a chunk starts).
    pub fn clear(&mut self) {
        self.count = 0;
    }

    /// The address `back` records before the latest (0: the latest).
    pub fn get(&self, back: u8) -> Option<u64> {
        let back = u64::from(back);
        (back < self.count.min(DEPTH as u64)).then(|| self.addresses[((self.count - 1 - back) % DEPTH as u64) as usize])
    }

    /// Records pushed so far.
    pub fn count(&self) -> u64 {
        self.count
    }
}

/// The encoder's side: finds an address's position in a [`Ring`] without searching it.
pub struct Finder {
    /// (address, its record number in the ring), by a hash of the address; a later record of
    /// another address with the same hash replaces it (that address is then written whole).
    slots: Box<[(u64, u64); FINDER_SLOTS]>,
}

const FINDER_SLOTS: usize = 1024;

impl Default for Finder {
    fn default() -> Self {
        Finder {
            slots: Box::new([(u64::MAX, 0); FINDER_SLOTS]),
        }
    }
}

impl Finder {
    fn slot(address: u64) -> usize {
        ((address >> 4).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 54) as usize % FINDER_SLOTS
    }

    /// Forgets every address (a chunk starts; its ring was cleared).
    pub fn clear(&mut self) {
        self.slots.fill((u64::MAX, 0));
    }

    /// Notes that `ring`'s latest record (just pushed) holds `address`.
    pub fn pushed(&mut self, ring: &Ring, address: u64) {
        self.slots[Self::slot(address)] = (address, ring.count() - 1);
    }

    /// The position of `address` in `ring`, when it is among its latest records.
    pub fn find(&self, ring: &Ring, address: u64) -> Option<u8> {
        let (found, number) = self.slots[Self::slot(address)];
        let back = u8::try_from(ring.count().checked_sub(number + 1)?).ok()?;
        (found == address && ring.get(back) == Some(address)).then_some(back)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_reach_back_exactly_as_far_as_the_ring() {
        let (mut ring, mut finder) = (Ring::default(), Finder::default());
        for i in 0..300u64 {
            ring.push(0x1000 + i * 16);
            finder.pushed(&ring, 0x1000 + i * 16);
        }
        assert_eq!(finder.find(&ring, 0x1000 + 299 * 16), Some(0));
        assert_eq!(ring.get(0), Some(0x1000 + 299 * 16));
        assert_eq!(finder.find(&ring, 0x1000 + 44 * 16), Some(255));
        assert_eq!(ring.get(255), Some(0x1000 + 44 * 16));
        assert_eq!(finder.find(&ring, 0x1000 + 43 * 16), None, "pushed out of the ring");
        assert_eq!(finder.find(&ring, 0x9999_0000), None);
        let empty = Ring::default();
        assert_eq!(empty.get(0), None);
    }
}
