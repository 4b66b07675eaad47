//! Stage 1, replay: reads a whole trace into the process's header, the module map as it
//! changed, the stack nodes (each native frame resolved to the module that held its address
//! when the node was defined), the marks, and the live set at the end. The module map's
//! knowledge of which module is libleak's own lives here too. Damage the reader skipped is
//! carried in the header; stacks whose nodes it lost end in a [`StackNode::lost`] node.
//!
//! This module holds what a replay produces ([`Trace`] and its parts); [`reading`] turns
//! records into it, and [`parents`] opens trace files, a forked child's parent's among them: a
//! child's trace starts where its parent's stood at the fork, and the blocks it inherited are
//! read from the parent's trace, with their stacks.
//!
//! Must never symbolize or judge blocks: it reports what the trace says, nothing more.

use std::collections::HashMap;
use std::sync::OnceLock;

use libleak_format::live::AddressMap;
use libleak_format::{Alloc, BlockHolder, DecodeError, Frame, Free, Holder, LeakClass, Mark, Module, PythonCode};

mod finalization;
mod left_to_parent;
pub mod parents;
pub mod reading;
mod stack_nodes;

use crate::live::{AtFinalization, ExitBlock};
use crate::model::TraceHeader;
pub use stack_nodes::{StackNode, StackNodes, IMPORTED_NODES};

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
    pub python_codes: AddressMap<u64, PythonCode>,
    pub live: Vec<ExitBlock>,
    /// Inherited blocks still live that this forked child's scan left to its parent's trace
    /// (see [`libleak_format::Reachability::inherited_unjudged`]): counted, not kept in
    /// `live` (a prefork child inherits millions, which nothing lists).
    pub inherited_unjudged: crate::model::Tally,
    /// The MARK records, in file order.
    pub marks: Vec<Mark>,
    /// Who held the blocks live when CPython's finalisation began, when the scan then named
    /// holders.
    pub holding: Option<Holding>,
    /// What the exit scan learnt of each block of `live` it did not find reachable, by
    /// address.
    pub lost: AddressMap<u64, LostFacts>,
    /// The Python types [`LostFacts::object_type`] refers to.
    pub object_types: Vec<String>,
    /// The thread that finalised the interpreter, when the process got that far.
    pub finalizing_thread: Option<u32>,
}

/// What the exit scan learnt of a block it did not find reachable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LostFacts {
    /// The address of the block whose leak keeps this one (its own when it is a root).
    pub root: u64,
    /// The Python object's type, as an index into [`Trace::object_types`].
    pub object_type: Option<u32>,
    /// The object's reference count (0: no object, or its count was not read).
    pub refcount: u64,
    /// The pointers to the object's start found in lost memory.
    pub references: u64,
}

impl LostFacts {
    /// References the scan could not find: taken and never given back.
    pub fn leaked_references(&self) -> u64 {
        self.refcount.saturating_sub(self.references)
    }
}

/// Who held the blocks live when CPython's finalisation began, summed by allocation stack.
#[derive(Debug, Default)]
pub struct Holding {
    /// Holder `id` is at index `id - 1`.
    pub names: Vec<Holder>,
    /// Object type `id` is at index `id - 1`.
    pub types: Vec<String>,
    /// Retention-path step `id` is at index `id - 1` (see [`PathStep`]).
    pub steps: Vec<String>,
    /// Who held each block and how it was reached: followed back only for the paths a report
    /// shows, of the few holders of its rows, never for every holder of every stack.
    pub held: HeldBlocks,
    /// The blocks live when the scan was made, for [`Holding::sums`]: the replay's own first
    /// (`own_then` of them, in no particular order), then the inherited ones.
    live_then: Vec<BlockThen>,
    own_then: usize,
    /// Summed on first use: only the growth report asks, for its few sites, and the sums of
    /// a real program's hundreds of thousands of held blocks cost more than the rest of its
    /// leak report's replay of them.
    sums: OnceLock<HeldSums>,
}

/// A block live when finalisation began, as [`Holding::sums`] needs it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BlockThen {
    pub(crate) address: u64,
    pub(crate) seq: u64,
    pub(crate) size: u64,
    pub(crate) stack: u64,
}

/// The held blocks summed by stack (see [`Holding::holders_of`] and [`Holding::types_of`]).
#[derive(Debug, Default)]
struct HeldSums {
    by_stack: HashMap<u64, Vec<Held>>,
    types_by_stack: HashMap<u64, Vec<(u32, u64, u64)>>,
}

/// The scan's BLOCK_HOLDERS entries by address, sorted for look-ups by address.
#[derive(Debug, Default)]
pub struct HeldBlocks {
    by_address: Vec<BlockHolder>,
}

/// Blocks followed back from a held block towards its holder, at most.
const MAX_PATH: usize = 16;

impl HeldBlocks {
    /// `entries` in file order; a later entry for an address replaces an earlier one.
    pub fn new(mut entries: Vec<BlockHolder>) -> HeldBlocks {
        // The writer gives them in address order, once each.
        if !entries.windows(2).all(|pair| pair[0].address < pair[1].address) {
            entries.sort_by_key(|entry| entry.address);
            // The stable sort kept each address's entries in file order: keep the last.
            entries.reverse();
            entries.dedup_by_key(|entry| entry.address);
            entries.reverse();
        }
        HeldBlocks { by_address: entries }
    }

    pub fn get(&self, address: u64) -> Option<&BlockHolder> {
        let index = self
            .by_address
            .binary_search_by_key(&address, |entry| entry.address)
            .ok()?;
        Some(&self.by_address[index])
    }
}

impl Holding {
    pub(crate) fn new(
        names: Vec<Holder>,
        types: Vec<String>,
        steps: Vec<String>,
        held: HeldBlocks,
        live_then: Vec<BlockThen>,
        own_then: usize,
    ) -> Holding {
        Holding {
            names,
            types,
            steps,
            held,
            live_then,
            own_then,
            sums: OnceLock::new(),
        }
    }

    /// Each holder of some of the blocks of `stack` live then, most bytes first.
    pub fn holders_of(&self, stack: u64) -> &[Held] {
        self.sums().by_stack.get(&stack).map_or(&[], Vec::as_slice)
    }

    /// The Python type of the objects the blocks of `stack` live then held (type id, bytes,
    /// blocks), most bytes first; blocks that held no recognised object are not counted.
    pub fn types_of(&self, stack: u64) -> &[(u32, u64, u64)] {
        self.sums().types_by_stack.get(&stack).map_or(&[], Vec::as_slice)
    }

    /// Every stack some of whose blocks live then were held, with each holder of them, most
    /// bytes first; the stacks in no particular order.
    pub fn by_stack(&self) -> impl Iterator<Item = (u64, &[Held])> {
        self.sums()
            .by_stack
            .iter()
            .map(|(&stack, held)| (stack, held.as_slice()))
    }

    /// Whether a Python name (a module global, a class attribute) held the block at `address`.
    pub fn held_by_python_name(&self, address: u64) -> bool {
        self.held.get(address).is_some_and(|entry| {
            matches!(
                self.names.get((entry.holder as usize).wrapping_sub(1)),
                Some(Holder::Python(_))
            )
        })
    }

    fn sums(&self) -> &HeldSums {
        self.sums.get_or_init(|| {
            // One look-up per block, a hash table per sum: a stack's blocks can have thousands
            // of holders (the items of one large dict each held by the module).
            let mut held_by: AddressMap<(u64, u32), (Held, u64)> = AddressMap::default();
            let mut types_of: AddressMap<(u64, u32), (u64, u64)> = AddressMap::default();
            // In the order of the live set's blocks (by sequence number, then address), the
            // inherited ones after: the first of the newest blocks of a sum is its path's.
            let (own, inherited) = self.live_then.split_at(self.own_then.min(self.live_then.len()));
            let mut own = own.to_vec();
            own.sort_unstable_by_key(|block| (block.seq, block.address));
            for block in own.iter().chain(inherited) {
                let Some(&BlockHolder {
                    holder, object_type, ..
                }) = self.held.get(block.address)
                else {
                    continue;
                };
                let (held, newest_seq) = held_by.entry((block.stack, holder)).or_insert((
                    Held {
                        holder,
                        bytes: 0,
                        blocks: 0,
                        newest: block.address,
                    },
                    block.seq,
                ));
                held.bytes += block.size;
                held.blocks += 1;
                // The newest block's path is shown.
                if block.seq > *newest_seq {
                    (held.newest, *newest_seq) = (block.address, block.seq);
                }
                if object_type != 0 {
                    let sums = types_of.entry((block.stack, object_type)).or_default();
                    sums.0 += block.size;
                    sums.1 += 1;
                }
            }
            let mut sums = HeldSums::default();
            for ((stack, _), (held, _)) in held_by {
                sums.by_stack.entry(stack).or_default().push(held);
            }
            for ((stack, object_type), (bytes, blocks)) in types_of {
                sums.types_by_stack
                    .entry(stack)
                    .or_default()
                    .push((object_type, bytes, blocks));
            }
            for held in sums.by_stack.values_mut() {
                held.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.holder.cmp(&b.holder)));
            }
            for types in sums.types_by_stack.values_mut() {
                types.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            }
            sums
        })
    }

    /// The blocks on the way from the holder to `held`'s newest block (that block's last), the
    /// holder's own first, cut at 16 blocks from the end; and whether it was cut (the holder's
    /// own block is then not its first).
    pub fn path(&self, held: &Held) -> (Vec<PathStep>, bool) {
        let mut path = Vec::new();
        let mut at = held.newest;
        let mut cut = false;
        while let Some(entry) = self.held.get(at) {
            path.push(PathStep {
                object_type: entry.object_type,
                step: entry.step,
            });
            if entry.via == 0 {
                break;
            }
            if path.len() == MAX_PATH {
                cut = true;
                break;
            }
            at = entry.via;
        }
        path.reverse();
        (path, cut)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    pub holder: u32,
    pub bytes: u64,
    pub blocks: u64,
    /// The newest of these blocks, whose retention path is shown (see [`Holding::path`]).
    pub newest: u64,
}

/// A block on a retention path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathStep {
    /// The type of the object it holds (an id of [`Holding::types`]; 0: none recognised).
    pub object_type: u32,
    /// How the block before it holds it (an id of [`Holding::steps`]: `.attr`, `['key']`,
    /// `[3]`, or empty for an object's `__dict__`); 0 when the step has no Python name.
    pub step: u32,
}

/// Whether a Python code object's file is importlib's own (`<frozen importlib._bootstrap>`,
/// `<frozen importlib._bootstrap_external>`): the frames between an `import` and the module
/// it runs.
pub fn is_importlib_file(filename: &str) -> bool {
    filename.starts_with("<frozen importlib._bootstrap")
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

impl Trace {
    /// What the scan made when CPython's finalisation began says about the blocks live at
    /// exit. A block allocated after it is the runtime's. A block allocated during an import
    /// (module state, caches, tables built by `PyInit_*` or a module's body) that was
    /// reachable then is the module's, orphaned only by the teardown: no leak, whatever the
    /// exit scan says, and so is the structure it holds; but a part of a leaked structure
    /// leaks with its root, whatever its own stack says. So is a Python object a name held
    /// then (through a module's global, a class attribute) that holds, at exit, a reference
    /// no pointer accounts for: an extension that keeps a reference it will not give back
    /// once the interpreter is finalising (pyarrow's buffers over NumPy arrays check
    /// `Py_IsInitialized` before releasing theirs) leaves it alive after the teardown, with
    /// no pointer to it; and so are the parts of its structure. A C block a name held then
    /// (a buffer a global's dealloc forgets to free) keeps the exit scan's class. Other blocks keep the exit scan's class: the finalising
    /// interpreter's heap is in flux (the garbage collector runs), and a stale pointer found
    /// then must not hide a leak the exit scan sees.
    ///
    /// A block the exit scan found part of a leaked structure (not its root) that a Python
    /// name held when finalisation began, while the structure's root was lost
    /// already, and that existed before the root, was the module's, not the leak's (a leaked
    /// frame's code and function): the teardown orphaned it. It is not part of the leak.
    fn apply_finalization_scan(&mut self) {
        let mut import_time: AddressMap<u64, bool> = AddressMap::default();
        // Each structure's root's sequence number, when it was lost already when finalisation
        // began: otherwise that scan saw another heap than the exit scan's (a stale pointer
        // then held the root), and says nothing about its parts.
        let mut roots_lost_then: AddressMap<u64, Option<u64>> =
            self.lost.values().map(|facts| (facts.root, None)).collect();
        for block in &self.live {
            if let Some(lost_then) = roots_lost_then.get_mut(&block.address) {
                if matches!(
                    block.at_finalization,
                    AtFinalization::Live(Some(class)) if class != LeakClass::Reachable
                ) {
                    *lost_then = Some(block.seq);
                }
            }
        }
        // Asked only of blocks live then (so the address's holder then was this block's).
        let named_then = |address: u64| {
            self.holding
                .as_ref()
                .is_some_and(|holding| holding.held_by_python_name(address))
        };
        // Only what existed before the root can have been the module's first: what was made
        // after it and seems held by a name then is held through a stale pointer. The lost
        // facts first: few blocks have any, and most are reachable.
        let orphaned_part = |block: &ExitBlock, lost: &AddressMap<u64, LostFacts>| {
            lost.get(&block.address).is_some_and(|facts| {
                facts.root != block.address
                    && roots_lost_then
                        .get(&facts.root)
                        .copied()
                        .flatten()
                        .is_some_and(|root_seq| block.seq < root_seq)
            }) && named_then(block.address)
        };
        for index in 0..self.live.len() {
            let block = self.live[index];
            match block.at_finalization {
                AtFinalization::NotLive => self.live[index].during_finalization = true,
                AtFinalization::Live(Some(LeakClass::Reachable)) if orphaned_part(&block, &self.lost) => {
                    self.live[index].class = Some(LeakClass::Reachable);
                    self.lost.remove(&block.address);
                }
                // A part of a leaked structure leaks with its root, whatever its stack says (a
                // key table or an object CPython reused carries the stack of its first use).
                AtFinalization::Live(Some(LeakClass::Reachable))
                    if block.class != Some(LeakClass::Reachable)
                        && self
                            .lost
                            .get(&block.address)
                            .is_none_or(|facts| facts.root == block.address) =>
                {
                    let during_import = *import_time
                        .entry(block.stack)
                        .or_insert_with(|| self.allocated_during_import(block.stack));
                    // Held through a Python name then, and holding a reference no pointer the
                    // exit scan read accounts for: kept by an extension past the teardown.
                    let kept_past_teardown = named_then(block.address)
                        && self
                            .lost
                            .get(&block.address)
                            .is_some_and(|facts| facts.refcount > facts.references);
                    if during_import || kept_past_teardown {
                        self.live[index].class = Some(LeakClass::Reachable);
                    }
                }
                AtFinalization::Live(_) => {}
            }
        }
        // The parts of a root found to be module state are the module's too.
        let mut roots_kept: AddressMap<u64, bool> = self.lost.values().map(|facts| (facts.root, false)).collect();
        for block in &self.live {
            if let Some(kept) = roots_kept.get_mut(&block.address) {
                *kept = block.class == Some(LeakClass::Reachable);
            }
        }
        for block in &mut self.live {
            let root_kept = self
                .lost
                .get(&block.address)
                .is_some_and(|facts| facts.root != block.address && roots_kept.get(&facts.root) == Some(&true));
            if root_kept {
                block.class = Some(LeakClass::Reachable);
                self.lost.remove(&block.address);
            }
        }
    }

    /// Whether stack `leaf` was made by native code the import machinery itself called (an
    /// extension's module init, `PyInit_*` or its exec slot): its innermost Python frame is
    /// importlib's. Code a module runs at import (a loop calling a C function) is not.
    pub fn allocated_by_module_init(&self, leaf: u64) -> bool {
        self.importlib_frames(leaf).first() == Some(&true)
    }

    /// Whether stack `leaf` runs through importlib (every import of a Python module or an
    /// extension does, `PyInit_*` included).
    pub fn allocated_during_import(&self, leaf: u64) -> bool {
        self.importlib_frames(leaf).contains(&true)
    }

    /// For each Python frame of stack `leaf`, innermost first: whether it is importlib's.
    fn importlib_frames(&self, leaf: u64) -> Vec<bool> {
        self.stack(leaf)
            .iter()
            .filter_map(|node| match node.frame {
                Frame::Python { code_id, .. } => Some(
                    self.python_codes
                        .get(&code_id)
                        .is_some_and(|code| is_importlib_file(&code.filename)),
                ),
                Frame::Native { .. } | Frame::PythonEntry => None,
            })
            .collect()
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
            frames.push(node);
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
                ..TraceHeader::default()
            },
            modules: Vec::new(),
            nodes: StackNodes::default(),
            python_codes: AddressMap::default(),
            lost: AddressMap::default(),
            object_types: Vec::new(),
            live: Vec::new(),
            inherited_unjudged: Default::default(),
            marks: Vec::new(),
            holding: None,
            finalizing_thread: None,
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
                at_finalization: AtFinalization::NotLive,
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
    fn held_blocks_are_found_by_address_the_last_entry_of_an_address_winning() {
        let entry = |address, holder| BlockHolder {
            address,
            holder,
            object_type: 0,
            via: 0,
            step: 0,
        };
        let in_order = HeldBlocks::new(vec![entry(0x10, 1), entry(0x20, 2), entry(0x30, 3)]);
        assert_eq!(in_order.get(0x20).map(|e| e.holder), Some(2));
        assert!(in_order.get(0x18).is_none());
        let shuffled = HeldBlocks::new(vec![entry(0x30, 1), entry(0x10, 2), entry(0x30, 3), entry(0x20, 4)]);
        let holders: Vec<u32> = [0x10, 0x20, 0x30]
            .iter()
            .filter_map(|&address| shuffled.get(address).map(|e| e.holder))
            .collect();
        assert_eq!(holders, [2, 4, 3]);
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

    #[test]
    fn nodes_too_large_to_pack_are_kept_whole() {
        let mut nodes = StackNodes::default();
        let far_parent = StackNode::new(1 << 40, native(0x30), None);
        let large_offset = StackNode::new(
            1,
            Frame::Python {
                code_id: 5,
                instruction_offset: i64::MAX,
            },
            None,
        );
        nodes.insert(1, StackNode::new(0, native(0x10), Some(2)));
        nodes.insert(2, far_parent);
        nodes.insert(3, StackNode::new(2, native(0x20), None));
        nodes.insert(4, large_offset);
        let read = |id| nodes.get(id).map(|n| (n.parent, n.frame, n.module()));
        assert_eq!(read(1), Some((0, native(0x10), Some(2))));
        assert_eq!(read(2), Some((1 << 40, native(0x30), None)));
        assert_eq!(read(3), Some((2, native(0x20), None)));
        assert_eq!(read(4), Some((1, large_offset.frame, None)));
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
