//! MusicFM-25Hz (the "bestrq" SSL encoder of the tokenizers): 24 kHz audio → log-mel →
//! 2-D conv subsampling → conformer, read out at an intermediate layer.
//!
//! Only the layers up to the deepest requested hidden state are loaded and run: the tokenizers
//! read hidden states 3, 6 and 7 of a 12-layer encoder, so layers 8..12 never matter.

pub mod conformer;
pub mod mel;
pub mod subsampling;

use anyhow::{ensure, Context, Result};
use candle_core::Tensor;
use candle_nn::VarBuilder;
use serde::Deserialize;

use conformer::{ConformerConfig, ConformerLayer, Rotary};
use mel::{MelConfig, MelFrontend};
use subsampling::ConvSubsampling;

/// Model sizes, under the fixture manifest's key names (`config.musicfm`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct MusicFmConfig {
    pub conv_dim: usize,
    pub encoder_dim: usize,
    pub encoder_depth: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub layer_norm_eps: f64,
    pub bn_eps: f64,
    pub conv_depthwise_kernel_size: usize,
    pub rotary_embedding_base: f64,
    /// Input samples are cut to a multiple of this (24 kHz / 25 Hz label rate).
    pub input_multiple: usize,
    #[serde(default)]
    pub mel: MelConfig,
}

impl MusicFmConfig {
    /// The released MusicFM-25Hz (`w2v2_config.json`, 12 layers of width 1024).
    pub fn real() -> Self {
        Self {
            conv_dim: 512,
            encoder_dim: 1024,
            encoder_depth: 12,
            num_attention_heads: 16,
            intermediate_size: 4096,
            layer_norm_eps: 1e-5,
            bn_eps: 1e-5,
            conv_depthwise_kernel_size: 31,
            rotary_embedding_base: 10000.0,
            input_multiple: 960,
            mel: MelConfig::default(),
        }
    }

    /// The released MusicFM with the sizes a checkpoint states under `prefix` (`bestrq.model`):
    /// conv width, encoder width and depth, FFN width and depthwise kernel. The head count
    /// comes from the stored rotary table (`embed_positions.inv_freq`, half a head wide), else
    /// the release's head width of 64. `shape` gives a stored tensor's shape.
    pub fn from_shapes(shape: &dyn Fn(&str) -> Option<Vec<usize>>, prefix: &str) -> Result<Self> {
        let mut cfg = Self::real();
        let need = |name: &str| -> Result<Vec<usize>> {
            let full = format!("{prefix}.{name}");
            shape(&full).with_context(|| {
                format!("missing tensor `{full}` (no MusicFM encoder in this file?)")
            })
        };
        cfg.conv_dim = need("conv.conv.0.conv1.weight")?[0];
        cfg.encoder_dim = need("conv.linear.weight")?[0];
        let layer = "conformer.layers.0";
        cfg.intermediate_size = need(&format!("{layer}.ffn1.intermediate_dense.weight"))?[0];
        cfg.conv_depthwise_kernel_size =
            *need(&format!("{layer}.conv_module.depthwise_conv.weight"))?
                .last()
                .context("depthwise conv weight without dims")?;
        cfg.encoder_depth = (0..)
            .take_while(|i| {
                shape(&format!(
                    "{prefix}.conformer.layers.{i}.ffn1.intermediate_dense.weight"
                ))
                .is_some()
            })
            .count();
        let head_dim = match shape(&format!("{prefix}.conformer.embed_positions.inv_freq")) {
            Some(f) if !f.is_empty() && f[0] > 0 => 2 * f[0],
            _ => 64.min(cfg.encoder_dim),
        };
        ensure!(
            cfg.encoder_dim % head_dim == 0,
            "MusicFM width {} is not a multiple of its rotary head width {head_dim}",
            cfg.encoder_dim
        );
        cfg.num_attention_heads = cfg.encoder_dim / head_dim;
        Ok(cfg)
    }

    pub fn conformer(&self) -> ConformerConfig {
        ConformerConfig {
            hidden: self.encoder_dim,
            heads: self.num_attention_heads,
            intermediate: self.intermediate_size,
            depthwise_kernel: self.conv_depthwise_kernel_size,
            ln_eps: self.layer_norm_eps,
            bn_eps: self.bn_eps,
        }
    }
}

pub struct MusicFm {
    cfg: MusicFmConfig,
    mel: MelFrontend,
    subsampling: ConvSubsampling,
    rotary: Rotary,
    layers: Vec<ConformerLayer>,
    /// The encoder's final LayerNorm, loaded only when the last layer is requested.
    final_norm: Option<candle_nn::LayerNorm>,
}

impl MusicFm {
    /// Loads the front end and conformer layers `0..max_layer` from `vb` rooted at
    /// `bestrq.model`. `max_layer` is the deepest hidden state that will be asked for.
    pub fn load(cfg: &MusicFmConfig, max_layer: usize, vb: VarBuilder) -> Result<Self> {
        ensure!(
            max_layer <= cfg.encoder_depth,
            "MusicFM hidden state {max_layer} requested but the encoder has {} layers",
            cfg.encoder_depth
        );
        let ccfg = cfg.conformer();
        let conformer = vb.pp("conformer");
        let layers = (0..max_layer)
            .map(|i| ConformerLayer::load(&ccfg, conformer.pp(format!("layers.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let final_norm = if max_layer == cfg.encoder_depth {
            Some(candle_nn::layer_norm(
                cfg.encoder_dim,
                cfg.layer_norm_eps,
                conformer.pp("layer_norm"),
            )?)
        } else {
            None
        };
        Ok(Self {
            mel: MelFrontend::load(&cfg.mel, vb.pp("preprocessor_melspec_2048.mel_stft"))?,
            subsampling: ConvSubsampling::load(
                cfg.mel.n_mels,
                cfg.conv_dim,
                cfg.encoder_dim,
                cfg.bn_eps,
                vb.pp("conv"),
            )?,
            rotary: Rotary::load(
                cfg.encoder_dim / cfg.num_attention_heads,
                cfg.rotary_embedding_base,
                conformer.pp("embed_positions"),
            )?,
            layers,
            final_norm,
            cfg: cfg.clone(),
        })
    }

    pub fn mel(&self) -> &MelFrontend {
        &self.mel
    }

    pub fn subsampling(&self) -> &ConvSubsampling {
        &self.subsampling
    }

    pub fn layer(&self, i: usize) -> Option<&ConformerLayer> {
        self.layers.get(i)
    }

    pub fn rotary(&self) -> &Rotary {
        &self.rotary
    }

    /// Hidden states `[B, T, H]` for each index in `which` (k = after k layers; k = 0 is the
    /// subsampling output; k = depth includes the final LayerNorm), from 24 kHz `wave` `[B, L]`.
    pub fn hidden_states(&self, wave: &Tensor, which: &[usize]) -> Result<Vec<Tensor>> {
        let deepest = which.iter().copied().max().unwrap_or(0);
        ensure!(
            deepest <= self.layers.len(),
            "MusicFM hidden state {deepest} requested but only {} layers were loaded",
            self.layers.len()
        );
        let (_, len) = wave.dims2()?;
        let keep = len / self.cfg.input_multiple * self.cfg.input_multiple;
        ensure!(
            keep > 0,
            "MusicFM needs at least {} samples at 24 kHz, got {len}",
            self.cfg.input_multiple
        );
        let mel = self.mel.forward(&wave.narrow(1, 0, keep)?)?;
        let mut x = self.subsampling.forward(&mel)?;
        let (cos, sin) = self.rotary.tables(x.dim(1)?)?;
        let mut states = vec![None; deepest + 1];
        states[0] = Some(x.clone());
        for (i, layer) in self.layers.iter().take(deepest).enumerate() {
            x = layer.forward(&x, &cos, &sin)?;
            if i + 1 == self.cfg.encoder_depth {
                if let Some(norm) = &self.final_norm {
                    x = candle_core::Module::forward(norm, &x)?;
                }
            }
            states[i + 1] = Some(x.clone());
        }
        which
            .iter()
            .map(|&k| {
                states[k]
                    .clone()
                    .with_context(|| format!("MusicFM hidden state {k} was not computed"))
            })
            .collect()
    }
}
