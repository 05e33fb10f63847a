//! The flow-matching decoder: LM tokens (vocal, bgm) → 64-channel VAE latent, one window at a
//! time (`PromptCondAudioDiffusion.inference_codes` of the reference).

pub mod estimator;
pub mod sampler;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;

pub use estimator::{EstimatorConfig, FlowEstimator};
pub use sampler::{solve_euler, t_span, EulerConfig, FlowInputs};

use crate::progress::Cancelled;
use crate::render::rvq::{RvqConfig, RvqDecoder};

/// `mask_emb` geometry (`Embedding(3, 24)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct MaskEmbConfig {
    pub num: usize,
    pub dim: usize,
}

/// `normfeat` settings.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct NormFeatConfig {
    /// Below this many `counts` the reference would keep updating its statistics on every
    /// call (`project_sample`); we refuse such a checkpoint instead.
    pub num_samples: f64,
}

/// The whole flow decoder (names as in the fixture manifests' `config.flow`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct FlowConfig {
    #[serde(flatten)]
    pub estimator: EstimatorConfig,
    /// Width of each stream's token conditioning (1024).
    pub rvq_input_dim: usize,
    pub codebook_size: usize,
    pub codebook_dim: usize,
    pub mask_emb: MaskEmbConfig,
    pub latent_dim: usize,
    pub num_steps: usize,
    /// Classifier-free guidance scale.
    pub cfg: f64,
    pub sigma_min: f64,
    pub normfeat: NormFeatConfig,
}

impl FlowConfig {
    /// The released decoder.
    pub fn songgen_v2() -> Self {
        Self {
            estimator: EstimatorConfig::songgen_v2(),
            rvq_input_dim: 1024,
            codebook_size: 16_384,
            codebook_dim: 32,
            mask_emb: MaskEmbConfig { num: 3, dim: 24 },
            latent_dim: 64,
            num_steps: 10,
            cfg: 1.5,
            sigma_min: 1e-4,
            normfeat: NormFeatConfig {
                num_samples: 100_000.0,
            },
        }
    }

    pub fn euler(&self) -> EulerConfig {
        EulerConfig {
            num_steps: self.num_steps,
            guidance_scale: self.cfg,
            sigma_min: self.sigma_min,
        }
    }

    fn validate(&self) -> Result<()> {
        let want = self.mask_emb.dim + 2 * self.latent_dim + 2 * self.rvq_input_dim;
        if want != self.estimator.n_embd {
            bail!(
                "flow config: mask {} + 2·latent {} + 2·cond {} = {want} ≠ n_embd {}",
                self.mask_emb.dim,
                self.latent_dim,
                self.rvq_input_dim,
                self.estimator.n_embd
            );
        }
        if self.mask_emb.num < 3 {
            bail!("flow config: mask_emb needs 3 rows (pad, in-context, generate)");
        }
        Ok(())
    }
}

/// Mask ids of `latent_masks`: in-context prefix frames and frames to generate.
const MASK_INCONTEXT: u32 = 1;
const MASK_GENERATE: u32 = 2;

/// Latent normalisation (`Feature1DProcessor`): per-channel mean/std from running sums.
#[derive(Debug, Clone)]
pub struct NormFeat {
    /// `[C]` F32 each.
    mean: Tensor,
    std: Tensor,
    inv_std: Tensor,
}

impl NormFeat {
    /// From `counts [1]`, `sum_x [C]`, `sum_x2 [C]` (stored statistics).
    pub fn from_stats(
        counts: &Tensor,
        sum_x: &Tensor,
        sum_x2: &Tensor,
    ) -> candle_core::Result<Self> {
        let n = counts.flatten_all()?.to_dtype(DType::F32)?;
        let count = n.to_vec1::<f32>()?.first().copied().unwrap_or(0.0);
        let sum_x = sum_x.to_dtype(DType::F32)?;
        let (mean, std) = if count < 10.0 {
            (sum_x.zeros_like()?, sum_x.ones_like()?)
        } else {
            let mean = sum_x.broadcast_div(&n)?;
            let var = (sum_x2.to_dtype(DType::F32)?.broadcast_div(&n)? - mean.sqr()?)?;
            (mean, var.clamp(0f32, f32::INFINITY)?.sqrt()?)
        };
        let inv_std = std.clamp(1e-12f32, f32::INFINITY)?.recip()?;
        Ok(Self { mean, std, inv_std })
    }

    pub fn mean(&self) -> &Tensor {
        &self.mean
    }

    pub fn std(&self) -> &Tensor {
        &self.std
    }

    /// `(x − mean) · (1/std)`; `x` is `[B, C, T]` (`channels_last = false`) or `[B, T, C]`.
    pub fn project(&self, x: &Tensor, channels_last: bool) -> candle_core::Result<Tensor> {
        let (m, s) = self.shaped(channels_last)?;
        x.broadcast_sub(&m)?.broadcast_mul(&s.1)
    }

    /// `x · std + mean` (inverse of [`Self::project`]).
    pub fn unproject(&self, x: &Tensor, channels_last: bool) -> candle_core::Result<Tensor> {
        let (m, s) = self.shaped(channels_last)?;
        x.broadcast_mul(&s.0)?.broadcast_add(&m)
    }

    fn shaped(&self, channels_last: bool) -> candle_core::Result<(Tensor, (Tensor, Tensor))> {
        let r = |t: &Tensor| {
            if channels_last {
                t.reshape((1, 1, ()))
            } else {
                t.reshape((1, (), 1))
            }
        };
        Ok((r(&self.mean)?, (r(&self.std)?, r(&self.inv_std)?)))
    }
}

/// The flow decoder weights: token lookups, mask embedding, latent statistics and estimator.
#[derive(Debug, Clone)]
pub struct FlowModel {
    cfg: FlowConfig,
    vocal: RvqDecoder,
    bgm: RvqDecoder,
    mask_emb: Tensor,
    normfeat: NormFeat,
    estimator: FlowEstimator,
}

impl FlowModel {
    /// Loads from the root of `model_septoken/model_2.safetensors` (keys `cfm_wrapper.estimator.*`,
    /// `rvq_bestrq_emb.*`, `rvq_bestrq_bgm_emb.*`, `mask_emb.weight`, `normfeat.*`); other keys
    /// are ignored. The estimator runs in the VarBuilder's dtype, the rest in F32.
    pub fn load(vb: VarBuilder, cfg: &FlowConfig) -> Result<Self> {
        cfg.validate()?;
        let rvq = RvqConfig {
            codebook_size: cfg.codebook_size,
            codebook_dim: cfg.codebook_dim,
            output_dim: cfg.rvq_input_dim,
        };
        let f32_get = |shape: &[usize], name: &str| {
            vb.get_with_hints_dtype(shape.to_vec(), name, Default::default(), DType::F32)
        };
        let nf = vb.pp("normfeat");
        let counts = nf.get_with_hints_dtype(1, "counts", Default::default(), DType::F32)?;
        let n = counts.to_vec1::<f32>()?[0] as f64;
        if n < cfg.normfeat.num_samples {
            bail!(
                "normfeat.counts is {n}, below {}: the reference would keep updating the latent \
                 statistics while decoding, which this port does not reproduce",
                cfg.normfeat.num_samples
            );
        }
        let normfeat = NormFeat::from_stats(
            &counts,
            &nf.get_with_hints_dtype(cfg.latent_dim, "sum_x", Default::default(), DType::F32)?,
            &nf.get_with_hints_dtype(cfg.latent_dim, "sum_x2", Default::default(), DType::F32)?,
        )?;
        Ok(Self {
            vocal: RvqDecoder::load(vb.pp("rvq_bestrq_emb"), rvq)
                .context("loading the vocal token codebook")?,
            bgm: RvqDecoder::load(vb.pp("rvq_bestrq_bgm_emb"), rvq)
                .context("loading the accompaniment token codebook")?,
            mask_emb: f32_get(&[cfg.mask_emb.num, cfg.mask_emb.dim], "mask_emb.weight")?,
            normfeat,
            estimator: FlowEstimator::load(
                vb.pp("cfm_wrapper").pp("estimator"),
                &cfg.estimator,
                Some(cfg.latent_dim),
            )
            .context("loading the flow estimator")?,
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &FlowConfig {
        &self.cfg
    }

    pub fn estimator(&self) -> &FlowEstimator {
        &self.estimator
    }

    pub fn normfeat(&self) -> &NormFeat {
        &self.normfeat
    }

    pub fn vocal_rvq(&self) -> &RvqDecoder {
        &self.vocal
    }

    pub fn bgm_rvq(&self) -> &RvqDecoder {
        &self.bgm
    }

    pub fn device(&self) -> &Device {
        self.vocal.device()
    }

    /// Builds the window inputs: token conditioning for `vocal`/`bgm` codes (equal lengths L),
    /// masks and the in-context latent. `incontext`: raw (un-normalised) latent frames
    /// `[1, P, latent]` for the first P frames, or `None`.
    pub fn window_inputs(
        &self,
        vocal: &[i64],
        bgm: &[i64],
        incontext: Option<&Tensor>,
    ) -> Result<FlowInputs> {
        let len = vocal.len();
        if bgm.len() != len {
            bail!(
                "vocal ({len}) and bgm ({}) code windows differ in length",
                bgm.len()
            );
        }
        if len > self.cfg.estimator.n_positions {
            bail!(
                "window of {len} frames exceeds the estimator's {} positions",
                self.cfg.estimator.n_positions
            );
        }
        let dev = self.device();
        let cond = Tensor::cat(&[self.vocal.decode(vocal)?, self.bgm.decode(bgm)?], 2)?;
        let prefix = match incontext {
            Some(c) => c.dim(1)?,
            None => 0,
        };
        if prefix > len {
            bail!("in-context prefix of {prefix} frames is longer than the {len}-frame window");
        }
        let masks: Vec<u32> = (0..len)
            .map(|f| {
                if f < prefix {
                    MASK_INCONTEXT
                } else {
                    MASK_GENERATE
                }
            })
            .collect();
        let mask_emb = self
            .mask_emb
            .index_select(&Tensor::from_vec(masks, len, dev)?, 0)?
            .unsqueeze(0)?;
        let ld = self.cfg.latent_dim;
        let incontext = match incontext {
            Some(c) if prefix > 0 => {
                let c = c.to_device(dev)?.to_dtype(DType::F32)?;
                let head = self.normfeat.project(&c, true)?;
                if prefix < len {
                    Tensor::cat(
                        &[head, Tensor::zeros((1, len - prefix, ld), DType::F32, dev)?],
                        1,
                    )?
                } else {
                    head
                }
            }
            _ => Tensor::zeros((1, len, ld), DType::F32, dev)?,
        };
        Ok(FlowInputs {
            mask_emb,
            incontext,
            cond,
            prefix,
        })
    }

    /// Samples one window from `noise: [1, L, latent]` and returns the denormalised latent
    /// `[1, latent, L]` (F32). `on_step(i, state)` is called before every estimator pass.
    pub fn sample(
        &self,
        inputs: &FlowInputs,
        noise: &Tensor,
        on_step: &mut dyn FnMut(usize, &Tensor) -> std::result::Result<(), Cancelled>,
    ) -> anyhow::Result<Tensor> {
        let est = &self.estimator;
        let mut velocity = |x: &Tensor, t: &Tensor| est.velocity(x, t);
        let x = solve_euler(inputs, noise, &self.cfg.euler(), &mut velocity, on_step)?;
        Ok(self
            .normfeat
            .unproject(&x.transpose(1, 2)?.contiguous()?, false)?)
    }
}
