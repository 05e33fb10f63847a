//! Project tasks: `cargo xtask parity <DIR>...` (more subcommands live alongside it).

mod plugin;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use songgen_engine::parity::{self, Summary};

const USAGE: &str = "usage: cargo xtask <command>

commands:
  parity [--filter SUBSTR] <DIR>...   run every case of parity fixture directories";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &[String]) -> Result<ExitCode> {
    match args.first().map(String::as_str) {
        Some("parity") => parity_cmd(&args[1..]),
        Some("bundle" | "bundle-universal" | "known-packages") => {
            plugin::bundle(args).map(|()| ExitCode::SUCCESS)
        }
        Some("install") => plugin::install(&args[1..]).map(|()| ExitCode::SUCCESS),
        Some("-h" | "--help") | None => {
            println!("{USAGE}\n{}", plugin::USAGE);
            Ok(ExitCode::SUCCESS)
        }
        Some(other) => bail!("unknown command {other:?}\n\n{USAGE}\n{}", plugin::USAGE),
    }
}

fn parity_cmd(args: &[String]) -> Result<ExitCode> {
    let mut filter = None;
    let mut dirs = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--filter" => filter = it.next().cloned(),
            _ => dirs.push(PathBuf::from(arg)),
        }
    }
    if dirs.is_empty() {
        bail!("parity needs at least one fixture directory\n\n{USAGE}");
    }
    let mut total = Summary::default();
    let mut stdout = std::io::stdout();
    for dir in &dirs {
        match parity::run_dir(dir, filter.as_deref(), &mut stdout) {
            Ok(s) => total = total.add(s),
            Err(e) => {
                println!("FAIL {} - {e:#}", dir.display());
                total.failed += 1;
            }
        }
    }
    println!("{} passed, {} failed", total.passed, total.failed);
    Ok(if total.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
