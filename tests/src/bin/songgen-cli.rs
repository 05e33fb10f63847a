//! The `songgen` command, built inside this crate so the integration tests run the command of
//! the very build they are part of (same features, same artefacts: cargo builds a package's
//! binaries before its integration tests). Identical to `engine/src/bin/songgen.rs`.

fn main() -> std::process::ExitCode {
    songgen_engine::cli::main()
}
