//! The growth report's time axis: sequence numbers (events) always, seconds when the trace
//! recorded times. The one place where a sequence number becomes seconds and back.
//!
//! Traces up to format 7 record no times, so the clock is built empty and every conversion
//! answers `None`; format 8's `TraceReader::chunk_time_ns` (the chunk's monotonic time since
//! the trace started) gives (seq, time) pairs to build it from, with no change elsewhere.
//!
//! Must stay pure: it converts, and never reads the trace itself.

/// (seq, nanoseconds since the trace started) pairs, both non-decreasing.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    points: Vec<(u64, u64)>,
}

impl Clock {
    /// A clock from (seq, time_ns) pairs in reading order; pairs that would make either
    /// coordinate go backwards (a chunk written late) are skipped.
    pub fn from_points(points: impl IntoIterator<Item = (u64, u64)>) -> Clock {
        let mut kept: Vec<(u64, u64)> = Vec::new();
        for (seq, ns) in points {
            if kept.last().is_none_or(|&(s, t)| seq >= s && ns >= t) {
                kept.push((seq, ns));
            }
        }
        Clock { points: kept }
    }

    /// Whether the trace recorded times at all.
    pub fn has_times(&self) -> bool {
        self.points.len() >= 2
    }

    /// Seconds since the trace started at sequence number `seq`, interpolated between the
    /// recorded points (clamped at both ends); `None` without times.
    pub fn seconds_at(&self, seq: u64) -> Option<f64> {
        if !self.has_times() {
            return None;
        }
        let after = self.points.partition_point(|&(s, _)| s <= seq);
        let ns = match (self.points.get(after.wrapping_sub(1)), self.points.get(after)) {
            (Some(&(s0, t0)), Some(&(s1, t1))) if s1 > s0 => {
                t0 as f64 + (t1 - t0) as f64 * ((seq - s0) as f64 / (s1 - s0) as f64)
            }
            (Some(&(_, t0)), _) => t0 as f64,
            (None, Some(&(_, t1))) => t1 as f64,
            (None, None) => return None,
        };
        Some(ns / 1e9)
    }

    /// The first sequence number at or after `seconds` since the start; `None` without times.
    pub fn seq_at(&self, seconds: f64) -> Option<u64> {
        if !self.has_times() {
            return None;
        }
        let ns = (seconds.max(0.0) * 1e9) as u64;
        let index = self.points.partition_point(|&(_, t)| t < ns);
        Some(match self.points.get(index) {
            Some(&(seq, _)) => seq,
            None => self.points.last().map_or(0, |&(seq, _)| seq),
        })
    }

    /// Seconds between sequence numbers `from` and `to`, when known and positive.
    pub fn seconds_between(&self, from: u64, to: u64) -> Option<f64> {
        let span = self.seconds_at(to)? - self.seconds_at(from)?;
        (span > 0.0).then_some(span)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_times_nothing_converts_and_with_times_it_interpolates() {
        let none = Clock::default();
        assert_eq!(none.seconds_at(5), None);
        assert_eq!(none.seq_at(1.0), None);
        let clock = Clock::from_points([(0, 0), (100, 1_000_000_000), (50, 5), (300, 2_000_000_000)]);
        assert!(clock.has_times());
        assert_eq!(clock.seconds_at(50), Some(0.5));
        assert_eq!(clock.seconds_at(200), Some(1.5));
        assert_eq!(clock.seconds_at(1000), Some(2.0));
        assert_eq!(clock.seq_at(1.5), Some(300));
        assert_eq!(clock.seq_at(0.0), Some(0));
        assert_eq!(clock.seconds_between(100, 300), Some(1.0));
    }
}
