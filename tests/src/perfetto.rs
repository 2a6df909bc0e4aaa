//! Perfetto's official schema for the trace tests: the `perfetto` PyPI package (its
//! `perfetto_trace_pb2`) in a virtualenv under `target/`, made once (the only step that
//! needs the network), and `tests/perfetto/check.py`, which decodes a trace with it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::bins::root;

fn venv() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from).join("perfetto-venv")
}

fn has_schema(python: &Path) -> bool {
    Command::new(python)
        .args(["-c", "from perfetto.protos.perfetto.trace import perfetto_trace_pb2"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn run(cmd: &mut Command) -> Result<(), String> {
    match cmd.status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("{cmd:?} failed: {s}")),
        Err(e) => Err(format!("{cmd:?} could not run: {e}")),
    }
}

/// The virtualenv's python, with the schema installed (installed first if missing, into
/// a fresh directory renamed into place, so that two test processes never share a half-made one).
pub fn python() -> Result<PathBuf, String> {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let dir = venv();
            let python = dir.join("bin/python");
            if has_schema(&python) {
                return Ok(python);
            }
            let tmp = dir.with_extension(format!("tmp-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&tmp);
            run(Command::new("python3").args(["-m", "venv"]).arg(&tmp))?;
            let requirements = root().join("tests/perfetto/requirements.txt");
            run(Command::new(tmp.join("bin/python")).args(["-m", "pip", "install", "--quiet", "-r"]).arg(&requirements))?;
            let _ = std::fs::remove_dir_all(&dir);
            if std::fs::rename(&tmp, &dir).is_err() {
                // Another process put one there first.
                let _ = std::fs::remove_dir_all(&tmp);
            }
            if has_schema(&python) { Ok(python) } else { Err(format!("{} has no perfetto_trace_pb2 after installing it", dir.display())) }
        })
        .clone()
}

/// Runs `tests/perfetto/check.py` on a trace and the JSON report of the same run; its
/// output, or why it failed.
pub fn check(trace: &Path, report_json: &Path) -> Result<String, String> {
    let python = python()?;
    let out = Command::new(python)
        .arg(root().join("tests/perfetto/check.py"))
        .arg(trace)
        .arg(report_json)
        .output()
        .map_err(|e| format!("running check.py: {e}"))?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() { Ok(text) } else { Err(text) }
}
