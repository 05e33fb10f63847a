//! The renderer: LM tokens → 48 kHz stereo, long-form (`Flow1dVAESeparate.code2sound` with
//! `chunked=True` of the reference).
//!
//! Songs are decoded in windows of 1000 latent frames (40 s) at hop 750: each window's first 250
//! frames are in-context conditioning (the previous window's tail, or the prompt latent for
//! window 0). The code sequence is padded by tiling it, every window's latent is decoded by the
//! VAE in 128-frame chunks, and windows are joined with a linear cross-fade over the overlap.

pub mod crossfade;
pub mod flow;
pub mod noise;
pub mod renderer;
pub mod rvq;
pub mod schedule;
pub mod vae;

pub use crossfade::crossfade_append;
pub use noise::Noise;
pub use renderer::Renderer;
pub use schedule::{
    plan_decode, tile_codes, ChunkConfig, DecodePlan, WindowConfig, WindowSchedule,
};

use std::ops::ControlFlow;

use anyhow::{bail, Context, Result};
use candle_core::Tensor;

use crate::io::weights::WeightFile;
use crate::progress::Progress;
use crate::protocol::Stem;
use crate::render::flow::FlowConfig;
use crate::render::vae::VaeConfig;

/// Everything the renderer needs to know about the models.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderConfig {
    pub flow: FlowConfig,
    pub vae: VaeConfig,
    pub window: WindowConfig,
    pub vae_chunk: ChunkConfig,
}

impl RenderConfig {
    /// The released models with the given VAE architecture.
    pub fn songgen_v2(vae: VaeConfig) -> Self {
        Self {
            flow: FlowConfig::songgen_v2(),
            vae,
            window: WindowConfig::default(),
            vae_chunk: ChunkConfig::default(),
        }
    }

    /// The released configuration with the sizes the flow checkpoint itself states (width,
    /// depth, FFN width, position table, token-conditioning width), so smaller test and
    /// distilled decoders of the same architecture load too. The head count is not visible in
    /// the weights and stays the released 20.
    pub fn from_checkpoint(flow: &WeightFile, vae: VaeConfig) -> Result<Self> {
        let mut cfg = Self::songgen_v2(vae);
        let shape = |name: &str| -> Result<Vec<usize>> {
            flow.shape(name)
                .map(<[usize]>::to_vec)
                .with_context(|| format!("{}: missing tensor `{name}`", flow.path().display()))
        };
        let e = &mut cfg.flow.estimator;
        if let [positions, width] = shape("cfm_wrapper.estimator.wpe.weight")?[..] {
            e.n_positions = positions;
            e.n_embd = width;
        }
        if let Some(&inner) = shape("cfm_wrapper.estimator.h.0.mlp.c_fc.weight")?.get(1) {
            e.n_inner = inner;
        }
        e.n_layer = (0..)
            .take_while(|i| {
                flow.contains(&format!("cfm_wrapper.estimator.h.{i}.scale_shift_table"))
            })
            .count();
        cfg.flow.rvq_input_dim = shape("rvq_bestrq_emb.quantizers.0.out_proj.weight_v")?[0];
        Ok(cfg)
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let w = &self.window;
        if w.hop == 0 || w.hop + w.overlap != w.frames {
            bail!(
                "window config: hop {} + overlap {} ≠ frames {}",
                w.hop,
                w.overlap,
                w.frames
            );
        }
        if w.samples_per_frame != self.vae.downsampling_ratio {
            bail!(
                "window config: {} samples per frame, but the VAE upsamples ×{}",
                w.samples_per_frame,
                self.vae.downsampling_ratio
            );
        }
        if w.crossfade_samples > w.hop * w.samples_per_frame {
            bail!("window config: cross-fade longer than a hop");
        }
        Ok(())
    }
}

/// A style prompt for the decoder: the VAE latent of the prompt clip and its re-tokenised codes
/// (`[1, latent, 250]` and `[1, 1, 251]` for the release).
#[derive(Debug, Clone)]
pub struct RenderPrompt {
    pub latent: Tensor,
    pub codes_vocal: Tensor,
    pub codes_bgm: Tensor,
}

/// The prompt each decoded stem gets. The reference builds the `vocal` (`bgm`) decode's prompt
/// from the prompt clip with its accompaniment (vocals) zeroed; `generate.py` passes a prompt
/// to the mixed decode and, in `separate` mode, to all three.
#[derive(Debug, Clone, Default)]
pub struct PromptSet {
    pub mixed: Option<RenderPrompt>,
    pub vocal: Option<RenderPrompt>,
    pub bgm: Option<RenderPrompt>,
}

impl PromptSet {
    pub fn none() -> Self {
        Self::default()
    }

    pub(crate) fn for_stem(&self, stem: Stem) -> Option<&RenderPrompt> {
        match stem {
            Stem::Mixed => self.mixed.as_ref(),
            Stem::Vocal => self.vocal.as_ref(),
            Stem::Bgm => self.bgm.as_ref(),
        }
    }
}

/// The rendered audio: 48 kHz stereo `[2, num_samples]` F32 per stem, unclipped (peaks above 1
/// occur, as in the reference).
#[derive(Debug, Clone)]
pub struct Stems {
    pub sample_rate: u32,
    /// Exactly the reference's output length (`target_len`).
    pub num_samples: usize,
    pub audio: Vec<(Stem, Tensor)>,
}

impl Stems {
    pub fn get(&self, stem: Stem) -> Option<&Tensor> {
        self.audio.iter().find(|(s, _)| *s == stem).map(|(_, t)| t)
    }
}

/// One decoded stem with its per-window latents (for parity checks).
#[derive(Debug, Clone)]
pub struct StemRender {
    /// `[2, target_len]` F32.
    pub audio: Tensor,
    /// Each window's latent `[1, latent, frames]` as sampled (window 0 still holds the prompt
    /// prefix).
    pub window_latents: Vec<Tensor>,
    /// The padded code streams and window layout.
    pub plan: DecodePlan,
}

/// A progress callback that never cancels.
pub fn no_progress() -> impl FnMut(Progress) -> ControlFlow<()> {
    |_| ControlFlow::Continue(())
}
