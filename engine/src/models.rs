//! The real models behind the pipeline's [`SongModel`] boundary: the LM ([`crate::lm`]) and
//! the renderer ([`crate::render`]: flow decoder + VAE), loaded once from a model folder, plus
//! the prompt encoder ([`crate::prompt`]) and the auto-prompt library
//! ([`crate::auto_prompt`]), loaded on first use since most jobs need neither.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};

use crate::audio::{Audio, SAMPLE_RATE};
use crate::auto_prompt::AutoPromptLibrary;
use crate::lm::{LanguageModel, LmRequest};
use crate::paths::ModelPaths;
use crate::pipeline::{LmInput, PromptCodes, SongModel, StemKind};
use crate::progress::ProgressFn;
use crate::prompt::{EncodedPrompt, PromptEncoder};
use crate::protocol::{GenType, SamplingOptions};
use crate::render::{PromptSet, RenderPrompt, Renderer, Stem};

/// Everything a job needs, on one device.
pub struct Models {
    name: String,
    device: String,
    paths: ModelPaths,
    torch_device: Device,
    lm: LanguageModel,
    renderer: Renderer,
    prompt_encoder: Option<PromptEncoder>,
    auto_prompts: Option<AutoPromptLibrary>,
    /// The clip encoded by the last `encode_prompt` (jobs run one at a time, and `render`
    /// needs its separated stems and decoder prompt, not just the latent).
    last_prompt: Option<(EncodedPrompt, u64)>,
}

/// Loads the LM and the renderer of `paths` onto `device`, the LM computing in `dtype` (the
/// flow estimator and the VAE stay in F32).
pub fn load(paths: &ModelPaths, device: &Device, dtype: DType) -> Result<Box<dyn SongModel>> {
    let lm = LanguageModel::load(paths, device, dtype).with_context(|| {
        format!(
            "loading the language model from {}",
            paths.model_dir.display()
        )
    })?;
    // The flow estimator and the VAE run in f32 whatever the LM's dtype: reduced precision
    // compounds over the Euler steps (see `gpu`).
    let renderer = Renderer::load(paths, device, DType::F32)
        .with_context(|| format!("loading the renderer from {}", paths.runtime_dir.display()))?;
    let name = paths
        .model_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| paths.model_dir.display().to_string());
    let location = match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".to_string(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    };
    Ok(Box::new(Models {
        name,
        device: format!("{location} {dtype:?}").to_lowercase(),
        paths: paths.clone(),
        torch_device: device.clone(),
        lm,
        renderer,
        prompt_encoder: None,
        auto_prompts: None,
        last_prompt: None,
    }))
}

impl SongModel for Models {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn device(&self) -> String {
        self.device.clone()
    }

    fn encode_prompt(
        &mut self,
        audio: &Audio,
        seed: u64,
        progress: &mut ProgressFn<'_>,
    ) -> Result<PromptCodes> {
        if self.prompt_encoder.is_none() {
            let encoder = PromptEncoder::load(&self.paths, &self.torch_device)
                .context("loading the prompt encoders (needed by --prompt-audio)")?;
            self.prompt_encoder = Some(encoder);
        }
        let encoder = self.prompt_encoder.as_ref().expect("loaded above");
        let encoded = encoder.encode_full(&audio.channels, audio.sample_rate, seed, progress)?;
        let codes = PromptCodes {
            tokens: encoded.tokens.clone(),
            latent: Some(encoded.render.latent.clone()),
        };
        self.last_prompt = Some((encoded, seed));
        Ok(codes)
    }

    fn auto_prompt(&mut self, genre: &str, subset: &str, seed: u64) -> Result<Tensor> {
        if self.auto_prompts.is_none() {
            let lib = AutoPromptLibrary::load(&self.paths.auto_prompt())
                .context("loading the auto-prompt library (needed by --auto-prompt)")?;
            self.auto_prompts = Some(lib);
        }
        let lib = self.auto_prompts.as_ref().expect("loaded above");
        if genre == "Auto" && lib.prompts(genre, subset).is_none() {
            // `Auto` picks among every genre's prompts of the language.
            let all: Vec<&Tensor> = lib
                .genres()
                .filter_map(|g| lib.prompts(g, subset))
                .flatten()
                .collect();
            if all.is_empty() {
                bail!("the auto-prompt library has no `{subset}` prompts");
            }
            use rand::{Rng, SeedableRng};
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            return Ok(all[rng.random_range(0..all.len())].clone());
        }
        lib.pick(genre, subset, seed)
    }

    fn tokens(
        &mut self,
        input: &LmInput,
        sampling: &SamplingOptions,
        seed: u64,
        progress: &mut ProgressFn<'_>,
    ) -> Result<Tensor> {
        let req = LmRequest {
            lyrics: input.lyrics.clone(),
            descriptions: input.descriptions.clone(),
            gen_type: input.gen_type,
            prompt_tokens: input.prompt_tokens.clone(),
        };
        self.lm.generate(&req, sampling, seed, progress)
    }

    fn render(
        &mut self,
        tokens: &Tensor,
        prompt_latent: Option<&Tensor>,
        gen_type: GenType,
        seed: u64,
        progress: &mut ProgressFn<'_>,
    ) -> Result<Vec<(StemKind, Audio)>> {
        let prompts = match (prompt_latent, &self.last_prompt) {
            (None, _) => PromptSet::none(),
            (Some(_), Some((encoded, prompt_seed))) => {
                self.prompt_set(encoded, *prompt_seed, gen_type)?
            }
            (Some(_), None) => bail!("a prompt latent was given without an encoded prompt clip"),
        };
        let stems = self
            .renderer
            .render(tokens, &prompts, gen_type, seed, progress)?;
        if stems.sample_rate != SAMPLE_RATE {
            bail!(
                "the renderer produced {} Hz, expected {SAMPLE_RATE}",
                stems.sample_rate
            );
        }
        stems
            .audio
            .into_iter()
            .map(|(stem, audio)| {
                let kind = match stem {
                    Stem::Mixed => StemKind::Mixed,
                    Stem::Vocal => StemKind::Vocal,
                    Stem::Bgm => StemKind::Bgm,
                };
                let channels = audio.to_dtype(DType::F32)?.to_vec2::<f32>()?;
                Ok((
                    kind,
                    Audio {
                        channels,
                        sample_rate: SAMPLE_RATE,
                    },
                ))
            })
            .collect()
    }
}

impl Models {
    /// The decoder prompts of `generate.py`'s `generate()`: the mixed decode gets the clip, and
    /// in `separate` mode the vocal (accompaniment) decode gets it with the accompaniment
    /// (vocals) zeroed; plain `vocal`/`bgm` renders get none.
    fn prompt_set(
        &self,
        encoded: &EncodedPrompt,
        seed: u64,
        gen_type: GenType,
    ) -> Result<PromptSet> {
        let mixed = Some(encoded.render.clone());
        Ok(match gen_type {
            GenType::Mixed => PromptSet {
                mixed,
                ..PromptSet::none()
            },
            GenType::Vocal | GenType::Bgm => PromptSet::none(),
            GenType::Separate => {
                let encoder = self
                    .prompt_encoder
                    .as_ref()
                    .context("the prompt encoder is not loaded")?;
                let s = &encoded.separated;
                let part = |vocal: &Tensor, bgm: &Tensor| -> Result<Option<RenderPrompt>> {
                    Ok(Some(encoder.render_prompt(vocal, bgm, seed)?))
                };
                PromptSet {
                    mixed,
                    vocal: part(&s.vocal, &s.bgm.zeros_like()?)?,
                    bgm: part(&s.vocal.zeros_like()?, &s.bgm)?,
                }
            }
        })
    }
}
