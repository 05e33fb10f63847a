//! `songgen check`: the engine's own checks, runnable where there is no Rust toolchain (a GPU
//! machine: scripts/gpu-check.sh carries the binary there).
//!
//! - `songgen check parity [--device cpu|cuda] [--filter SUBSTR] DIR...`: the parity fixtures, as
//!   `cargo xtask parity` runs them, on a device (in a build with the `parity` feature).
//! - `songgen check timings [--device cpu|cuda] [--dtype f32|bf16|f16] [--size released|small]`:
//!   the LM, the flow estimator and the VAE decoder built with random weights (at the released
//!   widths, or tiny ones for a dry run), one JSON line per measurement: LM prefill (condition
//!   prefix + first column, both CFG rows) and one KV-cached decode step in `--dtype`; one flow
//!   step (the CFG batch of one 1000-frame window) and one VAE chunk (128 latent frames) in f32,
//!   as the engine runs them. Each line has the fastest and the median wall time over `--repeat`
//!   runs after a warm-up (the device synchronised before the clock stops) and, on a GPU, the
//!   device memory in use after the runs as the driver reports it.

use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use songgen_engine::io::weights::RandomWeights;
use songgen_engine::lm::conditioners::ConditionPrefix;
use songgen_engine::lm::model::LeLm;
use songgen_engine::lm::LmConfig;
use songgen_engine::render::flow::{EstimatorConfig, FlowEstimator};
use songgen_engine::render::vae::{OobleckDecoder, VaeConfig};

use super::device::{self, DTypeChoice, DeviceChoice};
use super::{CliResult, Failure};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub check: Check,
}

#[derive(Debug, clap::Subcommand)]
pub enum Check {
    /// Run parity fixture directories (tests/fixtures/parity/*) on a device.
    Parity {
        #[arg(long, value_enum, default_value = "cpu")]
        device: DeviceChoice,
        /// Only the cases whose name contains this.
        #[arg(long)]
        filter: Option<String>,
        #[arg(required = true, value_name = "DIR")]
        dirs: Vec<std::path::PathBuf>,
    },
    /// Time the LM, flow and VAE hot paths with random weights (JSON lines on stdout).
    Timings {
        #[arg(long, value_enum, default_value = "auto")]
        device: DeviceChoice,
        /// The LM's dtype (the flow and the VAE always run in f32).
        #[arg(long, value_enum, default_value = "auto")]
        dtype: DTypeChoice,
        #[arg(long, value_enum, default_value = "released")]
        size: Size,
        /// Timed runs of each measurement, after one warm-up run.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
        repeat: u32,
    },
}

pub fn run(args: Args) -> CliResult {
    match args.check {
        Check::Parity {
            device: dev,
            filter,
            dirs,
        } => parity(dev, filter.as_deref(), &dirs),
        Check::Timings {
            device: dev,
            dtype,
            size,
            repeat,
        } => {
            let (device, dtype) = device::select(dev, dtype)?;
            timings(&Options {
                device,
                dtype,
                size,
                repeat: repeat as usize,
            })
            .map_err(Failure::run)
        }
    }
}

#[cfg(feature = "parity")]
fn parity(dev: DeviceChoice, filter: Option<&str>, dirs: &[std::path::PathBuf]) -> CliResult {
    let (dev, _) = device::select(dev, DTypeChoice::F32)?;
    let total = songgen_engine::parity::run_dirs(dirs, filter, &dev, &mut std::io::stdout())
        .map_err(Failure::run)?;
    if total.failed == 0 {
        Ok(())
    } else {
        Err(Failure::run(anyhow::anyhow!(
            "{} parity case(s) failed",
            total.failed
        )))
    }
}

#[cfg(not(feature = "parity"))]
fn parity(_: DeviceChoice, _: Option<&str>, _: &[std::path::PathBuf]) -> CliResult {
    Err(Failure::input(anyhow::anyhow!(
        "this songgen was built without the parity runner: build it with `--features parity`"
    )))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Size {
    /// The released v2-large LM and renderer widths.
    Released,
    /// Tiny widths (same vocabulary, prefix and window lengths), for a dry run.
    Small,
}

struct Options {
    device: Device,
    dtype: DType,
    size: Size,
    repeat: usize,
}

/// The v2-large LM, or a tiny one with the same vocabulary and prefix.
fn lm_config(size: Size) -> LmConfig {
    match size {
        Size::Released => LmConfig::v2_large(),
        Size::Small => LmConfig {
            dim: 64,
            intermediate_size: 128,
            num_heads: 2,
            num_layers: 2,
            num_layers_sub: 1,
            ..LmConfig::v2_large()
        },
    }
}

fn flow_config(size: Size) -> EstimatorConfig {
    let mut cfg = EstimatorConfig::songgen_v2();
    if size == Size::Small {
        cfg.n_embd = 64;
        cfg.n_head = 4;
        cfg.n_layer = 2;
        cfg.n_inner = 128;
    }
    cfg
}

fn vae_config(size: Size) -> VaeConfig {
    let mut cfg = VaeConfig::default();
    if size == Size::Small {
        cfg.channels = 4;
    }
    cfg
}

/// Runs `f` once to warm up, then `repeat` times, and prints one JSON line.
fn measure(o: &Options, name: &str, dtype: DType, mut f: impl FnMut() -> Result<()>) -> Result<()> {
    let before = used_mib(&o.device)?;
    f().with_context(|| format!("{name} (warm-up)"))?;
    o.device.synchronize()?;
    let mut ms = Vec::with_capacity(o.repeat);
    for _ in 0..o.repeat {
        let t = Instant::now();
        f().with_context(|| name.to_owned())?;
        o.device.synchronize()?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    let after = used_mib(&o.device)?;
    let line = serde_json::json!({
        "what": name,
        "device": match o.device.location() {
            candle_core::DeviceLocation::Cpu => "cpu".to_owned(),
            candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
            candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
        },
        "dtype": format!("{dtype:?}").to_lowercase(),
        "size": if o.size == Size::Released { "released" } else { "small" },
        "runs": o.repeat,
        "min_ms": ms[0],
        "median_ms": ms[ms.len() / 2],
        "device_mib_in_use_before": before,
        "device_mib_in_use": after,
    });
    println!("{line}");
    Ok(())
}

/// Device memory in use (MiB, the driver's view: every process), null on the CPU.
fn used_mib(device: &Device) -> Result<serde_json::Value> {
    Ok(match songgen_engine::gpu::memory(device) {
        Some(m) => {
            let (free, total) = m?;
            serde_json::json!((total - free) as f64 / (1u64 << 20) as f64)
        }
        None => serde_json::Value::Null,
    })
}

fn timings(o: &Options) -> Result<()> {
    let dev = o.device.clone();
    if let Some(info) = songgen_engine::gpu::info(&dev) {
        eprintln!("device: {}", info?);
    }

    // LM: prefill and one decode step, in the chosen dtype.
    {
        let cfg = lm_config(o.size);
        let mut model = LeLm::load(
            &cfg,
            RandomWeights::var_builder(o.dtype, &dev).pp("audiolm"),
        )
        .context("building the random LM")?;
        let p = cfg.prefix_len();
        let rand = || -> Result<Tensor> {
            Ok(Tensor::randn(0f32, 1.0, (2, p, cfg.dim), &dev)?.to_dtype(o.dtype)?)
        };
        let prefix = ConditionPrefix {
            stream1: rand()?,
            stream2: rand()?,
        };
        let column = Tensor::full(cfg.special_id(), (2, 3, 1), &dev)?;
        let capacity = p + cfg.max_gen_len() + cfg.max_delay() + 1;
        measure(
            o,
            &format!("lm_prefill_{}_positions", p + 1),
            o.dtype,
            || {
                model.reset(capacity);
                model.forward(&column, Some(&prefix), false)?;
                Ok(())
            },
        )?;
        model.reset(capacity);
        model.forward(&column, Some(&prefix), false)?;
        measure(o, "lm_decode_step", o.dtype, || {
            model.forward(&column, None, false)?;
            Ok(())
        })?;
    }

    // Flow estimator and VAE: always f32 (see songgen_engine::gpu).
    {
        let cfg = flow_config(o.size);
        let est = FlowEstimator::load(RandomWeights::var_builder(DType::F32, &dev), &cfg, Some(64))
            .context("building the random flow estimator")?;
        let x = Tensor::randn(0f32, 1., (2, cfg.n_positions, cfg.n_embd), &dev)?;
        let t = Tensor::new(&[0.3f32, 0.3], &dev)?;
        measure(
            o,
            &format!("flow_step_cfg2_L{}_d{}", cfg.n_positions, cfg.n_embd),
            DType::F32,
            || {
                est.velocity(&x, &t)?;
                Ok(())
            },
        )?;
    }
    {
        let cfg = vae_config(o.size);
        let vae = OobleckDecoder::load(RandomWeights::var_builder(DType::F32, &dev), &cfg)
            .context("building the random VAE decoder")?;
        let z = Tensor::randn(0f32, 1., (1, cfg.latent_dim, 128), &dev)?;
        measure(
            o,
            &format!("vae_chunk_128_frames_c{}", cfg.channels),
            DType::F32,
            || {
                vae.decode(&z)?;
                Ok(())
            },
        )?;
    }
    Ok(())
}
