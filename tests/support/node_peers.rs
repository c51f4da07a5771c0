//! npm peers for interop tests: `node-hl7-client` and `simple-hl7`, pinned
//! by `tools/interop/package.json` and its `package-lock.json`, installed
//! with `npm ci` into `tools/interop/node_modules` (git-ignored) under a file
//! lock when missing or at the wrong version. `node_peers_dir` panics,
//! failing the test, when node or the packages cannot be made available:
//! interop tests never silently skip. It never touches the network when the
//! pinned versions are already installed (CI runs `npm ci` beforehand).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The npm packages the drivers in `tools/interop/` load, with the exact
/// versions `package.json` pins.
pub const NODE_PEERS: [(&str, &str); 2] = [("node-hl7-client", "4.0.0"), ("simple-hl7", "3.3.0")];

/// `tools/interop/`: the npm project holding the drivers and their packages.
pub fn interop_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tools")
        .join("interop")
}

/// The `"version"` of an installed package, read from its package.json.
fn installed_version(dir: &Path, package: &str) -> Option<String> {
    let manifest =
        std::fs::read_to_string(dir.join("node_modules").join(package).join("package.json"))
            .ok()?;
    let after_key = &manifest[manifest.find("\"version\"")? + "\"version\"".len()..];
    let value = after_key
        .trim_start()
        .strip_prefix(':')?
        .trim_start()
        .strip_prefix('"')?;
    Some(value[..value.find('"')?].to_string())
}

fn installed(dir: &Path) -> bool {
    NODE_PEERS
        .iter()
        .all(|(package, version)| installed_version(dir, package).as_deref() == Some(*version))
}

/// Lock file path outside the source tree: `CARGO_TARGET_TMPDIR` (set by
/// cargo for integration tests) or `target/`.
fn lock_path() -> PathBuf {
    let root = option_env!("CARGO_TARGET_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    std::fs::create_dir_all(&root).expect("create the npm lock directory");
    root.join("interop-npm.lock")
}

/// `tools/interop/` with the pinned npm peers installed and `node` runnable.
// File::lock needs Rust 1.89; only these tests use it, the library keeps its MSRV.
#[allow(clippy::incompatible_msrv)]
pub fn node_peers_dir() -> PathBuf {
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.as_ref().map(|o| o.status.success()).unwrap_or(false),
        "node must be installed to run npm interop tests: {node:?}"
    );
    let dir = interop_dir();
    if installed(&dir) {
        return dir;
    }
    let lock = File::create(lock_path()).expect("create the npm lock file");
    lock.lock().expect("lock the npm install");
    if !installed(&dir) {
        let status = Command::new("npm")
            .args([
                "ci",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
                "--prefix",
            ])
            .arg(&dir)
            .status()
            .expect("npm must be installed to run npm interop tests");
        assert!(
            status.success(),
            "`npm ci --prefix {}` failed ({status}); npm interop tests need the npm registry once",
            dir.display()
        );
    }
    assert!(
        installed(&dir),
        "after npm ci, {} still lacks {:?} (check package.json and package-lock.json agree)",
        dir.join("node_modules").display(),
        NODE_PEERS
    );
    lock.unlock().expect("unlock the npm install");
    dir
}
