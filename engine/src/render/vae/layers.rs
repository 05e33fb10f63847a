//! Building blocks of the Stable Audio "Oobleck" autoencoder, shared by its decoder (render
//! path) and encoder (prompt path): weight-normed convolutions and SnakeBeta.
//!
//! The checkpoint stores every convolution with legacy `torch.nn.utils.weight_norm` (dim 0):
//! `weight_g` and `weight_v`. We fold `W = g · v / ‖v‖` once at load, so the forward pass is a
//! plain convolution.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::VarBuilder;

/// Folds legacy weight norm (dim 0): `W = g · v / ‖v‖`, the norm taken over every axis but the
/// first. For a `Conv1d` (`v: [Cout, Cin, K]`) that is per output channel; for a
/// `ConvTranspose1d` (`v: [Cin, Cout, K]`, `g: [Cin, 1, 1]`) per *input* channel.
pub fn fold_weight_norm(g: &Tensor, v: &Tensor) -> Result<Tensor> {
    let g = g.to_dtype(DType::F32)?;
    let v = v.to_dtype(DType::F32)?;
    let c0 = v.dim(0)?;
    let norm = v
        .reshape((c0, ()))?
        .sqr()?
        .sum_keepdim(1)?
        .sqrt()?
        .reshape(g.shape())?;
    v.broadcast_mul(&g.broadcast_div(&norm)?)
}

/// Reads `{prefix}.weight_g` / `{prefix}.weight_v` (`v` of shape `v_shape`) and folds them.
/// The result is F32 on the VarBuilder's device; missing or mis-shaped tensors are errors that
/// name the file and tensor.
pub fn load_weight_norm(vb: &VarBuilder, v_shape: (usize, usize, usize)) -> Result<Tensor> {
    let v = vb.get_with_hints_dtype(v_shape, "weight_v", Default::default(), DType::F32)?;
    let g = vb.get_with_hints_dtype(
        (v_shape.0, 1, 1),
        "weight_g",
        Default::default(),
        DType::F32,
    )?;
    fold_weight_norm(&g, &v)
}

/// im2col temporaries above this many elements are avoided by convolving the time axis in
/// tiles; it bounds the memory of the long, narrow convolutions at the end of the decoder.
const CONV_TILE_ELEMS: usize = 1 << 24;

/// A 1-D convolution with a folded weight-norm weight `[Cout, Cin, K]`.
#[derive(Debug, Clone)]
pub struct WnConv1d {
    weight: Tensor,
    bias: Option<Tensor>,
    padding: usize,
    dilation: usize,
    stride: usize,
}

impl WnConv1d {
    /// Loads `{vb}.weight_g/weight_v` (+ `bias` when `bias` is set).
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        vb: VarBuilder,
        c_in: usize,
        c_out: usize,
        kernel: usize,
        padding: usize,
        dilation: usize,
        stride: usize,
        bias: bool,
    ) -> Result<Self> {
        let weight = load_weight_norm(&vb, (c_out, c_in, kernel))?.to_dtype(vb.dtype())?;
        let bias = if bias {
            Some(vb.get(c_out, "bias")?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            padding,
            dilation,
            stride,
        })
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
}

impl Module for WnConv1d {
    /// `x: [B, Cin, L]` → `[B, Cout, L']`, with PyTorch's zero padding.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, c_in, _) = x.dims3()?;
        let k = self.weight.dim(2)?;
        let tile = (CONV_TILE_ELEMS / (c_in * k).max(1)).max(1);
        let y = conv1d_tiled(
            x,
            &self.weight,
            self.padding,
            self.stride,
            self.dilation,
            tile,
        )?;
        match &self.bias {
            Some(b) => y.broadcast_add(&b.reshape((1, (), 1))?),
            None => Ok(y),
        }
    }
}

/// `conv1d` computed over output tiles of at most `tile` samples, so the im2col temporary stays
/// bounded; equal to one plain `conv1d`.
fn conv1d_tiled(
    x: &Tensor,
    w: &Tensor,
    padding: usize,
    stride: usize,
    dilation: usize,
    tile: usize,
) -> Result<Tensor> {
    let len = x.dim(2)?;
    let span = (w.dim(2)? - 1) * dilation + 1;
    let padded_len = len + 2 * padding;
    if padded_len < span {
        candle_core::bail!("conv1d: input of {len} samples is shorter than the kernel span {span}");
    }
    let out_len = (padded_len - span) / stride + 1;
    if out_len <= tile {
        return x.conv1d(w, padding, stride, dilation, 1);
    }
    let xp = x.pad_with_zeros(D::Minus1, padding, padding)?;
    let mut parts = Vec::with_capacity(out_len.div_ceil(tile));
    let mut o0 = 0;
    while o0 < out_len {
        let o1 = (o0 + tile).min(out_len);
        let n_in = (o1 - 1 - o0) * stride + span;
        parts.push(
            xp.narrow(D::Minus1, o0 * stride, n_in)?
                .conv1d(w, 0, stride, dilation, 1)?,
        );
        o0 = o1;
    }
    Tensor::cat(&parts, D::Minus1)
}

/// A transposed 1-D convolution with a folded weight-norm weight `[Cin, Cout, K]` (norm per
/// input channel) and bias.
#[derive(Debug, Clone)]
pub struct WnConvTranspose1d {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    padding: usize,
}

impl WnConvTranspose1d {
    pub fn load(
        vb: VarBuilder,
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        let weight = load_weight_norm(&vb, (c_in, c_out, kernel))?.to_dtype(vb.dtype())?;
        let bias = vb.get(c_out, "bias")?;
        Ok(Self {
            weight,
            bias,
            stride,
            padding,
        })
    }
}

impl Module for WnConvTranspose1d {
    /// `x: [B, Cin, L]` → `[B, Cout, (L−1)·s − 2p + K]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // Unpadded transposed convolution then a crop: identical to PyTorch's `padding`, and it
        // takes candle's fast col2im path on CPU.
        let y = x.conv_transpose1d(&self.weight, 0, 0, self.stride, 1, 1)?;
        let len = y.dim(2)? - 2 * self.padding;
        y.narrow(2, self.padding, len)?
            .broadcast_add(&self.bias.reshape((1, (), 1))?)
    }
}

/// SnakeBeta activation with log-scale parameters (Stable Audio `SnakeBeta`,
/// `alpha_logscale=True`): `y = x + sin²(x·e^α) / (e^β + 1e-9)`, per channel.
#[derive(Debug, Clone)]
pub struct SnakeBeta {
    /// `e^α`, shaped `[1, C, 1]`.
    freq: Tensor,
    /// `1 / (e^β + 1e-9)`, shaped `[1, C, 1]`.
    inv_mag: Tensor,
}

impl SnakeBeta {
    /// From the stored log-scale `alpha` and `beta` (`[C]` each).
    pub fn from_log_params(alpha: &Tensor, beta: &Tensor) -> Result<Self> {
        let freq = alpha.exp()?.reshape((1, (), 1))?;
        let inv_mag = (beta.exp()? + 1e-9)?.recip()?.reshape((1, (), 1))?;
        Ok(Self { freq, inv_mag })
    }

    /// Loads `{vb}.alpha` and `{vb}.beta` (`[channels]`).
    pub fn load(vb: VarBuilder, channels: usize) -> Result<Self> {
        Self::from_log_params(&vb.get(channels, "alpha")?, &vb.get(channels, "beta")?)
    }
}

impl Module for SnakeBeta {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let s = x.broadcast_mul(&self.freq)?.sin()?.sqr()?;
        x + s.broadcast_mul(&self.inv_mag)?
    }
}

/// Oobleck residual unit: `x + Conv1x1(Snake(Conv7_dilated(Snake(x))))` (dilated conv padding
/// `3·d`, both convolutions weight-normed with bias). Checkpoint names: `layers.{0,1,2,3}`.
#[derive(Debug, Clone)]
pub struct ResidualUnit {
    snake1: SnakeBeta,
    conv1: WnConv1d,
    snake2: SnakeBeta,
    conv2: WnConv1d,
}

impl ResidualUnit {
    pub fn load(vb: VarBuilder, channels: usize, dilation: usize) -> Result<Self> {
        let vb = vb.pp("layers");
        Ok(Self {
            snake1: SnakeBeta::load(vb.pp("0"), channels)?,
            conv1: WnConv1d::load(
                vb.pp("1"),
                channels,
                channels,
                7,
                3 * dilation,
                dilation,
                1,
                true,
            )?,
            snake2: SnakeBeta::load(vb.pp("2"), channels)?,
            conv2: WnConv1d::load(vb.pp("3"), channels, channels, 1, 0, 1, 1, true)?,
        })
    }
}

impl Module for ResidualUnit {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.snake1.forward(x)?;
        let y = self.conv1.forward(&y)?;
        let y = self.snake2.forward(&y)?;
        let y = self.conv2.forward(&y)?;
        x + y
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn tiled_conv_equals_plain_conv() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (1, 3, 50), &dev)?;
        let w = Tensor::randn(0f32, 1., (2, 3, 7), &dev)?;
        for stride in [1, 2] {
            let full = x.conv1d(&w, 3, stride, 2, 1)?;
            let tiled = conv1d_tiled(&x, &w, 3, stride, 2, 7)?;
            assert_eq!(full.dims(), tiled.dims());
            let err = (full - tiled)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(err < 1e-5, "stride {stride}: tiled conv differs by {err}");
        }
        Ok(())
    }

    #[test]
    fn weight_norm_is_per_first_axis() -> Result<()> {
        let dev = Device::Cpu;
        let v = Tensor::new(&[[[3f32], [4.]], [[0.], [2.]]], &dev)?; // [2, 2, 1]
        let g = Tensor::new(&[[[10f32]], [[1.]]], &dev)?;
        let w = fold_weight_norm(&g, &v)?.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(w, [6., 8., 0., 1.]);
        Ok(())
    }
}
