//! Which block a word may point into, looked up for every word the scan reads that could be
//! an address. A binary search over millions of sorted addresses misses the caches at most
//! of its steps; here the blocks are grouped into clusters of nearby blocks, and each
//! cluster has a table with, per bucket of `1 << shift` bytes, the first block starting in
//! it or after, so a lookup reads a bucket and searches the few blocks starting in it.

/// Blocks farther apart than this many buckets start a new cluster: the table has no
/// entries for the space between clusters.
const CLUSTER_GAP_BUCKETS: u64 = 64;
/// The table has at most this many entries per block (plus one per cluster); a larger
/// bucket is used until it fits.
const ENTRIES_PER_BLOCK: usize = 2;

pub struct AddressIndex {
    cluster_starts: Vec<u64>,
    /// Per cluster: the end of its farthest block, and where its buckets begin in `table`.
    clusters: Vec<(u64, usize)>,
    /// Per bucket: the index of the first block starting at or after the bucket's start.
    table: Vec<u32>,
    shift: u32,
}

impl AddressIndex {
    /// `addresses` sorted; `ends[i]` the end of block `i` (at least its start + 1).
    pub fn new(addresses: &[u64], ends: impl Fn(usize) -> u64) -> AddressIndex {
        let mut index = AddressIndex {
            cluster_starts: Vec::new(),
            clusters: Vec::new(),
            table: Vec::new(),
            shift: 4,
        };
        if addresses.is_empty() || addresses.len() >= u32::MAX as usize {
            return index;
        }
        let budget = addresses.len() * ENTRIES_PER_BLOCK;
        // Buckets about as large as the mean block, at first: fewer entries than blocks.
        let total = (0..addresses.len()).fold(0u64, |total, i| total.saturating_add(ends(i) - addresses[i]));
        let mean = (total / addresses.len() as u64).max(1);
        index.shift = (64 - (mean - 1).leading_zeros()).clamp(4, 62);
        while index.shift < 63 && Self::entries(addresses, &ends, index.shift) > budget {
            index.shift += 1;
        }
        let shift = index.shift;
        for (start, end, first) in Self::clusters(addresses, &ends, shift) {
            index.cluster_starts.push(start);
            index.clusters.push((end, index.table.len()));
            let buckets = ((end - start) >> shift) + 2;
            let mut block = first;
            for bucket in 0..buckets {
                let bucket_start = start.saturating_add(bucket << shift);
                while block < addresses.len() && addresses[block] < bucket_start {
                    block += 1;
                }
                index.table.push(block as u32);
            }
        }
        index
    }

    /// (start, end, first block) of each cluster.
    fn clusters(addresses: &[u64], ends: &impl Fn(usize) -> u64, shift: u32) -> Vec<(u64, u64, usize)> {
        let gap = CLUSTER_GAP_BUCKETS << shift;
        let mut clusters: Vec<(u64, u64, usize)> = Vec::new();
        for (block, &address) in addresses.iter().enumerate() {
            match clusters.last_mut() {
                Some(cluster) if address < cluster.1.saturating_add(gap) => cluster.1 = cluster.1.max(ends(block)),
                _ => clusters.push((address, ends(block), block)),
            }
        }
        clusters
    }

    fn entries(addresses: &[u64], ends: &impl Fn(usize) -> u64, shift: u32) -> usize {
        Self::clusters(addresses, ends, shift)
            .iter()
            .map(|&(start, end, _)| (((end - start) >> shift) + 2) as usize)
            .sum()
    }

    /// The last block starting at or below `value` when `value` lies in a cluster, else
    /// `None` (then no block holds `value`).
    #[inline]
    pub fn last_at_or_below(&self, addresses: &[u64], value: u64) -> Option<usize> {
        if self.clusters.is_empty() {
            return addresses.partition_point(|&a| a <= value).checked_sub(1);
        }
        let cluster = self.cluster_starts.partition_point(|&s| s <= value).checked_sub(1)?;
        let (end, offset) = self.clusters[cluster];
        if value >= end {
            return None;
        }
        let bucket = offset + ((value - self.cluster_starts[cluster]) >> self.shift) as usize;
        let (low, high) = (self.table[bucket] as usize, self.table[bucket + 1] as usize);
        (low + addresses[low..high].partition_point(|&a| a <= value)).checked_sub(1)
    }
}

#[cfg(test)]
mod tests {
    use super::AddressIndex;

    #[test]
    fn finds_the_same_block_as_a_binary_search() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut random = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut blocks: Vec<(u64, u64)> = Vec::new();
        let mut at = 0x5555_0000_0000u64;
        for _ in 0..20_000 {
            at += match random() % 100 {
                0 => 1 << 30,
                1..=3 => random() % (1 << 20),
                _ => 16 * (1 + random() % 8),
            };
            blocks.push((at, [0, 8, 24, 40, 5000][(random() % 5) as usize]));
        }
        let addresses: Vec<u64> = blocks.iter().map(|b| b.0).collect();
        let ends = |i: usize| blocks[i].0 + blocks[i].1.max(1);
        let index = AddressIndex::new(&addresses, ends);
        let holder = |value: u64| {
            let i = addresses.partition_point(|&a| a <= value).checked_sub(1)?;
            (value < ends(i)).then_some(i)
        };
        for probe in 0..200_000 {
            let value = match probe % 3 {
                0 => addresses[(random() % addresses.len() as u64) as usize] + random() % 64,
                1 => addresses[0] + random() % (at - addresses[0] + 10_000),
                _ => random(),
            };
            let found = index.last_at_or_below(&addresses, value).filter(|&i| value < ends(i));
            assert_eq!(found, holder(value), "{value:#x}");
        }
    }
}
