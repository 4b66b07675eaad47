//! A forked child's replay takes in what its parent's held at the fork: the blocks live then,
//! with their stacks imported under ids of the child's own and the code objects they use.
//!
//! Must never read a trace: the parent's replay is handed over (see [`super::Inheritance`]).

use std::collections::HashMap;

use libleak_format::Frame;

use super::Replay;
use crate::live::{AtFinalization, ExitBlock};
use crate::replay::{find_module, StackNode, IMPORTED_NODES};

/// A parent's node ids → the ids their imports got in a child's replay: by index for the
/// parent's own ids (dense, from 1) up to [`ImportedIds::DENSE`], hashed beyond (ids a
/// damaged trace skipped to, and the few a parent imported itself).
#[derive(Default)]
struct ImportedIds {
    dense: Vec<u64>,
    sparse: HashMap<u64, u64>,
}

impl ImportedIds {
    const DENSE: u64 = 1 << 24;

    fn get(&self, id: u64) -> Option<u64> {
        if id < Self::DENSE {
            self.dense.get(id as usize).copied().filter(|&imported| imported != 0)
        } else {
            self.sparse.get(&id).copied()
        }
    }

    fn insert(&mut self, id: u64, imported: u64) {
        if id < Self::DENSE {
            let index = id as usize;
            if index >= self.dense.len() {
                self.dense.resize(index + 1, 0);
            }
            self.dense[index] = imported;
        } else {
            self.sparse.insert(id, imported);
        }
    }
}

impl Replay {
    /// Takes in the blocks a forked child inherited, live in its parent at the fork, with
    /// their stacks (imported under ids of their own, [`IMPORTED_NODES`] and up) and the code
    /// objects those refer to.
    pub(super) fn inherit(&mut self, parent: &Replay) {
        if self.next_imported_node == 0 {
            self.next_imported_node = IMPORTED_NODES;
        }
        let mut imported = ImportedIds::default();
        self.inherited.reserve(parent.live.totals().live_blocks as usize);
        // The parent's own inheritance too, when it was a forked child.
        let parents_inherited: Vec<(u64, ExitBlock)> = parent.inherited_live().collect();
        let mut take = |replay: &mut Replay, address: u64, block: &ExitBlock| {
            let stack = replay.import_stack(parent, block.stack, &mut imported);
            // What the parent's own finalisation scan said is no concern of the child's.
            let at_finalization = AtFinalization::NotLive;
            replay.inherited.push((
                address,
                ExitBlock {
                    stack,
                    at_finalization,
                    ..*block
                },
            ));
        };
        for (address, block) in &parents_inherited {
            take(self, *address, block);
        }
        parent.live.for_each_live(|address, block| take(self, address, block));
    }

    /// Takes in the address and size of each block a forked child inherited (see
    /// [`Replay::inherited_counted`]).
    pub(super) fn inherit_counts(&mut self, parent: &Replay) {
        self.inherited_counted
            .reserve(parent.live.totals().live_blocks as usize);
        for (address, block) in parent.inherited_live() {
            self.inherited_counted.push((address, block.size));
        }
        let counted = &mut self.inherited_counted;
        parent
            .live
            .for_each_live(|address, block| counted.push((address, block.size)));
    }

    /// The inherited blocks still live: those whose addresses this trace's events never name.
    pub(super) fn inherited_live(&self) -> impl Iterator<Item = (u64, ExitBlock)> + '_ {
        self.inherited
            .iter()
            .filter(|(address, _)| !self.live.has_events_at(*address))
            .copied()
    }

    /// The id in this replay of node `id` of `parent`'s, importing it and its callers first.
    fn import_stack(&mut self, parent: &Replay, id: u64, imported: &mut ImportedIds) -> u64 {
        if let Some(known) = imported.get(id) {
            return known;
        }
        let mut chain = Vec::new();
        let mut at = id;
        while at != 0 && imported.get(at).is_none() {
            let Some(node) = parent.nodes.get(at) else { break };
            chain.push((at, node));
            at = node.parent;
        }
        // The outermost node not imported: 0, an imported one, or one the parent lost.
        let mut caller = imported.get(at).unwrap_or(0);
        if at != 0 && caller == 0 {
            caller = self.next_imported_node;
            self.next_imported_node += 1;
            self.nodes.insert(caller, StackNode::LOST);
            imported.insert(at, caller);
        }
        for (parent_id, node) in chain.into_iter().rev() {
            let module = match node.frame {
                Frame::Native { address } => find_module(&self.modules, address),
                Frame::Python { code_id, .. } => {
                    if let (false, Some(code)) = (
                        self.python_codes.contains_key(&code_id),
                        parent.python_codes.get(&code_id),
                    ) {
                        self.python_codes.insert(code_id, code.clone());
                    }
                    None
                }
                Frame::PythonEntry => None,
            };
            let id = self.next_imported_node;
            self.next_imported_node += 1;
            self.nodes.insert(id, StackNode::new(caller, node.frame, module));
            imported.insert(parent_id, id);
            caller = id;
        }
        caller
    }
}
