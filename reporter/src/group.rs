//! Stage 6, group: the listed counts become rows (by site, stack or N frames), each with its
//! classes, distinct stacks and owner; rows are ranked (leaks first, largest first) and cut
//! at the limit.
//!
//! Must stay pure: it arranges what attribute decided and never decides again whether a block
//! leaked.

use std::collections::HashMap;

use crate::attribute::roles::Roles;
use crate::attribute::Attributed;
use crate::model::{Class, Frame, GroupBy, Leak, Omitted, Owner, StackRow, Tally};
use crate::options::Options;

/// The frames that decide which row a stack joins.
fn row_key(frames: &[Frame], roles: &Roles, group_by: GroupBy) -> Vec<Frame> {
    match group_by {
        GroupBy::Stack => frames.to_vec(),
        // The site is where the owner asked for the memory: an extension calling
        // `PyList_New` at two lines leaks twice, not once inside `PyList_New`.
        GroupBy::Site => frames
            .iter()
            .take(roles.owner(frames).map_or(1, |owner| owner + 1))
            .cloned()
            .collect(),
        GroupBy::Frames(n) => frames.iter().take(n).cloned().collect(),
    }
}

/// The rows to list, ranked and cut at `options.limit`, and what the cut left out.
pub fn group(listed: &[Attributed], roles: &Roles, options: &Options) -> (Vec<Leak>, Omitted) {
    let mut rows: Vec<Leak> = Vec::new();
    // A row is one leak: a site's lost blocks together, whatever holds each (a stale pointer
    // into one block makes it "possibly lost" without making it another leak).
    let mut row_of: HashMap<(bool, bool, Vec<Frame>), usize> = HashMap::new();
    for item in listed {
        let (blocks, bytes) = (item.tally.tally.blocks, item.tally.tally.bytes);
        let key = row_key(item.frames, roles, options.group_by);
        let index = *row_of.entry((item.reachable, item.leftover, key)).or_insert_with(|| {
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
        // Stacks that differ only in frames the report hides read the same: one stack.
        match row.stacks.iter_mut().find(|s| s.frames == item.frames) {
            Some(existing) => {
                existing.bytes += bytes;
                existing.blocks += blocks;
            }
            None => row.stacks.push(StackRow {
                bytes,
                blocks,
                frames: item.frames.to_vec(),
            }),
        }
    }
    for row in &mut rows {
        row.classes.sort_by_key(|(class, _)| *class);
        // The row reads as its most serious class.
        row.class = row.classes[0].0;
        row.stacks
            .sort_by(|a, b| b.bytes.cmp(&a.bytes).then(b.blocks.cmp(&a.blocks)));
        row.frames = row.stacks.first().map(|s| s.frames.clone()).unwrap_or_default();
        let owner = roles.owner(&row.frames);
        row.owner = Owner {
            frame: owner.map(|i| row.frames[i].clone()),
            python: roles
                .calling_python_line(&row.frames, owner)
                .map(|i| row.frames[i].clone()),
        };
    }
    let is_leak = |row: &Leak| row.class.is_leak() && !row.runtime_leftover;
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
