//! Building and rendering reports: live blocks grouped by allocation stack, ranked by bytes,
//! each stack symbolized innermost first with the allocator's own frames hidden. The text and
//! JSON renderings list exactly the same leaks; the JSON schema is documented in
//! `docs/report-schema.md` and is a public contract (extend it, never break it).

use std::collections::HashMap;
use std::fmt::Write as _;

use libleak_format::{python_version_text, End, ProcessInfo, PythonRuntime, Stats};
use serde_json::{json, Value};

use crate::live::Totals;
use crate::merge::{merged_stack, Interpreter};
use crate::replay::Trace;
use crate::symbolize::Symbolizer;

pub const REPORT_FORMAT: &str = "libleak-report";
pub const REPORT_VERSION: u32 = 1;

#[derive(Clone, Copy, Debug)]
pub struct ReportOptions {
    /// Most leaks listed; 0 lists all.
    pub limit: usize,
    /// Keep the interpreter's own native frames (eval loop, call plumbing) in merged stacks.
    pub show_interpreter_frames: bool,
}

impl Default for ReportOptions {
    fn default() -> Self {
        ReportOptions {
            limit: 25,
            show_interpreter_frames: false,
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

#[derive(Clone, Debug)]
pub struct Leak {
    pub kind: &'static str,
    pub bytes: u64,
    pub blocks: u64,
    /// The allocator entry point of the group's first block.
    pub allocator: &'static str,
    pub frames: Vec<ReportFrame>,
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
    pub leaks: Vec<Leak>,
    pub omitted_leaks: u64,
    pub omitted_bytes: u64,
    pub omitted_blocks: u64,
}

pub fn build(trace: &Trace, trace_path: &str, symbolizer: &mut Symbolizer, options: ReportOptions) -> Report {
    let mut groups: HashMap<(u64, &'static str), (u64, u64, &'static str)> = HashMap::new();
    for block in &trace.live {
        let class = block.class.map_or("unclassified", |c| c.name());
        let group = groups.entry((block.stack, class)).or_insert((0, 0, block.kind.name()));
        group.0 += block.size;
        group.1 += 1;
    }
    // Stacks that differ only in frames the report hides (interpreter plumbing reached by
    // another eval-loop path, say) read the same: they are one leak to the user.
    let interpreter = Interpreter::of(trace);
    let mut stacks: Vec<((u64, &'static str), u64, u64, &'static str)> = groups
        .into_iter()
        .map(|(stack, (bytes, blocks, allocator))| (stack, bytes, blocks, allocator))
        .collect();
    stacks.sort_by_key(|s| s.0);
    let mut by_frames: HashMap<(Vec<ReportFrame>, &'static str), usize> = HashMap::new();
    let mut ranked: Vec<Leak> = Vec::new();
    for ((stack, class), bytes, blocks, allocator) in stacks {
        let frames = merged_stack(trace, &interpreter, stack, symbolizer, options.show_interpreter_frames);
        match by_frames.get(&(frames.clone(), class)) {
            Some(&index) => {
                ranked[index].bytes += bytes;
                ranked[index].blocks += blocks;
            }
            None => {
                by_frames.insert((frames.clone(), class), ranked.len());
                ranked.push(Leak {
                    kind: class,
                    bytes,
                    blocks,
                    allocator,
                    frames,
                });
            }
        }
    }
    ranked.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(b.blocks.cmp(&a.blocks)));
    let shown = if options.limit == 0 {
        ranked.len()
    } else {
        options.limit.min(ranked.len())
    };
    let rest = ranked.split_off(shown);
    let leaks = ranked;
    Report {
        trace_path: trace_path.to_string(),
        process: trace.process.clone(),
        complete: trace.incomplete.is_none(),
        incomplete_reason: trace.incomplete.as_ref().map(ToString::to_string),
        end: trace.end,
        totals: trace.totals,
        stats: trace.stats,
        python: trace.python.clone(),
        leaks,
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
        },
        "python": report.python.as_ref().map(|p| json!({
            "version": python_version_text(p.python_version),
            "frames_recorded": p.frames_recorded,
            "pythonmalloc_set": p.pythonmalloc_set,
            "note": (!p.note.is_empty()).then_some(&p.note),
        })),
        "leaks": report.leaks.iter().map(|leak| json!({
            "kind": leak.kind,
            "bytes": leak.bytes,
            "blocks": leak.blocks,
            "allocator": leak.allocator,
            "frames": leak.frames.iter().map(frame_json).collect::<Vec<_>>(),
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
        let allocator = if python.pythonmalloc_set {
            "; libleak set PYTHONMALLOC=malloc so Python objects are tracked (LIBLEAK_PYTHONMALLOC=keep opts out)"
        } else {
            ""
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
    if report.leaks.is_empty() {
        let _ = writeln!(out, "\nno blocks live at exit");
    }
    for (rank, leak) in report.leaks.iter().enumerate() {
        let _ = writeln!(
            out,
            "\n#{} {} bytes in {} blocks ({}, {})",
            rank + 1,
            thousands(leak.bytes),
            thousands(leak.blocks),
            leak.kind,
            leak.allocator
        );
        for frame in &leak.frames {
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
            let _ = writeln!(out, "    {function}{location}{module}{inlined}{mismatch}");
        }
    }
    if report.omitted_leaks > 0 {
        let _ = writeln!(
            out,
            "\n… and {} more stacks holding {} bytes in {} blocks (use --limit 0 to list all)",
            thousands(report.omitted_leaks),
            thousands(report.omitted_bytes),
            thousands(report.omitted_blocks)
        );
    }
    out
}
