//! Installing what a fresh machine lacks: nightly's rust-src, a bpf-linker built
//! against nightly's LLVM, and the Debian packages tests and the demo use.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};

use crate::exec::{exec, has_command, output};

const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages and a command each provides.
pub const TEST_PACKAGES: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("ping", "iputils-ping"),
    ("nft", "nftables"),
    ("bpftool", "bpftool"),
    ("tshark", "tshark"),
    ("tcpdump", "tcpdump"),
    ("chromium", "chromium"),
    ("node", "nodejs"),
    ("npm", "npm"),
];

/// The browser tests' npm packages (playwright-core drives Debian's Chromium).
pub fn browser_test_packages() -> anyhow::Result<()> {
    let dir = crate::build::root().join("tests/browser");
    if dir.join("node_modules/playwright-core").exists() {
        return Ok(());
    }
    eprintln!("xtask: installing the browser tests' npm packages");
    exec(Command::new("npm").current_dir(&dir).args(["ci", "--no-audit", "--no-fund"]))
}

/// A rustup/cargo command with the variables `cargo run` sets for xtask removed, so
/// toolchain selection is decided by the `+toolchain` argument alone.
pub fn clean_command(program: &str) -> Command {
    let mut cmd = Command::new(program);
    for var in ["RUSTUP_TOOLCHAIN", "RUSTC", "RUSTC_WRAPPER", "RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_TARGET_DIR"] {
        cmd.env_remove(var);
    }
    cmd
}

pub fn cargo_bin_dir() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}

pub fn toolchain() -> anyhow::Result<()> {
    // The test command checks formatting and lints with the workspace's own toolchain.
    let host = output(clean_command("rustup").args(["component", "list", "--installed"]))?;
    for comp in ["rustfmt", "clippy"] {
        if !host.lines().any(|l| l.starts_with(comp)) {
            eprintln!("xtask: adding {comp}");
            exec(clean_command("rustup").args(["component", "add", comp]))?;
        }
    }
    let toolchains = output(clean_command("rustup").args(["toolchain", "list"]))?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        eprintln!("xtask: installing the nightly toolchain (eBPF needs -Z build-std)");
        exec(clean_command("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))?;
    }
    let comps = output(clean_command("rustup").args(["component", "list", "--toolchain", "nightly", "--installed"]))?;
    // rust-src to build core for the BPF target; clippy to lint the programs there.
    for comp in ["rust-src", "clippy"] {
        if !comps.lines().any(|l| l.starts_with(comp)) {
            eprintln!("xtask: adding {comp} to nightly");
            exec(clean_command("rustup").args(["component", "add", comp, "--toolchain", "nightly"]))?;
        }
    }
    bpf_linker()
}

/// Nightly's sysroot and the LLVM major its rustc was built with.
fn nightly_llvm() -> anyhow::Result<(PathBuf, u32)> {
    let sysroot = PathBuf::from(output(clean_command("rustc").args(["+nightly", "--print", "sysroot"]))?.trim());
    let verbose = output(clean_command("rustc").args(["+nightly", "--version", "--verbose"]))?;
    let major = verbose
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse().ok())
        .context("rustc +nightly --version --verbose names no LLVM version")?;
    Ok((sysroot, major))
}

/// Whether the installed bpf-linker loads an LLVM of the wanted major.
fn bpf_linker_ok(major: u32) -> bool {
    let bin = cargo_bin_dir().join("bpf-linker");
    if !bin.exists() {
        return false;
    }
    let Ok(ldd) = output(Command::new("ldd").arg(&bin)) else { return false };
    let llvm: Vec<&str> = ldd.lines().filter(|l| l.contains("libLLVM")).collect();
    !llvm.is_empty()
        && llvm.iter().all(|l| !l.contains("not found") && l.contains(&format!("libLLVM.so.{major}")))
        && Command::new(&bin).arg("--version").output().is_ok_and(|o| o.status.success())
}

fn bpf_linker() -> anyhow::Result<()> {
    let (sysroot, major) = nightly_llvm()?;
    if bpf_linker_ok(major) {
        return Ok(());
    }
    eprintln!("xtask: building bpf-linker {BPF_LINKER_VERSION} against nightly's LLVM {major} (about a minute)");
    let lib = std::fs::read_dir(sysroot.join("lib"))
        .context("reading nightly's lib dir")?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&format!("libLLVM.so.{major}"))))
        .with_context(|| format!("nightly ships no libLLVM.so.{major}* in {}", sysroot.join("lib").display()))?;
    // A stable prefix (not /tmp): the linker's rpath points into it.
    let prefix = cargo_bin_dir().parent().expect("bin has a parent").join(format!("wgo-llvm-{major}"));
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)?;
    for name in [std::ffi::OsString::from("libLLVM.so"), lib.file_name().expect("file").to_os_string()] {
        let link = prefix_lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&lib, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    exec(clean_command("cargo").env("LLVM_PREFIX", &prefix).args([
        "install",
        "bpf-linker",
        "--version",
        BPF_LINKER_VERSION,
        "--no-default-features",
        "--features",
        &format!("llvm-{major}"),
        "--force",
    ]))?;
    if !bpf_linker_ok(major) {
        bail!("bpf-linker was installed but does not load LLVM {major}; see `ldd {}`", cargo_bin_dir().join("bpf-linker").display());
    }
    Ok(())
}

/// cargo-fuzz, for the short fuzz runs in the test suite.
pub fn cargo_fuzz() -> anyhow::Result<()> {
    if cargo_bin_dir().join("cargo-fuzz").exists() {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-fuzz");
    exec(clean_command("cargo").args(["install", "cargo-fuzz", "--locked"]))
}

/// Installs the Debian packages whose commands are missing.
pub fn packages(wanted: &[(&str, &str)]) -> anyhow::Result<()> {
    let missing: Vec<&str> = wanted.iter().filter(|(cmd, _)| !has_command(cmd)).map(|(_, pkg)| *pkg).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !has_command("apt-get") {
        bail!("missing commands from packages {missing:?} and no apt-get to install them");
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    exec(Command::new("apt-get").args(["update", "-qq"]))?;
    exec(Command::new("apt-get").env("DEBIAN_FRONTEND", "noninteractive").args(["install", "-y", "-qq"]).args(&missing))
}
