//! Stage 5, attribute: decides, for each (stack, class) count, whether it is reachable, left
//! by the runtime alone ([`roles`]), suppressed ([`suppress`]) or a leak, and sums the report's
//! summary from those decisions.
//!
//! Must stay pure: decisions from the merged frames and the options only, never from files.

pub mod roles;
pub mod suppress;

use std::collections::HashMap;

use libleak_format::LeakClass;

use crate::classify::StackTally;
use crate::model::{Frame, Summary};
use crate::options::Options;
use roles::Roles;

/// A count the report lists as (part of) a row, with the judgement that decides its row.
#[derive(Clone, Debug)]
pub struct Attributed<'a> {
    pub tally: &'a StackTally,
    pub frames: &'a [Frame],
    pub reachable: bool,
    /// Allocated by the runtime alone.
    pub leftover: bool,
}

/// The summary of every count, and the counts to list (in the order of `tallies`).
pub fn attribute<'a>(
    tallies: &'a [StackTally],
    merged: &'a HashMap<u64, Vec<Frame>>,
    roles: &Roles,
    options: &Options,
) -> (Summary, Vec<Attributed<'a>>) {
    let mut summary = Summary::default();
    let mut shown = Vec::new();
    for tally in tallies {
        let frames = merged.get(&tally.stack).map_or(&[][..], Vec::as_slice);
        let (blocks, bytes) = (tally.tally.blocks, tally.tally.bytes);
        let reachable = tally.class == Some(LeakClass::Reachable);
        let leftover = !reachable && roles.is_runtime_leftover(frames);
        let listed = if reachable {
            summary.reachable.add(blocks, bytes);
            options.show_reachable
        } else if leftover {
            summary.runtime_leftovers.add(blocks, bytes);
            options.show_leftovers
        } else if suppress::matching(&options.suppressions, frames).is_some() {
            summary.suppressed.add(blocks, bytes);
            false
        } else {
            match tally.class {
                Some(LeakClass::DefinitelyLost) => summary.definitely_lost.add(blocks, bytes),
                Some(LeakClass::IndirectlyLost) => summary.indirectly_lost.add(blocks, bytes),
                Some(LeakClass::PossiblyLost) => summary.possibly_lost.add(blocks, bytes),
                Some(LeakClass::Reachable) | None => summary.unclassified.add(blocks, bytes),
            }
            true
        };
        if listed {
            shown.push(Attributed {
                tally,
                frames,
                reachable,
                leftover,
            });
        }
    }
    (summary, shown)
}
