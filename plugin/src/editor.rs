//! The egui editor: lyrics with section-tag helpers and inline validation, style tags,
//! generation options, the style prompt (including host capture), Generate/Cancel with progress,
//! and the take list. It edits the persisted draft and sends commands to the worker; it never
//! does slow work itself.
//!
//! (Over 500 lines: one egui screen, laid out top to bottom; each panel is its own method.)

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::Sender;
use egui::{Color32, RichText};
use nice_plug::context::gui::GuiContext;
use nice_plug::prelude::*;
use nice_plug_egui::{
    create_egui_editor, EguiEditor, EguiEditorState, EguiNiceSettings, Frame, NiceEguiApp,
    RepaintNotifier,
};
use songgen_protocol::license;
use songgen_protocol::tags::AUTO_PROMPT_GENRES;
use songgen_protocol::tags::{self, Dimension};
use songgen_protocol::GenType;

use crate::capture::{capture_warnings, CapturePhase, CaptureSource};
use crate::files;
use crate::lyrics::{self, INSTRUMENTAL_TAGS, VOCAL_TAGS};
use crate::params::{EditorSize, SongGenParams};
use crate::playback::MainOutput;
use crate::session::{prompt_notes, Draft, PromptSource, TakeStatus, Takes};
use crate::settings::{EngineMode, UserSettings};
use crate::worker::{Command, EngineState, Shared, UiStatus};

pub const WIDTH: u32 = 1000;
pub const HEIGHT: u32 = 700;

/// Common instrument combinations offered first (any vocabulary instrument can be added).
const INSTRUMENT_PRESETS: &[&str] = &[
    "piano and drums",
    "acoustic guitar",
    "electric guitar and drums",
    "synthesizer and drums",
];

pub fn create(
    state: Arc<EguiEditorState>,
    repaint: RepaintNotifier,
    app: EditorApp,
) -> Option<EguiEditor<EditorApp>> {
    create_egui_editor(
        state,
        repaint,
        EguiNiceSettings::new()
            .with_tile("SongGen")
            // The host may resize the window; the size is saved with the project
            // (`SongGenParams::editor_size`).
            .with_resize_hint(ResizeHint::resizable().with_min_max_logical_size(
                Some(nice_plug::editor::dpi::LogicalSize::new(
                    EditorSize::MIN.0 as f32,
                    EditorSize::MIN.1 as f32,
                )),
                Some(nice_plug::editor::dpi::LogicalSize::new(
                    EditorSize::MAX.0 as f32,
                    EditorSize::MAX.1 as f32,
                )),
            )),
        app,
    )
}

pub struct EditorApp {
    params: Arc<SongGenParams>,
    shared: Arc<Shared>,
    status: Arc<Mutex<UiStatus>>,
    worker: Sender<Command>,
    gui: Option<GuiContext>,

    /// Local copy of the persisted draft, written back on every change.
    draft: Draft,
    draft_version: u64,
    check: lyrics::Check,
    /// Character index of the lyrics cursor, where tags are inserted.
    cursor: Option<usize>,
    licence_accepted: bool,
    export_dir: String,
    /// The engine settings being edited (from the worker's; `Apply` sends them back).
    settings: Option<UserSettings>,
}

impl EditorApp {
    pub fn new(
        params: Arc<SongGenParams>,
        shared: Arc<Shared>,
        status: Arc<Mutex<UiStatus>>,
        worker: Sender<Command>,
    ) -> Self {
        let export_dir = std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join("songgen-stems"))
            .unwrap_or_else(|| files::cache_dir().join("export"))
            .display()
            .to_string();
        Self {
            params,
            shared,
            status,
            worker,
            gui: None,
            draft: Draft::default(),
            draft_version: u64::MAX,
            check: lyrics::Check::default(),
            cursor: None,
            licence_accepted: license::is_accepted(),
            export_dir,
            settings: None,
        }
    }

    fn send(&self, cmd: Command) {
        let _ = self.worker.send(cmd);
    }

    /// Picks up a draft loaded by the host (project reload) and re-validates.
    fn refresh_draft(&mut self) {
        let v = self.params.draft.version();
        if v != self.draft_version {
            self.draft = self.params.draft.read().clone();
            self.draft_version = v;
            self.check = lyrics::check(&self.draft.lyrics);
        }
    }

    fn commit_draft(&mut self) {
        let d = self.draft.clone();
        self.params.draft.update(|x| *x = d);
        self.draft_version = self.params.draft.version();
    }

    fn set_param<P: Param>(&self, param: &P, value: P::Plain) {
        if let Some(gui) = &self.gui {
            let setter = gui.param_setter();
            setter.begin_set_parameter(param);
            setter.set_parameter(param, value);
            setter.end_set_parameter(param);
        }
    }
}

impl NiceEguiApp for EditorApp {
    fn build(
        &mut self,
        _ctx: egui::Context,
        gui: GuiContext,
        _frame: &mut Frame,
    ) -> Result<(), nice_plug_egui::baseview::HandlerError> {
        self.gui = Some(gui);
        Ok(())
    }

    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut Frame) {
        self.refresh_draft();
        let status = self
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let takes = self.params.takes.read().clone();
        let mut changed = false;

        egui::Panel::top("header").show(ui, |ui| header(ui, &status, &self.worker));
        egui::Panel::bottom("generate").show(ui, |ui| {
            self.generate_bar(ui, &status);
        });
        egui::Panel::left("lyrics")
            .default_size(430.0)
            .resizable(true)
            .show(ui, |ui| changed |= self.lyrics_panel(ui));
        egui::CentralPanel::default_margins().show(ui, |ui| {
            egui::ScrollArea::vertical().show(ui, |ui| {
                changed |= self.style_panel(ui);
                ui.separator();
                changed |= self.prompt_panel(ui, &status);
                ui.separator();
                self.takes_panel(ui, &takes);
                ui.separator();
                self.engine_panel(ui, &status);
            });
        });
        if changed {
            self.commit_draft();
        }
        if !self.licence_accepted {
            self.licence_window(ui);
        }
        if status.job.is_some() || self.shared.capture.phase() != CapturePhase::Idle {
            ui.ctx().request_repaint_after(Duration::from_millis(200));
        }
    }
}

fn header(ui: &mut egui::Ui, status: &UiStatus, worker: &Sender<Command>) {
    ui.horizontal(|ui| {
        ui.heading("SongGen");
        ui.label(RichText::new("SongGeneration 2").weak());
        ui.separator();
        let (color, text) = match &status.engine {
            EngineState::NotStarted => (Color32::GRAY, "engine: not started".to_owned()),
            EngineState::Starting => (Color32::YELLOW, "engine: loading model...".to_owned()),
            EngineState::Ready { model, device } if status.fallback.is_some() => (
                Color32::YELLOW,
                format!(
                    "engine ready: {model} on {device} (CPU fallback: the GPU engine cannot run)"
                ),
            ),
            EngineState::Ready { model, device } => (
                Color32::LIGHT_GREEN,
                format!("engine ready: {model} on {device}"),
            ),
            EngineState::Restarting { reason } => {
                (Color32::ORANGE, format!("{reason}; restarting..."))
            }
            EngineState::Failed { reason } => (Color32::LIGHT_RED, reason.clone()),
        };
        status_dot(ui, color);
        ui.label(text);
        if ui.small_button("Restart engine").clicked() {
            let _ = worker.send(Command::RestartEngine);
        }
    });
    if let Some((is_error, text)) = &status.message {
        let color = if *is_error {
            Color32::LIGHT_RED
        } else {
            Color32::LIGHT_GRAY
        };
        ui.label(RichText::new(text).color(color).small());
    }
}

impl EditorApp {
    fn lyrics_panel(&mut self, ui: &mut egui::Ui) -> bool {
        let mut changed = false;
        ui.heading("Lyrics");
        ui.horizontal_wrapped(|ui| {
            ui.label("Insert:");
            for tag in VOCAL_TAGS {
                if ui.button(tag).clicked() {
                    self.insert_tag(tag);
                    changed = true;
                }
            }
            for (name, tags) in INSTRUMENTAL_TAGS {
                ui.menu_button(format!("[{name}-...]"), |ui| {
                    for tag in tags {
                        if ui.button(tag).clicked() {
                            self.insert_tag(tag);
                            changed = true;
                            ui.close();
                        }
                    }
                });
            }
        });
        let out = egui::TextEdit::multiline(&mut self.draft.lyrics)
            .id_salt("lyrics-text")
            .desired_rows(22)
            .desired_width(f32::INFINITY)
            .font(egui::TextStyle::Monospace)
            .hint_text("[verse]\nfirst line\nsecond line\n\n[chorus]\n...")
            .show(ui);
        if let Some(range) = out.cursor_range {
            self.cursor = Some(range.primary.index.0);
        }
        if out.response.changed() {
            changed = true;
        }
        if changed {
            self.check = lyrics::check(&self.draft.lyrics);
        }
        if self.check.errors.is_empty() && self.check.warnings.is_empty() {
            ui.label(RichText::new("Lyrics OK").color(Color32::LIGHT_GREEN));
        }
        for issue in &self.check.errors {
            ui.label(
                RichText::new(format!(
                    "Line {}: {} ({})",
                    issue.line, issue.message, issue.fix
                ))
                .color(Color32::LIGHT_RED),
            );
        }
        for issue in &self.check.warnings {
            ui.label(
                RichText::new(format!(
                    "Line {}: {} ({}; fixed automatically)",
                    issue.line, issue.message, issue.fix
                ))
                .color(Color32::YELLOW),
            );
        }
        changed
    }

    /// Inserts a section tag on its own line at the cursor (or at the end).
    fn insert_tag(&mut self, tag: &str) {
        let text = &mut self.draft.lyrics;
        let chars = text.chars().count();
        let at = self.cursor.unwrap_or(chars).min(chars);
        let byte = text.char_indices().nth(at).map_or(text.len(), |(b, _)| b);
        let before = &text[..byte];
        let mut insert = String::new();
        if !before.is_empty() && !before.ends_with('\n') {
            insert.push('\n');
        }
        if !before.is_empty() && !before.ends_with("\n\n") {
            insert.push('\n');
        }
        insert.push_str(tag);
        insert.push('\n');
        text.insert_str(byte, &insert);
        self.cursor = Some(at + insert.chars().count());
    }

    fn style_panel(&mut self, ui: &mut egui::Ui) -> bool {
        let mut changed = false;
        let d = &mut self.draft;
        ui.heading("Style");
        egui::Grid::new("tags").num_columns(2).show(ui, |ui| {
            for (label, value, dim) in [
                ("Gender", &mut d.tags.gender, Dimension::Gender),
                ("Timbre", &mut d.tags.timbre, Dimension::Timbre),
                ("Genre", &mut d.tags.genre, Dimension::Genre),
                ("Emotion", &mut d.tags.emotion, Dimension::Emotion),
            ] {
                ui.label(label);
                changed |= pick(ui, label, value, dim.vocabulary());
                ui.end_row();
            }
            ui.label("Instruments");
            changed |= pick_instruments(ui, &mut d.tags.instruments);
            ui.end_row();
            ui.label("BPM");
            ui.horizontal(|ui| {
                let mut auto = d.tags.bpm == 0;
                if ui.checkbox(&mut auto, "auto").changed() {
                    d.tags.bpm = if auto { 0 } else { 120 };
                    changed = true;
                }
                if !auto {
                    changed |= ui
                        .add(egui::DragValue::new(&mut d.tags.bpm).range(tags::BPM_RANGE))
                        .changed();
                }
            });
            ui.end_row();
            ui.label("More");
            changed |= ui
                .add(
                    egui::TextEdit::singleline(&mut d.tags.free_text)
                        .hint_text("free text, e.g. lo-fi, vinyl crackle"),
                )
                .changed();
            ui.end_row();
            ui.label("Generate");
            egui::ComboBox::from_id_salt("gen-type")
                .selected_text(gen_type_label(d.gen_type))
                .show_ui(ui, |ui| {
                    for t in [
                        GenType::Separate,
                        GenType::Mixed,
                        GenType::Vocal,
                        GenType::Bgm,
                    ] {
                        changed |= ui
                            .selectable_value(&mut d.gen_type, t, gen_type_label(t))
                            .changed();
                    }
                });
            ui.end_row();
            ui.label("Seed");
            ui.horizontal(|ui| {
                let mut random = d.seed.is_none();
                if ui.checkbox(&mut random, "random").changed() {
                    d.seed = if random { None } else { Some(0) };
                    changed = true;
                }
                if let Some(seed) = d.seed.as_mut() {
                    changed |= ui.add(egui::DragValue::new(seed)).changed();
                }
            });
            ui.end_row();
        });
        if let Some(desc) = d.tags.descriptions() {
            ui.label(RichText::new(format!("Style text: {desc}")).weak().small());
            let style = tags::check_style(&desc);
            if !style.is_clean() {
                ui.label(RichText::new(style.report()).color(Color32::YELLOW).small());
            }
        }
        egui::CollapsingHeader::new("Advanced sampling").show(ui, |ui| {
            let s = &mut d.sampling;
            egui::Grid::new("sampling").num_columns(2).show(ui, |ui| {
                ui.label("Guidance (CFG)");
                changed |= ui
                    .add(egui::Slider::new(&mut s.cfg_coef, 0.0..=5.0))
                    .changed();
                ui.end_row();
                ui.label("Temperature");
                changed |= ui
                    .add(egui::Slider::new(&mut s.temperature, 0.05..=2.0))
                    .changed();
                ui.end_row();
                ui.label("Top-k");
                changed |= ui
                    .add(egui::DragValue::new(&mut s.top_k).range(1..=16384))
                    .changed();
                ui.end_row();
                ui.label("Repetition penalty");
                changed |= ui
                    .add(egui::Slider::new(&mut s.penalty, 1.0..=2.0))
                    .changed();
                ui.end_row();
                ui.label("Penalty window");
                changed |= ui
                    .add(egui::DragValue::new(&mut s.record_window).range(0..=1000))
                    .changed();
                ui.end_row();
                ui.label("Sampling");
                changed |= ui
                    .checkbox(&mut s.use_sampling, "sample (off = greedy)")
                    .changed();
                ui.end_row();
            });
            if ui.small_button("Reset to defaults").clicked() {
                *s = Default::default();
                changed = true;
            }
        });
        changed
    }

    fn prompt_panel(&mut self, ui: &mut egui::Ui, status: &UiStatus) -> bool {
        let mut changed = false;
        ui.heading("Style prompt");
        let current = self.draft.prompt.clone();
        ui.horizontal(|ui| {
            let mut pick = |ui: &mut egui::Ui, on: bool, label: &str, value: PromptSource| {
                if ui.radio(on, label).clicked() && !on {
                    self.draft.prompt = value;
                    changed = true;
                }
            };
            pick(
                ui,
                current == PromptSource::None,
                "None",
                PromptSource::None,
            );
            pick(
                ui,
                matches!(current, PromptSource::AutoGenre { .. }),
                "Auto genre",
                PromptSource::AutoGenre {
                    genre: "Auto".into(),
                },
            );
            pick(
                ui,
                current == PromptSource::Captured,
                "Captured region",
                PromptSource::Captured,
            );
            pick(
                ui,
                matches!(current, PromptSource::File { .. }),
                "File",
                PromptSource::File {
                    path: PathBuf::new(),
                },
            );
        });
        match &mut self.draft.prompt {
            PromptSource::None => {
                ui.label(RichText::new("Text tags only.").weak());
            }
            PromptSource::AutoGenre { genre } => {
                egui::ComboBox::from_id_salt("auto-genre")
                    .selected_text(genre.as_str())
                    .show_ui(ui, |ui| {
                        for g in AUTO_PROMPT_GENRES {
                            changed |= ui.selectable_value(genre, g.to_string(), g).changed();
                        }
                    });
            }
            PromptSource::File { path } => {
                let mut text = path.display().to_string();
                if ui
                    .add(
                        egui::TextEdit::singleline(&mut text)
                            .hint_text("/path/to/reference.wav")
                            .desired_width(f32::INFINITY),
                    )
                    .changed()
                {
                    *path = PathBuf::from(text);
                    changed = true;
                }
            }
            PromptSource::Captured => {}
        }
        for note in prompt_notes(&self.draft) {
            ui.label(RichText::new(note).weak());
        }
        // Capture is available whatever the prompt choice; a finished capture selects it.
        ui.horizontal(|ui| {
            ui.label("Capture from");
            let source = self.params.capture_source.value();
            for s in [CaptureSource::Main, CaptureSource::Sidechain] {
                let label = match s {
                    CaptureSource::Main => "main input",
                    CaptureSource::Sidechain => "Style Sidechain",
                };
                if ui.radio(source == s, label).clicked() {
                    self.set_param(&self.params.capture_source, s);
                }
            }
            let phase = self.shared.capture.phase();
            match phase {
                CapturePhase::Idle => {
                    if ui.button("Arm capture").clicked() {
                        self.shared.capture.arm();
                    }
                }
                _ => {
                    if ui.button("Disarm").clicked() {
                        self.shared.capture.disarm();
                    }
                }
            }
            match phase {
                CapturePhase::Armed => {
                    ui.label("armed: play the loop (or from where to record 10 s)");
                }
                CapturePhase::Recording => {
                    ui.add(
                        egui::ProgressBar::new(self.shared.capture.progress())
                            .desired_width(120.0)
                            .show_percentage(),
                    );
                }
                CapturePhase::Idle => {}
            }
        });
        let captured = self.params.capture.read().clone();
        match captured {
            Some(c) => {
                let level = c
                    .level
                    .map(|l| format!(", {}", l.describe()))
                    .unwrap_or_default();
                ui.label(format!(
                    "Captured {:.2} s ({}{level})",
                    c.seconds,
                    if c.from_loop {
                        "loop range"
                    } else {
                        "record on play"
                    }
                ));
                waveform(ui, &status.waveform);
                if let Some(level) = &c.level {
                    for w in capture_warnings(c.seconds, level) {
                        ui.colored_label(egui::Color32::from_rgb(230, 160, 40), w);
                    }
                }
            }
            None => {
                ui.label(RichText::new("Nothing captured yet.").weak());
            }
        }
        changed
    }

    fn takes_panel(&mut self, ui: &mut egui::Ui, takes: &Takes) {
        ui.heading("Takes");
        ui.horizontal(|ui| {
            ui.label("Main output plays");
            let current = self.params.main_output.value();
            for m in [
                MainOutput::Mix,
                MainOutput::Vocals,
                MainOutput::Accompaniment,
                MainOutput::Off,
            ] {
                if ui.radio(current == m, format!("{m:?}")).clicked() {
                    self.set_param(&self.params.main_output, m);
                }
            }
        });
        ui.label(
            RichText::new("Vocals and Accompaniment also play on their own output buses.")
                .weak()
                .small(),
        );
        if takes.list.is_empty() {
            ui.label(RichText::new("No takes yet: write lyrics and press Generate.").weak());
            return;
        }
        egui::ScrollArea::vertical()
            .id_salt("take-list")
            .max_height(160.0)
            .show(ui, |ui| {
                for (n, t) in takes.list.iter().enumerate().rev() {
                    let selected = takes.selected.as_deref() == Some(t.id.as_str());
                    let (state, color) = match &t.status {
                        TakeStatus::Running => ("generating".to_owned(), Color32::YELLOW),
                        TakeStatus::Done => (format_time(t.seconds()), Color32::LIGHT_GREEN),
                        TakeStatus::Failed { message } => {
                            (format!("failed: {message}"), Color32::LIGHT_RED)
                        }
                        TakeStatus::Cancelled => ("cancelled".to_owned(), Color32::GRAY),
                    };
                    let seed = t.seed.map_or("random".to_owned(), |s| s.to_string());
                    let text = RichText::new(format!(
                        "Take {}  ·  {}  ·  seed {}  ·  prompt: {}",
                        n + 1,
                        state,
                        seed,
                        t.prompt
                    ))
                    .color(color);
                    if ui.selectable_label(selected, text).clicked() {
                        self.send(Command::Select(t.id.clone()));
                    }
                }
            });
        let Some(sel) = takes.selected_take() else {
            return;
        };
        ui.horizontal(|ui| {
            ui.label("Starts at");
            let mut anchor = sel.anchor_seconds;
            if ui
                .add(
                    egui::DragValue::new(&mut anchor)
                        .range(0.0..=36000.0)
                        .speed(0.05)
                        .suffix(" s"),
                )
                .changed()
            {
                self.send(Command::SetAnchor {
                    take: sel.id.clone(),
                    seconds: anchor,
                });
            }
            if ui.button("Move to playhead").clicked() {
                if let Some(p) = self.shared.play.playhead_seconds() {
                    self.send(Command::SetAnchor {
                        take: sel.id.clone(),
                        seconds: p,
                    });
                }
            }
            if ui.button("Delete take").clicked() {
                self.send(Command::Delete(sel.id.clone()));
            }
        });
        ui.horizontal(|ui| {
            ui.add(egui::TextEdit::singleline(&mut self.export_dir).desired_width(260.0));
            let enabled = sel.status == TakeStatus::Done;
            if ui
                .add_enabled(enabled, egui::Button::new("Export stems"))
                .clicked()
            {
                self.send(Command::Export {
                    take: sel.id.clone(),
                    dir: PathBuf::from(self.export_dir.trim()),
                });
            }
        });
    }

    fn engine_panel(&mut self, ui: &mut egui::Ui, status: &UiStatus) {
        egui::CollapsingHeader::new("Engine settings").show(ui, |ui| {
            // Edited here, saved by the worker (no file I/O on the GUI thread).
            if self.settings.is_none() {
                self.settings = status.settings.clone();
            }
            let Some(settings) = self.settings.as_mut() else {
                ui.label(RichText::new("reading the settings...").weak());
                return;
            };
            ui.horizontal(|ui| {
                let local = settings.mode == EngineMode::Local;
                if ui.radio(local, "Local engine (shared)").clicked() && !local {
                    settings.mode = EngineMode::Local;
                }
                if ui.radio(!local, "Remote").clicked() && local {
                    settings.mode = EngineMode::Remote {
                        addr: String::new(),
                        token: String::new(),
                    };
                }
            });
            egui::Grid::new("engine").num_columns(2).show(ui, |ui| {
                if let EngineMode::Remote { addr, token } = &mut settings.mode {
                    ui.label("Address");
                    ui.add(
                        egui::TextEdit::singleline(addr)
                            .hint_text("host:port")
                            .desired_width(320.0),
                    );
                    ui.end_row();
                    ui.label("Token");
                    ui.add(
                        egui::TextEdit::singleline(token)
                            .password(true)
                            .hint_text("the engine's token")
                            .desired_width(320.0),
                    );
                    ui.end_row();
                }
                ui.label("Engine");
                ui.add(
                    egui::TextEdit::singleline(&mut settings.engine_path)
                        .hint_text("search: $SONGGEN_ENGINE, next to the plugin, PATH")
                        .desired_width(320.0),
                );
                ui.end_row();
                ui.label("Model folder");
                ui.add(
                    egui::TextEdit::singleline(&mut settings.model_dir)
                        .hint_text("default: the folder `songgen fetch` downloads to")
                        .desired_width(320.0),
                );
                ui.end_row();
                ui.label("Device");
                ui.horizontal(|ui| {
                    for d in ["auto", "cpu", "cuda"] {
                        let on =
                            settings.device == d || (d == "auto" && settings.device.is_empty());
                        if ui.radio(on, d).clicked() {
                            settings.device = d.to_owned();
                        }
                    }
                });
                ui.end_row();
                ui.label("Extra arguments");
                ui.add(egui::TextEdit::singleline(&mut settings.extra_args).desired_width(320.0));
                ui.end_row();
            });
            let changed = status.settings.as_ref() != Some(&*settings);
            let (mut apply, mut revert, mut restart) = (false, false, false);
            ui.horizontal(|ui| {
                apply = ui
                    .add_enabled(changed, egui::Button::new("Apply"))
                    .on_hover_text("save the settings and restart the engine")
                    .clicked();
                revert = ui
                    .add_enabled(changed, egui::Button::new("Revert"))
                    .clicked();
                restart = ui.button("Restart engine").clicked();
            });
            if apply {
                let _ = self.worker.send(Command::SettingsChanged(settings.clone()));
            } else if revert {
                self.settings = status.settings.clone();
            } else if restart {
                let _ = self.worker.send(Command::RestartEngine);
            }
            ui.label(
                RichText::new(format!(
                    "These are per-user settings, saved in {}, not in the project.",
                    status.settings_path.display()
                ))
                .weak()
                .small(),
            );
        });
    }

    fn generate_bar(&mut self, ui: &mut egui::Ui, status: &UiStatus) {
        ui.add_space(4.0);
        ui.horizontal(|ui| match &status.job {
            None => {
                let ok = self.check.is_ok() && self.licence_accepted;
                let button = egui::Button::new(RichText::new("Generate").heading());
                if ui.add_enabled(ok, button).clicked() {
                    self.commit_draft();
                    self.send(Command::Generate);
                }
                if !self.check.is_ok() {
                    ui.label(RichText::new("fix the lyrics to generate").color(Color32::LIGHT_RED));
                }
            }
            Some(job) => {
                if ui.button(RichText::new("Cancel").heading()).clicked() {
                    self.send(Command::Cancel);
                }
                if job.stages.is_empty() {
                    ui.label("waiting for the engine");
                }
                ui.vertical(|ui| {
                    // The LM and the renderer run side by side: one bar each.
                    for st in &job.stages {
                        let name = format!("{:?}", st.stage).to_lowercase();
                        ui.add(
                            egui::ProgressBar::new(st.fraction())
                                .desired_width(300.0)
                                .text(format!("{name} {}/{}", st.done, st.total)),
                        );
                    }
                    // How much of each stem can be heard already.
                    for (stem, secs) in &job.extents {
                        let max = job.max_seconds.unwrap_or(*secs).max(*secs).max(1e-3);
                        ui.add(
                            egui::ProgressBar::new((*secs / max) as f32)
                                .desired_width(300.0)
                                .text(format!("{stem}: {} playable", format_time(*secs))),
                        );
                    }
                });
                if let Some(eta) = job.eta() {
                    ui.label(format!("≤ {} left", format_time(eta.as_secs_f64())));
                }
                if let Some(first) = job.first_audio_s {
                    ui.label(format!("first audio after {}", format_time(first)));
                }
                ui.label(format!(
                    "elapsed {}",
                    format_time(job.started.elapsed().as_secs_f64())
                ));
            }
        });
        ui.add_space(4.0);
    }

    fn licence_window(&mut self, ui: &mut egui::Ui) {
        egui::Window::new("Before you start")
            .collapsible(false)
            .resizable(false)
            .anchor(egui::Align2::CENTER_CENTER, egui::Vec2::ZERO)
            .show(ui.ctx(), |ui| {
                ui.set_max_width(460.0);
                ui.label(license::NOTICE);
                ui.add_space(8.0);
                if ui.button("I have read the licence and accept it").clicked() {
                    match license::record_acceptance() {
                        Ok(()) => {
                            self.licence_accepted = true;
                            self.send(Command::RestartEngine);
                        }
                        Err(e) => {
                            self.status
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .message = Some((true, format!("{e:#}")));
                        }
                    }
                }
            });
    }
}

/// A small filled circle in `color` (the default fonts have no bullet glyphs).
fn status_dot(ui: &mut egui::Ui, color: Color32) {
    let (rect, _) = ui.allocate_exact_size(egui::vec2(12.0, 12.0), egui::Sense::hover());
    ui.painter().circle_filled(rect.center(), 5.0, color);
}

/// A combo box over one dimension's vocabulary (plus "none"); returns whether it changed.
fn pick(ui: &mut egui::Ui, id: &str, value: &mut String, vocabulary: &[&str]) -> bool {
    let mut changed = false;
    let shown = if value.is_empty() {
        "—"
    } else {
        value.as_str()
    };
    egui::ComboBox::from_id_salt(id)
        .selected_text(shown.to_owned())
        .width(200.0)
        .height(300.0)
        .show_ui(ui, |ui| {
            changed |= ui.selectable_value(value, String::new(), "—").changed();
            for o in vocabulary {
                changed |= ui.selectable_value(value, o.to_string(), *o).changed();
            }
        });
    changed
}

/// Instruments: free text plus a menu that adds one ("piano" + "drums" = "piano and drums").
fn pick_instruments(ui: &mut egui::Ui, value: &mut String) -> bool {
    let mut changed = false;
    ui.horizontal(|ui| {
        changed |= ui
            .add(
                egui::TextEdit::singleline(value)
                    .hint_text("e.g. piano and drums")
                    .desired_width(170.0),
            )
            .changed();
        ui.menu_button("+", |ui| {
            egui::ScrollArea::vertical()
                .max_height(300.0)
                .show(ui, |ui| {
                    for preset in INSTRUMENT_PRESETS {
                        if ui.button(*preset).clicked() {
                            *value = preset.to_string();
                            changed = true;
                            ui.close();
                        }
                    }
                    ui.separator();
                    for inst in Dimension::Instrument.vocabulary() {
                        if ui.button(*inst).clicked() {
                            if value.trim().is_empty() {
                                *value = inst.to_string();
                            } else {
                                *value = format!("{} and {inst}", value.trim());
                            }
                            changed = true;
                            ui.close();
                        }
                    }
                });
        });
        if !value.is_empty() && ui.small_button("x").clicked() {
            value.clear();
            changed = true;
        }
    });
    changed
}

fn gen_type_label(t: GenType) -> &'static str {
    match t {
        GenType::Separate => "Separate stems (vocals + accompaniment)",
        GenType::Mixed => "Full mix only",
        GenType::Vocal => "Vocals only",
        GenType::Bgm => "Accompaniment only",
    }
}

fn format_time(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    format!("{}:{:02}", s / 60, s % 60)
}

/// Draws peak levels as a filled waveform.
fn waveform(ui: &mut egui::Ui, peaks: &[f32]) {
    let size = egui::vec2(ui.available_width().min(520.0), 56.0);
    let (rect, _) = ui.allocate_exact_size(size, egui::Sense::hover());
    let painter = ui.painter_at(rect);
    painter.rect_filled(rect, 3.0, Color32::from_gray(24));
    if peaks.is_empty() {
        return;
    }
    let mid = rect.center().y;
    let half = rect.height() / 2.0 - 2.0;
    let step = rect.width() / peaks.len() as f32;
    for (i, p) in peaks.iter().enumerate() {
        let x = rect.left() + (i as f32 + 0.5) * step;
        let h = (p.clamp(0.0, 1.0) * half).max(0.5);
        painter.line_segment(
            [egui::pos2(x, mid - h), egui::pos2(x, mid + h)],
            egui::Stroke::new(step.max(1.0), Color32::from_rgb(110, 180, 255)),
        );
    }
}
