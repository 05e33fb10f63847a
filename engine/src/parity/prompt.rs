//! Parity units of the `prompt` fixtures: resamplers, MusicFM, VQ, the two tokenizers,
//! HTDemucs separation and the VAE encoder. Every size comes from the manifest's `config` and
//! the case `params`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::de::DeserializeOwned;

use super::{input, param, Case, Manifest, Suite, Tensors};
use crate::io::weights::WeightFile;
use crate::prompt::audio_tokenizer::{
    MixedTokenizer, SeparateTokenizer, StreamSpec, TokenizerConfig, VqConfig,
};
use crate::prompt::demucs::apply::{prompt_pair, vocal_stem, ApplyOptions, SeparateOptions};
use crate::prompt::demucs::{HtDemucs, HtDemucsConfig};
use crate::prompt::musicfm::{MusicFm, MusicFmConfig};
use crate::prompt::resample::Resampler;
use crate::prompt::vae_encoder::OobleckEncoder;
use crate::prompt::vq::VqEncoder;
use crate::render::vae::VaeConfig;

pub struct PromptSuite {
    dir: PathBuf,
    config: serde_json::Value,
    weight_paths: HashMap<String, PathBuf>,
    weights: HashMap<String, VarBuilder<'static>>,
    device: Device,
}

impl PromptSuite {
    pub fn load(dir: &Path, manifest: &Manifest, device: &Device) -> Result<Self> {
        let mut weight_paths = HashMap::new();
        if let Some(obj) = manifest.weights.as_object() {
            for key in obj.keys() {
                weight_paths.insert(key.clone(), manifest.weight_path(dir, Some(key))?);
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            config: manifest.config.clone(),
            weight_paths,
            weights: HashMap::new(),
            device: device.clone(),
        })
    }

    fn config<T: DeserializeOwned>(&self, key: &str) -> Result<T> {
        let value = self
            .config
            .get(key)
            .with_context(|| format!("{}: manifest config has no {key:?}", self.dir.display()))?;
        serde_json::from_value(value.clone())
            .with_context(|| format!("{}: manifest config.{key}", self.dir.display()))
    }

    /// The weights named by the case's `weights` param, as an F32 VarBuilder.
    fn vb(&mut self, case: &Case) -> Result<VarBuilder<'static>> {
        let name: String = param(case, "weights")?;
        if let Some(vb) = self.weights.get(&name) {
            return Ok(vb.clone());
        }
        let path = self
            .weight_paths
            .get(&name)
            .with_context(|| format!("case {}: manifest has no weights {name:?}", case.name))?;
        let vb = WeightFile::open(path)?.var_builder(DType::F32, &self.device);
        self.weights.insert(name, vb.clone());
        Ok(vb)
    }

    fn musicfm_config(&self) -> Result<MusicFmConfig> {
        self.config("musicfm")
    }
}

/// `prefix` params are given with a trailing dot (`bestrq.model.`).
fn prefix(case: &Case, key: &str) -> Result<String> {
    let p: String = param(case, key)?;
    Ok(p.trim_end_matches('.').to_string())
}

fn out(pairs: Vec<(&str, Tensor)>) -> Tensors {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

impl Suite for PromptSuite {
    fn run(&mut self, case: &Case, inputs: &Tensors) -> Result<Tensors> {
        match case.unit.as_str() {
            "resample_48k_to_24k" => {
                let vb = self.vb(case)?;
                let key: String = param(case, "kernel_key")?;
                let kernel = vb.get_unchecked(&key)?;
                let r = Resampler::from_kernel(
                    kernel,
                    param(case, "orig_freq")?,
                    param(case, "new_freq")?,
                )?;
                Ok(out(vec![("out.y", r.apply(input(case, inputs, "in.x")?)?)]))
            }
            "resample_to_48k" => {
                let r = Resampler::new(
                    param(case, "orig_freq")?,
                    param(case, "new_freq")?,
                    &self.device,
                )?;
                Ok(out(vec![("out.y", r.apply(input(case, inputs, "in.x")?)?)]))
            }
            "mel_frontend" => {
                let m = self.musicfm(case, 0)?;
                let mel = m.mel().forward(input(case, inputs, "in.wave")?)?;
                Ok(out(vec![("out.mel", mel)]))
            }
            "conv_subsampling" => {
                let m = self.musicfm(case, 0)?;
                let x = m.subsampling().forward(input(case, inputs, "in.mel")?)?;
                Ok(out(vec![("out.x", x)]))
            }
            "conformer_layer" => {
                let layer: usize = param(case, "layer")?;
                let m = self.musicfm(case, layer + 1)?;
                let x = input(case, inputs, "in.x")?;
                let (cos, sin) = m.rotary().tables(x.dim(1)?)?;
                let l = m
                    .layer(layer)
                    .with_context(|| format!("layer {layer} not loaded"))?;
                let (y, trace) = l.forward_traced(x, &cos, &sin)?;
                Ok(out(vec![
                    ("out.y", y),
                    ("dbg.ffn1", trace.ffn1),
                    ("dbg.self_attn", trace.self_attn),
                    ("dbg.conv_module", trace.conv_module),
                    ("dbg.ffn2", trace.ffn2),
                ]))
            }
            "musicfm_hidden_states" => {
                let layers: Vec<usize> = param(case, "layers")?;
                let deepest = layers.iter().copied().max().unwrap_or(0);
                let m = self.musicfm(case, deepest)?;
                let states = m.hidden_states(input(case, inputs, "in.wave")?, &layers)?;
                Ok(layers
                    .iter()
                    .zip(states)
                    .map(|(k, s)| (format!("out.hidden_{k}"), s))
                    .collect())
            }
            "vq_encode" => {
                let vb = self.vb(case)?;
                let mcfg = self.musicfm_config()?;
                let vq = VqEncoder::load(
                    mcfg.encoder_dim,
                    param(case, "codebook_size")?,
                    param(case, "codebook_dim")?,
                    vb.pp(format!("{}.quantizers.0", prefix(case, "prefix")?)),
                )?;
                let codes = vq.encode(input(case, inputs, "in.z")?)?;
                Ok(out(vec![("out.codes", codes)]))
            }
            "tokenize_mixed" => {
                let vb = self.vb(case)?;
                let stream = StreamSpec {
                    layer: param(case, "layer")?,
                    rvq: prefix(case, "rvq_prefix")?,
                };
                let tok = MixedTokenizer::load(
                    &self.tokenizer_config(case)?,
                    &self.musicfm_config()?,
                    &self.config::<VqConfig>("vq")?,
                    &stream,
                    vb,
                )?;
                let codes = tok.encode(input(case, inputs, "in.audio")?, &mut || Ok(()))?;
                Ok(out(vec![("out.codes", codes.codes)]))
            }
            "tokenize_separate" => {
                let vb = self.vb(case)?;
                let vocal = StreamSpec {
                    layer: param(case, "layer_vocal")?,
                    rvq: prefix(case, "rvq_vocal_prefix")?,
                };
                let bgm = StreamSpec {
                    layer: param(case, "layer_bgm")?,
                    rvq: prefix(case, "rvq_bgm_prefix")?,
                };
                let tok = SeparateTokenizer::load(
                    &self.tokenizer_config(case)?,
                    &self.musicfm_config()?,
                    &self.config::<VqConfig>("vq")?,
                    &vocal,
                    &bgm,
                    vb,
                )?;
                let (v, b) = tok.encode(
                    input(case, inputs, "in.vocal")?,
                    input(case, inputs, "in.bgm")?,
                    &mut || Ok(()),
                )?;
                Ok(out(vec![
                    ("out.codes_vocal", v.codes),
                    ("out.codes_bgm", b.codes),
                ]))
            }
            "demucs_segment" => {
                let model = self.demucs(case)?;
                let (stems, trace) = model.forward_traced(input(case, inputs, "in.mix")?)?;
                Ok(out(vec![
                    ("out.stems", stems),
                    ("dbg.xformer_in_freq", trace),
                ]))
            }
            "demucs_separate" => self.demucs_separate(case, inputs),
            "vae_encode" => {
                let vb = self.vb(case)?;
                let enc: serde_json::Value = self.config("vae_encoder")?;
                let get = |k: &str| -> Result<serde_json::Value> {
                    enc.get(k)
                        .cloned()
                        .with_context(|| format!("manifest config.vae_encoder has no {k:?}"))
                };
                let cfg = VaeConfig {
                    channels: serde_json::from_value(get("channels")?)?,
                    c_mults: serde_json::from_value(get("c_mults")?)?,
                    strides: serde_json::from_value(get("strides")?)?,
                    latent_dim: param(case, "latent_dim")?,
                    encoder_latent_dim: serde_json::from_value(get("latent_dim")?)?,
                    in_channels: serde_json::from_value(get("in_channels")?)?,
                    downsampling_ratio: param(case, "downsampling_ratio")?,
                    ..VaeConfig::default()
                };
                let encoder = OobleckEncoder::load(vb.pp(prefix(case, "prefix")?), &cfg)?;
                let trace = encoder.encode_traced(input(case, inputs, "in.audio")?)?;
                let sample = trace
                    .posterior
                    .sample_with(input(case, inputs, "in.eps")?)?;
                Ok(out(vec![
                    ("out.mean", trace.posterior.mean),
                    ("out.scale", trace.posterior.scale),
                    ("out.sample", sample),
                ]))
            }
            other => bail!("unknown prompt unit {other:?}"),
        }
    }
}

impl PromptSuite {
    fn demucs(&mut self, case: &Case) -> Result<HtDemucs> {
        let vb = self.vb(case)?;
        let demucs: serde_json::Value = self.config("demucs")?;
        let kwargs = demucs
            .get("tiny_kwargs")
            .context("manifest config.demucs has no tiny_kwargs")?;
        let cfg: HtDemucsConfig =
            serde_json::from_value(kwargs.clone()).context("manifest config.demucs.tiny_kwargs")?;
        HtDemucs::load(&cfg, vb)
    }

    /// The prompt file's samples → 48 kHz vocal and accompaniment. A file not at the Demucs
    /// rate was converted by ffmpeg in the reference, which cannot be reproduced bit for bit;
    /// such cases store that conversion as `dbg.mix_44k`, which is then used as Demucs' input.
    fn demucs_separate(&mut self, case: &Case, inputs: &Tensors) -> Result<Tensors> {
        let model = self.demucs(case)?;
        let audio = input(case, inputs, "in.audio")?;
        let file_rate: u32 = param(case, "file_sample_rate")?;
        let demucs_rate: u32 = param(case, "demucs_sample_rate")?;
        let mix44 = if file_rate == demucs_rate {
            audio.clone()
        } else {
            let stored = candle_core::safetensors::load(self.dir.join(&case.file), &Device::Cpu)?;
            match stored.get("dbg.mix_44k") {
                Some(t) => t.clone(),
                None => Resampler::new(file_rate, demucs_rate, &self.device)?.apply(audio)?,
            }
        };
        let opts = SeparateOptions {
            apply: ApplyOptions {
                shift_offset: param(case, "shift_offset")?,
                overlap: param(case, "overlap")?,
            },
            stem_index: param(case, "stem_index")?,
            target_sample_rate: param(case, "target_sample_rate")?,
            max_samples: param(case, "max_samples")?,
            prefix_only: false,
        };
        let vocal44 = vocal_stem(&model, &mix44, &opts, &mut |_, _| Ok(()))?;
        let (vocal, bgm, _) = prompt_pair(&vocal44, demucs_rate, audio, file_rate, &opts)?;
        Ok(out(vec![("out.vocal_48k", vocal), ("out.bgm_48k", bgm)]))
    }

    /// MusicFM from the case's weights with layers `0..max_layer` loaded.
    fn musicfm(&mut self, case: &Case, max_layer: usize) -> Result<MusicFm> {
        let vb = self.vb(case)?;
        let cfg = self.musicfm_config()?;
        MusicFm::load(&cfg, max_layer, vb.pp("bestrq.model"))
    }

    /// `config.tokenizer`, with the case's own constants taking precedence.
    fn tokenizer_config(&self, case: &Case) -> Result<TokenizerConfig> {
        let mut cfg: TokenizerConfig = self.config("tokenizer")?;
        cfg.sample_rate = param(case, "sample_rate")?;
        cfg.segment_samples = param(case, "segment_samples")?;
        cfg.peak_threshold_clip = param(case, "peak_threshold_clip")?;
        cfg.peak_threshold_segment = param(case, "peak_threshold_segment")?;
        Ok(cfg)
    }
}
