//! `songgen quantize`: the LM's linear weights in GGML blocks, ahead of time.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::anyhow;
use songgen_engine::lm;
use songgen_engine::paths::ModelPaths;
use songgen_engine::quant::LmPrecision;

use super::{CliResult, Failure, ModelArgs};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// q8_0 or q4_k.
    #[arg(long, value_name = "P")]
    pub lm_precision: LmPrecision,
    /// Output file [default: <model>/model.<precision>.gguf, where generate and serve look]
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

pub fn run(args: Args) -> CliResult {
    if !args.lm_precision.is_quantized() {
        return Err(Failure::input(anyhow!(
            "--lm-precision {}: quantize writes q8_0 or q4_k (float precisions load directly)",
            args.lm_precision
        )));
    }
    let paths = ModelPaths::resolve(args.model.model_dir(), args.model.runtime.as_deref())
        .map_err(Failure::input)?;
    let out = args
        .out
        .unwrap_or_else(|| paths.model_dir.join(args.lm_precision.gguf_file_name()));
    let started = Instant::now();
    let (total, quantized) =
        lm::write_quantized(&paths.lm_weights(), &out, args.lm_precision).map_err(Failure::run)?;
    let size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    println!(
        "{}: {total} tensors ({quantized} linear weights in {}), {:.2} GB, {:.1} s",
        out.display(),
        args.lm_precision,
        size as f64 / 1e9,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
