//! The real models behind the pipeline's [`SongModel`] boundary: the LM ([`crate::lm`]) and
//! the renderer ([`crate::render`]: flow decoder + VAE), loaded once from a model folder, plus
//! the prompt encoder ([`crate::prompt`]) and the auto-prompt library
//! ([`crate::prompt::auto_prompt`]), loaded on first use since most jobs need neither.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use crossbeam_channel::Receiver;

use crate::io::audio::{Audio, SAMPLE_RATE};
use crate::lm::{LanguageModel, LmRequest};
use crate::paths::ModelPaths;
use crate::plan::{self, ModelShapes, Plan, PlanRequest, Residency};
use crate::progress::{report, Cancelled, Progress, ProgressFn};
use crate::prompt::auto_prompt::AutoPromptLibrary;
use crate::prompt::{JobPrompt, PromptEncoder};
use crate::protocol::{GenType, SamplingOptions, Stem};
use crate::quant::LmPrecision;
use crate::render::renderer::{RenderStream, SpanSink};
use crate::render::{PromptSet, Renderer};
use crate::service::pipeline::{
    generate_batch, AudioChunk, AudioSink, Generated, LmInput, Seeds, SongModel,
};

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

/// Loads the LM and the renderer of `paths` onto `device`, the LM computing in `dtype` (the
/// flow estimator and the VAE stay in F32).
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
/// memory plan: streaming (LM and renderer resident, windows rendered while the LM runs) when it
/// fits the device's free memory, else staged (the LM and its KV cache are freed before the
/// renderer loads; the job's audio then comes after the LM), else a clear refusal before
/// anything is loaded.
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
        gen_type: GenType,
        seed: u64,
        progress: &mut ProgressFn<'_>,
    ) -> Result<JobPrompt> {
        if self.prompt_encoder.is_none() {
            let encoder = PromptEncoder::load(&self.paths, &self.torch_device)
                .context("loading the prompt encoders (needed by --prompt-audio)")?
                .with_pad_token(i64::from(self.lm_stage()?.config().special_id()));
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
        self.lm_stage()?
            .generate(&lm_request(input), sampling, seed, progress)
    }

    /// The LM on a second thread, the renderer on this one: every window is rendered as soon as
    /// the LM has produced its codes (its end plus the vocal/bgm delay of the pattern), and each
    /// span of audio goes to `sink` once final. The LM's progress is relayed between the
    /// renderer's units of work; a cancel (or a render error) stops the LM at its next step.
    fn generate(
        &mut self,
        input: &LmInput,
        sampling: &SamplingOptions,
        prompts: &PromptSet,
        seeds: Seeds,
        progress: &mut ProgressFn<'_>,
        sink: &mut AudioSink<'_>,
    ) -> Result<Generated> {
        if self.residency == Residency::Staged {
            // The LM and its KV cache are freed before the renderer loads: no pipelining.
            return generate_batch(self, input, sampling, prompts, seeds, progress, sink);
        }
        let req = lm_request(input);
        self.lm_stage()?;
        self.render_stage()?;
        let (Some(lm), Some(renderer)) = (self.lm.as_mut(), self.renderer.as_ref()) else {
            bail!("internal: streaming residency without both models");
        };
        let mut stream = renderer.stream(prompts, input.gen_type, seeds.render)?;
        let stop = AtomicBool::new(false);
        let (tx, rx) = crossbeam_channel::unbounded::<LmMsg>();
        let mut on_span = |stem: Stem, start: usize, audio: &Tensor| -> Result<()> {
            let channels = audio.to_dtype(DType::F32)?.to_vec2::<f32>()?;
            sink(&AudioChunk {
                stem,
                start: start as u64,
                channels,
            })
        };
        std::thread::scope(|s| {
            let stop = &stop;
            let lm_thread = std::thread::Builder::new()
                .name("songgen-lm".into())
                .spawn_scoped(s, move || {
                    let started = Instant::now();
                    let frames_tx = tx.clone();
                    let mut on_progress = |p: Progress| {
                        let _ = tx.send(LmMsg::Progress(p));
                        if stop.load(Ordering::SeqCst) {
                            ControlFlow::Break(())
                        } else {
                            ControlFlow::Continue(())
                        }
                    };
                    let mut on_frames = |f: &[[i64; 3]]| {
                        let _ = frames_tx.send(LmMsg::Frames(f.to_vec()));
                    };
                    let tokens = lm.generate_streaming(
                        &req,
                        sampling,
                        seeds.lm,
                        &mut on_progress,
                        &mut on_frames,
                    );
                    (tokens, started.elapsed().as_secs_f64())
                })
                .context("starting the LM thread")?;
            let rendered = render_as_tokens_arrive(&mut stream, &rx, progress, &mut on_span);
            if rendered.is_err() {
                stop.store(true, Ordering::SeqCst);
            }
            let (tokens, lm_s) = match lm_thread.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            };
            // A cancel seen by the renderer is the job's outcome, whatever the LM returned.
            rendered?;
            let tokens = tokens?;
            if stream.song_frames() != tokens.dim(2)? {
                bail!(
                    "internal: the LM streamed {} frames but returned {}",
                    stream.song_frames(),
                    tokens.dim(2)?
                );
            }
            stream.finish(progress, &mut on_span)?;
            Ok(Generated { tokens, lm_s })
        })
    }

    fn max_frames(&self) -> Option<u64> {
        let lm = self.lm.as_ref()?;
        let spf = self
            .renderer
            .as_ref()
            .map_or(1920, |r| r.config().window.samples_per_frame);
        Some(lm.max_gen_len() as u64 * spf as u64)
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
            .render_stage()?
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
            let renderer = Renderer::load(&self.paths, &self.torch_device, DType::F32)
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
}

fn lm_request(input: &LmInput) -> LmRequest {
    LmRequest {
        lyrics: input.lyrics.clone(),
        descriptions: input.descriptions.clone(),
        gen_type: input.gen_type,
        prompt_tokens: input.prompt_tokens.clone(),
    }
}

/// What the LM thread tells the renderer.
enum LmMsg {
    Progress(Progress),
    /// Final song frames (mixed, vocal, bgm), in order.
    Frames(Vec<[i64; 3]>),
}

/// Feeds the LM's frames to `stream` until the LM thread ends, rendering every window they
/// complete. LM progress is passed on to `progress` as it comes, also while a window renders.
fn render_as_tokens_arrive(
    stream: &mut RenderStream<'_>,
    rx: &Receiver<LmMsg>,
    progress: &mut ProgressFn<'_>,
    sink: &mut SpanSink<'_>,
) -> Result<()> {
    fn take(
        msg: LmMsg,
        incoming: &mut Vec<[i64; 3]>,
        progress: &mut ProgressFn<'_>,
    ) -> Result<(), Cancelled> {
        match msg {
            LmMsg::Frames(f) => incoming.extend(f),
            LmMsg::Progress(p) => report(progress, p)?,
        }
        Ok(())
    }
    let mut incoming: Vec<[i64; 3]> = Vec::new();
    // The channel closes when the LM thread ends.
    while let Ok(msg) = rx.recv() {
        take(msg, &mut incoming, progress)?;
        while let Ok(msg) = rx.try_recv() {
            take(msg, &mut incoming, progress)?;
        }
        while !incoming.is_empty() {
            let vocal: Vec<i64> = incoming.iter().map(|f| f[1]).collect();
            let bgm: Vec<i64> = incoming.iter().map(|f| f[2]).collect();
            incoming.clear();
            stream.push(&vocal, &bgm)?;
            let mut relay = |p: Progress| {
                while let Ok(msg) = rx.try_recv() {
                    if take(msg, &mut incoming, progress).is_err() {
                        return ControlFlow::Break(());
                    }
                }
                progress(p)
            };
            stream.render_ready(&mut relay, sink)?;
        }
    }
    Ok(())
}
