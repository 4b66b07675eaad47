//! The JSON report: one document per report, or one holding a report per process. The schema
//! is documented in `docs/report-schema.md` and is a public contract (extend it, never break
//! it); a test below checks that the document lists exactly the keys written here.
//!
//! The views below are the JSON's shape, field for field; the values come from the model
//! unchanged apart from names and units. They are turned into a [`Value`], whose objects
//! keep their keys sorted, so the key order of the output is alphabetical whatever the
//! declaration order. Must never print: it returns the document, and the caller writes it.

use std::collections::BTreeMap;

use libleak_format::{python_version_text, ForkInfo, ProcessInfo, Reachability};
use serde::Serialize;
use serde_json::Value;

use super::outcome_name;
use crate::model::{
    Folded, Frame, GroupBy, Inherited, ObjectShare, Omitted, Owner, Report, StackRow, Summary, Tally, TestShare,
};

pub const REPORT_FORMAT: &str = "libleak-report";
pub const REPORT_VERSION: u32 = 1;

#[derive(Serialize)]
struct ReportView<'a> {
    format: &'static str,
    version: u32,
    trace: &'a str,
    process: ProcessView<'a>,
    fork: Option<ForkView>,
    complete: bool,
    incomplete_reason: Option<String>,
    damage: Vec<DamageView>,
    exit: Option<ExitView>,
    totals: TotalsView,
    recorder: RecorderView,
    python: Option<PythonView<'a>>,
    reachability: Option<ReachabilityView<'a>>,
    reachability_at_finalization: Option<ReachabilityView<'a>>,
    summary: &'a Summary,
    group_by: String,
    leaks: Vec<LeakView<'a>>,
    omitted: Omitted,
    /// Written only when rows were folded, so that single-process reports keep their shape.
    #[serde(skip_serializing_if = "nothing_folded")]
    inherited_shown_elsewhere: &'a Folded,
}

fn nothing_folded(folded: &Folded) -> bool {
    folded.leaks == 0
}

#[derive(Serialize)]
struct ProcessView<'a> {
    pid: u32,
    parent_pid: u32,
    program: &'a str,
    argv: &'a [String],
    exe: &'a str,
    cwd: &'a str,
    start_time_unix_ns: u64,
}

#[derive(Serialize)]
struct ForkView {
    parent_pid: u32,
    fork_seq: u64,
    inherited_blocks: u64,
    inherited_bytes: u64,
    threads_cut: u64,
    /// The parent's trace, where the inherited blocks are.
    parent_trace: String,
    parent_trace_bytes: u64,
    /// Whether the inherited blocks were read from the parent's trace; when not,
    /// `inherited_unknown` says why (the child's own blocks are reported all the same).
    inherited_read: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    inherited_unknown: Option<String>,
}

#[derive(Serialize)]
struct DamageView {
    offset: u64,
    bytes: u64,
}

#[derive(Serialize)]
struct ExitView {
    kind: &'static str,
    status: Option<i32>,
}

#[derive(Serialize)]
struct TotalsView {
    allocations: u64,
    frees: u64,
    peak_bytes: u64,
    live_bytes: u64,
    live_blocks: u64,
    unmatched_frees: u64,
}

#[derive(Serialize)]
struct RecorderView {
    reentrant_calls: u64,
    producer_waits: u64,
    truncated_stacks: u64,
    slot_ordering: &'static str,
}

#[derive(Serialize)]
struct PythonView<'a> {
    version: String,
    frames_recorded: bool,
    pythonmalloc_set: bool,
    ignores_environment: Option<bool>,
    note: Option<&'a str>,
}

#[derive(Serialize)]
struct ReachabilityView<'a> {
    outcome: &'static str,
    duration_ms: f64,
    blocks: u64,
    root_bytes: u64,
    heap_bytes: u64,
    python_objects: u64,
    immortal_objects: u64,
    threads: u64,
    threads_unknown: u64,
    note: Option<&'a str>,
    inherited_unjudged: u64,
    inherited_scanned: u64,
}

impl<'a> ReachabilityView<'a> {
    fn of(scan: &'a Reachability) -> ReachabilityView<'a> {
        ReachabilityView {
            outcome: outcome_name(scan.outcome),
            duration_ms: scan.duration_us as f64 / 1000.0,
            blocks: scan.blocks,
            root_bytes: scan.root_bytes,
            heap_bytes: scan.heap_bytes,
            python_objects: scan.python_objects,
            immortal_objects: scan.immortal_objects,
            threads: scan.threads,
            threads_unknown: scan.threads_unknown,
            note: note(&scan.note),
            inherited_unjudged: scan.inherited_unjudged,
            inherited_scanned: scan.inherited_scanned,
        }
    }
}

#[derive(Serialize)]
struct LeakView<'a> {
    kind: &'static str,
    bytes: u64,
    blocks: u64,
    allocator: &'static str,
    runtime_leftover: bool,
    import_once: bool,
    /// Written only on a fork child's inherited rows (`true`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    inherited: bool,
    /// Written only on a row standing for other processes' identical inherited rows.
    #[serde(skip_serializing_if = "<[u32]>::is_empty")]
    also_in: &'a [u32],
    classes: BTreeMap<&'static str, Tally>,
    owner: OwnerView<'a>,
    frames: &'a [Frame],
    stacks: &'a [StackRow],
    roots: Tally,
    parts: Vec<PartView<'a>>,
    objects: &'a [ObjectShare],
    leaked_references: ReferencesView,
    /// Written only when the trace marks tests.
    #[serde(skip_serializing_if = "Option::is_none")]
    tests: Option<&'a [TestShare]>,
}

#[derive(Serialize)]
struct PartView<'a> {
    kind: &'static str,
    bytes: u64,
    blocks: u64,
    owner: OwnerView<'a>,
    frames: &'a [Frame],
    objects: &'a [ObjectShare],
    stacks: &'a [StackRow],
}

#[derive(Serialize)]
struct ReferencesView {
    objects: u64,
    refcount: u64,
    found: u64,
    leaked: u64,
}

/// A row's owner as both reports write it: its native frame, flat, and the calling Python line.
#[derive(Serialize)]
pub(super) struct OwnerView<'a> {
    module: Option<&'a str>,
    function: Option<&'a str>,
    file: Option<&'a str>,
    line: Option<u32>,
    python: Option<PythonLineView<'a>>,
}

#[derive(Serialize)]
struct PythonLineView<'a> {
    function: Option<&'a str>,
    file: Option<&'a str>,
    line: Option<u32>,
}

impl<'a> OwnerView<'a> {
    pub(super) fn of(owner: &'a Owner) -> OwnerView<'a> {
        let frame = owner.frame.as_ref();
        OwnerView {
            module: frame.and_then(|f| f.module.as_deref()),
            function: frame.and_then(|f| f.function.as_deref()),
            file: frame.and_then(|f| f.file.as_deref()),
            line: frame.and_then(|f| f.line),
            python: owner.python.as_ref().map(|f| PythonLineView {
                function: f.function.as_deref(),
                file: f.file.as_deref(),
                line: f.line,
            }),
        }
    }
}

/// An empty note reads as `null`.
fn note(text: &str) -> Option<&str> {
    (!text.is_empty()).then_some(text)
}

impl<'a> ReportView<'a> {
    fn of(report: &'a Report) -> ReportView<'a> {
        let header = &report.header;
        let totals = &header.totals;
        let stats = &header.stats;
        ReportView {
            format: REPORT_FORMAT,
            version: REPORT_VERSION,
            trace: &report.trace_path,
            process: ProcessView::of(&header.process),
            fork: header
                .fork
                .as_ref()
                .map(|fork| ForkView::of(fork, header.inheritance.as_ref())),
            complete: header.complete(),
            incomplete_reason: header.incomplete.as_ref().map(ToString::to_string),
            damage: header
                .damage
                .iter()
                .map(|d| DamageView {
                    offset: d.offset,
                    bytes: d.bytes,
                })
                .collect(),
            exit: header.end.map(|end| ExitView {
                kind: end.kind.name(),
                status: end.status,
            }),
            totals: TotalsView {
                allocations: totals.allocations,
                frees: totals.frees,
                peak_bytes: totals.peak_bytes,
                live_bytes: totals.live_bytes,
                live_blocks: totals.live_blocks,
                unmatched_frees: totals.unmatched_frees,
            },
            recorder: RecorderView {
                reentrant_calls: stats.reentrant_calls,
                producer_waits: stats.producer_waits,
                truncated_stacks: stats.truncated_stacks,
                slot_ordering: if stats.slot_locks { "locks" } else { "membarrier" },
            },
            python: header.python.as_ref().map(|python| PythonView {
                version: python_version_text(python.python_version),
                frames_recorded: python.frames_recorded,
                pythonmalloc_set: python.pythonmalloc_set,
                ignores_environment: header.python_ignores_environment,
                note: note(&python.note),
            }),
            reachability: header.reachability.as_ref().map(ReachabilityView::of),
            reachability_at_finalization: header.reachability_at_finalization.as_ref().map(ReachabilityView::of),
            summary: &report.summary,
            group_by: match report.group_by {
                GroupBy::Site => "site".to_string(),
                GroupBy::Stack => "stack".to_string(),
                GroupBy::Frames(n) => n.to_string(),
            },
            leaks: report.leaks.iter().map(LeakView::of).collect(),
            omitted: report.omitted,
            inherited_shown_elsewhere: &report.inherited_shown_elsewhere,
        }
    }
}

impl<'a> ProcessView<'a> {
    fn of(process: &'a ProcessInfo) -> ProcessView<'a> {
        ProcessView {
            pid: process.pid,
            parent_pid: process.parent_pid,
            program: &process.program,
            argv: &process.argv,
            exe: &process.exe,
            cwd: &process.cwd,
            start_time_unix_ns: process.start_time_unix_ns,
        }
    }
}

impl ForkView {
    fn of(fork: &ForkInfo, inheritance: Option<&Inherited>) -> ForkView {
        ForkView {
            parent_pid: fork.parent_pid,
            fork_seq: fork.fork_seq,
            inherited_blocks: fork.inherited_blocks,
            inherited_bytes: fork.inherited_bytes,
            threads_cut: fork.threads_cut,
            parent_trace: fork.parent_trace.clone(),
            parent_trace_bytes: fork.parent_trace_bytes,
            inherited_read: inheritance == Some(&Inherited::Read),
            inherited_unknown: match inheritance {
                Some(Inherited::Missing(reason)) => Some(reason.clone()),
                _ => None,
            },
        }
    }
}

impl<'a> LeakView<'a> {
    fn of(leak: &'a crate::model::Leak) -> LeakView<'a> {
        LeakView {
            kind: leak.class.name(),
            bytes: leak.bytes,
            blocks: leak.blocks,
            allocator: leak.allocator.name(),
            runtime_leftover: leak.runtime_leftover,
            import_once: leak.import_once,
            inherited: leak.inherited,
            also_in: &leak.also_in,
            classes: leak
                .classes
                .iter()
                .map(|(class, tally)| (class.name(), *tally))
                .collect(),
            owner: OwnerView::of(&leak.owner),
            frames: &leak.frames,
            stacks: &leak.stacks,
            roots: leak.roots,
            parts: leak
                .parts
                .iter()
                .map(|part| PartView {
                    kind: part.class.name(),
                    bytes: part.bytes,
                    blocks: part.blocks,
                    owner: OwnerView::of(&part.owner),
                    frames: &part.frames,
                    objects: &part.objects,
                    stacks: &part.stacks,
                })
                .collect(),
            objects: &leak.objects,
            leaked_references: ReferencesView {
                objects: leak.references.objects,
                refcount: leak.references.refcount,
                found: leak.references.found,
                leaked: leak.references.leaked(),
            },
            tests: leak.tests.as_deref(),
        }
    }
}

/// The report as one JSON document (schema: docs/report-schema.md).
pub fn to_json(report: &Report) -> Value {
    serde_json::to_value(ReportView::of(report)).expect("every map in a report view has string keys")
}

/// A trace the multi-process document names without a report: it could not be read.
#[derive(Clone, Debug, Serialize)]
pub struct Unreadable {
    /// The trace's path, as given.
    pub trace: String,
    /// Why it could not be read, one line.
    pub error: String,
}

/// Several processes' reports as one JSON document, with the traces that could not be read
/// (schema: docs/report-schema.md).
pub fn to_json_many(reports: &[Report], unreadable: &[Unreadable]) -> Value {
    #[derive(Serialize)]
    struct Many<'a> {
        format: &'static str,
        version: u32,
        processes: Vec<ReportView<'a>>,
        unreadable: &'a [Unreadable],
    }
    let many = Many {
        format: "libleak-reports",
        version: REPORT_VERSION,
        processes: reports.iter().map(ReportView::of).collect(),
        unreadable,
    };
    serde_json::to_value(many).expect("every map in a report view has string keys")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use libleak_format::{AllocKind, End, ExitKind, PythonRuntime, Reachability, Stats};

    use super::*;
    use crate::model::{Class, FrameKind, Leak, TraceHeader};

    fn frame(kind: FrameKind) -> Frame {
        Frame {
            kind,
            function: Some("f".into()),
            file: Some("f.c".into()),
            line: Some(1),
            module: Some("/m.so".into()),
            inlined: false,
            address: Some(0x10),
            build_id_mismatch: false,
        }
    }

    /// A report with every optional part present, so that every key is written.
    fn full_report() -> Report {
        let frames = vec![frame(FrameKind::Native), frame(FrameKind::Python)];
        Report {
            trace_path: "t.trace".into(),
            header: TraceHeader {
                process: ProcessInfo::default(),
                python: Some(PythonRuntime::default()),
                python_ignores_environment: Some(false),
                totals: Default::default(),
                stats: Stats::default(),
                reachability: Some(Reachability::default()),
                reachability_at_finalization: Some(Reachability::default()),
                fork: Some(ForkInfo::default()),
                inheritance: None,
                end: Some(End {
                    kind: ExitKind::Exit,
                    status: Some(0),
                    stats: Stats::default(),
                }),
                incomplete: None,
                damage: vec![libleak_format::Damage { offset: 16, bytes: 100 }],
            },
            summary: Summary::default(),
            group_by: GroupBy::Site,
            leaks: vec![Leak {
                class: Class::DefinitelyLost,
                bytes: 1,
                blocks: 1,
                allocator: AllocKind::Malloc,
                frames: frames.clone(),
                stacks: vec![StackRow {
                    bytes: 1,
                    blocks: 1,
                    frames: frames.clone(),
                }],
                classes: vec![(Class::DefinitelyLost, Tally { blocks: 1, bytes: 1 })],
                owner: Owner {
                    frame: Some(frames[0].clone()),
                    python: Some(frames[1].clone()),
                },
                runtime_leftover: false,
                import_once: false,
                inherited: true,
                also_in: vec![2],
                roots: Tally { blocks: 1, bytes: 1 },
                parts: vec![crate::model::Part {
                    frames: frames.clone(),
                    owner: Owner {
                        frame: Some(frames[0].clone()),
                        python: Some(frames[1].clone()),
                    },
                    class: Class::IndirectlyLost,
                    bytes: 1,
                    blocks: 1,
                    objects: vec![ObjectShare {
                        type_name: "frame".into(),
                        bytes: 1,
                        blocks: 1,
                    }],
                    stacks: vec![StackRow {
                        bytes: 1,
                        blocks: 1,
                        frames: frames.clone(),
                    }],
                }],
                objects: vec![ObjectShare {
                    type_name: "traceback".into(),
                    bytes: 1,
                    blocks: 1,
                }],
                references: crate::model::References {
                    objects: 1,
                    refcount: 2,
                    found: 1,
                },
                tests: Some(vec![TestShare {
                    nodeid: "t.py::test".into(),
                    bytes: 1,
                    blocks: 1,
                }]),
            }],
            omitted: Omitted::default(),
            inherited_shown_elsewhere: Folded {
                leaks: 1,
                bytes: 1,
                blocks: 1,
                shown_in: vec![1],
            },
        }
    }

    /// Every key path in `value` (array elements read through, so `leaks.frames.kind`), except
    /// below the maps keyed by data (`leaks.classes`, whose keys are class names).
    fn key_paths(value: &Value, prefix: &str, out: &mut BTreeSet<String>) {
        match value {
            Value::Object(map) => {
                for (key, child) in map {
                    let path = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    out.insert(path.clone());
                    if path != "leaks.classes" {
                        key_paths(child, &path, out);
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|item| key_paths(item, prefix, out)),
            _ => {}
        }
    }

    #[test]
    fn the_schema_document_lists_exactly_the_keys_written() {
        let text = include_str!("../../../docs/report-schema.md");
        let start = text.find("```json\n").expect("schema has a JSON example") + "```json\n".len();
        let end = start + text[start..].find("```").expect("the example ends");
        let example: Value = serde_json::from_str(&text[start..end]).expect("the example is JSON");
        let mut documented = BTreeSet::new();
        key_paths(&example, "", &mut documented);
        let mut written = BTreeSet::new();
        key_paths(&to_json(&full_report()), "", &mut written);
        // The example elides a stack's frames ("as in frames"): they must be frames indeed.
        let frame_keys = |set: &BTreeSet<String>, prefix: &str| -> BTreeSet<String> {
            set.iter()
                .filter_map(|p| p.strip_prefix(prefix))
                .map(str::to_string)
                .collect()
        };
        assert_eq!(
            frame_keys(&written, "leaks.stacks.frames."),
            frame_keys(&written, "leaks.frames.")
        );
        assert_eq!(
            frame_keys(&written, "leaks.parts.frames."),
            frame_keys(&written, "leaks.frames.")
        );
        assert_eq!(
            frame_keys(&written, "leaks.parts.stacks.frames."),
            frame_keys(&written, "leaks.frames.")
        );
        written.retain(|p| {
            !p.starts_with("leaks.stacks.frames.")
                && !p.starts_with("leaks.parts.frames.")
                && !p.starts_with("leaks.parts.stacks.frames.")
        });
        assert_eq!(documented, written, "docs/report-schema.md and the JSON written differ");
        // The multi-process document's keys.
        let unreadable = Unreadable {
            trace: "t.trace".into(),
            error: "e".into(),
        };
        let many = to_json_many(&[full_report()], &[unreadable]);
        let keys: Vec<&String> = many.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["format", "processes", "unreadable", "version"]);
        let unreadable_keys: Vec<&String> = many["unreadable"][0].as_object().unwrap().keys().collect();
        assert_eq!(unreadable_keys, ["error", "trace"]);
        assert!(text.contains(
            r#"{"format": "libleak-reports", "version": 1, "processes": [{"format": "libleak-report", ...}, ...],"#
        ));
        assert!(text.contains(r#" "unreadable": [{"trace": "/path/to/libleak.app.1236.trace", "error": "#));
    }

    #[test]
    fn keys_are_written_in_alphabetical_order_and_addresses_in_hex() {
        let text = to_json(&full_report()).to_string();
        assert!(text.starts_with(r#"{"complete":true,"damage":[{"bytes":100,"offset":16}],"exit":{"kind":"exit","status":0},"fork":{"fork_seq":0,"#));
        assert!(text.contains(
            r#""frames":[{"address":"0x10","build_id_mismatch":false,"file":"f.c","function":"f","inlined":false,"kind":"native","line":1,"module":"/m.so"}"#
        ));
        assert!(text.contains(r#""classes":{"definitely-lost":{"blocks":1,"bytes":1}}"#));
    }
}
