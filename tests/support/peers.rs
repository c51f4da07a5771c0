//! Third-party HL7 peers for interop tests. `python_hl7_path` makes
//! python-hl7 (PyPI `hl7`) and hl7apy importable, installing them with pip
//! into the target directory under a file lock when the system Python lacks
//! them. It panics, failing the test, when they cannot be made available:
//! interop tests never silently skip.

use std::fs::File;
use std::path::PathBuf;
use std::process::Command;

/// Python modules the interop tests import.
const MODULES: &str = "import hl7, hl7apy";

fn importable(pythonpath: Option<&PathBuf>) -> bool {
    let mut cmd = Command::new("python3");
    cmd.args(["-c", MODULES]);
    if let Some(path) = pythonpath {
        cmd.env("PYTHONPATH", path);
    }
    cmd.output().map(|o| o.status.success()).unwrap_or(false)
}

/// Directory for pip installs: `CARGO_TARGET_TMPDIR` (set by cargo for
/// integration tests) or `target/`.
fn install_root() -> PathBuf {
    option_env!("CARGO_TARGET_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// The `PYTHONPATH` under which `python3` can import python-hl7 and hl7apy
/// (empty when the system Python already has them).
// File::lock needs Rust 1.89; only these tests use it, the library keeps its MSRV.
#[allow(clippy::incompatible_msrv)]
pub fn python_hl7_path() -> String {
    if importable(None) {
        return String::new();
    }
    let root = install_root();
    let target = root.join("interop-py");
    std::fs::create_dir_all(&root).expect("create the pip install root");
    let lock = File::create(root.join("interop-py.lock")).expect("create the pip lock file");
    lock.lock().expect("lock the pip install directory");
    if !importable(Some(&target)) {
        let status = Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--target",
            ])
            .arg(&target)
            .args(["hl7", "hl7apy"])
            .status()
            .expect("python3 must be installed to run interop tests");
        assert!(
            status.success(),
            "pip install hl7 hl7apy failed ({status}); interop tests need PyPI access once"
        );
    }
    assert!(
        importable(Some(&target)),
        "python-hl7 and hl7apy still not importable from {}",
        target.display()
    );
    lock.unlock().expect("unlock the pip install directory");
    target.to_string_lossy().into_owned()
}
