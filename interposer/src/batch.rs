//! The in-memory event, defined once: how a recording thread packs an allocation or a free
//! into its batch (a `Vec<u64>`), and how the collector reads it back. Both sides use only
//! this file, so the layout cannot drift between them.
//!
//! An event is a header word followed by its fields, frames innermost first:
//! - alloc: `[header, seq, address, size, frame…]`;
//! - free:  `[header, seq, address]`;
//! - reborn: `[header, free_seq, alloc_seq, block, frame…]`: a Python object a constructor
//!   took off a free list, whose block (starting at `block`, the object's header before it)
//!   is to be freed and allocated again with this stack;
//!
//! where `header = tag | kind << 4 | frame_count << 8 | shared_frames << 20 | thread_id << 32`.
//! Frame words are those of [`crate::stack_words`]. An event's stack is its `frame_count`
//! words, innermost first, followed by the outermost `shared_frames` words of the stack of
//! the previous event with a stack in the same batch, which are not repeated: under deep
//! import chains nearly every stack shares most of its outer frames with the one before, and
//! copying them to the collector's core would cost more than finding them (see
//! docs/benchmarks.md, "Shared outer frames"). The first event with a stack in a batch shares
//! nothing.
//!
//! Must never allocate: packing runs inside the hooks, into a batch with room reserved.

use libleak_format::AllocKind;

use crate::python::free_lists::StaleSlots;

/// Which event a header starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum BatchTag {
    Alloc = 1,
    Free = 2,
    Reborn = 3,
}

/// The first word of every event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub tag: BatchTag,
    /// Meaningful for allocations only.
    pub kind: AllocKind,
    /// Stack words after an allocation's fixed fields (at most [`MAX_STACK_WORDS`]).
    pub frame_count: usize,
    /// Outer words of the stack taken from the previous event with a stack in the batch (at
    /// most [`MAX_STACK_WORDS`]).
    pub shared_frames: usize,
    pub thread_id: u32,
}

/// Most words a stack can have in a header's 12-bit fields.
pub const MAX_STACK_WORDS: usize = (1 << 12) - 1;
const _: () = assert!((AllocKind::FreeListReuse as u8) < 16);

impl Header {
    #[inline(always)]
    pub fn pack(self) -> u64 {
        self.tag as u64
            | (self.kind as u64 & 0xf) << 4
            | (self.frame_count as u64 & 0xfff) << 8
            | (self.shared_frames as u64 & 0xfff) << 20
            | u64::from(self.thread_id) << 32
    }

    /// None for a word that starts no event.
    #[inline(always)]
    pub fn unpack(word: u64) -> Option<Header> {
        let tag = match word & 0xf {
            1 => BatchTag::Alloc,
            2 => BatchTag::Free,
            3 => BatchTag::Reborn,
            _ => return None,
        };
        Some(Header {
            tag,
            kind: AllocKind::from_u8(((word >> 4) & 0xf) as u8).unwrap_or(AllocKind::Malloc),
            frame_count: ((word >> 8) & 0xfff) as usize,
            shared_frames: ((word >> 20) & 0xfff) as usize,
            thread_id: (word >> 32) as u32,
        })
    }
}

/// Appends an allocation's fixed fields; its `frame_count` stack words must follow.
#[inline(always)]
pub fn push_alloc(batch: &mut Vec<u64>, header: Header, seq: u64, address: usize, size: usize) {
    batch.extend_from_slice(&[header.pack(), seq, address as u64, size as u64]);
}

/// Appends a free.
#[inline(always)]
pub fn push_free(batch: &mut Vec<u64>, thread_id: u32, seq: u64, address: usize) {
    let header = Header {
        tag: BatchTag::Free,
        kind: AllocKind::Malloc,
        frame_count: 0,
        shared_frames: 0,
        thread_id,
    };
    batch.extend_from_slice(&[header.pack(), seq, address as u64]);
}

/// Appends a reborn object's fixed fields; its `frame_count` stack words must follow.
/// `stale`: the free-list slots that still name the object.
#[inline(always)]
pub fn push_reborn(batch: &mut Vec<u64>, header: Header, seqs: (u64, u64), block: usize, stale: StaleSlots) {
    batch.extend_from_slice(&[
        header.pack(),
        seqs.0,
        seqs.1,
        block as u64,
        stale.first as u64,
        stale.more,
    ]);
}

/// An event kept aside without a stack or a thread (a signal handler's, recorded while its
/// thread was busy recording another), packed into a fixed number of words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeferredEvent {
    pub tag: BatchTag,
    pub kind: AllocKind,
    pub seq: u64,
    pub address: usize,
    pub size: usize,
}

/// Words of a packed [`DeferredEvent`].
pub const DEFERRED_WORDS: usize = 4;

impl DeferredEvent {
    pub fn pack(self) -> [u64; DEFERRED_WORDS] {
        let header = Header {
            tag: self.tag,
            kind: self.kind,
            frame_count: 0,
            shared_frames: 0,
            thread_id: 0,
        };
        [header.pack(), self.seq, self.address as u64, self.size as u64]
    }

    pub fn unpack(words: [u64; DEFERRED_WORDS]) -> Option<DeferredEvent> {
        let header = Header::unpack(words[0])?;
        Some(DeferredEvent {
            tag: header.tag,
            kind: header.kind,
            seq: words[1],
            address: words[2] as usize,
            size: words[3] as usize,
        })
    }

    /// Appends the event to a batch as `thread_id`'s, with no stack.
    pub fn push(self, batch: &mut Vec<u64>, thread_id: u32) {
        match self.tag {
            BatchTag::Alloc => {
                let header = Header {
                    tag: BatchTag::Alloc,
                    kind: self.kind,
                    frame_count: 0,
                    shared_frames: 0,
                    thread_id,
                };
                push_alloc(batch, header, self.seq, self.address, self.size);
            }
            BatchTag::Free => push_free(batch, thread_id, self.seq, self.address),
            // Never deferred: a reborn object is only recorded outside signal handlers.
            BatchTag::Reborn => {}
        }
    }
}

/// An event read back from a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchEvent<'a> {
    Alloc {
        kind: AllocKind,
        thread_id: u32,
        seq: u64,
        address: u64,
        size: u64,
        /// Stack words, innermost first, not counting the shared outer ones.
        frames: &'a [u64],
        /// Outer words of the batch's previous stack that this one has too.
        shared_frames: usize,
    },
    Free {
        thread_id: u32,
        seq: u64,
        address: u64,
    },
    /// A Python object taken off a free list: its block is freed at `free_seq` and allocated
    /// again at `alloc_seq` with these frames.
    Reborn {
        thread_id: u32,
        free_seq: u64,
        alloc_seq: u64,
        /// Where the object's block starts.
        block: u64,
        /// The free-list slots that still name the object.
        stale: StaleSlots,
        /// Stack words, innermost first, not counting the shared outer ones.
        frames: &'a [u64],
        /// Outer words of the batch's previous stack that this one has too.
        shared_frames: usize,
    },
}

/// The events of a batch, in the order they were recorded. Stops at the first word that
/// starts no whole event (which packing never leaves).
pub struct BatchEvents<'a> {
    words: &'a [u64],
}

impl<'a> BatchEvents<'a> {
    pub fn new(words: &'a [u64]) -> BatchEvents<'a> {
        BatchEvents { words }
    }
}

impl<'a> Iterator for BatchEvents<'a> {
    type Item = BatchEvent<'a>;

    #[inline(always)]
    fn next(&mut self) -> Option<BatchEvent<'a>> {
        let header = Header::unpack(*self.words.first()?)?;
        match header.tag {
            BatchTag::Alloc => {
                let &[_, seq, address, size, ref rest @ ..] = self.words else {
                    self.words = &[];
                    return None;
                };
                let (frames, rest) = rest.split_at(header.frame_count.min(rest.len()));
                self.words = rest;
                Some(BatchEvent::Alloc {
                    kind: header.kind,
                    thread_id: header.thread_id,
                    seq,
                    address,
                    size,
                    frames,
                    shared_frames: header.shared_frames,
                })
            }
            BatchTag::Reborn => {
                let &[_, free_seq, alloc_seq, block, first, more, ref rest @ ..] = self.words else {
                    self.words = &[];
                    return None;
                };
                let (frames, rest) = rest.split_at(header.frame_count.min(rest.len()));
                self.words = rest;
                Some(BatchEvent::Reborn {
                    thread_id: header.thread_id,
                    free_seq,
                    alloc_seq,
                    block,
                    stale: StaleSlots {
                        first: first as usize,
                        more,
                    },
                    frames,
                    shared_frames: header.shared_frames,
                })
            }
            BatchTag::Free => {
                let &[_, seq, address, ref rest @ ..] = self.words else {
                    self.words = &[];
                    return None;
                };
                self.words = rest;
                Some(BatchEvent::Free {
                    thread_id: header.thread_id,
                    seq,
                    address,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_read_back_as_packed() {
        let mut batch = Vec::new();
        let header = Header {
            tag: BatchTag::Alloc,
            kind: AllocKind::PosixMemalign,
            frame_count: 2,
            shared_frames: 0,
            thread_id: 0xfedc_ba98,
        };
        push_alloc(&mut batch, header, 7, 0x1000, 48);
        batch.extend_from_slice(&[0x4010, 0x4020]);
        push_free(&mut batch, 3, 8, 0x1000);
        DeferredEvent {
            tag: BatchTag::Alloc,
            kind: AllocKind::Calloc,
            seq: 9,
            address: 0x2000,
            size: 16,
        }
        .push(&mut batch, 5);
        let reborn = Header {
            tag: BatchTag::Reborn,
            kind: AllocKind::FreeListReuse,
            frame_count: 1,
            shared_frames: 2,
            thread_id: 6,
        };
        let stale = StaleSlots { first: 0x7000, more: 2 };
        push_reborn(&mut batch, reborn, (10, 11), 0x3010, stale);
        batch.push(0x4030);
        let events: Vec<_> = BatchEvents::new(&batch).collect();
        assert_eq!(
            events,
            [
                BatchEvent::Alloc {
                    kind: AllocKind::PosixMemalign,
                    thread_id: 0xfedc_ba98,
                    seq: 7,
                    address: 0x1000,
                    size: 48,
                    frames: &[0x4010, 0x4020],
                    shared_frames: 0,
                },
                BatchEvent::Free {
                    thread_id: 3,
                    seq: 8,
                    address: 0x1000
                },
                BatchEvent::Alloc {
                    kind: AllocKind::Calloc,
                    thread_id: 5,
                    seq: 9,
                    address: 0x2000,
                    size: 16,
                    frames: &[],
                    shared_frames: 0,
                },
                BatchEvent::Reborn {
                    thread_id: 6,
                    free_seq: 10,
                    alloc_seq: 11,
                    block: 0x3010,
                    stale,
                    frames: &[0x4030],
                    shared_frames: 2,
                },
            ]
        );
    }

    #[test]
    fn a_header_round_trips_and_a_stray_word_is_no_event() {
        let header = Header {
            tag: BatchTag::Free,
            kind: AllocKind::Malloc,
            frame_count: 0,
            shared_frames: 0,
            thread_id: u32::MAX,
        };
        assert_eq!(Header::unpack(header.pack()), Some(header));
        let widest = Header {
            tag: BatchTag::Reborn,
            kind: AllocKind::FreeListReuse,
            frame_count: MAX_STACK_WORDS,
            shared_frames: MAX_STACK_WORDS,
            thread_id: u32::MAX,
        };
        assert_eq!(Header::unpack(widest.pack()), Some(widest));
        assert_eq!(Header::unpack(0), None);
        assert_eq!(BatchEvents::new(&[0, 1, 2]).count(), 0);
        // An allocation cut short yields nothing rather than reading past the batch.
        assert_eq!(BatchEvents::new(&[header.pack() & !0xf | 1, 1, 2]).count(), 0);
    }

    #[test]
    fn a_deferred_event_round_trips() {
        let event = DeferredEvent {
            tag: BatchTag::Free,
            kind: AllocKind::Malloc,
            seq: 11,
            address: 0xdead_0000,
            size: 0,
        };
        assert_eq!(DeferredEvent::unpack(event.pack()), Some(event));
    }
}
