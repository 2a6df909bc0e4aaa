//! Building the eBPF object and the `wgo` binary that embeds it.

use std::path::{Path, PathBuf};

use crate::exec::exec;
use crate::setup::clean_command;

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

/// Where the eBPF object lands.
pub fn bpf_object() -> PathBuf {
    root().join("target/bpf/bpfel-unknown-none/bpf/capture")
}

/// Where `all` puts wgo and the test programs.
pub fn bin_dir() -> PathBuf {
    root().join("target/release")
}

/// `cargo +nightly SUBCOMMAND` on the eBPF programs, for the BPF target, as they are built.
pub fn bpf_cargo(subcommand: &str) -> std::process::Command {
    let mut cmd = clean_command("cargo");
    cmd.current_dir(root())
        // BTF for the btf maps; cpu v3 for atomic fetch-add.
        .env("RUSTFLAGS", "-C debuginfo=2 -C link-arg=--btf -C target-cpu=v3")
        .args(["+nightly", subcommand, "--quiet", "-p", "capture-ebpf", "--bin", "capture", "--features", "programs"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core", "--profile", "bpf"])
        .args(["--target-dir", "target/bpf"]);
    cmd
}

pub fn bpf() -> anyhow::Result<PathBuf> {
    exec(&mut bpf_cargo("build"))?;
    Ok(bpf_object())
}

/// Builds the eBPF object, then wgo (release) with it embedded, and the test programs.
pub fn all() -> anyhow::Result<()> {
    crate::setup::toolchain()?;
    let object = bpf()?;
    exec(clean_command("cargo").current_dir(root()).env("WGO_BPF_OBJECT", &object).args([
        "build",
        "--quiet",
        "--release",
        "-p",
        "capture-user",
        "-p",
        "wgo-tests",
        "--bins",
    ]))?;
    eprintln!("xtask: built {}", bin_dir().join("wgo").display());
    Ok(())
}
