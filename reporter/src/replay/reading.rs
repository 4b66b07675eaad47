//! Stage 1's reading: the records of a trace, one after another, into a [`Replay`] that
//! becomes the [`Trace`]. A forked child's replay starts from its parent's at the fork, handed
//! over through [`Inheritance`] (see [`super::parents`] for the parents' traces themselves).
//!
//! Must never symbolize or judge blocks, nor read a file but through the reader it is given.

use std::path::Path;

use libleak_format::live::AddressMap;
use libleak_format::{
    Frame, LeakClass, Mark, ProcessInfo, PythonCode, Reachability, Record, ScanOutcome, Stats, TraceReader,
};

use super::finalization::FinalizationScan;
use super::left_to_parent;
use super::{find_module, load_module, ModuleState, ReplayError, ReplayObserver, StackNode, StackNodes, Trace};
use crate::live::{AtFinalization, ExitBlock, LiveSet};
use crate::model::{Incompleteness, Inherited, Tally, TraceHeader};

mod inheriting;

/// Finds what forked children inherited.
pub trait Inheritance {
    /// Calls `inherit` with the replay of the parent's trace as it stood when the child
    /// described by `fork` was forked; `child_trace` is where the child's trace is (its
    /// directory is searched too). Err: why the parent's trace could not be read that far.
    fn at_fork(
        &mut self,
        fork: &libleak_format::ForkInfo,
        child_trace: Option<&Path>,
        inherit: &mut dyn FnMut(&Replay),
    ) -> Result<(), String>;
}

/// Looks for no parent's trace (a trace read from memory, not from a file).
pub struct NoParents;

impl Inheritance for NoParents {
    fn at_fork(
        &mut self,
        _: &libleak_format::ForkInfo,
        _: Option<&Path>,
        _: &mut dyn FnMut(&Replay),
    ) -> Result<(), String> {
        Err("the parent's trace was not looked for".to_string())
    }
}

/// What replay tells an observer about time: each chunk's prologue time once the chunk has
/// been read, paired with the highest sequence number read so far.
#[derive(Default)]
struct ChunkTimes {
    highest_seq: u64,
    chunk_time_ns: Option<u64>,
}

impl ChunkTimes {
    /// Called before each record is handled, with the time of the chunk it came from.
    fn next(&mut self, record_chunk_time: Option<u64>, observer: &mut dyn ReplayObserver) {
        if record_chunk_time != self.chunk_time_ns {
            self.finish(observer);
            self.chunk_time_ns = record_chunk_time;
        }
    }

    fn finish(&mut self, observer: &mut dyn ReplayObserver) {
        if let Some(time_ns) = self.chunk_time_ns.take() {
            observer.time(self.highest_seq, time_ns);
        }
    }
}

fn observe(record: &Record, times: &mut ChunkTimes, observer: &mut dyn ReplayObserver) {
    match record {
        Record::Alloc(alloc) => {
            times.highest_seq = times.highest_seq.max(alloc.seq);
            observer.alloc(alloc)
        }
        Record::Free(free) => {
            times.highest_seq = times.highest_seq.max(free.seq);
            observer.free(free)
        }
        Record::Finalizing { .. } => observer.finalizing(),
        Record::Mark(mark) => observer.time(mark.seq.saturating_sub(1), mark.time_ns),
        _ => {}
    }
}

/// A replay under way: what the records read so far say. A forked child's trace is read
/// on from what its parent's said at the fork (see [`parents`]).
#[derive(Default)]
pub struct Replay {
    process: Option<ProcessInfo>,
    pub(crate) modules: Vec<ModuleState>,
    pub(crate) nodes: StackNodes,
    marks: Vec<Mark>,
    pub(crate) python_codes: AddressMap<u64, PythonCode>,
    python: Option<libleak_format::PythonRuntime>,
    python_ignores_environment: Option<bool>,
    pub(crate) live: LiveSet<ExitBlock>,
    classes: AddressMap<u64, LeakClass>,
    /// The exit scan's LOST_BLOCKS and OBJECT_TYPES.
    lost: AddressMap<u64, libleak_format::LostBlock>,
    object_types: Vec<String>,
    reachability: Option<Reachability>,
    /// An INHERITANCE_LEFT record, for the REACHABILITY that follows it.
    inheritance_left: Option<(u64, u64)>,
    finalization: Option<FinalizationScan>,
    fork: Option<libleak_format::ForkInfo>,
    inheritance: Option<Inherited>,
    end: Option<libleak_format::End>,
    stats: Stats,
    /// A forked child's inheritance: the blocks live in its parent at the fork (stacks
    /// imported), kept apart from `live` so that a child of a large parent does not rebuild
    /// its parent's live set: one still lives while the child's events never name its
    /// address (any event there came after it, so its free came first).
    inherited: Vec<(u64, ExitBlock)>,
    /// Instead, when the child's own scan left its inheritance to the parent's trace (its
    /// trace says so at its end: see [`left_to_parent`]): each inherited
    /// block's address and size, to be counted, without its stack.
    inherited_counted: Vec<(u64, u64)>,
    /// This replay is a parent's, read for its children: its inheritance is taken in whole,
    /// to be handed on to them.
    pub(super) hands_on_inheritance: bool,
    /// The next id for a stack node imported from a parent's trace.
    next_imported_node: u64,
    /// The module the last native frame was in: consecutive frames are mostly in one.
    last_module: Option<usize>,
}

impl Replay {
    /// [`find_module`], trying the last module found first (a loaded module holding the
    /// address is the one `find_module` gives: loaded modules do not overlap).
    fn module_of(&mut self, address: u64) -> Option<usize> {
        if let Some(last) = self.last_module {
            let state = &self.modules[last];
            if !state.unloaded && state.module.contains(address) {
                return Some(last);
            }
        }
        let found = find_module(&self.modules, address);
        self.last_module = found.filter(|&index| !self.modules[index].unloaded);
        found
    }

    /// Takes in `record`, moving out of it what the replay keeps: it is read where the trace
    /// reader returned it (see [`Trace::read_sized`]).
    pub(crate) fn handle(&mut self, record: &mut Record, parents: &mut dyn Inheritance, trace_path: Option<&Path>) {
        match record {
            Record::Process(info) => self.process = Some(std::mem::take(info.as_mut())),
            Record::Module(module) => load_module(&mut self.modules, std::mem::take(module.as_mut())),
            &mut Record::ModuleUnloaded { module_id } => {
                for state in self.modules.iter_mut().filter(|m| m.module.id == module_id) {
                    state.unloaded = true;
                }
            }
            &mut Record::StackNode { id, parent, frame } => {
                let module = match frame {
                    Frame::Native { address } => self.module_of(address),
                    Frame::Python { .. } | Frame::PythonEntry => None,
                };
                self.nodes.insert(id, StackNode::new(parent, frame, module));
            }
            Record::Alloc(alloc) => self.live.alloc(
                alloc.address,
                ExitBlock {
                    seq: alloc.seq,
                    address: alloc.address,
                    size: alloc.size,
                    stack: alloc.stack,
                    kind: alloc.kind,
                    thread_id: alloc.thread_id,
                    class: None,
                    during_finalization: false,
                    at_finalization: AtFinalization::NotLive,
                },
            ),
            Record::Free(free) => {
                self.live.free(free.address, free.seq);
            }
            Record::PythonCode(code) => {
                self.python_codes.insert(code.id, std::mem::take(code.as_mut()));
            }
            Record::PythonRuntime(runtime) => self.python = Some(std::mem::take(runtime.as_mut())),
            &mut Record::PythonConfig { ignores_environment } => {
                self.python_ignores_environment = Some(ignores_environment)
            }
            &mut Record::Finalizing { thread_id } => {
                self.finalization = Some(FinalizationScan {
                    thread_id,
                    ..FinalizationScan::default()
                })
            }
            Record::BlockClasses(entries) => match self.finalization.as_mut().filter(|f| f.scan.is_none()) {
                Some(pending) => pending.classes.extend(entries.iter().map(|e| (e.address, e.class))),
                None => self
                    .classes
                    .extend(entries.iter().map(|entry| (entry.address, entry.class))),
            },
            &mut Record::InheritanceLeft { unjudged, scanned } => self.inheritance_left = Some((unjudged, scanned)),
            Record::Reachability(scan) => {
                let mut scan = std::mem::take(scan.as_mut());
                if let Some((unjudged, scanned)) = self.inheritance_left.take() {
                    scan.inherited_unjudged = unjudged;
                    scan.inherited_scanned = scanned;
                }
                if let Some(pending) = self.finalization.as_mut().filter(|f| f.scan.is_none()) {
                    pending.close(scan, &mut self.live, &mut self.inherited);
                } else {
                    self.reachability = Some(scan);
                }
            }
            Record::Fork(info) => {
                let info = std::mem::take(info.as_mut());
                if self.fork.is_none() && info.inherited_blocks > 0 {
                    let counted_only = !self.hands_on_inheritance
                        && trace_path.is_some_and(left_to_parent::leaves_inheritance_to_parent);
                    let outcome = parents.at_fork(&info, trace_path, &mut |parent| {
                        if counted_only {
                            self.inherit_counts(parent);
                        } else {
                            self.inherit(parent);
                        }
                    });
                    self.inheritance = Some(match outcome {
                        Ok(()) => Inherited::Read,
                        Err(reason) => Inherited::Missing(reason),
                    });
                }
                self.fork = Some(info);
            }
            Record::Mark(mark) => self.marks.push(std::mem::take(mark.as_mut())),
            Record::Holders(names) => {
                if let Some(pending) = self.finalization.as_mut().filter(|f| f.scan.is_none()) {
                    pending.holder_names.append(names);
                }
            }
            Record::BlockHolders(entries) => {
                if let Some(pending) = self.finalization.as_mut().filter(|f| f.scan.is_none()) {
                    pending.block_holders.append(entries);
                }
            }
            Record::StepNames(names) => {
                if let Some(pending) = self.finalization.as_mut().filter(|f| f.scan.is_none()) {
                    pending.step_names.append(names);
                }
            }
            Record::ObjectTypes(names) => match self.finalization.as_mut().filter(|f| f.scan.is_none()) {
                Some(pending) => pending.object_types.append(names),
                None => self.object_types.append(names),
            },
            Record::LostBlocks(entries) => {
                if self.finalization.as_ref().is_none_or(|f| f.scan.is_some()) {
                    self.lost.extend(entries.iter().map(|&entry| (entry.address, entry)));
                }
            }
            &mut Record::Stats(stats) => self.stats = stats,
            Record::End(end) => {
                self.stats = end.stats;
                self.end = Some(**end);
            }
        }
    }

    /// The trace as read; `reader` says what was damaged and whether the file was cut short.
    pub(crate) fn finish<R: std::io::Read>(self, reader: &TraceReader<R>) -> Result<Trace, ReplayError> {
        let inherited_live: Vec<ExitBlock> = self.inherited_live().map(|(_, block)| block).collect();
        let Replay {
            process,
            modules,
            nodes,
            marks,
            python_codes,
            python,
            python_ignores_environment,
            live,
            classes,
            lost,
            object_types,
            reachability,
            mut finalization,
            fork,
            inheritance,
            end,
            stats,
            inherited,
            inherited_counted,
            next_imported_node: _,
            last_module: _,
            inheritance_left: _,
            hands_on_inheritance: _,
        } = self;
        let mut live_totals = live.totals();
        // Counted only: never judged here, and their stacks were not taken.
        let mut inherited_unjudged = Tally::default();
        for &(address, size) in &inherited_counted {
            if !live.has_events_at(address) {
                inherited_unjudged.add(1, size);
            }
        }
        if !inherited.is_empty() || !inherited_counted.is_empty() {
            // The inherited blocks count as allocated before the child's own; each one freed
            // matched the first free of its address.
            let inherited_blocks = (inherited.len() + inherited_counted.len()) as u64;
            let inherited_still = inherited_live.len() as u64 + inherited_unjudged.blocks;
            let freed = inherited_blocks - inherited_still;
            let inherited_bytes: u64 = inherited.iter().map(|(_, b)| b.size).sum::<u64>()
                + inherited_counted.iter().map(|&(_, size)| size).sum::<u64>();
            live_totals.allocations += inherited_blocks;
            live_totals.frees += freed;
            live_totals.unmatched_frees = live_totals.unmatched_frees.saturating_sub(freed);
            live_totals.live_blocks += inherited_still;
            live_totals.live_bytes += inherited_live.iter().map(|b| b.size).sum::<u64>() + inherited_unjudged.bytes;
            live_totals.peak_bytes += inherited_bytes;
        }
        let incomplete = match end {
            None => Some(Incompleteness::Truncated {
                mid_chunk: reader.is_truncated(),
            }),
            Some(e) if e.kind != libleak_format::ExitKind::Exit => Some(Incompleteness::AbnormalExit(e)),
            Some(_) => None,
        };
        let own = live.live_blocks();
        let complete_scan = reachability
            .as_ref()
            .filter(|scan| scan.outcome == ScanOutcome::Complete);
        // Inherited blocks the child's scan left to its parent's trace are only counted.
        let mut inherited_live = inherited_live;
        if let Some(scan) = complete_scan.filter(|scan| scan.inherited_unjudged > 0) {
            inherited_live.retain(|block| {
                let judged = super::finalization::class_given(&classes, scan, true, block.address).is_some();
                if !judged {
                    inherited_unjudged.add(1, block.size);
                }
                judged
            });
        }
        // Inherited blocks first: they were allocated before every block of the child's own.
        let inherited_count = inherited_live.len();
        let mut live = inherited_live;
        live.extend(own.into_iter().map(|(_, block)| block));
        let mut lost_facts = AddressMap::default();
        if let Some(scan) = reachability
            .as_ref()
            .filter(|scan| scan.outcome == ScanOutcome::Complete)
        {
            for (index, block) in live.iter_mut().enumerate() {
                block.class = super::finalization::class_given(&classes, scan, index < inherited_count, block.address);
                if let Some(entry) = lost.get(&block.address) {
                    let object_type = (entry.object_type as usize)
                        .checked_sub(1)
                        .filter(|&index| index < object_types.len())
                        .map(|index| index as u32);
                    lost_facts.insert(
                        block.address,
                        super::LostFacts {
                            root: entry.root,
                            object_type,
                            refcount: entry.refcount,
                            references: entry.references,
                        },
                    );
                }
            }
        }
        let mut trace = Trace {
            header: TraceHeader {
                process: match process {
                    Some(process) => process,
                    // The events that survived are worth a report all the same.
                    None if !reader.damage().is_empty() => ProcessInfo {
                        program: "unknown".to_string(),
                        exe: "(the process record was in a damaged part of the trace)".to_string(),
                        ..ProcessInfo::default()
                    },
                    None => return Err(ReplayError::NoProcess),
                },
                python,
                python_ignores_environment,
                totals: live_totals,
                stats,
                reachability,
                reachability_at_finalization: finalization.as_mut().and_then(|f| f.scan.take()),
                fork,
                inheritance,
                end,
                incomplete,
                damage: reader.damage().to_vec(),
            },
            modules,
            nodes,
            python_codes,
            live,
            inherited_unjudged,
            marks,
            holding: finalization.as_mut().and_then(|f| f.holding.take()),
            finalizing_thread: finalization.as_ref().map(|f| f.thread_id),
            lost: lost_facts,
            object_types,
        };
        if finalization.is_some() {
            trace.apply_finalization_scan();
        }
        Ok(trace)
    }
}

impl Trace {
    /// Reads a trace from `input`, as it is: a forked child's inherited blocks are not
    /// looked for.
    pub fn read(input: impl std::io::Read) -> Result<Trace, ReplayError> {
        Trace::read_observing(input, &mut |_| {}, &mut ())
    }

    /// As [`Trace::read`], also telling `observer` of each event and `progress` of the bytes
    /// read (as [`Trace::open_with_progress`] does).
    pub fn read_observing(
        input: impl std::io::Read,
        progress: &mut dyn FnMut(u64),
        observer: &mut dyn ReplayObserver,
    ) -> Result<Trace, ReplayError> {
        Trace::read_with(input, progress, observer, &mut NoParents, None)
    }

    /// Reads a trace from `input` (which is at `path`, when it is a file), telling
    /// `observer` of each event, `progress` of the bytes read, and reading a forked child's
    /// inherited blocks through `parents`.
    pub fn read_with(
        input: impl std::io::Read,
        progress: &mut dyn FnMut(u64),
        observer: &mut dyn ReplayObserver,
        parents: &mut dyn Inheritance,
        path: Option<&Path>,
    ) -> Result<Trace, ReplayError> {
        Trace::read_sized(input, None, progress, observer, parents, path)
    }

    /// As [`Trace::read_with`]; `size`, the file's length when known, sizes the tables up
    /// front (address space only: pages are touched as they fill), sparing the copies of
    /// their growth.
    pub(crate) fn read_sized(
        input: impl std::io::Read,
        size: Option<u64>,
        progress: &mut dyn FnMut(u64),
        observer: &mut dyn ReplayObserver,
        parents: &mut dyn Inheritance,
        path: Option<&Path>,
    ) -> Result<Trace, ReplayError> {
        const PROGRESS_EVERY: u64 = 1 << 18;
        let mut records: u64 = 0;
        let mut reader = TraceReader::new(input)?;
        let mut replay = Replay::default();
        if let Some(size) = size {
            // A real-package trace holds about one stack node per 7 bytes; capped so that a
            // huge trace asks for no more than 256 MB of address space up front.
            replay
                .nodes
                .reserve(usize::try_from(size / 6).unwrap_or(0).min(1 << 24));
        }
        let mut chunk_times = ChunkTimes::default();
        loop {
            // Each record is handled where the reader returned it: moving it out first cost a
            // tenth of the replay, its copy's wide loads stalling on the decoder's narrow
            // stores (store forwarding).
            let mut next = reader.next_record();
            let Ok(Some(record)) = &mut next else {
                // The end of the trace, or an error to return.
                next?;
                break;
            };
            records += 1;
            if records.is_multiple_of(PROGRESS_EVERY) {
                progress(reader.bytes_read());
            }
            chunk_times.next(reader.chunk_time_ns(), observer);
            observe(record, &mut chunk_times, observer);
            replay.handle(record, parents, path);
        }
        progress(reader.bytes_read());
        chunk_times.finish(observer);
        replay.finish(&reader)
    }
}

#[cfg(test)]
mod tests {
    use libleak_format::{Alloc, Free};

    use super::super::synthetic::module;
    use super::*;

    /// Hands the child the parent's replay as it stands.
    struct Parent<'a>(&'a Replay);

    impl Inheritance for Parent<'_> {
        fn at_fork(
            &mut self,
            _: &libleak_format::ForkInfo,
            _: Option<&Path>,
            inherit: &mut dyn FnMut(&Replay),
        ) -> Result<(), String> {
            inherit(self.0);
            Ok(())
        }
    }

    fn free(seq: u64, address: u64) -> Record {
        Record::Free(Free {
            seq,
            thread_id: 1,
            address,
        })
    }

    fn alloc(seq: u64, address: u64, size: u64, stack: u64) -> Record {
        Record::Alloc(Alloc {
            seq,
            thread_id: 1,
            address,
            size,
            stack,
            kind: libleak_format::AllocKind::Malloc,
        })
    }

    #[test]
    fn a_child_inherits_the_parents_live_blocks_with_their_stacks_and_codes() {
        let mut parent = Replay::default();
        let code = PythonCode {
            id: 9,
            filename: "app.py".into(),
            qualified_name: "load".into(),
            ..PythonCode::default()
        };
        let records = vec![
            Record::Process(Box::default()),
            Record::Module(Box::new(module(1, "/lib/a.so", 0x1000, 0x1000))),
            Record::StackNode {
                id: 1,
                parent: 0,
                frame: Frame::Native { address: 0x1100 },
            },
            Record::StackNode {
                id: 2,
                parent: 1,
                frame: Frame::Python {
                    code_id: 9,
                    instruction_offset: 4,
                },
            },
            Record::StackNode {
                id: 3,
                parent: 2,
                frame: Frame::Native { address: 0x1200 },
            },
            Record::PythonCode(Box::new(code.clone())),
            alloc(1, 0xa000, 10, 3),
            alloc(2, 0xb000, 20, 2),
            alloc(3, 0xc000, 30, 3),
            free(4, 0xc000),
        ];
        for mut record in records {
            parent.handle(&mut record, &mut NoParents, None);
        }
        let fork = libleak_format::ForkInfo {
            parent_pid: 1,
            fork_seq: 5,
            inherited_blocks: 2,
            inherited_bytes: 30,
            ..Default::default()
        };
        let mut child = Replay::default();
        let records = vec![
            Record::Process(Box::default()),
            Record::Module(Box::new(module(1, "/lib/a.so", 0x1000, 0x1000))),
            Record::Fork(Box::new(fork)),
            // The child's own ids start at 1 again.
            Record::StackNode {
                id: 1,
                parent: 0,
                frame: Frame::Native { address: 0x1300 },
            },
            alloc(6, 0xd000, 40, 1),
            free(7, 0xb000),
        ];
        for mut record in records {
            child.handle(&mut record, &mut Parent(&parent), None);
        }
        let empty = empty_trace();
        let trace = child.finish(&TraceReader::new(empty.as_slice()).unwrap()).unwrap();
        assert_eq!(trace.header.inheritance, Some(Inherited::Read));
        assert_eq!(trace.header.totals.unmatched_frees, 0);
        let mut live: Vec<(u64, Vec<Frame>)> = trace
            .live
            .iter()
            .map(|b| (b.size, trace.stack(b.stack).iter().map(|n| n.frame).collect()))
            .collect();
        live.sort_by_key(|(size, _)| *size);
        let inherited = vec![
            Frame::Native { address: 0x1200 },
            Frame::Python {
                code_id: 9,
                instruction_offset: 4,
            },
            Frame::Native { address: 0x1100 },
        ];
        assert_eq!(live, [(10, inherited), (40, vec![Frame::Native { address: 0x1300 }])]);
        assert_eq!(trace.python_codes.get(&9), Some(&code));
        let inherited_block = trace.live.iter().find(|b| b.size == 10).unwrap();
        assert_eq!(trace.stack(inherited_block.stack)[0].module(), Some(0));
    }

    /// A well-formed trace with nothing in it but the header.
    fn empty_trace() -> Vec<u8> {
        libleak_format::ChunkWriter::new(Vec::new()).unwrap().get_ref().clone()
    }
}
