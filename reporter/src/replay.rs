//! Stage 1, replay: reads a whole trace into the process's header, the module map as it
//! changed, the stack nodes (each native frame resolved to the module that held its address
//! when the node was defined), and the live set at the end. The module map's knowledge of
//! which module is libleak's own lives here too.
//!
//! Must never symbolize or judge blocks: it reports what the trace says, nothing more.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use libleak_format::{DecodeError, Frame, LeakClass, Module, PythonCode, Record, ScanOutcome, Stats, TraceReader};

use crate::live::{LiveBlock, LiveSet};
use crate::model::{Incompleteness, TraceHeader};

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

/// One stack node: a frame and its caller.
#[derive(Clone, Copy, Debug)]
pub struct StackNode {
    pub parent: u64,
    pub frame: Frame,
    /// Index into [`Trace::modules`] of the module holding a native frame's address.
    pub module: Option<usize>,
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
    /// Node `id` is at index `id - 1`.
    pub nodes: Vec<StackNode>,
    /// Code objects by id. A code id may be referred to before its definition.
    pub python_codes: HashMap<u64, PythonCode>,
    pub live: Vec<LiveBlock>,
}

impl Trace {
    pub fn open(path: &Path) -> Result<Trace, ReplayError> {
        let file = File::open(path).map_err(ReplayError::Open)?;
        Trace::read(BufReader::with_capacity(1 << 20, file))
    }

    /// As [`Trace::open`], calling `progress` with the bytes of the file read so far and its
    /// size, now and then (every few hundred thousand records) and once at the end.
    pub fn open_with_progress(path: &Path, progress: &mut dyn FnMut(u64, u64)) -> Result<Trace, ReplayError> {
        let file = File::open(path).map_err(ReplayError::Open)?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Trace::read_with_progress(BufReader::with_capacity(1 << 20, file), &mut |read| {
            progress(read, size)
        })
    }

    pub fn read(input: impl std::io::Read) -> Result<Trace, ReplayError> {
        Trace::read_with_progress(input, &mut |_| {})
    }

    fn read_with_progress(input: impl std::io::Read, progress: &mut dyn FnMut(u64)) -> Result<Trace, ReplayError> {
        const PROGRESS_EVERY: u64 = 1 << 18;
        let mut records: u64 = 0;
        let mut reader = TraceReader::new(input)?;
        let mut process = None;
        let mut modules: Vec<ModuleState> = Vec::new();
        let mut nodes = Vec::new();
        let mut python_codes = HashMap::new();
        let mut python = None;
        let mut python_ignores_environment = None;
        let mut live = LiveSet::new();
        let mut classes: HashMap<u64, LeakClass> = HashMap::new();
        let mut reachability = None;
        let mut fork = None;
        let mut end = None;
        let mut stats = Stats::default();
        while let Some(record) = reader.next_record()? {
            records += 1;
            if records.is_multiple_of(PROGRESS_EVERY) {
                progress(reader.bytes_read());
            }
            match record {
                Record::Process(info) => process = Some(info),
                Record::Module(module) => {
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
                Record::ModuleUnloaded { module_id } => {
                    for state in modules.iter_mut().filter(|m| m.module.id == module_id) {
                        state.unloaded = true;
                    }
                }
                Record::StackNode { parent, frame, .. } => {
                    let module = match frame {
                        Frame::Native { address } => find_module(&modules, address),
                        Frame::Python { .. } | Frame::PythonEntry => None,
                    };
                    nodes.push(StackNode { parent, frame, module });
                }
                Record::Alloc(alloc) => live.alloc(
                    alloc.address,
                    LiveBlock {
                        seq: alloc.seq,
                        address: alloc.address,
                        size: alloc.size,
                        stack: alloc.stack,
                        kind: alloc.kind,
                        thread_id: alloc.thread_id,
                        class: None,
                    },
                ),
                Record::Free(free) => live.free(free.address, free.seq),
                Record::PythonCode(code) => {
                    python_codes.insert(code.id, code);
                }
                Record::PythonRuntime(runtime) => python = Some(runtime),
                Record::PythonConfig { ignores_environment } => python_ignores_environment = Some(ignores_environment),
                Record::BlockClasses(entries) => {
                    classes.extend(entries.iter().map(|entry| (entry.address, entry.class)));
                }
                Record::Reachability(scan) => reachability = Some(scan),
                Record::Fork(info) => fork = Some(info),
                Record::Stats(s) => stats = s,
                Record::End(e) => {
                    stats = e.stats;
                    end = Some(e);
                }
            }
        }
        progress(reader.bytes_read());
        let live_totals = live.totals();
        let incomplete = match end {
            None => Some(Incompleteness::Truncated {
                mid_chunk: reader.is_truncated(),
            }),
            Some(e) if e.kind != libleak_format::ExitKind::Exit => Some(Incompleteness::AbnormalExit(e)),
            Some(_) => None,
        };
        let mut live: Vec<LiveBlock> = live.live_blocks().into_iter().map(|(_, block)| block).collect();
        if reachability
            .as_ref()
            .is_some_and(|scan| scan.outcome == ScanOutcome::Complete)
        {
            for block in &mut live {
                block.class = Some(classes.get(&block.address).copied().unwrap_or(LeakClass::Reachable));
            }
        }
        Ok(Trace {
            header: TraceHeader {
                process: process.ok_or(ReplayError::NoProcess)?,
                python,
                python_ignores_environment,
                totals: live_totals,
                stats,
                reachability,
                fork,
                end,
                incomplete,
            },
            modules,
            nodes,
            python_codes,
            live,
        })
    }

    /// The frames of stack `leaf`, innermost first.
    pub fn stack(&self, leaf: u64) -> Vec<StackNode> {
        let mut frames = Vec::new();
        let mut id = leaf;
        while id != 0 {
            let Some(node) = usize::try_from(id - 1).ok().and_then(|i| self.nodes.get(i)) else {
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

/// The loaded module holding `address`, else an unloaded one not yet replaced.
pub fn find_module(modules: &[ModuleState], address: u64) -> Option<usize> {
    let loaded = modules.iter().position(|m| !m.unloaded && m.module.contains(address));
    loaded.or_else(|| {
        modules
            .iter()
            .rposition(|m| m.unloaded && !m.superseded && m.module.contains(address))
    })
}
