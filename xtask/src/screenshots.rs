//! `cargo xtask screenshots`: runs the demo and makes the README's timeline screenshots
//! (docs/timeline*.png) from its timeline page. The only command that writes into docs/:
//! the tests write their screenshots into their own temporary directories.

use std::process::Command;

use crate::build::root;
use crate::exec::exec;

/// The violation the README's first screenshot centres on (text of the demo's own spec).
const ABORT_TEXT: &str = "member rejoined";

pub fn run() -> anyhow::Result<()> {
    crate::build::all()?;
    crate::setup::browser_test_packages()?;
    let timeline = crate::demo::run_built(&root().join("wgo-out/screenshots"), false)?;
    let (script, docs) = (root().join("tests/browser/timeline.mjs"), root().join("docs"));
    // The moment the ex-member's heartbeat aborts a ballot.
    exec(Command::new("node").arg(&script).arg("shot").arg(&timeline).arg(docs.join("timeline.png")).arg(ABORT_TEXT))?;
    // The overview, the partition and the causal view.
    exec(Command::new("node").arg(&script).arg("shots").arg(&timeline).arg(&docs))?;
    eprintln!("xtask: wrote {}/timeline*.png", docs.display());
    Ok(())
}
