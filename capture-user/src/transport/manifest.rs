//! `manifest.json`: what the collector received for one trigger, node by node.

use std::path::Path;

use serde::{Deserialize, Serialize};

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
    pub complete: bool,
}

impl Manifest {
    pub fn load(dir: &Path) -> Option<Manifest> {
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).ok()?).ok()
    }
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        let tmp = dir.join(".manifest.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self).expect("serializable"))?;
        std::fs::rename(tmp, dir.join("manifest.json"))
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
