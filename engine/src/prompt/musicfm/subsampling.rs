//! MusicFM's `Conv2dSubsampling`: two residual 3×3 conv blocks (stride 2 in frequency and time,
//! BatchNorm in eval mode) over the mel image, flattened channel-major and projected to the
//! encoder width. 128 mel bands × T frames → T/4 frames.

use anyhow::Result;
use candle_core::{Module, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, Linear, VarBuilder};

/// Eval-mode BatchNorm as a per-channel affine map `x·scale + shift` on axis 1.
#[derive(Debug, Clone)]
pub struct BatchNorm {
    scale: Tensor,
    shift: Tensor,
}

impl BatchNorm {
    pub fn load(channels: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let w = vb.get(channels, "weight")?;
        let b = vb.get(channels, "bias")?;
        let mean = vb.get(channels, "running_mean")?;
        let var = vb.get(channels, "running_var")?;
        let scale = (w / (var + eps)?.sqrt()?)?;
        let shift = (b - (mean * &scale)?)?;
        Ok(Self { scale, shift })
    }

    /// Applies the affine map to `x` `[B, C, ...]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut shape = vec![1, self.scale.dim(0)?];
        shape.extend(std::iter::repeat_n(1, x.rank() - 2));
        let s = self.scale.reshape(shape.as_slice())?;
        let t = self.shift.reshape(shape.as_slice())?;
        Ok(x.broadcast_mul(&s)?.broadcast_add(&t)?)
    }
}

fn conv3x3(cin: usize, cout: usize, stride: usize, vb: VarBuilder) -> Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding: 1,
        stride,
        ..Default::default()
    };
    Ok(candle_nn::conv2d(cin, cout, 3, cfg, vb)?)
}

/// `relu(bn2(conv2(relu(bn1(conv1 x)))) + bn3(conv3 x))`, conv1/conv3 strided.
struct Res2d {
    conv1: Conv2d,
    bn1: BatchNorm,
    conv2: Conv2d,
    bn2: BatchNorm,
    conv3: Conv2d,
    bn3: BatchNorm,
}

impl Res2d {
    fn load(cin: usize, cout: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv1: conv3x3(cin, cout, 2, vb.pp("conv1"))?,
            bn1: BatchNorm::load(cout, eps, vb.pp("bn1"))?,
            conv2: conv3x3(cout, cout, 1, vb.pp("conv2"))?,
            bn2: BatchNorm::load(cout, eps, vb.pp("bn2"))?,
            conv3: conv3x3(cin, cout, 2, vb.pp("conv3"))?,
            bn3: BatchNorm::load(cout, eps, vb.pp("bn3"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.bn1.forward(&self.conv1.forward(x)?)?.relu()?;
        let h = self.bn2.forward(&self.conv2.forward(&h)?)?;
        let skip = self.bn3.forward(&self.conv3.forward(x)?)?;
        Ok((h + skip)?.relu()?)
    }
}

pub struct ConvSubsampling {
    blocks: [Res2d; 2],
    linear: Linear,
}

impl ConvSubsampling {
    /// `vb` is rooted at `conv`; `n_mels` bands become `n_mels/4` after the two stride-2 blocks.
    pub fn load(
        n_mels: usize,
        conv_dim: usize,
        out_dim: usize,
        eps: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            blocks: [
                Res2d::load(1, conv_dim, eps, vb.pp("conv.0"))?,
                Res2d::load(conv_dim, conv_dim, eps, vb.pp("conv.1"))?,
            ],
            linear: candle_nn::linear(conv_dim * (n_mels / 4), out_dim, vb.pp("linear"))?,
        })
    }

    /// The two residual blocks' outputs `[B, C, F', T']` (for debugging) and the result.
    pub fn forward_with_blocks(&self, mel: &Tensor) -> Result<(Vec<Tensor>, Tensor)> {
        let mut x = mel.unsqueeze(1)?;
        let mut outs = Vec::with_capacity(2);
        for block in &self.blocks {
            x = block.forward(&x)?;
            outs.push(x.clone());
        }
        let (b, c, f, t) = x.dims4()?;
        // "b c f t -> b t (c f)"
        let x = x.permute((0, 3, 1, 2))?.reshape((b, t, c * f))?;
        Ok((outs, self.linear.forward(&x)?))
    }

    /// `[B, n_mels, T]` → `[B, ceil(ceil(T/2)/2), H]`.
    pub fn forward(&self, mel: &Tensor) -> Result<Tensor> {
        Ok(self.forward_with_blocks(mel)?.1)
    }
}
