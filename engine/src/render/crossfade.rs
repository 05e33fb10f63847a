//! Joining decoded windows: the linear cross-fade over their overlap.

use candle_core::{DType, Tensor};

/// Appends `next: [C, N]` to `acc: [C, M]` with a linear cross-fade over `overlap` samples:
/// `acc_tail·(1−w) + next_head·w`, `w = linspace(0, 1, overlap)` (f64, as the reference).
pub fn crossfade_append(
    acc: &Tensor,
    next: &Tensor,
    overlap: usize,
) -> candle_core::Result<Tensor> {
    let (_, m) = acc.dims2()?;
    let (_, n) = next.dims2()?;
    if overlap == 0 {
        return Tensor::cat(&[acc, next], 1);
    }
    if overlap > m || overlap > n {
        candle_core::bail!("cross-fade of {overlap} samples is longer than a window ({m}, {n})");
    }
    let step = 1.0 / (overlap.max(2) - 1) as f64;
    let mut ramp: Vec<f64> = (0..overlap).map(|i| i as f64 * step).collect();
    ramp[overlap - 1] = 1.0;
    let w = Tensor::from_vec(ramp, (1, overlap), acc.device())?;
    let tail = acc.narrow(1, m - overlap, overlap)?.to_dtype(DType::F64)?;
    let head = next.narrow(1, 0, overlap)?.to_dtype(DType::F64)?;
    let faded =
        (tail.broadcast_mul(&(1.0 - &w)?)? + head.broadcast_mul(&w)?)?.to_dtype(acc.dtype())?;
    Tensor::cat(
        &[
            acc.narrow(1, 0, m - overlap)?,
            faded,
            next.narrow(1, overlap, n - overlap)?,
        ],
        1,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Result;
    use candle_core::Device;
    #[test]
    fn crossfade_is_linear_over_the_overlap() -> Result<()> {
        let dev = Device::Cpu;
        let a = Tensor::ones((1, 4), DType::F32, &dev)?;
        let b = Tensor::zeros((1, 5), DType::F32, &dev)?;
        let y = crossfade_append(&a, &b, 3)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert_eq!(y, [1., 1., 0.5, 0., 0., 0.]);
        Ok(())
    }
}
