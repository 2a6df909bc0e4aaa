//! Writing large outputs: atomically (a temporary file renamed into place), and with
//! `O_DIRECT` from a background thread. A leaf: it uses only std and libc.
//!
//! Why direct I/O: a report's JSON can be gigabytes. Through the page cache every
//! byte is copied by the CPU into freshly allocated cache pages, which costs more than
//! formatting it (on a VM whose free pages are handed back to the host, each of those
//! pages is faulted in again). With `O_DIRECT` the device reads our buffers itself, and
//! a thread waiting for it leaves the cores to the formatting.

use std::alloc::Layout;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

/// Alignment of direct I/O buffers, offsets and lengths (a page covers every block size).
const ALIGN: usize = 4096;
/// Bytes per write: from 1 to 4 MiB, the block size made no difference here.
const BLOCK: usize = 1 << 20;
/// Buffers: one filling while the other is written.
const BUFFERS: usize = 2;

/// A page-aligned heap buffer of `BLOCK` bytes.
struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: the buffer is owned memory, moved between threads whole.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    fn layout() -> Layout {
        Layout::from_size_align(BLOCK, ALIGN).expect("valid layout")
    }
    fn new() -> AlignedBuf {
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc(Self::layout()) };
        let ptr = std::ptr::NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(Self::layout()));
        AlignedBuf { ptr, len: 0 }
    }
    fn filled(&self) -> &[u8] {
        // SAFETY: the first `len` bytes were written by `fill`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
    /// Appends as much of `b` as fits; returns how much.
    fn fill(&mut self, b: &[u8]) -> usize {
        let n = b.len().min(BLOCK - self.len);
        // SAFETY: `len + n <= BLOCK`, and `b` cannot overlap memory we own.
        unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), self.ptr.as_ptr().add(self.len), n) };
        self.len += n;
        n
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with the same layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), Self::layout()) };
    }
}

/// A file written in `BLOCK`-sized pieces by a background thread, with `O_DIRECT`
/// where the file system allows it (else through the page cache, as usual).
/// Call [`DirectFile::finish`]: dropping it without finishing loses the last bytes'
/// error, not the bytes.
pub struct DirectFile {
    current: Option<AlignedBuf>,
    to_io: Option<SyncSender<AlignedBuf>>,
    free: Receiver<AlignedBuf>,
    io: Option<JoinHandle<io::Result<File>>>,
}

impl DirectFile {
    pub fn new(file: File) -> DirectFile {
        let (to_io, work) = sync_channel::<AlignedBuf>(BUFFERS);
        let (give_back, free) = sync_channel::<AlignedBuf>(BUFFERS);
        for _ in 1..BUFFERS {
            give_back.send(AlignedBuf::new()).expect("room for every buffer");
        }
        let io = std::thread::Builder::new()
            .name("wgo-write".into())
            .spawn(move || -> io::Result<File> {
                let mut direct = set_direct(&file, true);
                for mut buf in work {
                    write_block(&file, &mut direct, buf.filled())?;
                    buf.len = 0;
                    let _ = give_back.send(buf);
                }
                Ok(file)
            })
            .expect("spawning the writer thread");
        DirectFile { current: Some(AlignedBuf::new()), to_io: Some(to_io), free, io: Some(io) }
    }

    /// Hands the current buffer to the writer thread and takes a free one.
    fn submit(&mut self) -> io::Result<()> {
        let buf = self.current.take().expect("a buffer between calls");
        if self.to_io.as_ref().expect("open until finished").send(buf).is_err() {
            return Err(self.writer_error());
        }
        match self.free.recv() {
            Ok(b) => {
                self.current = Some(b);
                Ok(())
            }
            Err(_) => Err(self.writer_error()),
        }
    }

    /// The writer thread's error, once it stopped.
    fn writer_error(&mut self) -> io::Error {
        self.to_io = None;
        match self.io.take().map(|h| h.join()) {
            Some(Ok(Err(e))) => e,
            Some(Err(_)) => io::Error::other("the writer thread panicked"),
            _ => io::Error::other("the writer thread stopped"),
        }
    }

    /// Hands the last, partly filled buffer to the writer thread and ends its queue;
    /// false if the writer thread already stopped.
    fn close(&mut self) -> bool {
        match (self.current.take().filter(|b| b.len > 0), self.to_io.take()) {
            (Some(buf), Some(tx)) => tx.send(buf).is_ok(),
            _ => true,
        }
    }

    /// Writes what is buffered, waits for the writer thread, and returns the file.
    pub fn finish(mut self) -> io::Result<File> {
        if !self.close() {
            return Err(self.writer_error());
        }
        match self.io.take().expect("finished once").join() {
            Ok(r) => r,
            Err(_) => Err(io::Error::other("the writer thread panicked")),
        }
    }
}

impl Write for DirectFile {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        if self.current.as_ref().is_some_and(|c| c.len == BLOCK) {
            self.submit()?;
        }
        let Some(cur) = self.current.as_mut() else { return Err(self.writer_error()) };
        Ok(cur.fill(b))
    }
    /// Buffers are written when full or at [`DirectFile::finish`]: an early partial
    /// block could not be written directly.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for DirectFile {
    fn drop(&mut self) {
        if let Some(h) = self.io.take() {
            self.close();
            let _ = h.join();
        }
    }
}

/// Turns `O_DIRECT` on or off; false if the file system refuses it.
fn set_direct(file: &File, on: bool) -> bool {
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on an fd we own, with integer arguments only.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 {
            return false;
        }
        let want = if on { flags | libc::O_DIRECT } else { flags & !libc::O_DIRECT };
        libc::fcntl(fd, libc::F_SETFL, want) == 0 && on
    }
}

/// Writes one buffer at the file's end: directly when it is whole blocks, else (the
/// last one, or a file system that refuses direct writes) through the page cache.
fn write_block(mut file: &File, direct: &mut bool, b: &[u8]) -> io::Result<()> {
    if *direct && !b.len().is_multiple_of(ALIGN) {
        *direct = set_direct(file, false);
    }
    if *direct {
        match file.write_all(b) {
            // Refused before anything was written: some file systems accept the flag
            // and reject the I/O.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => *direct = set_direct(file, false),
            r => return r,
        }
    }
    file.write_all(b)
}

/// True for an existing output that is not a regular file (/dev/null, a FIFO, a terminal):
/// it is written in place, never replaced by a rename.
pub fn is_special(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| !m.is_file() && !m.is_dir())
}

/// Where an output is written before it is renamed into place.
pub fn partial_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    out.with_file_name(name)
}

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("cannot create {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("renaming {from} to {to}: {source}")]
    Rename { from: PathBuf, to: PathBuf, source: io::Error },
}

/// Writes `path` through `write`: a regular file is written beside it and renamed into
/// place (readers never see half a report), a special file is written in place.
pub fn write_atomically(path: &Path, write: impl FnOnce(&mut (dyn Write + Send)) -> io::Result<()>) -> Result<(), OutputError> {
    let werr = |source| OutputError::Write { path: path.to_path_buf(), source };
    if is_special(path) {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|source| OutputError::Create { path: path.to_path_buf(), source })?;
        return write(&mut f).and_then(|()| f.flush()).map_err(werr);
    }
    let tmp = partial_path(path);
    let f = File::create(&tmp).map_err(|source| OutputError::Create { path: path.to_path_buf(), source })?;
    let mut out = DirectFile::new(f);
    let written = write(&mut out).and_then(|()| out.finish());
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(werr(e));
    }
    std::fs::rename(&tmp, path).map_err(|source| OutputError::Rename { from: tmp, to: path.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 4099) as u8).collect()
    }

    #[test]
    fn writes_every_byte_in_order_across_blocks() {
        // The temporary directory (a disk here: direct I/O), and tmpfs where there is one
        // (which may refuse O_DIRECT: the page cache then).
        for base in [std::env::temp_dir(), PathBuf::from("/dev/shm")] {
            if base.is_dir() {
                writes_every_byte_in(&base);
            }
        }
    }

    fn writes_every_byte_in(base: &Path) {
        let dir = base.join(format!("wgo-outfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Empty, less than a page, exactly a block, and blocks plus an odd tail, written
        // in uneven pieces.
        for n in [0, 100, BLOCK, 3 * BLOCK + 12_345] {
            let data = bytes(n);
            let path = dir.join(format!("out-{n}"));
            write_atomically(&path, |w| {
                for piece in data.chunks(1_000_003) {
                    w.write_all(piece)?;
                }
                Ok(())
            })
            .unwrap();
            assert!(std::fs::read(&path).unwrap() == data, "{n} bytes came back different");
            assert!(!partial_path(&path).exists());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_write_leaves_no_file_behind() {
        let dir = std::env::temp_dir().join(format!("wgo-outfile-fail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out.json");
        let err = write_atomically(&path, |w| {
            w.write_all(&bytes(BLOCK + 10))?;
            Err(io::Error::other("formatting failed"))
        })
        .unwrap_err();
        assert!(err.to_string().contains("formatting failed") && err.to_string().contains("out.json"), "{err}");
        assert!(!path.exists() && !partial_path(&path).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_full_disk_is_an_error_not_a_short_file() {
        // /dev/full fails every write with ENOSPC; opened as a plain file so the
        // writer thread sees the error.
        let Ok(f) = std::fs::OpenOptions::new().write(true).open("/dev/full") else { return };
        let mut out = DirectFile::new(f);
        let r = out.write_all(&bytes(3 * BLOCK)).and_then(|()| out.finish().map(drop));
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::ENOSPC));
    }
}
