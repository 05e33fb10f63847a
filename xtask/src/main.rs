//! Project tasks: `cargo xtask parity <DIR>...`, `cargo xtask tiny-model <DIR>`.

mod plugin;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use songgen_engine::parity;

const USAGE: &str = "usage: cargo xtask <command>

commands:
  parity [--filter SUBSTR] [--device cpu|cuda] <DIR>...
                                      run every case of parity fixture directories
  tiny-model [--seed N] [--seconds N] <DIR>
                                      write a tiny random-weight model folder in the released
                                      layout (DIR/songgeneration_v2_tiny + DIR/runtime); every
                                      song is N s long (default 3; 100 = 3 render windows)";

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
        Some("tiny-model") => tiny_model_cmd(&args[1..]),
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
    let passed = parity::command(args, &mut std::io::stdout())
        .map_err(|e| anyhow::anyhow!("{e:#}\n\n{USAGE}"))?;
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn tiny_model_cmd(args: &[String]) -> Result<ExitCode> {
    let mut seed = 0u64;
    let mut seconds = songgen_tests::tiny_model::MAX_DUR;
    let mut dir = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--seed" => {
                let v = it.next().map(String::as_str).unwrap_or_default();
                seed = v
                    .parse()
                    .map_err(|_| anyhow::anyhow!("--seed needs a number, not `{v}`"))?;
            }
            "--seconds" => {
                let v = it.next().map(String::as_str).unwrap_or_default();
                seconds = v
                    .parse()
                    .map_err(|_| anyhow::anyhow!("--seconds needs a number, not `{v}`"))?;
            }
            _ if dir.is_none() => dir = Some(PathBuf::from(arg)),
            _ => bail!("unexpected argument {arg:?}\n\n{USAGE}"),
        }
    }
    let Some(dir) = dir else {
        bail!("tiny-model needs a folder\n\n{USAGE}");
    };
    let model = songgen_tests::tiny_model::write_with(&dir, seed, seconds)?;
    println!(
        "wrote {} and {}\ntry: songgen generate --model {} --lyrics '[verse] hello world ; [chorus] la la' --accept-license",
        model.model_dir.display(),
        model.runtime_dir.display(),
        model.model_dir.display()
    );
    Ok(ExitCode::SUCCESS)
}
