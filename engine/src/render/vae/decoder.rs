//! The Oobleck VAE decoder: 64-channel 25 Hz latent → 48 kHz stereo (×1920 upsampling).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::layers::{ResidualUnit, SnakeBeta, WnConv1d, WnConvTranspose1d};
use super::VaeConfig;

/// One upsampling block (`decoder.layers.{1..}`): SnakeBeta → weight-normed ConvTranspose1d
/// (kernel `2s`, stride `s`, padding `ceil(s/2)`: exactly `×s`) → residual units with dilations
/// 1, 3, 9.
#[derive(Debug, Clone)]
pub struct DecoderBlock {
    snake: SnakeBeta,
    upsample: WnConvTranspose1d,
    res: [ResidualUnit; 3],
}

impl DecoderBlock {
    pub fn load(vb: VarBuilder, c_in: usize, c_out: usize, stride: usize) -> Result<Self> {
        let vb = vb.pp("layers");
        Ok(Self {
            snake: SnakeBeta::load(vb.pp("0"), c_in)?,
            upsample: WnConvTranspose1d::load(
                vb.pp("1"),
                c_in,
                c_out,
                2 * stride,
                stride,
                stride.div_ceil(2),
            )?,
            res: [
                ResidualUnit::load(vb.pp("2"), c_out, 1)?,
                ResidualUnit::load(vb.pp("3"), c_out, 3)?,
                ResidualUnit::load(vb.pp("4"), c_out, 9)?,
            ],
        })
    }

    /// Returns the block output and the output of its transposed convolution.
    fn forward_with_upsampled(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let up = self.upsample.forward(&self.snake.forward(x)?)?;
        let mut y = up.clone();
        for r in &self.res {
            y = r.forward(&y)?;
        }
        Ok((y, up))
    }
}

impl Module for DecoderBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.forward_with_upsampled(x)?.0)
    }
}

/// Every intermediate of one decode, for parity checks.
#[derive(Debug, Clone)]
pub struct DecoderTrace {
    /// Output of `decoder.layers[i]`, i = 0..=blocks+2 (the last is the audio before `tanh`).
    pub stages: Vec<Tensor>,
    /// Output of the transposed convolution of each block, in order.
    pub upsampled: Vec<Tensor>,
    pub audio: Tensor,
}

/// `decoder.*` of the stable-audio autoencoder.
#[derive(Debug, Clone)]
pub struct OobleckDecoder {
    conv_in: WnConv1d,
    blocks: Vec<DecoderBlock>,
    snake_out: SnakeBeta,
    conv_out: WnConv1d,
    final_tanh: bool,
}

impl OobleckDecoder {
    /// Loads the decoder under `vb` (the `decoder` prefix of the checkpoint).
    pub fn load(vb: VarBuilder, cfg: &VaeConfig) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::msg)?;
        let vb = vb.pp("layers");
        // Channel multipliers with the implicit leading 1 of the reference.
        let mults: Vec<usize> = std::iter::once(1)
            .chain(cfg.c_mults.iter().copied())
            .collect();
        let ch = cfg.channels;
        let top = ch * mults[mults.len() - 1];
        let conv_in = WnConv1d::load(vb.pp("0"), cfg.latent_dim, top, 7, 3, 1, 1, true)?;
        let mut blocks = Vec::with_capacity(cfg.strides.len());
        for (n, i) in (1..mults.len()).rev().enumerate() {
            blocks.push(DecoderBlock::load(
                vb.pp(n + 1),
                ch * mults[i],
                ch * mults[i - 1],
                cfg.strides[i - 1],
            )?);
        }
        let last = blocks.len() + 1;
        let snake_out = SnakeBeta::load(vb.pp(last), ch * mults[0])?;
        let conv_out = WnConv1d::load(
            vb.pp(last + 1),
            ch * mults[0],
            cfg.out_channels,
            7,
            3,
            1,
            1,
            false,
        )?;
        Ok(Self {
            conv_in,
            blocks,
            snake_out,
            conv_out,
            final_tanh: cfg.final_tanh,
        })
    }

    /// Decodes `latent: [B, latent_dim, T]` → `[B, out_channels, T·ratio]` in one pass.
    pub fn decode(&self, latent: &Tensor) -> Result<Tensor> {
        let mut x = self.conv_in.forward(latent)?;
        for b in &self.blocks {
            x = b.forward(&x)?;
        }
        let x = self.conv_out.forward(&self.snake_out.forward(&x)?)?;
        if self.final_tanh {
            x.tanh()
        } else {
            Ok(x)
        }
    }

    /// Like [`Self::decode`], keeping every stage output.
    #[cfg(feature = "parity")]
    pub fn decode_traced(&self, latent: &Tensor) -> Result<DecoderTrace> {
        let mut stages = vec![self.conv_in.forward(latent)?];
        let mut upsampled = Vec::with_capacity(self.blocks.len());
        for b in &self.blocks {
            let (y, up) = b.forward_with_upsampled(&stages[stages.len() - 1])?;
            stages.push(y);
            upsampled.push(up);
        }
        stages.push(self.snake_out.forward(&stages[stages.len() - 1])?);
        stages.push(self.conv_out.forward(&stages[stages.len() - 1])?);
        let last = &stages[stages.len() - 1];
        let audio = if self.final_tanh {
            last.tanh()?
        } else {
            last.clone()
        };
        Ok(DecoderTrace {
            stages,
            upsampled,
            audio,
        })
    }
}
