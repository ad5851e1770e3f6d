//! Locating the binaries under test: `remora-init` and `remora-proxy`.

use std::path::PathBuf;

/// Overrides where the binaries are looked up.
const BIN_DIR_ENV: &str = "REMORA_BIN_DIR";

/// The directory holding the binaries under test: `$REMORA_BIN_DIR` if
/// set, else the cargo profile directory this test runs from
/// (`target/debug/deps/x` -> `target/debug`).
pub fn bin_dir() -> PathBuf {
    match std::env::var_os(BIN_DIR_ENV) {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().expect("cannot locate the test executable");
            let mut dir = exe
                .parent()
                .expect("test executable has a directory")
                .to_path_buf();
            if dir.ends_with("deps") {
                dir.pop();
            }
            dir
        }
    }
}

/// The path of binary `name` in [`bin_dir`]. Panics with a hint if it has
/// not been built.
pub(crate) fn bin_path(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    if !path.is_file() {
        panic!(
            "{} not found; run `cargo build --workspace --bins` first (or set {BIN_DIR_ENV})",
            path.display()
        );
    }
    path
}
