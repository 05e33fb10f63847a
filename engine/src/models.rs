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
use crate::plan::{self, ModelShapes, Plan, PlanRequest, Residency};
use crate::progress::ProgressFn;
use crate::prompt::{EncodedPrompt, PromptEncoder};
use crate::protocol::{GenType, SamplingOptions};
use crate::quant::LmPrecision;
use crate::render::{PromptSet, RenderPrompt, Renderer, Stem};

/// Everything a job needs, on one device.
pub struct Models {
    name: String,
    device: String,
    paths: ModelPaths,
    torch_device: Device,
    opts: LoadOptions,
    residency: Residency,
    /// Both resident in streaming mode; in staged mode only the one the current stage needs.
    lm: Option<LanguageModel>,
    renderer: Option<Renderer>,
    prompt_encoder: Option<PromptEncoder>,
    auto_prompts: Option<AutoPromptLibrary>,
    /// The clip encoded by the last `encode_prompt` (jobs run one at a time, and `render`
    /// needs its separated stems and decoder prompt, not just the latent).
    last_prompt: Option<(EncodedPrompt, u64)>,
}

/// How to load a model folder.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadOptions {
    /// Renderer dtype, and the LM's activations when its weights are quantized.
    pub dtype: DType,
    pub lm_precision: LmPrecision,
    /// Longest song in seconds (sizes the LM's KV cache); `None`: the model's `max_dur`.
    pub max_seconds: Option<f64>,
    /// Forces a residency mode instead of picking the one that fits.
    pub residency: Option<Residency>,
}

impl LoadOptions {
    pub fn new(dtype: DType) -> Self {
        Self {
            dtype,
            lm_precision: LmPrecision::from_dtype(dtype),
            max_seconds: None,
            residency: None,
        }
    }
}

/// Loads the LM and the renderer of `paths` onto `device`, computing in `dtype` (the VAE stays
/// in F32, as in the reference).
pub fn load(paths: &ModelPaths, device: &Device, dtype: DType) -> Result<Box<dyn SongModel>> {
    load_with(paths, device, &LoadOptions::new(dtype))
}

/// The memory plan of `paths` for `opts` on `device` (shapes only, no weights read).
pub fn plan(paths: &ModelPaths, device: &Device, opts: &LoadOptions) -> Result<Plan> {
    let shapes = ModelShapes::from_folder(paths)
        .with_context(|| format!("reading the model shapes of {}", paths.model_dir.display()))?;
    Ok(Plan::new(&shapes, plan_request(&shapes, device, opts)))
}

fn plan_request(shapes: &ModelShapes, device: &Device, opts: &LoadOptions) -> PlanRequest {
    PlanRequest {
        precision: opts.lm_precision,
        lm_dtype: opts.dtype,
        render_dtype: opts.dtype,
        seconds: opts.max_seconds.unwrap_or(shapes.lm.max_dur),
        prompt: false,
        cpu: device.is_cpu(),
    }
}

/// Picks the residency mode from the plan and the device's free memory (`None` when it cannot
/// be read: streaming); refuses with what it needs, what is free and what would fit.
pub fn choose_residency(
    shapes: &ModelShapes,
    device: &Device,
    opts: &LoadOptions,
    free: Option<u64>,
) -> Result<Residency> {
    let plan = Plan::new(shapes, plan_request(shapes, device, opts));
    let Some(free) = free else {
        return Ok(opts.residency.unwrap_or(Residency::Streaming));
    };
    if let Some(mode) = opts.residency {
        if plan.peak(mode) <= free {
            return Ok(mode);
        }
    } else if let Some(mode) = plan.choose(free) {
        return Ok(mode);
    }
    let mut hints = Vec::new();
    let fits = |o: &LoadOptions| {
        Plan::new(shapes, plan_request(shapes, device, o))
            .choose(free)
            .is_some()
    };
    let precisions: Vec<&str> = LmPrecision::ALL
        .into_iter()
        .filter(|&p| {
            p != opts.lm_precision
                && fits(&LoadOptions {
                    lm_precision: p,
                    residency: None,
                    ..*opts
                })
        })
        .map(LmPrecision::name)
        .collect();
    if !precisions.is_empty() {
        hints.push(format!("--lm-precision {}", precisions.join(" or ")));
    }
    // The longest song that fits in this precision, in whole 10 s steps.
    let max = opts.max_seconds.unwrap_or(shapes.lm.max_dur);
    let mut seconds = (max / 10.0).floor() * 10.0;
    while seconds >= 10.0 {
        if fits(&LoadOptions {
            max_seconds: Some(seconds),
            residency: None,
            ..*opts
        }) {
            hints.push(format!("--seconds {seconds:.0}"));
            break;
        }
        seconds -= 10.0;
    }
    let hint = if hints.is_empty() {
        "no precision or song length fits; use a device with more memory".to_string()
    } else {
        format!("would fit: {}", hints.join(", or "))
    };
    bail!(
        "not enough memory: the job needs {} streaming or {} staged ({} LM weights, {} KV cache for {:.0} s, {} renderer) with the LM in {}, and {} is free; {hint} (SONGGEN_DEVICE_MEMORY overrides the free-memory reading)",
        plan::gb(plan.peak(Residency::Streaming)),
        plan::gb(plan.peak(Residency::Staged)),
        plan::gb(plan.lm.part("LM linear weights")),
        plan::gb(plan.lm.part("KV cache")),
        plan.frames as f64 / shapes.lm.frame_rate as f64,
        plan::gb(plan.render.total()),
        opts.lm_precision,
        plan::gb(free),
    )
}

/// [`load`] with a precision, a song-length cap and the residency mode picked from the
/// memory plan: streaming (LM and renderer resident) when it fits the device's free memory,
/// else staged (the LM and its KV cache are freed before the renderer loads), else a clear
/// refusal before anything is loaded.
pub fn load_with(
    paths: &ModelPaths,
    device: &Device,
    opts: &LoadOptions,
) -> Result<Box<dyn SongModel>> {
    let shapes = ModelShapes::from_folder(paths)
        .with_context(|| format!("reading the model shapes of {}", paths.model_dir.display()))?;
    let free = plan::free_memory(device.is_cpu())?;
    let residency = choose_residency(&shapes, device, opts, free)?;
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
    let mut models = Models {
        name,
        device: format!(
            "{location} {:?}, lm {}, {residency}",
            opts.dtype, opts.lm_precision
        )
        .to_lowercase(),
        paths: paths.clone(),
        torch_device: device.clone(),
        opts: *opts,
        residency,
        lm: None,
        renderer: None,
        prompt_encoder: None,
        auto_prompts: None,
        last_prompt: None,
    };
    models.lm_stage()?;
    if residency == Residency::Streaming {
        models.render_stage()?;
    }
    Ok(Box::new(models))
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
        self.lm_stage()?.generate(&req, sampling, seed, progress)
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
            .render_stage()?
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
    /// The LM, loading it first (in staged mode after freeing the renderer).
    fn lm_stage(&mut self) -> Result<&mut LanguageModel> {
        if self.lm.is_none() {
            if self.residency == Residency::Staged {
                self.renderer = None;
            }
            let paths = &self.paths;
            let mut lm = LanguageModel::load_with(
                paths,
                &self.torch_device,
                self.opts.dtype,
                self.opts.lm_precision,
            )
            .with_context(|| {
                format!(
                    "loading the language model from {}",
                    paths.model_dir.display()
                )
            })?;
            if let Some(s) = self.opts.max_seconds {
                let frames = (s * lm.config().frame_rate as f64).ceil() as usize;
                lm.set_max_gen_len(frames.clamp(1, lm.max_gen_len()));
            }
            self.lm = Some(lm);
        }
        Ok(self.lm.as_mut().expect("loaded above"))
    }

    /// The renderer, loading it first (in staged mode after freeing the LM and its KV cache).
    fn render_stage(&mut self) -> Result<&mut Renderer> {
        if self.renderer.is_none() {
            if self.residency == Residency::Staged {
                self.lm = None;
            }
            let renderer = Renderer::load(&self.paths, &self.torch_device, self.opts.dtype)
                .with_context(|| {
                    format!(
                        "loading the renderer from {}",
                        self.paths.runtime_dir.display()
                    )
                })?;
            self.renderer = Some(renderer);
        }
        Ok(self.renderer.as_mut().expect("loaded above"))
    }

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
