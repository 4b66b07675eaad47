//! Taking in what the threads recorded: the messages queued and the threads' partial
//! batches, in an order that keeps each thread's events in the order it recorded them.
//!
//! Must never process a thread's partial batch before the batches it sent earlier.

use super::{Collector, Message};

impl Collector {
    /// Processes every message queued and every thread's partial batch.
    pub(super) fn take_in_everything(&mut self) {
        while let Ok(message) = self.events.try_recv() {
            self.handle(message);
        }
        self.sweep();
        self.retry_rebirths(true);
        self.check_dangling();
    }

    /// Looks for words of the interpreter's static data left pointing into the blocks freed
    /// since the last look (see [`super::dangling`]).
    pub(super) fn check_dangling(&mut self) {
        let candidates = self.dangling.read_candidates(self.modules.modules());
        if candidates.is_empty() {
            return;
        }
        // A block allocated before the read, its event not taken in yet, would look freed.
        self.sweep();
        let live = &self.live;
        self.dangling
            .keep(candidates, &|address| live.live_at(address).is_some());
    }

    /// Takes every thread's partial batch, and processes them after the messages queued
    /// when they were taken: a thread hands its full batch to the channel before it appends
    /// to the next one, so the batches it sent before the one taken are among those, and a
    /// thread's events are taken in in the order it recorded them. (Processed at once, the
    /// partial batch overtook them: a rebirth then met its block's stale predecessor.)
    /// Messages that end the loop's turn (finish, park, finalisation) are left for the loop,
    /// in order, after everything else queued. A module map's change is taken in after the
    /// batches taken, whose frames may lie in a module that went away.
    pub(super) fn sweep(&mut self) {
        let mut taken = Vec::new();
        self.source.take_partial_batches(&mut |batch| taken.push(batch));
        for _ in 0..self.events.len() {
            match self.events.try_recv() {
                Ok(message @ (Message::Finish(_) | Message::Park | Message::Finalizing { .. })) => {
                    self.held_back.push_back(message);
                }
                Ok(message @ Message::Modules(_)) => {
                    for batch in taken.drain(..) {
                        self.process_batch(batch);
                    }
                    self.handle(message);
                }
                Ok(message) => self.handle(message),
                Err(_) => break,
            }
        }
        for batch in taken {
            self.process_batch(batch);
        }
    }
}
