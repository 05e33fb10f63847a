//! The initial noise of each window of the flow decode.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

/// Where the initial noise of each window comes from.
pub enum Noise {
    /// `N(0, 1)` from a seeded generator (frames-major, one window after another).
    Seeded(Box<StdRng>),
    /// Given tensors `[W, L, latent]`, window `k` uses row `k` (parity tests).
    Given { windows: Tensor, next: usize },
}

impl Noise {
    pub fn seeded(seed: u64) -> Self {
        Noise::Seeded(Box::new(StdRng::seed_from_u64(seed)))
    }

    pub fn given(windows: Tensor) -> Self {
        Noise::Given { windows, next: 0 }
    }

    /// The next window's noise `[1, frames, dim]` F32 on `device`.
    pub fn window(&mut self, frames: usize, dim: usize, device: &Device) -> Result<Tensor> {
        match self {
            Noise::Seeded(rng) => {
                let v: Vec<f32> = (0..frames * dim)
                    .map(|_| StandardNormal.sample(rng.as_mut()))
                    .collect();
                Ok(Tensor::from_vec(v, (1, frames, dim), device)?)
            }
            Noise::Given { windows, next } => {
                let (count, l, d) = windows.dims3()?;
                if *next >= count || l != frames || d != dim {
                    bail!(
                        "given noise {:?} has no window {} of [{frames}, {dim}]",
                        windows.dims(),
                        *next
                    );
                }
                let t = windows
                    .narrow(0, *next, 1)?
                    .to_device(device)?
                    .to_dtype(DType::F32)?;
                *next += 1;
                Ok(t)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn seeded_noise_is_reproducible_and_standard_normal() -> Result<()> {
        let dev = Device::Cpu;
        let a = Noise::seeded(5).window(1000, 64, &dev)?;
        let b = Noise::seeded(5).window(1000, 64, &dev)?;
        let c = Noise::seeded(6).window(1000, 64, &dev)?;
        let max = |t: Tensor| -> Result<f32> { Ok(t.abs()?.max_all()?.to_scalar::<f32>()?) };
        assert_eq!(max((&a - &b)?)?, 0.0);
        assert!(max((&a - &c)?)? > 0.0);
        let mean = a.mean_all()?.to_scalar::<f32>()?;
        let var = a.sqr()?.mean_all()?.to_scalar::<f32>()?;
        assert!(
            mean.abs() < 0.02 && (var - 1.0).abs() < 0.03,
            "mean {mean} var {var}"
        );
        Ok(())
    }
}
