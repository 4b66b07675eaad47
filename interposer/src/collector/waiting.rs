//! How the collector waits for its next message: it naps, and never blocks.
//!
//! Must never use the channel's blocking receive: its first use registers a thread-local
//! destructor, which takes the dynamic loader's lock, and a program thread inside `dlopen`
//! (a library's constructor, holding that lock) that allocates until the channel is full
//! waits for the collector: both would wait for ever.

use std::time::{Duration, Instant};

use crossbeam_channel::{RecvTimeoutError, TryRecvError};

use super::{Collector, Message, SWEEP_INTERVAL};
use crate::sys;

/// How long after the last message the collector keeps to its shortest nap.
const NAPPING: Duration = Duration::from_millis(2);
const NAP_US: u64 = 100;
/// The longest nap of an idle collector.
const IDLE_NAP_US: u64 = 3_200;

impl Collector {
    /// The next message, or a timeout after [`SWEEP_INTERVAL`]. While messages keep coming
    /// the collector naps instead of blocking: a blocked receiver makes every sender of a batch
    /// wake it with a system call (and an interrupt to its core), paid by the program's
    /// threads. After [`NAPPING`] without a message its naps grow to [`IDLE_NAP_US`], so an
    /// idle program's collector wakes up a few hundred times a second at most.
    pub(super) fn next_message(&self, last_message: Instant) -> Result<Message, RecvTimeoutError> {
        let started = Instant::now();
        let mut nap = NAP_US;
        loop {
            match self.events.try_recv() {
                Ok(message) => return Ok(message),
                Err(TryRecvError::Disconnected) => return Err(RecvTimeoutError::Disconnected),
                Err(TryRecvError::Empty) => {
                    if last_message.elapsed() >= NAPPING {
                        if started.elapsed() >= SWEEP_INTERVAL {
                            return Err(RecvTimeoutError::Timeout);
                        }
                        nap = (nap * 2).min(IDLE_NAP_US);
                    }
                    sys::sleep_us(nap);
                }
            }
        }
    }

    /// After a write error: keep producers from blocking until the process ends.
    pub(super) fn discard_until_finish(&mut self) {
        loop {
            match self.next_message(Instant::now()) {
                Ok(Message::Finish(_) | Message::Park) | Err(RecvTimeoutError::Disconnected) => return,
                Ok(_) | Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }
}
