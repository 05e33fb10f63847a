//! Fused CPU kernels for the element-wise work between the big matmuls: the attention softmax
//! (with its scale and causal mask folded in), GELU (tanh form) and SwiGLU's `silu(gate) · up`.
//!
//! Candle computes these as chains of separate passes (scale, mask add, softmax; `tanh`/`exp`
//! from libm one element at a time, on one thread), which cost the flow estimator about 0.45 s
//! of every 2.4 s layer on the 2-core CPU (`docs/perf.md`). Here each is one multi-threaded pass
//! (rayon) over contiguous f32 rows, vectorised through `pulp`'s run-time dispatch (AVX2+FMA,
//! AVX-512, or scalar), with a branch-free Cephes-style `exp` so the compiler can vectorise it.
//! No crate offers a vectorised `exp` with run-time CPU dispatch on stable Rust; the polynomial
//! is ten lines.
//!
//! Every function falls back to candle's own ops (same maths, same dtype rules) for tensors that
//! are not contiguous f32 on the CPU, so CUDA and half-precision runs are unchanged.

use candle_core::{CpuStorage, DType, Device, Result, Storage, Tensor, D};
use rayon::prelude::*;

/// Elements (whole rows, for the softmax) handed to one rayon task: enough to amortise the
/// task, few enough to balance the threads.
const MIN_TASK_ELEMS: usize = 1 << 15;

/// The tensor's elements when it is contiguous f32 on the CPU.
fn with_cpu_f32<R>(x: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<Option<R>> {
    if x.dtype() != DType::F32 || !x.device().is_cpu() || !x.is_contiguous() {
        return Ok(None);
    }
    let (storage, layout) = x.storage_and_layout();
    let Storage::Cpu(CpuStorage::F32(data)) = &*storage else {
        return Ok(None);
    };
    let start = layout.start_offset();
    let src = &data[start..start + x.elem_count()];
    f(src).map(Some)
}

/// `exp(x)` to about 2 ulp, without branches (Cephes `expf`: `2^n · p(r)`, `r = x − n·ln 2`).
/// Inputs are clamped to `[−87.3, 88.37]`, so the result never overflows or goes subnormal.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // 1.5 · 2^23: adding and subtracting it rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.3, 88.37);
    // v = 1.5·2^23 + n: its low mantissa bits hold n, so 2^n is built with integer ops only.
    let v = x * LOG2E + ROUND;
    let n = v - ROUND;
    let pow2n = f32::from_bits(v.to_bits().wrapping_add(127) << 23);
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    y * pow2n
}

/// `1 / (1 + e^{−x})`.
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// GELU, tanh form (`gelu_new`): `0.5·x·(1 + tanh(√(2/π)(x + 0.044715x³)))`, written as
/// `x · σ(2·√(2/π)(x + 0.044715x³))` (the same function).
#[inline(always)]
fn gelu_tanh_one(x: f32) -> f32 {
    const TWO_SQRT_2_OVER_PI: f32 = 2.0 * 0.797_884_6;
    x * sigmoid(TWO_SQRT_2_OVER_PI * x * (1.0 + 0.044_715 * x * x))
}

/// `out[i] = f(a[i], b[i])` over one chunk, compiled for the SIMD level `pulp` detected (the
/// loop is inlined into a function with those target features, so it auto-vectorises).
struct Zip2<'a, F> {
    out: &'a mut [f32],
    a: &'a [f32],
    b: &'a [f32],
    f: F,
}

impl<F: Fn(f32, f32) -> f32> pulp::WithSimd for Zip2<'_, F> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        for ((o, &a), &b) in self.out.iter_mut().zip(self.a).zip(self.b) {
            *o = (self.f)(a, b);
        }
    }
}

/// `f(a[i], b[i])` in parallel chunks, into a new tensor shaped like `like`.
fn map2(
    a: &[f32],
    b: &[f32],
    like: &Tensor,
    f: impl Fn(f32, f32) -> f32 + Sync + Copy,
) -> Result<Tensor> {
    let mut out = vec![0f32; a.len()];
    let arch = pulp::Arch::new();
    out.par_chunks_mut(MIN_TASK_ELEMS)
        .zip(
            a.par_chunks(MIN_TASK_ELEMS)
                .zip(b.par_chunks(MIN_TASK_ELEMS)),
        )
        .for_each(|(out, (a, b))| arch.dispatch(Zip2 { out, a, b, f }));
    Tensor::from_vec(out, like.shape(), like.device())
}

/// GELU (tanh approximation), like candle's `Tensor::gelu`.
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    match with_cpu_f32(x, |src| map2(src, src, x, |v, _| gelu_tanh_one(v)))? {
        Some(y) => Ok(y),
        None => x.gelu(),
    }
}

/// SwiGLU's gate: `silu(gate) · up`, like `candle_nn::ops::silu(gate)? * up`.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if gate.shape() == up.shape() {
        let fused = with_cpu_f32(gate, |g| {
            with_cpu_f32(up, |u| map2(g, u, gate, |g, u| g * sigmoid(g) * u))
        })?;
        if let Some(Some(y)) = fused {
            return Ok(y);
        }
    }
    candle_nn::ops::silu(gate)? * up
}

/// Softmax over the last dimension of `x · scale`, optionally causally masked.
///
/// With `causal_past = Some(p)`, `x` is `[…, s, p + s]` attention scores of `s` new positions
/// after `p` cached ones: row `i` sees columns `0..=p + i` and the rest get probability 0 (an
/// additive `−∞` mask). The softmax runs in f32 and the result has `x`'s dtype, like the
/// reference's `softmax(scores · scale + mask, dtype=float32).to(dtype)`.
pub fn softmax_scaled(x: &Tensor, scale: f64, causal_past: Option<usize>) -> Result<Tensor> {
    if !(scale > 0.0 && scale.is_finite()) {
        candle_core::bail!("softmax scale must be positive and finite, got {scale}");
    }
    let cols = x.dim(D::Minus1)?;
    if x.elem_count() == 0 {
        return Ok(x.clone());
    }
    let rows_per_matrix = if x.rank() >= 2 { x.dim(D::Minus2)? } else { 1 };
    if let Some(p) = causal_past {
        if cols != p + rows_per_matrix {
            candle_core::bail!(
                "causal softmax: {cols} columns for {rows_per_matrix} new positions after {p}"
            );
        }
    }
    let fused = with_cpu_f32(x, |src| {
        let mut out = vec![0f32; src.len()];
        let scale = scale as f32;
        let rows_per_task = (MIN_TASK_ELEMS / cols.max(1)).max(1);
        let arch = pulp::Arch::new();
        out.par_chunks_mut(rows_per_task * cols)
            .zip(src.par_chunks(rows_per_task * cols))
            .enumerate()
            .for_each(|(task, (o, s))| {
                let first_row = task * rows_per_task;
                for (r, (o, s)) in o.chunks_mut(cols).zip(s.chunks(cols)).enumerate() {
                    let valid = match causal_past {
                        Some(p) => (p + (first_row + r) % rows_per_matrix + 1).min(cols),
                        None => cols,
                    };
                    arch.dispatch(SoftmaxRow {
                        x: &s[..valid],
                        out: o,
                        scale,
                    });
                }
            });
        Tensor::from_vec(out, x.shape(), x.device())
    })?;
    if let Some(y) = fused {
        return Ok(y);
    }
    let scaled = (x * scale)?;
    let scaled = match causal_past {
        Some(p) => {
            scaled.broadcast_add(&causal_mask(rows_per_matrix, p, x.dtype(), x.device())?)?
        }
        None => scaled,
    };
    candle_nn::ops::softmax_last_dim(&scaled.to_dtype(DType::F32)?)?.to_dtype(x.dtype())
}

/// One row: `out[j] = e^{s·x_j − m} / Σ` over the `x.len()` visible columns, 0 after them.
struct SoftmaxRow<'a> {
    x: &'a [f32],
    out: &'a mut [f32],
    scale: f32,
}

impl pulp::WithSimd for SoftmaxRow<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        softmax_row(self.x, self.out, self.scale)
    }
}

#[inline(always)]
fn softmax_row(x: &[f32], out: &mut [f32], scale: f32) {
    // Max of x (scale > 0 keeps the order), then e^{s·x − m}, their sum, the division: simple
    // passes over a row that sits in L1, each of which the compiler vectorises.
    let max = lanes(x, f32::NEG_INFINITY, f32::max) * scale;
    let (vis, hidden) = out.split_at_mut(x.len());
    for (o, &v) in vis.iter_mut().zip(x) {
        *o = exp(v * scale - max);
    }
    let inv = 1.0 / lanes(vis, 0.0, |a, b| a + b);
    for o in vis.iter_mut() {
        *o *= inv;
    }
    hidden.fill(0.0);
}

/// Reduces `x` with `f` over 8 interleaved lanes (so it vectorises), then across the lanes.
#[inline(always)]
fn lanes(x: &[f32], init: f32, f: impl Fn(f32, f32) -> f32) -> f32 {
    const LANES: usize = 8;
    let mut acc = [init; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for k in 0..LANES {
            acc[k] = f(acc[k], c[k]);
        }
    }
    let mut r = tail.iter().fold(init, |a, &b| f(a, b));
    for v in acc {
        r = f(r, v);
    }
    r
}

/// `[s, past + s]` additive mask: new position `i` sees cached positions and new ones `<= i`.
fn causal_mask(s: usize, past: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..s)
        .flat_map(|i| {
            (0..past + s).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 })
        })
        .collect();
    Tensor::from_vec(mask, (s, past + s), device)?.to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::tests::max_abs as max_abs_diff;

    #[test]
    fn exp_matches_libm_over_its_range() {
        let mut worst = 0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let rel = ((exp(x) - x.exp()) / x.exp()).abs();
            worst = worst.max(rel);
            x += 0.0137;
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1000.0) < 1e-37 && exp(-1000.0) >= 0.0);
        assert!(exp(1000.0).is_finite());
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn gelu_and_silu_mul_match_candle() -> Result<()> {
        let dev = Device::Cpu;
        // Odd length: exercises the chunk tails; wide range: the saturated ends.
        let x = (Tensor::randn(0f32, 4., (3, 70_001), &dev)? * 3.0)?;
        let u = Tensor::randn(0f32, 1., (3, 70_001), &dev)?;
        let g = gelu_tanh(&x)?;
        assert!(max_abs_diff(&g, &x.gelu()?) < 1e-5);
        let s = silu_mul(&x, &u)?;
        assert!(max_abs_diff(&s, &(candle_nn::ops::silu(&x)? * &u)?) < 1e-5);
        // A strided input takes candle's path and agrees too.
        let xt = x.t()?;
        assert!(max_abs_diff(&gelu_tanh(&xt)?, &xt.gelu()?) < 1e-6);
        Ok(())
    }

    #[test]
    fn softmax_matches_the_composed_ops() -> Result<()> {
        let dev = Device::Cpu;
        for (past, s, heads) in [(0usize, 1usize, 1usize), (0, 37, 3), (5, 12, 2), (40, 1, 4)] {
            let x = Tensor::randn(0f32, 3., (2, heads, s, past + s), &dev)?;
            let scale = 0.125;
            let want = candle_nn::ops::softmax_last_dim(
                &(&x * scale)?.broadcast_add(&causal_mask(s, past, DType::F32, &dev)?)?,
            )?;
            let got = softmax_scaled(&x, scale, Some(past))?;
            assert!(max_abs_diff(&got, &want) < 1e-6, "past {past} s {s}");
            let want = candle_nn::ops::softmax_last_dim(&(&x * scale)?)?;
            let got = softmax_scaled(&x, scale, None)?;
            assert!(max_abs_diff(&got, &want) < 1e-6);
            // Rows sum to one, masked entries are exactly zero.
            let sums = got.sum(D::Minus1)?.flatten_all()?.to_vec1::<f32>()?;
            assert!(sums.iter().all(|v| (v - 1.0).abs() < 1e-5));
        }
        let masked = softmax_scaled(&Tensor::ones((1, 3, 5), DType::F32, &dev)?, 1.0, Some(2))?;
        assert_eq!(
            masked.to_vec3::<f32>()?[0][0],
            vec![1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0, 0.0, 0.0]
        );
        // Half precision takes candle's path.
        let xh = Tensor::randn(0f32, 1., (2, 4, 9), &dev)?.to_dtype(DType::F16)?;
        let got = softmax_scaled(&xh, 0.5, Some(5))?;
        assert_eq!(got.dtype(), DType::F16);
        let want = softmax_scaled(&xh.to_dtype(DType::F32)?, 0.5, Some(5))?;
        assert!(max_abs_diff(&got.to_dtype(DType::F32)?, &want) < 2e-3);
        assert!(softmax_scaled(&xh, 0.5, Some(4)).is_err());
        assert!(softmax_scaled(&xh, 0.0, None).is_err());
        let empty = Tensor::zeros((2, 0, 0), DType::F32, &dev)?;
        assert_eq!(softmax_scaled(&empty, 1.0, Some(0))?.dims(), &[2, 0, 0]);
        Ok(())
    }
}
