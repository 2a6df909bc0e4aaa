//! `manifest.json`: what the collector received for one trigger, node by node.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::outfile::{self, Durability, OutputError};

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ManifestNode {
    pub name: String,
    /// Address the dump (or the heard message) came from.
    pub addr: Option<String>,
    pub bytes: Option<u64>,
    pub sha256: Option<String>,
    /// When the node heard the trigger, on its own clock.
    pub heard_ns: Option<i64>,
    /// When its dump was complete here, on the collector's clock.
    pub arrived_ns: Option<i64>,
    pub file: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is damaged ({source}): repair it, or move it away to start that directory over")]
    Damaged { path: PathBuf, source: serde_json::Error },
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    /// Hex: JSON numbers lose precision beyond 2^53.
    pub trigger_id: Option<String>,
    pub trigger_sent_ns: Option<i64>,
    /// Why the trigger was sent ("node3: app (pid 812) killed by SIGSEGV").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub expected: Option<serde_json::Value>,
    pub nodes: Vec<ManifestNode>,
    /// Expected nodes whose dump did not arrive.
    pub missing: Vec<String>,
    /// Why each missing node's dump is not here, as far as the collector knows.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub missing_why: std::collections::BTreeMap<String, String>,
    pub complete: bool,
}

impl Manifest {
    /// The manifest in `dir`, None if there is none; one that cannot be read or parsed is
    /// an error naming it, never taken for a missing one (which would be written over).
    pub fn load(dir: &Path) -> Result<Option<Manifest>, ManifestError> {
        let path = dir.join("manifest.json");
        let read = |path: &Path| -> std::io::Result<Vec<u8>> {
            let mut b = Vec::new();
            std::io::Read::read_to_end(&mut outfile::open_regular(path)?, &mut b)?;
            Ok(b)
        };
        let bytes = match read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(ManifestError::Read { path, source }),
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|source| ManifestError::Damaged { path, source })
    }
    /// Durably: the manifest is the collector's record of what arrived.
    pub fn save(&self, dir: &Path) -> Result<(), OutputError> {
        let json = serde_json::to_vec_pretty(self).expect("serializable");
        outfile::write_file(&dir.join("manifest.json"), &json, Durability::Durable)
    }
    pub(crate) fn node(&mut self, name: &str) -> &mut ManifestNode {
        if let Some(i) = self.nodes.iter().position(|n| n.name == name) {
            return &mut self.nodes[i];
        }
        self.nodes.push(ManifestNode { name: name.to_string(), ..ManifestNode::default() });
        self.nodes.sort_by(|a, b| a.name.cmp(&b.name));
        let i = self.nodes.iter().position(|n| n.name == name).expect("just inserted");
        &mut self.nodes[i]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlink_planted_at_the_temporary_name_is_not_followed() {
        let dir = std::env::temp_dir().join(format!("wgo-manifest-symlink-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let victim = dir.join("victim");
        std::fs::write(&victim, "precious").unwrap();
        // The name the manifest was once written through, and the one it is now.
        for tmp in [".manifest.json.tmp", "manifest.json.partial"] {
            std::os::unix::fs::symlink(&victim, dir.join(tmp)).unwrap();
        }
        let m = Manifest { trigger_id: Some("00000000000000ab".into()), ..Manifest::default() };
        m.save(&dir).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious", "the symlink's target was overwritten");
        assert_eq!(Manifest::load(&dir).unwrap().as_ref(), Some(&m));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_damaged_manifest_is_named_not_taken_for_a_missing_one() {
        let dir = std::env::temp_dir().join(format!("wgo-manifest-damaged-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        assert!(Manifest::load(&dir).unwrap().is_none(), "no manifest: none");
        std::fs::write(dir.join("manifest.json"), "{\"trigger_id\": \"00ab\", \"nodes\": [").unwrap();
        let err = Manifest::load(&dir).unwrap_err();
        assert!(matches!(err, ManifestError::Damaged { .. }) && err.to_string().contains("manifest.json is damaged"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
