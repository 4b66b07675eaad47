//! Stage 5, attribute: decides, for each (stack, class) count, whether it is reachable, left
//! by the runtime alone ([`roles`]), suppressed ([`suppress`]) or a leak, and sums the report's
//! summary from those decisions.
//!
//! Must stay pure: decisions from the merged frames and the options only, never from files.

pub mod roles;
pub mod suppress;
pub mod wrappers;

use std::collections::HashMap;

use libleak_format::LeakClass;

use crate::classify::StackTally;
use crate::model::{Frame, FrameKind, Summary};
use crate::options::Options;
use roles::Roles;

/// A count the report lists as (part of) a row, with the judgement that decides its row.
#[derive(Clone, Debug)]
pub struct Attributed<'a> {
    pub tally: &'a StackTally,
    pub frames: &'a [Frame],
    /// The frames that answer for the count: its structure's root's when it is part of
    /// another block's structure (see [`StackTally::part_of`]), else `frames`.
    pub judged_frames: &'a [Frame],
    pub reachable: bool,
    /// Allocated by the runtime alone.
    pub leftover: bool,
    /// One-time set-up of an imported module (see [`StackTally::import_once`]).
    pub import_once: bool,
}

/// Whether Python code ran when the blocks were allocated: the interpreter's own set-up, with
/// no Python frame, answers for what it keeps alive.
fn made_by_python(frames: &[Frame]) -> bool {
    frames.iter().any(|frame| frame.kind == FrameKind::Python)
}

/// The summary of every count, and the counts to list (in the order of `tallies`).
/// `ended_by_exec`: the process replaced its image (see [`Summary::released_by_exec`]).
/// `child_ended_unjudged`: a child of a traced process that ended before its exit scan (see
/// [`Summary::unjudged`]).
pub fn attribute<'a>(
    tallies: &'a [StackTally],
    merged: &'a HashMap<u64, Vec<Frame>>,
    roles: &Roles,
    options: &Options,
    ended_by_exec: bool,
    child_ended_unjudged: bool,
) -> (Summary, Vec<Attributed<'a>>) {
    let mut summary = Summary::default();
    let mut shown = Vec::new();
    for tally in tallies {
        let frames = merged.get(&tally.stack).map_or(&[][..], Vec::as_slice);
        // A part of a leaked structure leaks because its root does, whoever allocated it.
        let judged_frames = merged.get(&tally.judged_stack()).map_or(frames, Vec::as_slice);
        let (blocks, bytes) = (tally.tally.blocks, tally.tally.bytes);
        // Garbage awaiting collection is no leak either, nor what an exec released.
        let released = ended_by_exec && tally.class.is_none() && !tally.unjudged_inheritance();
        let reachable = matches!(tally.class, Some(LeakClass::Reachable | LeakClass::Collectable));
        // What the runtime allocated while shutting down is its own, whatever the stack, and
        // so are dead objects a free list keeps. An object Python code made is the runtime's
        // too, unless native code keeps it alive (see [`StackTally::native_reference`]).
        let leftover = !reachable
            && (tally.during_finalization
                || tally.dead_objects
                || (!(tally.native_reference && made_by_python(judged_frames))
                    && roles.is_runtime_leftover(judged_frames)));
        let listed = if tally.unjudged_inheritance() {
            summary.inherited_unjudged.add(blocks, bytes);
            false
        } else if released {
            summary.released_by_exec.add(blocks, bytes);
            options.show_reachable
        } else if child_ended_unjudged && tally.class.is_none() {
            summary.unjudged.add(blocks, bytes);
            options.show_unjudged
        } else if reachable {
            if tally.class == Some(LeakClass::Collectable) {
                summary.collectable.add(blocks, bytes);
            } else {
                summary.reachable.add(blocks, bytes);
            }
            options.show_reachable
        } else if leftover {
            summary.runtime_leftovers.add(blocks, bytes);
            options.show_leftovers
        } else if suppress::matching(&options.suppressions, judged_frames).is_some() {
            summary.suppressed.add(blocks, bytes);
            false
        } else if tally.import_once {
            summary.import_once.add(blocks, bytes);
            options.show_leftovers
        } else {
            match tally.class {
                Some(LeakClass::DefinitelyLost) => summary.definitely_lost.add(blocks, bytes),
                Some(LeakClass::IndirectlyLost) => summary.indirectly_lost.add(blocks, bytes),
                Some(LeakClass::PossiblyLost) => summary.possibly_lost.add(blocks, bytes),
                Some(LeakClass::Reachable | LeakClass::Collectable) | None => summary.unclassified.add(blocks, bytes),
            }
            true
        };
        if listed {
            shown.push(Attributed {
                tally,
                frames,
                judged_frames,
                reachable: reachable || released,
                leftover,
                import_once: tally.import_once && !reachable && !leftover,
            });
        }
    }
    (summary, shown)
}

#[cfg(test)]
mod tests {
    use libleak_format::AllocKind;

    use super::*;
    use crate::model::Tally;
    use crate::options::Suppression;

    fn frame(function: &str, module: &str) -> Frame {
        Frame::native_in(function, module)
    }

    #[test]
    fn each_count_is_reachable_a_leftover_suppressed_or_a_leak() {
        const LIBC: &str = "/lib/x86_64-linux-gnu/libc.so.6";
        let merged: HashMap<u64, Vec<Frame>> = [
            (1, vec![frame("malloc_helper", LIBC), frame("parse", "/usr/bin/prog")]),
            (2, vec![frame("_dl_allocate_tls", LIBC)]),
            (
                3,
                vec![frame("cache_init", "/usr/lib/libfoo.so"), frame("x", "/usr/bin/prog")],
            ),
            (4, Vec::new()),
        ]
        .into_iter()
        .collect();
        let count = |stack, class, blocks| StackTally {
            stack,
            class,
            during_finalization: false,
            inherited: false,
            part_of: None,
            object_type: None,
            references: Default::default(),
            dead_objects: false,
            native_reference: false,
            tally: Tally {
                blocks,
                bytes: blocks * 10,
            },
            allocator: AllocKind::Malloc,
            import_once: false,
        };
        let tallies = [
            count(1, Some(LeakClass::DefinitelyLost), 1),
            count(1, Some(LeakClass::Reachable), 2),
            count(1, None, 3),
            count(2, Some(LeakClass::DefinitelyLost), 4),
            count(3, Some(LeakClass::PossiblyLost), 5),
            // No stack (a signal handler's block): anyone's, so never a leftover.
            count(4, Some(LeakClass::IndirectlyLost), 6),
            // Inherited by a fork child that ended before its exit scan: its parent's to judge.
            StackTally {
                inherited: true,
                ..count(1, None, 7)
            },
            // Inherited and judged by the child's scan: a leak like any other.
            StackTally {
                inherited: true,
                ..count(1, Some(LeakClass::DefinitelyLost), 8)
            },
            // Lost set-up an import made once: neither listed nor leaked by default.
            StackTally {
                import_once: true,
                ..count(1, Some(LeakClass::DefinitelyLost), 9)
            },
        ];
        let roles = Roles {
            executable: "/usr/bin/prog".into(),
            python: false,
        };
        let mut options = Options::with_suppressions(vec![Suppression {
            pattern: "libfoo".into(),
            origin: "test".into(),
        }]);
        let (summary, listed) = attribute(&tallies, &merged, &roles, &options, false, false);
        let tally = |blocks| Tally {
            blocks,
            bytes: blocks * 10,
        };
        assert_eq!(summary.definitely_lost, tally(1 + 8));
        assert_eq!(summary.inherited_unjudged, tally(7));
        assert_eq!(summary.reachable, tally(2));
        assert_eq!(summary.unclassified, tally(3));
        assert_eq!(summary.runtime_leftovers, tally(4));
        assert_eq!(summary.suppressed, tally(5));
        assert_eq!(summary.indirectly_lost, tally(6));
        assert_eq!(summary.possibly_lost, Tally::default());
        assert_eq!(summary.import_once, tally(9));
        assert_eq!(summary.leaked_bytes(), (1 + 8 + 3 + 6) * 10);
        let blocks: Vec<u64> = listed.iter().map(|a| a.tally.tally.blocks).collect();
        assert_eq!(blocks, [1, 3, 6, 8]);

        options.show_reachable = true;
        options.show_leftovers = true;
        let (_, listed) = attribute(&tallies, &merged, &roles, &options, false, false);
        let flags: Vec<(u64, bool, bool, bool)> = listed
            .iter()
            .map(|a| (a.tally.tally.blocks, a.reachable, a.leftover, a.import_once))
            .collect();
        assert_eq!(
            flags,
            [
                (1, false, false, false),
                (2, true, false, false),
                (3, false, false, false),
                (4, false, true, false),
                (6, false, false, false),
                (8, false, false, false),
                (9, false, false, true)
            ]
        );

        // A forked child that ended before its exit scan: what it allocated itself (no
        // class) is not judged, one summary line unless asked for, and no leak.
        options.show_reachable = false;
        options.show_leftovers = false;
        let (summary, listed) = attribute(&tallies, &merged, &roles, &options, false, true);
        assert_eq!(summary.unjudged, tally(3));
        assert_eq!(summary.unclassified, Tally::default());
        assert_eq!(summary.inherited_unjudged, tally(7));
        assert_eq!(summary.leaked_bytes(), (1 + 8 + 6) * 10);
        let blocks: Vec<u64> = listed.iter().map(|a| a.tally.tally.blocks).collect();
        assert_eq!(blocks, [1, 6, 8]);
        options.show_unjudged = true;
        let (_, listed) = attribute(&tallies, &merged, &roles, &options, false, true);
        let blocks: Vec<u64> = listed.iter().map(|a| a.tally.tally.blocks).collect();
        assert_eq!(blocks, [1, 3, 6, 8]);
    }
}
