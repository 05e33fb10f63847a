//! `songgen convert`: PyTorch checkpoints to safetensors.

use std::path::PathBuf;

use songgen_engine::io::convert;

use super::{CliResult, Failure};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A PyTorch checkpoint: model.pt, a Lightning .ckpt (state_dict inside) or a .pth.
    pub input: PathBuf,
    /// Output file [default: the input with a .safetensors extension]. Loaders prefer
    /// model.safetensors over model.pt when both are in a model folder.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// Replace an existing output file.
    #[arg(long)]
    pub overwrite: bool,
}

pub fn run(args: Args) -> CliResult {
    if !args.input.is_file() {
        return Err(Failure::input(anyhow::anyhow!(
            "{} not found",
            args.input.display()
        )));
    }
    let c = convert::to_safetensors(&args.input, args.output.as_deref(), args.overwrite)
        .map_err(Failure::input)?;
    println!(
        "wrote {} ({} tensors, {:.1} MB)",
        c.output.display(),
        c.tensors,
        c.bytes as f64 / 1e6
    );
    Ok(())
}
