//! The names of the steps of retention paths (`.attr`, `['key']`, `[3]`), read after the
//! scan at finalisation has flooded from its named roots: for each held block, how the block
//! it was first reached from holds it (see [`crate::python::steps`]).
//!
//! Reads memory only through the scan's reader; never writes.

use super::blocks::Blocks;
use super::structure::NO_OBJECT;
use crate::python::holders::Namer;
use crate::python::steps::{Link, StepNamer};
use crate::sys::memory::MemoryReader;

/// What naming the steps of retention paths reads from the flood: how each held block was
/// reached, and the objects blocks hold.
pub(super) struct PathFacts<'a> {
    pub(super) blocks: &'a Blocks,
    pub(super) holder: &'a [(u32, u32)],
    pub(super) reached_at: &'a [u32],
    pub(super) object_starts: &'a [u8],
    pub(super) object_types: &'a [u32],
    pub(super) type_addresses: &'a [u64],
}

impl PathFacts<'_> {
    /// The block `index` was reached from, as a link of its path: that block's index, and
    /// the block with the word that reached `index`.
    fn up(&self, index: usize) -> Option<(usize, Link)> {
        let from = self.holder.get(index)?.1.checked_sub(1)? as usize;
        let at = *self.reached_at.get(index)?;
        if at == u32::MAX {
            return None;
        }
        let block = self.blocks.addresses[from];
        let start = *self.object_starts.get(from)?;
        let type_address = self
            .object_types
            .get(from)
            .and_then(|&id| self.type_addresses.get((id as usize).checked_sub(1)?));
        let object = match type_address {
            Some(&type_address) if start != NO_OBJECT => Some((block + u64::from(start), type_address)),
            _ => None,
        };
        Some((
            from,
            Link {
                block,
                size: self.blocks.sizes[from],
                object,
                word: block + u64::from(at),
            },
        ))
    }
}

/// The named steps of the held blocks' retention paths.
#[derive(Default)]
pub(super) struct Steps {
    /// Step `id` is at index `id - 1`.
    pub(super) names: Vec<String>,
    /// Per block, the step id by which the block it was reached from holds it (0: none).
    pub(super) of_block: Vec<u32>,
}

/// Names how each held block is held by the block it was reached from (see
/// [`Namer::step_name`]), each distinct name once.
pub(super) fn name_steps(namer: &Namer, path: &PathFacts<'_>, memory: &mut MemoryReader) -> Steps {
    let count = path.blocks.addresses.len();
    let mut steps = Steps {
        names: Vec::new(),
        of_block: vec![0; count],
    };
    let mut read = |address: u64| memory.word(address);
    let mut namer = StepNamer::new(namer);
    for index in 0..count {
        if path.holder[index].0 == 0 {
            continue;
        }
        let Some((mut at, parent)) = path.up(index) else {
            continue;
        };
        // The blocks further up, followed only when the parent's kind asks for them.
        let mut links: [Option<Link>; 3] = [Some(parent), None, None];
        let mut reached = 0;
        let mut above = |wanted: usize| {
            while reached < wanted.min(2) {
                let (from, link) = path.up(at)?;
                at = from;
                reached += 1;
                links[reached] = Some(link);
            }
            links.get(wanted).copied().flatten()
        };
        steps.of_block[index] = namer.step_name(&mut read, parent, &mut above).unwrap_or(0);
    }
    steps.names = namer.into_names();
    steps
}
