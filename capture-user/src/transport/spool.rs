//! The agent's spool: dumps waiting to be shipped, each with a JSON entry beside it
//! saying where it goes and whether it went.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::outfile::{self, Durability, OutputError};

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
    /// Durably: an entry says whether its dump was shipped, after any crash.
    pub fn save(&self, spool: &Path) -> Result<(), OutputError> {
        let json = serde_json::to_vec_pretty(self).expect("serializable");
        outfile::write_file(&self.meta_path(spool), &json, Durability::Durable)
    }
    /// The dump's SHA-256, or None when the entry's is not 64 hex digits.
    pub fn digest(&self) -> Option<[u8; 32]> {
        hex32(&self.sha256)
    }
}

/// Creates a spool directory only its owner may enter.
pub fn create_spool_dir(spool: &Path) -> std::io::Result<()> {
    outfile::create_private_dir(spool)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_saved_private_and_never_through_a_planted_symlink() {
        use std::os::unix::fs::PermissionsExt;
        let spool = std::env::temp_dir().join(format!("wgo-spool-symlink-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&spool);
        create_spool_dir(&spool).unwrap();
        let victim = spool.join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let e = SpoolEntry {
            node: "a".into(),
            trigger_id: 7,
            heard_ns: 1,
            collector: "127.0.0.1:1".into(),
            size: 0,
            sha256: String::new(),
            shipped: false,
        };
        // The name an entry was once written through, and the one it is now.
        for tmp in [".a-0000000000000007.json.tmp", "a-0000000000000007.json.partial"] {
            std::os::unix::fs::symlink(&victim, spool.join(tmp)).unwrap();
        }
        e.save(&spool).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious", "the symlink's target was overwritten");
        assert_eq!(std::fs::metadata(e.meta_path(&spool)).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(spool_entries(&spool).unwrap(), vec![e]);
        std::fs::remove_dir_all(&spool).unwrap();
    }
}
