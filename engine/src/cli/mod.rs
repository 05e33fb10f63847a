//! The `songgen` command line: argument parsing and the subcommands.
//!
//! Exit codes: 0 success, 1 a model or I/O failure during a run, 2 bad input or usage (nothing
//! was generated), 3 the requested device cannot be used (`--device cuda` without a usable GPU
//! or in a build without CUDA), 130 cancelled with Ctrl-C.

mod check;
mod convert;
mod device;
mod doctor;
mod fetch;
mod generate;
mod license;
mod quantize;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use songgen_engine::paths;

/// Native SongGeneration 2 (LeVo 2): structured lyrics + style tags → a full song as stems.
#[derive(Debug, Parser)]
#[command(name = "songgen", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate songs from lyrics (or a batch in the reference's JSONL format) into WAV stems.
    Generate(generate::Args),
    /// Run the engine service: JSON-lines jobs on stdin/stdout or a TCP socket (docs/protocol.md).
    Serve(serve::Args),
    /// Convert a PyTorch checkpoint (model.pt, .ckpt, .pth) to safetensors.
    Convert(convert::Args),
    /// Download a model or the shared runtime files from the Hugging Face Hub.
    Fetch(fetch::Args),
    /// Check a model folder (every file present and readable, tensor counts) and the devices;
    /// with --plan, print the memory plan of a job.
    Doctor(doctor::Args),
    /// Quantize the LM ahead of time into <model>/model.<precision>.gguf (q8_0, q4_k), which
    /// generate and serve then load with the same --lm-precision.
    Quantize(quantize::Args),
    /// List the known style tags and auto-prompt genres.
    Tags,
    /// Developer checks that run without cargo: parity fixtures on a device, random-weight
    /// timings of the hot paths (scripts/gpu-check.sh).
    Check(check::Args),
}

/// Options that pick a model folder, shared by generate, serve and doctor.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// Model folder with config.yaml and model.pt [default: <models>/songgeneration_v2_large,
    /// where <models> is the per-user models folder, or $SONGGEN_HOME/models]
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Folder with the shared runtime files (ckpt/, third_party/) [default: the model folder
    /// when it has them, else <model>/../runtime]
    #[arg(long, value_name = "DIR")]
    pub runtime: Option<PathBuf>,
}

impl ModelArgs {
    pub fn model_dir(&self) -> PathBuf {
        self.model
            .clone()
            .unwrap_or_else(|| paths::default_models_dir().join(paths::DEFAULT_MODEL))
    }
}

/// A failure with the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub error: anyhow::Error,
}

impl Failure {
    /// Bad input or usage: nothing was generated.
    pub fn input(error: impl Into<anyhow::Error>) -> Self {
        Self {
            code: 2,
            error: error.into(),
        }
    }
    /// The requested device cannot be used (no GPU, no driver, a build without CUDA).
    pub fn device(error: impl Into<anyhow::Error>) -> Self {
        Self {
            code: songgen_engine::gpu::EXIT_DEVICE,
            error: error.into(),
        }
    }
    /// A failure while running.
    pub fn run(error: impl Into<anyhow::Error>) -> Self {
        Self {
            code: 1,
            error: error.into(),
        }
    }
    pub fn cancelled() -> Self {
        Self {
            code: 130,
            error: anyhow::anyhow!("cancelled"),
        }
    }
}

pub type CliResult = Result<(), Failure>;

pub fn main() -> ExitCode {
    crate::heap::keep_freed_memory();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(a) => generate::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Convert(a) => convert::run(a),
        Command::Fetch(a) => fetch::run(a),
        Command::Doctor(a) => doctor::run(a),
        Command::Check(a) => check::run(a),
        Command::Quantize(a) => quantize::run(a),
        Command::Tags => {
            print_tags();
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            if f.code == 130 {
                eprintln!("songgen: cancelled");
            } else {
                eprintln!("error: {:#}", f.error);
            }
            ExitCode::from(f.code)
        }
    }
}

fn print_tags() {
    use songgen_engine::tags::Dimension;
    for dim in Dimension::ALL {
        if dim == Dimension::Bpm {
            println!(
                "bpm: `the bpm is N` with N from {} to {}",
                songgen_engine::tags::BPM_RANGE.start(),
                songgen_engine::tags::BPM_RANGE.end()
            );
        } else {
            println!("{}: {}", dim.name(), dim.vocabulary().join(", "));
        }
    }
    println!(
        "auto-prompt genres: {}",
        songgen_engine::tags::AUTO_PROMPT_GENRES.join(", ")
    );
    println!(
        "section tags: {}",
        songgen_engine::lyrics::SECTION_TAGS.join(" ")
    );
}
