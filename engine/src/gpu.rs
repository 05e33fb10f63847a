//! What the engine needs to know about a CUDA device, and the GPU numerics that need no GPU to
//! get right.
//!
//! - [`configure_numerics`]: candle's reduced-precision GEMM switches are process-wide. They stay
//!   off: f32 matrix products (the flow estimator, the VAE, any f32 LM) never use TF32, and
//!   bf16/f16 products accumulate in f32. The flow estimator and the VAE are always loaded in f32
//!   ([`crate::service::models::load`]) because rounding compounds over the Euler steps; the LM runs in the
//!   chosen dtype with its attention softmax and its logits in f32 (`lm::llama`, `lm::model`).
//! - [`memory`]: the device's free and total memory (the driver's `cuMemGetInfo`), for the memory
//!   plan and `songgen doctor`.

use anyhow::Result;
use candle_core::Device;

/// Exit code of `songgen` when the requested device cannot be used (defined in the protocol
/// crate, which the plugin shares).
pub use songgen_protocol::EXIT_DEVICE;

/// Turns candle's reduced-precision GEMM modes off (TF32 for f32, f16/bf16 accumulation).
/// Called whenever a CUDA device is selected; a no-op in a build without CUDA.
pub fn configure_numerics() {
    candle_core::cuda::set_gemm_reduced_precision_f32(false);
    candle_core::cuda::set_gemm_reduced_precision_f16(false);
    candle_core::cuda::set_gemm_reduced_precision_bf16(false);
}

/// Whether any reduced-precision GEMM mode is on (false after [`configure_numerics`]).
pub fn reduced_precision_gemm() -> bool {
    candle_core::cuda::gemm_reduced_precision_f32()
        || candle_core::cuda::gemm_reduced_precision_f16()
        || candle_core::cuda::gemm_reduced_precision_bf16()
}

/// A CUDA device as the driver describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuInfo {
    pub name: String,
    /// (major, minor), e.g. (9, 0) for an H100/H200.
    pub compute_capability: (i32, i32),
    pub free_bytes: u64,
    pub total_bytes: u64,
}

impl std::fmt::Display for GpuInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        write!(
            f,
            "{} (compute capability {}.{}), {:.1} GiB free of {:.1} GiB",
            self.name,
            self.compute_capability.0,
            self.compute_capability.1,
            gib(self.free_bytes),
            gib(self.total_bytes)
        )
    }
}

/// The device's name, compute capability and memory; `None` for the CPU.
pub fn info(device: &Device) -> Option<Result<GpuInfo>> {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => Some(cuda_info(d)),
        _ => None,
    }
}

/// Free and total bytes of the device's memory; `None` for the CPU.
pub fn memory(device: &Device) -> Option<Result<(u64, u64)>> {
    info(device).map(|r| r.map(|i| (i.free_bytes, i.total_bytes)))
}

#[cfg(feature = "cuda")]
fn cuda_info(d: &candle_core::CudaDevice) -> Result<GpuInfo> {
    let stream = d.cuda_stream();
    let ctx = stream.context();
    let (free, total) = ctx.mem_get_info()?;
    Ok(GpuInfo {
        name: ctx.name()?,
        compute_capability: ctx.compute_capability()?,
        free_bytes: free as u64,
        total_bytes: total as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_has_no_gpu_memory() {
        assert!(info(&Device::Cpu).is_none());
        assert!(memory(&Device::Cpu).is_none());
    }

    // Without the `cuda` feature candle's flags are stand-ins that always read `true`.
    #[cfg(feature = "cuda")]
    #[test]
    fn numerics_leave_reduced_precision_off() {
        configure_numerics();
        assert!(!reduced_precision_gemm());
    }

    #[test]
    fn describes_a_device() {
        let i = GpuInfo {
            name: "NVIDIA H200".into(),
            compute_capability: (9, 0),
            free_bytes: 3 << 30,
            total_bytes: 4 << 30,
        };
        assert_eq!(
            i.to_string(),
            "NVIDIA H200 (compute capability 9.0), 3.0 GiB free of 4.0 GiB"
        );
    }
}
