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

/// Bytes of randomness in a new secret.
const NEW_SECRET_BYTES: usize = 32;

/// A new secret: random bytes in base64, a line of text that copies between hosts.
pub fn new_secret_text() -> String {
    use base64::Engine;
    let bytes: [u8; NEW_SECRET_BYTES] = super::wire::random_bytes();
    format!("{}\n", base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// Writes a new secret into a new file at `path`, readable by its owner alone: a missing
/// directory is made (0700), and the file is created 0600, so it is never readable by
/// others, not even for a moment. An existing file is left alone (every host must keep
/// the same secret).
pub fn create_secret_file(path: &Path) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => {
            anyhow::anyhow!("{} exists already: every host needs the same secret, so it is not replaced", path.display())
        }
        _ => anyhow::Error::new(e).context(format!("creating secret file {}", path.display())),
    })?;
    // The umask may have taken bits away, never added them: set the mode exactly.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(new_secret_text().as_bytes()).and_then(|()| f.sync_all()).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Writes a new secret to `out` (standard output, as in `wgo secret > FILE`). A regular
/// file is made private (0600) before the secret is in it.
pub fn write_secret_to(out: &std::fs::File) -> anyhow::Result<()> {
    use std::io::Write;
    let meta = out.metadata().context("looking at the output")?;
    if meta.is_file() {
        out.set_permissions(std::fs::Permissions::from_mode(0o600)).context("making the output file private (chmod 600)")?;
    }
    let mut w = out;
    w.write_all(new_secret_text().as_bytes()).context("writing the secret")?;
    Ok(())
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

    #[test]
    fn a_new_secret_file_is_private_from_the_start_and_loads() {
        let d = dir("new");
        // A missing directory is made, private; the file is 0600 whatever the umask.
        let path = d.join("etc-wgo").join("secret");
        create_secret_file(&path).unwrap();
        assert_eq!(std::fs::metadata(path.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let first = std::fs::read(&path).unwrap();
        assert!(load_secret(&path).is_ok());
        // Never replaced: other hosts hold the same one.
        assert!(create_secret_file(&path).unwrap_err().to_string().contains("exists already"));
        assert_eq!(std::fs::read(&path).unwrap(), first);
        // Two secrets differ.
        let other = d.join("other");
        create_secret_file(&other).unwrap();
        assert_ne!(std::fs::read(&other).unwrap(), first);

        // `wgo secret > FILE`: the shell made the file 0644; it is made private first.
        let redirected = d.join("redirected");
        let f = std::fs::File::create(&redirected).unwrap();
        f.set_permissions(std::fs::Permissions::from_mode(0o644)).unwrap();
        write_secret_to(&f).unwrap();
        drop(f);
        assert_eq!(std::fs::metadata(&redirected).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(load_secret(&redirected).is_ok());
        let _ = std::fs::remove_dir_all(d);
    }
}
