//! Host-visible parameters and the persisted session (draft, takes, captured prompt, editor
//! size). The engine settings are per-user (`crate::settings`), not part of the project.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use nice_plug::editor::dpi::{LogicalSize, Size};
use nice_plug::params::persist::PersistentField;
use nice_plug::prelude::*;
use nice_plug_egui::EguiEditorState;
use serde::{Deserialize, Serialize};

use crate::capture::CaptureSource;
use crate::playback::MainOutput;
use crate::session::{Draft, Takes, Watched};

/// The last style region captured from the host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapturedPrompt {
    pub path: PathBuf,
    pub seconds: f64,
    /// Whether the host's loop range bounded it (else record-on-play).
    pub from_loop: bool,
    /// Its level, measured when it was saved (absent in projects saved before).
    #[serde(default)]
    pub level: Option<crate::capture::CaptureLevel>,
}

/// The editor window's logical size, saved with the project. nice-plug-egui's state has no serde
/// support and no size setter, so the size lives here: each opened editor gets a fresh
/// [`EguiEditorState`] at the saved size, and saving reads the size back from the open one
/// (the host may have resized it).
#[derive(Debug)]
pub struct EditorSize {
    saved: RwLock<(u32, u32)>,
    live: RwLock<Option<Arc<EguiEditorState>>>,
}

impl EditorSize {
    pub const MIN: (u32, u32) = (640, 480);
    pub const MAX: (u32, u32) = (4096, 4096);

    pub fn new(width: u32, height: u32) -> Self {
        Self {
            saved: RwLock::new(Self::clamp((width, height))),
            live: RwLock::new(None),
        }
    }

    fn clamp((w, h): (u32, u32)) -> (u32, u32) {
        (
            w.clamp(Self::MIN.0, Self::MAX.0),
            h.clamp(Self::MIN.1, Self::MAX.1),
        )
    }

    /// The current size: the open (or last opened) editor's, else the saved one.
    pub fn get(&self) -> (u32, u32) {
        let live = self.live.read().unwrap_or_else(|e| e.into_inner());
        match live.as_ref().map(|s| s.size()) {
            Some(Size::Logical(l)) => {
                Self::clamp((l.width.round() as u32, l.height.round() as u32))
            }
            Some(Size::Physical(p)) => {
                let l: LogicalSize<f64> = p.to_logical(f64::from(
                    live.as_ref().map_or(1.0, |s| s.user_scale_factor()),
                ));
                Self::clamp((l.width.round() as u32, l.height.round() as u32))
            }
            _ => *self.saved.read().unwrap_or_else(|e| e.into_inner()),
        }
    }

    /// A state for a new editor window at the current size.
    pub fn open_state(&self) -> Arc<EguiEditorState> {
        let (w, h) = self.get();
        let state = EguiEditorState::from_size(LogicalSize::new(w as f64, h as f64), 1.0);
        *self.saved.write().unwrap_or_else(|e| e.into_inner()) = (w, h);
        *self.live.write().unwrap_or_else(|e| e.into_inner()) = Some(state.clone());
        state
    }
}

impl<'a> PersistentField<'a, (u32, u32)> for EditorSize {
    fn set(&self, new_value: (u32, u32)) {
        *self.saved.write().unwrap_or_else(|e| e.into_inner()) = Self::clamp(new_value);
        // A loaded project's size wins over the last window's.
        *self.live.write().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn map<F, R>(&self, f: F) -> R
    where
        F: Fn(&(u32, u32)) -> R,
    {
        f(&self.get())
    }
}

#[derive(Params)]
pub struct SongGenParams {
    /// What the main output adds to its input.
    #[id = "main_out"]
    pub main_output: EnumParam<MainOutput>,
    /// Which input a style capture records.
    #[id = "capture_src"]
    pub capture_source: EnumParam<CaptureSource>,
    /// Turning this on arms a style capture, off disarms it (so a controller or the host's
    /// automation can start a capture; the editor's button arms directly).
    #[id = "capture_arm"]
    pub capture_arm: BoolParam,
    /// Turning this on starts Generate with the current draft (as the editor's button does),
    /// so a controller or the host's automation can trigger a take.
    #[id = "generate"]
    pub generate: BoolParam,

    #[persist = "draft"]
    pub draft: Watched<Draft>,
    #[persist = "takes"]
    pub takes: Watched<Takes>,
    #[persist = "capture"]
    pub capture: Watched<Option<CapturedPrompt>>,
    // No engine settings here: they are per-user (`crate::settings`), never read from a
    // project. An `engine` entry in an old project is ignored.
    #[persist = "editor-size"]
    pub editor_size: EditorSize,
}

impl Default for SongGenParams {
    fn default() -> Self {
        Self {
            main_output: EnumParam::new("Main output", MainOutput::Mix),
            capture_source: EnumParam::new("Capture source", CaptureSource::Main),
            capture_arm: BoolParam::new("Arm capture", false),
            generate: BoolParam::new("Generate", false),
            draft: Watched::new(Draft::default()),
            takes: Watched::new(Takes::default()),
            capture: Watched::new(None),
            editor_size: EditorSize::new(crate::editor::WIDTH, crate::editor::HEIGHT),
        }
    }
}
