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
            // The features this crate builds the engine with (Cargo.toml), so cargo finds the
            // engine library of the test build up to date instead of compiling a second copy.
            "--features",
            "parity,testing",
        ])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(repo_root());
        // What `cargo test` sets for this test process only. Some build scripts (ring's) rerun
        // when `CARGO_MANIFEST_DIR` changes, so passed on it would rebuild them and everything
        // above them, the engine included.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key.starts_with("CARGO_PKG_")
                || key.starts_with("CARGO_BIN_EXE_")
                || [
                    "CARGO_MANIFEST_DIR",
                    "CARGO_MANIFEST_PATH",
                    "CARGO_CRATE_NAME",
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                ]
                .contains(&key.as_ref())
            {
                cmd.env_remove(key.as_ref());
            }
        }
        // `cargo test` builds workspace members with the `test` profile; a plain `cargo build`
        // (profile `dev`) would hash them differently and rebuild the whole engine.
        if profile_dir.file_name().is_some_and(|p| p == "release") {
            cmd.arg("--release");
        } else {
            cmd.args(["--profile", "test"]);
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "building songgen failed");
        let name = format!("songgen{}", std::env::consts::EXE_SUFFIX);
        let built = profile_dir.join(&name);
        assert!(built.is_file(), "{} was not built", built.display());
        // A private link (a copy across file systems): a build of another checkout sharing the
        // target folder replaces `target/debug/songgen` with a new file, which leaves this one be.
        let private = temp_dir("bin").join(name);
        if std::fs::hard_link(&built, &private).is_err() {
            std::fs::copy(&built, &private).expect("copy the songgen binary");
        }
        private
    })
}

/// Folders made by [`temp_dir`] in this process, removed when it exits.
static TEMP_DIRS: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

extern "C" fn remove_temp_dirs() {
    if std::env::var_os("SONGGEN_KEEP_TEMP").is_some() {
        return;
    }
    let dirs = std::mem::take(&mut *TEMP_DIRS.lock().unwrap_or_else(|e| e.into_inner()));
    for dir in dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A fresh empty folder under the system temp folder, unique per test.
///
/// Every such folder is removed when the test process exits (tests leave stems, model files and
/// engine binaries behind otherwise: about a gigabyte per run); set `SONGGEN_KEEP_TEMP=1` to
/// keep them for a look after a failure.
pub fn temp_dir(name: &str) -> PathBuf {
    static CLEANUP: std::sync::Once = std::sync::Once::new();
    CLEANUP.call_once(|| {
        // SAFETY: registers a plain function; it runs once, when the process exits normally
        // (libtest's `main` returns or calls `exit`).
        unsafe { libc::atexit(remove_temp_dirs) };
    });
    let dir = std::env::temp_dir().join(format!("songgen-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp folder");
    let mut dirs = TEMP_DIRS.lock().unwrap_or_else(|e| e.into_inner());
    if !dirs.contains(&dir) {
        dirs.push(dir.clone());
    }
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
