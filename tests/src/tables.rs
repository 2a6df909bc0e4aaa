//! pyarrow for the Parquet tables' tests: the `pyarrow` PyPI package in a virtualenv under
//! `target/`, made once (the only step that needs the network), and `tests/tables/check.py`,
//! which reads a `--parquet` directory with it and compares it with the JSON of the same run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::bins::root;

/// Why the check could not run: pip could not reach the package index (the test is
/// skipped, saying so), or anything else (the test fails).
#[derive(Clone, Debug)]
pub enum Unavailable {
    Offline(String),
    Broken(String),
}

fn venv() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from).join("pyarrow-venv")
}

fn has_pyarrow(python: &Path) -> bool {
    Command::new(python).args(["-c", "import pyarrow.dataset"]).stderr(std::process::Stdio::null()).status().is_ok_and(|s| s.success())
}

/// What pip says when it cannot reach the index (no network, no proxy, DNS).
fn offline(pip_output: &str) -> bool {
    [
        "NewConnectionError",
        "Network is unreachable",
        "Temporary failure in name resolution",
        "ConnectTimeoutError",
        "ProxyError",
        "Max retries exceeded",
    ]
    .iter()
    .any(|s| pip_output.contains(s))
}

/// The virtualenv's python, with pyarrow installed (installed first if missing, into a
/// fresh directory renamed into place, so that two test processes never share a half-made one).
pub fn python() -> Result<PathBuf, Unavailable> {
    static PYTHON: OnceLock<Result<PathBuf, Unavailable>> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let dir = venv();
            let python = dir.join("bin/python");
            if has_pyarrow(&python) {
                return Ok(python);
            }
            let tmp = dir.with_extension(format!("tmp-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&tmp);
            let venv = Command::new("python3").args(["-m", "venv"]).arg(&tmp).status();
            if !venv.as_ref().is_ok_and(|s| s.success()) {
                return Err(Unavailable::Broken(format!("python3 -m venv {}: {venv:?}", tmp.display())));
            }
            let requirements = root().join("tests/tables/requirements.txt");
            let out = Command::new(tmp.join("bin/python"))
                .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r"])
                .arg(&requirements)
                .output()
                .map_err(|e| Unavailable::Broken(format!("running pip: {e}")))?;
            if !out.status.success() {
                let _ = std::fs::remove_dir_all(&tmp);
                let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
                let why = format!("pip install -r {}: {}", requirements.display(), text.trim());
                return Err(if offline(&text) { Unavailable::Offline(why) } else { Unavailable::Broken(why) });
            }
            let _ = std::fs::remove_dir_all(&dir);
            if std::fs::rename(&tmp, &dir).is_err() {
                // Another process put one there first.
                let _ = std::fs::remove_dir_all(&tmp);
            }
            if has_pyarrow(&python) {
                Ok(python)
            } else {
                Err(Unavailable::Broken(format!("{} has no pyarrow after installing it", dir.display())))
            }
        })
        .clone()
}

/// Runs `tests/tables/check.py` on a `--parquet` directory and the JSON report of the
/// same run: its output (the counts it checked), or why it failed.
pub fn check(tables: &Path, report_json: &Path) -> Result<String, Unavailable> {
    let python = python()?;
    let out = Command::new(python)
        .arg(root().join("tests/tables/check.py"))
        .arg(tables)
        .arg(report_json)
        .output()
        .map_err(|e| Unavailable::Broken(format!("running check.py: {e}")))?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() { Ok(text) } else { Err(Unavailable::Broken(text)) }
}
