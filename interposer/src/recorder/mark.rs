//! Marks: the program names a point of its run (`libleak_mark("request 1000")`), so that a
//! report can compare the moments around it. The mark takes a sequence number above every
//! event recorded so far, so readers place it exactly among the events whatever the order
//! in which batches reach the collector.
//!
//! Must never record anything but the mark, and never wait for the collector.

use super::channel;
use super::seq;
use super::state;
use super::thread::as_own_work;
use crate::collector::Message;
use crate::sys;

/// Labels longer than this are cut (at a character boundary).
pub const MAX_LABEL_BYTES: usize = 4096;

/// Records a mark; false when this process is not recording.
pub fn mark(label: &[u8]) -> bool {
    if !state::is_recording() || !state::in_recorded_process() {
        return false;
    }
    as_own_work(|| {
        let mut label = String::from_utf8_lossy(&label[..label.len().min(MAX_LABEL_BYTES)]).into_owned();
        while label.len() > MAX_LABEL_BYTES {
            label.pop();
        }
        // This thread's events so far go first, then the mark, numbered above all of them.
        channel::flush_this_thread();
        channel::send_message(Message::Mark {
            seq: seq::above_all(),
            at: std::time::Instant::now(),
            thread_id: sys::gettid(),
            label,
        });
    });
    true
}
