//! Inflating the next chunk on a helper thread while the records of the current one are
//! decoded: inflation is a tenth of a report's time, and a second core is idle meanwhile.
//!
//! The reader asks for the chunk that follows the one it just loaded, as its frame states
//! it; the answer is taken when the reader gets there, and only when the chunk it wants is
//! the one asked for (after damage the reader looks elsewhere, and inflates inline). Only
//! bytes cross to the helper, never the reader's input, so any input works.
//!
//! Must never change what the reader makes of a file: a chunk inflated ahead is accepted on
//! exactly the checks the reader makes inline (see [`inflate_checked`], which the reader uses inline too). Holds at most one
//! chunk's compressed bytes and one payload in flight.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use flate2::{Decompress, FlushDecompress, Status};

struct Request {
    offset: u64,
    compressed: Vec<u8>,
    payload_len: usize,
    crc: u32,
    /// A spent payload buffer, to inflate into (its pages are already the process's).
    out: Vec<u8>,
}

struct Inflated {
    offset: u64,
    /// `None` when the chunk does not inflate to the length stated, or fails its CRC.
    payload: Option<Vec<u8>>,
    compressed: Vec<u8>,
}

pub(super) struct InflateAhead {
    requests: SyncSender<Request>,
    results: Receiver<Inflated>,
    /// The offset of the chunk asked for and not taken yet.
    pending: Option<u64>,
    /// Buffers back from the helper, for the next request.
    spare_compressed: Vec<u8>,
}

impl InflateAhead {
    /// Starts the helper; `None` when no thread can be made (the reader then inflates inline).
    pub fn start() -> Option<InflateAhead> {
        let (requests, incoming) = sync_channel::<Request>(1);
        let (outgoing, results) = sync_channel::<Inflated>(1);
        std::thread::Builder::new()
            .name("libleak-inflate".into())
            .spawn(move || {
                for mut request in incoming {
                    let valid =
                        inflate_checked(&request.compressed, request.payload_len, request.crc, &mut request.out);
                    let answer = Inflated {
                        offset: request.offset,
                        payload: valid.then_some(request.out),
                        compressed: request.compressed,
                    };
                    if outgoing.send(answer).is_err() {
                        return;
                    }
                }
            })
            .ok()?;
        Some(InflateAhead {
            requests,
            results,
            pending: None,
            spare_compressed: Vec::new(),
        })
    }

    /// Whether a chunk is asked for and not taken yet.
    pub fn is_busy(&self) -> bool {
        self.pending.is_some()
    }

    /// Asks for the chunk at `offset`, whose compressed bytes are `compressed`, to be
    /// inflated into `out` (a spent payload buffer).
    pub fn ask(&mut self, offset: u64, compressed: &[u8], payload_len: usize, crc: u32, out: Vec<u8>) {
        let mut bytes = std::mem::take(&mut self.spare_compressed);
        bytes.clear();
        bytes.extend_from_slice(compressed);
        let request = Request {
            offset,
            compressed: bytes,
            payload_len,
            crc,
            out,
        };
        if self.requests.send(request).is_ok() {
            self.pending = Some(offset);
        }
    }

    /// The chunk at `offset` inflated ahead: `Some(Some(payload))` when it passed the checks,
    /// `Some(None)` when it failed them, `None` when it was not the chunk asked for (whatever
    /// was asked for is dropped).
    pub fn take(&mut self, offset: u64) -> Option<Option<Vec<u8>>> {
        let asked = self.pending.take()?;
        let answer = self.results.recv().ok()?;
        self.spare_compressed = answer.compressed;
        (asked == offset && answer.offset == offset).then_some(answer.payload)
    }
}

/// Inflates `compressed` into `out` as [`inflate_exactly`] does, and checks the result
/// against the chunk's CRC-32: whether the chunk's payload is valid.
pub(super) fn inflate_checked(compressed: &[u8], len: usize, crc: u32, out: &mut Vec<u8>) -> bool {
    inflate_exactly(compressed, len, out) && crc32fast::hash(out) == crc
}

/// Inflates `compressed` into `out` (cleared first), which must then hold exactly `len`
/// bytes, the stream having ended exactly at the end of `compressed`: trailing bytes would
/// mean a `compressed_len` grown by damage, which swallowed the next chunk.
pub(super) fn inflate_exactly(compressed: &[u8], len: usize, out: &mut Vec<u8>) -> bool {
    out.clear();
    // One spare byte, so that a stream longer than stated shows as such instead of stalling.
    out.reserve_exact(len + 1);
    let mut inflater = Decompress::new(false);
    loop {
        let (read, written) = (inflater.total_in(), inflater.total_out());
        let Some(rest) = usize::try_from(read).ok().and_then(|read| compressed.get(read..)) else {
            return false;
        };
        match inflater.decompress_vec(rest, out, FlushDecompress::Finish) {
            Ok(Status::StreamEnd) => {
                return inflater.total_in() == compressed.len() as u64 && out.len() == len;
            }
            Ok(_) if out.len() > len => return false,
            Ok(_) if inflater.total_in() != read || inflater.total_out() != written => {}
            Ok(_) | Err(_) => return false,
        }
    }
}
