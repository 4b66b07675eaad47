//! The trace file as the collector writes it. It holds no descriptor between writes: a program
//! may list its descriptors and expect exactly the ones it opened (CPython's test_subprocess
//! does, for a child under libleak). Every write opens the file by path, moves the descriptor
//! high out of the program's way, checks it is still the trace file (device and inode), writes
//! and closes it again.
//!
//! Programs close descriptors they did not open (daemons, the child side of `subprocess`) and
//! reuse the numbers, possibly while a write is under way. So a descriptor is closed only after
//! checking it is still the trace file; one that is not is forgotten, never written to nor
//! closed. Must never keep a descriptor open after a write returns.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::IntoRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};

use crate::sys;

pub struct TraceFile {
    path: String,
    /// Device and inode of the trace file.
    identity: (u64, u64),
}

impl TraceFile {
    /// Takes the freshly created trace file at `path` and closes it.
    pub fn new(file: File, path: String) -> io::Result<TraceFile> {
        let metadata = file.metadata()?;
        Ok(TraceFile {
            identity: (metadata.dev(), metadata.ino()),
            path,
        })
    }

    /// Where the trace is.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Opens the trace file, appends `bytes` through one descriptor and closes it.
    fn append(&self, bytes: &[u8]) -> io::Result<()> {
        let opened = OpenOptions::new()
            .append(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&self.path)?;
        let high = sys::duplicate_high(&opened);
        self.close_if_ours(opened);
        let file = high.ok_or_else(|| io::Error::other("cannot move the trace descriptor high"))?;
        let written = if self.is_ours(&file) {
            (&file).write_all(bytes)
        } else {
            Err(io::Error::other(format!("{} was replaced", self.path)))
        };
        self.close_if_ours(file);
        written
    }

    fn is_ours(&self, file: &File) -> bool {
        file.metadata().is_ok_and(|m| (m.dev(), m.ino()) == self.identity)
    }

    fn close_if_ours(&self, file: File) {
        if self.is_ours(&file) {
            drop(file);
        } else {
            let _ = file.into_raw_fd();
        }
    }
}

impl Write for TraceFile {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.append(bytes)?;
        Ok(bytes.len())
    }

    /// A chunk is written whole, through one descriptor.
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.append(bytes)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
