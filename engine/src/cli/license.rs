//! Showing the weights' licence before first use (see `songgen_engine::license`).

use std::io::{BufRead, IsTerminal, Write};

use songgen_engine::license;

use super::Failure;

/// Makes sure the licence was accepted: `--accept-license` (or `SONGGEN_ACCEPT_LICENSE=1`)
/// accepts it for scripts and CI; otherwise an interactive terminal is asked once. The
/// acceptance is remembered per user.
pub fn ensure_accepted(flag: bool) -> Result<(), Failure> {
    if license::is_accepted() {
        return Ok(());
    }
    let by_env = std::env::var("SONGGEN_ACCEPT_LICENSE").is_ok_and(|v| v == "1" || v == "yes");
    if flag || by_env {
        eprintln!("{}\n(accepted with --accept-license)", license::NOTICE);
        return remember();
    }
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(Failure::input(anyhow::anyhow!(
            "the model weights' licence has not been accepted yet:\n\n{}\n\n\
             run once in a terminal to accept it, or pass --accept-license \
             (or set SONGGEN_ACCEPT_LICENSE=1)",
            license::NOTICE
        )));
    }
    eprint!("{}\n\nAccept these terms? [y/N] ", license::NOTICE);
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    let _ = stdin.lock().read_line(&mut answer);
    if matches!(answer.trim().to_lowercase().as_str(), "y" | "yes") {
        remember()
    } else {
        Err(Failure::input(anyhow::anyhow!(
            "the licence was not accepted; nothing was downloaded or run"
        )))
    }
}

fn remember() -> Result<(), Failure> {
    license::record_acceptance().map_err(|e| {
        Failure::run(anyhow::anyhow!(
            "cannot record the licence acceptance in {}: {e}",
            license::acceptance_file().display()
        ))
    })
}
