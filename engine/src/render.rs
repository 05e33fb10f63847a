//! The renderer: LM tokens → 48 kHz stereo, long-form (`Flow1dVAESeparate.code2sound` with
//! `chunked=True` of the reference).
//!
//! Songs are decoded in windows of 1000 latent frames (40 s) at hop 750: each window's first 250
//! frames are in-context conditioning (the previous window's tail, or the prompt latent for
//! window 0). The code sequence is padded by tiling it, every window's latent is decoded by the
//! VAE in 128-frame chunks, and windows are joined with a linear cross-fade over the overlap.

use std::ops::ControlFlow;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;

use crate::flow::{FlowConfig, FlowModel};
use crate::paths::ModelPaths;
use crate::progress::{report, Cancelled, Progress, ProgressFn, Stage};
use crate::protocol::GenType;
use crate::rvq::{check_codes, named_codes};
use crate::vae::{chunk_plan, VaeConfig, VaeDecoder};
use crate::weights::WeightFile;

/// Window geometry (names as in the fixture manifests' `config.window`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct WindowConfig {
    /// Latent frames per window (1000 = 40 s).
    pub frames: usize,
    pub hop: usize,
    /// In-context frames carried from one window to the next (`frames − hop`).
    pub overlap: usize,
    /// Audio samples per latent frame (the VAE's 1920).
    pub samples_per_frame: usize,
    /// Linear cross-fade between windows, in samples (`overlap · samples_per_frame`).
    pub crossfade_samples: usize,
    /// Latent frames of a prompt prefix (10 s = 250).
    pub prompt_latent_frames: usize,
    /// Code frames of a prompt prefix (251: one more than the latent, trap §7.3).
    pub prompt_code_frames: usize,
    /// The vocal code that stands for silence (used by `GenType::Bgm`).
    pub silence_code_vocal: i64,
    /// The accompaniment code that stands for silence (used by `GenType::Vocal`).
    pub silence_code_bgm: i64,
}

impl Default for WindowConfig {
    fn default() -> Self {
        Self {
            frames: 1000,
            hop: 750,
            overlap: 250,
            samples_per_frame: 1920,
            crossfade_samples: 480_000,
            prompt_latent_frames: 250,
            prompt_code_frames: 251,
            silence_code_vocal: 3142,
            silence_code_bgm: 9670,
        }
    }
}

/// VAE chunking of the reference's `decode_audio(chunked=True)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct ChunkConfig {
    pub size: usize,
    pub overlap: usize,
}

impl Default for ChunkConfig {
    fn default() -> Self {
        Self {
            size: 128,
            overlap: 32,
        }
    }
}

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

    fn validate(&self) -> Result<()> {
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

/// The window layout of one decode (pure index arithmetic of `code2sound`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowSchedule {
    /// Code frames after tiling.
    pub padded_len: usize,
    /// First code frame of each window.
    pub starts: Vec<usize>,
    /// In-context prefix of each window (the prompt latent for window 0, else the overlap).
    pub incontext: Vec<usize>,
    /// Latent frames each window contributes to the audio (window 0 drops the prompt latent).
    pub latent_frames: Vec<usize>,
    /// Samples of the output (the reference's float-truncated `target_len`).
    pub target_len: usize,
    /// Samples after cross-fading every window, before the crop to `target_len`.
    pub assembled_len: usize,
}

impl WindowSchedule {
    /// Plans a decode of `codes_len` code frames (`sample_rate` Hz output), the first `prompt_codes` of which are a
    /// prompt whose latent prefix has `prompt_latents` frames (both 0 without a prompt).
    pub fn plan(
        w: &WindowConfig,
        sample_rate: usize,
        codes_len: usize,
        prompt_codes: usize,
        prompt_latents: usize,
    ) -> Self {
        // target_len = int((codes_len − P) / 100 · 4 · sample_rate): 40 ms frames in f64,
        // truncated — one sample short of T·1920 for some T, reproduced on purpose.
        let target_len =
            ((codes_len - prompt_codes) as f64 / 100.0 * 4.0 * sample_rate as f64) as usize;
        let mut len = codes_len;
        if len < w.frames {
            len = w.frames;
        }
        if !(len - w.overlap).is_multiple_of(w.hop) {
            len = (len - w.overlap).div_ceil(w.hop) * w.hop + w.overlap;
        }
        let starts: Vec<usize> = (0..len - w.hop).step_by(w.hop).collect();
        let incontext: Vec<usize> = (0..starts.len())
            .map(|k| if k == 0 { prompt_latents } else { w.overlap })
            .collect();
        let latent_frames: Vec<usize> = (0..starts.len())
            .map(|k| {
                if k == 0 {
                    w.frames - prompt_latents
                } else {
                    w.frames
                }
            })
            .collect();
        let mut assembled_len = 0;
        for (k, &n) in latent_frames.iter().enumerate() {
            let samples = n * w.samples_per_frame;
            assembled_len += if k == 0 {
                samples
            } else {
                samples - w.crossfade_samples
            };
        }
        Self {
            padded_len: len,
            starts,
            incontext,
            latent_frames,
            target_len,
            assembled_len,
        }
    }
}

/// Repeats `codes` end to end until it is `len` long (the reference pads by tiling).
pub fn tile_codes(codes: &[i64], len: usize) -> Vec<i64> {
    if codes.is_empty() {
        return vec![];
    }
    codes
        .iter()
        .copied()
        .cycle()
        .take(len.max(codes.len()))
        .take(len)
        .collect()
}

/// Appends `next: [C, N]` to `acc: [C, M]` with a linear cross-fade over `overlap` samples:
/// `acc_tail·(1−w) + next_head·w`, `w = linspace(0, 1, overlap)` (f64, as the reference).
pub fn crossfade_append(
    acc: &Tensor,
    next: &Tensor,
    overlap: usize,
) -> candle_core::Result<Tensor> {
    let (_, m) = acc.dims2()?;
    let (_, n) = next.dims2()?;
    if overlap == 0 {
        return Tensor::cat(&[acc, next], 1);
    }
    if overlap > m || overlap > n {
        candle_core::bail!("cross-fade of {overlap} samples is longer than a window ({m}, {n})");
    }
    let step = 1.0 / (overlap.max(2) - 1) as f64;
    let mut ramp: Vec<f64> = (0..overlap).map(|i| i as f64 * step).collect();
    ramp[overlap - 1] = 1.0;
    let w = Tensor::from_vec(ramp, (1, overlap), acc.device())?;
    let tail = acc.narrow(1, m - overlap, overlap)?.to_dtype(DType::F64)?;
    let head = next.narrow(1, 0, overlap)?.to_dtype(DType::F64)?;
    let faded =
        (tail.broadcast_mul(&(1.0 - &w)?)? + head.broadcast_mul(&w)?)?.to_dtype(acc.dtype())?;
    Tensor::cat(
        &[
            acc.narrow(1, 0, m - overlap)?,
            faded,
            next.narrow(1, overlap, n - overlap)?,
        ],
        1,
    )
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

    fn for_stem(&self, stem: Stem) -> Option<&RenderPrompt> {
        match stem {
            Stem::Mixed => self.mixed.as_ref(),
            Stem::Vocal => self.vocal.as_ref(),
            Stem::Bgm => self.bgm.as_ref(),
        }
    }
}

/// One decoded output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stem {
    Mixed,
    Vocal,
    Bgm,
}

impl Stem {
    pub fn name(self) -> &'static str {
        match self {
            Stem::Mixed => "mixed",
            Stem::Vocal => "vocal",
            Stem::Bgm => "bgm",
        }
    }

    /// The stems a generation type decodes (`separate` = three independent decodes).
    pub fn for_gen_type(gen_type: GenType) -> &'static [Stem] {
        match gen_type {
            GenType::Mixed => &[Stem::Mixed],
            GenType::Vocal => &[Stem::Vocal],
            GenType::Bgm => &[Stem::Bgm],
            GenType::Separate => &[Stem::Mixed, Stem::Vocal, Stem::Bgm],
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

/// Where the initial noise of each window comes from.
pub enum Noise {
    /// `N(0, 1)` from a seeded generator (frames-major, one window after another).
    Seeded(Box<StdRng>),
    /// Given tensors `[W, L, latent]`, window `k` uses row `k` (parity tests).
    Given { windows: Tensor, next: usize },
}

impl Noise {
    pub fn seeded(seed: u64) -> Self {
        Noise::Seeded(Box::new(StdRng::seed_from_u64(seed)))
    }

    pub fn given(windows: Tensor) -> Self {
        Noise::Given { windows, next: 0 }
    }

    /// The next window's noise `[1, frames, dim]` F32 on `device`.
    pub fn window(&mut self, frames: usize, dim: usize, device: &Device) -> Result<Tensor> {
        match self {
            Noise::Seeded(rng) => {
                let n = frames * dim;
                let mut v = Vec::with_capacity(n + 1);
                while v.len() < n {
                    // Box–Muller: two independent normals per pair of uniforms.
                    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
                    let u2: f64 = rng.random::<f64>();
                    let r = (-2.0 * u1.ln()).sqrt();
                    let a = std::f64::consts::TAU * u2;
                    v.push((r * a.cos()) as f32);
                    v.push((r * a.sin()) as f32);
                }
                v.truncate(n);
                Ok(Tensor::from_vec(v, (1, frames, dim), device)?)
            }
            Noise::Given { windows, next } => {
                let (count, l, d) = windows.dims3()?;
                if *next >= count || l != frames || d != dim {
                    bail!(
                        "given noise {:?} has no window {} of [{frames}, {dim}]",
                        windows.dims(),
                        *next
                    );
                }
                let t = windows
                    .narrow(0, *next, 1)?
                    .to_device(device)?
                    .to_dtype(DType::F32)?;
                *next += 1;
                Ok(t)
            }
        }
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

/// Progress bookkeeping across all decodes of one `render` call.
struct Tracker<'p, 'a> {
    progress: &'p mut ProgressFn<'a>,
    steps_total: u64,
    steps_done: u64,
    chunks_total: u64,
    chunks_done: u64,
    started: Instant,
}

impl Tracker<'_, '_> {
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

/// The code streams one decode feeds the flow, and its window layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodePlan {
    /// Prompt codes (if any) + song codes, tiled to `schedule.padded_len`.
    pub vocal: Vec<i64>,
    pub bgm: Vec<i64>,
    pub schedule: WindowSchedule,
}

/// Validates the streams, prepends the prompt codes (when given) and pads by tiling
/// (`code2sound` up to the window loop). `prompt_latent_frames` is the prompt's latent prefix.
pub fn plan_decode(
    cfg: &RenderConfig,
    vocal: &[i64],
    bgm: &[i64],
    prompt_codes: Option<(Vec<i64>, Vec<i64>)>,
    prompt_latent_frames: usize,
) -> Result<DecodePlan> {
    let size = cfg.flow.codebook_size;
    if vocal.len() != bgm.len() {
        bail!(
            "vocal ({}) and bgm ({}) streams differ in length",
            vocal.len(),
            bgm.len()
        );
    }
    if vocal.is_empty() {
        bail!("no tokens to render");
    }
    check_codes("vocal", vocal, size)?;
    check_codes("bgm", bgm, size)?;
    let (mut v, mut b) = match prompt_codes {
        Some((pv, pb)) => {
            if pv.len() != pb.len() {
                bail!(
                    "prompt vocal ({}) and bgm ({}) codes differ in length",
                    pv.len(),
                    pb.len()
                );
            }
            check_codes("prompt vocal", &pv, size)?;
            check_codes("prompt bgm", &pb, size)?;
            (pv, pb)
        }
        None => (vec![], vec![]),
    };
    let p_codes = v.len();
    v.extend_from_slice(vocal);
    b.extend_from_slice(bgm);
    let schedule = WindowSchedule::plan(
        &cfg.window,
        cfg.vae.sample_rate,
        v.len(),
        p_codes,
        prompt_latent_frames,
    );
    Ok(DecodePlan {
        vocal: tile_codes(&v, schedule.padded_len),
        bgm: tile_codes(&b, schedule.padded_len),
        schedule,
    })
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
        let mut tracker = Tracker {
            progress,
            steps_total,
            steps_done: 0,
            chunks_total,
            chunks_done: 0,
            started: Instant::now(),
        };
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
        let mut tracker = Tracker {
            progress,
            steps_total,
            steps_done: 0,
            chunks_total,
            chunks_done: 0,
            started: Instant::now(),
        };
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
            let mut cancelled = false;
            let mut on_step = |i: usize, _: &Tensor| -> candle_core::Result<()> {
                // Report the step that just finished (none before the first).
                if i > 0 && tracker.step().is_err() {
                    cancelled = true;
                    candle_core::bail!("cancelled");
                }
                Ok(())
            };
            let latent = self.flow.sample(&inputs, &x0, &mut on_step);
            if cancelled {
                return Err(Cancelled.into());
            }
            latents.push(latent?);
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

/// A progress callback that never cancels.
pub fn no_progress() -> impl FnMut(Progress) -> ControlFlow<()> {
    |_| ControlFlow::Continue(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(t: usize, prompt: bool) -> WindowSchedule {
        let (pc, pl) = if prompt { (251, 250) } else { (0, 0) };
        WindowSchedule::plan(&WindowConfig::default(), 48_000, t + pc, pc, pl)
    }

    #[test]
    fn schedule_matches_the_reference_table() {
        // (T, prompt) → (padded L, windows, assembled samples, output samples); codec.md §2.2.
        for (t, prompt, len, windows, assembled, out) in [
            (50, false, 1000, 1, 1_920_000, 96_000),
            (750, false, 1000, 1, 1_920_000, 1_440_000),
            (1001, false, 1750, 2, 3_360_000, 1_921_920),
            (6750, false, 7000, 9, 13_440_000, 12_960_000),
            (6750, true, 7750, 10, 14_400_000, 12_960_000),
        ] {
            let s = plan(t, prompt);
            assert_eq!(
                (s.padded_len, s.starts.len(), s.assembled_len, s.target_len),
                (len, windows, assembled, out),
                "T={t} prompt={prompt}"
            );
            assert_eq!(s.incontext[0], if prompt { 250 } else { 0 });
            assert!(s.incontext[1..].iter().all(|&n| n == 250));
        }
        // The float truncation of target_len: one sample short for T = 29.
        assert_eq!(plan(29, false).target_len, 29 * 1920 - 1);
    }

    #[test]
    fn tiling_repeats_the_start() {
        assert_eq!(tile_codes(&[1, 2, 3], 7), [1, 2, 3, 1, 2, 3, 1]);
        assert_eq!(tile_codes(&[1, 2, 3], 2), [1, 2]);
    }

    #[test]
    fn crossfade_is_linear_over_the_overlap() -> Result<()> {
        let dev = Device::Cpu;
        let a = Tensor::ones((1, 4), DType::F32, &dev)?;
        let b = Tensor::zeros((1, 5), DType::F32, &dev)?;
        let y = crossfade_append(&a, &b, 3)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert_eq!(y, [1., 1., 0.5, 0., 0., 0.]);
        Ok(())
    }

    #[test]
    fn seeded_noise_is_reproducible_and_standard_normal() -> Result<()> {
        let dev = Device::Cpu;
        let a = Noise::seeded(5).window(1000, 64, &dev)?;
        let b = Noise::seeded(5).window(1000, 64, &dev)?;
        let c = Noise::seeded(6).window(1000, 64, &dev)?;
        let max = |t: Tensor| -> Result<f32> { Ok(t.abs()?.max_all()?.to_scalar::<f32>()?) };
        assert_eq!(max((&a - &b)?)?, 0.0);
        assert!(max((&a - &c)?)? > 0.0);
        let mean = a.mean_all()?.to_scalar::<f32>()?;
        let var = a.sqr()?.mean_all()?.to_scalar::<f32>()?;
        assert!(
            mean.abs() < 0.02 && (var - 1.0).abs() < 0.03,
            "mean {mean} var {var}"
        );
        Ok(())
    }
}
