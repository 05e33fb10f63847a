//! What the plugin keeps in the host's project: the song being written (lyrics, style, options)
//! and the list of takes. Only metadata: stems stay as WAV files in the per-user cache and are
//! referenced by path, so a project save never re-serialises audio.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{RwLock, RwLockReadGuard};

use nice_plug::params::persist::PersistentField;
use serde::{Deserialize, Serialize};
use songgen_protocol::{GenType, SamplingOptions};

/// Where the style prompt of the next generation comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum PromptSource {
    /// Text style tags only.
    #[default]
    None,
    /// A genre of the engine's auto-prompt library.
    AutoGenre { genre: String },
    /// The last region captured from the host (a WAV in the cache).
    Captured,
    /// An audio file chosen by the user.
    File { path: PathBuf },
}

impl PromptSource {
    /// Whether the prompt is a reference clip (captured or a file).
    pub fn is_audio(&self) -> bool {
        matches!(self, PromptSource::Captured | PromptSource::File { .. })
    }
}

/// The reference's advice on the style prompt (its README, "Prompt Audio Usage Notes") as it
/// applies to `draft`: an audio prompt and style tags conflict, the chorus is the best region.
pub fn prompt_notes(draft: &Draft) -> Vec<String> {
    let mut notes = Vec::new();
    if draft.prompt.is_audio() {
        if draft.tags.descriptions().is_some() {
            notes.push(
                "Audio prompt and style tags are both set: the model may follow neither well \
                 when they disagree. Clear the tags to let the audio lead."
                    .to_owned(),
            );
        }
        notes.push("The chorus makes the best region; the model uses its first 10 s.".to_owned());
    }
    notes
}

/// The style tags the reference model was trained with, plus free text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StyleTags {
    pub gender: String,
    pub timbre: String,
    pub genre: String,
    pub emotion: String,
    pub instruments: String,
    /// 0 leaves the tempo to the model.
    pub bpm: u32,
    pub free_text: String,
}

impl Default for StyleTags {
    fn default() -> Self {
        Self {
            gender: "female".into(),
            timbre: String::new(),
            genre: "pop".into(),
            emotion: String::new(),
            instruments: String::new(),
            bpm: 0,
            free_text: String::new(),
        }
    }
}

impl StyleTags {
    /// The `descriptions` string of a job ("female, dark, pop, sad, piano and drums, the bpm is
    /// 125"); `None` when every field is empty.
    pub fn descriptions(&self) -> Option<String> {
        let mut parts: Vec<String> = [
            &self.gender,
            &self.timbre,
            &self.genre,
            &self.emotion,
            &self.instruments,
        ]
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
        if self.bpm > 0 {
            parts.push(format!("the bpm is {}", self.bpm));
        }
        let free = self.free_text.trim().trim_end_matches('.');
        if !free.is_empty() {
            parts.push(free.to_owned());
        }
        (!parts.is_empty()).then(|| parts.join(", "))
    }
}

/// The song being written: everything the next Generate uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Draft {
    pub lyrics: String,
    pub tags: StyleTags,
    pub gen_type: GenType,
    /// `None` = a new random seed each time.
    pub seed: Option<u64>,
    pub sampling: SamplingOptions,
    pub prompt: PromptSource,
}

impl Default for Draft {
    fn default() -> Self {
        Self {
            lyrics: "[intro-short]\n\n[verse]\n\n[chorus]\n\n[outro-short]\n".into(),
            tags: StyleTags::default(),
            gen_type: GenType::Separate,
            seed: None,
            sampling: SamplingOptions::default(),
            prompt: PromptSource::None,
        }
    }
}

/// How a take ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum TakeStatus {
    Running,
    Done,
    Failed { message: String },
    Cancelled,
}

/// One generation: its inputs, its result files and where it sits on the host timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Take {
    /// Unique within the project; names the stem files.
    pub id: String,
    /// Seconds since the Unix epoch.
    pub created: u64,
    pub lyrics: String,
    pub descriptions: Option<String>,
    /// Human-readable prompt ("auto: Pop", "captured 10.0 s", a file path).
    pub prompt: String,
    pub gen_type: GenType,
    /// The seed actually used (reported by the engine), or the requested one.
    pub seed: Option<u64>,
    pub sampling: SamplingOptions,
    pub status: TakeStatus,
    /// WAV files by stem name (`mixed`, `vocal`, `bgm`).
    #[serde(default)]
    pub stems: BTreeMap<String, PathBuf>,
    #[serde(default)]
    pub sample_rate: u32,
    #[serde(default)]
    pub frames: u64,
    /// Timeline position (seconds) where the take's first sample plays.
    #[serde(default)]
    pub anchor_seconds: f64,
}

impl Take {
    pub fn seconds(&self) -> f64 {
        if self.sample_rate == 0 {
            0.0
        } else {
            self.frames as f64 / self.sample_rate as f64
        }
    }
}

/// The take list and which take plays.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Takes {
    pub list: Vec<Take>,
    pub selected: Option<String>,
}

impl Takes {
    pub fn get(&self, id: &str) -> Option<&Take> {
        self.list.iter().find(|t| t.id == id)
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut Take> {
        self.list.iter_mut().find(|t| t.id == id)
    }

    pub fn selected_take(&self) -> Option<&Take> {
        self.selected.as_deref().and_then(|id| self.get(id))
    }
}

/// A persisted value that counts its changes, so the worker thread notices when the host loads a
/// project (nice-plug writes persisted fields without calling back into the plugin).
#[derive(Debug, Default)]
pub struct Watched<T> {
    value: RwLock<T>,
    version: AtomicU64,
}

impl<T> Watched<T> {
    pub fn new(value: T) -> Self {
        Self {
            value: RwLock::new(value),
            version: AtomicU64::new(0),
        }
    }

    pub fn read(&self) -> RwLockReadGuard<'_, T> {
        self.value.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the value and bumps the version.
    pub fn update<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let mut guard = self.value.write().unwrap_or_else(|e| e.into_inner());
        let r = f(&mut guard);
        self.version.fetch_add(1, Ordering::AcqRel);
        r
    }

    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }
}

impl<'a, T> PersistentField<'a, T> for Watched<T>
where
    T: Serialize + Deserialize<'a> + Send + Sync,
{
    fn set(&self, new_value: T) {
        self.update(|v| *v = new_value);
    }

    fn map<F, R>(&self, f: F) -> R
    where
        F: Fn(&T) -> R,
    {
        f(&self.read())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_join_non_empty_tags() {
        let tags = StyleTags {
            gender: "male".into(),
            timbre: "dark".into(),
            genre: "rock".into(),
            emotion: String::new(),
            instruments: "guitar and drums".into(),
            bpm: 128,
            free_text: " gritty. ".into(),
        };
        assert_eq!(
            tags.descriptions().as_deref(),
            Some("male, dark, rock, guitar and drums, the bpm is 128, gritty")
        );
        let empty = StyleTags {
            gender: String::new(),
            genre: String::new(),
            ..StyleTags::default()
        };
        assert_eq!(empty.descriptions(), None);
    }

    #[test]
    fn audio_prompts_come_with_the_references_advice() {
        let mut draft = Draft::default();
        assert!(prompt_notes(&draft).is_empty());
        draft.prompt = PromptSource::Captured;
        let notes = prompt_notes(&draft);
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].contains("both set") && notes[1].contains("chorus"));
        draft.tags = StyleTags {
            gender: String::new(),
            genre: String::new(),
            ..StyleTags::default()
        };
        let notes = prompt_notes(&draft);
        assert_eq!(notes.len(), 1);
        assert!(notes[0].contains("chorus"));
        draft.prompt = PromptSource::AutoGenre {
            genre: "Pop".into(),
        };
        assert!(prompt_notes(&draft).is_empty());
    }

    #[test]
    fn watched_set_bumps_version() {
        let w = Watched::new(Takes::default());
        let v0 = w.version();
        PersistentField::set(
            &w,
            Takes {
                selected: Some("t".into()),
                ..Takes::default()
            },
        );
        assert!(w.version() > v0);
        assert_eq!(w.read().selected.as_deref(), Some("t"));
    }
}
