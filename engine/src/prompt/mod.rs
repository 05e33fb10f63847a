//! Style transfer from a reference clip: separate it with HTDemucs, tokenize the first 10 s with
//! the mixed and separate tokenizers (LM prompt tokens `[1, 3, 250]`) and VAE-encode it (the
//! renderer's in-context latent), following `generate.py` (`Separator.run`, `CodecLM`'s prompt
//! handling) and the decoder's prompt branch.
//!
//! Deviations from the reference, all deliberate and deterministic:
//! - Demucs' random time shift and the VAE posterior noise are drawn from the caller's seed.
//! - A prompt not at 44.1 kHz is converted for Demucs with the torchaudio-style sinc resampler
//!   (the reference uses ffmpeg's resampler, which cannot be reproduced bit for bit).
//! - Mono is duplicated to stereo and only the first two channels of a multichannel clip are
//!   used (Demucs' `convert_audio_channels`); the reference's own mono path fails later.
//! - A silent (constant) clip is an error: the reference divides by its zero std and
//!   propagates NaNs.
//!
//! (Over 500 lines with its unit tests: the encoder's one flow, `PromptEncoder::encode_clip`, reads
//! best in one place; every model part it calls lives in its own file of this folder.)

pub mod audio_tokenizer;
pub mod auto_prompt;
pub mod demucs;
pub mod musicfm;
pub mod resample;
pub mod vae_encoder;
pub mod vq;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor};

use crate::io::weights::WeightFile;
use crate::paths::ModelPaths;
use crate::progress::{report, Progress, ProgressFn, Stage};
use crate::prompt::audio_tokenizer::{
    MixedTokenizer, SeparateTokenizer, StreamSpec, TokenizerConfig, VqConfig,
};
use crate::prompt::demucs::apply::{
    prompt_pair, shift_offset, vocal_stem, ApplyOptions, SeparateOptions,
};
use crate::prompt::demucs::{HtDemucs, HtDemucsConfig};
use crate::prompt::musicfm::MusicFmConfig;
use crate::prompt::resample::Resampler;
use crate::prompt::vae_encoder::VaeEncoder;
use crate::protocol::GenType;
use crate::render::vae::VaeConfig;
use crate::render::{PromptSet, RenderPrompt};

/// A checkpoint's stored shapes, as the `from_shapes` size readers take them.
fn shapes(file: &WeightFile) -> impl Fn(&str) -> Option<Vec<usize>> + '_ {
    move |name| file.shape(name).map(<[usize]>::to_vec)
}

/// The released LM's filler id for "no prompt" frames (its `special_id()`: 16384 codes + 1).
/// Other LMs set [`PromptConfig::pad_token`] from their own config.
const RELEASED_PAD_TOKEN: i64 = 16385;

/// Everything that sizes the prompt path.
#[derive(Debug, Clone)]
pub struct PromptConfig {
    pub tokenizer: TokenizerConfig,
    pub vq: VqConfig,
    /// MusicFM of the mixed tokenizer and of the separate tokenizer (same architecture).
    pub musicfm: MusicFmConfig,
    pub mixed: StreamSpec,
    pub vocal: StreamSpec,
    pub bgm: StreamSpec,
    pub demucs: HtDemucsConfig,
    pub vae: VaeConfig,
    /// Index of the vocal stem among Demucs' sources.
    pub vocal_stem: usize,
    /// Seconds of the clip that are used (`prompt_len`, 10).
    pub prompt_seconds: usize,
    /// Filler of the LM prompt tokens when the clip is shorter than the prompt: the LM's
    /// `LmConfig::special_id()`.
    pub pad_token: i64,
}

impl PromptConfig {
    /// The released models.
    pub fn real(vae: VaeConfig) -> Self {
        let (vocal, bgm) = SeparateTokenizer::real_streams();
        Self {
            tokenizer: TokenizerConfig::default(),
            vq: VqConfig::default(),
            musicfm: MusicFmConfig::real(),
            mixed: MixedTokenizer::real_stream(),
            vocal,
            bgm,
            demucs: HtDemucsConfig::real(),
            vae,
            vocal_stem: 3,
            prompt_seconds: 10,
            pad_token: RELEASED_PAD_TOKEN,
        }
    }

    /// The released prompt path with the sizes its checkpoints state (as [`Renderer::load`]
    /// does for the flow): HTDemucs from its state dict ([`HtDemucsConfig::from_shapes`]),
    /// MusicFM and the quantizers from the two tokenizer files
    /// ([`MusicFmConfig::from_shapes`], [`VqConfig::from_shapes`]); the VAE encoder's sizes
    /// come from its json (`vae`). Released checkpoints give exactly [`Self::real`].
    ///
    /// [`Renderer::load`]: crate::render::Renderer::load
    pub fn from_checkpoints(
        demucs: &WeightFile,
        mixed: &WeightFile,
        septoken: &WeightFile,
        vae: VaeConfig,
    ) -> Result<Self> {
        let mut cfg = Self::real(vae);
        cfg.demucs = HtDemucsConfig::from_shapes(&shapes(demucs)).with_context(|| {
            format!("reading the HTDemucs sizes of {}", demucs.path().display())
        })?;
        let musicfm = |f: &WeightFile| {
            MusicFmConfig::from_shapes(&shapes(f), "bestrq.model")
                .with_context(|| format!("reading the MusicFM sizes of {}", f.path().display()))
        };
        cfg.musicfm = musicfm(mixed)?;
        let sep = musicfm(septoken)?;
        ensure!(
            sep == cfg.musicfm,
            "the MusicFM encoders of {} and {} differ in size ({:?} vs {:?}); both tokenizers \
             must come from the same release",
            mixed.path().display(),
            septoken.path().display(),
            cfg.musicfm.conformer(),
            sep.conformer()
        );
        cfg.vq = VqConfig::from_shapes(&shapes(mixed), &cfg.mixed.rvq).with_context(|| {
            format!("reading the quantizer sizes of {}", mixed.path().display())
        })?;
        Ok(cfg)
    }

    /// LM prompt length in frames (`prompt_len · 25` = 250).
    pub fn token_frames(&self) -> usize {
        self.prompt_seconds * self.tokenizer.frame_rate as usize
    }

    /// Samples kept at 48 kHz (480,000).
    pub fn max_samples(&self) -> usize {
        self.prompt_seconds * self.tokenizer.sample_rate as usize
    }
}

/// The weight files of the prompt path.
#[derive(Debug, Clone)]
pub struct PromptFiles {
    pub mixed_tokenizer: PathBuf,
    pub septoken: PathBuf,
    pub demucs: PathBuf,
    pub vae: PathBuf,
}

impl PromptFiles {
    pub fn from_paths(paths: &ModelPaths) -> Self {
        Self {
            mixed_tokenizer: paths.mixed_tokenizer(),
            septoken: paths.septoken(),
            demucs: paths.demucs(),
            vae: paths.vae_ckpt(),
        }
    }
}

/// A prompt clip after separation: 48 kHz stereo `[2, N]`, N ≤ 10 s.
#[derive(Debug, Clone)]
pub struct SeparatedPrompt {
    pub full: Tensor,
    pub vocal: Tensor,
    pub bgm: Tensor,
}

/// Everything the pipeline can use from a reference clip.
#[derive(Debug, Clone)]
pub struct EncodedPrompt {
    /// `[1, 3, 250]` I64 LM prompt tokens (mixed, vocal, bgm), padded with [`PromptConfig::pad_token`].
    pub tokens: Tensor,
    /// The mixed-stem decoder prompt: latent `[1, 64, ceil(N/1920)]` and the separate
    /// tokenizer's codes `[1, 1, int(N/48000·25)+1]` (251 for 10 s).
    pub render: RenderPrompt,
    /// The separated 48 kHz clip, for building the vocal/bgm stems' prompts
    /// ([`PromptEncoder::render_prompt`] with the other part zeroed).
    pub separated: SeparatedPrompt,
}

/// What the prompt stage hands on: the LM's prompt tokens and the decoder prompt of each stem.
#[derive(Debug, Clone)]
pub struct JobPrompt {
    /// `[1, 3, 250]` I64: mixed, vocal and bgm tokens for the LM's prompt conditioner.
    pub tokens: Tensor,
    /// The decoder prompt of every stem the job renders (none for an auto prompt).
    pub render: PromptSet,
}

impl JobPrompt {
    /// LM tokens only (an auto prompt: the library holds no audio for the decoder).
    pub fn tokens_only(tokens: Tensor) -> Self {
        Self {
            tokens,
            render: PromptSet::none(),
        }
    }
}

/// `Stage::Prompt` progress over a known number of units.
struct Ticker {
    done: u64,
    total: u64,
    start: Instant,
}

impl Ticker {
    fn new(total: u64) -> Self {
        Self {
            done: 0,
            total,
            start: Instant::now(),
        }
    }

    fn tick(&mut self, progress: &mut ProgressFn<'_>) -> Result<()> {
        self.done += 1;
        let rate = self.done as f64 / self.start.elapsed().as_secs_f64().max(1e-9);
        report(
            progress,
            Progress {
                stage: Stage::Prompt,
                done: self.done,
                total: self.total,
                rate: Some(rate),
            },
        )?;
        Ok(())
    }
}

pub struct PromptEncoder {
    cfg: PromptConfig,
    demucs: HtDemucs,
    mixed: MixedTokenizer,
    separate: SeparateTokenizer,
    vae: VaeEncoder,
    device: Device,
}

/// Reads a weight file as an F32 VarBuilder, naming the file on failure.
fn open(path: &Path, what: &str, device: &Device) -> Result<candle_nn::VarBuilder<'static>> {
    Ok(WeightFile::open(path)
        .with_context(|| format!("loading the {what}"))?
        .var_builder(DType::F32, device))
}

impl PromptEncoder {
    /// Loads the prompt models of `paths`, sized by their checkpoints
    /// ([`PromptConfig::from_checkpoints`]; the VAE config from its json when present).
    pub fn load(paths: &ModelPaths, device: &Device) -> Result<Self> {
        let vae_json = paths.vae_config();
        let vae = if vae_json.is_file() {
            VaeConfig::from_json_file(&vae_json)?
        } else {
            VaeConfig::default()
        };
        let files = PromptFiles::from_paths(paths);
        let open = |path: &Path, what: &str| {
            WeightFile::open(path).with_context(|| format!("loading the {what}"))
        };
        let cfg = PromptConfig::from_checkpoints(
            &open(&files.demucs, "HTDemucs model")?,
            &open(&files.mixed_tokenizer, "mixed tokenizer")?,
            &open(&files.septoken, "separate tokenizer")?,
            vae,
        )?;
        Self::from_files(&files, &cfg, device)
    }

    pub fn from_files(files: &PromptFiles, cfg: &PromptConfig, device: &Device) -> Result<Self> {
        let demucs = HtDemucs::load(&cfg.demucs, open(&files.demucs, "HTDemucs model", device)?)
            .with_context(|| format!("loading HTDemucs from {}", files.demucs.display()))?;
        let mixed = MixedTokenizer::load(
            &cfg.tokenizer,
            &cfg.musicfm,
            &cfg.vq,
            &cfg.mixed,
            open(&files.mixed_tokenizer, "mixed tokenizer", device)?,
        )
        .with_context(|| {
            format!(
                "loading the mixed tokenizer from {}",
                files.mixed_tokenizer.display()
            )
        })?;
        let separate = SeparateTokenizer::load(
            &cfg.tokenizer,
            &cfg.musicfm,
            &cfg.vq,
            &cfg.vocal,
            &cfg.bgm,
            open(&files.septoken, "separate tokenizer", device)?,
        )
        .with_context(|| {
            format!(
                "loading the separate tokenizer from {}",
                files.septoken.display()
            )
        })?;
        let vae = VaeEncoder::load(
            WeightFile::open(&files.vae).context("loading the VAE encoder")?,
            &cfg.vae,
            device,
        )?;
        Ok(Self {
            cfg: cfg.clone(),
            demucs,
            mixed,
            separate,
            vae,
            device: device.clone(),
        })
    }

    /// Pads short clips' LM tokens with `pad` (the LM's `special_id()`).
    pub fn with_pad_token(mut self, pad: i64) -> Self {
        self.cfg.pad_token = pad;
        self
    }

    pub fn config(&self) -> &PromptConfig {
        &self.cfg
    }

    /// Everything a job needs from a clip given as channels of samples at `sample_rate` (any
    /// rate; mono or more channels accepted): the LM prompt tokens and the decoder prompt of
    /// every stem `gen_type` renders (`generate.py`: the mixed decode gets the clip; in
    /// `separate` mode the vocal (accompaniment) decode gets it with the accompaniment (vocals)
    /// zeroed; plain `vocal`/`bgm` renders get none). `seed` fixes Demucs' shift and the
    /// latents' posterior samples. Progress: `Stage::Prompt` per Demucs chunk, tokenizer segment
    /// and VAE encode; a `Break` stops at the next of them with [`crate::progress::Cancelled`].
    pub fn encode(
        &self,
        audio: &[Vec<f32>],
        sample_rate: u32,
        gen_type: GenType,
        seed: u64,
        progress: &mut ProgressFn<'_>,
    ) -> Result<JobPrompt> {
        let separate = gen_type == GenType::Separate;
        let (e, mut ticker) = self.encode_clip(audio, sample_rate, seed, separate, progress)?;
        let mixed = match gen_type {
            GenType::Mixed | GenType::Separate => Some(e.render.clone()),
            GenType::Vocal | GenType::Bgm => None,
        };
        let mut render = PromptSet {
            mixed,
            ..PromptSet::none()
        };
        if separate {
            let s = &e.separated;
            let mut part = |vocal: &Tensor, bgm: &Tensor| {
                self.render_prompt_with(vocal, bgm, seed, &mut || ticker.tick(progress))
            };
            render.vocal = Some(part(&s.vocal, &s.bgm.zeros_like()?)?);
            render.bgm = Some(part(&s.vocal.zeros_like()?, &s.bgm)?);
        }
        Ok(JobPrompt {
            tokens: e.tokens,
            render,
        })
    }

    /// The clip's LM tokens, mixed-stem decoder prompt and separated parts.
    pub fn encode_full(
        &self,
        audio: &[Vec<f32>],
        sample_rate: u32,
        seed: u64,
        progress: &mut ProgressFn<'_>,
    ) -> Result<EncodedPrompt> {
        Ok(self
            .encode_clip(audio, sample_rate, seed, false, progress)?
            .0)
    }

    /// [`Self::encode_full`], counting in its progress total the two stem prompts of `separate`
    /// mode when `stem_prompts`; returns the progress counter for them.
    fn encode_clip(
        &self,
        audio: &[Vec<f32>],
        sample_rate: u32,
        seed: u64,
        stem_prompts: bool,
        progress: &mut ProgressFn<'_>,
    ) -> Result<(EncodedPrompt, Ticker)> {
        let clip = validate_clip(audio, sample_rate, &self.device)?;
        let shift = shift_offset(seed, self.cfg.demucs.samplerate / 2);
        let opts = SeparateOptions {
            apply: ApplyOptions {
                shift_offset: shift,
                overlap: 0.25,
            },
            stem_index: self.cfg.vocal_stem,
            target_sample_rate: self.cfg.tokenizer.sample_rate,
            max_samples: self.cfg.max_samples(),
            prefix_only: true,
        };
        let demucs_rate = self.cfg.demucs.samplerate as u32;
        let target = self.cfg.tokenizer.sample_rate;
        let len = clip.dim(1)?;
        let len44 = Resampler::new(sample_rate, demucs_rate, &self.device)?.output_len(len);
        let len48 = Resampler::new(demucs_rate, target, &self.device)?
            .output_len(len44)
            .min(Resampler::new(sample_rate, target, &self.device)?.output_len(len))
            .min(self.cfg.max_samples());
        let keep44 = opts.separated_len(len44, demucs_rate, &self.device)?;
        let demucs_calls = self.demucs.chunks_prefix(len44, keep44, opts.apply);
        let separate_passes = self.separate.segments(len48, len48);
        let token_passes = self.mixed.segments(len48) + separate_passes;
        // Each stem prompt: one separate-tokenizer pass and one VAE encode.
        let stem_units = if stem_prompts {
            2 * (separate_passes + 1)
        } else {
            0
        };
        let mut ticker = Ticker::new((demucs_calls + token_passes + 1 + stem_units) as u64);

        let separated = {
            let mix44 = if sample_rate == demucs_rate {
                clip.clone()
            } else {
                Resampler::new(sample_rate, demucs_rate, &self.device)?.apply(&clip)?
            };
            let vocal44 = vocal_stem(&self.demucs, &mix44, &opts, &mut |_, _| {
                ticker.tick(progress)
            })
            .context("separating the prompt's vocals")?;
            let (vocal, bgm, full) = prompt_pair(&vocal44, demucs_rate, &clip, sample_rate, &opts)?;
            SeparatedPrompt { full, vocal, bgm }
        };

        let mixed = self
            .mixed
            .encode(&separated.full.unsqueeze(0)?, &mut || ticker.tick(progress))
            .context("tokenizing the prompt (mixed)")?
            .codes;
        let (vocal, bgm) = self
            .separate
            .encode(
                &separated.vocal.unsqueeze(0)?,
                &separated.bgm.unsqueeze(0)?,
                &mut || ticker.tick(progress),
            )
            .context("tokenizing the prompt (vocal / accompaniment)")?;
        let frames = self.cfg.token_frames();
        let tokens = Tensor::cat(
            &[
                fit_tokens(&mixed, frames, self.cfg.pad_token)?,
                fit_tokens(&vocal.codes, frames, self.cfg.pad_token)?,
                fit_tokens(&bgm.codes, frames, self.cfg.pad_token)?,
            ],
            1,
        )?;
        let latent = self.latent(&(&separated.vocal + &separated.bgm)?, seed)?;
        ticker.tick(progress)?;
        let encoded = EncodedPrompt {
            tokens,
            render: RenderPrompt {
                latent,
                codes_vocal: vocal.codes,
                codes_bgm: bgm.codes,
            },
            separated,
        };
        Ok((encoded, ticker))
    }

    /// The decoder's prompt for a vocal / accompaniment pair `[2, N]` at 48 kHz (the reference
    /// re-tokenizes the pair and VAE-encodes their sum). For the `vocal` stem pass the
    /// accompaniment as zeros, for `bgm` the vocals.
    pub fn render_prompt(&self, vocal: &Tensor, bgm: &Tensor, seed: u64) -> Result<RenderPrompt> {
        self.render_prompt_with(vocal, bgm, seed, &mut || Ok(()))
    }

    /// [`Self::render_prompt`], calling `tick` after each tokenizer segment and the VAE encode.
    fn render_prompt_with(
        &self,
        vocal: &Tensor,
        bgm: &Tensor,
        seed: u64,
        tick: &mut dyn FnMut() -> Result<()>,
    ) -> Result<RenderPrompt> {
        let (v, b) = self
            .separate
            .encode(&vocal.unsqueeze(0)?, &bgm.unsqueeze(0)?, tick)?;
        let n = vocal.dim(1)?.min(bgm.dim(1)?);
        let sum = (vocal.narrow(1, 0, n)? + bgm.narrow(1, 0, n)?)?;
        let latent = self.latent(&sum, seed)?;
        tick()?;
        Ok(RenderPrompt {
            latent,
            codes_vocal: v.codes,
            codes_bgm: b.codes,
        })
    }

    /// Seeded posterior sample `[1, 64, ceil(N/1920)]` of a 48 kHz stereo clip `[2, N]`.
    fn latent(&self, audio: &Tensor, seed: u64) -> Result<Tensor> {
        let posterior = self
            .vae
            .encode(&audio.unsqueeze(0)?)
            .context("VAE-encoding the prompt")?;
        posterior.sample(seed ^ 0x7a7e_0000_0000_0001)
    }
}

/// Cuts or pads (with `pad`) codes `[1, 1, T]` to `frames`.
pub fn fit_tokens(codes: &Tensor, frames: usize, pad: i64) -> Result<Tensor> {
    let t = codes.dim(2)?;
    let codes = codes.to_dtype(DType::I64)?;
    if t >= frames {
        Ok(codes.narrow(2, 0, frames)?)
    } else {
        let pad = Tensor::full(pad, (1, 1, frames - t), codes.device())?;
        Ok(Tensor::cat(&[&codes, &pad], 2)?)
    }
}

/// Shortest prompt accepted: 1 s. The reference takes any length (shorter clips are tiled by
/// the tokenizers), but under a second there is no style to transfer — 25 token frames, the
/// rest of the 250 padding — so such a clip is almost certainly a mistake (an empty capture, a
/// click).
pub const MIN_SECONDS: f64 = 1.0;

/// How much of a clip is read: its first 30 s. The reference uses the first 10 s (its
/// `Separator` keeps 480,000 samples at 48 kHz); HTDemucs' overlapping chunks reach about 14 s
/// of input for those, and the rest only feeds the mix's normalisation statistics, which the
/// reference takes over the whole file and this cap over the first 30 s. So a 10-minute file
/// costs what a 30 s one does, and files up to 30 s are handled exactly like the reference.
pub const READ_SECONDS: f64 = 30.0;

/// Peak-to-peak level under which a clip counts as silent: half a 16-bit step (−96 dBFS).
const SILENCE: f32 = 1.0 / 65536.0;

/// Checks a clip and returns its first [`READ_SECONDS`] as stereo `[2, L]` F32: mono is
/// duplicated, channels beyond two are dropped; empty, ragged, non-finite, too short or silent
/// input is an error.
pub fn validate_clip(audio: &[Vec<f32>], sample_rate: u32, device: &Device) -> Result<Tensor> {
    ensure!(!audio.is_empty(), "the prompt audio has no channels");
    ensure!(
        (1000..=768_000).contains(&sample_rate),
        "the prompt audio's sample rate {sample_rate} Hz is not an audio rate (1 kHz to 768 kHz)"
    );
    let len = audio[0].len();
    if let Some((i, c)) = audio.iter().enumerate().find(|(_, c)| c.len() != len) {
        bail!(
            "the prompt audio's channels differ in length (channel 0 has {len} samples, \
             channel {i} has {})",
            c.len()
        );
    }
    let seconds = len as f64 / sample_rate as f64;
    ensure!(
        seconds >= MIN_SECONDS,
        "the prompt audio is {seconds:.2} s long; at least {MIN_SECONDS} s is needed (the \
         reference uses the first 10 s; a chorus works best)"
    );
    let len = len.min((READ_SECONDS * sample_rate as f64) as usize);
    let chans: Vec<&[f32]> = match audio.len() {
        1 => vec![&audio[0][..len], &audio[0][..len]],
        _ => vec![&audio[0][..len], &audio[1][..len]],
    };
    for (i, c) in chans.iter().enumerate() {
        if let Some(pos) = c.iter().position(|v| !v.is_finite()) {
            bail!(
                "the prompt audio is not valid audio: channel {i} has a non-finite sample at {pos}"
            );
        }
    }
    let (lo, hi) = chans
        .iter()
        .flat_map(|c| c.iter())
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    ensure!(
        hi - lo >= SILENCE,
        "the prompt audio is silent (its level stays below −96 dBFS); give a clip with music \
         in it"
    );
    let data: Vec<f32> = chans.iter().flat_map(|c| c.iter().copied()).collect();
    Ok(Tensor::from_vec(data, (2, len), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prompt::demucs::HtDemucs;
    use crate::prompt::musicfm::MusicFm;

    #[test]
    fn tokens_are_cut_or_padded_to_the_prompt_length() {
        let dev = Device::Cpu;
        let long = Tensor::arange(0i64, 251, &dev)
            .unwrap()
            .reshape((1, 1, 251))
            .unwrap();
        let t = fit_tokens(&long, 250, 99).unwrap();
        assert_eq!(t.dims(), &[1, 1, 250]);
        assert_eq!(t.flatten_all().unwrap().to_vec1::<i64>().unwrap()[249], 249);
        let short = Tensor::new(&[[[5i64, 6]]], &dev).unwrap();
        let t = fit_tokens(&short, 4, 99).unwrap().flatten_all().unwrap();
        assert_eq!(t.to_vec1::<i64>().unwrap(), [5, 6, 99, 99]);
    }

    #[test]
    fn the_encoder_can_be_shared_across_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<PromptEncoder>();
        send_sync::<crate::prompt::auto_prompt::AutoPromptLibrary>();
    }

    /// A weight source that hands out zero views of whatever shape a loader asks for and
    /// records the names and shapes: the state dict a loader expects at some config.
    type Shapes = std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Vec<usize>>>>;
    #[derive(Default, Clone)]
    struct Recorder(Shapes);

    impl candle_nn::var_builder::SimpleBackend for Recorder {
        fn get(
            &self,
            shape: candle_core::Shape,
            name: &str,
            _: candle_nn::Init,
            dtype: DType,
            dev: &Device,
        ) -> candle_core::Result<Tensor> {
            self.0
                .lock()
                .unwrap()
                .insert(name.to_string(), shape.dims().to_vec());
            Tensor::zeros((), dtype, dev)?.broadcast_as(shape)
        }
        fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
            candle_core::bail!("{name}: shape unknown")
        }
        fn contains_tensor(&self, _: &str) -> bool {
            true
        }
    }

    fn record(
        load: impl FnOnce(candle_nn::VarBuilder<'static>),
    ) -> impl Fn(&str) -> Option<Vec<usize>> {
        let rec = Recorder::default();
        load(candle_nn::VarBuilder::from_backend(
            Box::new(rec.clone()),
            DType::F32,
            Device::Cpu,
        ));
        let map = rec.0.lock().unwrap().clone();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn released_widths_are_read_back_from_their_state_dicts() {
        let real = HtDemucsConfig::real();
        let shapes = record(|vb| {
            HtDemucs::load(&real, vb).unwrap();
        });
        assert_eq!(HtDemucsConfig::from_shapes(&shapes).unwrap(), real);

        let real = MusicFmConfig::real();
        let shapes = record(|vb| {
            // Every layer, plus the rotary table of the released head width.
            MusicFm::load(&real, real.encoder_depth, vb.pp("bestrq.model")).unwrap();
        });
        assert_eq!(
            shapes("bestrq.model.conformer.embed_positions.inv_freq"),
            Some(vec![32])
        );
        assert_eq!(
            MusicFmConfig::from_shapes(&shapes, "bestrq.model").unwrap(),
            real
        );

        let shapes = record(|vb| {
            let (v, b) = SeparateTokenizer::real_streams();
            let cfg = PromptConfig::real(VaeConfig::default());
            SeparateTokenizer::load(&cfg.tokenizer, &cfg.musicfm, &cfg.vq, &v, &b, vb).unwrap();
        });
        assert_eq!(
            VqConfig::from_shapes(&shapes, "rvq_bestrq_bgm_emb").unwrap(),
            VqConfig::default()
        );
        let err = VqConfig::from_shapes(&shapes, "rvq_other").unwrap_err();
        assert!(err.to_string().contains("rvq_other"), "{err}");
    }

    #[test]
    fn clips_become_stereo() {
        let dev = Device::Cpu;
        let mono = vec![(0..48_000)
            .map(|i| (i as f32 * 0.01).sin())
            .collect::<Vec<_>>()];
        let t = validate_clip(&mono, 48_000, &dev).unwrap();
        assert_eq!(t.dims(), &[2, 48_000]);
        let rows = t.to_vec2::<f32>().unwrap();
        assert_eq!(rows[0], rows[1]);
        let quad: Vec<Vec<f32>> = (0..4)
            .map(|c| vec![c as f32 * 0.1 + 0.05; 48_000])
            .collect();
        let mut quad = quad;
        quad[0][7] = 0.5;
        let rows = validate_clip(&quad, 48_000, &dev)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1][0], 0.15);
    }
}
