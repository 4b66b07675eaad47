//! Reads a whole trace: the process, the module map as it changed, the stack nodes (each
//! native frame resolved to the module that held its address when the node was defined), and
//! the live set at the end.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use libleak_format::{
    DecodeError, End, ForkInfo, Frame, LeakClass, Module, ProcessInfo, PythonCode, PythonRuntime, Reachability, Record,
    ScanOutcome, Stats, TraceReader,
};

use crate::live::{LiveBlock, LiveSet, Totals};

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

/// Why the trace does not describe a normal, complete exit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Incompleteness {
    /// The file stops without an end marker: killed, crashed, or still running.
    Truncated { mid_chunk: bool },
    /// The process ended through `_exit` or `abort`: all events are there, but exit
    /// handlers did not run, so blocks they would have freed are still live.
    AbnormalExit(End),
}

impl std::fmt::Display for Incompleteness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Incompleteness::Truncated { mid_chunk: true } => write!(
                f,
                "the trace stops inside a chunk (the process was killed or crashed); events up to the last complete chunk are shown"
            ),
            Incompleteness::Truncated { mid_chunk: false } => write!(
                f,
                "the trace has no end marker (the process was killed, crashed, or is still running); events up to the last flush are shown"
            ),
            Incompleteness::AbnormalExit(end) if end.kind == libleak_format::ExitKind::Exec => write!(
                f,
                "the program image was replaced by exec(): every event was recorded, but exit handlers did not run (the new program has a trace of its own)"
            ),
            Incompleteness::AbnormalExit(end) => write!(
                f,
                "the process ended through {}(){}: every event was recorded, but exit handlers did not run",
                end.kind.name(),
                end.status.map(|s| format!(" with status {s}")).unwrap_or_default()
            ),
        }
    }
}

pub struct Trace {
    pub process: ProcessInfo,
    pub modules: Vec<ModuleState>,
    /// Node `id` is at index `id - 1`.
    pub nodes: Vec<StackNode>,
    /// Code objects by id. A code id may be referred to before its definition.
    pub python_codes: HashMap<u64, PythonCode>,
    /// The interpreter the process ran, if any.
    pub python: Option<PythonRuntime>,
    /// Whether it ignored environment variables, `PYTHONMALLOC` among them (None: not
    /// recorded).
    pub python_ignores_environment: Option<bool>,
    pub totals: Totals,
    pub live: Vec<LiveBlock>,
    /// The exit-time reachability scan, when the process ran one.
    pub reachability: Option<Reachability>,
    /// Set when the process was forked from a traced parent.
    pub fork: Option<ForkInfo>,
    pub end: Option<End>,
    pub stats: Stats,
    pub incomplete: Option<Incompleteness>,
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
        Trace::read_reporting(BufReader::with_capacity(1 << 20, file), &mut |read| {
            progress(read, size)
        })
    }

    pub fn read(input: impl std::io::Read) -> Result<Trace, ReplayError> {
        Trace::read_reporting(input, &mut |_| {})
    }

    fn read_reporting(input: impl std::io::Read, progress: &mut dyn FnMut(u64)) -> Result<Trace, ReplayError> {
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
            process: process.ok_or(ReplayError::NoProcess)?,
            modules,
            nodes,
            python_codes,
            python,
            python_ignores_environment,
            totals: live_totals,
            live,
            reachability,
            fork,
            end,
            stats,
            incomplete,
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
fn find_module(modules: &[ModuleState], address: u64) -> Option<usize> {
    let loaded = modules.iter().position(|m| !m.unloaded && m.module.contains(address));
    loaded.or_else(|| {
        modules
            .iter()
            .rposition(|m| m.unloaded && !m.superseded && m.module.contains(address))
    })
}
