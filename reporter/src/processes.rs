//! Several processes' reports made one: a leak a fork child inherited from its traced parent,
//! and that the parent's report lists too, is shown once, on the parent's row, with the
//! processes it also appears in, instead of once per child.
//!
//! The matching rule ([`same_leak`]): a child's row folds into a row of its parent's report
//! only when every block of the child's row was inherited (allocated before the fork) and the
//! two rows are identical: same class and per-class tallies, same bytes and blocks, same
//! allocator, same leftover flag, and the same stacks (frames, addresses included, with the
//! same bytes and blocks each). A forked child runs the same mappings at the same addresses,
//! so the same inherited blocks give the same row; anything less than identical (the parent
//! freed some of them, the child's scan classified them otherwise) is a different finding and
//! stays in the child, marked inherited.
//!
//! Must never change a process's summary or its `--fail-on-leak` measure (each process did
//! hold those blocks at its exit), and never drop a row without naming, on the row that
//! stands for it, the process it came from.

use crate::model::{Leak, Report};

/// Whether `child`'s row is `parent`'s row, inherited unchanged at a fork (the rule above).
pub fn same_leak(parent: &Leak, child: &Leak) -> bool {
    child.inherited
        && parent.class == child.class
        && parent.classes == child.classes
        && parent.bytes == child.bytes
        && parent.blocks == child.blocks
        && parent.allocator == child.allocator
        && parent.runtime_leftover == child.runtime_leftover
        && parent.import_once == child.import_once
        && parent.stacks.len() == child.stacks.len()
        && parent
            .stacks
            .iter()
            .zip(&child.stacks)
            .all(|(a, b)| a.bytes == b.bytes && a.blocks == b.blocks && a.frames == b.frames)
}

/// Folds the inherited rows of every fork child in `reports` into its parent's rows (the
/// parent named by the child's FORK record, the latest process with that pid started before
/// the child). `reports` must be in start order, so that a parent comes before its children
/// and a grandchild's rows fold through its parent into the row that is shown.
pub fn fold_inherited(reports: &mut [Report]) {
    // Where each row is shown: (report, row), itself unless folded.
    let mut home: Vec<Vec<(usize, usize)>> = reports
        .iter()
        .enumerate()
        .map(|(i, report)| (0..report.leaks.len()).map(|row| (i, row)).collect())
        .collect();
    for child in 0..reports.len() {
        let Some(parent_pid) = reports[child].header.fork.as_ref().map(|fork| fork.parent_pid) else {
            continue;
        };
        // A pid may be reused within a long run: the parent is the latest one before.
        let Some(parent) = (0..child).rev().find(|&j| reports[j].header.process.pid == parent_pid) else {
            continue;
        };
        for row in 0..reports[child].leaks.len() {
            let leak = &reports[child].leaks[row];
            if let Some(matched) = reports[parent].leaks.iter().position(|p| same_leak(p, leak)) {
                home[child][row] = home[parent][matched];
            }
        }
    }
    for child in 0..reports.len() {
        let pid = reports[child].header.process.pid;
        let mut kept = Vec::new();
        let leaks = std::mem::take(&mut reports[child].leaks);
        for (row, leak) in leaks.into_iter().enumerate() {
            let (report, shown) = home[child][row];
            if (report, shown) == (child, row) {
                kept.push(leak);
                continue;
            }
            let folded = &mut reports[child].inherited_shown_elsewhere;
            folded.leaks += 1;
            folded.bytes += leak.bytes;
            folded.blocks += leak.blocks;
            let shown_in = reports[report].header.process.pid;
            if !folded.shown_in.contains(&shown_in) {
                folded.shown_in.push(shown_in);
            }
            // `report` < `child`: its rows are still in place (only later ones are taken).
            reports[report].leaks[shown].also_in.push(pid);
        }
        reports[child].leaks = kept;
    }
}

#[cfg(test)]
mod tests {
    use libleak_format::{AllocKind, ForkInfo, ProcessInfo};

    use super::*;
    use crate::model::{Class, Frame, FrameKind, GroupBy, Omitted, Owner, StackRow, Summary, Tally, TraceHeader};

    fn frame(function: &str, address: u64) -> Frame {
        Frame {
            kind: FrameKind::Native,
            function: Some(function.into()),
            file: None,
            line: None,
            module: Some("/usr/bin/prog".into()),
            inlined: false,
            address: Some(address),
            build_id_mismatch: false,
        }
    }

    fn leak(function: &str, bytes: u64, inherited: bool) -> Leak {
        let frames = vec![frame(function, 0x1000 + bytes)];
        Leak {
            class: Class::DefinitelyLost,
            bytes,
            blocks: 1,
            allocator: AllocKind::Malloc,
            frames: frames.clone(),
            stacks: vec![StackRow {
                bytes,
                blocks: 1,
                frames,
            }],
            classes: vec![(Class::DefinitelyLost, Tally { blocks: 1, bytes })],
            owner: Owner {
                frame: None,
                python: None,
            },
            runtime_leftover: false,
            import_once: false,
            inherited,
            also_in: Vec::new(),
            roots: Tally { blocks: 1, bytes },
            parts: Vec::new(),
            objects: Vec::new(),
            references: Default::default(),
            tests: None,
        }
    }

    fn report(pid: u32, forked_from: Option<u32>, leaks: Vec<Leak>) -> Report {
        Report {
            trace_path: format!("{pid}.trace"),
            header: TraceHeader {
                process: ProcessInfo {
                    pid,
                    ..ProcessInfo::default()
                },
                fork: forked_from.map(|parent_pid| ForkInfo {
                    parent_pid,
                    ..ForkInfo::default()
                }),
                ..TraceHeader::default()
            },
            summary: Summary::default(),
            group_by: GroupBy::Site,
            leaks,
            omitted: Omitted::default(),
            inherited_shown_elsewhere: Default::default(),
        }
    }

    /// Each report's rows as `pid: bytes[i][also in …]`.
    fn rows(reports: &[Report]) -> Vec<String> {
        reports
            .iter()
            .map(|r| {
                let rows: Vec<String> = r
                    .leaks
                    .iter()
                    .map(|l| format!("{}{}{:?}", l.bytes, if l.inherited { "i" } else { "" }, l.also_in))
                    .collect();
                format!("{}: {}", r.header.process.pid, rows.join(" "))
            })
            .collect()
    }

    #[test]
    fn only_identical_wholly_inherited_rows_match() {
        let parent = leak("leak", 777, false);
        assert!(same_leak(&parent, &leak("leak", 777, true)));
        // The child's own blocks at the same site: its own leak.
        assert!(!same_leak(&parent, &leak("leak", 777, false)));
        // Another stack, other bytes, another class, another block count: another finding.
        assert!(!same_leak(&parent, &leak("other", 777, true)));
        let mut fewer = leak("leak", 777, true);
        fewer.blocks = 2;
        fewer.stacks[0].blocks = 2;
        assert!(!same_leak(&parent, &fewer));
        let mut reclassified = leak("leak", 777, true);
        reclassified.class = Class::PossiblyLost;
        reclassified.classes[0].0 = Class::PossiblyLost;
        assert!(!same_leak(&parent, &reclassified));
        let mut moved = leak("leak", 777, true);
        moved.stacks[0].frames[0].address = Some(1);
        assert!(!same_leak(&parent, &moved));
    }

    #[test]
    fn inherited_rows_fold_into_the_parent_row_and_name_the_children() {
        let mut reports = vec![
            report(10, None, vec![leak("leak", 777, false), leak("freed", 100, false)]),
            report(11, Some(10), vec![leak("leak", 777, true)]),
            report(12, Some(10), vec![leak("own", 555, false), leak("leak", 777, true)]),
            // Not forked from 10 (a process it started with exec, say): nothing folds.
            report(13, None, vec![leak("leak", 777, true)]),
            // The grandchild's copy folds through 11 into 10's row.
            report(14, Some(11), vec![leak("leak", 777, true), leak("gone", 300, true)]),
        ];
        fold_inherited(&mut reports);
        assert_eq!(
            rows(&reports),
            [
                "10: 777[11, 12, 14] 100[]",
                "11: ",
                "12: 555[]",
                "13: 777i[]",
                // The parent does not report it (freed its copy): shown here, inherited.
                "14: 300i[]",
            ]
        );
        let folded: Vec<(u64, u64, Vec<u32>)> = reports
            .iter()
            .map(|r| {
                let f = &r.inherited_shown_elsewhere;
                (f.leaks, f.bytes, f.shown_in.clone())
            })
            .collect();
        assert_eq!(
            folded,
            [
                (0, 0, vec![]),
                (1, 777, vec![10]),
                (1, 777, vec![10]),
                (0, 0, vec![]),
                (1, 777, vec![10])
            ]
        );
    }

    #[test]
    fn the_parent_is_the_latest_process_of_its_pid_started_before_the_child() {
        let mut reports = vec![
            // An older process with the pid the parent reuses later: not the parent.
            report(10, None, vec![leak("leak", 777, false)]),
            report(10, None, vec![leak("else", 1, false)]),
            report(11, Some(10), vec![leak("leak", 777, true)]),
        ];
        fold_inherited(&mut reports);
        assert_eq!(rows(&reports), ["10: 777[]", "10: 1[]", "11: 777i[]"]);
    }
}
