//! [`Renderer`]: the flow decoder and the VAE decoder run over a window schedule, one stem after
//! another, with progress and cancellation at every Euler step and VAE chunk.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};

use crate::io::weights::WeightFile;
use crate::paths::ModelPaths;
use crate::progress::{report, Cancelled, Progress, ProgressFn, Stage};
use crate::protocol::{GenType, Stem};
use crate::render::crossfade::crossfade_append;
use crate::render::flow::FlowModel;
use crate::render::noise::Noise;
use crate::render::rvq::{check_codes, named_codes};
use crate::render::schedule::{plan_decode, WindowSchedule};
use crate::render::vae::{chunk_plan, VaeConfig, VaeDecoder};
use crate::render::{DecodePlan, PromptSet, RenderConfig, RenderPrompt, StemRender, Stems};

/// Progress bookkeeping across all decodes of one `render` call.
struct Tracker<'p, 'a> {
    progress: &'p mut ProgressFn<'a>,
    steps_total: u64,
    steps_done: u64,
    chunks_total: u64,
    chunks_done: u64,
    started: Instant,
}

impl<'p, 'a> Tracker<'p, 'a> {
    fn new(progress: &'p mut ProgressFn<'a>, steps_total: u64, chunks_total: u64) -> Self {
        Self {
            progress,
            steps_total,
            steps_done: 0,
            chunks_total,
            chunks_done: 0,
            started: Instant::now(),
        }
    }

    fn report(&mut self, stage: Stage, done: u64, total: u64) -> Result<(), Cancelled> {
        let secs = self.started.elapsed().as_secs_f64();
        let rate = (secs > 0.0).then(|| done as f64 / secs);
        report(
            self.progress,
            Progress {
                stage,
                done,
                total,
                rate,
            },
        )
    }

    fn step(&mut self) -> Result<(), Cancelled> {
        self.steps_done += 1;
        self.report(Stage::Render, self.steps_done, self.steps_total)
    }

    fn chunk(&mut self) -> Result<(), Cancelled> {
        self.chunks_done += 1;
        self.report(Stage::Vae, self.chunks_done, self.chunks_total)
    }
}

/// Flow decoder + VAE decoder.
pub struct Renderer {
    flow: FlowModel,
    vae: VaeDecoder,
    cfg: RenderConfig,
    device: Device,
}

impl Renderer {
    /// Loads the release: the flow from `ckpt/model_septoken/model_2.safetensors` (sizes read from
    /// the checkpoint, see [`RenderConfig::from_checkpoint`]; estimator in
    /// `dtype`, e.g. F16/BF16 on a GPU, F32 on CPU) and the VAE decoder from
    /// `ckpt/vae/autoencoder_music_1320k.ckpt` (F32), with `ckpt/vae/stable_audio_1920_vae.json`
    /// when present.
    pub fn load(paths: &ModelPaths, device: &Device, dtype: DType) -> Result<Self> {
        let json = paths.vae_config();
        let vae_cfg = if json.is_file() {
            VaeConfig::from_json_file(&json)?
        } else {
            VaeConfig::default()
        };
        let flow = WeightFile::open(paths.septoken())?;
        let cfg = RenderConfig::from_checkpoint(&flow, vae_cfg)?;
        Self::from_files(
            flow,
            WeightFile::open(paths.vae_ckpt())?,
            cfg,
            device,
            dtype,
        )
    }

    /// Loads from opened weight files with an explicit config.
    pub fn from_files(
        flow: WeightFile,
        vae: WeightFile,
        cfg: RenderConfig,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        cfg.validate()?;
        let flow_path = flow.path().display().to_string();
        let flow = FlowModel::load(flow.var_builder(dtype, device), &cfg.flow)
            .with_context(|| format!("loading the flow decoder from {flow_path}"))?;
        let vae = VaeDecoder::load(vae, &cfg.vae, device)?;
        Ok(Self {
            flow,
            vae,
            cfg,
            device: device.clone(),
        })
    }

    pub fn config(&self) -> &RenderConfig {
        &self.cfg
    }

    pub fn flow(&self) -> &FlowModel {
        &self.flow
    }

    pub fn vae(&self) -> &VaeDecoder {
        &self.vae
    }

    /// Renders LM tokens `[1, 3, T]` (streams mixed, vocal, bgm; the mixed stream is not
    /// decoded) into the stems of `gen_type`, each stem with its prompt from `prompts` (if any).
    /// Window noise comes from `seed` (the decodes of `separate` draw one after another). Out-of-range
    /// tokens are rejected before any compute. Progress: `Stage::Render` per Euler step
    /// (windows × steps, over all decodes), `Stage::Vae` per VAE chunk; a `Break` from
    /// `progress` stops at the next step or chunk with [`Cancelled`].
    pub fn render(
        &self,
        tokens: &Tensor,
        prompts: &PromptSet,
        gen_type: GenType,
        seed: u64,
        progress: &mut ProgressFn<'_>,
    ) -> Result<Stems> {
        let dims = tokens.dims();
        if dims.len() != 3 || dims[0] != 1 || dims[1] != 3 {
            bail!("tokens must be [1, 3, T] (mixed, vocal, bgm), got {dims:?}");
        }
        let vocal = named_codes("vocal tokens", &tokens.narrow(1, 1, 1)?)?;
        let bgm = named_codes("bgm tokens", &tokens.narrow(1, 2, 1)?)?;
        self.render_codes(
            &vocal,
            &bgm,
            prompts,
            gen_type,
            &mut Noise::seeded(seed),
            progress,
        )
    }

    /// [`Self::render`] on the vocal and bgm code streams, with explicit noise.
    pub fn render_codes(
        &self,
        vocal: &[i64],
        bgm: &[i64],
        prompts: &PromptSet,
        gen_type: GenType,
        noise: &mut Noise,
        progress: &mut ProgressFn<'_>,
    ) -> Result<Stems> {
        let stems = Stem::for_gen_type(gen_type);
        // Validate everything before any compute.
        let jobs = stems
            .iter()
            .map(|&stem| self.stem_codes(stem, vocal, bgm, prompts.for_stem(stem)))
            .collect::<Result<Vec<_>>>()?;
        let (mut steps_total, mut chunks_total) = (0u64, 0u64);
        for job in &jobs {
            let (s, c) = self.work_units(&job.plan.schedule);
            steps_total += s;
            chunks_total += c;
        }
        let mut tracker = Tracker::new(progress, steps_total, chunks_total);
        let mut audio = Vec::with_capacity(jobs.len());
        let mut num_samples = 0;
        for (job, &stem) in jobs.iter().zip(stems) {
            let out = self.decode_job(job, noise, &mut tracker)?;
            num_samples = out.plan.schedule.target_len;
            audio.push((stem, out.audio));
        }
        Ok(Stems {
            sample_rate: self.cfg.vae.sample_rate as u32,
            num_samples,
            audio,
        })
    }

    /// Decodes one stem (`mixed`, or `vocal`/`bgm` with the other stream replaced by its silence
    /// code), returning its per-window latents and plan too. `prompt` adds the latent prefix
    /// and prepends its codes.
    pub fn render_stem(
        &self,
        stem: Stem,
        vocal: &[i64],
        bgm: &[i64],
        prompt: Option<&RenderPrompt>,
        noise: &mut Noise,
        progress: &mut ProgressFn<'_>,
    ) -> Result<StemRender> {
        let job = self.stem_codes(stem, vocal, bgm, prompt)?;
        let (steps_total, chunks_total) = self.work_units(&job.plan.schedule);
        let mut tracker = Tracker::new(progress, steps_total, chunks_total);
        self.decode_job(&job, noise, &mut tracker)
    }

    /// Applies the gen-type substitution of one stem (`codeclm.generate_audio`).
    fn stem_codes(
        &self,
        stem: Stem,
        vocal: &[i64],
        bgm: &[i64],
        prompt: Option<&RenderPrompt>,
    ) -> Result<Job> {
        let w = &self.cfg.window;
        let (v, b) = match stem {
            Stem::Mixed => (vocal.to_vec(), bgm.to_vec()),
            Stem::Vocal => (vocal.to_vec(), vec![w.silence_code_bgm; bgm.len()]),
            Stem::Bgm => (vec![w.silence_code_vocal; vocal.len()], bgm.to_vec()),
        };
        // Report the caller's tokens, not the substitutes.
        let size = self.cfg.flow.codebook_size;
        check_codes("vocal", vocal, size)?;
        check_codes("bgm", bgm, size)?;
        self.job(v, b, prompt)
    }

    fn job(&self, vocal: Vec<i64>, bgm: Vec<i64>, prompt: Option<&RenderPrompt>) -> Result<Job> {
        let (prompt_codes, latent) = match prompt {
            Some(p) => {
                let pv = named_codes("prompt vocal codes", &p.codes_vocal)?;
                let pb = named_codes("prompt bgm codes", &p.codes_bgm)?;
                let (_, c, n) = p
                    .latent
                    .dims3()
                    .context("prompt latent must be [1, latent, frames]")?;
                if c != self.cfg.flow.latent_dim || n == 0 || n >= self.cfg.window.frames {
                    bail!(
                        "prompt latent has shape {:?}; expected [1, {}, n] with 0 < n < {}",
                        p.latent.dims(),
                        self.cfg.flow.latent_dim,
                        self.cfg.window.frames
                    );
                }
                // Frames-major raw latent, as the flow's in-context input.
                let latent = p
                    .latent
                    .to_dtype(DType::F32)?
                    .transpose(1, 2)?
                    .contiguous()?;
                (Some((pv, pb)), Some(latent))
            }
            None => (None, None),
        };
        let p_latent = latent.as_ref().map_or(Ok(0), |l| l.dim(1))?;
        let plan = plan_decode(&self.cfg, &vocal, &bgm, prompt_codes, p_latent)?;
        Ok(Job {
            plan,
            prompt_latent: latent,
        })
    }

    fn work_units(&self, s: &WindowSchedule) -> (u64, u64) {
        let steps = (s.starts.len() * self.cfg.flow.num_steps) as u64;
        let chunks: usize = s
            .latent_frames
            .iter()
            .map(|&n| chunk_plan(n, self.cfg.vae_chunk.size, self.cfg.vae_chunk.overlap).len())
            .sum();
        (steps, chunks as u64)
    }

    fn decode_job(
        &self,
        job: &Job,
        noise: &mut Noise,
        tracker: &mut Tracker,
    ) -> Result<StemRender> {
        let w = &self.cfg.window;
        let s = &job.plan.schedule;
        let ld = self.cfg.flow.latent_dim;
        let mut latents: Vec<Tensor> = Vec::with_capacity(s.starts.len());
        for (k, &start) in s.starts.iter().enumerate() {
            let end = start + w.frames;
            let ctx = if k == 0 {
                job.prompt_latent.clone()
            } else {
                let prev = &latents[k - 1];
                let n = prev.dim(2)?;
                Some(
                    prev.narrow(2, n - w.overlap, w.overlap)?
                        .transpose(1, 2)?
                        .contiguous()?,
                )
            };
            let inputs = self.flow.window_inputs(
                &job.plan.vocal[start..end],
                &job.plan.bgm[start..end],
                ctx.as_ref(),
            )?;
            let x0 = noise.window(w.frames, ld, &self.device)?;
            // Report the step that just finished (none before the first).
            let mut on_step = |i: usize, _: &Tensor| if i > 0 { tracker.step() } else { Ok(()) };
            latents.push(self.flow.sample(&inputs, &x0, &mut on_step)?);
            tracker.step()?;
        }
        let mut song: Option<Tensor> = None;
        for (k, latent) in latents.iter().enumerate() {
            let latent = if k == 0 {
                let n = latent.dim(2)?;
                latent.narrow(2, n - s.latent_frames[0], s.latent_frames[0])?
            } else {
                latent.clone()
            };
            let audio = self
                .vae
                .decode_chunked(
                    &latent,
                    self.cfg.vae_chunk.size,
                    self.cfg.vae_chunk.overlap,
                    &mut |_, _| tracker.chunk(),
                )?
                .squeeze(0)?
                .to_device(&Device::Cpu)?;
            song = Some(match song {
                None => audio,
                Some(acc) => crossfade_append(&acc, &audio, w.crossfade_samples)?,
            });
        }
        let song = song.context("the schedule has no windows")?;
        let audio = song.narrow(1, 0, s.target_len.min(song.dim(1)?))?;
        Ok(StemRender {
            audio,
            window_latents: latents,
            plan: job.plan.clone(),
        })
    }
}

/// A planned decode of one stem.
struct Job {
    plan: DecodePlan,
    /// `[1, P, latent]` raw, frames-major.
    prompt_latent: Option<Tensor>,
}
