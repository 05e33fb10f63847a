//! `--device` and `--dtype`: where models run, with a CPU fallback.

use candle_core::{DType, Device};
use songgen_engine::gpu;

use super::Failure;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceChoice {
    /// The first CUDA GPU when this build has CUDA and one is present, else the CPU.
    Auto,
    Cpu,
    /// The first CUDA GPU; an error when none can be used.
    Cuda,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DTypeChoice {
    /// bf16 on a GPU, f32 on the CPU.
    Auto,
    F32,
    F16,
    Bf16,
}

/// Resolves the choices; `auto` falls back to the CPU with a note on stderr. `--device cuda`
/// without a usable GPU is a [`Failure::device`] (its own exit code, not "bad input").
pub fn select(device: DeviceChoice, dtype: DTypeChoice) -> Result<(Device, DType), Failure> {
    let device = match device {
        DeviceChoice::Cpu => Device::Cpu,
        DeviceChoice::Cuda if !cfg!(feature = "cuda") => {
            return Err(Failure::device(anyhow::anyhow!(
                "--device cuda: this songgen was built without CUDA support; rebuild it with \
                 `cargo xtask install --features cuda` (needs the CUDA toolkit), or use --device cpu"
            )))
        }
        DeviceChoice::Cuda => Device::new_cuda(0).map_err(|e| {
            Failure::device(anyhow::anyhow!(
                "--device cuda: no usable CUDA GPU ({e}); check `nvidia-smi` and the driver, \
                 or use --device cpu"
            ))
        })?,
        DeviceChoice::Auto => match Device::new_cuda(0) {
            Ok(d) => d,
            Err(e) => {
                if cfg!(feature = "cuda") {
                    eprintln!("note: no usable CUDA GPU ({e}); running on the CPU");
                }
                Device::Cpu
            }
        },
    };
    if device.is_cuda() {
        gpu::configure_numerics();
    }
    let dtype = match dtype {
        DTypeChoice::Auto if device.is_cpu() => DType::F32,
        DTypeChoice::Auto => DType::BF16,
        DTypeChoice::F32 => DType::F32,
        DTypeChoice::F16 => DType::F16,
        DTypeChoice::Bf16 => DType::BF16,
    };
    Ok((device, dtype))
}

/// `--lm-precision` and `--seconds`, shared by generate and serve.
#[derive(Debug, Clone, clap::Args)]
pub struct LmArgs {
    /// LM weight precision: f32, f16, bf16 (also the LM's compute dtype), or q8_0, q4_k
    /// (GGML blocks, quantized at load or read from the model folder's model.<p>.gguf that
    /// `songgen quantize` writes; computed in --dtype) [default: --dtype]
    #[arg(long, value_name = "P")]
    pub lm_precision: Option<songgen_engine::quant::LmPrecision>,
    /// Longest song in seconds; sizes the LM's KV cache and the memory plan [default: the
    /// model's max_dur, 270 s]
    #[arg(long, value_name = "S", value_parser = positive_seconds)]
    pub seconds: Option<f64>,
}

impl LmArgs {
    pub fn options(&self, dtype: DType) -> songgen_engine::service::models::LoadOptions {
        let mut o = songgen_engine::service::models::LoadOptions::new(dtype);
        if let Some(p) = self.lm_precision {
            o.lm_precision = p;
        }
        o.max_seconds = self.seconds;
        o
    }
}

pub fn positive_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("{s:?} is not a positive number of seconds")),
    }
}
