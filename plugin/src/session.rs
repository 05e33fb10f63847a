//! What the plugin keeps in the host's project: the song being written (lyrics, style, options)
//! and the list of takes. Only metadata: stems stay as WAV files in the per-user cache and are
//! referenced by path, so a project save never re-serialises audio.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
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

/// Names of the stems a take can have.
pub const STEM_NAMES: [&str; 3] = ["mixed", "vocal", "bgm"];

/// `id` for a message: escaped and cut short (it comes from an untrusted project).
fn shown(id: &str) -> String {
    let mut s: String = id
        .chars()
        .take(64)
        .collect::<String>()
        .escape_debug()
        .to_string();
    if id.chars().count() > 64 {
        s.push_str("...");
    }
    s
}

/// Checks one take restored from a project: its id follows the engine's id rule and each stem
/// is a known stem name whose file lies inside `takes_root/<id>/`. Returns the take without the
/// bad stems, or `None` when the take itself must go, and why each thing was dropped.
pub fn check_take(take: &Take, takes_root: &Path) -> (Option<Take>, Vec<String>) {
    if let Err(e) = songgen_protocol::check_id(&take.id) {
        return (None, vec![format!("take \"{}\": {e}", shown(&take.id))]);
    }
    let dir = takes_root.join(&take.id);
    let mut why = Vec::new();
    let mut kept = take.clone();
    kept.stems.retain(|name, path| {
        if !STEM_NAMES.contains(&name.as_str()) {
            why.push(format!(
                "take {}: unknown stem \"{}\"",
                take.id,
                shown(name)
            ));
            false
        } else if !crate::files::is_inside(path, &dir) {
            why.push(format!(
                "take {}: its {name} stem {} is not in the take's cache folder {}",
                take.id,
                path.display(),
                dir.display()
            ));
            false
        } else {
            true
        }
    });
    (Some(kept), why)
}

/// Checks a take list restored from a project (see [`check_take`]); also drops repeated ids and
/// a `selected` that names no kept take. Returns the list to keep and what was dropped.
pub fn check_takes(takes: &Takes, takes_root: &Path) -> (Takes, Vec<String>) {
    let mut why = Vec::new();
    let mut list: Vec<Take> = Vec::with_capacity(takes.list.len());
    for t in &takes.list {
        if list.iter().any(|k| k.id == t.id) {
            why.push(format!("take {}: a second take with this id", shown(&t.id)));
            continue;
        }
        let (kept, mut w) = check_take(t, takes_root);
        why.append(&mut w);
        list.extend(kept);
    }
    let selected = match &takes.selected {
        Some(id) if !list.iter().any(|t| &t.id == id) => {
            why.push(format!("the selection \"{}\": no such take", shown(id)));
            None
        }
        s => s.clone(),
    };
    (Takes { list, selected }, why)
}

/// Checks a captured prompt's path restored from a project: it must lie inside
/// `captures_root` (the plugin only ever captures there).
pub fn check_capture(path: &Path, captures_root: &Path) -> Result<(), String> {
    if crate::files::is_inside(path, captures_root) {
        Ok(())
    } else {
        Err(format!(
            "the captured prompt {} is not in the capture folder {}",
            path.display(),
            captures_root.display()
        ))
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

    fn take(id: &str, stems: &[(&str, &Path)]) -> Take {
        Take {
            id: id.into(),
            created: 1,
            lyrics: String::new(),
            descriptions: None,
            prompt: "none".into(),
            gen_type: GenType::Separate,
            seed: None,
            sampling: SamplingOptions::default(),
            status: TakeStatus::Done,
            stems: stems
                .iter()
                .map(|(n, p)| (n.to_string(), p.to_path_buf()))
                .collect(),
            sample_rate: 48_000,
            frames: 48_000,
            anchor_seconds: 0.0,
        }
    }

    #[test]
    fn restored_takes_keep_only_valid_ids_and_stems_inside_their_folder() {
        let dir = std::env::temp_dir().join(format!("songgen-check-{}", std::process::id()));
        let root = dir.join("cache").join("takes");
        let good = root.join("take-1").join("take-1-vocal.wav");
        let other = root.join("take-2").join("take-2-bgm.wav");
        let takes = Takes {
            list: vec![
                take("../../victim", &[]),
                take("/abs/path", &[]),
                take(
                    "take-1",
                    &[
                        ("vocal", &good),
                        ("bgm", Path::new("/etc/passwd")),
                        ("mixed", &other),
                        ("evil", &good),
                        ("vocal2", &root.join("take-1").join("../../../x")),
                    ],
                ),
                take("take-1", &[]),
                take("take-2", &[("bgm", &other)]),
            ],
            selected: Some("../../victim".into()),
        };
        let (kept, why) = check_takes(&takes, &root);
        let ids: Vec<_> = kept.list.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["take-1", "take-2"]);
        assert_eq!(
            kept.list[0].stems,
            BTreeMap::from([("vocal".to_owned(), good.clone())])
        );
        assert_eq!(kept.list[1].stems.len(), 1, "take-2's own stem stays");
        assert_eq!(kept.selected, None);
        // Two bad ids, four bad stems, one repeated id, the selection.
        assert_eq!(why.len(), 8, "{why:#?}");
        assert!(why[0].contains("../../victim"), "{why:?}");
        assert!(why.iter().any(|w| w.contains("/etc/passwd")), "{why:?}");

        // A valid list comes back unchanged, with nothing to report.
        let (same, why) = check_takes(&kept, &root);
        assert_eq!((same, why), (kept.clone(), Vec::<String>::new()));
        let sel = Takes {
            selected: Some("take-2".into()),
            ..kept
        };
        assert_eq!(
            check_takes(&sel, &root).0.selected.as_deref(),
            Some("take-2")
        );
    }

    #[test]
    fn captured_prompts_must_be_in_the_capture_folder() {
        let root = std::env::temp_dir().join(format!("songgen-cap-{}", std::process::id()));
        let captures = root.join("captures");
        assert!(check_capture(&captures.join("capture-1.wav"), &captures).is_ok());
        for bad in [
            PathBuf::from("/home/someone/secret.wav"),
            captures.join("../x.wav"),
            captures.clone(),
            root.join("captures-other").join("c.wav"),
        ] {
            assert!(check_capture(&bad, &captures).is_err(), "{bad:?}");
        }
    }
}
