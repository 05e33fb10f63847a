//! A CPU LM job at the mid-size config of `benches/lelm.rs` (dim 1024, 8 + 4 layers, the real
//! vocabulary and prefix length), loaded from a weight file as `generate` loads the LM, for the
//! peak memory (`/usr/bin/time -v`) and wall time of each precision:
//!
//! ```sh
//! cargo run --release -p songgen-engine --example lm_job -- write DIR
//! /usr/bin/time -v target/release/examples/lm_job run DIR/model.safetensors f32 STEPS
//! /usr/bin/time -v target/release/examples/lm_job run DIR/model.safetensors q8_0 STEPS  # quantized at load
//! /usr/bin/time -v target/release/examples/lm_job run DIR/model.q8_0.gguf q8_0 STEPS    # `songgen quantize` output
//! ```
//!
//! `write` stores random N(0, 0.02) f32 weights (`audiolm.*`, as the released checkpoint names
//! them) and their q8_0 / q4_k GGUF files (`lm::write_quantized`, what `songgen quantize` runs).
//! `run` loads one file in one precision, runs the prefill (952 prefix positions + column 0,
//! both CFG rows) and STEPS KV-cached decode steps, and prints the times of each part.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use songgen_engine::io::weights::WeightFile;
use songgen_engine::lm::conditioners::ConditionPrefix;
use songgen_engine::lm::model::LeLm;
use songgen_engine::lm::LmConfig;
use songgen_engine::quant::{GgufWeights, LinearLoader, LmPrecision};

fn write(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let cfg = LmConfig::mid_size();
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu).pp("audiolm");
    LeLm::load(&cfg, vb)?;
    songgen_engine::lm::quality::randomize(&varmap)?;
    let st = dir.join("model.safetensors");
    varmap.save(&st)?;
    for precision in [LmPrecision::Q8_0, LmPrecision::Q4K] {
        let out = dir.join(precision.gguf_file_name());
        let (total, quantized) = songgen_engine::lm::write_quantized(&st, &out, precision)?;
        println!("{}: {total} tensors, {quantized} quantized", out.display());
    }
    println!("{}", st.display());
    Ok(())
}

fn run(weights: &Path, precision: LmPrecision, steps: usize) -> Result<()> {
    let cfg = LmConfig::mid_size();
    let dev = Device::Cpu;
    let t0 = Instant::now();
    let mut model = if weights.extension().is_some_and(|e| e == "gguf") {
        let g = std::sync::Arc::new(GgufWeights::open(weights)?);
        let vb = g.var_builder(DType::F32, &dev).pp("audiolm");
        LeLm::load_with(&cfg, vb, &LinearLoader::new(precision, Some(g)))?
    } else {
        let vb = WeightFile::open(weights)?
            .var_builder(DType::F32, &dev)
            .pp("audiolm");
        LeLm::load_with(&cfg, vb, &LinearLoader::new(precision, None))?
    };
    let load = t0.elapsed();
    let p = cfg.prefix_len();
    let rand = || Tensor::randn(0f32, 1.0, (2, p, cfg.dim), &dev);
    let prefix = ConditionPrefix {
        stream1: rand()?,
        stream2: rand()?,
    };
    let column = Tensor::full(cfg.special_id(), (2, 3, 1), &dev)?;
    model.reset(p + steps + 1);
    let t1 = Instant::now();
    model.forward(&column, Some(&prefix), false)?;
    let prefill = t1.elapsed();
    let t2 = Instant::now();
    for _ in 0..steps {
        model.forward(&column, None, false)?;
    }
    let decode = t2.elapsed();
    println!(
        "{} {precision}: load {:.2} s, prefill {:.2} s, {steps} steps {:.2} s ({:.1} ms/step)",
        weights.display(),
        load.as_secs_f64(),
        prefill.as_secs_f64(),
        decode.as_secs_f64(),
        1e3 * decode.as_secs_f64() / steps.max(1) as f64
    );
    Ok(())
}

fn main() -> Result<()> {
    // As the `songgen` binary runs.
    songgen_engine::heap::keep_freed_memory();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["write", dir] => write(&PathBuf::from(dir)),
        ["run", file, precision, steps] => run(
            Path::new(file),
            precision.parse().map_err(anyhow::Error::msg)?,
            steps.parse().context("STEPS")?,
        ),
        _ => bail!("usage: lm_job write DIR | lm_job run FILE PRECISION STEPS"),
    }
}
