//! Writing outputs: atomically (a temporary file renamed into place, never through a
//! planted symlink), durably where they must survive a crash, and large ones with
//! `O_DIRECT` from a background thread. The one implementation of "write a temporary
//! file, then rename" (reports, dumps, the spool, manifests). A leaf: it uses only std
//! and libc.
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
    // The io errors are fields, not `source`s: each message says its cause once.
    #[error("cannot create {path}: {error}")]
    Create { path: PathBuf, error: io::Error },
    #[error("writing {path}: {error}")]
    Write { path: PathBuf, error: io::Error },
    #[error("renaming {from} to {to}: {error}")]
    Rename { from: PathBuf, to: PathBuf, error: io::Error },
    #[error("refusing to write into {dir}: anyone may write there, and without the sticky bit anyone may replace what we write")]
    OpenDirectory { dir: PathBuf },
    #[error("refusing to write through {path}: it is a symlink owned by uid {owner}, neither root nor us")]
    ForeignSymlink { path: PathBuf, owner: u32 },
}

/// How much an output must survive once committed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Readers see the old file or the whole new one, never half (reports: they can be
    /// made again).
    Atomic,
    /// And a crash after the commit keeps it: the file and its directory are fsynced
    /// (dumps, spool entries, manifests).
    Durable,
}

/// A new output being written beside its destination, renamed into place by
/// [`Partial::commit`]; removed if dropped uncommitted.
///
/// The temporary file is created with `O_CREAT | O_EXCL | O_NOFOLLOW`: whatever was at its
/// name (a crash's leftover, or a symlink planted to make root write elsewhere) is removed
/// (a symlink itself, never its target) and the file made anew, so nothing outside the
/// destination's directory is ever opened. The directory must not be writable by others
/// unless it has the sticky bit (`/tmp`): otherwise anyone could swap the file between
/// our writes and the rename.
pub struct Partial {
    file: Option<File>,
    tmp: PathBuf,
    dest: PathBuf,
}

impl Partial {
    /// A new, empty temporary file for `dest`, with permissions `mode` (before the umask).
    pub fn create(dest: &Path, mode: u32) -> Result<Partial, OutputError> {
        check_dir(dest)?;
        let tmp = partial_path(dest);
        let cerr = |error| OutputError::Create { path: tmp.clone(), error };
        let file = match create_new(&tmp, mode) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                // A second one there after removing the first means someone races us: an error.
                remove_stale(&tmp).map_err(cerr)?;
                create_new(&tmp, mode)
            }
            r => r,
        }
        .map_err(cerr)?;
        Ok(Partial { file: Some(file), tmp, dest: dest.to_path_buf() })
    }

    /// The temporary file, to write into.
    pub fn file(&self) -> &File {
        self.file.as_ref().expect("open until committed")
    }

    /// Where it is written until committed.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// Renames the file into place, after fsyncing it (and then its directory) if it
    /// must be `Durable`.
    pub fn commit(mut self, durability: Durability) -> Result<(), OutputError> {
        let file = self.file.take().expect("committed once");
        if durability == Durability::Durable {
            file.sync_all().map_err(|error| OutputError::Write { path: self.tmp.clone(), error })?;
        }
        drop(file);
        std::fs::rename(&self.tmp, &self.dest).map_err(|error| OutputError::Rename {
            from: self.tmp.clone(),
            to: self.dest.clone(),
            error,
        })?;
        // Renamed: nothing to remove any more.
        self.tmp = PathBuf::new();
        if durability == Durability::Durable {
            sync_dir(parent(&self.dest)).map_err(|error| OutputError::Write { path: parent(&self.dest).to_path_buf(), error })?;
        }
        Ok(())
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            self.file = None;
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Refuses a destination whose directory others may write into without the sticky bit.
pub fn check_dir(dest: &Path) -> Result<(), OutputError> {
    use std::os::unix::fs::PermissionsExt;
    let dir = parent(dest);
    match std::fs::metadata(dir) {
        Ok(m) if m.permissions().mode() & 0o002 != 0 && m.permissions().mode() & 0o1000 == 0 => {
            Err(OutputError::OpenDirectory { dir: dir.to_path_buf() })
        }
        // A missing directory fails at the create, with its own error.
        _ => Ok(()),
    }
}

/// Creates a new file with `mode`, never through a symlink and never over what exists.
pub fn create_new(path: &Path, mode: u32) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().write(true).create_new(true).custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC).mode(mode).open(path)
}

/// Removes what sits at a temporary file's name: a file or a symlink (never what it
/// points to); a directory there is an error.
fn remove_stale(path: &Path) -> io::Result<()> {
    let m = std::fs::symlink_metadata(path)?;
    if m.is_dir() {
        return Err(io::Error::new(io::ErrorKind::AlreadyExists, "a directory is in the way"));
    }
    std::fs::remove_file(path)
}

/// Creates `dir` (and what is missing above it) only its owner may enter, as a directory
/// that will hold dumps or what is made from them must be.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Opens an input (a dump, a spec, a manifest) for reading, refusing what is not a regular
/// file, without blocking on it: a FIFO would hang the reader, a device never end.
pub fn open_regular(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    // O_NONBLOCK: opening a FIFO with no writer returns at once instead of waiting for one.
    let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC).open(path)?;
    let t = f.metadata()?.file_type();
    if !t.is_file() {
        let what = match () {
            _ if t.is_dir() => "a directory",
            _ if t.is_fifo() => "a FIFO",
            _ if t.is_char_device() => "a character device",
            _ if t.is_block_device() => "a block device",
            _ if t.is_socket() => "a socket",
            _ => "not a file",
        };
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("not a regular file ({what}); give a file")));
    }
    set_nonblocking(&f, false);
    Ok(f)
}

fn set_nonblocking(file: &File, on: bool) {
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on an fd we own, with integer arguments only.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, if on { flags | libc::O_NONBLOCK } else { flags & !libc::O_NONBLOCK });
        }
    }
}

/// Fsyncs a directory, so that a rename in it survives a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Opens an existing special output (`/dev/null`, a FIFO, `/dev/stdout`) for writing in
/// place. A symlink to it must be root's or ours: one planted by another user is refused.
pub fn open_special(path: &Path) -> Result<File, OutputError> {
    use std::os::unix::fs::MetadataExt;
    if let Ok(m) = std::fs::symlink_metadata(path)
        && m.file_type().is_symlink()
    {
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        if m.uid() != 0 && m.uid() != me {
            return Err(OutputError::ForeignSymlink { path: path.to_path_buf(), owner: m.uid() });
        }
    }
    std::fs::OpenOptions::new().write(true).open(path).map_err(|error| OutputError::Create { path: path.to_path_buf(), error })
}

/// Writes `path` through `write`: a regular file is written beside it and renamed into
/// place (readers never see half a report), private to its owner (0600: reports carry
/// the dumps' payload bytes), a special file is written in place.
pub fn write_atomically(path: &Path, write: impl FnOnce(&mut (dyn Write + Send)) -> io::Result<()>) -> Result<(), OutputError> {
    let werr = |error| OutputError::Write { path: path.to_path_buf(), error };
    if is_special(path) {
        let mut f = open_special(path)?;
        return write(&mut f).and_then(|()| f.flush()).map_err(werr);
    }
    let partial = Partial::create(path, 0o600)?;
    let f = partial.file().try_clone().map_err(werr)?;
    let mut out = DirectFile::new(f);
    write(&mut out).and_then(|()| out.finish()).map_err(werr)?;
    partial.commit(Durability::Atomic)
}

/// Writes `bytes` as `path`, private to its owner (0600), through a temporary file
/// renamed into place; `Durable` also fsyncs the file and its directory.
pub fn write_file(path: &Path, bytes: &[u8], durability: Durability) -> Result<(), OutputError> {
    let partial = Partial::create(path, 0o600)?;
    let mut f = partial.file();
    f.write_all(bytes).map_err(|error| OutputError::Write { path: partial.path().to_path_buf(), error })?;
    partial.commit(durability)
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

    fn tempdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("wgo-outfile-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_symlink_planted_at_the_temporary_name_is_not_followed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempdir("symlink");
        let target = dir.join("victim");
        std::fs::write(&target, "precious").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
        type WriteFn = dyn Fn(&Path) -> Result<(), OutputError>;
        let writes: [(&str, &WriteFn); 3] = [
            ("report.html", &|p| write_atomically(p, |w| w.write_all(b"new"))),
            ("manifest.json", &|p| write_file(p, b"new", Durability::Durable)),
            ("dump.pcapng", &|p| {
                let partial = Partial::create(p, 0o600)?;
                let mut f = partial.file();
                f.write_all(b"new").unwrap();
                partial.commit(Durability::Durable)
            }),
        ];
        for (name, write) in writes {
            let out = dir.join(name);
            std::os::unix::fs::symlink(&target, partial_path(&out)).unwrap();
            // And a dangling one: it must not create what it points to.
            let dangling = dir.join(format!("{name}.nowhere"));
            let out2 = dir.join(format!("{name}.2"));
            std::os::unix::fs::symlink(&dangling, partial_path(&out2)).unwrap();
            write(&out).unwrap();
            write(&out2).unwrap();
            assert_eq!(std::fs::read(&out).unwrap(), b"new", "{name}");
            assert_eq!(std::fs::read(&target).unwrap(), b"precious", "{name}: the symlink's target was written");
            assert_eq!(std::fs::metadata(&target).unwrap().permissions().mode() & 0o777, 0o644, "{name}: its mode changed");
            assert!(!dangling.exists(), "{name}: the dangling symlink's target was created");
            assert!(std::fs::symlink_metadata(partial_path(&out)).is_err(), "{name}: the temporary name is left");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn outputs_are_private_even_over_a_readable_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempdir("private");
        let out = dir.join("timeline.html");
        std::fs::write(&out, "old").unwrap();
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_atomically(&out, |w| w.write_all(b"payload bytes")).unwrap();
        assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o600);
        write_file(&out, b"payload bytes", Durability::Atomic).unwrap();
        assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o600);
        let sub = dir.join("incident/.partial");
        create_private_dir(&sub).unwrap();
        assert_eq!(std::fs::metadata(&sub).unwrap().permissions().mode() & 0o777, 0o700);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_directory_anyone_may_write_into_is_refused_unless_sticky() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempdir("open");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let out = dir.join("report.json");
        let err = write_file(&out, b"x", Durability::Atomic).unwrap_err();
        assert!(matches!(err, OutputError::OpenDirectory { .. }) && err.to_string().contains("anyone may write"), "{err}");
        assert!(!out.exists() && !partial_path(&out).exists());
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        write_file(&out, b"x", Durability::Atomic).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_dropped_partial_leaves_nothing_and_a_leftover_is_replaced() {
        let dir = tempdir("leftover");
        let out = dir.join("dump.pcapng");
        std::fs::write(partial_path(&out), "a crash's leftover").unwrap();
        let p = Partial::create(&out, 0o600).unwrap();
        assert_eq!(std::fs::read(p.path()).unwrap(), b"", "the leftover was not replaced");
        drop(p);
        assert!(!partial_path(&out).exists() && !out.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_input_that_is_not_a_regular_file_is_refused_without_blocking() {
        let dir = tempdir("fifo");
        let fifo = dir.join("node1.pcapng");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // No writer ever comes: a blocking open would hang this test.
        for (p, what) in [(fifo.as_path(), "a FIFO"), (Path::new("/dev/zero"), "a character device"), (dir.as_path(), "a directory")] {
            let err = open_regular(p).unwrap_err();
            assert!(err.kind() == io::ErrorKind::InvalidInput && err.to_string().contains(what), "{}: {err}", p.display());
        }
        let file = dir.join("spec.toml");
        std::fs::write(&file, "name = 'x'").unwrap();
        let mut s = String::new();
        io::Read::read_to_string(&mut open_regular(&file).unwrap(), &mut s).unwrap();
        assert_eq!(s, "name = 'x'");
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
