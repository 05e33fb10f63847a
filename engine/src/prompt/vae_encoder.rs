//! The Oobleck VAE encoder and the `vae` bottleneck: 48 kHz stereo → 64-channel 25 Hz latent,
//! the decoder's in-context prefix for a style prompt. Built on the shared [`super::layers`].

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;

use super::VaeConfig;
use crate::io::weights::WeightFile;
use crate::render::vae::layers::{ResidualUnit, SnakeBeta, WnConv1d};

/// One downsampling block (`encoder.layers.{1..}`): residual units with dilations 1, 3, 9 at the
/// input width → SnakeBeta → weight-normed Conv1d (kernel `2s`, stride `s`, padding `ceil(s/2)`).
#[derive(Debug, Clone)]
struct EncoderBlock {
    res: [ResidualUnit; 3],
    snake: SnakeBeta,
    down: WnConv1d,
}

impl EncoderBlock {
    fn load(vb: VarBuilder, c_in: usize, c_out: usize, stride: usize) -> Result<Self> {
        let vb = vb.pp("layers");
        Ok(Self {
            res: [
                ResidualUnit::load(vb.pp("0"), c_in, 1)?,
                ResidualUnit::load(vb.pp("1"), c_in, 3)?,
                ResidualUnit::load(vb.pp("2"), c_in, 9)?,
            ],
            snake: SnakeBeta::load(vb.pp("3"), c_in)?,
            down: WnConv1d::load(
                vb.pp("4"),
                c_in,
                c_out,
                2 * stride,
                stride.div_ceil(2),
                1,
                stride,
                true,
            )?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut y = x.clone();
        for r in &self.res {
            y = r.forward(&y)?;
        }
        Ok(self.down.forward(&self.snake.forward(&y)?)?)
    }
}

/// Mean and scale of the posterior, each `[1, latent_dim, T]` (before sampling).
#[derive(Debug, Clone)]
pub struct Posterior {
    pub mean: Tensor,
    pub scale: Tensor,
}

impl Posterior {
    /// `mean + (softplus(scale) + 1e-4) · eps` (the `vae` bottleneck's sample).
    pub fn sample_with(&self, eps: &Tensor) -> Result<Tensor> {
        ensure!(
            eps.dims() == self.mean.dims(),
            "VAE noise has shape {:?}, expected {:?}",
            eps.dims(),
            self.mean.dims()
        );
        let stdev = (softplus(&self.scale)? + 1e-4)?;
        Ok((&self.mean + (eps.to_dtype(DType::F32)? * stdev)?)?)
    }

    /// A sample with `N(0, 1)` noise drawn from `seed`.
    pub fn sample(&self, seed: u64) -> Result<Tensor> {
        use rand::SeedableRng;
        use rand_distr::{Distribution, StandardNormal};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let n = self.mean.elem_count();
        let eps: Vec<f32> = (0..n).map(|_| StandardNormal.sample(&mut rng)).collect();
        let eps = Tensor::from_vec(eps, self.mean.shape(), self.mean.device())?;
        self.sample_with(&eps)
    }
}

/// `F.softplus` (beta 1, threshold 20).
fn softplus(x: &Tensor) -> Result<Tensor> {
    let soft = (x.exp()? + 1.0)?.log()?;
    let big = x.gt(20.0)?;
    Ok(big.where_cond(x, &soft)?)
}

/// Every layer output of one encode (for parity debugging) and the posterior.
pub struct EncoderTrace {
    pub layers: Vec<Tensor>,
    pub posterior: Posterior,
}

pub struct OobleckEncoder {
    input: WnConv1d,
    blocks: Vec<EncoderBlock>,
    snake: SnakeBeta,
    output: WnConv1d,
    latent_dim: usize,
    ratio: usize,
}

impl OobleckEncoder {
    /// `vb` is rooted at `encoder`.
    pub fn load(vb: VarBuilder, cfg: &VaeConfig) -> Result<Self> {
        cfg.validate()?;
        ensure!(
            cfg.encoder_latent_dim == 2 * cfg.latent_dim,
            "VAE encoder output {} must be mean ‖ scale of the {}-channel latent",
            cfg.encoder_latent_dim,
            cfg.latent_dim
        );
        let vb = vb.pp("layers");
        let widths: Vec<usize> = std::iter::once(1)
            .chain(cfg.c_mults.iter().copied())
            .map(|m| m * cfg.channels)
            .collect();
        let blocks = cfg
            .strides
            .iter()
            .enumerate()
            .map(|(i, &s)| EncoderBlock::load(vb.pp(i + 1), widths[i], widths[i + 1], s))
            .collect::<Result<Vec<_>>>()?;
        let n = cfg.strides.len();
        let last = widths[n];
        Ok(Self {
            input: WnConv1d::load(vb.pp("0"), cfg.in_channels, widths[0], 7, 3, 1, 1, true)?,
            blocks,
            snake: SnakeBeta::load(vb.pp(n + 1), last)?,
            output: WnConv1d::load(vb.pp(n + 2), last, cfg.encoder_latent_dim, 3, 1, 1, 1, true)?,
            latent_dim: cfg.latent_dim,
            ratio: cfg.downsampling_ratio,
        })
    }

    /// Latent frames for `samples` input samples.
    pub fn frames(&self, samples: usize) -> usize {
        samples.div_ceil(self.ratio)
    }

    /// `audio` `[1, C, L]` → every layer output and the posterior `[1, latent, ceil(L/ratio)]`.
    #[cfg(feature = "parity")]
    pub fn encode_traced(&self, audio: &Tensor) -> Result<EncoderTrace> {
        self.run(audio)
    }

    fn run(&self, audio: &Tensor) -> Result<EncoderTrace> {
        let (b, _, len) = audio
            .dims3()
            .context("VAE encoder input must be [1, C, L]")?;
        ensure!(
            b == 1 && len > 0,
            "VAE encoder input has shape {:?}",
            audio.dims()
        );
        let mut layers = Vec::with_capacity(self.blocks.len() + 3);
        let mut x = self.input.forward(&audio.to_dtype(DType::F32)?)?;
        layers.push(x.clone());
        for block in &self.blocks {
            x = block.forward(&x)?;
            layers.push(x.clone());
        }
        x = self.snake.forward(&x)?;
        layers.push(x.clone());
        x = self.output.forward(&x)?;
        layers.push(x.clone());
        let posterior = Posterior {
            mean: x.narrow(1, 0, self.latent_dim)?,
            scale: x.narrow(1, self.latent_dim, self.latent_dim)?,
        };
        Ok(EncoderTrace { layers, posterior })
    }

    pub fn encode(&self, audio: &Tensor) -> Result<Posterior> {
        Ok(self.run(audio)?.posterior)
    }
}

/// The encoder half of the VAE checkpoint, ready to encode prompts.
pub struct VaeEncoder {
    encoder: OobleckEncoder,
    device: Device,
}

impl VaeEncoder {
    /// Loads `encoder.*` from the autoencoder checkpoint. Always F32 like the reference.
    pub fn load(file: WeightFile, cfg: &VaeConfig, device: &Device) -> Result<Self> {
        let path = file.path().display().to_string();
        let vb = file.var_builder(DType::F32, device);
        let encoder = OobleckEncoder::load(vb.pp("encoder"), cfg)
            .with_context(|| format!("loading the VAE encoder from {path}"))?;
        Ok(Self {
            encoder,
            device: device.clone(),
        })
    }

    pub fn encoder(&self) -> &OobleckEncoder {
        &self.encoder
    }

    /// `audio` `[1, 2, L]` 48 kHz → posterior `[1, latent, ceil(L/1920)]`.
    pub fn encode(&self, audio: &Tensor) -> Result<Posterior> {
        self.encoder.encode(&audio.to_device(&self.device)?)
    }
}
