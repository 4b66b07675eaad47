//! How the collector waits for its next message: it naps while messages keep coming, and
//! sleeps on a [`Doorbell`] that producers ring once they stop.
//!
//! Must never use the channel's blocking receive: its first use registers a thread-local
//! destructor, which takes the dynamic loader's lock, and a program thread inside `dlopen`
//! (a library's constructor, holding that lock) that allocates until the channel is full
//! waits for the collector: both would wait for ever.

use std::time::{Duration, Instant};

use crossbeam_channel::{RecvTimeoutError, TryRecvError};

use super::{Collector, Message, SWEEP_INTERVAL};
use crate::sys;
use crate::sys::doorbell::Doorbell;

/// How long after the last message the collector keeps napping rather than sleeping.
const NAPPING: Duration = Duration::from_millis(2);
const NAP_US: u64 = 100;

/// Rung by whoever puts a message on the collector's channel (see [`ring_collector`]).
static DOORBELL: Doorbell = Doorbell::new();

/// Wakes the collector if it sleeps: called after each message put on its channel.
pub fn ring_collector() {
    DOORBELL.ring();
}

impl Collector {
    /// The next message, or a timeout after [`SWEEP_INTERVAL`]. While messages keep coming
    /// the collector naps instead of sleeping on the doorbell: a sleeping receiver makes every
    /// sender of a batch wake it with a system call (and an interrupt to its core), paid by the
    /// program's threads. After [`NAPPING`] without a message it sleeps until a message comes
    /// or the sweep is due, so an idle program's collector wakes 25 times a second.
    pub(super) fn next_message(&self, last_message: Instant) -> Result<Message, RecvTimeoutError> {
        let started = Instant::now();
        loop {
            match self.events.try_recv() {
                Ok(message) => return Ok(message),
                Err(TryRecvError::Disconnected) => return Err(RecvTimeoutError::Disconnected),
                Err(TryRecvError::Empty) => {}
            }
            let waited = started.elapsed();
            if waited >= SWEEP_INTERVAL {
                return Err(RecvTimeoutError::Timeout);
            }
            if last_message.elapsed() < NAPPING {
                sys::sleep_us(NAP_US);
                continue;
            }
            DOORBELL.arm();
            match self.events.try_recv() {
                Ok(message) => {
                    DOORBELL.disarm();
                    return Ok(message);
                }
                Err(TryRecvError::Disconnected) => {
                    DOORBELL.disarm();
                    return Err(RecvTimeoutError::Disconnected);
                }
                Err(TryRecvError::Empty) => DOORBELL.wait((SWEEP_INTERVAL - waited).as_micros() as u64),
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
