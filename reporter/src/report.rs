//! Building and rendering reports: live blocks grouped by allocation stack, ranked by bytes,
//! each stack symbolized innermost first with the allocator's own frames hidden. The text and
//! JSON renderings list exactly the same leaks; the JSON schema is documented in
//! `docs/report-schema.md` and is a public contract (extend it, never break it).

use std::collections::HashMap;
use std::fmt::Write as _;

use libleak_format::{
    python_version_text, End, ForkInfo, LeakClass, ProcessInfo, PythonRuntime, Reachability, ScanOutcome, Stats,
};
use serde_json::{json, Value};

use crate::live::Totals;
use crate::merge::{merged_stack, Interpreter};
use crate::owner::Roles;
use crate::replay::Trace;
use crate::suppress::Suppression;
use crate::symbolize::Symbolizer;

pub const REPORT_FORMAT: &str = "libleak-report";
pub const REPORT_VERSION: u32 = 1;

/// How live blocks are grouped into rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupBy {
    /// By allocation site (the default): the frames from the innermost one outside the
    /// allocator to the owner's (see [`crate::owner`]), or the innermost frame alone when no
    /// frame owns the block.
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

#[derive(Clone, Debug)]
pub struct ReportOptions {
    /// Most leaks listed; 0 lists all.
    pub limit: usize,
    /// Keep the interpreter's own native frames (eval loop, call plumbing) in merged stacks.
    pub show_interpreter_frames: bool,
    pub group_by: GroupBy,
    /// List reachable blocks as rows too (otherwise one summary line).
    pub show_reachable: bool,
    /// List what the runtime itself left at exit as rows too (otherwise one summary line).
    pub show_leftovers: bool,
    pub suppressions: Vec<Suppression>,
}

impl Default for ReportOptions {
    fn default() -> Self {
        ReportOptions {
            limit: 25,
            show_interpreter_frames: false,
            group_by: GroupBy::Site,
            show_reachable: false,
            show_leftovers: false,
            suppressions: crate::suppress::builtin(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ReportFrame {
    pub kind: &'static str,
    pub function: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
    pub module: Option<String>,
    pub inlined: bool,
    pub address: Option<u64>,
    /// Set when the module's file on disk has another build-id than the one that ran.
    pub build_id_mismatch: bool,
}

/// One distinct full stack under a row.
#[derive(Clone, Debug)]
pub struct StackRow {
    pub bytes: u64,
    pub blocks: u64,
    pub frames: Vec<ReportFrame>,
}

/// Who is responsible for a row: the owning native frame and the Python line that called it.
#[derive(Clone, Debug)]
pub struct Owner {
    pub frame: Option<ReportFrame>,
    pub python: Option<ReportFrame>,
}

#[derive(Clone, Debug)]
pub struct Leak {
    /// The block class (`definitely-lost`, …), or `unclassified` without a complete scan.
    pub kind: &'static str,
    pub bytes: u64,
    pub blocks: u64,
    /// The allocator entry point of the group's first block.
    pub allocator: &'static str,
    /// The frames of the row's largest stack.
    pub frames: Vec<ReportFrame>,
    /// Every distinct stack under the row, largest first.
    pub stacks: Vec<StackRow>,
    /// Blocks and bytes per class, most serious first (`kind` is the first).
    pub classes: Vec<(&'static str, Tally)>,
    pub owner: Owner,
    /// Allocated by the runtime alone (listed only with `--show-leftovers`).
    pub runtime_leftover: bool,
}

/// Blocks and bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub blocks: u64,
    pub bytes: u64,
}

impl Tally {
    fn add(&mut self, blocks: u64, bytes: u64) {
        self.blocks += blocks;
        self.bytes += bytes;
    }
}

/// Where every block live at exit went.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub definitely_lost: Tally,
    pub indirectly_lost: Tally,
    pub possibly_lost: Tally,
    /// Live blocks without a class (the scan did not run or did not finish).
    pub unclassified: Tally,
    pub reachable: Tally,
    /// Not reachable, but allocated by the C runtime or the interpreter alone.
    pub runtime_leftovers: Tally,
    pub suppressed: Tally,
}

impl Summary {
    /// Bytes of definite and indirect leaks (and of unclassified blocks, which may be
    /// either), not counting runtime leftovers and suppressed blocks: the `--fail-on-leak`
    /// measure.
    pub fn leaked_bytes(&self) -> u64 {
        self.definitely_lost.bytes + self.indirectly_lost.bytes + self.unclassified.bytes
    }
}

#[derive(Clone, Debug)]
pub struct Report {
    pub trace_path: String,
    pub process: ProcessInfo,
    pub complete: bool,
    pub incomplete_reason: Option<String>,
    pub end: Option<End>,
    pub totals: Totals,
    pub stats: Stats,
    pub python: Option<PythonRuntime>,
    /// Whether the interpreter ignored environment variables (None: not recorded).
    pub python_ignores_environment: Option<bool>,
    pub reachability: Option<Reachability>,
    pub fork: Option<ForkInfo>,
    pub summary: Summary,
    pub group_by: GroupBy,
    pub leaks: Vec<Leak>,
    pub omitted_leaks: u64,
    pub omitted_bytes: u64,
    pub omitted_blocks: u64,
}

fn class_name(class: Option<LeakClass>) -> &'static str {
    class.map_or("unclassified", LeakClass::name)
}

/// Lower is more serious.
fn severity(kind: &str) -> u8 {
    match kind {
        "definitely-lost" => 0,
        "indirectly-lost" => 1,
        "unclassified" => 2,
        "possibly-lost" => 3,
        _ => 4,
    }
}

pub fn build(trace: &Trace, trace_path: &str, symbolizer: &mut Symbolizer, options: &ReportOptions) -> Report {
    // Blocks by (stack, class).
    let mut groups: HashMap<(u64, Option<LeakClass>), (u64, u64, &'static str)> = HashMap::new();
    for block in &trace.live {
        let group = groups
            .entry((block.stack, block.class))
            .or_insert((0, 0, block.kind.name()));
        group.0 += block.size;
        group.1 += 1;
    }
    let mut groups: Vec<_> = groups.into_iter().collect();
    groups.sort_by_key(|((stack, class), _)| (*stack, class.map(|c| c as u8)));

    let interpreter = Interpreter::of(trace);
    let roles = Roles {
        executable: trace.process.exe.clone(),
        python: trace.python.is_some(),
    };
    let mut merged: HashMap<u64, Vec<ReportFrame>> = HashMap::new();
    let mut summary = Summary::default();
    let mut rows: Vec<Leak> = Vec::new();
    // A row is one leak: a site's lost blocks together, whatever holds each (a stale pointer
    // into one block makes it "possibly lost" without making it another leak).
    let mut row_of: HashMap<(bool, bool, Vec<ReportFrame>), usize> = HashMap::new();
    for ((stack, class), (bytes, blocks, allocator)) in groups {
        let frames = merged
            .entry(stack)
            .or_insert_with(|| merged_stack(trace, &interpreter, stack, symbolizer, options.show_interpreter_frames))
            .clone();
        let reachable = class == Some(LeakClass::Reachable);
        let leftover = !reachable && roles.is_runtime_leftover(&frames);
        let shown = if reachable {
            summary.reachable.add(blocks, bytes);
            options.show_reachable
        } else if leftover {
            summary.runtime_leftovers.add(blocks, bytes);
            options.show_leftovers
        } else if crate::suppress::matching(&options.suppressions, &frames).is_some() {
            summary.suppressed.add(blocks, bytes);
            false
        } else {
            match class {
                Some(LeakClass::DefinitelyLost) => summary.definitely_lost.add(blocks, bytes),
                Some(LeakClass::IndirectlyLost) => summary.indirectly_lost.add(blocks, bytes),
                Some(LeakClass::PossiblyLost) => summary.possibly_lost.add(blocks, bytes),
                Some(LeakClass::Reachable) | None => summary.unclassified.add(blocks, bytes),
            }
            true
        };
        if !shown {
            continue;
        }
        let key_frames = match options.group_by {
            GroupBy::Stack => frames.clone(),
            // The site is where the owner asked for the memory: an extension calling
            // `PyList_New` at two lines leaks twice, not once inside `PyList_New`.
            GroupBy::Site => frames
                .iter()
                .take(roles.owner(&frames).map_or(1, |owner| owner + 1))
                .cloned()
                .collect(),
            GroupBy::Frames(n) => frames.iter().take(n).cloned().collect(),
        };
        let index = *row_of.entry((reachable, leftover, key_frames)).or_insert_with(|| {
            rows.push(Leak {
                kind: "",
                bytes: 0,
                blocks: 0,
                allocator,
                frames: Vec::new(),
                stacks: Vec::new(),
                classes: Vec::new(),
                owner: Owner {
                    frame: None,
                    python: None,
                },
                runtime_leftover: leftover,
            });
            rows.len() - 1
        });
        let row = &mut rows[index];
        row.bytes += bytes;
        row.blocks += blocks;
        let name = class_name(class);
        match row.classes.iter_mut().find(|(n, _)| *n == name) {
            Some((_, tally)) => tally.add(blocks, bytes),
            None => row.classes.push((name, Tally { blocks, bytes })),
        }
        // Stacks that differ only in frames the report hides read the same: one stack.
        match row.stacks.iter_mut().find(|s| s.frames == frames) {
            Some(existing) => {
                existing.bytes += bytes;
                existing.blocks += blocks;
            }
            None => row.stacks.push(StackRow { bytes, blocks, frames }),
        }
    }
    for row in &mut rows {
        row.classes.sort_by_key(|(name, _)| severity(name));
        // The row reads as its most serious class.
        row.kind = row.classes[0].0;
        row.stacks
            .sort_by(|a, b| b.bytes.cmp(&a.bytes).then(b.blocks.cmp(&a.blocks)));
        row.frames = row.stacks.first().map(|s| s.frames.clone()).unwrap_or_default();
        let owner = roles.owner(&row.frames);
        row.owner = Owner {
            frame: owner.map(|i| row.frames[i].clone()),
            python: roles
                .calling_python_line(&row.frames, owner)
                .map(|i| row.frames[i].clone()),
        };
    }
    let is_leak = |row: &Leak| row.kind != LeakClass::Reachable.name() && !row.runtime_leftover;
    rows.sort_by(|a, b| {
        is_leak(b)
            .cmp(&is_leak(a))
            .then(b.bytes.cmp(&a.bytes))
            .then(b.blocks.cmp(&a.blocks))
    });
    let shown = if options.limit == 0 {
        rows.len()
    } else {
        options.limit.min(rows.len())
    };
    let rest = rows.split_off(shown);
    Report {
        trace_path: trace_path.to_string(),
        process: trace.process.clone(),
        complete: trace.incomplete.is_none(),
        incomplete_reason: trace.incomplete.as_ref().map(ToString::to_string),
        end: trace.end,
        totals: trace.totals,
        stats: trace.stats,
        python: trace.python.clone(),
        python_ignores_environment: trace.python_ignores_environment,
        reachability: trace.reachability.clone(),
        fork: trace.fork,
        summary,
        group_by: options.group_by,
        leaks: rows,
        omitted_leaks: rest.len() as u64,
        omitted_bytes: rest.iter().map(|r| r.bytes).sum(),
        omitted_blocks: rest.iter().map(|r| r.blocks).sum(),
    }
}

fn frame_json(frame: &ReportFrame) -> Value {
    json!({
        "kind": frame.kind,
        "function": frame.function,
        "file": frame.file,
        "line": frame.line,
        "module": frame.module,
        "inlined": frame.inlined,
        "address": frame.address.map(|a| format!("0x{a:x}")),
        "build_id_mismatch": frame.build_id_mismatch,
    })
}

fn tally_json(tally: Tally) -> Value {
    json!({"blocks": tally.blocks, "bytes": tally.bytes})
}

fn outcome_name(outcome: ScanOutcome) -> &'static str {
    match outcome {
        ScanOutcome::Complete => "complete",
        ScanOutcome::CutShort => "cut-short",
        ScanOutcome::Failed => "failed",
    }
}

fn reachability_json(scan: Option<&Reachability>) -> Value {
    let Some(scan) = scan else { return Value::Null };
    json!({
        "outcome": outcome_name(scan.outcome),
        "duration_ms": scan.duration_us as f64 / 1000.0,
        "blocks": scan.blocks,
        "root_bytes": scan.root_bytes,
        "heap_bytes": scan.heap_bytes,
        "python_objects": scan.python_objects,
        "immortal_objects": scan.immortal_objects,
        "threads": scan.threads,
        "threads_unknown": scan.threads_unknown,
        "note": (!scan.note.is_empty()).then_some(&scan.note),
    })
}

/// The text of a frame: function, location, module.
fn frame_text(frame: &ReportFrame) -> String {
    let function = frame.function.as_deref().unwrap_or("??");
    let location = match (&frame.file, frame.line) {
        (Some(file), Some(line)) => format!(" at {file}:{line}"),
        (Some(file), None) => format!(" in {file}"),
        _ => String::new(),
    };
    let module = frame
        .module
        .as_deref()
        .map(|m| format!(" [{}]", m.rsplit('/').next().unwrap_or(m)))
        .unwrap_or_default();
    let inlined = if frame.inlined { " (inlined)" } else { "" };
    let mismatch = if frame.build_id_mismatch {
        " (file on disk has another build-id)"
    } else {
        ""
    };
    format!("{function}{location}{module}{inlined}{mismatch}")
}

/// Most stacks printed under one row of the text report.
const STACKS_PER_ROW: usize = 4;

fn blocks_text(tally: Tally) -> String {
    let plural = if tally.blocks == 1 { "block" } else { "blocks" };
    format!(
        "{} bytes in {} {plural}",
        thousands(tally.bytes),
        thousands(tally.blocks)
    )
}

pub fn to_json(report: &Report) -> Value {
    let p = &report.process;
    json!({
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "trace": report.trace_path,
        "process": {
            "pid": p.pid, "parent_pid": p.parent_pid, "program": p.program, "argv": p.argv,
            "exe": p.exe, "cwd": p.cwd, "start_time_unix_ns": p.start_time_unix_ns,
        },
        "fork": report.fork.map(|f| json!({
            "parent_pid": f.parent_pid, "fork_seq": f.fork_seq, "inherited_blocks": f.inherited_blocks,
            "inherited_bytes": f.inherited_bytes, "threads_cut": f.threads_cut,
        })),
        "complete": report.complete,
        "incomplete_reason": report.incomplete_reason,
        "exit": report.end.map(|e| json!({"kind": e.kind.name(), "status": e.status})),
        "totals": {
            "allocations": report.totals.allocations,
            "frees": report.totals.frees,
            "peak_bytes": report.totals.peak_bytes,
            "live_bytes": report.totals.live_bytes,
            "live_blocks": report.totals.live_blocks,
            "unmatched_frees": report.totals.unmatched_frees,
        },
        "recorder": {
            "reentrant_calls": report.stats.reentrant_calls,
            "producer_waits": report.stats.producer_waits,
            "truncated_stacks": report.stats.truncated_stacks,
            "slot_ordering": if report.stats.slot_locks { "locks" } else { "membarrier" },
        },
        "python": report.python.as_ref().map(|p| json!({
            "version": python_version_text(p.python_version),
            "frames_recorded": p.frames_recorded,
            "pythonmalloc_set": p.pythonmalloc_set,
            "ignores_environment": report.python_ignores_environment,
            "note": (!p.note.is_empty()).then_some(&p.note),
        })),
        "reachability": reachability_json(report.reachability.as_ref()),
        "summary": {
            "definitely_lost": tally_json(report.summary.definitely_lost),
            "indirectly_lost": tally_json(report.summary.indirectly_lost),
            "possibly_lost": tally_json(report.summary.possibly_lost),
            "unclassified": tally_json(report.summary.unclassified),
            "reachable": tally_json(report.summary.reachable),
            "runtime_leftovers": tally_json(report.summary.runtime_leftovers),
            "suppressed": tally_json(report.summary.suppressed),
        },
        "group_by": match report.group_by {
            GroupBy::Site => "site".to_string(),
            GroupBy::Stack => "stack".to_string(),
            GroupBy::Frames(n) => n.to_string(),
        },
        "leaks": report.leaks.iter().map(|leak| json!({
            "kind": leak.kind,
            "bytes": leak.bytes,
            "blocks": leak.blocks,
            "allocator": leak.allocator,
            "runtime_leftover": leak.runtime_leftover,
            "classes": leak.classes.iter().map(|(name, tally)| (name.to_string(), tally_json(*tally))).collect::<serde_json::Map<_, _>>(),
            "owner": {
                "module": leak.owner.frame.as_ref().and_then(|f| f.module.clone()),
                "function": leak.owner.frame.as_ref().and_then(|f| f.function.clone()),
                "file": leak.owner.frame.as_ref().and_then(|f| f.file.clone()),
                "line": leak.owner.frame.as_ref().and_then(|f| f.line),
                "python": leak.owner.python.as_ref().map(|f| json!({
                    "function": f.function, "file": f.file, "line": f.line,
                })),
            },
            "frames": leak.frames.iter().map(frame_json).collect::<Vec<_>>(),
            "stacks": leak.stacks.iter().map(|stack| json!({
                "bytes": stack.bytes,
                "blocks": stack.blocks,
                "frames": stack.frames.iter().map(frame_json).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "omitted": {"leaks": report.omitted_leaks, "bytes": report.omitted_bytes, "blocks": report.omitted_blocks},
    })
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn to_text(report: &Report) -> String {
    let mut out = String::new();
    let p = &report.process;
    let _ = writeln!(
        out,
        "libleak report: {} (pid {}): {}",
        p.program,
        p.pid,
        p.argv.join(" ")
    );
    if let Some(fork) = &report.fork {
        let _ = writeln!(
            out,
            "forked from pid {}: inherited {} blocks, {} bytes{}",
            fork.parent_pid,
            fork.inherited_blocks,
            fork.inherited_bytes,
            match fork.threads_cut {
                0 => String::new(),
                n => format!(" ({n} parent threads were mid-event at the fork; their last events are missing)"),
            }
        );
    }
    match &report.incomplete_reason {
        None => {
            let status = report
                .end
                .and_then(|e| e.status)
                .map(|s| format!(" with status {s}"))
                .unwrap_or_default();
            let _ = writeln!(out, "trace complete: the process exited normally{status}");
        }
        Some(reason) => {
            let _ = writeln!(out, "trace INCOMPLETE: {reason}");
        }
    }
    let t = &report.totals;
    let _ = writeln!(
        out,
        "{} allocations, {} frees, peak {} bytes live; at exit {} bytes live in {} blocks",
        thousands(t.allocations),
        thousands(t.frees),
        thousands(t.peak_bytes),
        thousands(t.live_bytes),
        thousands(t.live_blocks)
    );
    if let Some(python) = &report.python {
        let frames = if python.frames_recorded {
            "Python frames recorded".to_string()
        } else {
            format!("no Python frames ({})", python.note)
        };
        let allocator = match (python.pythonmalloc_set, report.python_ignores_environment) {
            (true, Some(true)) => {
                "; libleak set PYTHONMALLOC=malloc, but the interpreter ignored the environment (python -I \
                 or -E, or an embedder's isolated configuration): Python objects stayed in pymalloc's \
                 arenas, which are not tracked object by object"
            }
            (true, _) => {
                "; libleak set PYTHONMALLOC=malloc so Python objects are tracked (LIBLEAK_PYTHONMALLOC=keep opts out)"
            }
            (false, _) => "",
        };
        let _ = writeln!(
            out,
            "python: CPython {}, {frames}{allocator}",
            python_version_text(python.python_version)
        );
    }
    if report.stats.producer_waits > 0 {
        let _ = writeln!(
            out,
            "note: threads waited {} times for the trace writer",
            report.stats.producer_waits
        );
    }
    summary_text(&mut out, report);
    for (rank, leak) in report.leaks.iter().enumerate() {
        let mut what = leak.kind.to_string();
        if leak.classes.len() > 1 {
            let parts: Vec<String> = leak
                .classes
                .iter()
                .map(|(name, tally)| format!("{} {name}", thousands(tally.blocks)))
                .collect();
            what = format!("{what} ({})", parts.join(", "));
        }
        if leak.runtime_leftover {
            what.push_str(", left by the runtime");
        }
        let _ = writeln!(
            out,
            "\n#{} {} {what} ({})",
            rank + 1,
            blocks_text(Tally {
                blocks: leak.blocks,
                bytes: leak.bytes
            }),
            leak.allocator
        );
        if let Some(owner) = &leak.owner.frame {
            let called_from = leak
                .owner
                .python
                .as_ref()
                .map(|p| format!(", called from {}", frame_text(p)))
                .unwrap_or_default();
            let _ = writeln!(out, "  owner: {}{called_from}", frame_text(owner));
        }
        let many = leak.stacks.len() > 1;
        for (index, stack) in leak.stacks.iter().take(STACKS_PER_ROW).enumerate() {
            if many {
                let _ = writeln!(
                    out,
                    "  stack {} of {}: {}",
                    index + 1,
                    leak.stacks.len(),
                    blocks_text(Tally {
                        blocks: stack.blocks,
                        bytes: stack.bytes
                    })
                );
            }
            if stack.frames.is_empty() {
                let _ = writeln!(
                    out,
                    "    (no stack: allocated in a signal handler that interrupted libleak recording another allocation)"
                );
            }
            for frame in &stack.frames {
                let _ = writeln!(out, "    {}", frame_text(frame));
            }
        }
        if leak.stacks.len() > STACKS_PER_ROW {
            let _ = writeln!(
                out,
                "  … and {} more stacks (--json lists them all)",
                leak.stacks.len() - STACKS_PER_ROW
            );
        }
    }
    if report.omitted_leaks > 0 {
        let _ = writeln!(
            out,
            "\n… and {} more rows holding {} bytes in {} blocks (use --limit 0 to list all)",
            thousands(report.omitted_leaks),
            thousands(report.omitted_bytes),
            thousands(report.omitted_blocks)
        );
    }
    out
}

fn summary_text(out: &mut String, report: &Report) {
    let summary = &report.summary;
    match &report.reachability {
        Some(scan) if scan.outcome == ScanOutcome::Complete => {
            let unknown = if scan.threads_unknown > 0 {
                format!(
                    "; {} running threads had no readable stack pointer, so every stack was scanned whole",
                    scan.threads_unknown
                )
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "reachability scan at exit: complete in {:.1} ms, {} blocks, {} bytes of roots{unknown}",
                scan.duration_us as f64 / 1000.0,
                thousands(scan.blocks),
                thousands(scan.root_bytes)
            );
        }
        Some(scan) => {
            let _ = writeln!(
                out,
                "reachability scan at exit: {} ({}); blocks are unclassified",
                outcome_name(scan.outcome),
                scan.note
            );
        }
        None if report.complete => {
            let _ = writeln!(
                out,
                "reachability scan at exit: not run (LIBLEAK_SCAN=0); blocks are unclassified"
            );
        }
        None => {}
    }
    let lines = [
        ("definitely lost", summary.definitely_lost, ""),
        ("indirectly lost", summary.indirectly_lost, ""),
        (
            "possibly lost",
            summary.possibly_lost,
            " (only pointers into their middle remain)",
        ),
        ("unclassified", summary.unclassified, ""),
        ("reachable", summary.reachable, " (--show-reachable lists them)"),
        (
            "left by the runtime",
            summary.runtime_leftovers,
            " (allocated by the C runtime or the interpreter alone; --show-leftovers lists them)",
        ),
        ("suppressed", summary.suppressed, ""),
    ];
    for (label, tally, hint) in lines {
        if tally.blocks > 0 {
            let _ = writeln!(out, "  {label}: {}{hint}", blocks_text(tally));
        }
    }
    if report.leaks.is_empty() {
        let _ = writeln!(out, "\nno leaks");
    }
}

/// One line per process for a multi-process report: pid, parent, program, how it ended, and
/// what it leaked.
pub fn summary_line(report: &Report) -> String {
    let p = &report.process;
    let origin = match &report.fork {
        Some(fork) => format!("forked from {}", fork.parent_pid),
        None => format!("parent {}", p.parent_pid),
    };
    let ending = match (&report.end, report.complete) {
        (_, true) => "exited".to_string(),
        (Some(end), false) => end.kind.name().to_string(),
        (None, false) => "cut short".to_string(),
    };
    let s = &report.summary;
    format!(
        "pid {} ({origin}) {}: {ending}; leaked {} bytes in {} blocks ({} definitely, {} indirectly lost, {} unclassified), {} possibly lost; {}",
        p.pid,
        p.program,
        thousands(s.leaked_bytes()),
        s.definitely_lost.blocks + s.indirectly_lost.blocks + s.unclassified.blocks,
        thousands(s.definitely_lost.bytes),
        thousands(s.indirectly_lost.bytes),
        thousands(s.unclassified.bytes),
        thousands(s.possibly_lost.bytes),
        report.trace_path
    )
}

/// Several processes' reports as one JSON document (schema: docs/report-schema.md).
pub fn to_json_many(reports: &[Report]) -> Value {
    json!({
        "format": "libleak-reports",
        "version": REPORT_VERSION,
        "processes": reports.iter().map(to_json).collect::<Vec<_>>(),
    })
}
