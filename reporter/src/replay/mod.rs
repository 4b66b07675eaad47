//! Stage 1, replay: reads a whole trace into the process's header, the module map as it
//! changed, the stack nodes (each native frame resolved to the module that held its address
//! when the node was defined), the marks, and the live set at the end. The module map's
//! knowledge of which module is libleak's own lives here too. Damage the reader skipped is
//! carried in the header; stacks whose nodes it lost end in a [`StackNode::lost`] node.
//!
//! A forked child's trace starts where its parent's stood at the fork: the blocks it
//! inherited are read from the parent's trace ([`parents`]), with their stacks.
//!
//! Must never symbolize or judge blocks: it reports what the trace says, nothing more.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use libleak_format::{
    Alloc, DecodeError, Frame, Free, Holder, LeakClass, Mark, Module, ProcessInfo, PythonCode, Reachability, Record,
    ScanOutcome, Stats, TraceReader,
};

pub mod parents;

use crate::live::{ExitBlock, LiveSet};
use crate::model::{Incompleteness, Inherited, TraceHeader};
use parents::{Inheritance, NoParents, ParentTraces};

/// Why a trace could not be replayed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot open")]
    Open(#[source] std::io::Error),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("the trace has no process record")]
    NoProcess,
}

/// One stack node: a frame and its caller. 40 bytes: a real-package trace defines millions.
#[derive(Clone, Copy, Debug)]
pub struct StackNode {
    pub parent: u64,
    pub frame: Frame,
    /// Index into [`Trace::modules`] of the module holding a native frame's address, or
    /// [`StackNode::NO_MODULE`].
    module_index: u32,
    /// Stands for the rest of a stack whose nodes were defined in a damaged part of the
    /// trace (`frame` and `module` then mean nothing): always the outermost.
    pub lost: bool,
}

impl StackNode {
    const NO_MODULE: u32 = u32::MAX;

    /// The end of a stack whose outer nodes were lost.
    const LOST: StackNode = StackNode {
        parent: 0,
        frame: Frame::PythonEntry,
        module_index: Self::NO_MODULE,
        lost: true,
    };

    pub fn new(parent: u64, frame: Frame, module: Option<usize>) -> StackNode {
        StackNode {
            parent,
            frame,
            module_index: module
                .and_then(|index| u32::try_from(index).ok())
                .unwrap_or(Self::NO_MODULE),
            lost: false,
        }
    }

    /// Index into [`Trace::modules`] of the module holding a native frame's address.
    pub fn module(&self) -> Option<usize> {
        (self.module_index != Self::NO_MODULE).then_some(self.module_index as usize)
    }
}

/// The stack nodes by id. Ids count up in file order, with gaps where damage lost the nodes
/// that had them, so a node's place in the list is not its id.
#[derive(Clone, Debug, Default)]
pub struct StackNodes {
    nodes: Vec<StackNode>,
    /// Where each run of consecutive ids starts: (its first id, its index in `nodes`).
    runs: Vec<(u64, usize)>,
    /// Nodes imported from a parent's trace, ids [`IMPORTED_NODES`] and up, in order.
    imported: Vec<StackNode>,
}

/// The first id of the stack nodes a forked child's replay imports from its parent's trace:
/// far above any id a trace defines (a trace's ids are counted in a `u32` by the writer).
pub const IMPORTED_NODES: u64 = 1 << 62;

impl StackNodes {
    /// Adds node `id`, which must be above every id so far (else it is dropped: the trace
    /// reader never gives one).
    pub fn insert(&mut self, id: u64, node: StackNode) {
        if id >= IMPORTED_NODES {
            if id - IMPORTED_NODES == self.imported.len() as u64 {
                self.imported.push(node);
            }
            return;
        }
        let next = self
            .runs
            .last()
            .map(|&(first, index)| first + (self.nodes.len() - index) as u64);
        match next {
            Some(next) if id == next => {}
            Some(next) if id < next => return,
            _ => self.runs.push((id, self.nodes.len())),
        }
        self.nodes.push(node);
    }

    /// Makes room for `additional` more nodes.
    pub fn reserve(&mut self, additional: usize) {
        self.nodes.reserve(additional);
    }

    /// Node `id`, unless it was never defined (or lost).
    pub fn get(&self, id: u64) -> Option<&StackNode> {
        if id >= IMPORTED_NODES {
            return self.imported.get(usize::try_from(id - IMPORTED_NODES).ok()?);
        }
        let run = self.runs.partition_point(|&(first, _)| first <= id).checked_sub(1)?;
        let (first, index) = self.runs[run];
        let end = self.runs.get(run + 1).map_or(self.nodes.len(), |&(_, next)| next);
        let at = index.checked_add(usize::try_from(id - first).ok()?)?;
        (at < end).then(|| &self.nodes[at])
    }

    /// The highest id the trace defined (0 when none); imported nodes do not count.
    pub fn last_id(&self) -> u64 {
        self.runs
            .last()
            .map_or(0, |&(first, index)| first + (self.nodes.len() - index) as u64 - 1)
    }
}

#[derive(Clone, Debug)]
pub struct ModuleState {
    pub module: Module,
    pub unloaded: bool,
    /// A later module was loaded over this unloaded one's addresses.
    pub superseded: bool,
}

/// Whether `path` is the interposer itself.
pub fn is_libleak(path: &str) -> bool {
    path.rsplit('/').next() == Some("libleak.so")
}

pub struct Trace {
    pub header: TraceHeader,
    pub modules: Vec<ModuleState>,
    pub nodes: StackNodes,
    /// Code objects by id. A code id may be referred to before its definition.
    pub python_codes: HashMap<u64, PythonCode>,
    pub live: Vec<ExitBlock>,
    /// The MARK records, in file order.
    pub marks: Vec<Mark>,
    /// Who held the blocks live when CPython's finalisation began, when the scan then named
    /// holders.
    pub holding: Option<Holding>,
}

/// Who held the blocks live when CPython's finalisation began, summed by allocation stack.
#[derive(Debug, Default)]
pub struct Holding {
    /// Holder `id` is at index `id - 1`.
    pub names: Vec<Holder>,
    /// By stack: each holder of some of its blocks, most bytes first.
    pub by_stack: HashMap<u64, Vec<Held>>,
    /// Object type `id` is at index `id - 1`.
    pub types: Vec<String>,
    /// By stack: the Python type of the objects its blocks held (type id, bytes, blocks), most
    /// bytes first; blocks that held no recognised object are not counted.
    pub types_by_stack: HashMap<u64, Vec<(u32, u64, u64)>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    pub holder: u32,
    pub bytes: u64,
    pub blocks: u64,
}

/// Whether a Python code object's file is importlib's own (`<frozen importlib._bootstrap>`,
/// `<frozen importlib._bootstrap_external>`): the frames between an `import` and the module
/// it runs.
pub fn is_importlib_file(filename: &str) -> bool {
    filename.starts_with("<frozen importlib._bootstrap")
}

/// The scan made when CPython's finalisation began, as replay meets it: the FINALIZING
/// record opens it, its BLOCK_CLASSES gather, and its REACHABILITY closes it against the
/// blocks live at that point of the replay.
#[derive(Default)]
struct FinalizationScan {
    classes: HashMap<u64, LeakClass>,
    scan: Option<Reachability>,
    /// (address, seq) of every block live when the scan was made, with its class (`None`
    /// when the scan did not complete).
    live_then: HashMap<(u64, u64), Option<LeakClass>>,
    holder_names: Vec<Holder>,
    /// Address → (holder id, object type id).
    block_holders: HashMap<u64, (u32, u32)>,
    object_types: Vec<String>,
    holding: Option<Holding>,
}

impl FinalizationScan {
    /// `live`: every block live when the scan was made.
    fn close(&mut self, scan: Reachability, live: Vec<(u64, ExitBlock)>) {
        let complete = scan.outcome == ScanOutcome::Complete;
        if complete && !self.holder_names.is_empty() {
            let mut by_stack: HashMap<u64, Vec<Held>> = HashMap::new();
            let mut types_by_stack: HashMap<u64, Vec<(u32, u64, u64)>> = HashMap::new();
            for &(address, block) in &live {
                let Some(&(holder, object_type)) = self.block_holders.get(&address) else {
                    continue;
                };
                if object_type != 0 {
                    let types = types_by_stack.entry(block.stack).or_default();
                    match types.iter_mut().find(|t| t.0 == object_type) {
                        Some(t) => {
                            t.1 += block.size;
                            t.2 += 1;
                        }
                        None => types.push((object_type, block.size, 1)),
                    }
                }
                let held = by_stack.entry(block.stack).or_default();
                match held.iter_mut().find(|h| h.holder == holder) {
                    Some(h) => {
                        h.bytes += block.size;
                        h.blocks += 1;
                    }
                    None => held.push(Held {
                        holder,
                        bytes: block.size,
                        blocks: 1,
                    }),
                }
            }
            for held in by_stack.values_mut() {
                held.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.holder.cmp(&b.holder)));
            }
            for types in types_by_stack.values_mut() {
                types.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            }
            self.holding = Some(Holding {
                names: std::mem::take(&mut self.holder_names),
                by_stack,
                types: std::mem::take(&mut self.object_types),
                types_by_stack,
            });
        }
        self.block_holders = HashMap::new();
        self.live_then = live
            .into_iter()
            .map(|(address, block)| {
                let class = complete.then(|| self.classes.get(&address).copied().unwrap_or(LeakClass::Reachable));
                ((address, block.seq), class)
            })
            .collect();
        self.classes = HashMap::new();
        self.scan = Some(scan);
    }
}

/// Told of every allocation and free as replay reads them (in file order, which is not
/// sequence order across threads), and of the FINALIZING record: the growth report's hook.
pub trait ReplayObserver {
    fn alloc(&mut self, alloc: &Alloc);
    fn free(&mut self, free: &Free);
    fn finalizing(&mut self);
    /// The events up to sequence number `seq` had happened `time_ns` after the trace started:
    /// from each chunk's prologue time (told once the chunk is read) and from each MARK.
    fn time(&mut self, _seq: u64, _time_ns: u64) {}
}

/// Observes nothing.
impl ReplayObserver for () {
    fn alloc(&mut self, _alloc: &Alloc) {}
    fn free(&mut self, _free: &Free) {}
    fn finalizing(&mut self) {}
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

/// A parent's node ids → the ids their imports got in a child's replay: by index for the
/// parent's own ids (dense, from 1) up to [`ImportedIds::DENSE`], hashed beyond (ids a
/// damaged trace skipped to, and the few a parent imported itself).
#[derive(Default)]
struct ImportedIds {
    dense: Vec<u64>,
    sparse: HashMap<u64, u64>,
}

impl ImportedIds {
    const DENSE: u64 = 1 << 24;

    fn get(&self, id: u64) -> Option<u64> {
        if id < Self::DENSE {
            self.dense.get(id as usize).copied().filter(|&imported| imported != 0)
        } else {
            self.sparse.get(&id).copied()
        }
    }

    fn insert(&mut self, id: u64, imported: u64) {
        if id < Self::DENSE {
            let index = id as usize;
            if index >= self.dense.len() {
                self.dense.resize(index + 1, 0);
            }
            self.dense[index] = imported;
        } else {
            self.sparse.insert(id, imported);
        }
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
    pub(crate) python_codes: HashMap<u64, PythonCode>,
    python: Option<libleak_format::PythonRuntime>,
    python_ignores_environment: Option<bool>,
    pub(crate) live: LiveSet<ExitBlock>,
    classes: HashMap<u64, LeakClass>,
    reachability: Option<Reachability>,
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

    pub(crate) fn handle(&mut self, record: Record, parents: &mut dyn Inheritance, trace_path: Option<&Path>) {
        match record {
            Record::Process(info) => self.process = Some(info),
            Record::Module(module) => load_module(&mut self.modules, module),
            Record::ModuleUnloaded { module_id } => {
                for state in self.modules.iter_mut().filter(|m| m.module.id == module_id) {
                    state.unloaded = true;
                }
            }
            Record::StackNode { id, parent, frame } => {
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
                },
            ),
            Record::Free(free) => self.live.free(free.address, free.seq),
            Record::PythonCode(code) => {
                self.python_codes.insert(code.id, code);
            }
            Record::PythonRuntime(runtime) => self.python = Some(runtime),
            Record::PythonConfig { ignores_environment } => self.python_ignores_environment = Some(ignores_environment),
            Record::Finalizing { .. } => self.finalization = Some(FinalizationScan::default()),
            Record::BlockClasses(entries) => match self.finalization.as_mut().filter(|f| f.scan.is_none()) {
                Some(pending) => pending.classes.extend(entries.iter().map(|e| (e.address, e.class))),
                None => self
                    .classes
                    .extend(entries.iter().map(|entry| (entry.address, entry.class))),
            },
            Record::Reachability(scan) => {
                if self.finalization.as_ref().is_some_and(|f| f.scan.is_none()) {
                    let mut live_now = self.live.live_blocks();
                    live_now.extend(self.inherited_live());
                    if let Some(pending) = self.finalization.as_mut() {
                        pending.close(scan, live_now);
                    }
                } else {
                    self.reachability = Some(scan);
                }
            }
            Record::Fork(info) => {
                if self.fork.is_none() && info.inherited_blocks > 0 {
                    let outcome = parents.at_fork(&info, trace_path, &mut |parent| self.inherit(parent));
                    self.inheritance = Some(match outcome {
                        Ok(()) => Inherited::Read,
                        Err(reason) => Inherited::Missing(reason),
                    });
                }
                self.fork = Some(info);
            }
            Record::Mark(mark) => self.marks.push(mark),
            Record::Holders(names) => {
                if let Some(pending) = self.finalization.as_mut().filter(|f| f.scan.is_none()) {
                    pending.holder_names.extend(names);
                }
            }
            Record::BlockHolders(entries) => {
                if let Some(pending) = self.finalization.as_mut().filter(|f| f.scan.is_none()) {
                    pending
                        .block_holders
                        .extend(entries.iter().map(|e| (e.address, (e.holder, e.object_type))));
                }
            }
            Record::ObjectTypes(names) => {
                if let Some(pending) = self.finalization.as_mut().filter(|f| f.scan.is_none()) {
                    pending.object_types.extend(names);
                }
            }
            Record::Stats(s) => self.stats = s,
            Record::End(e) => {
                self.stats = e.stats;
                self.end = Some(e);
            }
        }
    }

    /// Takes in the blocks a forked child inherited, live in its parent at the fork, with
    /// their stacks (imported under ids of their own, [`IMPORTED_NODES`] and up) and the code
    /// objects those refer to.
    fn inherit(&mut self, parent: &Replay) {
        if self.next_imported_node == 0 {
            self.next_imported_node = IMPORTED_NODES;
        }
        let mut imported = ImportedIds::default();
        self.inherited.reserve(parent.live.totals().live_blocks as usize);
        // The parent's own inheritance too, when it was a forked child.
        let parents_inherited: Vec<(u64, ExitBlock)> = parent.inherited_live().collect();
        let mut take = |replay: &mut Replay, address: u64, block: &ExitBlock| {
            let stack = replay.import_stack(parent, block.stack, &mut imported);
            replay.inherited.push((address, ExitBlock { stack, ..*block }));
        };
        for (address, block) in &parents_inherited {
            take(self, *address, block);
        }
        parent.live.for_each_live(|address, block| take(self, address, block));
    }

    /// The inherited blocks still live: those whose addresses this trace's events never name.
    fn inherited_live(&self) -> impl Iterator<Item = (u64, ExitBlock)> + '_ {
        self.inherited
            .iter()
            .filter(|(address, _)| !self.live.has_events_at(*address))
            .copied()
    }

    /// The id in this replay of node `id` of `parent`'s, importing it and its callers first.
    fn import_stack(&mut self, parent: &Replay, id: u64, imported: &mut ImportedIds) -> u64 {
        if let Some(known) = imported.get(id) {
            return known;
        }
        let mut chain = Vec::new();
        let mut at = id;
        while at != 0 && imported.get(at).is_none() {
            let Some(node) = parent.nodes.get(at) else { break };
            chain.push((at, *node));
            at = node.parent;
        }
        // The outermost node not imported: 0, an imported one, or one the parent lost.
        let mut caller = imported.get(at).unwrap_or(0);
        if at != 0 && caller == 0 {
            caller = self.next_imported_node;
            self.next_imported_node += 1;
            self.nodes.insert(caller, StackNode::LOST);
            imported.insert(at, caller);
        }
        for (parent_id, node) in chain.into_iter().rev() {
            let module = match node.frame {
                Frame::Native { address } => find_module(&self.modules, address),
                Frame::Python { code_id, .. } => {
                    if let (false, Some(code)) = (
                        self.python_codes.contains_key(&code_id),
                        parent.python_codes.get(&code_id),
                    ) {
                        self.python_codes.insert(code_id, code.clone());
                    }
                    None
                }
                Frame::PythonEntry => None,
            };
            let id = self.next_imported_node;
            self.next_imported_node += 1;
            self.nodes.insert(id, StackNode::new(caller, node.frame, module));
            imported.insert(parent_id, id);
            caller = id;
        }
        caller
    }

    /// The trace as read; `reader` says what was damaged and whether the file was cut short.
    pub(crate) fn finish<R: std::io::Read>(self, reader: &TraceReader<R>) -> Result<Trace, ReplayError> {
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
            reachability,
            mut finalization,
            fork,
            inheritance,
            end,
            stats,
            inherited,
            next_imported_node: _,
            last_module: _,
        } = self;
        let mut live_totals = live.totals();
        let inherited_live: Vec<ExitBlock> = inherited
            .iter()
            .filter(|(address, _)| !live.has_events_at(*address))
            .map(|&(_, block)| block)
            .collect();
        if !inherited.is_empty() {
            // The inherited blocks count as allocated before the child's own; each one freed
            // matched the first free of its address.
            let freed = (inherited.len() - inherited_live.len()) as u64;
            let inherited_bytes: u64 = inherited.iter().map(|(_, b)| b.size).sum();
            live_totals.allocations += inherited.len() as u64;
            live_totals.frees += freed;
            live_totals.unmatched_frees = live_totals.unmatched_frees.saturating_sub(freed);
            live_totals.live_blocks += inherited_live.len() as u64;
            live_totals.live_bytes += inherited_live.iter().map(|b| b.size).sum::<u64>();
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
        // Inherited blocks first: they were allocated before every block of the child's own.
        let mut live = inherited_live;
        live.extend(own.into_iter().map(|(_, block)| block));
        if reachability
            .as_ref()
            .is_some_and(|scan| scan.outcome == ScanOutcome::Complete)
        {
            for block in &mut live {
                block.class = Some(classes.get(&block.address).copied().unwrap_or(LeakClass::Reachable));
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
            marks,
            holding: finalization.as_mut().and_then(|f| f.holding.take()),
        };
        if let Some(live_then) = finalization.map(|f| f.live_then) {
            trace.apply_finalization_scan(&live_then);
        }
        Ok(trace)
    }
}

impl Trace {
    /// Reads the trace at `path`; a forked child's inherited blocks come from its parent's
    /// trace, looked for where [`parents::ParentTraces`] says.
    pub fn open(path: &Path) -> Result<Trace, ReplayError> {
        Trace::open_with_progress(path, &mut |_, _| {})
    }

    /// As [`Trace::open`], calling `progress` with the bytes of the file read so far and its
    /// size, now and then (every few hundred thousand records) and once at the end.
    pub fn open_with_progress(path: &Path, progress: &mut dyn FnMut(u64, u64)) -> Result<Trace, ReplayError> {
        Trace::open_in_family(path, progress, &mut ParentTraces::default())
    }

    /// As [`Trace::open_with_progress`], with the parents' traces read through `parents`
    /// (which keeps them for the next child of the same parent).
    pub fn open_in_family(
        path: &Path,
        progress: &mut dyn FnMut(u64, u64),
        parents: &mut dyn Inheritance,
    ) -> Result<Trace, ReplayError> {
        let file = File::open(path).map_err(ReplayError::Open)?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Trace::read_sized(
            BufReader::with_capacity(1 << 20, file),
            Some(size),
            &mut |read| progress(read, size),
            &mut (),
            parents,
            Some(path),
        )
    }

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
    fn read_sized(
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
            // A real-package trace holds about one stack node per 7 bytes.
            replay
                .nodes
                .reserve(usize::try_from(size / 4).unwrap_or(0).min(1 << 28));
        }
        let mut chunk_times = ChunkTimes::default();
        while let Some(record) = reader.next_record()? {
            records += 1;
            if records.is_multiple_of(PROGRESS_EVERY) {
                progress(reader.bytes_read());
            }
            chunk_times.next(reader.chunk_time_ns(), observer);
            observe(&record, &mut chunk_times, observer);
            replay.handle(record, parents, path);
        }
        progress(reader.bytes_read());
        chunk_times.finish(observer);
        replay.finish(&reader)
    }

    /// What the scan made when CPython's finalisation began says about the blocks live at
    /// exit. A block allocated after it is the runtime's. A block allocated during an import
    /// (module state, caches, tables built by `PyInit_*` or a module's body) that was
    /// reachable then is the module's, orphaned only by the teardown: no leak, whatever the
    /// exit scan says. Other blocks keep the exit scan's class: the finalising interpreter's
    /// heap is in flux (the garbage collector runs), and a stale pointer found then must not
    /// hide a leak the exit scan sees.
    fn apply_finalization_scan(&mut self, live_then: &HashMap<(u64, u64), Option<LeakClass>>) {
        let mut import_time: HashMap<u64, bool> = HashMap::new();
        for index in 0..self.live.len() {
            let block = self.live[index];
            match live_then.get(&(block.address, block.seq)) {
                None => self.live[index].during_finalization = true,
                Some(Some(LeakClass::Reachable)) if block.class != Some(LeakClass::Reachable) => {
                    let during_import = *import_time
                        .entry(block.stack)
                        .or_insert_with(|| self.allocated_during_import(block.stack));
                    if during_import {
                        self.live[index].class = Some(LeakClass::Reachable);
                    }
                }
                Some(_) => {}
            }
        }
    }

    /// Whether stack `leaf` runs through importlib (every import of a Python module or an
    /// extension does, `PyInit_*` included).
    fn allocated_during_import(&self, leaf: u64) -> bool {
        self.stack(leaf).iter().any(|node| match node.frame {
            Frame::Python { code_id, .. } => self
                .python_codes
                .get(&code_id)
                .is_some_and(|code| is_importlib_file(&code.filename)),
            Frame::Native { .. } | Frame::PythonEntry => false,
        })
    }

    /// The frames of stack `leaf`, innermost first; a [`StackNode::lost`] node last when the
    /// walk reached a node the trace does not have (defined in a damaged part of it).
    pub fn stack(&self, leaf: u64) -> Vec<StackNode> {
        let mut frames = Vec::new();
        let mut id = leaf;
        while id != 0 {
            let Some(node) = self.nodes.get(id) else {
                frames.push(StackNode::LOST);
                break;
            };
            frames.push(*node);
            // Parents are always defined before children, so ids strictly decrease.
            if node.parent >= id {
                break;
            }
            id = node.parent;
        }
        frames
    }
}

/// Adds a newly loaded module to the map, marking the unloaded modules whose addresses it
/// takes over as superseded.
pub fn load_module(modules: &mut Vec<ModuleState>, module: Module) {
    for old in modules.iter_mut().filter(|m| m.unloaded) {
        if old
            .module
            .segments
            .iter()
            .any(|s| module.contains(old.module.bias + s.vaddr))
            || module
                .segments
                .iter()
                .any(|s| old.module.contains(module.bias + s.vaddr))
        {
            old.superseded = true;
        }
    }
    modules.push(ModuleState {
        module,
        unloaded: false,
        superseded: false,
    });
}

/// The loaded module holding `address`, else an unloaded one not yet replaced.
pub fn find_module(modules: &[ModuleState], address: u64) -> Option<usize> {
    let loaded = modules.iter().position(|m| !m.unloaded && m.module.contains(address));
    loaded.or_else(|| {
        modules
            .iter()
            .rposition(|m| m.unloaded && !m.superseded && m.module.contains(address))
    })
}

/// Traces built in memory for the stages' unit tests.
#[cfg(test)]
pub(crate) mod synthetic {
    use libleak_format::{AllocKind, LeakClass, ProcessInfo, PythonRuntime, Segment};

    use super::*;

    /// A trace of a process running `exe`, with nothing loaded, allocated or recorded yet.
    pub fn trace(exe: &str) -> Trace {
        Trace {
            header: TraceHeader {
                process: ProcessInfo {
                    exe: exe.to_string(),
                    program: exe.rsplit('/').next().unwrap_or(exe).to_string(),
                    ..ProcessInfo::default()
                },
                python: None,
                python_ignores_environment: None,
                totals: Default::default(),
                stats: Stats::default(),
                reachability: None,
                reachability_at_finalization: None,
                fork: None,
                inheritance: None,
                end: None,
                incomplete: None,
                damage: Vec::new(),
            },
            modules: Vec::new(),
            nodes: StackNodes::default(),
            python_codes: HashMap::new(),
            live: Vec::new(),
            marks: Vec::new(),
            holding: None,
        }
    }

    /// A module at `path` covering `start..start + size` (bias `start`, one segment at 0).
    pub fn module(id: u64, path: &str, start: u64, size: u64) -> Module {
        Module {
            id,
            path: path.to_string(),
            bias: start,
            build_id: Vec::new(),
            segments: vec![Segment {
                vaddr: 0,
                memsz: size,
                flags: 5,
            }],
        }
    }

    impl Trace {
        /// Loads a module (see [`module`]) and returns its index.
        pub fn load(&mut self, path: &str, start: u64, size: u64) -> usize {
            let id = self.modules.len() as u64 + 1;
            load_module(&mut self.modules, module(id, path, start, size));
            self.modules.len() - 1
        }

        /// Marks the process as running CPython with its eval loop at `start..start + size`.
        pub fn run_python(&mut self, eval_loop_start: u64, eval_loop_size: u64) {
            self.header.python = Some(PythonRuntime {
                python_version: 0x030b_07f0,
                eval_loop_start,
                eval_loop_size,
                frames_recorded: true,
                ..PythonRuntime::default()
            });
        }

        /// Defines a code object; its frames read as `name at file:first_line`.
        pub fn code(&mut self, id: u64, name: &str, file: &str, first_line: u32) {
            self.python_codes.insert(
                id,
                PythonCode {
                    id,
                    python_version: 0x030b_07f0,
                    filename: file.to_string(),
                    qualified_name: name.to_string(),
                    first_line,
                    line_table: Vec::new(),
                },
            );
        }

        /// Defines the stack `innermost_first` as new nodes and returns its leaf's id.
        pub fn define_stack(&mut self, innermost_first: &[Frame]) -> u64 {
            let mut parent = 0;
            for &frame in innermost_first.iter().rev() {
                let module = match frame {
                    Frame::Native { address } => find_module(&self.modules, address),
                    Frame::Python { .. } | Frame::PythonEntry => None,
                };
                let id = self.nodes.last_id() + 1;
                self.nodes.insert(id, StackNode::new(parent, frame, module));
                parent = id;
            }
            parent
        }

        /// Adds a block live at exit.
        pub fn live_block(&mut self, stack: u64, size: u64, class: Option<LeakClass>) {
            let seq = self.live.len() as u64;
            self.live.push(ExitBlock {
                seq,
                address: 0x1000 + seq * 0x100,
                size,
                stack,
                kind: AllocKind::Malloc,
                thread_id: 1,
                class,
                during_finalization: false,
            });
        }
    }

    /// A Python frame of code `code_id` at its first line.
    pub fn python(code_id: u64) -> Frame {
        Frame::Python {
            code_id,
            instruction_offset: -1,
        }
    }

    pub fn native(address: u64) -> Frame {
        Frame::Native { address }
    }
}

#[cfg(test)]
mod tests {
    use super::synthetic::{module, native, trace};
    use super::*;

    fn unload(modules: &mut [ModuleState], index: usize) {
        modules[index].unloaded = true;
    }

    /// Hands the child the parent's replay as it stands.
    struct Parent<'a>(&'a Replay);

    impl parents::Inheritance for Parent<'_> {
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
            Record::Process(ProcessInfo::default()),
            Record::Module(module(1, "/lib/a.so", 0x1000, 0x1000)),
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
            Record::PythonCode(code.clone()),
            alloc(1, 0xa000, 10, 3),
            alloc(2, 0xb000, 20, 2),
            alloc(3, 0xc000, 30, 3),
            Record::Free(Free {
                seq: 4,
                thread_id: 1,
                address: 0xc000,
            }),
        ];
        for record in records {
            parent.handle(record, &mut NoParents, None);
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
            Record::Process(ProcessInfo::default()),
            Record::Module(module(1, "/lib/a.so", 0x1000, 0x1000)),
            Record::Fork(fork),
            // The child's own ids start at 1 again.
            Record::StackNode {
                id: 1,
                parent: 0,
                frame: Frame::Native { address: 0x1300 },
            },
            alloc(6, 0xd000, 40, 1),
            Record::Free(Free {
                seq: 7,
                thread_id: 1,
                address: 0xb000,
            }),
        ];
        for record in records {
            child.handle(record, &mut Parent(&parent), None);
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

    #[test]
    fn find_module_prefers_loaded_then_the_latest_unloaded_not_superseded() {
        let mut modules = Vec::new();
        load_module(&mut modules, module(1, "/a.so", 0x1000, 0x1000));
        load_module(&mut modules, module(2, "/b.so", 0x4000, 0x1000));
        assert_eq!(find_module(&modules, 0x1800), Some(0));
        assert_eq!(find_module(&modules, 0x4000), Some(1));
        assert_eq!(find_module(&modules, 0x3000), None);
        assert_eq!(find_module(&modules, 0x5000), None, "one past the end");

        // Unloaded and not replaced: its addresses still name it.
        unload(&mut modules, 0);
        assert_eq!(find_module(&modules, 0x1800), Some(0));
        assert!(!modules[0].superseded);

        // A module loaded over part of it supersedes it entirely.
        load_module(&mut modules, module(3, "/c.so", 0x1800, 0x1000));
        assert!(modules[0].superseded);
        assert!(!modules[1].superseded, "loaded modules are never superseded");
        assert_eq!(find_module(&modules, 0x1900), Some(2));
        assert_eq!(
            find_module(&modules, 0x1200),
            None,
            "a superseded module's address is unknown"
        );

        // A module loaded elsewhere supersedes nothing.
        unload(&mut modules, 1);
        load_module(&mut modules, module(4, "/d.so", 0x8000, 0x1000));
        assert!(!modules[1].superseded);
        assert_eq!(find_module(&modules, 0x4800), Some(1));
    }

    #[test]
    fn a_module_loaded_below_an_unloaded_one_supersedes_it_too() {
        let mut modules = Vec::new();
        load_module(&mut modules, module(1, "/a.so", 0x2000, 0x1000));
        unload(&mut modules, 0);
        // Starts before a.so and reaches into it: only a.so's start lies inside it.
        load_module(&mut modules, module(2, "/b.so", 0x1000, 0x1800));
        assert!(modules[0].superseded);
        assert_eq!(find_module(&modules, 0x2c00), None);
    }

    #[test]
    fn stacks_read_innermost_first_and_stop_at_bad_parents() {
        let mut t = trace("/bin/prog");
        let leaf = t.define_stack(&[native(3), native(2), native(1)]);
        assert_eq!(leaf, 3);
        let addresses: Vec<Frame> = t.stack(leaf).iter().map(|n| n.frame).collect();
        assert_eq!(addresses, [native(3), native(2), native(1)]);
        // A node naming itself (or a later node) as parent ends the walk.
        t.nodes.insert(4, StackNode::new(4, native(9), None));
        assert_eq!(t.stack(4).len(), 1);
        let lost = t.stack(99);
        assert!(lost.len() == 1 && lost[0].lost);
    }

    #[test]
    fn nodes_are_found_by_id_across_the_gaps_damage_left() {
        let mut nodes = StackNodes::default();
        let node = |address| StackNode::new(0, native(address), None);
        for id in [1, 2, 3, 7, 8, 20] {
            nodes.insert(id, node(id));
        }
        nodes.insert(8, node(99));
        for id in [1, 2, 3, 7, 8, 20] {
            assert_eq!(nodes.get(id).map(|n| n.frame), Some(native(id)), "{id}");
        }
        for id in [0, 4, 6, 9, 19, 21, u64::MAX] {
            assert!(nodes.get(id).is_none(), "{id}");
        }
        assert_eq!(nodes.last_id(), 20);
        assert_eq!(StackNodes::default().last_id(), 0);
    }

    /// A trace written with the encoder, its second chunk then damaged: the stack defined
    /// there reads as lost under the block allocated after it, and the marks are kept.
    #[test]
    fn stacks_defined_in_a_damaged_chunk_read_as_lost() {
        use libleak_format::{Alloc, AllocKind, ChunkWriter, ProcessInfo, RecordEncoder};
        let mut writer = ChunkWriter::new(Vec::new()).unwrap();
        let mut encoder = RecordEncoder::new();
        let flush = |encoder: &mut RecordEncoder, writer: &mut ChunkWriter<Vec<u8>>| {
            writer.write_chunk(&encoder.payload()).unwrap();
            encoder.clear_payload();
        };
        encoder.process(&ProcessInfo::default());
        let outer = encoder.stack_node(0, native(0x10));
        flush(&mut encoder, &mut writer);
        let middle = encoder.stack_node(outer, native(0x20));
        flush(&mut encoder, &mut writer);
        let lost_at = writer.get_mut().len();
        let inner = encoder.stack_node(middle, native(0x30));
        encoder.alloc(&Alloc {
            seq: 1,
            thread_id: 1,
            address: 0x1000,
            size: 48,
            stack: inner,
            kind: AllocKind::Malloc,
        });
        encoder.mark(&Mark {
            seq: 2,
            time_ns: 5,
            thread_id: 1,
            label: "after".into(),
        });
        flush(&mut encoder, &mut writer);
        let mut bytes = std::mem::take(writer.get_mut());
        bytes[lost_at - 3] ^= 0xff;
        let trace = Trace::read(bytes.as_slice()).unwrap();
        assert_eq!(trace.header.damage.len(), 1);
        assert_eq!(trace.live.len(), 1);
        let stack = trace.stack(trace.live[0].stack);
        assert_eq!(stack.len(), 2);
        assert_eq!(stack[0].frame, native(0x30));
        assert!(stack[1].lost);
        assert_eq!(trace.marks.len(), 1);
        assert_eq!(trace.marks[0].label, "after");
    }
}
