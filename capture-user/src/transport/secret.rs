//! The shared secret file every agent, trigger and collector reads.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, bail};

use super::wire::Secret;

/// A secret longer than this is not a secret file (a device, or the wrong file).
const MAX_SECRET_BYTES: u64 = 4096;

/// Reads the shared secret, refusing a file others can read and anything but a small
/// regular file (reading a FIFO or a device would wait forever or never end).
pub fn load_secret(path: &Path) -> anyhow::Result<Secret> {
    let meta = std::fs::metadata(path).with_context(|| format!("secret file {}", path.display()))?;
    if !meta.is_file() {
        bail!("secret file {} is not a regular file", path.display());
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!("secret file {} is readable by others (mode {mode:o}); make it private with chmod 600", path.display());
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_SECRET_BYTES + 1).read_to_end(&mut bytes))
        .with_context(|| format!("reading secret file {}", path.display()))?;
    if bytes.len() as u64 > MAX_SECRET_BYTES {
        bail!("secret file {} is longer than {MAX_SECRET_BYTES} bytes: is it the right file?", path.display());
    }
    while bytes.last().is_some_and(|b| b.is_ascii_whitespace()) {
        bytes.pop();
    }
    Secret::new(bytes).with_context(|| format!("secret in {} is shorter than 16 bytes", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("wgo-secret-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_private_regular_file_is_read_and_anything_else_refused_at_once() {
        let d = dir("kinds");
        let good = d.join("secret");
        std::fs::write(&good, "0123456789abcdef0123\n").unwrap();
        std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(load_secret(&good).is_ok());

        std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load_secret(&good).unwrap_err().to_string().contains("readable by others"));

        // A FIFO with nobody writing to it: refused without waiting.
        let fifo = d.join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: c is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let t = std::time::Instant::now();
        assert!(load_secret(&fifo).unwrap_err().to_string().contains("not a regular file"));
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
        assert!(load_secret(&d).unwrap_err().to_string().contains("not a regular file"), "a directory");

        let big = d.join("big");
        std::fs::write(&big, vec![b'x'; 10_000]).unwrap();
        std::fs::set_permissions(&big, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(load_secret(&big).unwrap_err().to_string().contains("longer than 4096 bytes"));

        let short = d.join("short");
        std::fs::write(&short, "tiny").unwrap();
        std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(load_secret(&short).unwrap_err().to_string().contains("shorter than 16 bytes"));
        let _ = std::fs::remove_dir_all(d);
    }
}
