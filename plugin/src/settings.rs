//! Per-user engine settings: which engine to run (or which remote engine to reach), its model
//! folder, device and extra arguments. They live in a settings file in the user's config folder
//! (`songgen_protocol::paths::config_dir()/plugin.json`), never in the host's project: a project
//! someone sent you must not choose a program for the plugin to run.
//!
//! Loading and saving are file I/O: only the worker thread calls them.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// Name of the settings file inside the config folder.
pub const FILE_NAME: &str = "plugin.json";

/// Where the engine runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum EngineMode {
    /// The shared local engine (one per user, started by the first plugin instance).
    #[default]
    Local,
    /// A `songgen serve --listen` engine on another machine.
    Remote { addr: String, token: String },
}

/// The plugin's per-user settings file.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct UserSettings {
    pub mode: EngineMode,
    /// Engine executable; empty = search (`$SONGGEN_ENGINE`, next to the plugin, `PATH`).
    pub engine_path: String,
    /// `--model DIR`; empty = the engine's default model folder.
    pub model_dir: String,
    /// `--device`: `auto`, `cpu` or `cuda`.
    pub device: String,
    /// Further arguments, split on whitespace.
    pub extra_args: String,
}

impl UserSettings {
    /// `config_dir()/plugin.json`.
    pub fn path() -> PathBuf {
        songgen_protocol::paths::config_dir().join(FILE_NAME)
    }

    /// The saved settings. A missing file gives the defaults and no warning; an unreadable or
    /// invalid one gives the defaults and a warning naming the file.
    pub fn load() -> (Self, Option<String>) {
        Self::load_from(&Self::path())
    }

    /// [`Self::load`] from `path`.
    pub fn load_from(path: &Path) -> (Self, Option<String>) {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (Self::default(), None),
            Err(e) => {
                return (
                    Self::default(),
                    Some(format!(
                        "cannot read the settings file {}: {e}; using the default engine settings",
                        path.display()
                    )),
                )
            }
        };
        match serde_json::from_str(&text) {
            Ok(s) => (s, None),
            Err(e) => (
                Self::default(),
                Some(format!(
                    "the settings file {} is not valid ({e}); using the default engine settings",
                    path.display()
                )),
            ),
        }
    }

    /// Writes the settings file atomically (a temporary file renamed over it), readable by the
    /// user only (it may hold a token).
    pub fn save(&self) -> Result<()> {
        self.save_to(&Self::path())
    }

    /// [`Self::save`] to `path`.
    pub fn save_to(&self, path: &Path) -> Result<()> {
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut text = serde_json::to_string_pretty(self)?;
        text.push('\n');
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| FILE_NAME.to_owned());
        let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let written = (|| -> Result<()> {
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let mut f = opts
                .open(&tmp)
                .with_context(|| format!("creating {}", tmp.display()))?;
            #[cfg(unix)]
            {
                // A temporary file left over with wider permissions keeps them on open.
                use std::os::unix::fs::PermissionsExt;
                f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            }
            f.write_all(text.as_bytes())
                .and_then(|()| f.sync_all())
                .with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
            Ok(())
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }

    /// Arguments after `serve --socket PATH` (or `serve --stdio`).
    pub fn engine_args(&self) -> Vec<String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("songgen-settings-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn settings_become_serve_arguments() {
        let s = UserSettings {
            model_dir: " /m/v2 ".into(),
            device: "cuda".into(),
            extra_args: "--dtype  f32".into(),
            ..UserSettings::default()
        };
        assert_eq!(
            s.engine_args(),
            ["--model", "/m/v2", "--device", "cuda", "--dtype", "f32"]
        );
        for device in ["auto", "", "  "] {
            let s = UserSettings {
                device: device.into(),
                ..UserSettings::default()
            };
            assert!(s.engine_args().is_empty(), "{device:?}");
        }
    }

    #[test]
    fn save_and_load_round_trip_atomically_and_privately() {
        let dir = temp("round-trip");
        let path = dir.join("sub").join(FILE_NAME);
        let s = UserSettings {
            mode: EngineMode::Remote {
                addr: "studio:7860".into(),
                token: "s3cret".into(),
            },
            engine_path: "/opt/songgen/songgen".into(),
            model_dir: "/m".into(),
            device: "cpu".into(),
            extra_args: "--threads 4".into(),
        };
        s.save_to(&path).unwrap();
        assert_eq!(UserSettings::load_from(&path), (s.clone(), None));
        // The mode is tagged like the other enums of the plugin's files.
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(json["mode"]["kind"], "remote");
        assert_eq!(json["mode"]["addr"], "studio:7860");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        }
        // Saving again replaces the file and leaves no temporary file behind.
        let local = UserSettings::default();
        local.save_to(&path).unwrap();
        assert_eq!(UserSettings::load_from(&path).0, local);
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [FILE_NAME], "{names:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_or_invalid_files_give_defaults() {
        let dir = temp("invalid");
        let path = dir.join(FILE_NAME);
        assert_eq!(
            UserSettings::load_from(&path),
            (UserSettings::default(), None)
        );
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(&path, "{ not json").unwrap();
        let (s, warning) = UserSettings::load_from(&path);
        assert_eq!(s, UserSettings::default());
        let warning = warning.expect("a warning");
        assert!(warning.contains(&path.display().to_string()), "{warning}");
        // Unknown and missing keys are fine; a wrong type is not.
        std::fs::write(&path, r#"{"device": "cpu", "future": 1}"#).unwrap();
        let (s, warning) = UserSettings::load_from(&path);
        assert_eq!(
            (s.device.as_str(), s.mode, warning),
            ("cpu", EngineMode::Local, None)
        );
        std::fs::write(&path, r#"{"mode": {"kind": "remote"}}"#).unwrap();
        assert!(UserSettings::load_from(&path).1.is_some());
        // A folder where the file should be is reported, not a panic.
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir_all(&path).unwrap();
        assert!(UserSettings::load_from(&path).1.is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
