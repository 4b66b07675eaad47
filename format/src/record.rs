//! The typed records of a trace. Field meanings are specified in `SPEC.md`; the byte layout
//! lives in `encode.rs` and `decode/records.rs` (tags below are shared by both). Must never
//! hold encoding state or logic beyond the one-byte enums' `from_u8`/`name`.

use crate::wire_enum::wire_enum;

/// Record tags: the first byte of every record in a chunk payload.
pub(crate) mod tag {
    pub const PROCESS: u8 = 0x01;
    pub const MODULE: u8 = 0x02;
    pub const MODULE_UNLOADED: u8 = 0x03;
    pub const STACK_NODE: u8 = 0x04;
    pub const ALLOC: u8 = 0x05;
    pub const FREE: u8 = 0x06;
    pub const PYTHON_CODE: u8 = 0x07;
    pub const STATS: u8 = 0x08;
    pub const END: u8 = 0x09;
    pub const PYTHON_RUNTIME: u8 = 0x0A;
    pub const BLOCK_CLASSES: u8 = 0x0B;
    pub const REACHABILITY: u8 = 0x0C;
    pub const FORK: u8 = 0x0D;
    pub const THREAD: u8 = 0x0E;
    pub const ALLOC_REUSE: u8 = 0x0F;
    pub const FREE_RECENT: u8 = 0x10;
    pub const PYTHON_CONFIG: u8 = 0x11;
    pub const FINALIZING: u8 = 0x12;
    pub const MARK: u8 = 0x13;
    pub const HOLDERS: u8 = 0x14;
    pub const BLOCK_HOLDERS: u8 = 0x15;
    pub const OBJECT_TYPES: u8 = 0x16;
    pub const LOST_BLOCKS: u8 = 0x17;
    pub const STEP_NAMES: u8 = 0x18;
    pub const INHERITANCE_LEFT: u8 = 0x19;
}

/// Holder kind bytes inside a HOLDERS record.
pub(crate) mod holder_kind {
    pub const PYTHON: u8 = 0;
    pub const ROOT_WORD: u8 = 1;
    pub const REGISTER: u8 = 2;
}

/// Frame kind bytes inside a stack node record.
pub(crate) mod frame_kind {
    pub const NATIVE: u8 = 0;
    pub const PYTHON: u8 = 1;
    pub const PYTHON_ENTRY: u8 = 2;
}

/// One decoded trace record. The payloads of the records a trace holds few of are boxed, so
/// that the enum is the size of the frequent ones (ALLOC, FREE, STACK_NODE): 48 bytes, not
/// 120. Every record read is moved through it, and copying the larger one cost more than a
/// tenth of a report's replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Process(Box<ProcessInfo>),
    Module(Box<Module>),
    ModuleUnloaded {
        module_id: u64,
    },
    /// Defines stack node `id` (ids count up from 1 in file order) as `frame` called from
    /// `parent` (0 = the outermost frame of a stack).
    StackNode {
        id: u64,
        parent: u64,
        frame: Frame,
    },
    Alloc(Alloc),
    Free(Free),
    PythonCode(Box<PythonCode>),
    PythonRuntime(Box<PythonRuntime>),
    /// What the interpreter's configuration was once it ran Python code.
    PythonConfig {
        /// It ignored environment variables (`python -I` or `-E`, an embedder's isolated
        /// configuration), `PYTHONMALLOC` among them.
        ignores_environment: bool,
    },
    /// CPython's finalisation began (its `atexit` callbacks had run and its non-daemon
    /// threads had ended; no module was torn down yet): the BLOCK_CLASSES and REACHABILITY
    /// records that follow, up to that REACHABILITY, classify the blocks live at this point
    /// of the trace instead of those live at exit.
    Finalizing {
        /// The thread that finalises the interpreter.
        thread_id: u32,
    },
    /// Classes of blocks live at exit (or at [`Record::Finalizing`]) that are not reachable
    /// (see [`Reachability`]).
    BlockClasses(Vec<BlockClass>),
    Reachability(Box<Reachability>),
    /// The process is a fork child; the ALLOC records that follow, up to `fork_seq`, are
    /// the blocks it inherited.
    Fork(Box<ForkInfo>),
    Stats(Stats),
    /// A point of the run named by the program or the user.
    Mark(Box<Mark>),
    /// Names of what holds reachable blocks, in the scan at [`Record::Finalizing`]: the next
    /// ids of that scan (its first holder is id 1).
    Holders(Vec<Holder>),
    /// Which holder holds each of these reachable blocks (in the scan at
    /// [`Record::Finalizing`]).
    BlockHolders(Vec<BlockHolder>),
    /// Names of the Python types of objects in the scan at [`Record::Finalizing`]: the next
    /// type ids of that scan (its first type is id 1).
    ObjectTypes(Vec<String>),
    /// Names of the steps of retention paths (`.attr`, `['key']`, `[3]`) in the scan at
    /// [`Record::Finalizing`]: the next step ids of that scan (its first is id 1).
    StepNames(Vec<String>),
    /// The structure of the lost memory the scan found: which leaked root keeps each lost
    /// block, and what each lost Python object is, with its reference count against the
    /// references the scan found to it.
    LostBlocks(Vec<LostBlock>),
    /// Just before a forked child's REACHABILITY: the scan judged only the blocks the child
    /// allocated, leaving `unjudged` inherited blocks to the parent's trace (see
    /// [`Reachability::inherited_unjudged`]); `scanned` of them were read as roots.
    InheritanceLeft {
        unjudged: u64,
        scanned: u64,
    },
    End(Box<End>),
}

/// A labelled point of the run: the events with a smaller `seq` (on its thread, or on the
/// addresses it orders against) happened before it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mark {
    /// The event sequence number at the mark (absolute, not a delta).
    pub seq: u64,
    /// Nanoseconds since the trace's first chunk was written, on the clock of
    /// [`TraceReader::chunk_time_ns`](crate::TraceReader::chunk_time_ns).
    pub time_ns: u64,
    pub thread_id: u32,
    pub label: String,
}

/// Who the traced process is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    pub parent_pid: u32,
    pub start_time_unix_ns: u64,
    /// The resolved executable (`/proc/self/exe`).
    pub exe: String,
    pub argv: Vec<String>,
    pub cwd: String,
    /// The short name used in the trace file name (see [`crate::program_name`]).
    pub program: String,
}

/// A loaded ELF object and where it sits in memory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Module {
    pub id: u64,
    pub path: String,
    /// Load bias: runtime address minus the address in the file.
    pub bias: u64,
    /// The GNU build-id note, empty when the object has none.
    pub build_id: Vec<u8>,
    pub segments: Vec<Segment>,
}

/// One PT_LOAD program header of a module, in file (unbiased) addresses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    pub vaddr: u64,
    pub memsz: u64,
    /// `PF_X` = 1, `PF_W` = 2, `PF_R` = 4, as in the ELF program header.
    pub flags: u32,
}

impl Module {
    /// Whether runtime address `address` falls in one of this module's segments.
    pub fn contains(&self, address: u64) -> bool {
        self.segments.iter().any(|s| {
            let start = self.bias.wrapping_add(s.vaddr);
            address >= start && address - start < s.memsz
        })
    }
}

/// One frame of a stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Frame {
    /// A native return address (or, for the innermost frame, the call site's return address).
    Native { address: u64 },
    /// A Python frame: a code object defined by a [`PythonCode`] record, and the offset of the
    /// instruction being executed, in bytes from the start of the code (negative before the
    /// first instruction has run).
    Python { code_id: u64, instruction_offset: i64 },
    /// The outer edge of one activation of the interpreter's eval loop: the Python frames
    /// between this marker and the previous one (or the innermost frame) were run by a single
    /// C call of the eval loop. Two markers in a row mean an activation running no visible
    /// Python frame.
    PythonEntry,
}

wire_enum! {
    /// Which allocator entry point produced a block.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum AllocKind {
        Malloc = 0 => "malloc",
        Calloc = 1 => "calloc",
        Realloc = 2 => "realloc",
        PosixMemalign = 3 => "posix_memalign",
        AlignedAlloc = 4 => "aligned_alloc",
        Memalign = 5 => "memalign",
        Valloc = 6 => "valloc",
        Pvalloc = 7 => "pvalloc",
        ReallocArray = 8 => "reallocarray",
        /// An object a Python constructor took off one of CPython's free lists: the block did
        /// not move, it was born again to a new owner (a FREE of it comes just before).
        FreeListReuse = 9 => "free-list",
    }
}

/// A block became live. `seq` orders it against every other event of the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Alloc {
    pub seq: u64,
    pub thread_id: u32,
    pub address: u64,
    pub size: u64,
    /// The innermost stack node of the allocating call, 0 when no stack was captured.
    pub stack: u64,
    pub kind: AllocKind,
}

/// A block stopped being live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Free {
    pub seq: u64,
    pub thread_id: u32,
    pub address: u64,
}

/// A Python code object, recorded the first time a stack refers to it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PythonCode {
    pub id: u64,
    /// `PY_VERSION_HEX` of the interpreter, which fixes the line-table format.
    pub python_version: u32,
    pub filename: String,
    pub qualified_name: String,
    pub first_line: u32,
    /// The code object's line table, copied byte for byte.
    pub line_table: Vec<u8>,
}

/// What the interposer found out about the Python interpreter in the process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PythonRuntime {
    /// `PY_VERSION_HEX`.
    pub python_version: u32,
    /// Runtime address and size of the eval-loop function (`_PyEval_EvalFrameDefault`), whose
    /// native frames the reporter replaces with Python frames; 0 when unknown.
    pub eval_loop_start: u64,
    pub eval_loop_size: u64,
    /// Whether stacks carry Python frames.
    pub frames_recorded: bool,
    /// Whether libleak set `PYTHONMALLOC=malloc` so that Python objects are visible.
    pub pythonmalloc_set: bool,
    /// Why frames are not recorded, when they are not.
    pub note: String,
}

/// `major.minor.micro` of a `PY_VERSION_HEX` value.
pub fn python_version_text(hex: u32) -> String {
    format!("{}.{}.{}", hex >> 24, hex >> 16 & 0xff, hex >> 8 & 0xff)
}

/// Counters the interposer keeps about itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Allocator calls that arrived while the thread was already inside a hook (a signal
    /// handler, or the interposer's own work) and so were passed through unrecorded.
    pub reentrant_calls: u64,
    /// Times a thread had to wait because the writer was behind.
    pub producer_waits: u64,
    /// Stacks cut at the depth limit.
    pub truncated_stacks: u64,
    /// The per-thread event buffers were ordered by spin locks (membarrier refused, or
    /// `LIBLEAK_SLOT_LOCKS=1`) rather than by asymmetric fences.
    pub slot_locks: bool,
}

wire_enum! {
    /// How the process ended, as far as the interposer saw it.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum ExitKind {
        /// Normal process exit: `exit()` or returning from `main`. Exit handlers and
        /// interpreter finalisation ran before the live set was taken.
        Exit = 0 => "exit",
        /// `_exit()`/`_Exit()`: every event was recorded, but no exit handlers ran.
        UnderscoreExit = 1 => "_exit",
        /// `abort()`: every event up to the call was recorded; the process dies by SIGABRT.
        Abort = 2 => "abort",
        /// `exec` replaced the program image (which starts a trace of its own): every event
        /// was recorded, but no exit handlers ran.
        Exec = 3 => "exec",
    }
}

/// The last record of a finished trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct End {
    pub kind: ExitKind,
    /// The status passed to `exit`/`_exit`, when the interposer saw it.
    pub status: Option<i32>,
    pub stats: Stats,
}

wire_enum! {
    /// How the exit-time scan found a block that was live at exit.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub enum LeakClass {
        /// No pointer to the block from outside lost memory: nobody can free it.
        DefinitelyLost = 1 => "definitely-lost",
        /// Reachable only from definitely lost blocks: it goes when they go.
        IndirectlyLost = 2 => "indirectly-lost",
        /// Reached only through pointers into its middle: probably lost.
        PossiblyLost = 3 => "possibly-lost",
        /// Lost, but garbage the Python garbage collector would free: Python objects whose
        /// every reference comes from lost memory that no leaked reference or lost C block
        /// keeps (a reference cycle dropped by its last owner), and the memory they own.
        Collectable = 4 => "collectable",
        /// A pointer to its start is held by a root or by another reachable block.
        Reachable = 0 => "reachable",
    }
}

/// What a reachable block was first reached from, breadth first, by the scan made when
/// CPython's finalisation began.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Holder {
    /// A Python name: a module global or a class attribute (`app._RESULTS`,
    /// `app.Bus.listeners`).
    Python(String),
    /// The root word at this address: a static of a loaded module, a thread's stack, or an
    /// anonymous mapping (the module map tells which).
    RootWord(u64),
    /// A register of a thread blocked in a system call.
    Register,
}

/// One block's holder, by its address (unique among the blocks live at the scan).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockHolder {
    pub address: u64,
    /// A holder id of the same scan (1 = its first).
    pub holder: u32,
    /// The type of the Python object the block holds, as a type id of the same scan (1 = its
    /// first); 0 when the block holds no object the scan recognised.
    pub object_type: u32,
    /// The block the flood reached this one from (its address), 0 when straight from the
    /// holder: following `via` leads back to the holder, the retention path.
    pub via: u64,
    /// How the `via` block holds this one, as a step id of the same scan (1 = its first):
    /// an attribute, a dict key or an item index; 0 when the step has no Python name.
    pub step: u32,
}

/// A block the scan found lost (or possibly lost), by its address: the root of the leaked
/// structure it belongs to, and the Python object it holds, if any.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LostBlock {
    pub address: u64,
    /// The address of the block whose leak keeps this one: this block's own when it is a
    /// root (a leaked structure's top), another lost block's when it is part of that one's
    /// structure.
    pub root: u64,
    /// The type of the Python object the block holds, as a type id of the same scan (1 = its
    /// first); 0 when the block holds no object the scan recognised.
    pub object_type: u32,
    /// The object's reference count (0 when the block holds no object the scan recognised).
    pub refcount: u64,
    /// How many pointers to the object's start the scan found in lost memory; for a dead
    /// object (`refcount` 0), in dead objects (a free list's links).
    pub references: u64,
}

/// One block's class, by its address (unique among the blocks live at exit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockClass {
    pub address: u64,
    pub class: LeakClass,
}

wire_enum! {
    /// How the exit-time scan went.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub enum ScanOutcome {
        /// Every block was classified; blocks without a BLOCK_CLASSES entry are reachable.
        Complete = 0 => "complete",
        /// The time limit ran out: no block is classified.
        CutShort = 1 => "cut-short",
        /// The scan could not run (see the note): no block is classified.
        #[default]
        Failed = 2 => "failed",
    }
}

/// The summary of the exit-time reachability scan; follows its BLOCK_CLASSES records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reachability {
    pub outcome: ScanOutcome,
    pub duration_us: u64,
    /// Blocks live at exit that the scan examined.
    pub blocks: u64,
    /// Bytes of roots scanned: module data, thread stacks, other mappings.
    pub root_bytes: u64,
    /// Bytes of live blocks scanned.
    pub heap_bytes: u64,
    /// Blocks recognised as Python objects tracked by the garbage collector.
    pub python_objects: u64,
    /// Blocks holding immortal Python objects (3.12+), kept by the interpreter by design
    /// and scanned as roots.
    pub immortal_objects: u64,
    /// Threads (other than libleak's) whose stacks were scanned from their stack pointer.
    pub threads: u64,
    /// Threads whose stack pointer could not be read: every stack-like mapping was scanned
    /// whole for them, which can only make more blocks reachable.
    pub threads_unknown: u64,
    pub note: String,
    /// Blocks this process inherited at a fork and still held that the scan did not judge
    /// (0: it judged every live block). Not part of REACHABILITY: read from the
    /// INHERITANCE_LEFT record before it. A forked child judges only what it allocated itself
    /// (its parent's trace judges the rest), reading as roots only the inherited blocks whose
    /// pages it wrote to since the fork; an inherited block without a class is then not
    /// judged, rather than reachable.
    pub inherited_unjudged: u64,
    /// Of those, the blocks read as roots: each holds, on a page this process wrote to since
    /// the fork, a word pointing into a block the scan judged.
    pub inherited_scanned: u64,
}

/// Where a forked child's trace starts from: the parent's trace up to the fork.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ForkInfo {
    pub parent_pid: u32,
    /// Events with a smaller sequence number happened in the parent before the fork.
    pub fork_seq: u64,
    /// Blocks live in the parent when it forked. They are not in this trace: the parent's
    /// trace holds them, in its first `parent_trace_bytes` bytes.
    pub inherited_blocks: u64,
    pub inherited_bytes: u64,
    /// Threads of the parent caught in the middle of recording an event when it forked:
    /// their last events before the fork are missing.
    pub threads_cut: u64,
    /// The parent's trace file, as the parent opened it (an absolute path).
    pub parent_trace: String,
    /// The parent's trace file's length when it forked: that prefix holds every event the
    /// parent had recorded, and ends on a chunk boundary.
    pub parent_trace_bytes: u64,
    /// The parent's PROCESS `start_time_unix_ns`: tells its trace from another process's
    /// that had the same pid.
    pub parent_start_time_unix_ns: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each byte names at most one variant, and each variant reads back from its own byte
    /// (`SPEC.md` gives the bytes; these are the ones it lists).
    #[test]
    fn wire_enums_read_back_from_their_bytes_and_from_no_other() {
        fn check<T: Copy + PartialEq + std::fmt::Debug>(all: &[T], byte: fn(T) -> u8, from: fn(u8) -> Option<T>) {
            for &variant in all {
                assert_eq!(from(byte(variant)), Some(variant));
            }
            let known = (0..=u8::MAX).filter(|&b| from(b).is_some()).count();
            assert_eq!(known, all.len());
        }
        check(&AllocKind::ALL, |v| v as u8, AllocKind::from_u8);
        check(&ExitKind::ALL, |v| v as u8, ExitKind::from_u8);
        check(&LeakClass::ALL, |v| v as u8, LeakClass::from_u8);
        check(&ScanOutcome::ALL, |v| v as u8, ScanOutcome::from_u8);
        assert_eq!(AllocKind::ReallocArray as u8, 8);
        assert_eq!(AllocKind::FreeListReuse as u8, 9);
        assert_eq!(ExitKind::Exec as u8, 3);
        assert_eq!(LeakClass::Reachable as u8, 0);
        assert_eq!(LeakClass::PossiblyLost as u8, 3);
        assert_eq!(ScanOutcome::Failed as u8, 2);
    }

    /// The names are in reports and their JSON schema (`docs/report-schema.md`).
    #[test]
    fn wire_enum_names_are_the_reported_ones() {
        let names = |all: &[&'static str]| all.join(" ");
        assert_eq!(
            names(&AllocKind::ALL.map(AllocKind::name)),
            "malloc calloc realloc posix_memalign aligned_alloc memalign valloc pvalloc reallocarray free-list"
        );
        assert_eq!(names(&ExitKind::ALL.map(ExitKind::name)), "exit _exit abort exec");
        assert_eq!(
            names(&LeakClass::ALL.map(LeakClass::name)),
            "definitely-lost indirectly-lost possibly-lost collectable reachable"
        );
        assert_eq!(
            names(&ScanOutcome::ALL.map(ScanOutcome::name)),
            "complete cut-short failed"
        );
    }

    #[test]
    fn a_record_is_the_size_of_the_frequent_ones() {
        assert_eq!(std::mem::size_of::<Record>(), 48);
    }
}
