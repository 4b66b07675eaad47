//! Who holds what a Python program keeps: the scan made when finalisation begins names, for
//! the blocks live then, the nearest module global or class attribute that reaches them. A
//! dict in a module global and a list in a class attribute, each filled by a loop, are held by
//! exactly those names, with the bytes and blocks the loop put there. On every interpreter
//! found.

use std::collections::HashMap;

use libleak_format::{Frame, Holder};
use libleak_reporter::replay::Trace;
use libleak_reporter::symbolize::holders::holder_name;
use libleak_reporter::symbolize::Symbolizer;
use libleak_tests::*;

const ROUNDS: u64 = 300;
const SCRIPT: &str = "\
_RESULTS = {}\n\
class Bus:\n    listeners = []\n\
def handle(i):\n    _RESULTS[i] = bytearray(1000)\n    Bus.listeners.append(bytearray(3000))\n\
for i in range(300):\n    handle(i)\n\
print('kept', len(_RESULTS), len(Bus.listeners))\n";

/// (bytes, blocks) held by each holder, by its name.
fn held_by_name(trace: &Trace) -> HashMap<String, (u64, u64)> {
    let holding = trace.holding.as_ref().expect("holders recorded at finalisation");
    let mut symbolizer = Symbolizer::default();
    let names: Vec<String> = holding
        .names
        .iter()
        .map(|holder| holder_name(trace, holder, &mut symbolizer))
        .collect();
    let mut totals: HashMap<String, (u64, u64)> = HashMap::new();
    for held in holding.by_stack().flat_map(|(_, held)| held) {
        let total = totals.entry(names[held.holder as usize - 1].clone()).or_default();
        total.0 += held.bytes;
        total.1 += held.blocks;
    }
    totals
}

#[test]
fn module_globals_and_class_attributes_hold_what_the_loop_kept() {
    for python in pythons() {
        let label = python.label();
        let scratch = Scratch::new(&format!("holders-{}.{}", python.version.0, python.version.1));
        std::fs::write(scratch.join("keep.py"), SCRIPT).unwrap();
        let trace_path = python.run_script_traced(&scratch, "keep.py", &label);
        let trace = Trace::open(&trace_path).unwrap();
        let holding = trace.holding.as_ref().expect("holders recorded");
        assert!(
            holding.names.contains(&Holder::Python("__main__._RESULTS".into())),
            "{label}: {:?}",
            holding.names
        );
        let held = held_by_name(&trace);
        let results = held.get("__main__._RESULTS").copied().unwrap_or_default();
        let listeners = held.get("__main__.Bus.listeners").copied().unwrap_or_default();
        // Each bytearray is an object block and a buffer block (`n + 1` bytes); the dict and
        // the list add their tables, the dict its integer keys. A stray block or two may be
        // named otherwise (see below): 2% of slack, no more.
        let at_least = |n: u64| n * 98 / 100;
        assert!(results.1 >= at_least(2 * ROUNDS), "{label}: _RESULTS holds {results:?}");
        assert!(
            results.0 >= at_least(ROUNDS * 1001) && results.0 < ROUNDS * (1001 + 300),
            "{label}: _RESULTS holds {results:?}"
        );
        assert!(
            listeners.1 >= at_least(2 * ROUNDS),
            "{label}: Bus.listeners holds {listeners:?}"
        );
        assert!(
            listeners.0 >= at_least(ROUNDS * 3001) && listeners.0 < ROUNDS * (3001 + 300),
            "{label}: Bus.listeners holds {listeners:?}"
        );
        // The blocks `handle` made are held by one of the two names: all but a stray few,
        // which a stale pointer the conservative scan met first may name otherwise.
        let in_handle = |stack: u64| {
            trace.stack(stack).iter().any(|node| match node.frame {
                Frame::Python { code_id, .. } => trace
                    .python_codes
                    .get(&code_id)
                    .is_some_and(|code| code.qualified_name == "handle"),
                _ => false,
            })
        };
        let mut handle_stacks = 0;
        for (stack, held) in holding.by_stack() {
            if !in_handle(stack) {
                continue;
            }
            handle_stacks += 1;
            let top = &holding.names[held[0].holder as usize - 1];
            let total: u64 = held.iter().map(|h| h.bytes).sum();
            assert!(
                *top == Holder::Python("__main__._RESULTS".into())
                    || *top == Holder::Python("__main__.Bus.listeners".into()),
                "{label}: a stack of handle() is held by {held:?} of {:?}",
                holding.names
            );
            assert!(held[0].bytes * 100 >= total * 95, "{label}: {held:?}");
        }
        assert!(handle_stacks >= 2, "{label}: {handle_stacks} stacks of handle() held");
    }
}
