//! Host-visible parameters and the persisted session (draft, takes, captured prompt, engine
//! settings).

use std::path::PathBuf;

use nice_plug::prelude::*;
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
}

/// How to run the engine.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct EngineSettings {
    /// Engine executable; empty = search (`$SONGGEN_ENGINE`, next to the plugin, `PATH`).
    pub engine_path: String,
    /// Extra arguments after `serve --stdio` (e.g. `--model DIR`), split on whitespace.
    pub extra_args: String,
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

    #[persist = "draft"]
    pub draft: Watched<Draft>,
    #[persist = "takes"]
    pub takes: Watched<Takes>,
    #[persist = "capture"]
    pub capture: Watched<Option<CapturedPrompt>>,
    #[persist = "engine"]
    pub engine: Watched<EngineSettings>,
}

impl Default for SongGenParams {
    fn default() -> Self {
        Self {
            main_output: EnumParam::new("Main output", MainOutput::Mix),
            capture_source: EnumParam::new("Capture source", CaptureSource::Main),
            capture_arm: BoolParam::new("Arm capture", false),
            draft: Watched::new(Draft::default()),
            takes: Watched::new(Takes::default()),
            capture: Watched::new(None),
            engine: Watched::new(EngineSettings::default()),
        }
    }
}
