//! Marks: a program names points of its run with `libleak_mark` (from Python through
//! `ctypes.CDLL(None)`), and the trace places each exactly among the events: the blocks
//! allocated between two marks are those the code between them allocated. On every
//! interpreter found.

use libleak_reporter::replay::Trace;
use libleak_tests::*;

const SCRIPT: &str = "\
import ctypes\n\
try:\n    mark = ctypes.CDLL(None).libleak_mark\n\
except AttributeError:\n    mark = lambda label: 0\n\
first = mark(b'before the loop')\n\
kept = [bytearray(4321) for _ in range(10)]\n\
second = mark('after the loop \\u00e9'.encode())\n\
print(first, second, flush=True)\n\
import os\n\
os._exit(0)\n";

#[test]
fn marks_are_recorded_in_order_around_the_events_between_them() {
    for python in pythons() {
        let label = python.label();
        let scratch = Scratch::new(&format!("marks-{}.{}", python.version.0, python.version.1));
        std::fs::write(scratch.join("marks.py"), SCRIPT).unwrap();
        let trace = Trace::open(&python.run_script_traced(&scratch, "marks.py", &label)).unwrap();
        let labels: Vec<&str> = trace.marks.iter().map(|m| m.label.as_str()).collect();
        assert_eq!(labels, ["before the loop", "after the loop é"], "{label}");
        let (before, after) = (&trace.marks[0], &trace.marks[1]);
        assert!(
            before.seq < after.seq && before.time_ns <= after.time_ns,
            "{label}: {:?}",
            trace.marks
        );
        // Each bytearray's buffer is one block of 4,322 bytes, live at exit (`kept`: the
        // script ends by `os._exit`, before finalisation would free it).
        let between = |size: u64| {
            trace
                .live
                .iter()
                .filter(|b| b.size == size && b.seq > before.seq && b.seq < after.seq)
                .count()
        };
        assert_eq!(between(4322), 10, "{label}");
        let outside = trace.live.iter().filter(|b| b.size == 4322).count();
        assert_eq!(outside, 10, "{label}: no such block outside the marks");
    }
}
