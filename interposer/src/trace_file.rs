//! The trace file as the writer writes it. Its descriptor is the program's to close: programs
//! close every descriptor they did not open (daemons, the child side of `subprocess`) and may
//! then open a file of their own under the same number. So before every write the descriptor
//! is checked to still be the trace file; when it is not, the number is forgotten (never
//! written to nor closed: it may be the program's now) and the trace reopened by its path.
//!
//! Must never write to, or close, a descriptor that is not the trace file.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::IntoRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};

use crate::ffi::sys;

pub struct TraceFile {
    file: Option<File>,
    path: String,
    /// Device and inode of the trace file.
    identity: (u64, u64),
}

impl TraceFile {
    /// Takes the freshly created trace file at `path`, moved out of the program's way.
    pub fn new(file: File, path: String) -> io::Result<TraceFile> {
        let file = sys::move_descriptor_high(file);
        let metadata = file.metadata()?;
        Ok(TraceFile {
            identity: (metadata.dev(), metadata.ino()),
            file: Some(file),
            path,
        })
    }

    /// The trace file, reopened by path if the program took its descriptor away.
    fn current(&mut self) -> io::Result<&File> {
        if self.ours().is_none() {
            self.forget();
            let reopened = OpenOptions::new()
                .append(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&self.path)?;
            let metadata = reopened.metadata()?;
            if (metadata.dev(), metadata.ino()) != self.identity {
                return Err(io::Error::other(format!("{} was replaced", self.path)));
            }
            self.file = Some(sys::move_descriptor_high(reopened));
        }
        self.file.as_ref().ok_or_else(|| io::Error::other("no trace file"))
    }

    /// Drops the descriptor without closing it.
    fn forget(&mut self) {
        if let Some(file) = self.file.take() {
            let _ = file.into_raw_fd();
        }
    }

    fn ours(&self) -> Option<&File> {
        let file = self.file.as_ref()?;
        let metadata = file.metadata().ok()?;
        ((metadata.dev(), metadata.ino()) == self.identity).then_some(file)
    }
}

impl Write for TraceFile {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let mut file = self.current()?;
        file.write(bytes)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for TraceFile {
    fn drop(&mut self) {
        if self.ours().is_none() {
            self.forget();
        }
    }
}
