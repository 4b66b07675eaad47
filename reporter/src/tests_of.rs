//! Which test allocated each row: a test runner (libleak's pytest plugin) marks each test's
//! start and end with `libleak_mark("test-start <nodeid>")` and `libleak_mark("test-end
//! <nodeid>")`, and a leaked block belongs to the test whose two marks bracket its sequence
//! number. Runs after [`group`](crate::group), over the rows it kept.
//!
//! Must never change a row's blocks, bytes or class, nor decide whether a block leaked: it
//! only says when the blocks already listed were allocated. A trace without test marks leaves
//! every row's `tests` at `None`, so reports of programs that are not test runs keep their
//! shape.

use std::collections::HashMap;

use libleak_format::Mark;

use crate::attribute::roles::Roles;
use crate::attribute::Attributed;
use crate::classify::{Keys, TallyKey};
use crate::group::{row_of_item, row_of_leak, RowKey};
use crate::model::{Leak, TestShare};
use crate::options::Options;
use crate::replay::Trace;

/// The label that opens a test, followed by its node id.
pub const TEST_START: &str = "test-start ";
/// The label that closes it.
pub const TEST_END: &str = "test-end ";

/// One test's stretch of the run: the events numbered `start <= seq < end`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestSpan {
    pub nodeid: String,
    pub start: u64,
    pub end: u64,
}

/// The tests the marks name, in order. A mark's number is above every event recorded
/// before it, so an event numbered at or above a start mark came after it. A test whose end
/// was never marked (the process died in it) runs to the end of the trace; an end without a
/// start is ignored.
pub fn spans(marks: &[Mark]) -> Vec<TestSpan> {
    let mut spans: Vec<TestSpan> = Vec::new();
    let mut open: Option<(String, u64)> = None;
    for mark in marks {
        if let Some(nodeid) = mark.label.strip_prefix(TEST_START) {
            if let Some((nodeid, start)) = open.take() {
                // The next test started: the previous one ended at least by then.
                spans.push(TestSpan {
                    nodeid,
                    start,
                    end: mark.seq,
                });
            }
            open = Some((nodeid.to_string(), mark.seq));
        } else if let Some(nodeid) = mark.label.strip_prefix(TEST_END) {
            if let Some((started, start)) = open.take() {
                if started == nodeid {
                    spans.push(TestSpan {
                        nodeid: started,
                        start,
                        end: mark.seq,
                    });
                } else {
                    open = Some((started, start));
                }
            }
        }
    }
    if let Some((nodeid, start)) = open {
        spans.push(TestSpan {
            nodeid,
            start,
            end: u64::MAX,
        });
    }
    spans.sort_by_key(|span| span.start);
    spans
}

/// The span holding event `seq`, if any.
fn span_of(spans: &[TestSpan], seq: u64) -> Option<usize> {
    let index = spans.partition_point(|span| span.start <= seq).checked_sub(1)?;
    (seq < spans[index].end).then_some(index)
}

/// Sets `tests` on every row of `leaks` when the trace marks tests; `listed` and `leaks` are
/// attribute's and group's output for this trace with these options.
pub fn attribute_tests(trace: &Trace, listed: &[Attributed], roles: &Roles, options: &Options, leaks: &mut [Leak]) {
    let spans = spans(&trace.marks);
    if spans.is_empty() {
        return;
    }
    let row_of_key: HashMap<RowKey, usize> = leaks
        .iter()
        .enumerate()
        .map(|(index, row)| (row_of_leak(row, roles, options.group_by), index))
        .collect();
    let mut row_of_count: HashMap<TallyKey, usize> = HashMap::new();
    for item in listed {
        // Rows past the limit are not shown, and so not attributed.
        if let Some(&row) = row_of_key.get(&row_of_item(item, roles, options.group_by)) {
            row_of_count.insert(item.tally.key(), row);
        }
    }
    let keys = Keys::new(trace);
    let mut shares: Vec<HashMap<usize, TestShare>> = vec![HashMap::new(); leaks.len()];
    for block in &trace.live {
        let key = keys.of(block);
        let (Some(&row), Some(span)) = (row_of_count.get(&key), span_of(&spans, block.seq)) else {
            continue;
        };
        let share = shares[row].entry(span).or_insert_with(|| TestShare {
            nodeid: spans[span].nodeid.clone(),
            bytes: 0,
            blocks: 0,
        });
        share.bytes += block.size;
        share.blocks += 1;
    }
    for (row, shares) in leaks.iter_mut().zip(shares) {
        let mut tests: Vec<TestShare> = shares.into_values().collect();
        tests.sort_by(|a, b| {
            b.bytes
                .cmp(&a.bytes)
                .then(b.blocks.cmp(&a.blocks))
                .then(a.nodeid.cmp(&b.nodeid))
        });
        row.tests = Some(tests);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(seq: u64, label: &str) -> Mark {
        Mark {
            seq,
            time_ns: seq,
            thread_id: 1,
            label: label.into(),
        }
    }

    #[test]
    fn marks_make_spans_and_events_fall_in_the_one_that_brackets_them() {
        let marks = [
            mark(5, "before anything"),
            mark(10, "test-start t.py::a"),
            mark(20, "test-end t.py::a"),
            mark(30, "test-start t.py::b"),
            // A stray end of another test does not close b.
            mark(35, "test-end t.py::other"),
            mark(40, "test-end t.py::b"),
            // Never ended: runs to the end of the trace.
            mark(50, "test-start t.py::c"),
        ];
        let spans = spans(&marks);
        let names: Vec<(&str, u64, u64)> = spans.iter().map(|s| (s.nodeid.as_str(), s.start, s.end)).collect();
        assert_eq!(
            names,
            [("t.py::a", 10, 20), ("t.py::b", 30, 40), ("t.py::c", 50, u64::MAX)]
        );
        let name = |seq| span_of(&spans, seq).map(|i| spans[i].nodeid.as_str());
        assert_eq!(name(9), None);
        assert_eq!(name(10), Some("t.py::a"));
        assert_eq!(name(19), Some("t.py::a"));
        assert_eq!(name(20), None);
        assert_eq!(name(29), None);
        assert_eq!(name(35), Some("t.py::b"));
        assert_eq!(name(40), None);
        assert_eq!(name(1 << 40), Some("t.py::c"));
        assert!(super::spans(&[mark(1, "label"), mark(2, "test-end x")]).is_empty());
    }
}
