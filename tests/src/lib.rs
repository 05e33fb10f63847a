//! Shared helpers for the integration tests.

use std::path::PathBuf;

/// The repository root (tests run with the crate dir as working directory).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// A parity fixture directory copied into the repo.
pub fn fixture_dir(kind: &str) -> PathBuf {
    repo_root().join("tests/fixtures/parity").join(kind)
}
