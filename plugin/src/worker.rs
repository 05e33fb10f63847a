//! The plugin's worker thread: everything slow or fallible happens here, never on the audio or
//! GUI thread. It supervises the engine process (start, restart after a crash, report), turns
//! Generate into a take, saves captures, loads stems for playback and exports them.
//!
//! (Over 500 lines: one state machine — engine supervision, jobs, takes, captures — whose
//! transitions are easier to check side by side than split across files.)

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use crossbeam_channel::{select, Receiver, Sender};
use nice_plug::prelude::*;
use nice_plug_egui::RepaintNotifier;
use songgen_protocol::{decode_samples, Event, GenType, Job, Request, Stage, Stem, StylePrompt};

use crate::capture::{
    capture_warnings, CaptureBuffer, CaptureControl, CaptureLevel, CapturePhase, RecorderLink,
    ENGINE_MIN_SECONDS, SILENCE_DBFS,
};
use crate::engine::{self, EngineLink, EngineMsg, Target};
use crate::files;
use crate::lyrics;
use crate::params::{CapturedPrompt, SongGenParams};
use crate::playback::{LiveStereo, PlayState, PlayerLink, PlayerMsg, Stems, Track};
use crate::session::{self as session_check, PromptSource, Take, TakeStatus};
use crate::settings::{EngineMode, UserSettings};

/// Crashes within this window count towards giving up on automatic restarts.
const CRASH_WINDOW: Duration = Duration::from_secs(60);
const MAX_CRASHES: usize = 3;
const RESTART_DELAY: Duration = Duration::from_millis(300);
/// Bins of the captured-prompt waveform.
const WAVEFORM_BINS: usize = 400;

/// Lock-free state shared with the audio thread.
#[derive(Debug, Default)]
pub struct Shared {
    pub capture: CaptureControl,
    pub play: PlayState,
}

/// Requests to the worker (from the plugin and the editor).
pub enum Command {
    /// The host (re)activated the plugin: new rings for the new audio-thread objects.
    Activated {
        sample_rate: f32,
        recorder: RecorderLink,
        player: PlayerLink,
        /// Answered once the selected take is loaded (offline bounces wait for it).
        loaded: Option<Sender<()>>,
    },
    Generate,
    Cancel,
    RestartEngine,
    Select(String),
    Delete(String),
    SetAnchor {
        take: String,
        seconds: f64,
    },
    Export {
        take: String,
        dir: PathBuf,
    },
    /// The editor applied new per-user engine settings: save them and restart the engine.
    SettingsChanged(UserSettings),
    Shutdown,
}

/// How the engine is doing, for the editor.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum EngineState {
    #[default]
    NotStarted,
    Starting,
    Ready {
        model: String,
        device: String,
    },
    /// Crashed; a new process starts shortly.
    Restarting {
        reason: String,
    },
    /// Not running and not restarting by itself (Generate or Restart tries again).
    Failed {
        reason: String,
    },
}

/// One stage of a job in flight. The LM and the renderer run side by side, so each stage
/// keeps its own count and clock.
#[derive(Debug, Clone)]
pub struct StageProgress {
    pub stage: Stage,
    pub done: u64,
    pub total: u64,
    started: Instant,
}

impl StageProgress {
    pub fn fraction(&self) -> f32 {
        if self.total == 0 {
            0.0
        } else {
            (self.done as f32 / self.total as f32).clamp(0.0, 1.0)
        }
    }

    /// Remaining time at the stage's average rate so far.
    pub fn eta(&self) -> Option<Duration> {
        if self.done == 0 || self.total <= self.done {
            return None;
        }
        let per_unit = self.started.elapsed().as_secs_f64() / self.done as f64;
        Some(Duration::from_secs_f64(
            per_unit * (self.total - self.done) as f64,
        ))
    }
}

/// A job in flight.
#[derive(Debug, Clone)]
pub struct JobProgress {
    pub take_id: String,
    /// Every stage seen so far, in order of first appearance.
    pub stages: Vec<StageProgress>,
    pub started: Instant,
    /// Seconds of audio received per stem (`mixed`, `vocal`, `bgm`).
    pub extents: Vec<(String, f64)>,
    /// The longest the take can be, in seconds (the engine's limit), when known.
    pub max_seconds: Option<f64>,
    /// When the first audio arrived, in seconds after the start.
    pub first_audio_s: Option<f64>,
}

impl JobProgress {
    fn new(take_id: String) -> Self {
        Self {
            take_id,
            stages: Vec::new(),
            started: Instant::now(),
            extents: Vec::new(),
            max_seconds: None,
            first_audio_s: None,
        }
    }

    /// The stage reported last.
    pub fn stage(&self, stage: Stage) -> Option<&StageProgress> {
        self.stages.iter().find(|s| s.stage == stage)
    }

    /// Time left: the stages run side by side, so the job ends with the slowest of them. The
    /// LM's total is its length limit, so this is an upper bound while the LM runs; the
    /// renderer's total grows until the song's length is known.
    pub fn eta(&self) -> Option<Duration> {
        self.stages.iter().filter_map(StageProgress::eta).max()
    }

    fn progress(&mut self, stage: Stage, done: u64, total: u64) {
        match self.stages.iter_mut().find(|s| s.stage == stage) {
            Some(s) => {
                s.done = done;
                s.total = total;
            }
            None => self.stages.push(StageProgress {
                stage,
                done,
                total,
                started: Instant::now(),
            }),
        }
    }
}

/// The running take's stems filling in from `chunk` events, at the host rate.
struct LiveTake {
    id: String,
    /// Host rate of the buffers.
    rate: f32,
    tracks: Vec<(Stem, Arc<LiveStereo>, LinearResampler)>,
}

/// Linear-interpolation resampling of a stream: the same samples as
/// [`files::resample_linear`] on the whole signal, produced as the input arrives.
struct LinearResampler {
    /// Input frames per output frame.
    ratio: f64,
    /// Input index of `left[0]`.
    base: usize,
    left: Vec<f32>,
    right: Vec<f32>,
    produced: usize,
}

impl LinearResampler {
    fn new(from: f64, to: f64) -> Self {
        Self {
            ratio: from / to,
            base: 0,
            left: Vec::new(),
            right: Vec::new(),
            produced: 0,
        }
    }

    /// Adds input and returns the output frames it completes.
    fn push(&mut self, left: &[f32], right: &[f32]) -> (Vec<f32>, Vec<f32>) {
        if (self.ratio - 1.0).abs() < 1e-9 {
            return (left.to_vec(), right.to_vec());
        }
        self.left.extend_from_slice(left);
        self.right.extend_from_slice(right);
        let (mut out_l, mut out_r) = (Vec::new(), Vec::new());
        loop {
            let t = self.produced as f64 * self.ratio;
            let k = t.floor() as usize;
            if k + 1 >= self.base + self.left.len() {
                break;
            }
            let j = k - self.base;
            let frac = (t - k as f64) as f32;
            out_l.push(self.left[j] + (self.left[j + 1] - self.left[j]) * frac);
            out_r.push(self.right[j] + (self.right[j + 1] - self.right[j]) * frac);
            self.produced += 1;
        }
        let keep_from = (self.produced as f64 * self.ratio).floor() as usize;
        let drop = keep_from.saturating_sub(self.base).min(self.left.len());
        self.left.drain(..drop);
        self.right.drain(..drop);
        self.base += drop;
        (out_l, out_r)
    }
}

/// What the editor shows; written by the worker, read by the editor each frame.
#[derive(Debug, Clone, Default)]
pub struct UiStatus {
    pub engine: EngineState,
    pub engine_pid: Option<u32>,
    /// Engine processes this instance started so far (connecting to a running shared engine
    /// starts none).
    pub engine_starts: u64,
    pub job: Option<JobProgress>,
    /// Why the plugin runs the CPU engine instead of the configured (CUDA) one, if it does.
    pub fallback: Option<String>,
    /// Last message for the user: (is error, text).
    pub message: Option<(bool, String)>,
    /// Peaks of the captured prompt.
    pub waveform: Vec<f32>,
    /// The per-user engine settings in use (`None` until the worker has read them).
    pub settings: Option<UserSettings>,
    /// Their file.
    pub settings_path: PathBuf,
}

/// A style clip for a remote engine: the file's bytes in the request.
fn upload(path: &std::path::Path) -> Result<StylePrompt> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if bytes.len() > songgen_protocol::MAX_UPLOAD_BYTES {
        bail!(
            "the style clip {} is {} MiB; a remote engine takes at most {} MiB ({} s of 16-bit audio): use a shorter clip",
            path.display(),
            bytes.len() >> 20,
            songgen_protocol::MAX_UPLOAD_BYTES >> 20,
            songgen_protocol::MAX_UPLOAD_SECONDS
        );
    }
    Ok(StylePrompt::Upload {
        wav: songgen_protocol::encode_base64(&bytes),
    })
}

/// Writes a remote take's stems (48 kHz, from its chunks) into its cache folder.
fn write_remote_stems(
    id: &str,
    audio: Vec<(Stem, Vec<f32>, Vec<f32>)>,
) -> Result<std::collections::BTreeMap<String, PathBuf>> {
    let dir = files::take_dir(id);
    let mut stems = std::collections::BTreeMap::new();
    for (stem, left, right) in audio {
        let path = dir.join(format!("{id}{}.wav", stem.suffix()));
        let audio = songgen_protocol::audio::Audio {
            channels: vec![left, right],
            sample_rate: 48_000,
        };
        songgen_protocol::audio::write_wav(&path, &audio, true)
            .with_context(|| format!("writing {}", path.display()))?;
        stems.insert(stem.name().to_owned(), path);
    }
    Ok(stems)
}

/// Owns the worker thread; dropping it stops the thread and the engine.
pub struct WorkerHandle {
    pub tx: Sender<Command>,
    thread: Option<JoinHandle<()>>,
}

impl WorkerHandle {
    pub fn spawn(
        params: Arc<SongGenParams>,
        shared: Arc<Shared>,
        status: Arc<Mutex<UiStatus>>,
        repaint: RepaintNotifier,
    ) -> Self {
        let (tx, rx) = crossbeam_channel::unbounded();
        let thread = std::thread::Builder::new()
            .name("songgen-worker".into())
            .spawn(move || Worker::new(params, shared, status, repaint).run(rx))
            .expect("spawning the songgen worker thread");
        Self {
            tx,
            thread: Some(thread),
        }
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        let _ = self.tx.send(Command::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Worker {
    params: Arc<SongGenParams>,
    shared: Arc<Shared>,
    status: Arc<Mutex<UiStatus>>,
    repaint: RepaintNotifier,

    engine: Option<EngineLink>,
    engine_tx: Sender<EngineMsg>,
    engine_rx: Receiver<EngineMsg>,
    generation: u64,
    engine_ready: bool,
    last_engine_error: Option<String>,
    crashes: VecDeque<Instant>,
    restart_at: Option<Instant>,
    /// The take being generated.
    running: Option<String>,
    /// Its job, kept to hand it to the CPU engine if the CUDA engine cannot start.
    running_job: Option<Job>,
    /// The CPU engine started instead of the configured one (see `engine::cpu_fallback`).
    cpu_engine: Option<PathBuf>,
    /// Its stems as they arrive.
    live: Option<LiveTake>,
    /// A remote engine's take at 48 kHz as its chunks arrive (it names no files here): written
    /// into the cache at `done`.
    remote_audio: Option<(String, Vec<(Stem, Vec<f32>, Vec<f32>)>)>,
    /// An offline bounce waiting for the running take to finish.
    bounce_ack: Option<Sender<()>>,

    sample_rate: f32,
    recorder: Option<RecorderLink>,
    player: Option<PlayerLink>,
    /// (take id, sample rate) of the stems the player has.
    loaded: Option<(String, f32)>,
    takes_version: u64,
    capture_version: u64,
    /// Versions of the take list and the capture last checked (see `check_project`).
    checked_takes: u64,
    checked_capture: u64,
    /// Per-user engine settings (never from the project).
    settings: UserSettings,
    last_repaint: Instant,
    /// Last seen value of the "Generate" parameter (its rising edge starts a take).
    generate_param: bool,
}

impl Worker {
    fn new(
        params: Arc<SongGenParams>,
        shared: Arc<Shared>,
        status: Arc<Mutex<UiStatus>>,
        repaint: RepaintNotifier,
    ) -> Self {
        let (engine_tx, engine_rx) = crossbeam_channel::unbounded();
        let generate_param = params.generate.value();
        let (settings, warning) = UserSettings::load();
        {
            let mut s = status.lock().unwrap_or_else(|e| e.into_inner());
            s.settings = Some(settings.clone());
            s.settings_path = UserSettings::path();
        }
        if let Some(w) = warning {
            nice_warn!("songgen: {w}");
            status.lock().unwrap_or_else(|e| e.into_inner()).message = Some((true, w));
        }
        Self {
            params,
            shared,
            status,
            repaint,
            engine: None,
            engine_tx,
            engine_rx,
            generation: 0,
            engine_ready: false,
            last_engine_error: None,
            crashes: VecDeque::new(),
            restart_at: None,
            running: None,
            running_job: None,
            cpu_engine: None,
            live: None,
            remote_audio: None,
            bounce_ack: None,
            sample_rate: 0.0,
            recorder: None,
            player: None,
            loaded: None,
            takes_version: u64::MAX,
            capture_version: u64::MAX,
            checked_takes: u64::MAX,
            checked_capture: u64::MAX,
            settings,
            last_repaint: Instant::now(),
            generate_param,
        }
    }

    fn run(mut self, rx: Receiver<Command>) {
        loop {
            select! {
                recv(rx) -> cmd => match cmd {
                    Ok(Command::Shutdown) | Err(_) => break,
                    Ok(cmd) => self.command(cmd),
                },
                recv(self.engine_rx) -> msg => {
                    if let Ok(msg) = msg {
                        self.engine_msg(msg);
                    }
                }
                default(Duration::from_millis(20)) => {}
            }
            self.tick();
        }
        // Dropping the process asks it to shut down, then kills it.
        self.engine = None;
    }

    fn status(&self) -> std::sync::MutexGuard<'_, UiStatus> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn message(&self, is_error: bool, text: impl Into<String>) {
        let text = text.into();
        if is_error {
            nice_warn!("songgen: {text}");
        } else {
            nice_log!("songgen: {text}");
        }
        self.status().message = Some((is_error, text));
        self.repaint.request_repaint();
    }

    fn set_engine_state(&self, state: EngineState) {
        let mut s = self.status();
        s.engine = state;
        s.engine_pid = self.engine.as_ref().and_then(EngineLink::pid);
        drop(s);
        self.repaint.request_repaint();
    }

    fn command(&mut self, cmd: Command) {
        // A project loaded since the last look is checked before anything touches its files.
        self.check_project();
        match cmd {
            Command::Activated {
                sample_rate,
                mut recorder,
                player,
                loaded,
            } => {
                // The capture buffer is allocated here, not in the host's activate call.
                let buffer = Box::new(CaptureBuffer::new(sample_rate));
                let _ = recorder.recycled.push(buffer);
                self.sample_rate = sample_rate;
                self.shared.play.set_sample_rate(sample_rate as f64);
                self.recorder = Some(recorder);
                self.player = Some(player);
                self.loaded = None;
                if self.live.as_ref().is_some_and(|l| l.rate != sample_rate) {
                    // Buffers at the old rate: the rest of the take plays from its files.
                    self.live = None;
                }
                self.sync_playback();
                if let Some(ack) = loaded {
                    let running_selected = self.running.is_some()
                        && self.params.takes.read().selected.as_deref() == self.running.as_deref();
                    if running_selected {
                        // A bounce of a take that is still generating would be incomplete:
                        // hold the bounce until the take is done.
                        self.message(
                            true,
                            "bounce: the selected take is still generating; the bounce waits until it is done",
                        );
                        self.bounce_ack = Some(ack);
                    } else {
                        let _ = ack.send(());
                    }
                }
                if self.engine.is_none() && self.status().engine == EngineState::NotStarted {
                    self.start_engine();
                }
            }
            Command::Generate => {
                if let Err(e) = self.generate() {
                    self.message(true, format!("{e:#}"));
                }
            }
            Command::Cancel => {
                if let Some(id) = self.running.clone() {
                    self.send(Request::Cancel { id });
                }
            }
            Command::RestartEngine => {
                // The shared local engine restarts for every instance (so new settings, e.g.
                // another model, take effect): ask it to stop, then start or join the new one.
                if let Some(mut link) = self.engine.take() {
                    if !link.remote {
                        let _ = link.send(&Request::Shutdown);
                        let gone = songgen_protocol::paths::engine_socket();
                        for _ in 0..100 {
                            if !gone.exists() {
                                break;
                            }
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                }
                self.crashes.clear();
                // Try the configured engine again.
                self.cpu_engine = None;
                self.status().fallback = None;
                self.fail_running("engine restarted by the user");
                self.start_engine();
            }
            Command::Select(id) => self.params.takes.update(|t| t.selected = Some(id)),
            Command::Delete(id) => {
                if let Err(e) = songgen_protocol::check_id(&id) {
                    self.message(true, format!("not deleting a take: {e}"));
                    return;
                }
                if self.running.as_deref() == Some(id.as_str()) {
                    self.message(true, "cancel the take before deleting it");
                    return;
                }
                self.params.takes.update(|t| {
                    t.list.retain(|x| x.id != id);
                    if t.selected.as_deref() == Some(id.as_str()) {
                        t.selected = t.list.last().map(|x| x.id.clone());
                    }
                });
                if let Err(e) = files::remove_take_dir(&id) {
                    self.message(true, format!("deleting {id}: {e:#}"));
                }
            }
            Command::SetAnchor { take, seconds } => self.params.takes.update(|t| {
                if let Some(t) = t.get_mut(&take) {
                    t.anchor_seconds = seconds.max(0.0);
                }
            }),
            Command::Export { take, dir } => match self.export(&take, &dir) {
                Ok(n) => self.message(false, format!("exported {n} stems to {}", dir.display())),
                Err(e) => self.message(true, format!("export failed: {e:#}")),
            },
            Command::SettingsChanged(settings) => {
                match settings.save() {
                    Ok(()) => self.message(
                        false,
                        format!(
                            "engine settings saved to {}",
                            UserSettings::path().display()
                        ),
                    ),
                    Err(e) => {
                        self.message(true, format!("saving the engine settings failed: {e:#}"))
                    }
                }
                self.status().settings = Some(settings.clone());
                self.settings = settings;
                self.command(Command::RestartEngine);
            }
            Command::Shutdown => {}
        }
    }

    /// Checks the take list and the captured prompt when they changed (the host loaded a
    /// project, or this worker changed them): bad take ids, stems outside their take's cache
    /// folder and a capture outside the capture folder are dropped from the persisted values,
    /// with one message saying what and why. Runs before any file operation on them.
    fn check_project(&mut self) {
        let mut why = Vec::new();
        if self.params.takes.version() != self.checked_takes {
            let current = self.params.takes.read().clone();
            let (kept, mut w) = session_check::check_takes(&current, &files::takes_dir());
            if !w.is_empty() {
                // Only the entries checked here go (the list may have changed meanwhile).
                self.params.takes.update(|t| {
                    if *t == current {
                        *t = kept;
                    } else {
                        *t = session_check::check_takes(t, &files::takes_dir()).0;
                    }
                });
                why.append(&mut w);
            }
            self.checked_takes = self.params.takes.version();
        }
        if self.params.capture.version() != self.checked_capture {
            let path = self.params.capture.read().as_ref().map(|c| c.path.clone());
            if let Some(Err(e)) =
                path.map(|p| session_check::check_capture(&p, &files::captures_dir()))
            {
                self.params.capture.update(|c| *c = None);
                why.push(e);
            }
            self.checked_capture = self.params.capture.version();
        }
        if !why.is_empty() {
            self.message(
                true,
                format!(
                    "the project held entries that were dropped: {}",
                    why.join("; ")
                ),
            );
        }
    }

    // ----- engine supervision -----

    fn start_engine(&mut self) {
        self.restart_at = None;
        self.engine_ready = false;
        self.last_engine_error = None;
        if !songgen_protocol::license::is_accepted() {
            return self.set_engine_state(EngineState::Failed {
                reason: "accept the model licence (shown in the editor) to start the engine".into(),
            });
        }
        let mut settings = self.settings.clone();
        let target = match &settings.mode {
            EngineMode::Remote { addr, token } => Target::Remote {
                addr: addr.trim().to_owned(),
                token: token.trim().to_owned(),
            },
            EngineMode::Local => {
                let exe = if let Some(cpu) = &self.cpu_engine {
                    settings.device = "cpu".into();
                    cpu.clone()
                } else {
                    let configured = PathBuf::from(settings.engine_path.trim());
                    match engine::locate(Some(&configured)) {
                        Ok(exe) => exe,
                        Err(reason) => {
                            return self.set_engine_state(EngineState::Failed { reason })
                        }
                    }
                };
                Target::Local {
                    exe,
                    args: settings.engine_args(),
                    socket: songgen_protocol::paths::engine_socket(),
                }
            }
        };
        self.generation += 1;
        match EngineLink::start(&target, self.generation, self.engine_tx.clone()) {
            Ok(link) => {
                match link.pid() {
                    Some(pid) => nice_log!("songgen: started engine {} (pid {pid})", link.describe),
                    None => nice_log!("songgen: connected to {}", link.describe),
                }
                if link.pid().is_some() {
                    self.status().engine_starts += 1;
                }
                self.engine = Some(link);
                self.set_engine_state(EngineState::Starting);
            }
            Err(e) => {
                if e.spawned {
                    self.status().engine_starts += 1;
                }
                let reason = e.to_string();
                let fell_back = match &target {
                    Target::Local { exe, .. } | Target::Private { exe, .. }
                        if e.status.is_none() || engine::is_device_failure(e.status) =>
                    {
                        self.fall_back_to_cpu(&exe.clone(), &reason)
                    }
                    _ => false,
                };
                if !fell_back && !self.retry_after_kill(e.status, &reason) {
                    self.set_engine_state(EngineState::Failed { reason });
                }
            }
        }
    }

    /// An engine this instance started was killed (a signal: the OOM killer, a user) before
    /// this instance could link to it: try again, as after a crash (at most `MAX_CRASHES` in
    /// `CRASH_WINDOW`). False when it was not killed, or keeps being killed.
    fn retry_after_kill(&mut self, status: Option<std::process::ExitStatus>, reason: &str) -> bool {
        #[cfg(unix)]
        let killed = {
            use std::os::unix::process::ExitStatusExt;
            status.is_some_and(|s| s.signal().is_some())
        };
        #[cfg(not(unix))]
        let killed = {
            let _ = status;
            false
        };
        if !killed {
            return false;
        }
        let now = Instant::now();
        self.crashes
            .retain(|t| now.duration_since(*t) < CRASH_WINDOW);
        self.crashes.push_back(now);
        if self.crashes.len() >= MAX_CRASHES {
            return false;
        }
        nice_warn!("songgen: {reason}; restarting");
        self.restart_at = Some(now + RESTART_DELAY);
        self.set_engine_state(EngineState::Restarting {
            reason: reason.to_owned(),
        });
        true
    }

    /// The configured engine `exe` cannot run on its device (`reason`): start the CPU engine
    /// installed beside it, hand it the running take, and say so. False when there is none (or
    /// it is the CPU engine that failed).
    fn fall_back_to_cpu(&mut self, exe: &std::path::Path, reason: &str) -> bool {
        if self.cpu_engine.is_some() {
            return false;
        }
        let Some(cpu) = engine::cpu_fallback(exe) else {
            return false;
        };
        let note = format!(
            "{} cannot run ({reason}); using the CPU engine {}",
            exe.display(),
            cpu.display()
        );
        nice_warn!("songgen: {note}");
        self.status().fallback = Some(note.clone());
        self.message(false, note);
        self.cpu_engine = Some(cpu);
        self.start_engine();
        if self.engine.is_none() {
            let reason = match &self.status().engine {
                EngineState::Failed { reason } => reason.clone(),
                _ => "the CPU engine did not start".into(),
            };
            self.fail_running(&reason);
            return true;
        }
        if let (Some(id), Some(job)) = (self.running.clone(), self.running_job.clone()) {
            self.send(Request::Generate { id, job });
        }
        true
    }

    fn send(&mut self, req: Request) {
        let Some(p) = self.engine.as_mut() else {
            return;
        };
        if let Err(e) = p.send(&req) {
            nice_warn!("songgen: {e:#}");
            self.engine_exited();
        }
    }

    fn engine_msg(&mut self, msg: EngineMsg) {
        let current = self.engine.as_ref().map(|p| p.generation);
        match msg {
            EngineMsg::Event(g, ev) if Some(g) == current => self.engine_event(ev),
            EngineMsg::Garbage(g, line) if Some(g) == current => {
                nice_warn!("songgen: engine wrote a non-protocol line: {line}")
            }
            EngineMsg::Closed(g) if Some(g) == current => self.engine_exited(),
            _ => {}
        }
    }

    /// The engine process ended (crash, OOM kill, startup failure): report it, fail the running
    /// take and restart unless it keeps crashing or never came up.
    fn engine_exited(&mut self) {
        let Some(mut p) = self.engine.take() else {
            return;
        };
        let status = p.wait_exit();
        let how = match status {
            None if p.remote => {
                "connection closed (the remote engine stopped or dropped this client)".to_owned()
            }
            None if p.pid().is_none() => {
                "connection closed (the shared engine exited or was killed)".to_owned()
            }
            _ => engine::describe_exit(status),
        };
        let detail = self
            .last_engine_error
            .take()
            .or_else(|| p.last_stderr())
            .map(|d| format!(": {d}"))
            .unwrap_or_default();
        let exe = p.exe.clone();
        drop(p);
        let reason = format!("engine {how}{detail}");
        if !self.engine_ready
            && engine::is_device_failure(status)
            && exe.is_some_and(|exe| self.fall_back_to_cpu(&exe, &reason))
        {
            return;
        }
        self.fail_running(&reason);
        let now = Instant::now();
        self.crashes
            .retain(|t| now.duration_since(*t) < CRASH_WINDOW);
        self.crashes.push_back(now);
        // Before `ready`, an engine that exited with an error code of its own (bad model folder,
        // ...) would only fail again; one that was killed, or a shared engine whose end this
        // instance did not see (another instance started it), is worth another try.
        #[cfg(unix)]
        let killed = {
            use std::os::unix::process::ExitStatusExt;
            status.is_some_and(|s| s.signal().is_some())
        };
        #[cfg(not(unix))]
        let killed = false;
        let retry = self.engine_ready || killed || status.is_none();
        if retry && self.crashes.len() < MAX_CRASHES {
            nice_warn!("songgen: {reason}; restarting");
            self.restart_at = Some(now + RESTART_DELAY);
            self.set_engine_state(EngineState::Restarting { reason });
        } else {
            nice_warn!("songgen: {reason}");
            self.set_engine_state(EngineState::Failed { reason });
        }
    }

    fn fail_running(&mut self, reason: &str) {
        self.running_job = None;
        if let Some(id) = self.running.take() {
            self.params.takes.update(|t| {
                if let Some(t) = t.get_mut(&id) {
                    t.status = TakeStatus::Failed {
                        message: reason.to_owned(),
                    };
                }
            });
            self.status().job = None;
            self.message(true, format!("{id} failed: {reason}"));
        }
    }

    fn engine_event(&mut self, ev: Event) {
        match ev {
            Event::Ready { model, device, .. } => {
                self.engine_ready = true;
                self.set_engine_state(EngineState::Ready { model, device });
            }
            Event::Queued { .. } | Event::Status { .. } => {}
            Event::Started {
                id,
                seed,
                max_frames,
            } => {
                let gen_type = self.params.takes.update(|t| {
                    t.get_mut(&id).map(|t| {
                        t.seed = Some(seed);
                        t.gen_type
                    })
                });
                if let (Some(gen_type), true) = (gen_type, self.running.as_deref() == Some(&id)) {
                    self.start_live(&id, gen_type, max_frames);
                }
            }
            Event::Chunk {
                id,
                stem,
                start,
                frames,
                data,
            } => {
                if let Err(e) = self.chunk(&id, stem, start, frames, &data) {
                    nice_warn!("songgen: {id}: {e:#}");
                }
                self.repaint_throttled();
            }
            Event::Progress {
                id,
                stage,
                done,
                total,
                ..
            } => {
                let mut s = self.status();
                if let Some(job) = s.job.as_mut().filter(|j| j.take_id == id) {
                    job.progress(stage, done, total);
                }
                drop(s);
                self.repaint_throttled();
            }
            Event::Done {
                id,
                mut stems,
                sample_rate,
                frames,
                seed,
            } => {
                if let Some((_, audio)) = self.remote_audio.take().filter(|(r, _)| *r == id) {
                    match write_remote_stems(&id, audio) {
                        Ok(written) => stems = written,
                        Err(e) => {
                            self.message(
                                true,
                                format!("{id}: storing the remote stems failed: {e:#}"),
                            );
                            stems.clear();
                        }
                    }
                }
                self.params.takes.update(|t| {
                    if let Some(take) = t.get_mut(&id) {
                        take.status = TakeStatus::Done;
                        take.stems = stems;
                        take.sample_rate = sample_rate;
                        take.frames = frames;
                        take.seed = Some(seed);
                        t.selected = Some(id.clone());
                    }
                });
                self.finish_job(&id);
                // The files replace the live buffers (the same samples).
                self.loaded = None;
                self.message(false, format!("{id} is ready"));
            }
            Event::Error {
                id: Some(id),
                message,
            } => {
                self.params.takes.update(|t| {
                    if let Some(t) = t.get_mut(&id) {
                        t.status = TakeStatus::Failed {
                            message: message.clone(),
                        };
                    }
                });
                self.finish_job(&id);
                self.message(true, format!("{id} failed: {message}"));
            }
            Event::Error { id: None, message } => {
                self.last_engine_error = Some(message.clone());
                self.message(true, format!("engine: {message}"));
            }
            Event::Cancelled { id } => {
                self.params.takes.update(|t| {
                    if let Some(t) = t.get_mut(&id) {
                        t.status = TakeStatus::Cancelled;
                    }
                });
                self.finish_job(&id);
                self.message(false, format!("{id} cancelled"));
            }
        }
    }

    fn finish_job(&mut self, id: &str) {
        if self.running.as_deref() == Some(id) {
            self.remote_audio = None;
            self.running = None;
            self.running_job = None;
            self.live = None;
            self.status().job = None;
        }
        if let Some(ack) = self.bounce_ack.take() {
            // Let a waiting bounce go on with the take in its final state.
            self.sync_playback();
            let _ = ack.send(());
        }
    }

    /// Preallocates the running take's stem buffers (the engine's length limit at the host
    /// rate) and hands them to the player, which plays them as they fill.
    fn start_live(&mut self, id: &str, gen_type: GenType, max_frames: Option<u64>) {
        if self.sample_rate <= 0.0 {
            return;
        }
        let rate = f64::from(self.sample_rate);
        // Without a limit from the engine: room for the released models' 4m30s.
        let max = max_frames.unwrap_or(270 * 48_000);
        let capacity = (max as f64 * rate / 48_000.0).ceil() as usize + 2;
        let tracks: Vec<(Stem, Arc<LiveStereo>, LinearResampler)> = Stem::for_gen_type(gen_type)
            .iter()
            .map(|&stem| {
                (
                    stem,
                    Arc::new(LiveStereo::with_capacity(capacity)),
                    LinearResampler::new(48_000.0, rate),
                )
            })
            .collect();
        if let Some(job) = self.status().job.as_mut() {
            job.max_seconds = Some(max as f64 / 48_000.0);
        }
        self.live = Some(LiveTake {
            id: id.to_owned(),
            rate: self.sample_rate,
            tracks,
        });
        self.loaded = None;
        self.sync_playback();
    }

    /// The live take's buffers as player stems.
    fn live_stems(live: &LiveTake) -> Stems {
        let track = |want: Stem| {
            live.tracks
                .iter()
                .find(|(s, _, _)| *s == want)
                .map(|(_, l, _)| Track::Live(l.clone()))
        };
        Stems {
            take_id: live.id.clone(),
            vocals: track(Stem::Vocal),
            accompaniment: track(Stem::Bgm),
            mix: track(Stem::Mixed),
        }
    }

    /// Appends a chunk of the running take to its live buffer.
    fn chunk(&mut self, id: &str, stem: Stem, start: u64, frames: u64, data: &str) -> Result<()> {
        let Some(live) = self.live.as_mut().filter(|l| l.id == id) else {
            return Ok(());
        };
        let Some((_, buf, resampler)) = live.tracks.iter_mut().find(|(s, _, _)| *s == stem) else {
            bail!(
                "a chunk of the {} stem, which this take does not have",
                stem.name()
            );
        };
        let samples = decode_samples(data, 2).map_err(anyhow::Error::msg)?;
        if samples.len() as u64 != frames * 2 {
            bail!("a chunk of {frames} frames holds {} samples", samples.len());
        }
        let (l, r): (Vec<f32>, Vec<f32>) = samples.chunks_exact(2).map(|f| (f[0], f[1])).unzip();
        if let Some((_, stems)) = self.remote_audio.as_mut().filter(|(r, _)| r == id) {
            if let Some((_, rl, rr)) = stems.iter_mut().find(|(s, _, _)| *s == stem) {
                rl.extend_from_slice(&l);
                rr.extend_from_slice(&r);
            }
        }
        let (l, r) = resampler.push(&l, &r);
        if buf.append(&l, &r) > 0 {
            nice_warn!(
                "songgen: {id}: more audio than the engine announced; the rest plays from the file"
            );
        }
        let seconds = (start + frames) as f64 / 48_000.0;
        let mut st = self.status();
        if let Some(job) = st.job.as_mut().filter(|j| j.take_id == id) {
            job.first_audio_s
                .get_or_insert(job.started.elapsed().as_secs_f64());
            match job.extents.iter_mut().find(|(s, _)| s == stem.name()) {
                Some(e) => e.1 = seconds,
                None => job.extents.push((stem.name().to_owned(), seconds)),
            }
        }
        Ok(())
    }

    // ----- generation -----

    fn generate(&mut self) -> Result<()> {
        if self.running.is_some() {
            bail!("a take is already being generated");
        }
        if !songgen_protocol::license::is_accepted() {
            bail!("accept the model licence notice first");
        }
        let draft = self.params.draft.read().clone();
        let check = lyrics::check(&draft.lyrics);
        if let Some(first) = check.errors.first() {
            bail!(
                "fix the lyrics first: line {}: {} ({})",
                first.line,
                first.message,
                first.fix
            );
        }
        let (prompt, prompt_label) = match &draft.prompt {
            PromptSource::None => (None, "none".to_owned()),
            PromptSource::AutoGenre { genre } => (
                Some(StylePrompt::Auto {
                    genre: genre.clone(),
                }),
                format!("auto: {genre}"),
            ),
            PromptSource::Captured => {
                let cap = self.params.capture.read().clone();
                let cap = cap.context("no captured region yet: arm Capture and play the loop")?;
                if !cap.path.is_file() {
                    bail!("the captured region {} is missing", cap.path.display());
                }
                if cap.seconds < ENGINE_MIN_SECONDS {
                    bail!(
                        "the captured region is {:.2} s long; capture at least {ENGINE_MIN_SECONDS:.0} s \
                         (a chorus of about 10 s works best)",
                        cap.seconds
                    );
                }
                if cap.level.is_some_and(|l| !(l.peak_dbfs >= SILENCE_DBFS)) {
                    bail!(
                        "the captured region is silent: check the capture input (main input or \
                         Style Sidechain) and capture again"
                    );
                }
                let name = cap
                    .path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let label = format!("captured {:.1} s ({name})", cap.seconds);
                (Some(StylePrompt::Audio { path: cap.path }), label)
            }
            PromptSource::File { path } => {
                if !path.is_file() {
                    bail!("style prompt file {} does not exist", path.display());
                }
                let label = path.display().to_string();
                (Some(StylePrompt::Audio { path: path.clone() }), label)
            }
        };
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        // Several instances share the cache (and an engine): the millisecond alone may repeat.
        let id = format!("take-{}-{:04x}", created.as_millis(), random_u16());
        let out_dir = files::take_dir(&id);
        std::fs::create_dir_all(&out_dir)
            .with_context(|| format!("creating {}", out_dir.display()))?;
        let remote = matches!(self.settings.mode, EngineMode::Remote { .. });
        // A remote engine takes no paths of this machine: the clip goes in the request, the
        // stems come back as chunks.
        let (prompt, out_dir) = if remote {
            let prompt = match prompt {
                Some(StylePrompt::Audio { path }) => Some(upload(&path)?),
                other => other,
            };
            (prompt, PathBuf::new())
        } else {
            (prompt, out_dir)
        };
        let descriptions = draft.tags.descriptions();
        let job = Job {
            lyrics: draft.lyrics.clone(),
            descriptions: descriptions.clone(),
            prompt,
            gen_type: draft.gen_type,
            seed: draft.seed,
            sampling: draft.sampling,
            out_dir,
            overwrite: false,
        };
        let anchor_seconds = self
            .params
            .takes
            .read()
            .selected_take()
            .map_or(0.0, |t| t.anchor_seconds);
        self.params.takes.update(|t| {
            t.list.push(Take {
                id: id.clone(),
                created: created.as_secs(),
                lyrics: draft.lyrics.clone(),
                descriptions,
                prompt: prompt_label,
                gen_type: draft.gen_type,
                seed: draft.seed,
                sampling: draft.sampling,
                status: TakeStatus::Running,
                stems: Default::default(),
                sample_rate: 0,
                frames: 0,
                anchor_seconds,
            })
        });
        if self.engine.is_none() {
            self.crashes.clear();
            self.start_engine();
        }
        if self.engine.is_none() {
            let reason = match &self.status().engine {
                EngineState::Failed { reason } => reason.clone(),
                _ => "engine not running".into(),
            };
            self.running = Some(id);
            self.fail_running(&reason);
            return Ok(());
        }
        self.running = Some(id.clone());
        self.running_job = Some(job.clone());
        self.remote_audio = remote.then(|| {
            let stems = Stem::for_gen_type(job.gen_type)
                .iter()
                .map(|&s| (s, Vec::new(), Vec::new()))
                .collect();
            (id.clone(), stems)
        });
        // The new take plays as it fills in.
        self.params.takes.update(|t| t.selected = Some(id.clone()));
        self.status().job = Some(JobProgress::new(id.clone()));
        self.send(Request::Generate { id, job });
        self.repaint.request_repaint();
        Ok(())
    }

    fn export(&self, take_id: &str, dir: &std::path::Path) -> Result<usize> {
        songgen_protocol::check_id(take_id).map_err(anyhow::Error::msg)?;
        let take = self
            .params
            .takes
            .read()
            .get(take_id)
            .cloned()
            .with_context(|| format!("no take {take_id}"))?;
        // The list was checked when it changed; check again right before reading its files.
        let take = session_check::check_take(&take, &files::takes_dir())
            .0
            .with_context(|| format!("no valid take {take_id}"))?;
        if take.stems.is_empty() {
            bail!("{take_id} has no stems");
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (stem, src) in &take.stems {
            let dst = dir.join(format!("{take_id}-{stem}.wav"));
            std::fs::copy(src, &dst)
                .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
        }
        Ok(take.stems.len())
    }

    // ----- periodic work -----

    fn tick(&mut self) {
        self.check_project();
        // The "Generate" parameter's rising edge (host automation, a controller).
        let generate = self.params.generate.value();
        if generate && !self.generate_param {
            if let Err(e) = self.generate() {
                self.message(true, format!("{e:#}"));
            }
        }
        self.generate_param = generate;
        if let Some(at) = self.restart_at {
            if Instant::now() >= at {
                self.start_engine();
            }
        }
        if let Some(p) = self.engine.as_mut() {
            if p.try_exit().is_some() {
                self.engine_exited();
            }
        }
        let v = self.params.takes.version();
        if v != self.takes_version {
            self.mark_interrupted();
            self.takes_version = self.params.takes.version();
            self.sync_playback();
            self.repaint.request_repaint();
        }
        let v = self.params.capture.version();
        if v != self.capture_version {
            self.capture_version = v;
            self.load_waveform();
        }
        self.save_captures();
        if let Some(link) = self.player.as_mut() {
            while link.retired.pop().is_ok() {}
        }
        if self.shared.capture.phase() != CapturePhase::Idle {
            self.repaint_throttled();
        }
    }

    /// A take restored as running (the project was saved while it generated) that this
    /// instance is not generating will never finish: show it as interrupted.
    fn mark_interrupted(&mut self) {
        let stale = self.params.takes.read().list.iter().any(|t| {
            t.status == TakeStatus::Running && self.running.as_deref() != Some(t.id.as_str())
        });
        if !stale {
            return;
        }
        let running = self.running.clone();
        self.params.takes.update(|takes| {
            for t in &mut takes.list {
                if t.status == TakeStatus::Running && running.as_deref() != Some(t.id.as_str()) {
                    t.status = TakeStatus::Failed {
                        message:
                            "interrupted: the project was saved while this take was being generated"
                                .into(),
                    };
                }
            }
        });
    }

    fn repaint_throttled(&mut self) {
        if self.last_repaint.elapsed() > Duration::from_millis(50) {
            self.last_repaint = Instant::now();
            self.repaint.request_repaint();
        }
    }

    /// Makes the player play the selected take (loading its stems when it changed).
    fn sync_playback(&mut self) {
        let selected = self.params.takes.read().selected_take().cloned();
        // The running take plays from its live buffers as they fill.
        let live = self
            .live
            .as_ref()
            .filter(|l| selected.as_ref().is_some_and(|t| t.id == l.id));
        let take = selected.filter(|t| t.status == TakeStatus::Done || live.is_some());
        if let Some(t) = &take {
            self.shared.play.set_anchor_seconds(t.anchor_seconds);
        }
        if self.player.is_none() || self.sample_rate <= 0.0 {
            return;
        }
        let want = take.as_ref().map(|t| (t.id.clone(), self.sample_rate));
        if want == self.loaded {
            return;
        }
        let msg = match (&take, live) {
            (Some(_), Some(live)) => PlayerMsg::Load(Box::new(Self::live_stems(live))),
            (Some(t), None) => match session_check::check_take(t, &files::takes_dir())
                .0
                .context("invalid take")
                .and_then(|t| load_stems(&t, self.sample_rate))
            {
                Ok(stems) => PlayerMsg::Load(Box::new(stems)),
                Err(e) => {
                    self.message(true, format!("cannot play {}: {e:#}", t.id));
                    PlayerMsg::Clear
                }
            },
            (None, _) => PlayerMsg::Clear,
        };
        if let Some(link) = self.player.as_mut() {
            if link.incoming.push(msg).is_ok() {
                self.loaded = want;
            }
        }
    }

    fn save_captures(&mut self) {
        let Some(link) = self.recorder.as_mut() else {
            return;
        };
        let mut finished = Vec::new();
        while let Ok(buf) = link.done.pop() {
            finished.push(buf);
        }
        for buf in finished {
            let ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis();
            let path = files::captures_dir().join(format!("capture-{ms}.wav"));
            let (l, r) = (&buf.left[..buf.len], &buf.right[..buf.len]);
            let result = files::write_wav(&path, l, r, buf.sample_rate.round() as u32);
            let seconds = buf.len as f64 / buf.sample_rate as f64;
            let waveform = files::peaks(l, r, WAVEFORM_BINS);
            let level = CaptureLevel::measure(l, r);
            let from_loop = buf.from_loop;
            // Hand the buffer back for the next capture.
            if let Some(link) = self.recorder.as_mut() {
                let _ = link.recycled.push(buf);
            }
            match result {
                Ok(()) => {
                    self.params.capture.update(|c| {
                        *c = Some(CapturedPrompt {
                            path: path.clone(),
                            seconds,
                            from_loop,
                            level: Some(level),
                        })
                    });
                    self.capture_version = self.params.capture.version();
                    self.params
                        .draft
                        .update(|d| d.prompt = PromptSource::Captured);
                    self.status().waveform = waveform;
                    let warnings = capture_warnings(seconds, &level);
                    match warnings.first() {
                        None => self.message(
                            false,
                            format!("captured {seconds:.2} s ({})", level.describe()),
                        ),
                        Some(w) => self.message(true, format!("captured {seconds:.2} s: {w}")),
                    }
                }
                Err(e) => self.message(true, format!("saving the capture failed: {e:#}")),
            }
        }
    }

    fn load_waveform(&mut self) {
        let cap = self.params.capture.read().clone();
        let rate = self.shared.play.sample_rate() as f32;
        let waveform = cap
            .and_then(|c| files::read_wav(&c.path, rate).ok())
            .map(|s| files::peaks(&s.left, &s.right, WAVEFORM_BINS))
            .unwrap_or_default();
        self.status().waveform = waveform;
        self.repaint.request_repaint();
    }
}

/// 16 random bits (std's per-process random hash keys, the clock and a counter).
fn random_u16() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.write_u32(std::process::id());
    h.finish() as u16
}

/// Decodes a take's stems at the host rate.
pub fn load_stems(take: &Take, sample_rate: f32) -> Result<Stems> {
    let read = |name: &str| -> Result<Option<crate::playback::Stereo>> {
        take.stems
            .get(name)
            .map(|p| files::read_wav(p, sample_rate))
            .transpose()
    };
    let stems = Stems {
        take_id: take.id.clone(),
        vocals: read("vocal")?.map(Into::into),
        accompaniment: read("bgm")?.map(Into::into),
        mix: read("mixed")?.map(Into::into),
    };
    if stems.vocals.is_none() && stems.accompaniment.is_none() && stems.mix.is_none() {
        bail!("{} lists no stem files", take.id);
    }
    Ok(stems)
}
