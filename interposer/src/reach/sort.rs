//! Putting the blocks live at exit in address order. They come in allocation order, which
//! follows addresses only in stretches, and there can be millions: a comparison sort of 4
//! million took 300 ms, most of the scan of a large heap. A radix sort over the bits in
//! which the addresses differ takes a few passes of the list.

/// Bits per radix pass: a counts table of 2,048 entries stays in the L1 cache.
const DIGIT_BITS: u32 = 11;
/// Below this many, a comparison sort is as quick.
const SMALL: usize = 1 << 12;

/// Sorts `(address, size)` pairs by address (addresses are distinct).
pub fn by_address(blocks: &mut Vec<(u64, u64)>) {
    if blocks.len() < SMALL {
        blocks.sort_unstable();
        return;
    }
    let first = blocks[0].0;
    let varying = blocks.iter().fold(0, |bits, &(address, _)| bits | (address ^ first));
    if varying == 0 {
        return;
    }
    let (low, high) = (varying.trailing_zeros(), 64 - varying.leading_zeros());
    let mut source = std::mem::take(blocks);
    let mut target = vec![(0u64, 0u64); source.len()];
    let mut counts = vec![0usize; 1 << DIGIT_BITS];
    let mask = (1u64 << DIGIT_BITS) - 1;
    let mut shift = low;
    while shift < high {
        counts.fill(0);
        for &(address, _) in &source {
            counts[((address >> shift) & mask) as usize] += 1;
        }
        let mut next = 0;
        for count in counts.iter_mut() {
            let here = *count;
            *count = next;
            next += here;
        }
        for &block in &source {
            let digit = ((block.0 >> shift) & mask) as usize;
            target[counts[digit]] = block;
            counts[digit] += 1;
        }
        std::mem::swap(&mut source, &mut target);
        shift += DIGIT_BITS;
    }
    *blocks = source;
}

#[cfg(test)]
mod tests {
    use super::by_address;

    #[test]
    fn sorts_like_a_comparison_sort() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut random = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for (count, spread) in [(10, 48), (5_000, 30), (20_000, 47), (20_000, 64)] {
            let mut blocks: Vec<(u64, u64)> = (0..count)
                .map(|i| ((random() >> (64 - spread)) << 4 | (i & 15), i))
                .collect();
            blocks.sort_unstable_by_key(|b| b.0);
            blocks.dedup_by_key(|b| b.0);
            let mut shuffled = blocks.clone();
            for i in (1..shuffled.len()).rev() {
                shuffled.swap(i, (random() % (i as u64 + 1)) as usize);
            }
            by_address(&mut shuffled);
            assert_eq!(shuffled, blocks);
        }
    }
}
