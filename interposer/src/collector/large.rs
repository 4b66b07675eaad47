//! The live blocks larger than a page: the only ones that can reach into a page from before
//! the page preceding it, which a forked child's scan must know (see `inheritance.rs`)
//! without going through every block it inherited.
//!
//! Must stay cheap on the collector's path: one comparison per allocation of a small block.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use libleak_format::live::{AddressHasher, LiveBlock, LiveSet};

/// Larger than this is large: a page, as `/proc/self/pagemap` counts them.
pub(super) const LARGE: u64 = crate::sys::pagemap::PAGE;

/// The live blocks larger than a page, by address: the only blocks that can reach into a page
/// from before the page preceding it. Entries are added as blocks are allocated and checked
/// against the live set when read (a block freed since is no longer there, or is another);
/// the table is pruned whenever it doubles.
pub(super) struct LargeBlocks<B> {
    blocks: HashMap<u64, B, BuildHasherDefault<AddressHasher>>,
    pruned_at: usize,
}

impl<B> Default for LargeBlocks<B> {
    fn default() -> Self {
        LargeBlocks {
            blocks: HashMap::default(),
            pruned_at: 0,
        }
    }
}

impl<B: LiveBlock> LargeBlocks<B> {
    /// After `live` took in the allocation of `block` at `address`.
    pub(super) fn note(&mut self, address: u64, block: B, live: &LiveSet<B>) {
        if block.size() <= LARGE {
            return;
        }
        self.blocks.insert(address, block);
        if self.blocks.len() >= 2 * self.pruned_at.max(1024) {
            self.blocks
                .retain(|&address, block| live.live_at(address).is_some_and(|live| live.seq() == block.seq()));
            self.pruned_at = self.blocks.len();
        }
    }

    /// Every block noted and perhaps still live: the caller checks it against the live set.
    pub(super) fn blocks(&self) -> impl Iterator<Item = (u64, &B)> {
        self.blocks.iter().map(|(&address, block)| (address, block))
    }
}
