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
    /// Its level, measured when it was saved (absent in projects saved before).
    #[serde(default)]
    pub level: Option<crate::capture::CaptureLevel>,
}

/// How to run the engine (`songgen serve --stdio`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct EngineSettings {
    /// Engine executable; empty = search (`$SONGGEN_ENGINE`, next to the plugin, `PATH`).
    pub engine_path: String,
    /// `--model DIR`; empty = the engine's default model folder.
    pub model_dir: String,
    /// `--device`: `auto`, `cpu` or `cuda`.
    pub device: String,
    /// Further arguments, split on whitespace.
    pub extra_args: String,
}

impl EngineSettings {
    /// Arguments after `serve --stdio`.
    pub fn args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if !self.model_dir.trim().is_empty() {
            args.extend(["--model".to_owned(), self.model_dir.trim().to_owned()]);
        }
        let device = self.device.trim();
        if !device.is_empty() && device != "auto" {
            args.extend(["--device".to_owned(), device.to_owned()]);
        }
        args.extend(self.extra_args.split_whitespace().map(str::to_owned));
        args
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
    #[persist = "engine"]
    pub engine: Watched<EngineSettings>,
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
            engine: Watched::new(EngineSettings::default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_settings_become_serve_arguments() {
        let s = EngineSettings {
            engine_path: String::new(),
            model_dir: " /m/v2 ".into(),
            device: "cuda".into(),
            extra_args: "--dtype f32".into(),
        };
        assert_eq!(
            s.args(),
            ["--model", "/m/v2", "--device", "cuda", "--dtype", "f32"]
        );
        let auto = EngineSettings {
            device: "auto".into(),
            ..EngineSettings::default()
        };
        assert!(auto.args().is_empty());
    }
}
