//! The real models behind the pipeline's [`SongModel`] boundary: the LM ([`crate::lm`]) and
//! the renderer ([`crate::render`]: flow decoder + VAE), loaded once from a model folder, plus
//! the prompt encoder ([`crate::prompt`]) and the auto-prompt library
//! ([`crate::prompt::auto_prompt`]), loaded on first use since most jobs need neither.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};

use crate::io::audio::{Audio, SAMPLE_RATE};
use crate::lm::{LanguageModel, LmRequest};
use crate::paths::ModelPaths;
use crate::progress::ProgressFn;
use crate::prompt::auto_prompt::AutoPromptLibrary;
use crate::prompt::{JobPrompt, PromptEncoder};
use crate::protocol::{GenType, SamplingOptions, Stem};
use crate::render::{PromptSet, Renderer};
use crate::service::pipeline::{LmInput, SongModel};

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
}

/// Loads the LM and the renderer of `paths` onto `device`, computing in `dtype` (the VAE stays
/// in F32, as in the reference).
pub fn load(paths: &ModelPaths, device: &Device, dtype: DType) -> Result<Box<dyn SongModel>> {
    let lm = LanguageModel::load(paths, device, dtype).with_context(|| {
        format!(
            "loading the language model from {}",
            paths.model_dir.display()
        )
    })?;
    let renderer = Renderer::load(paths, device, dtype)
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
        gen_type: GenType,
        seed: u64,
        progress: &mut ProgressFn<'_>,
    ) -> Result<JobPrompt> {
        if self.prompt_encoder.is_none() {
            let encoder = PromptEncoder::load(&self.paths, &self.torch_device)
                .context("loading the prompt encoders (needed by --prompt-audio)")?
                .with_pad_token(i64::from(self.lm.config().special_id()));
            self.prompt_encoder = Some(encoder);
        }
        let encoder = self.prompt_encoder.as_ref().expect("loaded above");
        encoder.encode(&audio.channels, audio.sample_rate, gen_type, seed, progress)
    }

    fn auto_prompt(&mut self, genre: &str, subset: &str, seed: u64) -> Result<JobPrompt> {
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
            return Ok(JobPrompt::tokens_only(
                all[rng.random_range(0..all.len())].clone(),
            ));
        }
        Ok(JobPrompt::tokens_only(lib.pick(genre, subset, seed)?))
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
        prompts: &PromptSet,
        gen_type: GenType,
        seed: u64,
        progress: &mut ProgressFn<'_>,
    ) -> Result<Vec<(Stem, Audio)>> {
        let stems = self
            .renderer
            .render(tokens, prompts, gen_type, seed, progress)?;
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
                let channels = audio.to_dtype(DType::F32)?.to_vec2::<f32>()?;
                Ok((
                    stem,
                    Audio {
                        channels,
                        sample_rate: SAMPLE_RATE,
                    },
                ))
            })
            .collect()
    }
}
