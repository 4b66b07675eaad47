//! The collector's reachability scans: the one made when CPython's finalisation begins
//! (naming holders) and the one at exit, each written as BLOCK_CLASSES, OBJECT_TYPES,
//! HOLDERS, STEP_NAMES, BLOCK_HOLDERS, LOST_BLOCKS and REACHABILITY records.
//!
//! Runs on the collector thread after it has taken in every event recorded so far; the scan
//! itself ([`crate::reach`]) must never write to the program's memory.

use std::time::Duration;

use libleak_format::LeakClass;

use super::{Collector, ENTRIES_PER_RECORD};
use crate::reach::{self, ExitingThread, ScanInput, StaleWords, WrittenInheritance};
use crate::sys;

impl Collector {
    /// The scan made when CPython's finalisation began: what is reachable then is not a
    /// leak, whatever the teardown of modules leaves behind afterwards.
    pub(super) fn scan_at_finalization(&mut self, from: ExitingThread) {
        let Some(time_limit) = self.scan.time_limit else {
            return;
        };
        self.take_in_everything();
        self.encoder.finalizing(from.tid);
        // On disk at the next flush, within FLUSH_INTERVAL, like any other record.
        self.scan_reachability(from, time_limit, true);
    }

    /// With `name_holders`, the scan also names what holds each reachable block (module
    /// globals, class attributes, roots): asked for at Python's finalisation, when the modules
    /// still hold what the program kept.
    pub(super) fn scan_reachability(&mut self, exiting: ExitingThread, time_limit: Duration, name_holders: bool) {
        // Modules loaded since the last snapshot hold roots too.
        self.update_modules(sys::loader::loaded_modules(self.modules.main_exe()));
        // The scan's time includes gathering the blocks to read (in a fork child, finding the
        // inherited ones on written pages).
        let started = std::time::Instant::now();
        let mut blocks = Vec::new();
        self.live
            .for_each_live(|address, block| blocks.push((address, block.size)));
        let judges_inherited = self.inherited.is_empty()
            || match self.judges_inherited {
                Some(decided) => decided,
                None => {
                    let decided = self.scan.child_scan.judges_inherited(self.inherited_totals().0);
                    self.judges_inherited = Some(decided);
                    decided
                }
            };
        let inheritance = if judges_inherited {
            None
        } else {
            self.inheritance_to_read()
        };
        if inheritance.is_none() {
            self.for_each_inherited(|address, block| blocks.push((address, block.size)));
        }
        let judged_allocated_since_fork = inheritance.is_some();
        let (unjudged, written) = inheritance.map_or((0, None), |i| (i.unjudged, Some(i.written)));
        let stale_references = self.stale_references();
        let survived_collection = if name_holders {
            Vec::new()
        } else {
            self.garbage_still_live()
        };
        let mut holder = self.inherited_holder();
        let mut holding = |address| holder.holding(address);
        let modules = self.modules.modules();
        let own_module = modules.iter().find(|m| m.contains(self.scan.own_code));
        let gathering = started.elapsed();
        let mut result = reach::scan(ScanInput {
            blocks,
            inheritance: written.map(|written| WrittenInheritance {
                written,
                holding: &mut holding,
            }),
            modules,
            own_module,
            exiting: Some(exiting),
            python: crate::python::gc::objects(),
            namer: name_holders.then(crate::python::holders::namer).flatten(),
            time_limit: time_limit.saturating_sub(gathering),
            judged_allocated_since_fork,
            pages_shared: !self.inherited.is_empty() || self.parked_since_start,
            survived_collection,
            stale_references: StaleWords {
                slots: stale_references,
                dangling: self.dangling.words(),
            },
            age: &|address| self.live_block_at(address).map_or(u64::MAX, |block| block.seq),
        });
        if name_holders {
            self.garbage_at_finalization = result
                .classes
                .iter()
                .filter(|c| c.class == LeakClass::Collectable)
                .filter_map(|c| Some((c.address, self.live.live_at(c.address)?.seq)))
                .collect();
        }
        result.summary.duration_us += gathering.as_micros() as u64;
        for classes in result.classes.chunks(ENTRIES_PER_RECORD) {
            self.encoder.block_classes(classes);
        }
        for types in result.types.chunks(ENTRIES_PER_RECORD) {
            self.encoder.object_types(types);
        }
        if let Some(holders) = &result.holders {
            for names in holders.names.chunks(ENTRIES_PER_RECORD) {
                self.encoder.holders(names);
            }
            for steps in holders.steps.chunks(ENTRIES_PER_RECORD) {
                self.encoder.step_names(steps);
            }
            for blocks in holders.blocks.chunks(ENTRIES_PER_RECORD) {
                self.encoder.block_holders(blocks);
            }
        }
        for lost in result.lost.chunks(ENTRIES_PER_RECORD) {
            self.encoder.lost_blocks(lost);
        }
        if unjudged > 0 {
            self.encoder
                .inheritance_left(unjudged, result.summary.inherited_scanned);
        }
        self.encoder.reachability(&result.summary);
    }

    /// The blocks the scan at finalisation found garbage that are still live (the same
    /// allocation), oldest first: the collections finalisation ran did not free them.
    fn garbage_still_live(&mut self) -> Vec<u64> {
        let mut garbage = std::mem::take(&mut self.garbage_at_finalization);
        garbage.retain(|&(address, seq)| self.live.live_at(address).is_some_and(|block| block.seq == seq));
        garbage.sort_unstable_by_key(|&(_, seq)| seq);
        garbage.into_iter().map(|(address, _)| address).collect()
    }
}
