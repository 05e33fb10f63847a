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

/// The `songgen` command of this build: this crate's `songgen-cli` binary (the engine's CLI
/// with the features the tests build the engine with), which cargo builds next to the test
/// executables' `deps` folder before it runs the integration tests. So no second engine is
/// compiled for the CLI tests, and the command is never stale.
pub fn songgen_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // An explicit binary (e.g. a CUDA build of `songgen`).
        if let Some(bin) = std::env::var_os("SONGGEN_TEST_BIN") {
            return PathBuf::from(bin);
        }
        let exe = std::env::current_exe().expect("test executable path");
        // <target>/<profile>/deps/<test>-<hash>
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test binary lives in <target>/<profile>/deps");
        let name = format!("songgen-cli{}", std::env::consts::EXE_SUFFIX);
        let built = profile_dir.join(&name);
        assert!(
            built.is_file(),
            "{} is missing: run the tests through `cargo test -p songgen-tests`, which builds it",
            built.display()
        );
        // A private link (a copy across file systems): a build of another checkout sharing the
        // target folder replaces the binary with a new file, which leaves this one be.
        let private = temp_dir("bin").join(format!("songgen{}", std::env::consts::EXE_SUFFIX));
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

/// A test that cannot run here (a host or tool it drives is not installed) says why and
/// returns. With `SONGGEN_NO_SKIP` set (`.ci/run` sets it once it has installed every such tool)
/// the reason is a failure instead, so CI never counts a skipped test as passed.
pub fn skip(reason: &str) {
    if std::env::var_os("SONGGEN_NO_SKIP").is_some() {
        panic!("cannot run, and SONGGEN_NO_SKIP is set: {reason}");
    }
    eprintln!("SKIPPED: {reason}");
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
