//! Where the binaries under test are. `cargo xtask test` builds them (with the eBPF
//! object inside) and names their directory in `WGO_BIN_DIR`; under plain `cargo test`
//! they are built here once, in the debug profile, with whatever eBPF object exists.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ lives in the workspace").to_path_buf()
}

fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("WGO_BIN_DIR") {
            return PathBuf::from(dir);
        }
        let status = Command::new(env!("CARGO"))
            .current_dir(root())
            .args(["build", "--quiet", "-p", "capture-user", "-p", "wgo-tests", "--bins"])
            .status()
            .expect("running cargo build for the binaries under test");
        assert!(status.success(), "cargo build of wgo and the test binaries failed: {status}");
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from).join("debug")
    })
}

/// A binary of the workspace: `wgo`, `wgo-peer`, `wgo-demo-app` or `wgo-demo`.
pub fn path(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(p.exists(), "{} does not exist (WGO_BIN_DIR={:?})", p.display(), std::env::var_os("WGO_BIN_DIR"));
    p
}

/// The `wgo` binary.
pub fn wgo() -> PathBuf {
    path("wgo")
}

/// `wgo-peer`: traffic for the tests.
pub fn peer() -> PathBuf {
    path("wgo-peer")
}
