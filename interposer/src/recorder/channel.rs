//! How events reach the collector: each thread appends to the batch in its slot, and a full
//! batch goes over a bounded channel (one per fork generation); spare batches come back the
//! other way. When the collector is behind, a producer pauses and offers again, and counts
//! the wait. The collector's sweep takes the threads' partial batches through [`SOURCE`].
//!
//! Must never use the channel's blocking send (see [`offer`]), never send from a thread
//! whose thread-locals are being destroyed, never grow a batch by reallocating it, and never
//! let an event share stack words with one outside its batch (see [`crate::batch`]).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use libleak_format::Stats;

use super::collector_thread::{self, PARKED};
use super::state;
use super::stats::{self, PRODUCER_WAITS};
use super::thread::{ThreadState, EXIT_KEY, THREAD};
use crate::collector::{EventSource, Message};
use crate::sys::buffer::prefetch_for_write;
use crate::sys::{self, slots};
use crate::{python, unwind};

/// A batch is handed to the collector once it holds this many words.
const BATCH_WORDS: usize = 16 * 1024;
/// How far past its end a batch's memory is fetched (for writing) ahead of the events that
/// will fill it: a recycled batch was last read on the collector's core, and without the
/// hint the locked instructions in malloc and free wait for its lines to come over (see
/// docs/benchmarks.md, "Batch prefetch").
const PREFETCH_BYTES: usize = 1024;
/// Batches in flight before producers wait: bounds the memory the interposer adds.
const CHANNEL_BATCHES: usize = 64;
/// How long a producer pauses before offering a message again when the collector is behind.
const COLLECTOR_BEHIND_PAUSE_US: u64 = 100;
/// See [`collector_stuck_after`].
const STUCK_BEYOND_SCAN: Duration = Duration::from_secs(30);
/// Forked generations that get a channel of their own; deeper fork chains are not traced.
pub const MAX_FORK_DEPTH: usize = 64;

struct Channels {
    events: Sender<Message>,
    spare_batches: Receiver<Vec<u64>>,
}
/// The channels of each fork generation: a forked child cannot use its parent's (another
/// thread may have been inside a send at the fork), so it makes new ones one entry further.
static CHANNELS: [OnceLock<Channels>; MAX_FORK_DEPTH] = [const { OnceLock::new() }; MAX_FORK_DEPTH];
static GENERATION: AtomicUsize = AtomicUsize::new(0);

fn channels() -> Option<&'static Channels> {
    CHANNELS.get(GENERATION.load(Ordering::Acquire))?.get()
}

/// Whether this process has channels to send on.
pub fn is_open() -> bool {
    channels().is_some()
}

/// The generation this process's channels belong to.
pub fn generation() -> usize {
    GENERATION.load(Ordering::Relaxed)
}

/// Makes `generation`'s channels and switches to them; returns the collector's ends.
pub fn open(generation: usize) -> (Receiver<Message>, Sender<Vec<u64>>) {
    let (events_tx, events_rx) = crossbeam_channel::bounded(CHANNEL_BATCHES);
    let (spare_tx, spare_rx) = crossbeam_channel::bounded(CHANNEL_BATCHES);
    let _ = CHANNELS[generation].set(Channels {
        events: events_tx,
        spare_batches: spare_rx,
    });
    GENERATION.store(generation, Ordering::Release);
    (events_rx, spare_tx)
}

/// Appends an event to the thread's batch with `write` (given the batch and the thread id),
/// claiming a slot on the thread's first event, and hands the batch on once full.
#[inline(always)]
pub fn push_event(t: &ThreadState, write: impl FnOnce(&mut Vec<u64>, u32)) {
    let slot = match t.slot.get() {
        Some(slot) => slot,
        None => {
            let slot = slots::claim();
            // A full-size batch from the start: growing one by doubling would free the
            // smaller buffers, block addresses and all, into the program's heap, where
            // the exit scan would take the stale addresses for pointers.
            slot.with_batch(|batch| {
                if batch.capacity() < BATCH_WORDS {
                    let mut fresh = fresh_batch();
                    fresh.extend_from_slice(batch);
                    *batch = fresh;
                }
            });
            if let Some(key) = EXIT_KEY.get() {
                key.set(slot);
            }
            t.slot.set(Some(slot));
            t.thread_id.set(sys::gettid());
            // The batch may hold an exited thread's events: this thread's stacks start afresh.
            t.previous_stack.forget();
            slot
        }
    };
    let thread_id = t.thread_id.get();
    let may_send = !t.exiting.get();
    let full = slot.with_batch(|batch| {
        let before = batch.len();
        if before == 0 {
            // A batch is only ever replaced by an empty one, which only this thread fills:
            // the previous stack went with the batch that held it.
            t.previous_stack.forget();
        }
        write(batch, thread_id);
        // The lines as far ahead of the batch's end as this event's words reach.
        prefetch_for_write(batch, before * 8 + PREFETCH_BYTES, batch.len() * 8 + PREFETCH_BYTES);
        (batch.len() >= BATCH_WORDS && may_send).then(|| std::mem::replace(batch, fresh_batch()))
    });
    if let Some(full) = full {
        send_batch(full);
        // See RESUME_AFTER_FORK: a full batch is no thread count check's doing.
        if PARKED.load(Ordering::Relaxed) {
            collector_thread::resume();
        }
    }
    if PARKED.load(Ordering::Relaxed) {
        collector_thread::resume_if_due();
    }
}

/// A batch to fill: a spare one back from the collector, else a new one with room for a
/// whole event past [`BATCH_WORDS`].
pub fn fresh_batch() -> Vec<u64> {
    channels()
        .and_then(|c| c.spare_batches.try_recv().ok())
        .unwrap_or_else(|| Vec::with_capacity(BATCH_WORDS + unwind::MAX_FRAMES + python::MAX_WORDS + 8))
}

pub fn send_batch(batch: Vec<u64>) {
    if !batch.is_empty() {
        send_message(Message::Batch(batch));
    }
}

/// Hands a message to the collector, waiting (and counting the wait) when it is behind. An
/// exiting thread sends nothing (see [`offer`]); its batches wait in its slot for the sweep,
/// and a code object it defines is lost (its frames then read "unknown code").
pub fn send_message(message: Message) {
    if THREAD.with(|t| t.exiting.get()) {
        return;
    }
    if !state::in_recorded_process() {
        // A vfork child (sharing our memory: it must change nothing) or a child made without
        // fork handlers (clone, _Fork), which has no collector.
        return;
    }
    offer(message, None);
}

/// Puts `message` on the collector's channel, retrying while it is full until `deadline`.
///
/// Never uses the channel's blocking send: that registers the caller with
/// `std::thread::current()`, which panics in a thread whose thread-locals are being destroyed
/// (a thread-exit destructor that frees memory, or libleak's own thread-exit flush).
pub fn offer(mut message: Message, deadline: Option<Instant>) -> bool {
    let Some(channels) = channels() else { return false };
    // Counted in pauses taken, not on the clock: a process stopped (a signal, a debugger)
    // while one of its threads waits has not waited on the collector meanwhile.
    let mut paused = Duration::ZERO;
    loop {
        match channels.events.try_send(message) {
            Ok(()) => {
                crate::collector::ring_collector();
                return true;
            }
            Err(TrySendError::Full(returned)) => {
                if PARKED.load(Ordering::Acquire) {
                    collector_thread::resume();
                }
                if paused.is_zero() {
                    stats::count(&PRODUCER_WAITS);
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return false;
                }
                if paused >= collector_stuck_after() {
                    give_up_on_collector(paused);
                    return false;
                }
                paused += Duration::from_micros(COLLECTOR_BEHIND_PAUSE_US);
                message = returned;
                sys::sleep_us(COLLECTOR_BEHIND_PAUSE_US);
            }
            Err(TrySendError::Disconnected(_)) => {
                state::turn_off();
                return false;
            }
        }
    }
}

/// How long a full channel may stay full before the collector is taken for stuck: longer than
/// its longest legitimate pause, a reachability scan (which takes in no events) at its time
/// limit.
fn collector_stuck_after() -> Duration {
    let scan = crate::config::get().and_then(|c| c.scan_time_limit).unwrap_or_default();
    scan + STUCK_BEYOND_SCAN
}

/// The collector took nothing for longer than it ever should (a lock this thread holds, which
/// the collector waits for, is the one way known): recording stops, so that the program goes
/// on as it would have, and the trace ends here, cut short.
fn give_up_on_collector(waited: Duration) {
    if state::turn_off() != state::State::Off {
        sys::write_stderr(
            format!(
                "libleak: the trace writer took no event for {} s; recording stopped, the trace is cut short here\n",
                waited.as_secs()
            )
            .as_bytes(),
        );
    }
}

/// Sends this thread's partial batch now (before a module-map snapshot, so the collector
/// sees its events against the old map).
pub fn flush_this_thread() {
    if let Some(slot) = THREAD.with(|t| t.slot.get()) {
        let batch = slot.with_batch(|batch| std::mem::replace(batch, fresh_batch()));
        send_batch(batch);
    }
}

/// What the collector reads from the recorder.
pub struct RecorderSource;

/// The recorder, as the collector sees it.
pub static SOURCE: RecorderSource = RecorderSource;

static BARRIER_FAILED: AtomicBool = AtomicBool::new(false);

impl EventSource for RecorderSource {
    fn take_partial_batches(&self, each: &mut dyn FnMut(Vec<u64>)) {
        let mut taken = Vec::new();
        let took = slots::for_each_batch(|batch| {
            if !batch.is_empty() {
                taken.push(std::mem::replace(batch, fresh_batch()));
            }
        });
        if !took && !BARRIER_FAILED.swap(true, Ordering::Relaxed) {
            sys::write_stderr(b"libleak: membarrier failed; events of idle threads may be missing from the trace\n");
        }
        taken.into_iter().for_each(each);
    }

    fn stats(&self) -> Stats {
        stats::snapshot()
    }
}
