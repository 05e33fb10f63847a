//! Where the files of a model live on disk.
//!
//! Users download two things from the Hub: a model folder (`config.yaml` + `model.pt`, e.g.
//! `songgeneration_v2_large/`) and the shared runtime (`ckpt/` and `third_party/`, from
//! `SongGeneration-Runtime`). `songgen fetch` puts them side by side in the per-user models
//! folder as `<models>/<model>/` and `<models>/runtime/`; a folder that holds both (the
//! reference's own working-directory layout) works too.

use std::path::{Path, PathBuf};

/// Name of the model `songgen` uses when none is given.
pub const DEFAULT_MODEL: &str = "songgeneration_v2_large";

/// The per-user songgen folder: `$SONGGEN_HOME` when set (scripts, tests), else the platform's
/// data folder (`~/.local/share/songgen`, `~/Library/Application Support/songgen`,
/// `%APPDATA%\songgen`).
pub fn songgen_home() -> PathBuf {
    if let Some(home) = std::env::var_os("SONGGEN_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(home);
    }
    directories::ProjectDirs::from("", "", "songgen")
        .map(|d| d.data_dir().to_path_buf())
        .unwrap_or_else(|| PathBuf::from(".songgen"))
}

/// Where `songgen fetch` puts models (`<home>/models/<model>/`, `<home>/models/runtime/`).
pub fn default_models_dir() -> PathBuf {
    songgen_home().join("models")
}

/// The per-user configuration folder (the plugin's settings, the network engine's token):
/// `$SONGGEN_CONFIG_DIR` when set, else the platform's config folder (`~/.config/songgen`, ...).
pub fn config_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SONGGEN_CONFIG_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    directories::ProjectDirs::from("", "", "songgen")
        .map(|d| d.config_dir().to_path_buf())
        .unwrap_or_else(|| songgen_home().join("config"))
}

/// Where `songgen serve --listen` keeps its token when no `--token-file` is given.
pub fn default_token_file() -> PathBuf {
    config_dir().join("engine.token")
}

/// The per-user runtime folder of the shared local engine (its socket, lock and log):
/// `$SONGGEN_RUNTIME_DIR` when set, else `$XDG_RUNTIME_DIR/songgen`, else `songgen-<user>` in the
/// temporary folder. The engine creates it with mode 0700 and refuses one that others can enter.
pub fn runtime_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SONGGEN_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("songgen");
    }
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("USERNAME"))
        .unwrap_or_else(|_| "user".into());
    let user: String = user
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .collect();
    std::env::temp_dir().join(format!("songgen-{user}"))
}

/// The shared local engine's Unix socket (`songgen serve --socket` without a path).
pub fn engine_socket() -> PathBuf {
    runtime_dir().join("engine.sock")
}

/// Resolved locations of every file the pipeline reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelPaths {
    /// Folder with `config.yaml` and `model.pt` (or `model.safetensors`).
    pub model_dir: PathBuf,
    /// Folder with `ckpt/` and `third_party/`.
    pub runtime_dir: PathBuf,
}

/// Errors locating a model.
#[derive(Debug, thiserror::Error)]
pub enum PathsError {
    #[error("model folder {0} does not exist (run `songgen fetch` or pass --model DIR)")]
    MissingModel(PathBuf),
    #[error("model folder {0} has no config.yaml")]
    MissingConfig(PathBuf),
    #[error("no runtime files for model {model}: looked for third_party/ in {tried} (run `songgen fetch runtime`)")]
    MissingRuntime { model: PathBuf, tried: String },
}

impl ModelPaths {
    /// Resolves a model folder; the runtime is `runtime` when given, else the model folder itself
    /// when it has `third_party/`, else `<model>/../runtime`.
    pub fn resolve(
        model_dir: impl AsRef<Path>,
        runtime: Option<&Path>,
    ) -> Result<Self, PathsError> {
        let model_dir = model_dir.as_ref().to_path_buf();
        if !model_dir.is_dir() {
            return Err(PathsError::MissingModel(model_dir));
        }
        if !model_dir.join("config.yaml").is_file() {
            return Err(PathsError::MissingConfig(model_dir));
        }
        let candidates: Vec<PathBuf> = match runtime {
            Some(r) => vec![r.to_path_buf()],
            None => {
                let mut c = vec![model_dir.clone()];
                if let Some(parent) = model_dir.parent() {
                    c.push(parent.join("runtime"));
                }
                c
            }
        };
        let runtime_dir = candidates
            .iter()
            .find(|c| c.join("third_party").is_dir())
            .cloned()
            .ok_or_else(|| PathsError::MissingRuntime {
                model: model_dir.clone(),
                tried: candidates
                    .iter()
                    .map(|c| c.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        Ok(Self {
            model_dir,
            runtime_dir,
        })
    }

    pub fn config_yaml(&self) -> PathBuf {
        self.model_dir.join("config.yaml")
    }

    /// The LM checkpoint: `model.safetensors` when converted, else the original `model.pt`.
    pub fn lm_weights(&self) -> PathBuf {
        let st = self.model_dir.join("model.safetensors");
        if st.is_file() {
            st
        } else {
            self.model_dir.join("model.pt")
        }
    }

    /// Qwen2 tokenizer files (`tokenizer.json`, or `vocab.json` + `merges.txt`).
    pub fn tokenizer_dir(&self) -> PathBuf {
        self.runtime_dir.join("third_party/Qwen2-7B")
    }

    /// Separate tokenizer and the whole flow decoder.
    pub fn septoken(&self) -> PathBuf {
        self.runtime_dir
            .join("ckpt/model_septoken/model_2.safetensors")
    }

    /// Mixed (1-RVQ) tokenizer, encode only.
    pub fn mixed_tokenizer(&self) -> PathBuf {
        self.runtime_dir
            .join("ckpt/model_1rvq/model_2_fixed.safetensors")
    }

    pub fn vae_ckpt(&self) -> PathBuf {
        self.runtime_dir
            .join("ckpt/vae/autoencoder_music_1320k.ckpt")
    }

    pub fn vae_config(&self) -> PathBuf {
        self.runtime_dir.join("ckpt/vae/stable_audio_1920_vae.json")
    }

    pub fn demucs(&self) -> PathBuf {
        self.runtime_dir
            .join("third_party/demucs/ckpt/htdemucs.pth")
    }

    /// The auto-prompt library: converted safetensors when present, else the original pickle.
    pub fn auto_prompt(&self) -> PathBuf {
        let st = self.runtime_dir.join("tools/new_auto_prompt.safetensors");
        if st.is_file() {
            st
        } else {
            self.runtime_dir.join("tools/new_auto_prompt.pt")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_sibling_runtime_and_reports_what_is_missing() {
        let root = std::env::temp_dir().join(format!("songgen-paths-{}", std::process::id()));
        let model = root.join("songgeneration_v2_large");
        std::fs::create_dir_all(&model).unwrap();
        assert!(matches!(
            ModelPaths::resolve(&model, None),
            Err(PathsError::MissingConfig(_))
        ));
        std::fs::write(model.join("config.yaml"), "version: v2\n").unwrap();
        let err = ModelPaths::resolve(&model, None).unwrap_err().to_string();
        assert!(err.contains("runtime"), "{err}");
        std::fs::create_dir_all(root.join("runtime/third_party")).unwrap();
        let paths = ModelPaths::resolve(&model, None).unwrap();
        assert_eq!(paths.runtime_dir, root.join("runtime"));
        assert_eq!(paths.lm_weights(), model.join("model.pt"));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
