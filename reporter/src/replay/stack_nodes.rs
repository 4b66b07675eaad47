//! The stack nodes a replay defines, by id: each a frame and its caller. A real program's
//! trace defines millions (2.6 M for a CPython program importing numpy and pandas), the
//! largest table of its replay, so they are kept packed in 16 bytes each ([`PackedNode`])
//! instead of a [`StackNode`]'s 40.

use libleak_format::Frame;

/// One stack node: a frame and its caller. [`StackNodes`] keeps them packed ([`PackedNode`]).
#[derive(Clone, Copy, Debug)]
pub struct StackNode {
    pub parent: u64,
    pub frame: Frame,
    /// Index into [`Trace::modules`] of the module holding a native frame's address, or
    /// [`StackNode::NO_MODULE`].
    module_index: u32,
    /// Stands for the rest of a stack whose nodes were defined in a damaged part of the
    /// trace (`frame` and `module` then mean nothing): always the outermost.
    pub lost: bool,
}

impl StackNode {
    const NO_MODULE: u32 = u32::MAX;

    /// The end of a stack whose outer nodes were lost.
    pub(super) const LOST: StackNode = StackNode {
        parent: 0,
        frame: Frame::PythonEntry,
        module_index: Self::NO_MODULE,
        lost: true,
    };

    pub fn new(parent: u64, frame: Frame, module: Option<usize>) -> StackNode {
        StackNode {
            parent,
            frame,
            module_index: module
                .and_then(|index| u32::try_from(index).ok())
                .unwrap_or(Self::NO_MODULE),
            lost: false,
        }
    }

    /// Index into [`Trace::modules`] of the module holding a native frame's address.
    pub fn module(&self) -> Option<usize> {
        (self.module_index != Self::NO_MODULE).then_some(self.module_index as usize)
    }
}

/// The stack nodes by id. Ids count up in file order, with gaps where damage lost the nodes
/// that had them, so a node's place in the list is not its id.
#[derive(Clone, Debug, Default)]
pub struct StackNodes {
    nodes: Vec<PackedNode>,
    /// The nodes [`PackedNode`] does not fit, by their index in `nodes` (where
    /// [`PackedNode::KEPT_WHOLE`] stands for each): none in a trace as its writer wrote it.
    kept_whole: Vec<(usize, StackNode)>,
    /// Where each run of consecutive ids starts: (its first id, its index in `nodes`).
    runs: Vec<(u64, usize)>,
    /// Nodes imported from a parent's trace, ids [`IMPORTED_NODES`] and up, in order.
    imported: Vec<StackNode>,
}

/// The first id of the stack nodes a forked child's replay imports from its parent's trace:
/// far above any id a trace defines (a trace's ids are counted in a `u32` by the writer).
pub const IMPORTED_NODES: u64 = 1 << 62;

impl StackNodes {
    /// Adds node `id`, which must be above every id so far (else it is dropped: the trace
    /// reader never gives one).
    pub fn insert(&mut self, id: u64, node: StackNode) {
        if id >= IMPORTED_NODES {
            if id - IMPORTED_NODES == self.imported.len() as u64 {
                self.imported.push(node);
            }
            return;
        }
        let next = self
            .runs
            .last()
            .map(|&(first, index)| first + (self.nodes.len() - index) as u64);
        match next {
            Some(next) if id == next => {}
            Some(next) if id < next => return,
            _ => self.runs.push((id, self.nodes.len())),
        }
        let packed = PackedNode::pack(&node).unwrap_or_else(|| {
            self.kept_whole.push((self.nodes.len(), node));
            PackedNode::KEPT_WHOLE
        });
        self.nodes.push(packed);
    }

    /// Makes room for `additional` more nodes.
    pub fn reserve(&mut self, additional: usize) {
        self.nodes.reserve(additional);
    }

    /// Node `id`, unless it was never defined (or lost).
    pub fn get(&self, id: u64) -> Option<StackNode> {
        if id >= IMPORTED_NODES {
            return self.imported.get(usize::try_from(id - IMPORTED_NODES).ok()?).copied();
        }
        let run = self.runs.partition_point(|&(first, _)| first <= id).checked_sub(1)?;
        let (first, index) = self.runs[run];
        let end = self.runs.get(run + 1).map_or(self.nodes.len(), |&(_, next)| next);
        let at = index.checked_add(usize::try_from(id - first).ok()?)?;
        if at >= end {
            return None;
        }
        self.nodes[at].unpack().or_else(|| {
            let whole = self.kept_whole.binary_search_by_key(&at, |&(index, _)| index).ok()?;
            Some(self.kept_whole[whole].1)
        })
    }

    /// The highest id the trace defined (0 when none); imported nodes do not count.
    pub fn last_id(&self) -> u64 {
        self.runs
            .last()
            .map_or(0, |&(first, index)| first + (self.nodes.len() - index) as u64 - 1)
    }
}
/// A [`StackNode`] in 16 bytes. Every node a trace's writer gives fits: it counts ids (so
/// parents) in a `u32`, loads far fewer than 2^29 modules, and a code object's instruction
/// offsets are kilobytes. A node that does not fit (from a damaged or crafted trace, or
/// imported from a parent's trace under an id above 2^32) is kept whole elsewhere.
#[derive(Clone, Copy, Debug)]
struct PackedNode {
    /// A native frame's address, a Python frame's code id.
    word: u64,
    parent: u32,
    /// [`LOST`], then the frame's kind in two bits, then [`DETAIL_BITS`] of detail: a native
    /// frame's module index ([`NO_MODULE`] for none), a Python frame's instruction offset
    /// (two's complement).
    tag: u32,
}

const LOST: u32 = 1 << 31;
const DETAIL_BITS: u32 = 29;
const DETAIL_MASK: u32 = (1 << DETAIL_BITS) - 1;
const NO_MODULE: u32 = DETAIL_MASK;
/// Instruction offsets that fit the detail bits.
const OFFSETS: std::ops::Range<i64> = -(1 << (DETAIL_BITS - 1))..1 << (DETAIL_BITS - 1);

const NATIVE: u32 = 0;
const PYTHON: u32 = 1;
const ENTRY: u32 = 2;
/// Stands for a node kept whole elsewhere.
const WHOLE: u32 = 3;

impl PackedNode {
    /// In the place of a node that did not fit.
    const KEPT_WHOLE: PackedNode = PackedNode {
        word: 0,
        parent: 0,
        tag: WHOLE << DETAIL_BITS,
    };

    /// `node` packed, or `None` when it does not fit.
    fn pack(node: &StackNode) -> Option<PackedNode> {
        let parent = u32::try_from(node.parent).ok()?;
        let module = match node.module_index {
            StackNode::NO_MODULE => NO_MODULE,
            index if index < NO_MODULE => index,
            _ => return None,
        };
        let (word, kind, detail) = match node.frame {
            Frame::Native { address } => (address, NATIVE, module),
            Frame::Python {
                code_id,
                instruction_offset,
            } if module == NO_MODULE && OFFSETS.contains(&instruction_offset) => {
                (code_id, PYTHON, instruction_offset as u32 & DETAIL_MASK)
            }
            Frame::PythonEntry if module == NO_MODULE => (0, ENTRY, 0),
            Frame::Python { .. } | Frame::PythonEntry => return None,
        };
        let lost = if node.lost { LOST } else { 0 };
        Some(PackedNode {
            word,
            parent,
            tag: lost | kind << DETAIL_BITS | detail,
        })
    }

    /// The node packed; `None` for [`PackedNode::KEPT_WHOLE`].
    fn unpack(&self) -> Option<StackNode> {
        let detail = self.tag & DETAIL_MASK;
        let (frame, module_index) = match (self.tag >> DETAIL_BITS) & 3 {
            NATIVE => (
                Frame::Native { address: self.word },
                if detail == NO_MODULE {
                    StackNode::NO_MODULE
                } else {
                    detail
                },
            ),
            PYTHON => {
                // Sign-extends the offset's top detail bit.
                let offset = ((detail << (32 - DETAIL_BITS)) as i32) >> (32 - DETAIL_BITS);
                let frame = Frame::Python {
                    code_id: self.word,
                    instruction_offset: i64::from(offset),
                };
                (frame, StackNode::NO_MODULE)
            }
            ENTRY => (Frame::PythonEntry, StackNode::NO_MODULE),
            _ => return None,
        };
        Some(StackNode {
            parent: u64::from(self.parent),
            frame,
            module_index,
            lost: self.tag & LOST != 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(node: StackNode) -> Option<StackNode> {
        PackedNode::pack(&node).map(|packed| packed.unpack().unwrap())
    }

    fn same(a: &StackNode, b: &StackNode) -> bool {
        (a.parent, a.frame, a.module_index, a.lost) == (b.parent, b.frame, b.module_index, b.lost)
    }

    #[test]
    fn nodes_a_writer_gives_pack_and_unpack_unchanged() {
        let python = |instruction_offset| Frame::Python {
            code_id: u64::MAX,
            instruction_offset,
        };
        let nodes = [
            StackNode::new(0, Frame::Native { address: u64::MAX }, Some(0)),
            StackNode::new(u64::from(u32::MAX), Frame::Native { address: 0x1000 }, None),
            StackNode::new(7, Frame::Native { address: 0x1000 }, Some(NO_MODULE as usize - 1)),
            StackNode::new(7, python(-1), None),
            StackNode::new(7, python(0), None),
            StackNode::new(7, python(OFFSETS.start), None),
            StackNode::new(7, python(OFFSETS.end - 1), None),
            StackNode::new(7, Frame::PythonEntry, None),
            StackNode::LOST,
        ];
        for node in nodes {
            let unpacked = round_trip(node);
            assert!(unpacked.is_some_and(|unpacked| same(&node, &unpacked)), "{node:?}");
        }
    }

    #[test]
    fn nodes_that_do_not_fit_are_refused() {
        let python = |instruction_offset| Frame::Python {
            code_id: 1,
            instruction_offset,
        };
        let nodes = [
            StackNode::new(1 << 32, Frame::Native { address: 0x1000 }, None),
            StackNode::new(7, Frame::Native { address: 0x1000 }, Some(NO_MODULE as usize)),
            StackNode::new(7, python(OFFSETS.end), None),
            StackNode::new(7, python(OFFSETS.start - 1), None),
            StackNode::new(7, python(0), Some(1)),
            StackNode::new(7, Frame::PythonEntry, Some(1)),
        ];
        for node in nodes {
            assert!(round_trip(node).is_none(), "{node:?}");
        }
        assert!(PackedNode::KEPT_WHOLE.unpack().is_none());
    }
}
