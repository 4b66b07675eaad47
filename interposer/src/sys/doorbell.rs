//! A word one thread sleeps on and other threads wake it through: a private futex. The
//! collector sleeps on it when idle, and a producer that hands it a message rings it, so an
//! idle program's collector wakes only when there is work (or for its periodic sweep).
//!
//! Ringing an unarmed doorbell costs a fence and a load, no system call. Must never block a
//! ringing thread, and never take a lock.

use std::sync::atomic::{fence, AtomicU32, Ordering};

const IDLE: u32 = 0;
const ARMED: u32 = 1;

pub struct Doorbell(AtomicU32);

impl Doorbell {
    pub const fn new() -> Doorbell {
        Doorbell(AtomicU32::new(IDLE))
    }

    /// The sleeper is about to look for work one last time before [`Doorbell::wait`]: from
    /// here on a ring wakes it (or makes its wait return at once).
    pub fn arm(&self) {
        self.0.store(ARMED, Ordering::SeqCst);
        // Pairs with the fence in `ring`: either the sleeper's last look sees the work, or the
        // ringer sees the doorbell armed.
        fence(Ordering::SeqCst);
    }

    /// The sleeper found work after arming: no need to be woken.
    pub fn disarm(&self) {
        self.0.store(IDLE, Ordering::Relaxed);
    }

    /// Sleeps while armed and not rung, at most `timeout_us`; disarms.
    pub fn wait(&self, timeout_us: u64) {
        let timeout = libc::timespec {
            tv_sec: (timeout_us / 1_000_000) as libc::time_t,
            tv_nsec: ((timeout_us % 1_000_000) * 1000) as libc::c_long,
        };
        // SAFETY: FUTEX_WAIT on a valid, aligned u32 of this process with a valid relative
        // timeout; it returns at once when the word is no longer ARMED.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                self.0.as_ptr(),
                libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                ARMED,
                &timeout as *const libc::timespec,
            )
        };
        self.0.store(IDLE, Ordering::Relaxed);
    }

    /// Wakes the sleeper if it is armed. Called after the work was made visible.
    pub fn ring(&self) {
        fence(Ordering::SeqCst);
        if self.0.load(Ordering::Relaxed) == ARMED && self.0.swap(IDLE, Ordering::SeqCst) == ARMED {
            // SAFETY: FUTEX_WAKE on a valid, aligned u32 of this process, waking one waiter.
            unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    self.0.as_ptr(),
                    libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
                    1,
                )
            };
        }
    }
}
