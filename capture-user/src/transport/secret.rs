//! The shared secret file every agent, trigger and collector reads.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, bail};

use super::wire::Secret;

/// Reads the shared secret, refusing a file others can read.
pub fn load_secret(path: &Path) -> anyhow::Result<Secret> {
    let meta = std::fs::metadata(path).with_context(|| format!("secret file {}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!("secret file {} is readable by others (mode {mode:o}); make it private with chmod 600", path.display());
    }
    let mut bytes = std::fs::read(path).with_context(|| format!("reading secret file {}", path.display()))?;
    while bytes.last().is_some_and(|b| b.is_ascii_whitespace()) {
        bytes.pop();
    }
    Secret::new(bytes).with_context(|| format!("secret in {} is shorter than 16 bytes", path.display()))
}
