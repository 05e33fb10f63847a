//! [`Renderer`]: the flow decoder and the VAE decoder run over a window schedule, with progress
//! and cancellation at every Euler step and VAE chunk; [`RenderStream`] decodes windows as the
//! LM produces their codes, all stems in lockstep.

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
use crate::render::schedule::plan_decode;
use crate::render::vae::{chunk_plan, VaeConfig, VaeDecoder};
use crate::render::{DecodePlan, PromptSet, RenderConfig, RenderPrompt, StemRender, Stems};

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
    /// Each stem's window noise comes from its own stream of `seed` ([`stem_noise_seed`]), so
    /// the stems can be decoded in lockstep. Out-of-range tokens are rejected before any
    /// compute. Progress: `Stage::Render` per Euler step (windows × steps, over all decodes),
    /// `Stage::Vae` per VAE chunk; a `Break` from `progress` stops at the next step or chunk with
    /// [`Cancelled`]. This is [`Self::stream`] fed every token at once.
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
        let mut stream = self.stream(prompts, gen_type, seed)?;
        stream.push(&vocal, &bgm)?;
        let mut parts: Vec<(Stem, Vec<Tensor>)> =
            stream.stems().iter().map(|&s| (s, Vec::new())).collect();
        let renders = stream.finish(progress, &mut |stem, _, audio| {
            if let Some((_, v)) = parts.iter_mut().find(|(s, _)| *s == stem) {
                v.push(audio.clone());
            }
            Ok(())
        })?;
        let num_samples = renders.first().map_or(0, |r| r.plan.schedule.target_len);
        let audio = parts
            .into_iter()
            .map(|(stem, spans)| Ok((stem, Tensor::cat(&spans, 1)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Stems {
            sample_rate: self.cfg.vae.sample_rate as u32,
            num_samples,
            audio,
        })
    }

    /// Starts an incremental decode of the stems of `gen_type` (see [`RenderStream`]), each
    /// stem with its prompt from `prompts` and its noise from `seed` ([`stem_noise_seed`]).
    pub fn stream(
        &self,
        prompts: &PromptSet,
        gen_type: GenType,
        seed: u64,
    ) -> Result<RenderStream<'_>> {
        let stems = Stem::for_gen_type(gen_type);
        let decodes = stems
            .iter()
            .map(|&stem| {
                let noise = Noise::seeded(stem_noise_seed(seed, stem, gen_type));
                self.stem_decode(stem, prompts.for_stem(stem), noise)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(RenderStream::new(self, decodes))
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
        noise: Noise,
        progress: &mut ProgressFn<'_>,
    ) -> Result<StemRender> {
        let mut stream = RenderStream::new(self, vec![self.stem_decode(stem, prompt, noise)?]);
        stream.push(vocal, bgm)?;
        let mut spans = Vec::new();
        let mut r = stream.finish(progress, &mut |_, _, audio| {
            spans.push(audio.clone());
            Ok(())
        })?;
        let mut out = r.pop().context("no stem rendered")?;
        out.audio = Tensor::cat(&spans, 1)?;
        Ok(out)
    }

    /// One stem's decode state: its prompt (codes and frames-major latent) and noise.
    fn stem_decode(
        &self,
        stem: Stem,
        prompt: Option<&RenderPrompt>,
        noise: Noise,
    ) -> Result<StemDecode> {
        let (prompt_codes, prompt_latent) = match prompt {
            Some(p) => {
                let pv = named_codes("prompt vocal codes", &p.codes_vocal)?;
                let pb = named_codes("prompt bgm codes", &p.codes_bgm)?;
                if pv.len() != pb.len() {
                    bail!(
                        "prompt vocal ({}) and bgm ({}) codes differ in length",
                        pv.len(),
                        pb.len()
                    );
                }
                let size = self.cfg.flow.codebook_size;
                check_codes("prompt vocal", &pv, size)?;
                check_codes("prompt bgm", &pb, size)?;
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
                ((pv, pb), Some(latent))
            }
            None => ((vec![], vec![]), None),
        };
        Ok(StemDecode {
            stem,
            prompt_codes,
            prompt_latent,
            latents: Vec::new(),
            tail: None,
            emitted: 0,
            noise,
        })
    }

    /// Flow-samples window `k` of `d` from its codes and adds its VAE audio to `d`'s tail.
    fn render_window(
        &self,
        d: &mut StemDecode,
        k: usize,
        vocal: &[i64],
        bgm: &[i64],
        counters: &mut Counters,
        progress: &mut ProgressFn<'_>,
    ) -> Result<()> {
        let w = &self.cfg.window;
        let ctx = if k == 0 {
            d.prompt_latent.clone()
        } else {
            let prev = &d.latents[k - 1];
            let n = prev.dim(2)?;
            Some(
                prev.narrow(2, n - w.overlap, w.overlap)?
                    .transpose(1, 2)?
                    .contiguous()?,
            )
        };
        let inputs = self.flow.window_inputs(vocal, bgm, ctx.as_ref())?;
        let x0 = d
            .noise
            .window(w.frames, self.cfg.flow.latent_dim, &self.device)?;
        // Report the step that just finished (none before the first).
        let mut on_step = |i: usize, _: &Tensor| {
            if i > 0 {
                counters.step(progress)
            } else {
                Ok(())
            }
        };
        let latent = self.flow.sample(&inputs, &x0, &mut on_step)?;
        counters.step(progress)?;
        let audio_latent = if k == 0 {
            let n = latent.dim(2)?;
            let keep = n - d.prompt_latent.as_ref().map_or(Ok(0), |l| l.dim(1))?;
            latent.narrow(2, n - keep, keep)?
        } else {
            latent.clone()
        };
        d.latents.push(latent);
        let audio = self
            .vae
            .decode_chunked(
                &audio_latent,
                self.cfg.vae_chunk.size,
                self.cfg.vae_chunk.overlap,
                &mut |_, _| counters.chunk(progress),
            )?
            .squeeze(0)?
            .to_device(&Device::Cpu)?;
        d.tail = Some(match d.tail.take() {
            None => audio,
            Some(acc) => crossfade_append(&acc, &audio, w.crossfade_samples)?,
        });
        Ok(())
    }

    /// The code streams one stem decodes (`codeclm.generate_audio`): `mixed` both, `vocal`
    /// (`bgm`) with the other stream replaced by its silence code.
    fn substitute(&self, stem: Stem, vocal: &[i64], bgm: &[i64]) -> (Vec<i64>, Vec<i64>) {
        let w = &self.cfg.window;
        match stem {
            Stem::Mixed => (vocal.to_vec(), bgm.to_vec()),
            Stem::Vocal => (vocal.to_vec(), vec![w.silence_code_bgm; bgm.len()]),
            Stem::Bgm => (vec![w.silence_code_vocal; vocal.len()], bgm.to_vec()),
        }
    }

    fn work_units(&self, windows: usize, first_latent: usize) -> (u64, u64) {
        let steps = (windows * self.cfg.flow.num_steps) as u64;
        let c = self.cfg.vae_chunk;
        let first = chunk_plan(first_latent, c.size, c.overlap).len();
        let rest = chunk_plan(self.cfg.window.frames, c.size, c.overlap).len();
        let chunks = if windows == 0 {
            0
        } else {
            first + (windows - 1) * rest
        };
        (steps, chunks as u64)
    }
}

/// The noise seed of one stem's decode: the job's render seed for the first stem of
/// `gen_type`, an independent stream derived from it for the other stems of `separate`, so the
/// stems' windows can be decoded in any interleaving (lockstep while streaming) with the same
/// result.
pub fn stem_noise_seed(seed: u64, stem: Stem, gen_type: GenType) -> u64 {
    let first = Stem::for_gen_type(gen_type).first() == Some(&stem);
    if first {
        return seed;
    }
    // SplitMix64 finaliser over (seed, stem).
    let mut z = seed ^ (stem as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Progress counters across all decodes of one render.
struct Counters {
    steps_total: u64,
    steps_done: u64,
    chunks_total: u64,
    chunks_done: u64,
    started: Instant,
}

impl Counters {
    fn report(
        &self,
        progress: &mut ProgressFn<'_>,
        stage: Stage,
        done: u64,
        total: u64,
    ) -> Result<(), Cancelled> {
        let secs = self.started.elapsed().as_secs_f64();
        let rate = (secs > 0.0).then(|| done as f64 / secs);
        report(
            progress,
            Progress {
                stage,
                done,
                total: total.max(done),
                rate,
            },
        )
    }

    fn step(&mut self, progress: &mut ProgressFn<'_>) -> Result<(), Cancelled> {
        self.steps_done += 1;
        self.report(progress, Stage::Render, self.steps_done, self.steps_total)
    }

    fn chunk(&mut self, progress: &mut ProgressFn<'_>) -> Result<(), Cancelled> {
        self.chunks_done += 1;
        self.report(progress, Stage::Vae, self.chunks_done, self.chunks_total)
    }
}

/// One stem of a [`RenderStream`].
struct StemDecode {
    stem: Stem,
    /// Prompt codes (vocal, bgm) prepended to the song's; empty without a prompt.
    prompt_codes: (Vec<i64>, Vec<i64>),
    /// `[1, P, latent]` raw, frames-major.
    prompt_latent: Option<Tensor>,
    /// Every rendered window's latent.
    latents: Vec<Tensor>,
    /// Assembled audio `[2, n]` from sample `emitted` on: what is not final yet.
    tail: Option<Tensor>,
    /// Samples handed out so far.
    emitted: usize,
    noise: Noise,
}

/// Where a final span of audio goes: (stem, first sample, `[2, n]` F32 on the CPU).
pub type SpanSink<'a> = dyn FnMut(Stem, usize, &Tensor) -> Result<()> + 'a;

/// An incremental decode: song codes arrive in order ([`Self::push`]); every window whose codes
/// are all real song codes (so it does not depend on where the song ends) is rendered by
/// [`Self::render_ready`], for every stem in lockstep; once the song's end is known,
/// [`Self::finish`] plans the rest of the schedule (the tiling pad of the last windows) and
/// renders it.
///
/// Audio is handed out as soon as it is final: after window `k`, everything except the
/// cross-fade region that window `k + 1` will blend over. Concatenated, the spans of a stem are
/// exactly what a decode of all codes at once gives: the windows, their noise (one stream per
/// stem) and their order are the same, only the time they run differs.
pub struct RenderStream<'r> {
    r: &'r Renderer,
    decodes: Vec<StemDecode>,
    /// Song codes so far (the caller's vocal and bgm streams, before any substitution).
    vocal: Vec<i64>,
    bgm: Vec<i64>,
    /// Windows rendered for every stem.
    windows_done: usize,
    counters: Counters,
    stems: Vec<Stem>,
}

impl<'r> RenderStream<'r> {
    fn new(r: &'r Renderer, decodes: Vec<StemDecode>) -> Self {
        let stems = decodes.iter().map(|d| d.stem).collect();
        Self {
            r,
            decodes,
            vocal: Vec::new(),
            bgm: Vec::new(),
            windows_done: 0,
            counters: Counters {
                steps_total: 0,
                steps_done: 0,
                chunks_total: 0,
                chunks_done: 0,
                started: Instant::now(),
            },
            stems,
        }
    }

    /// The stems, in decode order.
    pub fn stems(&self) -> &[Stem] {
        &self.stems
    }

    /// Song code frames received so far.
    pub fn song_frames(&self) -> usize {
        self.vocal.len()
    }

    /// Appends song codes (out-of-range codes are rejected here, before any compute).
    pub fn push(&mut self, vocal: &[i64], bgm: &[i64]) -> Result<()> {
        if vocal.len() != bgm.len() {
            bail!(
                "vocal ({}) and bgm ({}) streams differ in length",
                vocal.len(),
                bgm.len()
            );
        }
        let size = self.r.cfg.flow.codebook_size;
        check_codes("vocal", vocal, size)?;
        check_codes("bgm", bgm, size)?;
        self.vocal.extend_from_slice(vocal);
        self.bgm.extend_from_slice(bgm);
        Ok(())
    }

    /// Windows whose codes are all known song codes.
    fn ready_windows(&self) -> usize {
        let w = &self.r.cfg.window;
        let p = self.decodes.first().map_or(0, |d| d.prompt_codes.0.len());
        let known = p + self.vocal.len();
        if known < w.frames {
            0
        } else {
            (known - w.frames) / w.hop + 1
        }
    }

    /// Renders every window the codes so far complete (all stems, window by window) and hands
    /// out the audio that became final.
    pub fn render_ready(
        &mut self,
        progress: &mut ProgressFn<'_>,
        sink: &mut SpanSink<'_>,
    ) -> Result<()> {
        let ready = self.ready_windows();
        if ready <= self.windows_done {
            return Ok(());
        }
        // Totals so far: the windows known to exist (the real total comes with `finish`).
        self.set_totals(ready);
        for k in self.windows_done..ready {
            self.render_all(k, None, true, progress, sink)?;
            self.windows_done = k + 1;
        }
        Ok(())
    }

    /// The song has ended: renders the remaining windows over the final (tiled) schedule and
    /// hands out the rest of the audio, cut to the reference's length. Returns each stem's
    /// window latents and plan (its `audio` is empty: the audio went to `sink`).
    pub fn finish(
        mut self,
        progress: &mut ProgressFn<'_>,
        sink: &mut SpanSink<'_>,
    ) -> Result<Vec<StemRender>> {
        let r = self.r;
        let plans = self
            .decodes
            .iter()
            .map(|d| {
                let (v, b) = r.substitute(d.stem, &self.vocal, &self.bgm);
                let p_latent = d.prompt_latent.as_ref().map_or(Ok(0), |l| l.dim(1))?;
                let prompt = (!d.prompt_codes.0.is_empty()).then(|| d.prompt_codes.clone());
                plan_decode(&r.cfg, &v, &b, prompt, p_latent)
            })
            .collect::<Result<Vec<DecodePlan>>>()?;
        let windows = plans.first().map_or(0, |p| p.schedule.starts.len());
        if windows < self.windows_done {
            bail!(
                "internal: {} windows rendered early, but the schedule has {windows}",
                self.windows_done
            );
        }
        self.set_totals(windows);
        for k in self.windows_done..windows {
            self.render_all(k, Some(&plans), k + 1 < windows, progress, sink)?;
            self.windows_done = k + 1;
        }
        let mut out = Vec::with_capacity(plans.len());
        for (d, plan) in self.decodes.iter_mut().zip(plans) {
            let target = plan.schedule.target_len;
            let tail = d.tail.take().context("the schedule has no windows")?;
            if target < d.emitted {
                bail!(
                    "internal: {} samples handed out, but the song has {target}",
                    d.emitted
                );
            }
            let n = (target - d.emitted).min(tail.dim(1)?);
            if n > 0 {
                sink(d.stem, d.emitted, &tail.narrow(1, 0, n)?)?;
                d.emitted += n;
            }
            out.push(StemRender {
                audio: tail.narrow(1, 0, 0)?,
                window_latents: std::mem::take(&mut d.latents),
                plan,
            });
        }
        Ok(out)
    }

    fn set_totals(&mut self, windows: usize) {
        let w = &self.r.cfg.window;
        let mut steps = 0;
        let mut chunks = 0;
        for d in &self.decodes {
            let p_latent = d
                .prompt_latent
                .as_ref()
                .map_or(0, |l| l.dim(1).unwrap_or(0));
            let (s, c) = self.r.work_units(windows, w.frames - p_latent);
            steps += s;
            chunks += c;
        }
        self.counters.steps_total = steps;
        self.counters.chunks_total = chunks;
    }

    /// Window `k` of every stem; codes from the final `plans`, else straight from the song
    /// codes (the window lies within them). `more`: another window follows, so all but the
    /// cross-fade region it blends over is final.
    fn render_all(
        &mut self,
        k: usize,
        plans: Option<&[DecodePlan]>,
        more: bool,
        progress: &mut ProgressFn<'_>,
        sink: &mut SpanSink<'_>,
    ) -> Result<()> {
        let r = self.r;
        let w = r.cfg.window;
        let start = k * w.hop;
        for (i, d) in self.decodes.iter_mut().enumerate() {
            let (v, b) = match plans {
                Some(plans) => (
                    plans[i].vocal[start..start + w.frames].to_vec(),
                    plans[i].bgm[start..start + w.frames].to_vec(),
                ),
                None => {
                    let (sv, sb) = r.substitute(d.stem, &self.vocal, &self.bgm);
                    let (pv, pb) = &d.prompt_codes;
                    let at = |prompt: &[i64], song: &[i64]| -> Vec<i64> {
                        (start..start + w.frames)
                            .map(|j| {
                                if j < prompt.len() {
                                    prompt[j]
                                } else {
                                    song[j - prompt.len()]
                                }
                            })
                            .collect()
                    };
                    (at(pv, &sv), at(pb, &sb))
                }
            };
            r.render_window(d, k, &v, &b, &mut self.counters, progress)?;
            if more {
                // Everything but the cross-fade region of the next window is final.
                let tail = d.tail.take().context("window rendered no audio")?;
                let n = tail.dim(1)?;
                let keep = w.crossfade_samples.min(n);
                if n > keep {
                    sink(d.stem, d.emitted, &tail.narrow(1, 0, n - keep)?)?;
                    d.emitted += n - keep;
                }
                d.tail = Some(tail.narrow(1, n - keep, keep)?);
            }
        }
        Ok(())
    }
}
