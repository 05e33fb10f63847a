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

/// `cpu f32`, `cuda:0 bf16`.
pub fn describe(device: &Device, dtype: DType) -> String {
    let d = match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".to_string(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    };
    format!("{d} {dtype:?}").to_lowercase()
}
