//! The state that records are written relative to (`SPEC.md`, "Decoder state"): the
//! previous sequence number, address and stack, the current thread, the rings of recent
//! addresses and the number of stack nodes defined. The encoder and the decoder each own one
//! [`DeltaState`] and make the same calls in the same record order, so the two sides cannot
//! keep different state. Everything but the stack node count starts afresh with each chunk
//! ([`DeltaState::start_chunk`]), so that a reader can decode any chunk on its own.
//!
//! Must never hold what only one side needs (the encoder's `Finder`s stay in `encode.rs`),
//! and never choose an encoding or judge a value: it only does the arithmetic that both sides
//! share.

use crate::recent::Ring;

/// Which ring of recent addresses a position refers to.
#[derive(Clone, Copy)]
pub(crate) enum Recent {
    Allocs,
    Frees,
}

/// Carried from record to record within a chunk; only the stack node count crosses chunks.
#[derive(Default)]
pub(crate) struct DeltaState {
    previous_seq: u64,
    /// Changed only by addresses spelled out in the address stream, not by those named by
    /// position.
    previous_address: u64,
    /// The thread of the ALLOC and FREE records that follow (set by THREAD records).
    current_thread: u32,
    /// The stack of the latest ALLOC or ALLOC_REUSE.
    previous_stack: u64,
    recent_allocs: Ring,
    recent_frees: Ring,
    stack_nodes_defined: u64,
}

impl DeltaState {
    /// The `seq_delta` that writes `seq`.
    #[inline]
    pub fn seq_delta(&mut self, seq: u64) -> i64 {
        let delta = seq.wrapping_sub(self.previous_seq) as i64;
        self.previous_seq = seq;
        delta
    }

    /// The sequence number a `seq_delta` names.
    #[inline]
    pub fn seq_from_delta(&mut self, delta: i64) -> u64 {
        self.previous_seq = self.previous_seq.wrapping_add(delta as u64);
        self.previous_seq
    }

    /// The `address_delta` that spells out `address`.
    #[inline]
    pub fn address_delta(&mut self, address: u64) -> i64 {
        let delta = address.wrapping_sub(self.previous_address) as i64;
        self.previous_address = address;
        delta
    }

    /// The address an `address_delta` spells out.
    #[inline]
    pub fn address_from_delta(&mut self, delta: i64) -> u64 {
        self.previous_address = self.previous_address.wrapping_add(delta as u64);
        self.previous_address
    }

    /// The `stack_delta` that writes `stack`.
    #[inline]
    pub fn stack_delta(&mut self, stack: u64) -> i64 {
        let delta = stack.wrapping_sub(self.previous_stack) as i64;
        self.previous_stack = stack;
        delta
    }

    /// The stack a `stack_delta` names.
    #[inline]
    pub fn stack_from_delta(&mut self, delta: i64) -> u64 {
        self.previous_stack = self.previous_stack.wrapping_add(delta as u64);
        self.previous_stack
    }

    /// The thread of the next ALLOC or FREE record.
    #[inline]
    pub fn current_thread(&self) -> u32 {
        self.current_thread
    }

    /// A THREAD record.
    #[inline]
    pub fn set_current_thread(&mut self, thread_id: u32) {
        self.current_thread = thread_id;
    }

    /// An ALLOC or ALLOC_REUSE of `address`.
    #[inline]
    pub fn allocated(&mut self, address: u64) {
        self.recent_allocs.push(address);
    }

    /// A FREE or FREE_RECENT of `address`.
    #[inline]
    pub fn freed(&mut self, address: u64) {
        self.recent_frees.push(address);
    }

    /// The latest addresses allocated or freed, which ALLOC_REUSE and FREE_RECENT name by
    /// position.
    #[inline]
    pub fn recent(&self, which: Recent) -> &Ring {
        match which {
            Recent::Allocs => &self.recent_allocs,
            Recent::Frees => &self.recent_frees,
        }
    }

    /// A STACK_NODE record: returns the id it defines (ids count up from 1).
    #[inline]
    pub fn define_stack_node(&mut self) -> u64 {
        self.stack_nodes_defined += 1;
        self.stack_nodes_defined
    }

    /// Back to the state a chunk starts in, with `stack_nodes_before` nodes defined before it
    /// (`SPEC.md`, "Chunk prologue"). The rings keep their memory: a chunk starts every
    /// 100 ms, and the traced process pays for every allocation of the writer thread.
    pub fn start_chunk(&mut self, stack_nodes_before: u64) {
        self.previous_seq = 0;
        self.previous_address = 0;
        self.current_thread = 0;
        self.previous_stack = 0;
        self.recent_allocs.clear();
        self.recent_frees.clear();
        self.stack_nodes_defined = stack_nodes_before;
    }

    /// The highest stack node id defined so far (0 before any).
    #[inline]
    pub fn stack_nodes_defined(&self) -> u64 {
        self.stack_nodes_defined
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What one side writes, the other reads back, whatever the wrap-around.
    #[test]
    fn each_delta_reads_back_as_the_value_written() {
        let (mut writer, mut reader) = (DeltaState::default(), DeltaState::default());
        for value in [5, 3, u64::MAX, 0, 1 << 63, 0x7f00_0000_1000, 12] {
            assert_eq!(reader.seq_from_delta(writer.seq_delta(value)), value);
            assert_eq!(reader.address_from_delta(writer.address_delta(value)), value);
            assert_eq!(reader.stack_from_delta(writer.stack_delta(value)), value);
        }
        assert_eq!(writer.stack_delta(13), 1, "deltas are from the previous value");
    }

    #[test]
    fn a_chunk_starts_from_the_initial_state_but_the_node_count() {
        let mut state = DeltaState::default();
        state.seq_delta(5);
        state.address_delta(0x1000);
        state.stack_delta(3);
        state.set_current_thread(7);
        state.allocated(0x1000);
        state.freed(0x2000);
        state.define_stack_node();
        state.start_chunk(41);
        assert_eq!(state.seq_delta(5), 5);
        assert_eq!(state.address_delta(0x1000), 0x1000);
        assert_eq!(state.stack_delta(3), 3);
        assert_eq!(state.current_thread(), 0);
        assert_eq!(state.recent(Recent::Allocs).get(0), None);
        assert_eq!(state.recent(Recent::Frees).get(0), None);
        assert_eq!(state.define_stack_node(), 42);
    }
}
