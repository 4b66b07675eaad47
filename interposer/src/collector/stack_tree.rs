//! Stack interning: every distinct stack is a path in a prefix tree whose nodes are written
//! to the trace once each (STACK_NODE records), so an allocation names its stack with one
//! node id. Consecutive events of a thread share most of their outer frames; the previous
//! stack's path is kept so that only the frames after the shared part are looked up.
//!
//! Must never hand out a node id that the trace has not defined, and never reuse a node for
//! an address whose module went away (another object may be loaded there).

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use libleak_format::live::AddressHasher;
use libleak_format::RecordEncoder;

use super::modules::ModuleMap;
use crate::stack_words;

/// The node table holds at most this many nodes, 7/8 of 2^20 buckets (17 MiB): when full it
/// is emptied, and the nodes met again are defined again, with new ids. A program whose
/// stacks make millions of distinct nodes (interleaved Python frames at every line of deep
/// import chains) would otherwise grow the table, and the old and the new table side by side
/// while it grows, to a hundred MiB and more.
const MOST_NODES: usize = 917_504;

/// A stack node's parent and frame word in 12 bytes, so that an entry of the node table is
/// 16: with hundreds of thousands of nodes the table is the collector's largest structure
/// (see docs/benchmarks.md, "Collector memory").
#[derive(Clone, Copy, PartialEq, Eq)]
struct NodeKey {
    word: [u32; 2],
    parent: u32,
}

impl NodeKey {
    /// `None` for a parent id past `u32::MAX` (never met: 4 G nodes would not fit in memory).
    fn new(parent: u64, word: u64) -> Option<NodeKey> {
        Some(NodeKey {
            word: [word as u32, (word >> 32) as u32],
            parent: u32::try_from(parent).ok()?,
        })
    }

    fn parent_and_word(self) -> (u64, u64) {
        (
            u64::from(self.parent),
            u64::from(self.word[0]) | u64::from(self.word[1]) << 32,
        )
    }
}

impl std::hash::Hash for NodeKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let (parent, word) = self.parent_and_word();
        state.write_u64(word);
        state.write_u64(parent);
    }
}

pub struct StackTree {
    /// (parent node, frame word) → node id.
    nodes: HashMap<NodeKey, u32, BuildHasherDefault<AddressHasher>>,
    /// [`MOST_NODES`], but in tests.
    most_nodes: usize,
    /// While set (in a forked child), the code ids of the Python frames of nodes defined,
    /// for the collector to write the code objects this trace does not have yet.
    noting_codes: bool,
    noted_codes: Vec<u64>,
    /// The previous stack interned (outermost first), whose outer words the next event may
    /// share, and the node ids of its outer part, depth by depth (all of them, but after a
    /// module went away or a fork).
    previous_frames: Vec<u64>,
    previous_nodes: Vec<u64>,
}

impl Default for StackTree {
    fn default() -> Self {
        StackTree {
            nodes: HashMap::default(),
            most_nodes: MOST_NODES,
            noting_codes: false,
            noted_codes: Vec::new(),
            previous_frames: Vec::new(),
            previous_nodes: Vec::new(),
        }
    }
}

impl StackTree {
    /// Returns the node id of the innermost frame of the stack made of `new_frames` (stack
    /// words, innermost first) inside the outermost `shared` words of the previous stack
    /// interned, defining the nodes the trace does not have yet. A native frame no known
    /// module holds makes `modules` rescan the loader first.
    pub fn intern(
        &mut self,
        shared: usize,
        new_frames: &[u64],
        encoder: &mut RecordEncoder,
        modules: &mut ModuleMap,
    ) -> u64 {
        if shared == 0 && new_frames.is_empty() {
            // No stack (a signal handler's allocation, handed on later): the thread's previous
            // stack is still the one its next event may share words with.
            return 0;
        }
        let (shared, new_frames) = if shared == 0 {
            // A whole stack (the first of its batch): its outer words are compared here.
            let shared = new_frames
                .iter()
                .rev()
                .zip(&self.previous_frames)
                .take_while(|(a, b)| a == b)
                .count();
            (shared, &new_frames[..new_frames.len() - shared])
        } else {
            // More than the previous stack had cannot happen (see `crate::batch`); were it to,
            // the stack is cut short rather than the collector stopped.
            (shared.min(self.previous_frames.len()), new_frames)
        };
        self.previous_frames.truncate(shared);
        self.previous_frames.extend(new_frames.iter().rev());
        // The shared part's nodes are known unless a module went away since.
        self.previous_nodes.truncate(shared);
        let mut node = self.previous_nodes.last().copied().unwrap_or(0);
        for depth in self.previous_nodes.len()..self.previous_frames.len() {
            let word = self.previous_frames[depth];
            let key = NodeKey::new(node, word);
            node = match key.and_then(|key| self.nodes.get(&key)) {
                Some(&id) => u64::from(id),
                None => {
                    if stack_words::is_native(word) && !modules.holds(word) && modules.rescan_if_loader_changed(encoder)
                    {
                        self.retire_all();
                    }
                    let frame = stack_words::to_frame(word);
                    if let (true, libleak_format::Frame::Python { code_id, .. }) = (self.noting_codes, frame) {
                        self.noted_codes.push(code_id);
                    }
                    let id = encoder.stack_node(node, frame);
                    if self.nodes.len() >= self.most_nodes {
                        // The ids handed out stay defined: the previous stack's path is kept.
                        self.nodes.clear();
                    }
                    // Past u32::MAX a node is not remembered: defined again when met again.
                    if let (Some(key), Ok(short_id)) = (key, u32::try_from(id)) {
                        self.nodes.insert(key, short_id);
                    }
                    id
                }
            };
            // Unless a module went away meanwhile and the rescan forgot the previous nodes:
            // kept from here, they would sit at the wrong depths.
            if self.previous_nodes.len() == depth {
                self.previous_nodes.push(node);
            }
        }
        node
    }

    /// A module went away: nodes defined from now on must not be confused with the old ones.
    /// The previous stack's words stay: the next event may share them.
    pub fn retire_all(&mut self) {
        self.nodes.clear();
        self.previous_nodes.clear();
    }

    #[cfg(test)]
    fn forget_previous(&mut self) {
        self.previous_frames.clear();
        self.previous_nodes.clear();
    }

    /// Forgets every node, for a forked child's trace, which numbers its nodes afresh, and
    /// from then on notes the code objects that new nodes refer to (see
    /// [`StackTree::take_noted_codes`]).
    pub fn start_child_trace(&mut self) {
        self.nodes = HashMap::default();
        self.previous_nodes.clear();
        self.noting_codes = true;
    }

    /// The code ids of the Python frames defined since the last call (in a forked child).
    pub fn take_noted_codes(&mut self) -> Option<std::vec::Drain<'_, u64>> {
        (!self.noted_codes.is_empty()).then(|| self.noted_codes.drain(..))
    }
}

#[cfg(test)]
mod tests {
    use libleak_format::RecordEncoder;

    use super::StackTree;
    use crate::collector::modules::ModuleMap;
    use crate::stack_words::python_frame;

    #[test]
    fn a_full_node_table_is_emptied_and_the_nodes_met_again_are_defined_again() {
        let mut tree = StackTree {
            most_nodes: 6,
            ..StackTree::default()
        };
        let mut encoder = RecordEncoder::new();
        let mut modules = ModuleMap::new(String::new());
        // Innermost first: three Python frames under a common outer one.
        let stack = |inner: i32| [python_frame(7, inner), python_frame(8, 2), python_frame(9, 1)];
        let first = tree.intern(0, &stack(10), &mut encoder, &mut modules);
        assert_eq!(
            tree.intern(0, &stack(10), &mut encoder, &mut modules),
            first,
            "remembered"
        );
        for inner in 11..20 {
            tree.intern(0, &stack(inner), &mut encoder, &mut modules);
            assert!(tree.nodes.len() <= 6, "{}", tree.nodes.len());
        }
        tree.forget_previous();
        let again = tree.intern(0, &stack(10), &mut encoder, &mut modules);
        assert!(again > first, "defined again with a new id: {again} after {first}");
        tree.forget_previous();
        assert_eq!(tree.intern(0, &stack(10), &mut encoder, &mut modules), again);
    }

    #[test]
    fn an_event_without_a_stack_leaves_the_previous_stack_to_share() {
        let mut tree = StackTree::default();
        let mut encoder = RecordEncoder::new();
        let mut modules = ModuleMap::new(String::new());
        let whole = [python_frame(7, 10), python_frame(8, 2), python_frame(9, 1)];
        tree.intern(0, &whole, &mut encoder, &mut modules);
        assert_eq!(tree.intern(0, &[], &mut encoder, &mut modules), 0, "no stack");
        // The next event sends its innermost word only: the outer two are the previous stack's.
        let shared = tree.intern(2, &[python_frame(7, 12)], &mut encoder, &mut modules);
        tree.forget_previous();
        let spelled_out = [python_frame(7, 12), python_frame(8, 2), python_frame(9, 1)];
        assert_eq!(tree.intern(0, &spelled_out, &mut encoder, &mut modules), shared);
    }
}
