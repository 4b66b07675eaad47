//! The JSON report: one document per report, or one holding a report per process. The schema
//! is documented in `docs/report-schema.md` and is a public contract (extend it, never break
//! it).
//!
//! Must never print: it returns the document, and the caller writes it.

use libleak_format::{python_version_text, Reachability};
use serde_json::{json, Value};

use super::outcome_name;
use crate::model::{Frame, GroupBy, Report, Tally};

pub const REPORT_FORMAT: &str = "libleak-report";
pub const REPORT_VERSION: u32 = 1;

fn frame_json(frame: &Frame) -> Value {
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

pub fn to_json(report: &Report) -> Value {
    let p = &report.header.process;
    json!({
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "trace": report.trace_path,
        "process": {
            "pid": p.pid, "parent_pid": p.parent_pid, "program": p.program, "argv": p.argv,
            "exe": p.exe, "cwd": p.cwd, "start_time_unix_ns": p.start_time_unix_ns,
        },
        "fork": report.header.fork.map(|f| json!({
            "parent_pid": f.parent_pid, "fork_seq": f.fork_seq, "inherited_blocks": f.inherited_blocks,
            "inherited_bytes": f.inherited_bytes, "threads_cut": f.threads_cut,
        })),
        "complete": report.header.complete(),
        "incomplete_reason": report.header.incomplete.as_ref().map(ToString::to_string),
        "exit": report.header.end.map(|e| json!({"kind": e.kind.name(), "status": e.status})),
        "totals": {
            "allocations": report.header.totals.allocations,
            "frees": report.header.totals.frees,
            "peak_bytes": report.header.totals.peak_bytes,
            "live_bytes": report.header.totals.live_bytes,
            "live_blocks": report.header.totals.live_blocks,
            "unmatched_frees": report.header.totals.unmatched_frees,
        },
        "recorder": {
            "reentrant_calls": report.header.stats.reentrant_calls,
            "producer_waits": report.header.stats.producer_waits,
            "truncated_stacks": report.header.stats.truncated_stacks,
            "slot_ordering": if report.header.stats.slot_locks { "locks" } else { "membarrier" },
        },
        "python": report.header.python.as_ref().map(|p| json!({
            "version": python_version_text(p.python_version),
            "frames_recorded": p.frames_recorded,
            "pythonmalloc_set": p.pythonmalloc_set,
            "ignores_environment": report.header.python_ignores_environment,
            "note": (!p.note.is_empty()).then_some(&p.note),
        })),
        "reachability": reachability_json(report.header.reachability.as_ref()),
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
        "omitted": {"leaks": report.omitted.leaks, "bytes": report.omitted.bytes, "blocks": report.omitted.blocks},
    })
}

/// Several processes' reports as one JSON document (schema: docs/report-schema.md).
pub fn to_json_many(reports: &[Report]) -> Value {
    json!({
        "format": "libleak-reports",
        "version": REPORT_VERSION,
        "processes": reports.iter().map(to_json).collect::<Vec<_>>(),
    })
}
