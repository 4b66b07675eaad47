//! The text report a person reads: the process, how it ended, the summary, then each row
//! with its owner and stacks; and the one-line summary of a process in a multi-process
//! report.
//!
//! Must never print: it returns the text, and the caller writes it.

use std::fmt::Write as _;

use libleak_format::{python_version_text, ScanOutcome};

use super::{outcome_name, thousands};
use crate::model::{Frame, Incompleteness, Inherited, Leak, ObjectShare, Report, Tally};

/// The text of a frame: function, location, module.
pub(super) fn frame_text(frame: &Frame) -> String {
    let function = frame.function.as_deref().unwrap_or("??");
    // Cython's C names, with the Python name they stand for.
    let function = match crate::symbolize::cython::python_name(function) {
        Some(name) if frame.kind == crate::model::FrameKind::Native => format!("{function} ({name})"),
        _ => function.to_string(),
    };
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

pub fn to_text(report: &Report) -> String {
    let mut out = String::new();
    let p = &report.header.process;
    let _ = writeln!(
        out,
        "libleak report: {} (pid {}): {}",
        p.program,
        p.pid,
        p.argv.join(" ")
    );
    if let Some(fork) = &report.header.fork {
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
        if let Some(Inherited::Missing(reason)) = &report.header.inheritance {
            let _ = writeln!(
                out,
                "INHERITED BLOCKS UNKNOWN: {reason}; only the blocks this process allocated itself are reported"
            );
        }
    }
    match &report.header.incomplete {
        None => {
            let status = report
                .header
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
    if let Some(damage) = damage_text(report) {
        let _ = writeln!(out, "{damage}");
    }
    let t = &report.header.totals;
    let _ = writeln!(
        out,
        "{} allocations, {} frees, peak {} bytes live; at exit {} bytes live in {} blocks",
        thousands(t.allocations),
        thousands(t.frees),
        thousands(t.peak_bytes),
        thousands(t.live_bytes),
        thousands(t.live_blocks)
    );
    if let Some(python) = &report.header.python {
        let frames = if python.frames_recorded {
            "Python frames recorded".to_string()
        } else {
            format!("no Python frames ({})", python.note)
        };
        let allocator = match (python.pythonmalloc_set, report.header.python_ignores_environment) {
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
    if report.header.stats.producer_waits > 0 {
        let waits = report.header.stats.producer_waits;
        let _ = writeln!(
            out,
            "note: threads waited {} {} for the trace writer",
            thousands(waits),
            if waits == 1 { "time" } else { "times" }
        );
    }
    summary_text(&mut out, report);
    for (rank, leak) in report.leaks.iter().enumerate() {
        let mut what = leak.class.name().to_string();
        if leak.classes.len() > 1 {
            let parts: Vec<String> = leak
                .classes
                .iter()
                .map(|(class, tally)| format!("{} {}", thousands(tally.blocks), class.name()))
                .collect();
            what = format!("{what} ({})", parts.join(", "));
        }
        if leak.runtime_leftover {
            what.push_str(", left by the runtime");
        }
        if leak.import_once {
            what.push_str(", made once by an import");
        }
        if leak.inherited {
            // Allocated before the fork: the parent's code, not this process's.
            let parent = report.header.fork.as_ref().map(|f| f.parent_pid).unwrap_or_default();
            what.push_str(&format!(", inherited from pid {parent} at the fork"));
        }
        let _ = writeln!(
            out,
            "\n#{} {} {what} ({})",
            rank + 1,
            blocks_text(Tally {
                blocks: leak.blocks,
                bytes: leak.bytes
            }),
            leak.allocator.name()
        );
        if let Some(owner) = &leak.owner.frame {
            let called_from = leak
                .owner
                .python
                .as_ref()
                .map(|p| format!(", called from {}", frame_text(p)))
                .unwrap_or_default();
            let _ = writeln!(out, "  owner: {}{called_from}", frame_text(owner));
        } else if let Some(python) = leak
            .owner
            .python
            .as_ref()
            .filter(|_| leak.class.is_leak() && !leak.runtime_leftover)
        {
            // Only native code keeps Python objects alive past their last name.
            let _ = writeln!(
                out,
                "  made by Python code: {}; native code kept it alive",
                frame_text(python)
            );
        }
        objects_and_references_text(&mut out, leak);
        if !leak.also_in.is_empty() {
            let pids: Vec<String> = leak.also_in.iter().map(u32::to_string).collect();
            let _ = writeln!(
                out,
                "  also in {} forked {} (inherited, not repeated): pid {}",
                leak.also_in.len(),
                if leak.also_in.len() == 1 {
                    "process"
                } else {
                    "processes"
                },
                pids.join(", ")
            );
        }
        for test in leak.tests.iter().flatten() {
            let _ = writeln!(
                out,
                "  during test: {} ({})",
                test.nodeid,
                blocks_text(Tally {
                    blocks: test.blocks,
                    bytes: test.bytes
                })
            );
        }
        if leak.tests.as_ref().is_some_and(Vec::is_empty) {
            let _ = writeln!(out, "  during test: none (allocated outside every test)");
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
        parts_text(&mut out, leak);
    }
    let folded = &report.inherited_shown_elsewhere;
    if folded.leaks > 0 {
        let pids: Vec<String> = folded.shown_in.iter().map(u32::to_string).collect();
        let _ = writeln!(
            out,
            "\n{} inherited {} ({}) not repeated: shown in the report of pid {}, whose row names this process",
            thousands(folded.leaks),
            if folded.leaks == 1 { "row" } else { "rows" },
            blocks_text(Tally {
                blocks: folded.blocks,
                bytes: folded.bytes
            }),
            pids.join(", ")
        );
    }
    if report.omitted.leaks > 0 {
        let _ = writeln!(
            out,
            "\n… and {} more rows holding {} bytes in {} blocks (use --limit 0 to list all)",
            thousands(report.omitted.leaks),
            thousands(report.omitted.bytes),
            thousands(report.omitted.blocks)
        );
    }
    out
}

/// Parts of a structure listed under its row at most.
const PARTS_PER_ROW: usize = 5;

/// What a row's leaked roots keep alive that was allocated elsewhere, by site.
fn parts_text(out: &mut String, leak: &Leak) {
    if !leak.parts.is_empty() {
        let kept = Tally {
            blocks: leak.blocks - leak.roots.blocks,
            bytes: leak.bytes - leak.roots.bytes,
        };
        let _ = writeln!(
            out,
            "  the leaked {} ({}) {} {} allocated elsewhere:",
            if leak.roots.blocks == 1 { "block" } else { "blocks" },
            blocks_text(leak.roots),
            if leak.roots.blocks == 1 { "keeps" } else { "keep" },
            blocks_text(kept)
        );
        for part in leak.parts.iter().take(PARTS_PER_ROW) {
            let site = match (&part.owner.frame, &part.owner.python) {
                (Some(frame), Some(python)) => format!("{}, called from {}", frame_text(frame), frame_text(python)),
                (Some(frame), None) => frame_text(frame),
                (None, Some(python)) => frame_text(python),
                (None, None) => part.frames.first().map(frame_text).unwrap_or_else(|| "?".into()),
            };
            let objects = objects_text(&part.objects);
            let objects = if objects.is_empty() {
                String::new()
            } else {
                format!(": {objects}")
            };
            let _ = writeln!(
                out,
                "    {} from {site}{objects}",
                blocks_text(Tally {
                    blocks: part.blocks,
                    bytes: part.bytes
                })
            );
        }
        if leak.parts.len() > PARTS_PER_ROW {
            let _ = writeln!(out, "    … and {} more sites", leak.parts.len() - PARTS_PER_ROW);
        }
    }
}

/// A row's Python objects by type, and the references nobody gave back.
fn objects_and_references_text(out: &mut String, leak: &Leak) {
    if !leak.objects.is_empty() {
        let _ = writeln!(out, "  objects: {}", objects_text(&leak.objects));
    }
    let references = leak.references;
    if references.objects > 0 {
        let leaked = references.leaked();
        let _ = writeln!(
            out,
            "  {}refcount {}, {} {} found: {} leaked {}",
            if references.objects == 1 {
                String::new()
            } else {
                format!("{} objects: ", thousands(references.objects))
            },
            thousands(references.refcount),
            thousands(references.found),
            if references.found == 1 {
                "reference"
            } else {
                "references"
            },
            thousands(leaked),
            if leaked == 1 { "reference" } else { "references" }
        );
    }
}

/// `2 × frame (392 bytes), 1 × bytes (4,129 bytes)`.
fn objects_text(objects: &[ObjectShare]) -> String {
    let shown: Vec<String> = objects
        .iter()
        .take(PARTS_PER_ROW)
        .map(|o| {
            format!(
                "{} × {} ({} {})",
                thousands(o.blocks),
                o.type_name,
                thousands(o.bytes),
                if o.bytes == 1 { "byte" } else { "bytes" }
            )
        })
        .collect();
    let mut text = shown.join(", ");
    if objects.len() > PARTS_PER_ROW {
        text.push_str(&format!(", … {} more types", objects.len() - PARTS_PER_ROW));
    }
    text
}

fn summary_text(out: &mut String, report: &Report) {
    let summary = &report.summary;
    if let Some(scan) = &report.header.reachability_at_finalization {
        let _ = match scan.outcome {
            ScanOutcome::Complete => writeln!(
                out,
                "reachability scan at Python finalisation: complete in {:.1} ms, {} blocks; blocks live then are classified by it, blocks allocated after it are the runtime's",
                scan.duration_us as f64 / 1000.0,
                thousands(scan.blocks),
            ),
            outcome => writeln!(
                out,
                "reachability scan at Python finalisation: {} ({}); blocks live then are classified at exit",
                outcome_name(outcome),
                scan.note
            ),
        };
    }
    match &report.header.reachability {
        Some(scan) if scan.outcome == ScanOutcome::Complete => {
            let unknown = if scan.threads_unknown > 0 {
                format!(
                    "; {} running threads had no readable stack pointer, so every stack was scanned whole",
                    scan.threads_unknown
                )
            } else {
                String::new()
            };
            let inherited = if scan.inherited_unjudged > 0 {
                format!(
                    "; {} inherited blocks left to the parent's report ({} of them read as roots, pointing into its own blocks from pages written since the fork)",
                    thousands(scan.inherited_unjudged),
                    thousands(scan.inherited_scanned)
                )
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "reachability scan at exit: complete in {:.1} ms, {} blocks, {} bytes of roots{unknown}{inherited}",
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
        None if report.header.complete() => {
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
            "awaiting garbage collection",
            summary.collectable,
            " (Python reference cycles nothing else refers to, not leaks; --show-reachable lists them)",
        ),
        (
            "left by the runtime",
            summary.runtime_leftovers,
            " (allocated by the C runtime or the interpreter alone; --show-leftovers lists them)",
        ),
        (
            "made once by imports",
            summary.import_once,
            " (lost one-time set-up of imported modules, such as pyo3's type specs; --show-leftovers lists them)",
        ),
        ("suppressed", summary.suppressed, ""),
        (
            "inherited, not judged",
            summary.inherited_unjudged,
            if report
                .header
                .reachability
                .as_ref()
                .is_some_and(|scan| scan.inherited_unjudged > 0)
            {
                " (a forked child judges what it allocated itself; its parent's report judges these)"
            } else {
                " (the process ended before its exit scan; its parent's report judges them)"
            },
        ),
        (
            "not judged",
            summary.unjudged,
            " (held by this child of a traced process when it died before its exit scan, as a pool's terminated worker does; --show-unjudged lists them)",
        ),
        (
            "released by exec",
            summary.released_by_exec,
            " (live when the program image was replaced, which frees them: no leak; --show-reachable lists them)",
        ),
    ];
    for (label, tally, hint) in lines {
        if tally.blocks > 0 {
            let _ = writeln!(out, "  {label}: {}{hint}", blocks_text(tally));
        }
    }
    // Rows shown in an ancestor's report are leaks of this process all the same.
    if report.leaks.is_empty() && report.inherited_shown_elsewhere.leaks == 0 {
        let _ = writeln!(out, "\n{}", no_leaks_text(report));
    }
}

/// The line saying which parts of the file were skipped as damaged, if any.
fn damage_text(report: &Report) -> Option<String> {
    let damage = &report.header.damage;
    let first = damage.first()?;
    let skipped = thousands(report.header.damaged_bytes());
    let place = match damage.len() {
        1 => format!("{skipped} bytes at byte {} skipped", thousands(first.offset)),
        n => format!(
            "{skipped} bytes from byte {} on skipped ({n} regions)",
            thousands(first.offset)
        ),
    };
    Some(format!(
        "trace DAMAGED: {place}; allocations and frees recorded there are missing"
    ))
}

/// "no leaks", qualified when the trace cannot hold every event: a process killed before
/// its last flush may have leaked afterwards, and damage loses allocations.
fn no_leaks_text(report: &Report) -> &'static str {
    let cut_short = matches!(report.header.incomplete, Some(Incompleteness::Truncated { .. }));
    match (cut_short, report.header.damage.is_empty()) {
        (false, true) => "no leaks",
        (true, true) => {
            "no leaks among the events recorded (the trace is incomplete: what the process did after its last flush is not in it)"
        }
        (false, false) => {
            "no leaks among the events read (the trace is damaged: allocations recorded in its damaged parts are not in it)"
        }
        (true, false) => {
            "no leaks among the events read (the trace is incomplete and damaged: what the process did after its last flush, and allocations recorded in its damaged parts, are not in it)"
        }
    }
}

/// One line per process for a multi-process report: pid, parent, program, how it ended, and
/// what it leaked.
pub fn summary_line(report: &Report) -> String {
    let p = &report.header.process;
    let origin = match &report.header.fork {
        Some(fork) => format!("forked from {}", fork.parent_pid),
        None => format!("parent {}", p.parent_pid),
    };
    let ending = match (&report.header.end, report.header.complete()) {
        (_, true) => "exited".to_string(),
        (Some(end), false) => end.kind.name().to_string(),
        (None, false) => "cut short".to_string(),
    };
    let ending = if report.header.damage.is_empty() {
        ending
    } else {
        format!("{ending}, trace damaged")
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

#[cfg(test)]
mod tests {
    use libleak_format::Stats;

    use super::*;
    use crate::model::{GroupBy, Omitted, Summary, TraceHeader};

    fn with_producer_waits(producer_waits: u64) -> Report {
        Report {
            trace_path: "t.trace".into(),
            header: TraceHeader {
                stats: Stats {
                    producer_waits,
                    ..Stats::default()
                },
                ..TraceHeader::default()
            },
            summary: Summary::default(),
            group_by: GroupBy::Site,
            leaks: Vec::new(),
            omitted: Omitted::default(),
            inherited_shown_elsewhere: Default::default(),
        }
    }

    #[test]
    fn damage_and_a_cut_short_trace_qualify_no_leaks() {
        let mut report = with_producer_waits(0);
        assert!(to_text(&report).ends_with("\nno leaks\n"));
        assert!(!to_text(&report).contains("DAMAGED"));
        report.header.incomplete = Some(Incompleteness::Truncated { mid_chunk: false });
        assert!(to_text(&report).contains(
            "\nno leaks among the events recorded (the trace is incomplete: what the process did after its last flush is not in it)\n"
        ));
        report.header.damage = vec![
            libleak_format::Damage {
                offset: 5678,
                bytes: 1000,
            },
            libleak_format::Damage {
                offset: 9000,
                bytes: 234,
            },
        ];
        let text = to_text(&report);
        assert!(text.contains(
            "trace DAMAGED: 1,234 bytes from byte 5,678 on skipped (2 regions); allocations and frees recorded there are missing\n"
        ));
        assert!(text.contains("no leaks among the events read (the trace is incomplete and damaged"));
        report.header.damage.truncate(1);
        report.header.incomplete = None;
        let text = to_text(&report);
        assert!(text.contains("trace DAMAGED: 1,000 bytes at byte 5,678 skipped; allocations"));
        assert!(text.contains("\nno leaks among the events read (the trace is damaged:"));
        assert!(summary_line(&report).contains(": exited, trace damaged; leaked"));
    }

    #[test]
    fn counts_agree_with_their_nouns() {
        assert!(to_text(&with_producer_waits(1)).contains("note: threads waited 1 time for the trace writer\n"));
        assert!(to_text(&with_producer_waits(2)).contains("note: threads waited 2 times for the trace writer\n"));
        assert!(to_text(&with_producer_waits(1234)).contains("waited 1,234 times"));
        assert!(!to_text(&with_producer_waits(0)).contains("waited"));
    }
}
