//! The engine service protocol (`songgen serve --stdio` / `--listen ADDR`): JSON lines.
//!
//! The client (the plugin, or any script) writes one [`Request`] per line; the engine answers
//! with one [`Event`] per line. One model is loaded and shared by every job; jobs run one at a
//! time in submission order. Every job ends with exactly one of `done`, `error` or `cancelled`.
//!
//! ```text
//! -> {"op":"generate","id":"take-1","job":{"lyrics":"[verse] ...","descriptions":"female, pop","out_dir":"/tmp/t1"}}
//! <- {"event":"queued","id":"take-1","position":0}
//! <- {"event":"progress","id":"take-1","stage":"lm","done":120,"total":6750,"rate":24.8}
//! <- {"event":"chunk","id":"take-1","stem":"mixed","start":0,"frames":240000,"data":"AAAA..."}
//! <- {"event":"done","id":"take-1","stems":{"mixed":"/tmp/t1/take-1.wav",...},"sample_rate":48000,"frames":2880000}
//! -> {"op":"cancel","id":"take-2"}
//! <- {"event":"cancelled","id":"take-2"}
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Exit code of the engine (`songgen`) when the requested device cannot be used: `--device cuda`
/// without a usable GPU, or in a build without CUDA. A client starts a CPU engine on it.
pub const EXIT_DEVICE: u8 = 3;

/// Protocol version announced in [`Event::Ready`]; bumped on incompatible changes.
///
/// 2: `chunk` events carry each stem's audio while the job runs; `started` tells the longest
/// the song can be (`max_frames`).
pub const PROTOCOL_VERSION: u32 = 2;

/// What the generation renders (`--type` of the reference).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GenType {
    /// One full mix.
    #[default]
    Mixed,
    /// Vocals only (accompaniment replaced by its silence code).
    Vocal,
    /// Accompaniment only (vocals replaced by their silence code).
    Bgm,
    /// Mix, vocal and accompaniment stems (three decodes).
    Separate,
}

/// One rendered stem: the full mix, the vocals or the accompaniment. A job's stem files are
/// `<id><suffix>.wav`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stem {
    Mixed,
    Vocal,
    Bgm,
}

impl Stem {
    pub const ALL: [Stem; 3] = [Stem::Mixed, Stem::Vocal, Stem::Bgm];

    /// The name used on the wire and in records (`mixed`, `vocal`, `bgm`).
    pub fn name(self) -> &'static str {
        match self {
            Stem::Mixed => "mixed",
            Stem::Vocal => "vocal",
            Stem::Bgm => "bgm",
        }
    }

    /// Parses [`Self::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// File-name suffix, as in the reference's `X.flac`, `X_vocal.flac`, `X_bgm.flac`.
    pub fn suffix(self) -> &'static str {
        match self {
            Stem::Mixed => "",
            Stem::Vocal => "_vocal",
            Stem::Bgm => "_bgm",
        }
    }

    /// The stems a generation type renders, in decode order (`separate` = three independent
    /// decodes).
    pub fn for_gen_type(gen_type: GenType) -> &'static [Stem] {
        match gen_type {
            GenType::Mixed => &[Stem::Mixed],
            GenType::Vocal => &[Stem::Vocal],
            GenType::Bgm => &[Stem::Bgm],
            GenType::Separate => &[Stem::Mixed, Stem::Vocal, Stem::Bgm],
        }
    }
}

/// Sampling options of the language model. Defaults are those of the reference's
/// `generate.py` entry point.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingOptions {
    /// Classifier-free guidance coefficient.
    pub cfg_coef: f64,
    /// Softmax temperature.
    pub temperature: f64,
    /// Top-k for the mixed stream (streams 1 and 2 are always greedy, k = 1).
    pub top_k: usize,
    /// Presence-penalty window in steps.
    pub record_window: usize,
    /// Presence penalty divisor.
    pub penalty: f64,
    /// `false` takes the argmax everywhere (the reference's `use_sampling=False`).
    pub use_sampling: bool,
}

impl Default for SamplingOptions {
    fn default() -> Self {
        Self {
            cfg_coef: 1.5,
            temperature: 0.8,
            top_k: 5000,
            record_window: 50,
            penalty: 1.1,
            use_sampling: true,
        }
    }
}

/// Style prompt of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum StylePrompt {
    /// An audio file on the engine's machine (any rate; ~10 s are used). Local clients only: a
    /// network client names no server path and uploads the clip instead.
    Audio { path: PathBuf },
    /// A genre from the auto-prompt library (`Pop`, `Rock`, ..., `Auto`).
    Auto { genre: String },
    /// A WAV file sent in the request: standard base64 of the file's bytes, at most
    /// [`MAX_UPLOAD_SECONDS`] of audio and [`MAX_UPLOAD_BYTES`] before encoding.
    Upload { wav: String },
}

/// Longest style clip a client may upload, in seconds (the model uses the first 10 s).
pub const MAX_UPLOAD_SECONDS: f64 = 60.0;
/// Largest uploaded WAV file in bytes (60 s of 48 kHz stereo 16-bit PCM is 11 MiB).
pub const MAX_UPLOAD_BYTES: usize = 12 << 20;
/// Longest request line the engine reads; a longer one is answered with `error` and the
/// connection is closed (an uploaded clip's base64 fits: 4/3 × [`MAX_UPLOAD_BYTES`]).
pub const MAX_LINE_BYTES: usize = 17 << 20;
/// Longest job id (ids name files).
pub const MAX_ID_LEN: usize = 64;

/// The rule for job and take ids, shared by the engine (they name its output files) and the
/// plugin (they name cache folders, so ids restored from a project are checked with it before
/// any file operation): 1 to [`MAX_ID_LEN`] ASCII letters, digits, `-`, `_` and `.`, starting with
/// a letter or digit. `Err` says what is wrong, for an error message.
pub fn check_id(id: &str) -> Result<(), String> {
    let shown: String = id.chars().take(MAX_ID_LEN).collect();
    if id.is_empty() {
        return Err("the id is empty".into());
    }
    if id.len() > MAX_ID_LEN {
        return Err(format!(
            "the id `{shown}...` is longer than {MAX_ID_LEN} characters"
        ));
    }
    if !id.as_bytes()[0].is_ascii_alphanumeric() {
        return Err(format!(
            "the id `{shown}` must start with a letter or digit"
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "the id `{}` holds `{}`: use letters, digits, `-`, `_` and `.`",
            shown.escape_debug(),
            c.escape_debug()
        ));
    }
    Ok(())
}

/// One generation job: the reference's JSONL fields plus the engine's options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Structured lyrics (`gt_lyric`).
    pub lyrics: String,
    /// Style text (`descriptions`); `None` generates without a text style.
    #[serde(default)]
    pub descriptions: Option<String>,
    #[serde(default)]
    pub prompt: Option<StylePrompt>,
    #[serde(default)]
    pub gen_type: GenType,
    /// `None` picks a random seed, reported back in the result.
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub sampling: SamplingOptions,
    /// Folder the stems and the JSON record are written to. Required from local clients; a
    /// network client leaves it out (the server writes under its own output root).
    #[serde(default, skip_serializing_if = "path_is_empty")]
    pub out_dir: PathBuf,
    /// Replace stems of an earlier job with the same id in `out_dir` (otherwise the job fails
    /// before generating anything).
    #[serde(default)]
    pub overwrite: bool,
}

fn path_is_empty(p: &std::path::Path) -> bool {
    p.as_os_str().is_empty()
}

/// A line from the client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum Request {
    /// The first line of a network (TCP) connection: the server's token (`--token-file`).
    /// Anything else first, or a wrong token, is answered with `error` and the connection closed.
    Auth { token: String },
    /// Queue a job; `id` is chosen by the client and names the stem files.
    Generate { id: String, job: Job },
    /// Cancel a queued or running job.
    Cancel { id: String },
    /// Ask for a `status` event.
    Status,
    /// Finish the running job's current step, then exit. Accepted only from the engine's local
    /// owner (stdin, the per-user socket), never over the network.
    Shutdown,
}

/// Which part of the pipeline a progress event counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Load,
    Prompt,
    Lm,
    Render,
    Vae,
    Write,
}

/// A line from the engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "event")]
pub enum Event {
    /// The engine is up with a model loaded.
    Ready {
        protocol: u32,
        model: String,
        device: String,
    },
    Queued {
        id: String,
        position: usize,
    },
    Started {
        id: String,
        seed: u64,
        /// The longest each stem can be, in sample frames (the LM's length limit): room a client
        /// can set aside for the `chunk`s to come. The song's end is only known at `done`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_frames: Option<u64>,
    },
    Progress {
        id: String,
        stage: Stage,
        done: u64,
        total: u64,
        /// Units per second (tokens/s for `lm`), when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rate: Option<f64>,
    },
    /// A span of a running job's stem that is final (protocol 2): `frames` sample frames from
    /// frame `start` of `stem`, as base64 of little-endian f32, interleaved stereo, 48 kHz
    /// ([`encode_samples`]). A stem's chunks come in order without gaps or overlaps; `done`
    /// follows the last one.
    Chunk {
        id: String,
        stem: Stem,
        start: u64,
        frames: u64,
        data: String,
    },
    Done {
        id: String,
        /// Written WAV files by stem (`mixed`, `vocal`, `bgm`).
        stems: BTreeMap<String, PathBuf>,
        sample_rate: u32,
        /// Length of every stem in sample frames.
        frames: u64,
        seed: u64,
    },
    Error {
        /// `None` for errors not tied to a job (e.g. an unparsable request line).
        #[serde(default)]
        id: Option<String>,
        message: String,
    },
    Cancelled {
        id: String,
    },
    Status {
        running: Option<String>,
        queued: Vec<String>,
    },
}

/// The `data` of a [`Event::Chunk`]: planar channels (equal lengths) interleaved as
/// little-endian f32, in standard base64.
pub fn encode_samples(channels: &[&[f32]]) -> String {
    let n = channels.iter().map(|c| c.len()).min().unwrap_or(0);
    let mut bytes = Vec::with_capacity(n * channels.len() * 4);
    for i in 0..n {
        for ch in channels {
            bytes.extend_from_slice(&ch[i].to_le_bytes());
        }
    }
    BASE64.encode(bytes)
}

/// Standard base64 (with padding), as `upload` prompts and `chunk` data use it.
pub fn encode_base64(bytes: &[u8]) -> String {
    BASE64.encode(bytes)
}

/// Decodes [`encode_base64`]'s output.
pub fn decode_base64(text: &str) -> Result<Vec<u8>, String> {
    BASE64
        .decode(text.trim())
        .map_err(|e| format!("not base64 ({e})"))
}

/// Decodes [`encode_samples`]' output into interleaved samples of `channels` channels.
pub fn decode_samples(data: &str, channels: usize) -> Result<Vec<f32>, String> {
    let bytes = BASE64
        .decode(data)
        .map_err(|e| format!("chunk data is not base64 ({e})"))?;
    let frame = 4 * channels.max(1);
    if bytes.len() % frame != 0 {
        return Err(format!(
            "chunk data holds {} bytes, not whole {channels}-channel f32 frames",
            bytes.len()
        ));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_as_single_lines() {
        let line = r#"{"op":"generate","id":"t1","job":{"lyrics":"[verse] hi","out_dir":"/tmp/x","prompt":{"kind":"auto","genre":"Pop"}}}"#;
        let req: Request = serde_json::from_str(line).unwrap();
        let Request::Generate { id, job } = &req else {
            panic!("{req:?}")
        };
        assert_eq!(id, "t1");
        assert_eq!(job.gen_type, GenType::Mixed);
        assert_eq!(job.sampling, SamplingOptions::default());
        assert_eq!(
            job.prompt,
            Some(StylePrompt::Auto {
                genre: "Pop".into()
            })
        );
        let back = serde_json::to_string(&req).unwrap();
        assert!(!back.contains('\n'));
        assert_eq!(serde_json::from_str::<Request>(&back).unwrap(), req);
        let samples = encode_samples(&[&[0.5, -1.0, 3.25], &[0.0, f32::MAX, -0.0]]);
        let chunk = Event::Chunk {
            id: "t1".into(),
            stem: Stem::Vocal,
            start: 480_000,
            frames: 3,
            data: samples.clone(),
        };
        let line = serde_json::to_string(&chunk).unwrap();
        assert!(
            line.starts_with(
                r#"{"event":"chunk","id":"t1","stem":"vocal","start":480000,"frames":3,"data":""#
            ),
            "{line}"
        );
        assert_eq!(
            decode_samples(&samples, 2).unwrap(),
            [0.5, 0.0, -1.0, f32::MAX, 3.25, -0.0]
        );
        assert!(decode_samples("AAAA", 2).unwrap_err().contains("whole"));
        assert!(decode_samples("***", 2).unwrap_err().contains("base64"));
        let cancel: Request = serde_json::from_str(r#"{"op":"cancel","id":"t1"}"#).unwrap();
        assert_eq!(cancel, Request::Cancel { id: "t1".into() });
        // A network job names no folder; the field stays out of the line.
        let remote: Request =
            serde_json::from_str(r#"{"op":"generate","id":"r","job":{"lyrics":"x"}}"#).unwrap();
        let Request::Generate { job, .. } = &remote else {
            panic!()
        };
        assert!(job.out_dir.as_os_str().is_empty());
        assert!(!serde_json::to_string(&remote).unwrap().contains("out_dir"));
    }

    #[test]
    fn ids_are_file_names_and_nothing_else() {
        for ok in ["take-1", "take-1764000000000-a3f9", "0_en", "song.v2", "A"] {
            assert_eq!(check_id(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "../../x",
            "/etc/passwd",
            ".hidden",
            "-rf",
            "a/b",
            "a\\b",
            "C:x",
            "take 1",
            "t\u{0}",
            "é",
        ] {
            assert!(check_id(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_id(&"a".repeat(MAX_ID_LEN)).is_ok());
        let long = check_id(&"a".repeat(MAX_ID_LEN + 1)).unwrap_err();
        assert!(long.contains("longer"), "{long}");
    }
}
