//! The report's vocabulary: what every stage produces and every renderer reads (frames, leak
//! rows, tallies, the summary, the trace header, the report itself).
//!
//! This is the bottom of the reporter: it must never import another module of the crate, and
//! holds data and its plain arithmetic only, no decisions about stacks or modules. Types whose
//! JSON form is exactly their fields derive `Serialize`; the rest get views in
//! [`crate::render::json`].

use libleak_format::{
    AllocKind, Damage, End, ExitKind, ForkInfo, LeakClass, ProcessInfo, PythonRuntime, Reachability, Stats,
};
use serde::Serialize;

pub use libleak_format::live::Totals;

/// How live blocks are grouped into rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupBy {
    /// By allocation site (the default): the frames from the innermost one outside the
    /// allocator to the owner's (see [`crate::attribute::roles`]), or the innermost frame
    /// alone when no frame owns the block.
    Site,
    /// By the whole stack as shown.
    Stack,
    /// By the innermost N frames as shown.
    Frames(usize),
}

impl std::str::FromStr for GroupBy {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "site" => Ok(GroupBy::Site),
            "stack" => Ok(GroupBy::Stack),
            _ => match text.parse::<usize>() {
                Ok(n) if n > 0 => Ok(GroupBy::Frames(n)),
                _ => Err(format!(
                    "expected `site`, `stack` or a number of frames, found `{text}`"
                )),
            },
        }
    }
}

/// Which kind of code a frame ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FrameKind {
    /// Machine code, at a return address.
    Native,
    /// A Python function, at the line being run.
    Python,
}

/// A block's class as the report names it: the scan's class, or `Unclassified` without a
/// complete scan. Ordered most serious first (the order rows and per-row classes are read
/// in), which is why `Unclassified` (possibly a definite leak) comes before `PossiblyLost`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Class {
    DefinitelyLost,
    IndirectlyLost,
    Unclassified,
    PossiblyLost,
    /// Garbage awaiting collection (see [`LeakClass::Collectable`]): not a leak.
    Collectable,
    Reachable,
}

impl Class {
    /// The class of a block the scan classified as `class` (`None`: not classified).
    pub fn of(class: Option<LeakClass>) -> Class {
        match class {
            Some(LeakClass::DefinitelyLost) => Class::DefinitelyLost,
            Some(LeakClass::IndirectlyLost) => Class::IndirectlyLost,
            Some(LeakClass::PossiblyLost) => Class::PossiblyLost,
            Some(LeakClass::Collectable) => Class::Collectable,
            Some(LeakClass::Reachable) => Class::Reachable,
            None => Class::Unclassified,
        }
    }

    /// The name the text and JSON reports use (the trace format's names, plus
    /// `unclassified`).
    pub fn name(self) -> &'static str {
        match self {
            Class::DefinitelyLost => "definitely-lost",
            Class::IndirectlyLost => "indirectly-lost",
            Class::Unclassified => "unclassified",
            Class::PossiblyLost => "possibly-lost",
            Class::Collectable => "collectable",
            Class::Reachable => "reachable",
        }
    }

    /// Whether blocks of this class count as leaked (everything but reachable ones and
    /// garbage awaiting collection).
    pub fn is_leak(self) -> bool {
        !matches!(self, Class::Reachable | Class::Collectable)
    }
}

/// One frame of a stack as the report shows it (serialized as in `docs/report-schema.md`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Frame {
    pub kind: FrameKind,
    pub function: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
    pub module: Option<String>,
    pub inlined: bool,
    #[serde(serialize_with = "hex_address")]
    pub address: Option<u64>,
    /// Set when the module's file on disk has another build-id than the one that ran.
    pub build_id_mismatch: bool,
}

#[cfg(test)]
impl Frame {
    /// A native frame of `function` in `module`, for tests.
    pub fn native_in(function: &str, module: &str) -> Frame {
        Frame {
            kind: FrameKind::Native,
            function: Some(function.into()),
            file: None,
            line: None,
            module: Some(module.into()),
            inlined: false,
            address: Some(1),
            build_id_mismatch: false,
        }
    }
}

/// Addresses read as hexadecimal strings (`"0x7f3a5c2011a9"`): JSON numbers lose precision
/// above 2^53 in most readers.
fn hex_address<S: serde::Serializer>(address: &Option<u64>, serializer: S) -> Result<S::Ok, S::Error> {
    match address {
        Some(address) => serializer.serialize_str(&format!("0x{address:x}")),
        None => serializer.serialize_none(),
    }
}

/// One distinct full stack under a row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StackRow {
    pub bytes: u64,
    pub blocks: u64,
    pub frames: Vec<Frame>,
}

/// Who is responsible for a row: the owning native frame and the Python line that called it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub frame: Option<Frame>,
    pub python: Option<Frame>,
}

/// One row of the report.
#[derive(Clone, Debug)]
pub struct Leak {
    /// The row's most serious class.
    pub class: Class,
    pub bytes: u64,
    pub blocks: u64,
    /// The allocator entry point of the group's first block.
    pub allocator: AllocKind,
    /// The frames of the row's largest stack.
    pub frames: Vec<Frame>,
    /// Every distinct stack under the row, largest first.
    pub stacks: Vec<StackRow>,
    /// Blocks and bytes per class, most serious first (`class` is the first).
    pub classes: Vec<(Class, Tally)>,
    pub owner: Owner,
    /// Allocated by the runtime alone (listed only with `--show-leftovers`).
    pub runtime_leftover: bool,
    /// One-time set-up of imported modules that nothing refers to (listed only with
    /// `--show-leftovers`).
    pub import_once: bool,
    /// Every block of the row was inherited from the parent at a fork (allocated before it).
    pub inherited: bool,
    /// In a multi-process report: the pids of the forked processes whose identical inherited
    /// row is not repeated because this row stands for it (the rule is in the `processes`
    /// module). Empty otherwise.
    pub also_in: Vec<u32>,
    /// The row's leaked roots alone: `bytes` and `blocks` are theirs and their structures'
    /// parts'.
    pub roots: Tally,
    /// What the roots keep alive that was allocated elsewhere: by site, most bytes first.
    pub parts: Vec<Part>,
    /// The Python objects among the row's blocks (roots and parts), by type, most bytes first.
    pub objects: Vec<ObjectShare>,
    /// References the row's objects hold that nothing found in memory accounts for.
    pub references: References,
    /// When the trace marks tests (`test-start <nodeid>` / `test-end <nodeid>`): the tests
    /// during which the row's blocks were allocated, most bytes first (blocks allocated
    /// outside every test are in none). `None` for a trace without test marks.
    pub tests: Option<Vec<TestShare>>,
}

/// Blocks a leaked structure keeps that were allocated at another site than its root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    /// The frames of the site (as rows by site have them), from the innermost one shown.
    pub frames: Vec<Frame>,
    /// Who allocated the part: the owning native frame and the Python line that called it
    /// (or, for memory Python code made, the line that made it).
    pub owner: Owner,
    /// The part's most serious class.
    pub class: Class,
    pub bytes: u64,
    pub blocks: u64,
    /// Its Python objects by type, most bytes first.
    pub objects: Vec<ObjectShare>,
    /// Every distinct stack under the part, largest first.
    pub stacks: Vec<StackRow>,
}

/// The Python objects of one type among some blocks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ObjectShare {
    /// The type's `tp_name`.
    #[serde(rename = "type")]
    pub type_name: String,
    pub bytes: u64,
    pub blocks: u64,
}

impl ObjectShare {
    /// Adds `blocks` blocks of `bytes` to the share of `type_name` in `shares`.
    pub fn add_to(shares: &mut Vec<ObjectShare>, type_name: &str, blocks: u64, bytes: u64) {
        match shares.iter_mut().find(|share| share.type_name == type_name) {
            Some(share) => {
                share.bytes += bytes;
                share.blocks += blocks;
            }
            None => shares.push(ObjectShare {
                type_name: type_name.to_string(),
                bytes,
                blocks,
            }),
        }
    }

    /// Most bytes first, then by name.
    pub fn rank(shares: &mut [ObjectShare]) {
        shares.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.type_name.cmp(&b.type_name)));
    }
}

/// The references objects hold that the scan found no pointer for: each object's reference
/// count against the pointers to it found in lost memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct References {
    /// Objects with more references than the scan found.
    pub objects: u64,
    /// Their reference counts, summed.
    pub refcount: u64,
    /// The references to them the scan found, summed.
    pub found: u64,
}

impl References {
    pub fn add(&mut self, other: References) {
        self.objects += other.objects;
        self.refcount += other.refcount;
        self.found += other.found;
    }

    /// References taken and never given back.
    pub fn leaked(&self) -> u64 {
        self.refcount.saturating_sub(self.found)
    }
}

/// The part of a row allocated while one test ran.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TestShare {
    /// The test's id as the test runner named it (pytest's node id).
    pub nodeid: String,
    pub bytes: u64,
    pub blocks: u64,
}

impl Leak {
    /// A row of leaked blocks the report counts as a leak (not a leftover of the runtime or
    /// of an import).
    pub fn is_listed_leak(&self) -> bool {
        self.class.is_leak() && !self.runtime_leftover && !self.import_once
    }

    /// The stacks of the row's roots, then of their parts: every leaked byte of the row under
    /// the stack that allocated it.
    pub fn all_stacks(&self) -> impl Iterator<Item = &StackRow> {
        self.stacks
            .iter()
            .chain(self.parts.iter().flat_map(|part| &part.stacks))
    }
}

/// Blocks and bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    pub blocks: u64,
    pub bytes: u64,
}

impl Tally {
    pub fn add(&mut self, blocks: u64, bytes: u64) {
        self.blocks += blocks;
        self.bytes += bytes;
    }
}

/// Where every block live at exit went.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub definitely_lost: Tally,
    pub indirectly_lost: Tally,
    pub possibly_lost: Tally,
    /// Live blocks without a class (the scan did not run or did not finish).
    pub unclassified: Tally,
    pub reachable: Tally,
    /// Not reachable, but Python garbage awaiting collection: objects in reference cycles
    /// whose every reference the scan found in that garbage, and what they own.
    pub collectable: Tally,
    /// Not reachable, but allocated by the C runtime or the interpreter alone.
    pub runtime_leftovers: Tally,
    /// Lost, but made once while a module was imported (see
    /// [`crate::classify::StackTally::import_once`]).
    pub import_once: Tally,
    pub suppressed: Tally,
    /// Blocks a forked child inherited and never judged: it ended before its exit scan
    /// (killed, as pools terminate their workers, or with the scan off). They were its
    /// parent's, whose report judges them.
    pub inherited_unjudged: Tally,
    /// Blocks a child of a traced process (forked, or started by `spawn`/`forkserver`: its
    /// parent's trace lies beside its own) allocated itself and never judged: it ended before
    /// its exit scan, killed or aborted (a pool terminates its workers so, with `SIGTERM`).
    /// Live when it died, which says nothing of a leak; not counted by `--fail-on-leak`.
    pub unjudged: Tally,
    /// Live when the process replaced its image with `exec`, which releases all its memory:
    /// never judged (no scan runs at an `exec`) and no leak. A `fork` child that `exec`s (as
    /// `subprocess` does) holds what atfork handlers allocated.
    pub released_by_exec: Tally,
}

impl Summary {
    /// Bytes of definite and indirect leaks (and of unclassified blocks, which may be
    /// either), not counting runtime leftovers and suppressed blocks: the `--fail-on-leak`
    /// measure.
    pub fn leaked_bytes(&self) -> u64 {
        self.definitely_lost.bytes + self.indirectly_lost.bytes + self.unclassified.bytes
    }
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
            Incompleteness::AbnormalExit(end) if end.kind == ExitKind::Exec => write!(
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

/// What a trace says about its process as a whole, read once by replay and carried into the
/// report unchanged.
#[derive(Clone, Debug, Default)]
pub struct TraceHeader {
    pub process: ProcessInfo,
    /// The interpreter the process ran, if any.
    pub python: Option<PythonRuntime>,
    /// Whether it ignored environment variables, `PYTHONMALLOC` among them (None: not
    /// recorded).
    pub python_ignores_environment: Option<bool>,
    pub totals: Totals,
    pub stats: Stats,
    /// The exit-time reachability scan, when the process ran one.
    pub reachability: Option<Reachability>,
    /// The scan made when CPython's finalisation began, when the process got that far.
    pub reachability_at_finalization: Option<Reachability>,
    /// Set when the process was forked from a traced parent.
    pub fork: Option<ForkInfo>,
    /// Whether the blocks a forked child inherited were read from its parent's trace (`None`
    /// when it inherited none, or is no forked child).
    pub inheritance: Option<Inherited>,
    pub end: Option<End>,
    pub incomplete: Option<Incompleteness>,
    /// The parts of the file the reader skipped, in file order: the events recorded there
    /// are missing (and stacks defined there read as lost).
    pub damage: Vec<Damage>,
}

/// Where a forked child's inherited blocks came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inherited {
    /// From the parent's trace, read up to the fork.
    Read,
    /// Not known: why the parent's trace could not be read (the child's own blocks are
    /// reported all the same).
    Missing(String),
}

impl TraceHeader {
    /// Whether the process exited normally and the trace has its end marker.
    pub fn complete(&self) -> bool {
        self.incomplete.is_none()
    }

    /// Bytes of the file skipped as damaged.
    pub fn damaged_bytes(&self) -> u64 {
        self.damage.iter().map(|d| d.bytes).sum()
    }
}

/// Rows beyond the limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Omitted {
    pub leaks: u64,
    pub bytes: u64,
    pub blocks: u64,
}

#[derive(Clone, Debug)]
pub struct Report {
    pub trace_path: String,
    pub header: TraceHeader,
    pub summary: Summary,
    pub group_by: GroupBy,
    pub leaks: Vec<Leak>,
    pub omitted: Omitted,
    /// In a multi-process report, the inherited rows of this fork child not repeated because
    /// an ancestor's report lists them (that row's `also_in` names this process).
    pub inherited_shown_elsewhere: Folded,
}

/// A fork child's inherited rows that another process's report shows instead.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Folded {
    pub leaks: u64,
    pub bytes: u64,
    pub blocks: u64,
    /// The pids whose reports hold the rows, in the order first met.
    pub shown_in: Vec<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_order_by_severity_and_keep_the_format_names() {
        let mut classes = [
            Class::Reachable,
            Class::Collectable,
            Class::PossiblyLost,
            Class::Unclassified,
            Class::IndirectlyLost,
            Class::DefinitelyLost,
        ];
        classes.sort();
        let names: Vec<&str> = classes.iter().map(|c| c.name()).collect();
        assert_eq!(
            names,
            [
                "definitely-lost",
                "indirectly-lost",
                "unclassified",
                "possibly-lost",
                "collectable",
                "reachable"
            ]
        );
        for class in [
            LeakClass::DefinitelyLost,
            LeakClass::IndirectlyLost,
            LeakClass::PossiblyLost,
            LeakClass::Collectable,
            LeakClass::Reachable,
        ] {
            assert_eq!(Class::of(Some(class)).name(), class.name());
        }
        assert_eq!(Class::of(None), Class::Unclassified);
        assert!(Class::Unclassified.is_leak() && !Class::Reachable.is_leak());
    }
}
