//! Which loaded object holds an address, answered by binary search: the collector asks for
//! every stack node it defines and the reachability scan for a word of every live block, and a
//! Python process with wheels loaded maps hundreds of objects (a linear search over their
//! segments was a tenth of the recording's time on such a program).
//!
//! Must stay a pure index over the modules it was built from: it never reads memory.

use libleak_format::Module;

/// The segments of a set of modules as sorted (start, end) runtime address ranges.
#[derive(Default)]
pub struct SegmentIndex {
    ranges: Vec<(u64, u64)>,
}

impl SegmentIndex {
    pub fn new(modules: &[Module]) -> SegmentIndex {
        let mut ranges: Vec<(u64, u64)> = modules
            .iter()
            .flat_map(|module| {
                module.segments.iter().map(|segment| {
                    let start = module.bias.wrapping_add(segment.vaddr);
                    (start, start.saturating_add(segment.memsz))
                })
            })
            .collect();
        ranges.sort_unstable();
        SegmentIndex { ranges }
    }

    /// Whether a segment holds `address`, as [`Module::contains`] says of its module.
    pub fn holds(&self, address: u64) -> bool {
        // Mapped segments never overlap: only the last one starting at or below `address`
        // can hold it.
        let after = self.ranges.partition_point(|&(start, _)| start <= address);
        after > 0 && address < self.ranges[after - 1].1
    }
}

#[cfg(test)]
mod tests {
    use libleak_format::{Module, Segment};

    use super::SegmentIndex;

    fn module(path: &str, bias: u64, segments: &[(u64, u64)]) -> Module {
        Module {
            id: 0,
            path: path.into(),
            bias,
            build_id: Vec::new(),
            segments: segments
                .iter()
                .map(|&(vaddr, memsz)| Segment { vaddr, memsz, flags: 4 })
                .collect(),
        }
    }

    #[test]
    fn holds_exactly_what_module_contains_says() {
        let modules = [
            module("/lib/b.so", 0x7000_0000, &[(0, 0x1000), (0x2000, 0x500)]),
            module("/bin/prog", 0x40_0000, &[(0, 0x800)]),
        ];
        let index = SegmentIndex::new(&modules);
        for (address, held) in [
            (0x3f_ffff, false),
            (0x40_0000, true),
            (0x40_07ff, true),
            (0x40_0800, false),
            (0x7000_0fff, true),
            (0x7000_1000, false),
            (0x7000_2000, true),
            (0x7000_24ff, true),
            (0x7000_2500, false),
            (0, false),
            (u64::MAX, false),
        ] {
            assert_eq!(index.holds(address), held, "{address:#x}");
            assert_eq!(modules.iter().any(|m| m.contains(address)), held, "{address:#x}");
        }
        assert!(!SegmentIndex::new(&[]).holds(0x40_0000));
    }
}
