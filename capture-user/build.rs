//! Embeds the eBPF object that `cargo xtask build` compiled, if there is one.
//! Without it wgo still builds (so `cargo test` covers the analysis code), and
//! its capture commands say how to build the programs.

use std::path::PathBuf;

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("capture.bpf.o");
    println!("cargo:rerun-if-env-changed=WGO_BPF_OBJECT");
    let src = std::env::var_os("WGO_BPF_OBJECT").map(PathBuf::from).unwrap_or_else(|| {
        let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("..");
        root.join("target/bpf/bpfel-unknown-none/bpf/capture")
    });
    println!("cargo:rerun-if-changed={}", src.display());
    match std::fs::read(&src) {
        Ok(bytes) => std::fs::write(&out, bytes).unwrap(),
        Err(_) => {
            println!("cargo:warning=eBPF object {} not found: wgo will build without capture; run `cargo xtask build`", src.display());
            std::fs::write(&out, []).unwrap();
        }
    }
}
