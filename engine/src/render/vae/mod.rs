//! The Stable Audio "Oobleck" VAE used by SongGeneration (`ckpt/vae/autoencoder_music_1320k.ckpt`
//! with `ckpt/vae/stable_audio_1920_vae.json`): 48 kHz stereo ⇄ 64-channel latent at 25 Hz.
//!
//! This module holds the config, the shared layers and the decoder with the reference's chunked
//! decode; the encoder (prompt path, `crate::prompt::vae_encoder`) builds on [`layers`].

pub mod decoder;
pub mod layers;

use std::path::Path;

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

pub use decoder::{DecoderTrace, OobleckDecoder};

use crate::io::weights::WeightFile;
use crate::progress::Cancelled;

/// Architecture of the autoencoder (field names as in the stable-audio model json).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct VaeConfig {
    /// Base width; stage widths are `channels · c_mults`.
    pub channels: usize,
    pub c_mults: Vec<usize>,
    /// Down/up-sampling factor of each block (encoder order).
    pub strides: Vec<usize>,
    /// Width of the decoder's input latent.
    pub latent_dim: usize,
    /// Width of the encoder output (mean ‖ scale for the `vae` bottleneck).
    #[serde(default = "default_encoder_latent_dim")]
    pub encoder_latent_dim: usize,
    #[serde(default = "default_io_channels")]
    pub in_channels: usize,
    #[serde(default = "default_io_channels")]
    pub out_channels: usize,
    /// SnakeBeta activations; absent keys take the reference's `OobleckDecoder` constructor
    /// defaults (`use_snake=False`, `final_tanh=True`), here and in [`Self::from_json`] alike.
    /// The released json sets both explicitly (see [`Default`]).
    #[serde(default = "default_use_snake")]
    pub use_snake: bool,
    #[serde(default = "default_final_tanh")]
    pub final_tanh: bool,
    #[serde(default = "default_sample_rate")]
    pub sample_rate: usize,
    #[serde(default = "default_ratio")]
    pub downsampling_ratio: usize,
}

fn default_encoder_latent_dim() -> usize {
    128
}
fn default_io_channels() -> usize {
    2
}
fn default_use_snake() -> bool {
    false
}
fn default_final_tanh() -> bool {
    true
}
fn default_sample_rate() -> usize {
    48_000
}
fn default_ratio() -> usize {
    1920
}

impl Default for VaeConfig {
    /// The released `ckpt/vae/stable_audio_1920_vae.json`.
    fn default() -> Self {
        Self {
            channels: 128,
            c_mults: vec![1, 2, 4, 8, 16],
            strides: vec![2, 4, 4, 6, 10],
            latent_dim: 64,
            encoder_latent_dim: 128,
            in_channels: 2,
            out_channels: 2,
            use_snake: true,
            final_tanh: false,
            sample_rate: 48_000,
            downsampling_ratio: 1920,
        }
    }
}

impl VaeConfig {
    /// Reads a stable-audio model json (`model.encoder/decoder.config`, `sample_rate`,
    /// `model.downsampling_ratio`).
    pub fn from_json_file(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_json(&text).with_context(|| format!("VAE config {}", path.display()))
    }

    pub fn from_json(text: &str) -> anyhow::Result<Self> {
        let v: serde_json::Value = serde_json::from_str(text)?;
        let model = v.get("model").context("no `model` object")?;
        let dec = model
            .pointer("/decoder/config")
            .context("no `model.decoder.config`")?;
        let enc = model.pointer("/encoder/config");
        let usize_at = |obj: &serde_json::Value, key: &str| -> anyhow::Result<usize> {
            obj.get(key)
                .and_then(|x| x.as_u64())
                .map(|x| x as usize)
                .with_context(|| format!("missing integer `{key}`"))
        };
        let list = |key: &str| -> anyhow::Result<Vec<usize>> {
            serde_json::from_value(dec.get(key).cloned().context(format!("missing `{key}`"))?)
                .with_context(|| format!("`{key}` is not a list of integers"))
        };
        let d = Self::default();
        let cfg = Self {
            channels: usize_at(dec, "channels")?,
            c_mults: list("c_mults")?,
            strides: list("strides")?,
            latent_dim: usize_at(dec, "latent_dim")?,
            encoder_latent_dim: enc
                .and_then(|e| usize_at(e, "latent_dim").ok())
                .unwrap_or(d.encoder_latent_dim),
            in_channels: enc
                .and_then(|e| usize_at(e, "in_channels").ok())
                .unwrap_or(d.in_channels),
            out_channels: usize_at(dec, "out_channels").unwrap_or(d.out_channels),
            use_snake: dec
                .get("use_snake")
                .and_then(|x| x.as_bool())
                .unwrap_or_else(default_use_snake),
            final_tanh: dec
                .get("final_tanh")
                .and_then(|x| x.as_bool())
                .unwrap_or_else(default_final_tanh),
            sample_rate: usize_at(&v, "sample_rate").unwrap_or(d.sample_rate),
            downsampling_ratio: usize_at(model, "downsampling_ratio")
                .unwrap_or(d.downsampling_ratio),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks what this port supports: SnakeBeta activations and consistent strides.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !self.use_snake {
            bail!("VAE config: only use_snake=true (SnakeBeta) is supported");
        }
        if self.c_mults.is_empty() || self.c_mults.len() != self.strides.len() {
            bail!(
                "VAE config: c_mults {:?} and strides {:?} must have the same non-zero length",
                self.c_mults,
                self.strides
            );
        }
        let product: usize = self.strides.iter().product();
        if product != self.downsampling_ratio {
            bail!(
                "VAE config: strides {:?} multiply to {product}, but downsampling_ratio is {}",
                self.strides,
                self.downsampling_ratio
            );
        }
        Ok(())
    }
}

/// One chunk of a chunked decode, in latent frames: decode `[start, start+len)` and keep
/// its frames `[keep_from, keep_to)` (absolute indices).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkSpan {
    pub start: usize,
    pub len: usize,
    pub keep_from: usize,
    pub keep_to: usize,
}

/// The reference's chunk schedule (`decode_audio(chunked=True)`): chunks of `chunk` frames at
/// hop `chunk − overlap` while they fit, plus a final chunk flush with the end; each chunk
/// drops `overlap/2` frames on the sides it shares with a neighbour, and a later chunk
/// overwrites an earlier one where they still overlap.
pub fn chunk_plan(n: usize, chunk: usize, overlap: usize) -> Vec<ChunkSpan> {
    if n <= chunk || overlap >= chunk {
        return vec![ChunkSpan {
            start: 0,
            len: n,
            keep_from: 0,
            keep_to: n,
        }];
    }
    let hop = chunk - overlap;
    let mut starts: Vec<usize> = (0..=n - chunk).step_by(hop).collect();
    if starts.last().is_some_and(|&s| s + chunk != n) {
        starts.push(n - chunk);
    }
    let half = overlap / 2;
    let count = starts.len();
    let mut spans: Vec<ChunkSpan> = starts
        .iter()
        .enumerate()
        .map(|(i, &start)| {
            let (mut from, mut to) = (start, start + chunk);
            if i > 0 {
                from += half;
            }
            if i + 1 < count {
                to -= half;
            }
            ChunkSpan {
                start,
                len: chunk,
                keep_from: from,
                keep_to: to,
            }
        })
        .collect();
    // Later chunks win where kept regions overlap.
    for i in 0..count.saturating_sub(1) {
        let next_from = spans[i + 1].keep_from;
        spans[i].keep_to = spans[i].keep_to.min(next_from);
    }
    spans
}

/// The VAE's decoding half, loaded from the autoencoder checkpoint.
#[derive(Debug, Clone)]
pub struct VaeDecoder {
    decoder: OobleckDecoder,
    cfg: VaeConfig,
    device: Device,
}

impl VaeDecoder {
    /// Loads `decoder.*` from the autoencoder checkpoint (`.ckpt` with `state_dict`, or
    /// safetensors). Always F32: the reference decodes outside autocast.
    pub fn load(file: WeightFile, cfg: &VaeConfig, device: &Device) -> anyhow::Result<Self> {
        let path = file.path().display().to_string();
        let vb = file.var_builder(DType::F32, device);
        let decoder = OobleckDecoder::load(vb.pp("decoder"), cfg)
            .with_context(|| format!("loading the VAE decoder from {path}"))?;
        Ok(Self {
            decoder,
            cfg: cfg.clone(),
            device: device.clone(),
        })
    }

    pub fn config(&self) -> &VaeConfig {
        &self.cfg
    }

    pub fn decoder(&self) -> &OobleckDecoder {
        &self.decoder
    }

    /// Unchunked decode (the gradio path): `[1, latent_dim, T]` → `[1, out_channels, T·ratio]`.
    pub fn decode(&self, latent: &Tensor) -> candle_core::Result<Tensor> {
        self.decoder
            .decode(&latent.to_device(&self.device)?.to_dtype(DType::F32)?)
    }

    /// Chunked decode exactly as the reference's `decode_audio(chunked=True)`; `on_chunk(i, n)`
    /// is called after each of the `n` chunks and may cancel. Memory is bounded by one chunk's
    /// activations plus the output.
    pub fn decode_chunked(
        &self,
        latent: &Tensor,
        chunk: usize,
        overlap: usize,
        on_chunk: &mut dyn FnMut(usize, usize) -> Result<(), Cancelled>,
    ) -> anyhow::Result<Tensor> {
        let latent = latent.to_device(&self.device)?.to_dtype(DType::F32)?;
        let (_, _, n) = latent.dims3()?;
        let ratio = self.cfg.downsampling_ratio;
        let plan = chunk_plan(n, chunk, overlap);
        let mut parts = Vec::with_capacity(plan.len());
        for (i, span) in plan.iter().enumerate() {
            if span.keep_to > span.keep_from {
                let y = self
                    .decoder
                    .decode(&latent.narrow(2, span.start, span.len)?)?;
                let from = (span.keep_from - span.start) * ratio;
                let len = (span.keep_to - span.keep_from) * ratio;
                parts.push(y.narrow(2, from, len)?);
            }
            on_chunk(i + 1, plan.len())?;
        }
        Ok(Tensor::cat(&parts, 2)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_plan_matches_the_reference_schedule() {
        let plan = chunk_plan(1000, 128, 32);
        let starts: Vec<usize> = plan.iter().map(|c| c.start).collect();
        assert_eq!(starts, [0, 96, 192, 288, 384, 480, 576, 672, 768, 864, 872]);
        assert_eq!((plan[0].keep_from, plan[0].keep_to), (0, 112));
        assert_eq!((plan[9].keep_from, plan[9].keep_to), (880, 888));
        assert_eq!((plan[10].keep_from, plan[10].keep_to), (888, 1000));
        // Kept regions tile the whole latent.
        for w in plan.windows(2) {
            assert_eq!(w[0].keep_to, w[1].keep_from);
        }
        let plan = chunk_plan(750, 128, 32);
        assert_eq!(plan.len(), 8);
        assert_eq!(plan[7].start, 622);
        assert_eq!(plan[7].keep_from, 638);
    }

    #[test]
    fn parses_the_stable_audio_json() {
        let json = r#"{"sample_rate": 48000, "model": {
            "encoder": {"type": "oobleck", "config": {"in_channels": 2, "channels": 128,
                "c_mults": [1,2,4,8,16], "strides": [2,4,4,6,10], "latent_dim": 128, "use_snake": true}},
            "decoder": {"type": "oobleck", "config": {"out_channels": 2, "channels": 128,
                "c_mults": [1,2,4,8,16], "strides": [2,4,4,6,10], "latent_dim": 64,
                "use_snake": true, "final_tanh": false}},
            "bottleneck": {"type": "vae"}, "latent_dim": 64, "downsampling_ratio": 1920}}"#;
        assert_eq!(VaeConfig::from_json(json).unwrap(), VaeConfig::default());
        let bad = json.replace("1920", "1000");
        let err = VaeConfig::from_json(&bad).unwrap_err().to_string();
        assert!(err.contains("downsampling_ratio"), "{err}");
    }
}
