//! Stage 6, group: the listed counts become rows (by site, stack or N frames), each with its
//! classes, distinct stacks and owner; rows are ranked (leaks first, largest first) and cut
//! at the limit.
//!
//! Must stay pure: it arranges what attribute decided and never decides again whether a block
//! leaked.

use std::collections::HashMap;

use crate::attribute::roles::Roles;
use crate::attribute::Attributed;
use crate::model::{Class, Frame, FrameKind, GroupBy, Leak, ObjectShare, Omitted, Owner, Part, StackRow, Tally};
use crate::options::Options;

/// The frames from the allocation to the owner (the innermost frame of the program or a
/// library outside the runtime), inclusive: a growth site's native part.
pub fn site_frames(frames: &[Frame], roles: &Roles) -> Vec<Frame> {
    frames
        .iter()
        .take(roles.owner(frames).map_or(1, |owner| owner + 1))
        .cloned()
        .collect()
}

/// The frames that decide which row a stack joins.
pub fn row_key(frames: &[Frame], roles: &Roles, group_by: GroupBy) -> Vec<Frame> {
    match group_by {
        GroupBy::Stack => frames.to_vec(),
        // The site is where the owner asked for the memory: an extension calling
        // `PyList_New` at two lines leaks twice, not once inside `PyList_New`; and a list
        // `PyList_New` made fresh or took from its free list (whose recorded stack starts at
        // the caller) leaks at the same site. The frames between are the runtime's.
        // Memory only the runtime allocated, for a Python line: that line.
        GroupBy::Site => {
            let at = roles
                .owner(frames)
                .or_else(|| frames.iter().position(|frame| frame.kind == FrameKind::Python))
                .unwrap_or(0);
            frames[at.min(frames.len())..].iter().take(1).map(line_of).collect()
        }
        GroupBy::Frames(n) => frames.iter().take(n).cloned().collect(),
    }
}

/// What makes a row: its class when its blocks did not leak (reachable blocks and garbage
/// awaiting collection make rows apart), whether the runtime left them, whether an import
/// made them once, whether they were inherited, and the frames [`row_key`] keeps.
pub type RowKey = (Option<Class>, bool, bool, bool, Vec<Frame>);

/// `class`, when it is no leak.
pub fn not_leaked(class: Class) -> Option<Class> {
    (!class.is_leak()).then_some(class)
}

/// The key of the row `item` joins.
pub fn row_of_item(item: &Attributed, roles: &Roles, group_by: GroupBy) -> RowKey {
    (
        not_leaked(Class::of(item.tally.class)),
        item.leftover,
        item.import_once,
        item.tally.inherited,
        row_key(item.judged_frames, roles, group_by),
    )
}

/// The key of a row `group` made.
pub fn row_of_leak(row: &Leak, roles: &Roles, group_by: GroupBy) -> RowKey {
    (
        not_leaked(row.class),
        row.runtime_leftover,
        row.import_once,
        row.inherited,
        row_key(&row.frames, roles, group_by),
    )
}

/// Counts blocks under `frames` in `stacks`. Stacks that differ only in frames the report
/// hides read the same: one stack.
fn add_stack(stacks: &mut Vec<StackRow>, frames: &[Frame], blocks: u64, bytes: u64) {
    match stacks.iter_mut().find(|s| s.frames == frames) {
        Some(existing) => {
            existing.bytes += bytes;
            existing.blocks += blocks;
        }
        None => stacks.push(StackRow {
            bytes,
            blocks,
            frames: frames.to_vec(),
        }),
    }
}

/// The owning frame of `frames` and the Python line that called it.
fn owner_of(frames: &[Frame], roles: &Roles) -> Owner {
    let owner = roles.owner(frames);
    Owner {
        frame: owner.map(|i| frames[i].clone()),
        python: roles.calling_python_line(frames, owner).map(|i| frames[i].clone()),
    }
}

/// Who allocated a part of a structure: as a row's owner, except for memory Python code
/// made (a Python frame inside the owning native frame), which its Python line made.
fn part_owner(frames: &[Frame], roles: &Roles) -> Owner {
    let owner = roles.owner(frames);
    let made_by_python = frames[..owner.unwrap_or(frames.len())]
        .iter()
        .find(|frame| frame.kind == FrameKind::Python);
    match made_by_python {
        Some(python) => Owner {
            frame: None,
            python: Some(line_of(python)),
        },
        None => owner_of(frames, roles),
    }
}

/// A frame as a row or part is keyed by: a Python frame is its line, whichever of the line's
/// instructions ran (a specializing interpreter runs a line's first calls through others).
fn line_of(frame: &Frame) -> Frame {
    match frame.kind {
        FrameKind::Python => Frame {
            address: None,
            ..frame.clone()
        },
        _ => frame.clone(),
    }
}

/// The rows to list, ranked and cut at `options.limit`, and what the cut left out;
/// `object_types` names the types of the counts' Python objects.
pub fn group(listed: &[Attributed], roles: &Roles, options: &Options, object_types: &[String]) -> (Vec<Leak>, Omitted) {
    let mut rows: Vec<Leak> = Vec::new();
    // A row is one leak: a site's lost blocks together, whatever holds each (a stale pointer
    // into one block makes it "possibly lost" without making it another leak). A fork child's
    // inherited blocks are kept apart from those it allocated itself: they are the parent's
    // leak, shown once for the whole process family (see `processes`). The blocks of a leaked
    // structure join its root's row, wherever they were allocated.
    let mut row_of: HashMap<RowKey, usize> = HashMap::new();
    for item in listed {
        let (blocks, bytes) = (item.tally.tally.blocks, item.tally.tally.bytes);
        let inherited = item.tally.inherited;
        let index = *row_of
            .entry(row_of_item(item, roles, options.group_by))
            .or_insert_with(|| {
                rows.push(Leak {
                    class: Class::of(item.tally.class),
                    bytes: 0,
                    blocks: 0,
                    allocator: item.tally.allocator,
                    frames: Vec::new(),
                    stacks: Vec::new(),
                    classes: Vec::new(),
                    owner: Owner {
                        frame: None,
                        python: None,
                    },
                    runtime_leftover: item.leftover,
                    import_once: item.import_once,
                    inherited,
                    also_in: Vec::new(),
                    roots: Tally::default(),
                    parts: Vec::new(),
                    objects: Vec::new(),
                    references: Default::default(),
                    tests: None,
                });
                rows.len() - 1
            });
        let row = &mut rows[index];
        row.bytes += bytes;
        row.blocks += blocks;
        let class = Class::of(item.tally.class);
        match row.classes.iter_mut().find(|(c, _)| *c == class) {
            Some((_, tally)) => tally.add(blocks, bytes),
            None => row.classes.push((class, Tally { blocks, bytes })),
        }
        row.references.add(item.tally.references);
        let type_name = item.tally.object_type.and_then(|t| object_types.get(t as usize));
        if let Some(type_name) = type_name {
            ObjectShare::add_to(&mut row.objects, type_name, blocks, bytes);
        }
        if item.tally.part_of.is_some() {
            let frames = row_key(item.frames, roles, GroupBy::Site);
            let owner = part_owner(item.frames, roles);
            let part = match row
                .parts
                .iter_mut()
                .position(|p| p.frames == frames && p.owner == owner)
            {
                Some(at) => &mut row.parts[at],
                None => {
                    row.parts.push(Part {
                        frames,
                        owner,
                        class,
                        bytes: 0,
                        blocks: 0,
                        objects: Vec::new(),
                        stacks: Vec::new(),
                    });
                    row.parts.last_mut().expect("just pushed")
                }
            };
            part.bytes += bytes;
            part.blocks += blocks;
            part.class = part.class.min(class);
            if let Some(type_name) = type_name {
                ObjectShare::add_to(&mut part.objects, type_name, blocks, bytes);
            }
            add_stack(&mut part.stacks, item.frames, blocks, bytes);
            if row.frames.is_empty() {
                // Read when the root itself is not listed here.
                row.frames = item.judged_frames.to_vec();
            }
            continue;
        }
        row.roots.add(blocks, bytes);
        add_stack(&mut row.stacks, item.frames, blocks, bytes);
    }
    for row in &mut rows {
        ObjectShare::rank(&mut row.objects);
        row.parts
            .sort_by(|a, b| b.bytes.cmp(&a.bytes).then(b.blocks.cmp(&a.blocks)));
        for part in &mut row.parts {
            ObjectShare::rank(&mut part.objects);
            part.stacks
                .sort_by(|a, b| b.bytes.cmp(&a.bytes).then(b.blocks.cmp(&a.blocks)));
        }
        row.classes.sort_by_key(|(class, _)| *class);
        // The row reads as its most serious class.
        row.class = row.classes[0].0;
        row.stacks
            .sort_by(|a, b| b.bytes.cmp(&a.bytes).then(b.blocks.cmp(&a.blocks)));
        if let Some(largest) = row.stacks.first() {
            row.frames = largest.frames.clone();
        }
        row.owner = owner_of(&row.frames, roles);
    }
    let is_leak = |row: &Leak| row.is_listed_leak();
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
    let omitted = Omitted {
        leaks: rest.len() as u64,
        bytes: rest.iter().map(|r| r.bytes).sum(),
        blocks: rest.iter().map(|r| r.blocks).sum(),
    };
    (rows, omitted)
}

#[cfg(test)]
mod tests {
    use libleak_format::{AllocKind, LeakClass};

    use super::*;
    use crate::classify::StackTally;

    fn roles() -> Roles {
        Roles {
            executable: "/usr/bin/prog".into(),
            python: false,
        }
    }

    fn frame(function: &str, module: &str) -> Frame {
        Frame::native_in(function, module)
    }

    const LIBC: &str = "/lib/x86_64-linux-gnu/libc.so.6";
    const PROG: &str = "/usr/bin/prog";

    fn stacks() -> Vec<Vec<Frame>> {
        vec![
            // 0 and 1: `parse` calls strdup from two callers (one site, two stacks).
            vec![frame("strdup", LIBC), frame("parse", PROG), frame("main_a", PROG)],
            vec![frame("strdup", LIBC), frame("parse", PROG), frame("main_b", PROG)],
            // 2: another owner through the same libc function.
            vec![frame("strdup", LIBC), frame("load", PROG)],
        ]
    }

    fn tally(stack: u64, class: Option<LeakClass>, blocks: u64, bytes: u64) -> StackTally {
        StackTally {
            stack,
            class,
            during_finalization: false,
            inherited: false,
            part_of: None,
            object_type: None,
            references: Default::default(),
            dead_objects: false,
            native_reference: false,
            tally: Tally { blocks, bytes },
            allocator: AllocKind::Malloc,
            import_once: false,
        }
    }

    fn listed<'a>(tallies: &'a [StackTally], stacks: &'a [Vec<Frame>]) -> Vec<Attributed<'a>> {
        tallies
            .iter()
            .map(|t| Attributed {
                tally: t,
                frames: &stacks[t.stack as usize],
                judged_frames: &stacks[t.stack as usize],
                reachable: t.class == Some(LeakClass::Reachable),
                leftover: false,
                import_once: false,
            })
            .collect()
    }

    fn options(group_by: GroupBy, limit: usize) -> Options {
        Options {
            group_by,
            limit,
            ..Options::with_suppressions(Vec::new())
        }
    }

    /// Each row as `functions of its frames: blocks/bytes in N stacks`.
    fn rows(leaks: &[Leak]) -> Vec<String> {
        leaks
            .iter()
            .map(|leak| {
                let names: Vec<&str> = leak.frames.iter().filter_map(|f| f.function.as_deref()).collect();
                format!(
                    "{} {}: {}/{} in {} stacks",
                    leak.class.name(),
                    names.join(">"),
                    leak.blocks,
                    leak.bytes,
                    leak.stacks.len()
                )
            })
            .collect()
    }

    fn lost() -> Option<LeakClass> {
        Some(LeakClass::DefinitelyLost)
    }

    #[test]
    fn rows_by_site_stack_or_innermost_frames() {
        let stacks = stacks();
        let tallies = [
            tally(0, lost(), 1, 10),
            tally(1, lost(), 2, 30),
            tally(2, lost(), 1, 100),
        ];
        let listed = listed(&tallies, &stacks);
        let (by_site, _) = group(&listed, &roles(), &options(GroupBy::Site, 0), &[]);
        assert_eq!(
            rows(&by_site),
            [
                "definitely-lost strdup>load: 1/100 in 1 stacks",
                "definitely-lost strdup>parse>main_b: 3/40 in 2 stacks"
            ]
        );
        assert_eq!(by_site[1].stacks[0].bytes, 30, "largest stack first");
        let owner = by_site[1].owner.frame.as_ref().and_then(|f| f.function.as_deref());
        assert_eq!(owner, Some("parse"));
        assert!(by_site[1].owner.python.is_none());

        let (by_stack, _) = group(&listed, &roles(), &options(GroupBy::Stack, 0), &[]);
        assert_eq!(
            rows(&by_stack),
            [
                "definitely-lost strdup>load: 1/100 in 1 stacks",
                "definitely-lost strdup>parse>main_b: 2/30 in 1 stacks",
                "definitely-lost strdup>parse>main_a: 1/10 in 1 stacks"
            ]
        );
        let (by_one, _) = group(&listed, &roles(), &options(GroupBy::Frames(1), 0), &[]);
        assert_eq!(rows(&by_one), ["definitely-lost strdup>load: 4/140 in 3 stacks"]);
    }

    #[test]
    fn a_row_reads_as_its_most_serious_class_and_leaks_rank_first() {
        let stacks = stacks();
        let tallies = [
            tally(0, Some(LeakClass::PossiblyLost), 1, 5),
            tally(0, None, 1, 5),
            tally(1, Some(LeakClass::IndirectlyLost), 1, 5),
            // Reachable blocks of the same site form a row of their own, after every leak
            // however large.
            tally(1, Some(LeakClass::Reachable), 9, 9000),
            tally(2, Some(LeakClass::PossiblyLost), 1, 1),
        ];
        let listed = listed(&tallies, &stacks);
        let (leaks, omitted) = group(&listed, &roles(), &options(GroupBy::Site, 0), &[]);
        assert_eq!(
            rows(&leaks),
            [
                "indirectly-lost strdup>parse>main_a: 3/15 in 2 stacks",
                "possibly-lost strdup>load: 1/1 in 1 stacks",
                "reachable strdup>parse>main_b: 9/9000 in 1 stacks"
            ]
        );
        let classes: Vec<(Class, u64)> = leaks[0].classes.iter().map(|(c, t)| (*c, t.blocks)).collect();
        assert_eq!(
            classes,
            [
                (Class::IndirectlyLost, 1),
                (Class::Unclassified, 1),
                (Class::PossiblyLost, 1)
            ]
        );
        assert_eq!(omitted, Omitted::default());
    }

    #[test]
    fn inherited_blocks_and_the_childs_own_make_separate_rows() {
        let stacks = stacks();
        let inherited = |stack, bytes| StackTally {
            inherited: true,
            ..tally(stack, lost(), 1, bytes)
        };
        // Site `parse`: one inherited block and one the child allocated itself (two rows); site
        // `load`: an inherited block only.
        let tallies = [inherited(0, 10), tally(1, lost(), 1, 20), inherited(2, 100)];
        let listed = listed(&tallies, &stacks);
        let (leaks, _) = group(&listed, &roles(), &options(GroupBy::Site, 0), &[]);
        let flags: Vec<(u64, bool)> = leaks.iter().map(|l| (l.bytes, l.inherited)).collect();
        assert_eq!(flags, [(100, true), (20, false), (10, true)]);
        assert!(leaks.iter().all(|l| l.also_in.is_empty()));
    }

    #[test]
    fn the_limit_cuts_the_smallest_rows_and_counts_them() {
        let stacks = stacks();
        let tallies = [
            tally(0, lost(), 1, 10),
            tally(1, lost(), 2, 30),
            tally(2, lost(), 4, 100),
        ];
        let listed = listed(&tallies, &stacks);
        let (leaks, omitted) = group(&listed, &roles(), &options(GroupBy::Stack, 1), &[]);
        assert_eq!(rows(&leaks), ["definitely-lost strdup>load: 4/100 in 1 stacks"]);
        assert_eq!(
            omitted,
            Omitted {
                leaks: 2,
                bytes: 40,
                blocks: 3
            }
        );
    }
}
