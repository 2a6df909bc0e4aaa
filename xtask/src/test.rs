//! The whole test suite: unit tests, and the root/BPF integration tests.

use crate::exec::exec;
use crate::setup::clean_command;

pub fn run(extra: &[String]) -> anyhow::Result<()> {
    crate::build::all()?;
    crate::setup::packages(crate::setup::TEST_PACKAGES)?;
    exec(
        clean_command("cargo")
            .current_dir(crate::build::root())
            .env("WGO_BPF_OBJECT", crate::build::bpf_object())
            .args(["test", "--workspace", "--features", "capture-user/bpf-tests"])
            .args(extra)
            // One at a time: floods and benchmarks-in-tests must not disturb each other.
            .args(["--", "--test-threads=1"]),
    )
}
