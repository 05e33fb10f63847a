//! Shared helpers for the integration tests.

pub mod tiny_model;
pub mod torch_zip;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

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

/// The `songgen` binary of this build. Cargo only exposes `CARGO_BIN_EXE_*` to the tests of the
/// package that owns the binary, so it is built here (once per test process) with the same
/// cargo, profile and target folder as the tests themselves, next to the test executable.
pub fn songgen_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // An explicit binary (e.g. a private copy when several checkouts share one target
        // folder and overwrite each other's `target/debug/songgen`).
        if let Some(bin) = std::env::var_os("SONGGEN_TEST_BIN") {
            return PathBuf::from(bin);
        }
        let exe = std::env::current_exe().expect("test executable path");
        // <target>/<profile>/deps/<test>-<hash>
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test binary lives in <target>/<profile>/deps");
        let target_dir = profile_dir.parent().expect("target folder");
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args([
            "build",
            "--quiet",
            "-p",
            "songgen-engine",
            "--bin",
            "songgen",
            // The features the workspace's tests build the engine with (`songgen check parity`).
            "--features",
            "parity",
        ])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(repo_root());
        if profile_dir.file_name().is_some_and(|p| p == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "building songgen failed");
        let name = format!("songgen{}", std::env::consts::EXE_SUFFIX);
        let built = profile_dir.join(&name);
        assert!(built.is_file(), "{} was not built", built.display());
        // A private copy: a build of another checkout sharing the target folder must not swap
        // the binary under running tests.
        let copy = std::env::temp_dir().join(format!("songgen-bin-{}", std::process::id()));
        std::fs::create_dir_all(&copy).expect("create binary folder");
        let copy = copy.join(name);
        std::fs::copy(&built, &copy).expect("copy the songgen binary");
        copy
    })
}

/// A fresh empty folder under the system temp folder, unique per test.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("songgen-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp folder");
    dir
}

/// A `songgen` command isolated from the user's settings: `SONGGEN_HOME` points at `home`.
pub fn songgen(home: &Path) -> Command {
    let mut cmd = Command::new(songgen_bin());
    cmd.env("SONGGEN_HOME", home)
        .env_remove("SONGGEN_ACCEPT_LICENSE")
        .stdin(std::process::Stdio::null());
    cmd
}
