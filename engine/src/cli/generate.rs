//! `songgen generate`: one song from command-line options, or a batch from a JSONL file in the
//! reference's input format.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::Deserialize;
use songgen_engine::paths::ModelPaths;
use songgen_engine::progress::Progress;
use songgen_engine::protocol::{GenType, Job, SamplingOptions, Stage, StylePrompt};
use songgen_engine::service::pipeline::{self, PipelineError};
use songgen_engine::service::{models, server as service};
use songgen_engine::tags;

use super::device::{self, DTypeChoice, DeviceChoice};
use super::{license, CliResult, Failure, ModelArgs};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Lyrics: a file, or the text itself (`[verse] line. line ; [chorus] ...`).
    #[arg(
        long,
        value_name = "FILE|TEXT",
        required_unless_present = "jsonl",
        conflicts_with = "jsonl"
    )]
    pub lyrics: Option<String>,
    /// Style tags, e.g. "female, dark, pop, sad, piano and drums, the bpm is 125".
    #[arg(long, value_name = "TEXT")]
    pub tags: Option<String>,
    /// Accept style tags outside the known vocabularies (`songgen tags`).
    #[arg(long)]
    pub free_tags: bool,
    /// A reference clip (WAV, first 10 s used) whose style the song follows.
    #[arg(long, value_name = "FILE", conflicts_with = "auto_prompt")]
    pub prompt_audio: Option<PathBuf>,
    /// A genre of the auto-prompt library instead of a clip (Pop, Rock, Jazz, ..., Auto).
    #[arg(long, value_name = "GENRE")]
    pub auto_prompt: Option<String>,
    /// A batch in the reference's JSONL format: one object per line with `idx`, `gt_lyric` and
    /// optional `descriptions`, `prompt_audio_path`, `auto_prompt_audio_type`.
    #[arg(long, value_name = "FILE")]
    pub jsonl: Option<PathBuf>,
    /// What to render.
    #[arg(long = "type", value_enum, default_value = "mixed")]
    pub gen_type: TypeArg,
    /// Seed of every random choice; the same seed and inputs give the same song.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Classifier-free guidance coefficient.
    #[arg(long, default_value_t = SamplingOptions::default().cfg_coef)]
    pub cfg: f64,
    /// Sampling temperature.
    #[arg(long, default_value_t = SamplingOptions::default().temperature)]
    pub temperature: f64,
    /// Top-k of the mixed token stream.
    #[arg(long, default_value_t = SamplingOptions::default().top_k)]
    pub top_k: usize,
    /// Repetition-penalty window in steps.
    #[arg(long, default_value_t = SamplingOptions::default().record_window)]
    pub record_window: usize,
    /// Repetition-penalty divisor.
    #[arg(long, default_value_t = SamplingOptions::default().penalty)]
    pub penalty: f64,
    /// Take the most likely token everywhere instead of sampling.
    #[arg(long)]
    pub greedy: bool,
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceChoice,
    #[arg(long, value_enum, default_value = "auto")]
    pub dtype: DTypeChoice,
    #[command(flatten)]
    pub lm: device::LmArgs,
    /// Output folder.
    #[arg(long, value_name = "DIR", default_value = "songgen-output")]
    pub out: PathBuf,
    /// Name of the output files for a single song [default: song-<seed>].
    #[arg(long, conflicts_with = "jsonl")]
    pub id: Option<String>,
    /// Replace existing outputs with the same names.
    #[arg(long)]
    pub overwrite: bool,
    /// Accept the model weights' licence without asking (scripts, CI).
    #[arg(long)]
    pub accept_license: bool,
    /// No progress bars.
    #[arg(long, short)]
    pub quiet: bool,
    /// Run the jobs in the shared local engine (`songgen serve --socket`, the one the plugin
    /// uses) instead of loading the model here [default socket: the per-user one].
    #[arg(long, value_name = "SOCKET", num_args = 0..=1, default_missing_value = "")]
    pub engine: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TypeArg {
    Mixed,
    Vocal,
    Bgm,
    Separate,
}

impl From<TypeArg> for GenType {
    fn from(t: TypeArg) -> Self {
        match t {
            TypeArg::Mixed => GenType::Mixed,
            TypeArg::Vocal => GenType::Vocal,
            TypeArg::Bgm => GenType::Bgm,
            TypeArg::Separate => GenType::Separate,
        }
    }
}

/// One line of the reference's JSONL input.
#[derive(Debug, Deserialize)]
struct JsonlItem {
    idx: serde_json::Value,
    #[serde(default)]
    gt_lyric: String,
    #[serde(default)]
    descriptions: Option<String>,
    #[serde(default)]
    prompt_audio_path: Option<PathBuf>,
    #[serde(default)]
    auto_prompt_audio_type: Option<String>,
}

pub fn run(args: Args) -> CliResult {
    let jobs = build_jobs(&args)?;
    // Everything is validated before the (slow) model load.
    let prepared = jobs
        .iter()
        .map(|(id, job, origin)| {
            pipeline::prepare(id, job).map_err(|e| Failure::input(anyhow!("{origin}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    for p in &prepared {
        for w in &p.warnings {
            eprintln!("warning: {}: {w}", p.id);
        }
    }
    if let Some(socket) = &args.engine {
        return run_in_engine(&args, socket, &prepared);
    }
    license::ensure_accepted(args.accept_license)?;
    let model_dir = args.model.model_dir();
    let paths =
        ModelPaths::resolve(&model_dir, args.model.runtime.as_deref()).map_err(Failure::input)?;
    let (dev, dtype) = device::select(args.device, args.dtype)?;

    let cancel = Arc::new(AtomicBool::new(false));
    install_ctrlc(cancel.clone());
    let bars = Bars::new(args.quiet);
    let mut model = {
        let spinner = bars.spinner(format!("loading {}", paths.model_dir.display()));
        let loaded = models::load_with(&paths, &dev, &args.lm.options(dtype));
        spinner.finish_and_clear();
        loaded.map_err(Failure::run)?
    };
    eprintln!("model {} on {}", model.name(), model.device());

    for p in &prepared {
        let seed = p.job.seed.unwrap_or_else(service::random_seed);
        let result = {
            let mut progress = |pr: Progress| {
                bars.update(&p.id, pr);
                if cancel.load(Ordering::SeqCst) {
                    std::ops::ControlFlow::Break(())
                } else {
                    std::ops::ControlFlow::Continue(())
                }
            };
            let job_started = std::time::Instant::now();
            let mut first_audio = true;
            let mut on_chunk = |c: &pipeline::AudioChunk| {
                if std::mem::take(&mut first_audio) {
                    bars.println(format!(
                        "{}: first audio ({}) after {:.1} s, written as it renders to {}",
                        p.id,
                        c.stem.name(),
                        job_started.elapsed().as_secs_f64(),
                        args.out.display()
                    ));
                }
            };
            pipeline::run_streaming(model.as_mut(), p, seed, &mut progress, &mut on_chunk)
        };
        bars.clear();
        match result {
            Ok(out) => {
                println!(
                    "{}: {:.1} s of audio, seed {}, {:.1} s (lm {:.1} s, render after the lm {:.1} s, first audio after {:.1} s)",
                    p.id,
                    out.frames as f64 / out.sample_rate as f64,
                    out.seed,
                    out.timings.total_s,
                    out.timings.lm_s,
                    out.timings.render_s,
                    out.timings.first_audio_s.unwrap_or(out.timings.total_s)
                );
                for path in out.stems.values().chain([&out.record]) {
                    println!("  {}", path.display());
                }
            }
            Err(PipelineError::Cancelled) => return Err(Failure::cancelled()),
            Err(e @ (PipelineError::Model { .. } | PipelineError::Audio(_))) => {
                return Err(Failure::run(anyhow!("{}: {e}", p.id)))
            }
            Err(e) => return Err(Failure::input(anyhow!("{}: {e}", p.id))),
        }
    }
    Ok(())
}

/// `--engine`: the jobs go to the shared local engine, one after the other; its events are
/// shown as the local run shows its own.
#[cfg(unix)]
fn run_in_engine(
    args: &Args,
    socket: &std::path::Path,
    prepared: &[pipeline::PreparedJob],
) -> CliResult {
    use songgen_engine::protocol::{Event, Request};
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixStream;

    let socket = if socket.as_os_str().is_empty() {
        songgen_engine::paths::engine_socket()
    } else {
        socket.to_path_buf()
    };
    let stream = UnixStream::connect(&socket).map_err(|e| {
        Failure::input(anyhow!(
            "no shared engine at {} ({e}): start one with `songgen serve --socket`, or leave out --engine",
            socket.display()
        ))
    })?;
    let mut writer = stream.try_clone().map_err(Failure::run)?;
    let mut events = BufReader::new(stream).lines();
    let mut next = || -> Result<Event, Failure> {
        let line = events
            .next()
            .ok_or_else(|| Failure::run(anyhow!("the shared engine closed the connection")))?
            .map_err(Failure::run)?;
        serde_json::from_str(&line).map_err(|e| Failure::run(anyhow!("engine sent `{line}`: {e}")))
    };
    match next()? {
        Event::Ready { model, device, .. } => {
            eprintln!(
                "using the shared engine at {}: model {model} on {device}",
                socket.display()
            )
        }
        other => return Err(Failure::run(anyhow!("engine greeted with {other:?}"))),
    }
    let cancel = Arc::new(AtomicBool::new(false));
    install_ctrlc(cancel.clone());
    let bars = Bars::new(args.quiet);
    let absolute = |p: &std::path::Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    for p in prepared {
        // The engine runs in another folder: every path it gets is absolute.
        let mut job = p.job.clone();
        job.out_dir = absolute(&job.out_dir);
        if let Some(StylePrompt::Audio { path }) = &mut job.prompt {
            *path = absolute(path);
        }
        let mut send = |req: &Request| -> Result<(), Failure> {
            let line = serde_json::to_string(req).map_err(Failure::run)? + "\n";
            writer.write_all(line.as_bytes()).map_err(Failure::run)
        };
        send(&Request::Generate {
            id: p.id.clone(),
            job,
        })?;
        let mut cancel_sent = false;
        loop {
            if cancel.load(Ordering::SeqCst) && !cancel_sent {
                send(&Request::Cancel { id: p.id.clone() })?;
                cancel_sent = true;
            }
            match next()? {
                Event::Progress {
                    id,
                    stage,
                    done,
                    total,
                    rate,
                } if id == p.id => bars.update(
                    &id,
                    Progress {
                        stage,
                        done,
                        total,
                        rate,
                    },
                ),
                Event::Done {
                    id,
                    stems,
                    frames,
                    sample_rate,
                    seed,
                } if id == p.id => {
                    bars.clear();
                    println!(
                        "{id}: {:.1} s of audio, seed {seed} (shared engine)",
                        frames as f64 / f64::from(sample_rate.max(1))
                    );
                    for path in stems.values().chain([&p.record]) {
                        println!("  {}", path.display());
                    }
                    break;
                }
                Event::Cancelled { id } if id == p.id => {
                    bars.clear();
                    return Err(Failure::cancelled());
                }
                Event::Error { id, message } if id.as_deref() == Some(&p.id) || id.is_none() => {
                    bars.clear();
                    return Err(Failure::input(anyhow!("{}: {message}", p.id)));
                }
                _ => {}
            }
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn run_in_engine(_: &Args, _: &std::path::Path, _: &[pipeline::PreparedJob]) -> CliResult {
    Err(Failure::input(anyhow!("--engine needs Unix sockets")))
}

/// The jobs of this invocation, each with where it came from (for error messages).
fn build_jobs(args: &Args) -> Result<Vec<(String, Job, String)>, Failure> {
    let sampling = SamplingOptions {
        cfg_coef: args.cfg,
        temperature: args.temperature,
        top_k: args.top_k,
        record_window: args.record_window,
        penalty: args.penalty,
        use_sampling: !args.greedy,
    };
    if !(args.temperature > 0.0) || args.top_k == 0 || !(args.penalty > 0.0) {
        return Err(Failure::input(anyhow!(
            "--temperature and --penalty must be positive and --top-k at least 1"
        )));
    }
    let job = |lyrics: String, descriptions: Option<String>, prompt: Option<StylePrompt>| -> Job {
        Job {
            lyrics,
            descriptions,
            prompt,
            gen_type: args.gen_type.into(),
            seed: args.seed,
            sampling,
            out_dir: args.out.clone(),
            overwrite: args.overwrite,
        }
    };
    if let Some(jsonl) = &args.jsonl {
        return read_jsonl(jsonl, &job);
    }
    let lyrics_arg = args.lyrics.as_deref().unwrap_or_default();
    let lyrics = read_lyrics(lyrics_arg)?;
    let descriptions = match &args.tags {
        Some(t) => {
            let check = tags::check_style(t);
            if !check.errors.is_empty() || (!args.free_tags && !check.unknown.is_empty()) {
                return Err(Failure::input(anyhow!(
                    "--tags: {}\n(use --free-tags to keep unknown tags; `songgen tags` lists the known ones)",
                    check.report()
                )));
            }
            Some(t.clone())
        }
        None => None,
    };
    let prompt = match (&args.prompt_audio, &args.auto_prompt) {
        (Some(path), _) => Some(StylePrompt::Audio { path: path.clone() }),
        (None, Some(genre)) => Some(StylePrompt::Auto {
            genre: genre.clone(),
        }),
        (None, None) => None,
    };
    let id = match (&args.id, args.seed) {
        (Some(id), _) => id.clone(),
        (None, Some(seed)) => format!("song-{seed}"),
        (None, None) => format!(
            "song-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default()
        ),
    };
    Ok(vec![(
        id,
        job(lyrics, descriptions, prompt),
        "--lyrics".into(),
    )])
}

/// `--lyrics` is a file when one exists at that path, else the lyrics text.
fn read_lyrics(arg: &str) -> Result<String, Failure> {
    let path = Path::new(arg);
    if path.is_file() {
        return std::fs::read_to_string(path)
            .with_context(|| format!("cannot read lyrics file {}", path.display()))
            .map_err(Failure::input);
    }
    let looks_like_path = !arg.contains('[')
        && !arg.contains('\n')
        && (arg.ends_with(".txt") || arg.ends_with(".lrc") || arg.contains('/'));
    if looks_like_path {
        return Err(Failure::input(anyhow!("lyrics file {arg} not found")));
    }
    Ok(arg.to_string())
}

fn read_jsonl(
    path: &Path,
    job: &dyn Fn(String, Option<String>, Option<StylePrompt>) -> Job,
) -> Result<Vec<(String, Job, String)>, Failure> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read {}", path.display()))
        .map_err(Failure::input)?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut jobs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let origin = format!("{} line {}", path.display(), i + 1);
        if line.trim().is_empty() {
            continue;
        }
        let item: JsonlItem = serde_json::from_str(line).map_err(|e| {
            Failure::input(anyhow!(
                "{origin}: not a JSON object with idx and gt_lyric ({e})"
            ))
        })?;
        let id = match &item.idx {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            other => {
                return Err(Failure::input(anyhow!(
                    "{origin}: idx must be a string or a number, not {other}"
                )))
            }
        };
        let prompt = match (item.prompt_audio_path, item.auto_prompt_audio_type) {
            (Some(_), Some(_)) => {
                return Err(Failure::input(anyhow!(
                    "{origin}: give prompt_audio_path or auto_prompt_audio_type, not both"
                )))
            }
            (Some(p), None) => {
                // Relative paths are relative to the working directory, like the reference;
                // failing that, to the JSONL file's folder.
                let p = if p.is_relative() && !p.exists() && base.join(&p).exists() {
                    base.join(p)
                } else {
                    p
                };
                Some(StylePrompt::Audio { path: p })
            }
            (None, Some(genre)) => Some(StylePrompt::Auto { genre }),
            (None, None) => None,
        };
        if jobs
            .iter()
            .any(|(j, _, _): &(String, Job, String)| *j == id)
        {
            return Err(Failure::input(anyhow!(
                "{origin}: idx `{id}` appears twice; the outputs would collide"
            )));
        }
        // Unknown style tags in existing inputs are only warned about (see prepare()).
        jobs.push((id, job(item.gt_lyric, item.descriptions, prompt), origin));
    }
    if jobs.is_empty() {
        return Err(Failure::input(anyhow!("{}: no jobs", path.display())));
    }
    Ok(jobs)
}

/// First Ctrl-C asks the running stage to stop at its next unit of work; a second one exits.
fn install_ctrlc(cancel: Arc<AtomicBool>) {
    let _ = ctrlc::set_handler(move || {
        if cancel.swap(true, Ordering::SeqCst) {
            eprintln!("\nsonggen: interrupted");
            std::process::exit(130);
        }
        eprintln!("\nsonggen: cancelling (Ctrl-C again to quit at once)...");
    });
}

/// One progress bar per stage of the running job.
struct Bars {
    multi: Option<MultiProgress>,
    bars: std::cell::RefCell<Vec<(Stage, ProgressBar)>>,
}

impl Bars {
    fn new(quiet: bool) -> Self {
        Self {
            multi: (!quiet).then(MultiProgress::new),
            bars: Default::default(),
        }
    }

    fn spinner(&self, msg: String) -> ProgressBar {
        let Some(multi) = &self.multi else {
            return ProgressBar::hidden();
        };
        let pb = multi.add(ProgressBar::new_spinner());
        pb.set_message(msg);
        pb.enable_steady_tick(Duration::from_millis(120));
        pb
    }

    fn update(&self, id: &str, p: Progress) {
        let Some(multi) = &self.multi else { return };
        let mut bars = self.bars.borrow_mut();
        let bar = match bars.iter().find(|(s, _)| *s == p.stage) {
            Some((_, b)) => b.clone(),
            None => {
                let b = multi.add(ProgressBar::new(p.total));
                b.set_style(
                    ProgressStyle::with_template(
                        "{prefix:>16} [{bar:32}] {pos}/{len} {msg} ({elapsed}, eta {eta})",
                    )
                    .expect("valid template")
                    .progress_chars("=> "),
                );
                b.set_prefix(format!("{id} {}", stage_name(p.stage)));
                bars.push((p.stage, b.clone()));
                b
            }
        };
        bar.set_length(p.total);
        bar.set_position(p.done);
        if let Some(rate) = p.rate {
            bar.set_message(format!("{rate:.1}/s"));
        }
        if p.done >= p.total {
            bar.finish();
        }
    }

    /// A line above the bars (stderr), or plain stderr when quiet.
    fn println(&self, line: String) {
        match &self.multi {
            Some(m) => {
                let _ = m.println(line);
            }
            None => eprintln!("{line}"),
        }
    }

    fn clear(&self) {
        for (_, b) in self.bars.borrow_mut().drain(..) {
            b.finish_and_clear();
        }
    }
}

fn stage_name(stage: Stage) -> &'static str {
    match stage {
        Stage::Load => "load",
        Stage::Prompt => "prompt",
        Stage::Lm => "tokens",
        Stage::Render => "render",
        Stage::Vae => "vae",
        Stage::Write => "write",
    }
}
