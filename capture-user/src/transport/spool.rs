//! The agent's spool: dumps waiting to be shipped, each with a JSON entry beside it
//! saying where it goes and whether it went.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What the spool knows about one dump (stored as JSON beside it).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SpoolEntry {
    pub node: String,
    pub trigger_id: u64,
    pub heard_ns: i64,
    /// Where the trigger asked for it to go.
    pub collector: String,
    pub size: u64,
    pub sha256: String,
    pub shipped: bool,
}

impl SpoolEntry {
    pub fn dump_path(&self, spool: &Path) -> PathBuf {
        spool.join(format!("{}-{:016x}.pcapng", self.node, self.trigger_id))
    }
    pub fn meta_path(&self, spool: &Path) -> PathBuf {
        spool.join(format!("{}-{:016x}.json", self.node, self.trigger_id))
    }
    pub fn save(&self, spool: &Path) -> std::io::Result<()> {
        use std::io::Write;
        let tmp = spool.join(format!(".{}-{:016x}.json.tmp", self.node, self.trigger_id));
        let written = create_private(&tmp).and_then(|mut f| {
            f.write_all(&serde_json::to_vec_pretty(self).expect("serializable"))?;
            f.sync_all()
        });
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        std::fs::rename(&tmp, self.meta_path(spool))
    }
    /// The dump's SHA-256, or None when the entry's is not 64 hex digits.
    pub fn digest(&self) -> Option<[u8; 32]> {
        hex32(&self.sha256)
    }
}

/// Creates (or truncates) a file only its owner may read: dumps hold payload bytes.
pub fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    // An existing file keeps its mode on open: set it.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(f)
}

/// Creates a spool directory only its owner may enter.
pub fn create_spool_dir(spool: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(spool)?;
    std::fs::set_permissions(spool, std::fs::Permissions::from_mode(0o700))
}

/// Every dump the spool holds, oldest trigger first.
pub fn spool_entries(spool: &Path) -> std::io::Result<Vec<SpoolEntry>> {
    let mut out = Vec::new();
    let dir = match std::fs::read_dir(spool) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for e in dir.flatten() {
        let p = e.path();
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if p.extension().is_some_and(|x| x == "json") && !name.starts_with('.') {
            let text = std::fs::read(&p)?;
            match serde_json::from_slice::<SpoolEntry>(&text) {
                Ok(entry) => out.push(entry),
                Err(err) => tracing::warn!("ignoring spool file {}: {err}", p.display()),
            }
        }
    }
    out.sort_by_key(|e| (e.heard_ns, e.trigger_id));
    Ok(out)
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// SHA-256 of a file.
pub fn file_sha256(path: &Path) -> std::io::Result<[u8; 32]> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}
