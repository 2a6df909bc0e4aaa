//! `cargo xtask corpus`: the whole corpus matrix (every program, every scenario; the
//! `matrix` test in tests/corpus.rs), printing a line per scenario and the precision/recall
//! table of each half. `WGO_CORPUS_SEED`, `WGO_CORPUS_ONLY` and `WGO_CORPUS_SCENARIOS` pass
//! through to it.

use crate::exec::exec;
use crate::setup::clean_command;

pub fn run() -> anyhow::Result<()> {
    crate::build::all()?;
    crate::setup::packages(crate::setup::TEST_PACKAGES)?;
    crate::setup::packages(wgo_tests::corpus::PACKAGES)?;
    exec(
        clean_command("cargo")
            .current_dir(crate::build::root())
            .env("WGO_BPF_OBJECT", crate::build::bpf_object())
            .env("WGO_BIN_DIR", crate::build::bin_dir())
            .args(["test", "-p", "wgo-tests", "--features", "bpf-tests", "--test", "corpus", "matrix"])
            .args(["--", "--include-ignored", "--nocapture", "--test-threads=1"]),
    )
}
