//! The growth test: whether one site's live memory trends upward across the run.
//!
//! The site's samples, from the first one where it held memory to the end of the analysed
//! period, are cut into [`WINDOWS`] windows of equal length, and each window is summed up by
//! its *minimum* live bytes (and, separately, minimum live blocks): what the site held for
//! the whole window, so temporaries alive at some samples, a sawtooth of buffers filled and
//! emptied, and a big buffer freed each call do not count. The site is growing when all of:
//!
//! 1. the window minima have a significant upward monotone trend: Mann–Kendall's S over the
//!    windows, with the tie correction, gives Z ≥ [`MIN_TREND_Z`] (one-sided p < 0.01);
//! 2. the minimum rose from one window to the next in more than half of the consecutive pairs
//!    (a one-off burst, however large, is one step);
//! 3. it still rose across the last third: the last window's minimum is above the minimum of
//!    the window before the last third (a cache that fills and then plateaus stops there);
//! 4. the gain (last window's minimum minus the first's) is at least [`MIN_BYTES`] bytes and
//!    [`MIN_BLOCKS`] blocks, or [`MIN_BYTES_ONE_BLOCK`] bytes however few blocks (a buffer
//!    that is reallocated bigger and bigger);
//!
//! and the site was sampled at least [`MIN_SAMPLES`] times (two per window), so that a
//! window's minimum is a minimum of something.
//!
//! Must stay pure arithmetic on series: it never sees stacks, frames or the trace.

/// Windows the site's life is cut into.
pub const WINDOWS: usize = 10;
/// Fewer samples than this: not judged.
pub const MIN_SAMPLES: usize = 2 * WINDOWS;
/// Mann–Kendall's Z for a one-sided p below 0.01.
pub const MIN_TREND_Z: f64 = 2.326;
pub const MIN_BYTES: u64 = 4096;
pub const MIN_BLOCKS: u64 = 8;
pub const MIN_BYTES_ONE_BLOCK: u64 = 64 * 1024;

/// What the test found for one site.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub growing: bool,
    /// Each window's minimum live bytes, and its minimum live blocks.
    pub window_bytes: Vec<u64>,
    pub window_blocks: Vec<u64>,
    /// Bytes and blocks gained: the last window's minimum minus the first's (0 if lower).
    pub growth_bytes: u64,
    pub growth_blocks: u64,
    /// Consecutive window pairs whose minimum rose, of `WINDOWS - 1`.
    pub rising_steps: usize,
    /// Mann–Kendall's Z over the window minima (0 when S ≤ 0).
    pub trend_z: f64,
}

/// Judges the site whose live bytes and blocks at successive samples are `bytes` and
/// `blocks` (same length), from its first sample holding memory on. `None` when it was
/// sampled too few times to judge.
pub fn judge(bytes: &[u64], blocks: &[u64]) -> Option<Verdict> {
    let n = bytes.len().min(blocks.len());
    if n < MIN_SAMPLES {
        return None;
    }
    let window_min = |values: &[u64]| -> Vec<u64> {
        (0..WINDOWS)
            .map(|k| {
                let (from, to) = (k * n / WINDOWS, (k + 1) * n / WINDOWS);
                values[from..to].iter().copied().min().unwrap_or(0)
            })
            .collect()
    };
    let window_bytes = window_min(&bytes[..n]);
    let window_blocks = window_min(&blocks[..n]);
    let rising_steps = window_bytes.windows(2).filter(|pair| pair[1] > pair[0]).count();
    let trend_z = mann_kendall_z(&window_bytes);
    let last = WINDOWS - 1;
    let before_last_third = last - WINDOWS / 3;
    let growth_bytes = window_bytes[last].saturating_sub(window_bytes[0]);
    let growth_blocks = window_blocks[last].saturating_sub(window_blocks[0]);
    let enough = growth_bytes >= MIN_BYTES_ONE_BLOCK || (growth_bytes >= MIN_BYTES && growth_blocks >= MIN_BLOCKS);
    let growing = trend_z >= MIN_TREND_Z
        && 2 * rising_steps > WINDOWS - 1
        && window_bytes[last] > window_bytes[before_last_third]
        && enough;
    Some(Verdict {
        growing,
        window_bytes,
        window_blocks,
        growth_bytes,
        growth_blocks,
        rising_steps,
        trend_z,
    })
}

/// Mann–Kendall's normal statistic Z for an upward trend in `values` (with the variance
/// corrected for ties and the continuity correction); 0 when there is no upward tendency.
pub fn mann_kendall_z(values: &[u64]) -> f64 {
    let n = values.len();
    let mut s: i64 = 0;
    for i in 0..n {
        for j in i + 1..n {
            s += match values[j].cmp(&values[i]) {
                std::cmp::Ordering::Greater => 1,
                std::cmp::Ordering::Less => -1,
                std::cmp::Ordering::Equal => 0,
            };
        }
    }
    if s <= 0 {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let mut ties = 0.0;
    for run in sorted.chunk_by(|a, b| a == b) {
        let t = run.len() as f64;
        ties += t * (t - 1.0) * (2.0 * t + 5.0);
    }
    let nf = n as f64;
    let variance = (nf * (nf - 1.0) * (2.0 * nf + 5.0) - ties) / 18.0;
    if variance <= 0.0 {
        return 0.0;
    }
    (s as f64 - 1.0) / variance.sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks of 1,000 bytes: `count(i)` at sample i.
    fn site(samples: usize, count: impl Fn(usize) -> u64) -> Option<Verdict> {
        let blocks: Vec<u64> = (0..samples).map(count).collect();
        let bytes: Vec<u64> = blocks.iter().map(|b| b * 1000).collect();
        judge(&bytes, &blocks)
    }

    #[test]
    fn steady_growth_is_growth() {
        let v = site(100, |i| i as u64 + 1).unwrap();
        assert!(v.growing, "{v:?}");
        assert_eq!(v.rising_steps, 9);
        assert_eq!(v.growth_bytes, 90_000);
        assert_eq!(v.growth_blocks, 90);
        // With temporaries on top at some samples, and slower.
        let v = site(200, |i| i as u64 / 3 + if i % 4 == 0 { 500 } else { 0 }).unwrap();
        assert!(v.growing, "{v:?}");
    }

    #[test]
    fn a_burst_a_filled_cache_temporaries_and_too_little_are_not() {
        let burst = site(100, |i| if i >= 25 { 20_000 } else { 10 }).unwrap();
        assert!(!burst.growing && burst.rising_steps == 1, "{burst:?}");
        let cache = site(100, |i| (i as u64).min(50)).unwrap();
        assert!(!cache.growing, "{cache:?}");
        assert!(cache.trend_z > MIN_TREND_Z, "a trend, but it stopped");
        let temporaries = site(100, |i| if i % 3 == 0 { 0 } else { i as u64 }).unwrap();
        assert!(!temporaries.growing && temporaries.growth_bytes == 0, "{temporaries:?}");
        // Steady, but 2 bytes per window.
        let tiny: Vec<u64> = (0..100).map(|i| i / 5).collect();
        assert!(!judge(&tiny, &tiny).unwrap().growing);
        // One block reallocated bigger: growth once large enough.
        let one = vec![1; 100];
        let small: Vec<u64> = (0..100).map(|i| 64 * i).collect();
        assert!(!judge(&small, &one).unwrap().growing);
        let large: Vec<u64> = (0..100).map(|i| 4096 * i).collect();
        assert!(judge(&large, &one).unwrap().growing);
        assert_eq!(site(MIN_SAMPLES - 1, |i| i as u64), None);
    }

    #[test]
    fn mann_kendall_matches_the_textbook_values() {
        // Strictly increasing, n = 10: S = 45, Var = 125.
        let z = mann_kendall_z(&(0..10).collect::<Vec<u64>>());
        assert!((z - 44.0 / 125f64.sqrt()).abs() < 1e-9, "{z}");
        assert_eq!(mann_kendall_z(&[5; 10]), 0.0);
        assert_eq!(mann_kendall_z(&(0..10).rev().collect::<Vec<u64>>()), 0.0);
        // Ties: [1, 1, 2, 2]: S = 4, Var = (4·3·13 − 2·(2·1·9)) / 18 = 6.666….
        let z = mann_kendall_z(&[1, 1, 2, 2]);
        assert!((z - 3.0 / (120.0f64 / 18.0).sqrt()).abs() < 1e-9, "{z}");
    }
}
