//! HTDemucs encoder/decoder layers (`HEncLayer`, `HDecLayer`) and the `DConv` residual branch.
//!
//! Frequency-branch convolutions have kernels `[K, 1]` (they never mix time frames), so they run
//! as 1-D convolutions along the frequency axis with time folded into the batch.

use anyhow::{Context, Result};
use candle_core::{DType, Tensor, D};
use candle_nn::VarBuilder;

/// `GroupNorm(1, C)` over `[N, C, T]`: normalise each sample over all channels and steps.
pub struct GroupNorm1 {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl GroupNorm1 {
    pub fn load(channels: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get(channels, "weight")?,
            bias: vb.get(channels, "bias")?,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, c, _) = x.dims3()?;
        let normed = normalize_per_sample(x, self.eps)?;
        Ok(normed
            .broadcast_mul(&self.weight.reshape((1, c, 1))?)?
            .broadcast_add(&self.bias.reshape((1, c, 1))?)?)
    }
}

/// `(x − mean) / sqrt(var + eps)` with the statistics of each sample (all axes but the first).
/// The sums run in f64: these norms cover millions of elements, where a plain f32 sum drifts
/// far more than the reference's pairwise summation.
pub fn normalize_per_sample(x: &Tensor, eps: f64) -> Result<Tensor> {
    let n = x.dim(0)?;
    let flat = x.reshape((n, ()))?;
    let f64s = flat.to_dtype(DType::F64)?;
    let mean = f64s.mean_keepdim(1)?;
    let var = f64s.broadcast_sub(&mean)?.sqr()?.mean_keepdim(1)?;
    let scale = (var + eps)?.sqrt()?.recip()?.to_dtype(x.dtype())?;
    let mean = mean.to_dtype(x.dtype())?;
    Ok(flat
        .broadcast_sub(&mean)?
        .broadcast_mul(&scale)?
        .reshape(x.shape())?)
}

/// A 1-D convolution with bias (weights `[Cout, Cin, K]`).
pub struct Conv1d {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    padding: usize,
    dilation: usize,
}

impl Conv1d {
    /// Loads `weight` `[cout, cin, k]` or `[cout, cin, k, 1]` (a `[K, 1]` Conv2d) and `bias`.
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        padding: usize,
        dilation: usize,
        conv2d: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let weight = if conv2d {
            vb.get((cout, cin, k, 1), "weight")?.squeeze(3)?
        } else {
            vb.get((cout, cin, k), "weight")?
        };
        Ok(Self {
            weight,
            bias: vb.get(cout, "bias")?,
            stride,
            padding,
            dilation,
        })
    }

    /// `[N, Cin, L]` → `[N, Cout, L']`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.conv1d(&self.weight, self.padding, self.stride, self.dilation, 1)?;
        Ok(y.broadcast_add(&self.bias.reshape((1, (), 1))?)?)
    }
}

/// A transposed 1-D convolution with bias (weights `[Cin, Cout, K]`), no padding.
pub struct ConvTr1d {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
}

impl ConvTr1d {
    pub fn load(
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        conv2d: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let weight = if conv2d {
            vb.get((cin, cout, k, 1), "weight")?.squeeze(3)?
        } else {
            vb.get((cin, cout, k), "weight")?
        };
        Ok(Self {
            weight,
            bias: vb.get(cout, "bias")?,
            stride,
        })
    }

    /// `[N, Cin, L]` → `[N, Cout, (L−1)·stride + K]`.
    ///
    /// Computed as one matmul followed by an overlap-add of the kernel's stride-sized blocks
    /// (candle 0.11's CPU `conv_transpose1d` gives wrong results for batch > 1 with several
    /// channels, and the frequency layers fold time into the batch).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (n, cin, l) = x.dims3()?;
        let (_, cout, k) = self.weight.dims3()?;
        let s = self.stride;
        let m = k.div_ceil(s);
        let w = self
            .weight
            .pad_with_zeros(2, 0, m * s - k)?
            .reshape((cin, cout * m * s))?;
        // [N, L, Cout·m·s] → [N, Cout, m, L, s]
        let p = x
            .transpose(1, 2)?
            .broadcast_matmul(&w)?
            .reshape((n, l, cout, m, s))?
            .permute((0, 2, 3, 1, 4))?;
        let mut out: Option<Tensor> = None;
        for j in 0..m {
            let part = p
                .narrow(2, j, 1)?
                .reshape((n, cout, l * s))?
                .pad_with_zeros(2, j * s, (m - 1 - j) * s)?;
            out = Some(match out {
                None => part,
                Some(acc) => (acc + part)?,
            });
        }
        let out = out
            .context("transposed convolution with an empty kernel")?
            .narrow(2, 0, (l - 1) * s + k)?;
        Ok(out.broadcast_add(&self.bias.reshape((1, (), 1))?)?)
    }
}

/// Runs `f` on `[B, C, F, T]` as 1-D data along the frequency axis (`[B·T, C, F]`).
fn along_freq(x: &Tensor, f: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    let (b, c, fr, t) = x.dims4()?;
    let y = f(&x.permute((0, 3, 1, 2))?.reshape((b * t, c, fr))?)?;
    let (_, c2, f2) = y.dims3()?;
    Ok(y.reshape((b, t, c2, f2))?.permute((0, 2, 3, 1))?)
}

/// Runs `f` on `[B, C, F, T]` as 1-D data along time, frequency folded into the batch.
fn along_time(x: &Tensor, f: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    let (b, c, fr, t) = x.dims4()?;
    let y = f(&x.permute((0, 2, 1, 3))?.reshape((b * fr, c, t))?)?;
    let (_, c2, t2) = y.dims3()?;
    Ok(y.reshape((b, fr, c2, t2))?.permute((0, 2, 1, 3))?)
}

/// Demucs' `DConv`: residual branches of dilated conv → GroupNorm → GELU → 1×1 conv →
/// GroupNorm → GLU → LayerScale.
pub struct DConv {
    layers: Vec<(Conv1d, GroupNorm1, Conv1d, GroupNorm1, Tensor)>,
}

impl DConv {
    pub fn load(channels: usize, compress: usize, depth: usize, vb: VarBuilder) -> Result<Self> {
        let hidden = channels / compress;
        let layers = (0..depth)
            .map(|d| {
                let vb = vb.pp(format!("layers.{d}"));
                let dilation = 1 << d;
                Ok((
                    Conv1d::load(
                        channels,
                        hidden,
                        3,
                        1,
                        dilation,
                        dilation,
                        false,
                        vb.pp("0"),
                    )?,
                    GroupNorm1::load(hidden, 1e-5, vb.pp("1"))?,
                    Conv1d::load(hidden, 2 * channels, 1, 1, 0, 1, false, vb.pp("3"))?,
                    GroupNorm1::load(2 * channels, 1e-5, vb.pp("4"))?,
                    vb.get(channels, "6.scale")?.reshape((1, channels, 1))?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers })
    }

    /// `[N, C, T]` → `[N, C, T]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for (conv1, norm1, conv2, norm2, scale) in &self.layers {
            let h = norm1.forward(&conv1.forward(&x)?)?.gelu_erf()?;
            let h = glu(&norm2.forward(&conv2.forward(&h)?)?, 1)?;
            x = (x + h.broadcast_mul(scale)?)?;
        }
        Ok(x)
    }
}

/// `F.glu`: first half × sigmoid(second half) along `dim`.
pub fn glu(x: &Tensor, dim: usize) -> Result<Tensor> {
    let n = x.dim(dim)? / 2;
    let a = x.narrow(dim, 0, n)?;
    let b = x.narrow(dim, n, n)?;
    Ok((a * candle_nn::ops::sigmoid(&b)?)?)
}

/// Shapes shared by an encoder/decoder layer pair.
#[derive(Debug, Clone, Copy)]
pub struct LayerShape {
    pub kernel: usize,
    pub stride: usize,
    /// Context of the decoder's rewrite conv (`context`), encoder's is `context_enc`.
    pub context: usize,
    pub dconv_comp: usize,
    pub dconv_depth: usize,
    pub dconv: bool,
}

/// `HEncLayer` (no GroupNorm: HTDemucs' `norm_starts` ≥ depth).
pub struct EncLayer {
    freq: bool,
    stride: usize,
    conv: Conv1d,
    dconv: Option<DConv>,
    /// 1×1 rewrite (kernel `1 + 2·context_enc`) followed by GLU.
    rewrite: Tensor,
    rewrite_bias: Tensor,
    rewrite_pad: usize,
}

impl EncLayer {
    pub fn load(
        cin: usize,
        cout: usize,
        shape: LayerShape,
        freq: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let pad = shape.kernel / 4;
        let k = 1 + 2 * shape.context;
        let rewrite = if freq {
            vb.get((2 * cout, cout, k, k), "rewrite.weight")?
        } else {
            vb.get((2 * cout, cout, k), "rewrite.weight")?
        };
        Ok(Self {
            freq,
            stride: shape.stride,
            conv: Conv1d::load(
                cin,
                cout,
                shape.kernel,
                shape.stride,
                pad,
                1,
                freq,
                vb.pp("conv"),
            )?,
            dconv: if shape.dconv {
                Some(DConv::load(
                    cout,
                    shape.dconv_comp,
                    shape.dconv_depth,
                    vb.pp("dconv"),
                )?)
            } else {
                None
            },
            rewrite,
            rewrite_bias: vb.get(2 * cout, "rewrite.bias")?,
            rewrite_pad: shape.context,
        })
    }

    /// Frequency layer: `[B, C, F, T]` → `[B, C', F/stride, T]`; time layer: `[B, C, L]` →
    /// `[B, C', ceil(L/stride)]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.freq {
            let y = along_freq(x, |v| self.conv.forward(v))?.gelu_erf()?;
            let y = match &self.dconv {
                Some(d) => along_time(&y, |v| d.forward(v))?,
                None => y,
            };
            let z = y.conv2d(&self.rewrite, self.rewrite_pad, 1, 1, 1)?;
            let z = z.broadcast_add(&self.rewrite_bias.reshape((1, (), 1, 1))?)?;
            glu(&z, 1)
        } else {
            let len = x.dim(D::Minus1)?;
            let x = if len % self.stride != 0 {
                x.pad_with_zeros(D::Minus1, 0, self.stride - len % self.stride)?
            } else {
                x.clone()
            };
            let y = self.conv.forward(&x)?.gelu_erf()?;
            let y = match &self.dconv {
                Some(d) => d.forward(&y)?,
                None => y,
            };
            let z = y.conv1d(&self.rewrite, self.rewrite_pad, 1, 1, 1)?;
            let z = z.broadcast_add(&self.rewrite_bias.reshape((1, (), 1))?)?;
            glu(&z, 1)
        }
    }
}

/// `HDecLayer` (no GroupNorm, never "empty" in the HTDemucs topology).
pub struct DecLayer {
    freq: bool,
    last: bool,
    pad: usize,
    rewrite: Tensor,
    rewrite_bias: Tensor,
    rewrite_pad: usize,
    dconv: Option<DConv>,
    conv_tr: ConvTr1d,
}

impl DecLayer {
    pub fn load(
        cin: usize,
        cout: usize,
        shape: LayerShape,
        freq: bool,
        last: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let k = 1 + 2 * shape.context;
        let rewrite = if freq {
            vb.get((2 * cin, cin, k, k), "rewrite.weight")?
        } else {
            vb.get((2 * cin, cin, k), "rewrite.weight")?
        };
        Ok(Self {
            freq,
            last,
            pad: shape.kernel / 4,
            rewrite,
            rewrite_bias: vb.get(2 * cin, "rewrite.bias")?,
            rewrite_pad: shape.context,
            dconv: if shape.dconv {
                Some(DConv::load(
                    cin,
                    shape.dconv_comp,
                    shape.dconv_depth,
                    vb.pp("dconv"),
                )?)
            } else {
                None
            },
            conv_tr: ConvTr1d::load(
                cin,
                cout,
                shape.kernel,
                shape.stride,
                freq,
                vb.pp("conv_tr"),
            )?,
        })
    }

    /// `x + skip` → rewrite/GLU → DConv → transposed conv, cropped to `length` (time) or by
    /// the padding on both sides (frequency).
    pub fn forward(&self, x: &Tensor, skip: &Tensor, length: usize) -> Result<Tensor> {
        let x = (x + skip)?;
        let z = if self.freq {
            let y = x.conv2d(&self.rewrite, self.rewrite_pad, 1, 1, 1)?;
            let y = glu(
                &y.broadcast_add(&self.rewrite_bias.reshape((1, (), 1, 1))?)?,
                1,
            )?;
            let y = match &self.dconv {
                Some(d) => along_time(&y, |v| d.forward(v))?,
                None => y,
            };
            let z = along_freq(&y, |v| self.conv_tr.forward(v))?;
            let f = z.dim(2)?;
            z.narrow(2, self.pad, f - 2 * self.pad)?
        } else {
            let y = x.conv1d(&self.rewrite, self.rewrite_pad, 1, 1, 1)?;
            let y = glu(
                &y.broadcast_add(&self.rewrite_bias.reshape((1, (), 1))?)?,
                1,
            )?;
            let y = match &self.dconv {
                Some(d) => d.forward(&y)?,
                None => y,
            };
            self.conv_tr.forward(&y)?.narrow(2, self.pad, length)?
        };
        if self.last {
            Ok(z)
        } else {
            Ok(z.gelu_erf()?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn transposed_conv_matches_the_definition() {
        let dev = Device::Cpu;
        let (n, cin, cout, l, k, s) = (3, 5, 4, 7, 6, 4);
        let x = Tensor::randn(0f32, 1., (n, cin, l), &dev).unwrap();
        let w = Tensor::randn(0f32, 1., (cin, cout, k), &dev).unwrap();
        let b = Tensor::randn(0f32, 1., cout, &dev).unwrap();
        let conv = ConvTr1d {
            weight: w.clone(),
            bias: b.clone(),
            stride: s,
        };
        let y = conv.forward(&x).unwrap();
        let (xv, wv, bv) = (
            x.to_vec3::<f32>().unwrap(),
            w.to_vec3::<f32>().unwrap(),
            b.to_vec1::<f32>().unwrap(),
        );
        let lo = (l - 1) * s + k;
        let mut want = vec![0f32; n * cout * lo];
        for bi in 0..n {
            for co in 0..cout {
                for t in 0..lo {
                    want[(bi * cout + co) * lo + t] = bv[co];
                }
                for ci in 0..cin {
                    for t in 0..l {
                        for kk in 0..k {
                            want[(bi * cout + co) * lo + t * s + kk] +=
                                xv[bi][ci][t] * wv[ci][co][kk];
                        }
                    }
                }
            }
        }
        let got = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(y.dims(), &[n, cout, lo]);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-4, "{g} vs {w}");
        }
    }
}
