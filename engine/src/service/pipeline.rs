//! One generation job from inputs to files: lyrics + style (+ prompt) → LM tokens → stems on
//! disk, plus a JSON record of what was generated and how. Used by `songgen generate` and by the
//! engine service alike.
//!
//! The models sit behind [`SongModel`], so this module owns only the flow: validation before any
//! expensive work, per-stage seeds, cancellation, and writing results without losing or
//! silently replacing anything.
//!
//! (About 400 lines of code; the rest is the flow's unit tests with their stand-in model.)

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Tensor;
use serde::Serialize;

use crate::io::audio::{self, Audio, AudioError};
use crate::lyrics::{self, Language, LyricsError};
use crate::progress::{is_cancelled, Progress, ProgressFn};
use crate::prompt::{JobPrompt, READ_SECONDS};
use crate::protocol::{GenType, Job, SamplingOptions, Stage, Stem, StylePrompt};
use crate::render::PromptSet;
use crate::tags::{self, AUTO_PROMPT_GENRES};

/// Codec frames per second of the LM tokens.
pub const FRAME_RATE: u32 = 25;

/// A span of one stem's audio that is final: 48 kHz planar channels starting at sample frame
/// `start` of the stem. A stem's chunks come in order and without gaps.
#[derive(Debug, Clone, PartialEq)]
pub struct AudioChunk {
    pub stem: Stem,
    pub start: u64,
    pub channels: Vec<Vec<f32>>,
}

impl AudioChunk {
    pub fn frames(&self) -> usize {
        self.channels.iter().map(Vec::len).min().unwrap_or(0)
    }
}

/// Receives each [`AudioChunk`] as it becomes final; an error stops the job.
pub type AudioSink<'a> = dyn FnMut(&AudioChunk) -> anyhow::Result<()> + 'a;

/// The seeds of the LM and the renderer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seeds {
    pub lm: u64,
    pub render: u64,
}

/// What [`SongModel::generate`] returns besides the audio.
#[derive(Debug, Clone)]
pub struct Generated {
    /// `[1, 3, T]` i64, as [`SongModel::tokens`] returns them.
    pub tokens: Tensor,
    /// Seconds the LM ran.
    pub lm_s: f64,
}

/// Seconds of a style prompt the model uses (`prompt_len`).
const PROMPT_SECONDS: f64 = 10.0;

/// The LM's inputs for one job, as the user gave them (the model applies its own per-version
/// text rules, e.g. v2's `[Musicality-very-high]` prefix and `'.'` lyrics for `bgm`).
#[derive(Debug, Clone)]
pub struct LmInput {
    /// Normalised lyrics (model format).
    pub lyrics: String,
    /// Normalised style description.
    pub descriptions: Option<String>,
    /// `[1, 3, 250]` i64 prompt tokens.
    pub prompt_tokens: Option<Tensor>,
    pub gen_type: GenType,
}

/// The models a job needs. One instance is loaded once and serves every job.
///
/// What flows through it: [`Self::encode_prompt`] (or [`Self::auto_prompt`]) makes a
/// [`JobPrompt`]; its tokens go to [`Self::tokens`] (in [`LmInput::prompt_tokens`]) and its
/// per-stem decoder prompts to [`Self::render`]. Every stage reports progress through `progress`
/// and stops with [`crate::progress::Cancelled`] when it returns `Break`.
pub trait SongModel: Send {
    /// Model name for records and the service's `ready` event (e.g. `songgeneration_v2_large`).
    fn name(&self) -> String;
    /// Where it runs, in words (`cpu`, `cuda:0 bf16`).
    fn device(&self) -> String;
    /// Encodes a reference clip (any rate and channel count) into the LM's prompt tokens and the
    /// decoder prompt of every stem `gen_type` renders.
    fn encode_prompt(
        &mut self,
        audio: &Audio,
        gen_type: GenType,
        seed: u64,
        progress: &mut ProgressFn<'_>,
    ) -> anyhow::Result<JobPrompt>;
    /// Picks prompt tokens `[1,3,250]` from the auto-prompt library; `subset` is `zh` or `en`.
    /// The library holds no audio, so the decoder gets no prompt.
    fn auto_prompt(&mut self, genre: &str, subset: &str, seed: u64) -> anyhow::Result<JobPrompt>;
    /// Runs the LM: tokens `[1, 3, T]` i64 (mixed, vocal, bgm), cut at the end of the song.
    fn tokens(
        &mut self,
        input: &LmInput,
        sampling: &SamplingOptions,
        seed: u64,
        progress: &mut ProgressFn<'_>,
    ) -> anyhow::Result<Tensor>;
    /// Decodes tokens into the stems of `gen_type` (48 kHz stereo each), each stem with its
    /// decoder prompt from `prompts`.
    fn render(
        &mut self,
        tokens: &Tensor,
        prompts: &PromptSet,
        gen_type: GenType,
        seed: u64,
        progress: &mut ProgressFn<'_>,
    ) -> anyhow::Result<Vec<(Stem, Audio)>>;
    /// Runs the LM and renders its tokens, handing every stem's audio to `sink` in order, span
    /// by span as it becomes final (each stem's spans concatenated are exactly what
    /// [`Self::render`] of the returned tokens gives). Models that can, render while the LM
    /// runs; this default runs [`Self::tokens`], then [`Self::render`], and hands out each stem
    /// whole.
    fn generate(
        &mut self,
        input: &LmInput,
        sampling: &SamplingOptions,
        prompts: &PromptSet,
        seeds: Seeds,
        progress: &mut ProgressFn<'_>,
        sink: &mut AudioSink<'_>,
    ) -> anyhow::Result<Generated> {
        generate_batch(self, input, sampling, prompts, seeds, progress, sink)
    }
    /// The longest stem a job can produce, in sample frames (the LM's length limit), when known.
    fn max_frames(&self) -> Option<u64> {
        None
    }
}

/// [`SongModel::generate`] without pipelining: the LM, then [`SongModel::render`], each stem
/// handed to `sink` whole.
pub fn generate_batch<M: SongModel + ?Sized>(
    model: &mut M,
    input: &LmInput,
    sampling: &SamplingOptions,
    prompts: &PromptSet,
    seeds: Seeds,
    progress: &mut ProgressFn<'_>,
    sink: &mut AudioSink<'_>,
) -> anyhow::Result<Generated> {
    let started = Instant::now();
    let tokens = model.tokens(input, sampling, seeds.lm, progress)?;
    let lm_s = started.elapsed().as_secs_f64();
    for (stem, audio) in model.render(&tokens, prompts, input.gen_type, seeds.render, progress)? {
        sink(&AudioChunk {
            stem,
            start: 0,
            channels: audio.channels,
        })?;
    }
    Ok(Generated { tokens, lm_s })
}

/// Why a job failed. Input problems are found before any model runs.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Lyrics(#[from] LyricsError),
    #[error("invalid job: {0}")]
    Input(String),
    #[error(transparent)]
    Audio(#[from] AudioError),
    #[error("output folder {path}: {reason}")]
    OutputDir { path: PathBuf, reason: String },
    #[error("cancelled")]
    Cancelled,
    #[error("{stage:?} failed: {source:#}")]
    Model { stage: Stage, source: anyhow::Error },
}

/// Seconds spent per stage.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Timings {
    pub prompt_s: f64,
    /// The LM alone (it runs alongside the renderer).
    pub lm_s: f64,
    /// LM and renderer together, from the first LM step to the last audio.
    pub generate_s: f64,
    /// Rendering left after the LM finished: the part of the renderer pipelining cannot hide.
    pub render_s: f64,
    pub write_s: f64,
    pub total_s: f64,
    /// From the start of the job to the first final audio of any stem (`None`: no audio).
    pub first_audio_s: Option<f64>,
}

/// What a finished job wrote.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobOutput {
    pub stems: BTreeMap<String, PathBuf>,
    pub record: PathBuf,
    pub sample_rate: u32,
    /// Length of every stem in sample frames.
    pub frames: u64,
    /// Number of LM token frames (25 per second).
    pub token_frames: u64,
    pub seed: u64,
    pub timings: Timings,
    pub warnings: Vec<String>,
}

/// The JSON record written next to the stems (`<id>.json`).
#[derive(Debug, Serialize)]
struct Record<'a> {
    id: &'a str,
    songgen_version: &'static str,
    model: String,
    device: String,
    /// The reference's jsonl fields, as given.
    idx: &'a str,
    gt_lyric: &'a str,
    descriptions: Option<&'a str>,
    prompt: Option<&'a StylePrompt>,
    gen_type: GenType,
    /// What the model actually received.
    lyrics_normalized: &'a str,
    descriptions_normalized: Option<&'a str>,
    language: Option<Language>,
    seed: u64,
    sampling: &'a SamplingOptions,
    token_frames: u64,
    sample_rate: u32,
    frames: u64,
    stems: &'a BTreeMap<String, PathBuf>,
    /// FNV-1a of the LM tokens ([`tokens_digest`]).
    tokens_digest: String,
    timings: &'a Timings,
    warnings: &'a [String],
}

/// A job checked and normalised, ready to run.
#[derive(Debug, Clone)]
pub struct PreparedJob {
    pub id: String,
    pub job: Job,
    pub lyrics: String,
    pub language: Option<Language>,
    pub descriptions: Option<String>,
    pub warnings: Vec<String>,
    /// Final paths of every stem and of the record.
    pub stems: Vec<(Stem, PathBuf)>,
    pub record: PathBuf,
}

/// Checks everything that can be checked without a model: the id, lyrics, style tags, prompt
/// file, auto-prompt genre and the output folder (created if missing, must be writable, and must
/// not hold this id's files unless `overwrite`). Unknown style tags are warnings here; front-ends
/// that want them to be errors check [`tags::check_style`] themselves.
pub fn prepare(id: &str, job: &Job) -> Result<PreparedJob, PipelineError> {
    if let Err(why) = songgen_protocol::check_id(id) {
        return Err(PipelineError::Input(format!(
            "job id cannot be used as a file name: {why}"
        )));
    }
    if job.out_dir.as_os_str().is_empty() {
        return Err(PipelineError::Input(format!(
            "job `{id}` has no `out_dir`: say which folder its stems go to"
        )));
    }
    let mut warnings = Vec::new();
    let (lyrics, language) = if job.gen_type == GenType::Bgm && job.lyrics.trim().is_empty() {
        // Accompaniment only: the model ignores lyrics.
        (String::new(), None)
    } else {
        let n = lyrics::normalize(&job.lyrics)?;
        warnings.extend(n.warnings.iter().map(|w| format!("lyrics {w}")));
        (n.text, Some(n.language))
    };
    let descriptions = match job.descriptions.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(d) => {
            let style = tags::check_style(d);
            if !style.errors.is_empty() {
                return Err(PipelineError::Input(style.errors.join("; ")));
            }
            warnings.extend(style.unknown.iter().map(ToString::to_string));
            Some(style.normalized)
        }
    };
    match &job.prompt {
        Some(StylePrompt::Audio { path }) => {
            let seconds = audio::probe_wav(path)?.seconds;
            if descriptions.is_some() {
                warnings.push(format!(
                    "prompt audio and style tags are both given: the reference advises against \
                     it (the model may follow neither well when they disagree); drop the tags \
                     to let {} lead",
                    path.display()
                ));
            }
            if seconds < PROMPT_SECONDS {
                warnings.push(format!(
                    "prompt audio {} is {seconds:.1} s, shorter than 10 s: the model repeats it \
                     to fill its 10 s prompt (a chorus of 10 s or more works best)",
                    path.display()
                ));
            } else if seconds > PROMPT_SECONDS {
                warnings.push(format!(
                    "prompt audio {} is {seconds:.1} s: only its first 10 s are used (start the \
                     file at the chorus)",
                    path.display()
                ));
            }
        }
        Some(StylePrompt::Upload { .. }) => {
            return Err(PipelineError::Input(
                "an uploaded prompt clip is only accepted by `songgen serve` (which stores it \
                 before the job runs); pass the clip's path instead"
                    .into(),
            ))
        }
        Some(StylePrompt::Auto { genre }) if !AUTO_PROMPT_GENRES.contains(&genre.as_str()) => {
            return Err(PipelineError::Input(format!(
                "unknown auto-prompt genre `{genre}` (did you mean `{}`? known: {})",
                lyrics::closest(genre, &AUTO_PROMPT_GENRES),
                AUTO_PROMPT_GENRES.join(", ")
            )))
        }
        _ => {}
    }
    check_output_dir(&job.out_dir)?;
    let stems: Vec<(Stem, PathBuf)> = Stem::for_gen_type(job.gen_type)
        .iter()
        .map(|&k| (k, job.out_dir.join(format!("{id}{}.wav", k.suffix()))))
        .collect();
    let record = job.out_dir.join(format!("{id}.json"));
    if !job.overwrite {
        for path in stems.iter().map(|(_, p)| p).chain([&record]) {
            if path.exists() {
                return Err(AudioError::Exists { path: path.clone() }.into());
            }
        }
    }
    Ok(PreparedJob {
        id: id.to_string(),
        job: job.clone(),
        lyrics,
        language,
        descriptions,
        warnings,
        stems,
        record,
    })
}

fn check_output_dir(dir: &Path) -> Result<(), PipelineError> {
    let err = |reason: String| PipelineError::OutputDir {
        path: dir.to_path_buf(),
        reason,
    };
    if dir.exists() && !dir.is_dir() {
        return Err(err("is not a folder".into()));
    }
    std::fs::create_dir_all(dir).map_err(|e| err(format!("cannot create it ({e})")))?;
    let probe = dir.join(format!(".songgen-write-test-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| err(format!("is not writable ({e})")))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// Seeds of the random stages, derived from the job seed so one seed reproduces a whole job
/// while the stages draw independent streams.
pub fn stage_seed(seed: u64, stage: Stage) -> u64 {
    // SplitMix64 finaliser over (seed, stage).
    let mut z = seed ^ (stage as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Runs a prepared job. `progress` sees every stage's progress; returning `Break` cancels the job
/// at the next unit of work. Nothing is left under a final name by a cancelled or failed job.
pub fn run(
    model: &mut dyn SongModel,
    job: &PreparedJob,
    seed: u64,
    progress: &mut ProgressFn<'_>,
) -> Result<JobOutput, PipelineError> {
    run_streaming(model, job, seed, progress, &mut |_| {})
}

/// [`run`], handing every stem's audio to `on_chunk` as it becomes final (in order per stem;
/// the stems of `separate` fill in lockstep). Each stem is written as it arrives, to a hidden
/// temporary file in the output folder (a valid, growing WAV) that is renamed to its final
/// name once the job is complete.
pub fn run_streaming(
    model: &mut dyn SongModel,
    job: &PreparedJob,
    seed: u64,
    progress: &mut ProgressFn<'_>,
    on_chunk: &mut dyn FnMut(&AudioChunk),
) -> Result<JobOutput, PipelineError> {
    let started = Instant::now();
    let mut timings = Timings::default();
    // A stage error is the cancellation when its cause is `Cancelled` (the one error every
    // stage returns when `progress` says stop).
    let stage_err = |stage: Stage| {
        move |source: anyhow::Error| {
            if is_cancelled(&source) {
                PipelineError::Cancelled
            } else {
                PipelineError::Model { stage, source }
            }
        }
    };

    let mut warnings = job.warnings.clone();
    let t = Instant::now();
    let prompt_seed = stage_seed(seed, Stage::Prompt);
    let prompt = match &job.job.prompt {
        None => None,
        Some(StylePrompt::Audio { path }) => {
            // Only the start of a long file is read (see `prompt::READ_SECONDS`).
            let clip = audio::read_wav_prefix(path, READ_SECONDS)?;
            if clip.truncated {
                warnings.push(format!(
                    "prompt audio {} ends before the length its header gives (a cut-off file); \
                     its first {:.1} s are used",
                    path.display(),
                    clip.audio.frames() as f64 / clip.audio.sample_rate.max(1) as f64
                ));
            }
            let prompt = model
                .encode_prompt(&clip.audio, job.job.gen_type, prompt_seed, progress)
                .map_err(|e| e.context(format!("prompt audio {}", path.display())))
                .map_err(stage_err(Stage::Prompt))?;
            Some(prompt)
        }
        Some(StylePrompt::Upload { .. }) => {
            // `prepare` refuses it: the service stores an upload as a file first.
            return Err(PipelineError::Input(
                "an uploaded prompt clip must be stored by the service before the job runs".into(),
            ));
        }
        Some(StylePrompt::Auto { genre }) => {
            let subset = job.language.unwrap_or(Language::En).auto_prompt_subset();
            let prompt = model
                .auto_prompt(genre, subset, prompt_seed)
                .map_err(stage_err(Stage::Prompt))?;
            Some(prompt)
        }
    };
    timings.prompt_s = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let input = LmInput {
        lyrics: job.lyrics.clone(),
        descriptions: job.descriptions.clone(),
        prompt_tokens: prompt.as_ref().map(|p| p.tokens.clone()),
        gen_type: job.job.gen_type,
    };
    let mut writers = job
        .stems
        .iter()
        .map(|(stem, path)| {
            audio::WavStream::create(path, 2, audio::SAMPLE_RATE, job.job.overwrite)
                .map(|w| (*stem, w))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut first_audio = None;
    let mut sink = |c: &AudioChunk| -> anyhow::Result<()> {
        let Some((_, w)) = writers.iter_mut().find(|(s, _)| *s == c.stem) else {
            anyhow::bail!(
                "the renderer produced a {} stem this job does not have",
                c.stem.name()
            );
        };
        if c.start != w.frames() {
            anyhow::bail!(
                "internal: {} audio from frame {} after {} frames",
                c.stem.name(),
                c.start,
                w.frames()
            );
        }
        let channels: Vec<&[f32]> = c.channels.iter().map(Vec::as_slice).collect();
        w.append(&channels)?;
        first_audio.get_or_insert_with(|| started.elapsed().as_secs_f64());
        on_chunk(c);
        Ok(())
    };
    let no_prompt = PromptSet::none();
    let seeds = Seeds {
        lm: stage_seed(seed, Stage::Lm),
        render: stage_seed(seed, Stage::Render),
    };
    let generated = model
        .generate(
            &input,
            &job.job.sampling,
            prompt.as_ref().map_or(&no_prompt, |p| &p.render),
            seeds,
            progress,
            &mut sink,
        )
        .map_err(stage_err(Stage::Render))?;
    timings.generate_s = t.elapsed().as_secs_f64();
    timings.lm_s = generated.lm_s;
    timings.render_s = (timings.generate_s - generated.lm_s).max(0.0);
    timings.first_audio_s = first_audio;
    let token_frames = match generated.tokens.dims() {
        [1, 3, t] => *t as u64,
        dims => {
            return Err(PipelineError::Model {
                stage: Stage::Lm,
                source: anyhow::anyhow!("LM returned tokens of shape {dims:?}, expected [1, 3, T]"),
            })
        }
    };

    let t = Instant::now();
    let mut written = BTreeMap::new();
    let frames = writers.first().map_or(0, |(_, w)| w.frames());
    if let Some((stem, w)) = writers
        .iter()
        .find(|(_, w)| w.frames() != frames || frames == 0)
    {
        return Err(PipelineError::Model {
            stage: Stage::Render,
            source: anyhow::anyhow!(
                "the renderer produced {} frames of the {} stem, {frames} of the {}",
                w.frames(),
                stem.name(),
                writers[0].0.name()
            ),
        });
    }
    let total = writers.len() as u64;
    for (i, (kind, w)) in writers.into_iter().enumerate() {
        w.finish()?;
        let path = &job
            .stems
            .iter()
            .find(|(k, _)| *k == kind)
            .expect("a writer per stem")
            .1;
        written.insert(kind.name().to_string(), path.clone());
        let done = Progress {
            stage: Stage::Write,
            done: i as u64 + 1,
            total,
            rate: None,
        };
        if progress(done) == ControlFlow::Break(()) {
            return Err(PipelineError::Cancelled);
        }
    }
    timings.write_s = t.elapsed().as_secs_f64();
    timings.total_s = started.elapsed().as_secs_f64();

    let record = Record {
        id: &job.id,
        songgen_version: env!("CARGO_PKG_VERSION"),
        model: model.name(),
        device: model.device(),
        idx: &job.id,
        gt_lyric: &job.job.lyrics,
        descriptions: job.job.descriptions.as_deref(),
        prompt: job.job.prompt.as_ref(),
        gen_type: job.job.gen_type,
        lyrics_normalized: &job.lyrics,
        descriptions_normalized: job.descriptions.as_deref(),
        language: job.language,
        seed,
        sampling: &job.job.sampling,
        token_frames,
        sample_rate: audio::SAMPLE_RATE,
        frames,
        stems: &written,
        tokens_digest: tokens_digest(&generated.tokens).map_err(stage_err(Stage::Lm))?,
        timings: &timings,
        warnings: &warnings,
    };
    let text = serde_json::to_string_pretty(&record).expect("record serialises") + "\n";
    audio::write_text(&job.record, &text, job.job.overwrite)?;
    Ok(JobOutput {
        stems: written,
        record: job.record.clone(),
        sample_rate: audio::SAMPLE_RATE,
        frames,
        token_frames,
        seed,
        timings,
        warnings,
    })
}

/// FNV-1a (64-bit) of the LM tokens `[1, 3, T]` (little-endian i64s), as 16 hex digits: lets a
/// record show whether two jobs decoded the same tokens without storing them.
fn tokens_digest(tokens: &Tensor) -> anyhow::Result<String> {
    let values = tokens
        .to_dtype(candle_core::DType::I64)?
        .flatten_all()?
        .to_vec1::<i64>()?;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in values.iter().flat_map(|v| v.to_le_bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    Ok(format!("{h:016x}"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A stand-in model for testing the flow (not the models): `steps` LM "steps" (2 ms each)
    /// that report progress and can be cancelled, then 3 token frames rendered as sine stems.
    pub fn echo_model(steps: u64) -> crate::service::sine::SineModel {
        crate::service::sine::SineModel {
            seconds: 3.0 / f64::from(FRAME_RATE),
            steps,
            step_time: std::time::Duration::from_millis(2),
            log: None,
        }
    }

    pub fn job(out: &Path) -> Job {
        Job {
            lyrics: "[verse] hello there ; [chorus] la la".into(),
            descriptions: Some("Female, pop.".into()),
            prompt: None,
            gen_type: GenType::Separate,
            seed: None,
            sampling: SamplingOptions::default(),
            out_dir: out.to_path_buf(),
            overwrite: false,
        }
    }

    #[test]
    fn writes_stems_and_record_and_never_overwrites() {
        let out = std::env::temp_dir().join(format!("songgen-pipe-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        let mut model = echo_model(3);
        let prepared = prepare("take1", &job(&out)).unwrap();
        let result = run(&mut model, &prepared, 4, &mut |_| ControlFlow::Continue(())).unwrap();
        assert_eq!(result.token_frames, 3);
        assert_eq!(result.frames, 3 * 1920);
        let names: Vec<_> = result.stems.keys().cloned().collect();
        assert_eq!(names, ["bgm", "mixed", "vocal"]);
        assert!(out.join("take1_vocal.wav").is_file());
        let record: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("take1.json")).unwrap())
                .unwrap();
        assert_eq!(record["seed"], 4);
        assert_eq!(record["descriptions_normalized"], "female, pop.");
        let err = prepare("take1", &job(&out)).unwrap_err().to_string();
        assert!(
            err.contains("take1.wav") && err.contains("--overwrite"),
            "{err}"
        );

        // Cancelling during the LM writes nothing.
        let prepared = prepare("take2", &job(&out)).unwrap();
        let err = run(&mut model, &prepared, 4, &mut |p| {
            if p.stage == Stage::Lm && p.done == 2 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap_err();
        assert!(matches!(err, PipelineError::Cancelled), "{err}");
        assert!(!out.join("take2.wav").exists());
        std::fs::remove_dir_all(&out).unwrap();
    }

    #[test]
    fn bad_inputs_fail_before_any_model_runs() {
        let out = std::env::temp_dir().join(format!("songgen-pipe-bad-{}", std::process::id()));
        let mut j = job(&out);
        j.lyrics = "[verse]".into();
        assert!(matches!(prepare("a", &j), Err(PipelineError::Lyrics(_))));
        let mut j = job(&out);
        j.prompt = Some(StylePrompt::Auto {
            genre: "Jaz".into(),
        });
        let err = prepare("a", &j).unwrap_err().to_string();
        assert!(err.contains("did you mean `Jazz`"), "{err}");
        let mut j = job(&out);
        j.prompt = Some(StylePrompt::Audio {
            path: out.join("missing.wav"),
        });
        assert!(prepare("a", &j)
            .unwrap_err()
            .to_string()
            .contains("missing.wav"));
        assert!(prepare("../x", &job(&out)).is_err());
        let file = std::env::temp_dir().join(format!("songgen-pipe-file-{}", std::process::id()));
        std::fs::write(&file, b"").unwrap();
        let err = prepare("a", &job(&file)).unwrap_err().to_string();
        assert!(err.contains("is not a folder"), "{err}");
        std::fs::remove_file(file).unwrap();
        let _ = std::fs::remove_dir_all(&out);
    }
}
