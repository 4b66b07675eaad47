//! Stack nodes as [`StackNodes`](super::StackNodes) keeps them: 16 bytes each instead of a
//! [`StackNode`]'s 40. A real program's trace defines millions (2.6 M for a CPython program
//! importing numpy and pandas), the largest table of its replay.

use libleak_format::Frame;

use super::StackNode;

/// A [`StackNode`] in 16 bytes. Every node a trace's writer gives fits: it counts ids (so
/// parents) in a `u32`, loads far fewer than 2^29 modules, and a code object's instruction
/// offsets are kilobytes. A node that does not fit (from a damaged or crafted trace, or
/// imported from a parent's trace under an id above 2^32) is kept whole elsewhere.
#[derive(Clone, Copy, Debug)]
pub(super) struct PackedNode {
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
    pub(super) const KEPT_WHOLE: PackedNode = PackedNode {
        word: 0,
        parent: 0,
        tag: WHOLE << DETAIL_BITS,
    };

    /// `node` packed, or `None` when it does not fit.
    pub(super) fn pack(node: &StackNode) -> Option<PackedNode> {
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
    pub(super) fn unpack(&self) -> Option<StackNode> {
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
