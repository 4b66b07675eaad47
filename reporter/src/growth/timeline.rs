//! Live bytes and blocks per allocation stack over the run, sampled while replay reads the
//! trace (a [`ReplayObserver`]), and what a `--between` window added and removed.
//!
//! Samples are taken every `interval` events (allocations and frees, in file order) and the
//! interval doubles, dropping every other sample, whenever more than [`MAX_SAMPLES`] were
//! taken: memory stays bounded by distinct stacks × samples, whatever the trace's length. A
//! stack's series stores an entry only at the samples where its value changed, so stacks of
//! temporaries (allocated and freed between two samples) cost nothing. Observation stops
//! when CPython's finalisation starts: everything is freed after it, which is no shrinkage.
//!
//! Must never look at frames or symbols (stacks are ids here), nor judge growth: that is
//! [`super::trend`]'s, on sites.

use libleak_format::live::AddressMap as FastMap;
use libleak_format::{Alloc, Free};
use std::collections::hash_map::Entry as Slot;

use crate::model::Tally;
use crate::replay::ReplayObserver;

/// Events between two samples at first.
pub const FIRST_INTERVAL: u64 = 1 << 10;
/// Most samples kept; past it the resolution halves.
pub const MAX_SAMPLES: usize = 512;

/// One point of the timeline: the whole process's live memory after `events` events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sample {
    /// The highest sequence number seen so far.
    pub seq: u64,
    pub events: u64,
    pub live_bytes: u64,
    pub live_blocks: u64,
}

/// A stack's value from sample `sample` on (until its next entry).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub sample: u32,
    pub bytes: u64,
    pub blocks: u64,
}

/// One allocation stack's live memory now and at the samples where it changed.
#[derive(Clone, Debug)]
pub struct StackSeries {
    pub stack: u64,
    pub bytes: u64,
    pub blocks: u64,
    pub entries: Vec<Entry>,
    dirty: bool,
}

/// The latest event of an address, as [`libleak_format::live`] keeps it: events of one
/// address can arrive out of sequence order, and only the newest one counts.
#[derive(Clone, Copy)]
struct Latest {
    seq: u64,
    size: u64,
    /// Index into [`Timeline::stacks`].
    stack: u32,
    live: bool,
}

/// The `--between` window, in sequence numbers (both ends included), and what it saw.
#[derive(Clone, Debug, Default)]
pub struct WindowTallies {
    pub from: u64,
    pub to: u64,
    /// Allocated in the window and still live at its end, by index into [`Timeline::stacks`].
    pub grown: FastMap<u32, Tally>,
    /// Allocated before the window and freed in it.
    pub shrunk: FastMap<u32, Tally>,
}

/// Why observation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// CPython's finalisation started (the FINALIZING record).
    Finalization,
    /// The trace ended (END record or not: the caller knows which).
    TraceEnd,
}

pub struct Timeline {
    pub samples: Vec<Sample>,
    pub stacks: Vec<StackSeries>,
    pub window: Option<WindowTallies>,
    pub stop: Option<Stop>,
    interval: u64,
    events: u64,
    max_seq: u64,
    live_bytes: u64,
    live_blocks: u64,
    index_of: FastMap<u64, u32>,
    addresses: FastMap<u64, Latest>,
    dirty: Vec<u32>,
    last_stack: Option<(u64, u32)>,
    /// (seq, ns since the trace started) as replay told them: the clock's points.
    pub times: Vec<(u64, u64)>,
}

impl Timeline {
    /// A timeline, counting what the window `from..=to` (sequence numbers) adds and removes
    /// when one is given.
    pub fn new(window: Option<(u64, u64)>) -> Timeline {
        Timeline {
            samples: vec![Sample::default()],
            stacks: Vec::new(),
            window: window.map(|(from, to)| WindowTallies {
                from,
                to,
                ..WindowTallies::default()
            }),
            stop: None,
            interval: FIRST_INTERVAL,
            events: 0,
            max_seq: 0,
            live_bytes: 0,
            live_blocks: 0,
            index_of: FastMap::default(),
            addresses: FastMap::default(),
            dirty: Vec::new(),
            last_stack: None,
            times: Vec::new(),
        }
    }

    /// Ends observation: the last sample, and the window's blocks still live.
    pub fn finish(&mut self, stop: Stop) {
        if self.stop.is_some() {
            return;
        }
        self.stop = Some(stop);
        if self.samples.last().is_none_or(|s| s.events != self.events) {
            self.sample();
        }
        if let Some(window) = &mut self.window {
            for latest in self.addresses.values().filter(|l| l.live) {
                if (window.from..=window.to).contains(&latest.seq) {
                    window.grown.entry(latest.stack).or_default().add(1, latest.size);
                }
            }
        }
        self.addresses = FastMap::default();
    }

    /// The events counted and the sampling interval reached.
    pub fn events(&self) -> (u64, u64) {
        (self.events, self.interval)
    }

    fn stack_index(&mut self, stack: u64) -> u32 {
        // Allocations come in runs from one stack (a loop building a list).
        if let Some((last, index)) = self.last_stack {
            if last == stack {
                return index;
            }
        }
        let next = self.stacks.len() as u32;
        let index = *self.index_of.entry(stack).or_insert(next);
        if index == next {
            self.stacks.push(StackSeries {
                stack,
                bytes: 0,
                blocks: 0,
                entries: Vec::new(),
                dirty: false,
            });
        }
        self.last_stack = Some((stack, index));
        index
    }

    fn add(&mut self, index: u32, size: u64) {
        let series = &mut self.stacks[index as usize];
        series.bytes += size;
        series.blocks += 1;
        self.live_bytes += size;
        self.live_blocks += 1;
        if !series.dirty {
            series.dirty = true;
            self.dirty.push(index);
        }
    }

    /// The block `gone` stopped being live at sequence number `at` (or, when its free has not
    /// arrived yet, before `at`).
    fn remove(&mut self, gone: Latest, at: u64) {
        let series = &mut self.stacks[gone.stack as usize];
        series.bytes = series.bytes.saturating_sub(gone.size);
        series.blocks = series.blocks.saturating_sub(1);
        self.live_bytes = self.live_bytes.saturating_sub(gone.size);
        self.live_blocks = self.live_blocks.saturating_sub(1);
        if !series.dirty {
            series.dirty = true;
            self.dirty.push(gone.stack);
        }
        if let Some(window) = &mut self.window {
            let allocated_in = (window.from..=window.to).contains(&gone.seq);
            if allocated_in && at > window.to {
                window.grown.entry(gone.stack).or_default().add(1, gone.size);
            } else if gone.seq < window.from && (window.from..=window.to).contains(&at) {
                window.shrunk.entry(gone.stack).or_default().add(1, gone.size);
            }
        }
    }

    fn event(&mut self, seq: u64) {
        self.events += 1;
        self.max_seq = self.max_seq.max(seq);
        // The interval is a power of two: a mask, not a division, on every event.
        if self.events & (self.interval - 1) == 0 {
            self.sample();
            if self.samples.len() > MAX_SAMPLES {
                self.halve();
            }
        }
    }

    fn sample(&mut self) {
        let index = self.samples.len() as u32;
        self.samples.push(Sample {
            seq: self.max_seq,
            events: self.events,
            live_bytes: self.live_bytes,
            live_blocks: self.live_blocks,
        });
        for stack in std::mem::take(&mut self.dirty) {
            let series = &mut self.stacks[stack as usize];
            series.dirty = false;
            let (bytes, blocks) = series
                .entries
                .last()
                .map_or((0, 0), |entry| (entry.bytes, entry.blocks));
            if (bytes, blocks) != (series.bytes, series.blocks) {
                series.entries.push(Entry {
                    sample: index,
                    bytes: series.bytes,
                    blocks: series.blocks,
                });
            }
        }
    }

    /// Keeps every other sample (the even ones) and doubles the interval. A stack's value at
    /// old sample 2k is its last entry at or before 2k, so an entry at old sample i moves to
    /// new sample ⌈i/2⌉, the later of two entries landing there winning.
    fn halve(&mut self) {
        let kept: Vec<Sample> = self.samples.iter().step_by(2).copied().collect();
        self.samples = kept;
        self.interval *= 2;
        for series in &mut self.stacks {
            let mut out: Vec<Entry> = Vec::with_capacity(series.entries.len());
            for entry in &series.entries {
                let moved = Entry {
                    sample: entry.sample.div_ceil(2),
                    ..*entry
                };
                match out.last_mut() {
                    Some(last) if last.sample == moved.sample => *last = moved,
                    _ => out.push(moved),
                }
            }
            // Two entries may now hold the same value: keep the first of each run.
            out.dedup_by(|later, earlier| (later.bytes, later.blocks) == (earlier.bytes, earlier.blocks));
            series.entries = out;
        }
    }
}

impl ReplayObserver for Timeline {
    fn alloc(&mut self, alloc: &Alloc) {
        if self.stop.is_some() {
            return;
        }
        let stack = self.stack_index(alloc.stack);
        let fresh = Latest {
            seq: alloc.seq,
            size: alloc.size,
            stack,
            live: true,
        };
        // One table lookup per event: replaying is most of the report's time.
        let (added, replaced) = match self.addresses.entry(alloc.address) {
            Slot::Vacant(vacant) => {
                vacant.insert(fresh);
                (true, None)
            }
            Slot::Occupied(mut latest) if latest.get().seq < alloc.seq => {
                let previous = latest.insert(fresh);
                (true, previous.live.then_some(previous))
            }
            // Older than what is known: freed (and perhaps reused) since.
            Slot::Occupied(_) => (false, None),
        };
        if let Some(old) = replaced {
            // Its free is still to come: it ended before this allocation.
            self.remove(old, alloc.seq);
        }
        if added {
            self.add(stack, alloc.size);
        }
        self.event(alloc.seq);
    }

    fn free(&mut self, free: &Free) {
        if self.stop.is_some() {
            return;
        }
        let freed = Latest {
            seq: free.seq,
            size: 0,
            stack: 0,
            live: false,
        };
        let gone = match self.addresses.entry(free.address) {
            Slot::Vacant(vacant) => {
                vacant.insert(freed);
                None
            }
            Slot::Occupied(mut latest) if latest.get().seq < free.seq => {
                let previous = latest.insert(freed);
                previous.live.then_some(previous)
            }
            Slot::Occupied(_) => None,
        };
        if let Some(old) = gone {
            self.remove(old, free.seq);
        }
        self.event(free.seq);
    }

    fn finalizing(&mut self) {
        self.finish(Stop::Finalization);
    }

    fn time(&mut self, seq: u64, time_ns: u64) {
        self.times.push((seq, time_ns));
    }
}

#[cfg(test)]
mod tests {
    use libleak_format::AllocKind;

    use super::*;

    fn alloc(t: &mut Timeline, seq: u64, address: u64, size: u64, stack: u64) {
        t.alloc(&Alloc {
            seq,
            thread_id: 1,
            address,
            size,
            stack,
            kind: AllocKind::Malloc,
        });
    }

    fn free(t: &mut Timeline, seq: u64, address: u64) {
        t.free(&Free {
            seq,
            thread_id: 1,
            address,
        });
    }

    /// Stack `stack`'s bytes at every sample.
    fn dense(t: &Timeline, stack: u64) -> Vec<u64> {
        let series = t.stacks.iter().find(|s| s.stack == stack).unwrap();
        let mut value = 0;
        let mut entries = series.entries.iter().peekable();
        (0..t.samples.len() as u32)
            .map(|i| {
                while let Some(entry) = entries.next_if(|e| e.sample <= i) {
                    value = entry.bytes;
                }
                value
            })
            .collect()
    }

    #[test]
    fn halving_keeps_each_stacks_value_at_the_samples_kept() {
        let mut t = Timeline::new(None);
        // Stack 1 grows by one block per 100 events; stack 2 holds one block for a moment.
        let mut seq = 0;
        let mut reference: Vec<(u64, u64)> = Vec::new(); // (events, bytes of stack 1)
        for n in 0..(FIRST_INTERVAL * 600) {
            seq += 1;
            if n % 100 == 0 {
                alloc(&mut t, seq, 1_000_000 + n, 10, 1);
            } else if n % 2 == 1 {
                alloc(&mut t, seq, 7, 5, 2);
            } else {
                free(&mut t, seq, 7);
            }
            reference.push((t.events, (n / 100 + 1) * 10));
        }
        t.finish(Stop::TraceEnd);
        assert!(t.samples.len() <= MAX_SAMPLES + 1, "{}", t.samples.len());
        assert!(t.samples.len() > MAX_SAMPLES / 2);
        let values = dense(&t, 1);
        for (sample, value) in t.samples.iter().zip(&values).skip(1) {
            let expected = reference.iter().find(|(e, _)| *e == sample.events).unwrap().1;
            assert_eq!(*value, expected, "at {} events", sample.events);
        }
        let blips = t.stacks.iter().find(|s| s.stack == 2).unwrap();
        assert!(blips.entries.len() <= 2 * t.samples.len());
    }

    #[test]
    fn events_out_of_sequence_order_count_once_and_finalisation_stops_the_count() {
        let mut t = Timeline::new(None);
        alloc(&mut t, 1, 0x10, 100, 1);
        // Another thread's later allocation of the same address arrives before the free.
        alloc(&mut t, 3, 0x10, 40, 2);
        free(&mut t, 2, 0x10);
        assert_eq!((t.stacks[0].bytes, t.stacks[1].bytes), (0, 40));
        t.finalizing();
        free(&mut t, 4, 0x10);
        alloc(&mut t, 5, 0x20, 1, 1);
        assert_eq!((t.stacks[0].bytes, t.stacks[1].bytes), (0, 40));
        assert_eq!(t.stop, Some(Stop::Finalization));
        let last = t.samples.last().unwrap();
        assert_eq!((last.seq, last.live_bytes, last.live_blocks), (3, 40, 1));
    }

    #[test]
    fn the_window_counts_what_it_added_and_what_it_freed_of_older_blocks() {
        let mut t = Timeline::new(Some((10, 20)));
        alloc(&mut t, 1, 0xa, 100, 1); // before, freed in the window: shrinkage
        alloc(&mut t, 2, 0xb, 7, 1); // before, never freed: neither
        alloc(&mut t, 11, 0xc, 30, 2); // in, freed in: a temporary
        alloc(&mut t, 12, 0xd, 50, 2); // in, freed after: growth
        alloc(&mut t, 13, 0xe, 60, 3); // in, never freed: growth
        free(&mut t, 14, 0xa);
        free(&mut t, 15, 0xc);
        free(&mut t, 30, 0xd);
        alloc(&mut t, 31, 0xf, 1, 3); // after
        t.finish(Stop::TraceEnd);
        let window = t.window.as_ref().unwrap();
        let by_stack = |map: &FastMap<u32, Tally>| -> Vec<(u64, Tally)> {
            let mut v: Vec<(u64, Tally)> = map.iter().map(|(i, t2)| (t.stacks[*i as usize].stack, *t2)).collect();
            v.sort_by_key(|(s, _)| *s);
            v
        };
        assert_eq!(
            by_stack(&window.grown),
            [(2, Tally { blocks: 1, bytes: 50 }), (3, Tally { blocks: 1, bytes: 60 })]
        );
        assert_eq!(by_stack(&window.shrunk), [(1, Tally { blocks: 1, bytes: 100 })]);
    }
}
