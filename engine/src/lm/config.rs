//! LeLM hyper-parameters, read from the reference's `config.yaml` tree.
//!
//! Only the keys the inference path depends on are read; the leftover audiocraft keys of the
//! `lm:` section (`activation`, `positional_embedding`, `norm`, ...) do not describe the model
//! and are ignored, as the reference ignores them.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::Value;

/// The two generations of checkpoints: they differ in the style vocabulary and in `.` handling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LmVersion {
    /// SongGeneration 1 (`songgeneration_base*`, `songgeneration_large`).
    V1,
    /// SongGeneration 2 / LeVo 2: style tags `[Musicality-*]`/`[Pure-Music]`, `.` is a special
    /// token, and the unconditional style is the negative prompt `"[Musicality-very-low], ."`.
    V2,
}

impl LmVersion {
    /// The reference's rule (`generate.py`): the v1 folder names, everything else is v2.
    pub fn from_folder_name(name: &str) -> Self {
        let name = name.to_lowercase().replace('-', "_");
        match name.as_str() {
            "songgeneration_base"
            | "songgeneration_base_new"
            | "songgeneration_base_full"
            | "songgeneration_large" => LmVersion::V1,
            _ => LmVersion::V2,
        }
    }

    fn parse(s: &str) -> Result<Self> {
        match s {
            "v1" => Ok(LmVersion::V1),
            "v2" => Ok(LmVersion::V2),
            other => bail!("unknown model version {other:?} (expected v1 or v2)"),
        }
    }
}

/// RMSNorm epsilon, hard-coded by the reference (not the Llama default).
pub const RMS_NORM_EPS: f64 = 1e-5;

/// Style tags of the v2 `type_info` conditioner, in id order.
pub const V2_STYLE_TAGS: [&str; 6] = [
    "[Musicality-very-high]",
    "[Musicality-high]",
    "[Musicality-medium]",
    "[Musicality-low]",
    "[Musicality-very-low]",
    "[Pure-Music]",
];

#[derive(Debug, Clone, PartialEq)]
pub struct LmConfig {
    pub version: LmVersion,
    pub dim: usize,
    pub intermediate_size: usize,
    pub num_heads: usize,
    pub num_layers: usize,
    pub num_layers_sub: usize,
    /// Number of token streams (mixed, vocal, bgm).
    pub code_depth: usize,
    /// Codec codebook size; EOS and the special id come right after it.
    pub code_size: usize,
    pub max_position_embeddings: usize,
    pub max_position_embeddings_sub: usize,
    pub rope_theta: f64,
    pub rope_theta_sub: f64,
    /// Per-stream delays of the codebook pattern.
    pub delays: Vec<usize>,
    /// Classifier-free guidance coefficient of the config.
    pub cfg_coef: f64,
    /// Token length of the lyrics (`description`) conditioner.
    pub lyrics_max_len: usize,
    /// Token length of the style (`type_info`) conditioner.
    pub style_max_len: usize,
    /// Lyric structure tags (`[verse]`, ...), in id order.
    pub structure_tags: Vec<String>,
    /// Prompt tokens per stream (`prompt_len * frame_rate`).
    pub prompt_frames: usize,
    pub frame_rate: usize,
    /// Longest song in seconds; the generation budget is `max_dur * frame_rate` frames.
    pub max_dur: f64,
}

impl LmConfig {
    /// The mid-size config of the LM benchmarks and perf examples (`benches/lelm.rs`,
    /// `examples/lm_job.rs`, `examples/lm_quant_quality.rs`, and the PyTorch side in
    /// docs/perf.md): v2-large's vocabulary, delays and prefix, with dim 1024, intermediate 5504
    /// (the real ratio), 8 heads of 128 and 8 + 4 layers.
    pub fn mid_size() -> Self {
        Self {
            dim: 1024,
            intermediate_size: 5504,
            num_heads: 8,
            num_layers: 8,
            num_layers_sub: 4,
            ..Self::v2_large()
        }
    }

    /// The released `songgeneration_v2_large` config (research/lelm.md §5): dim 2048, 11008
    /// intermediate, 16 heads, 36 + 12 layers, the real code vocabulary, prefix and durations,
    /// without structure tags. For random-weight benchmarks and timings.
    pub fn v2_large() -> Self {
        Self {
            version: LmVersion::V2,
            dim: 2048,
            intermediate_size: 11008,
            num_heads: 16,
            num_layers: 36,
            num_layers_sub: 12,
            code_depth: 3,
            code_size: 16384,
            max_position_embeddings: 10000,
            max_position_embeddings_sub: 10000,
            rope_theta: 500000.0,
            rope_theta_sub: 500000.0,
            delays: vec![0, 250, 250],
            cfg_coef: 1.5,
            lyrics_max_len: 600,
            style_max_len: 100,
            structure_tags: Vec::new(),
            prompt_frames: 250,
            frame_rate: 25,
            max_dur: 270.0,
        }
    }

    /// Reads a model folder's `config.yaml`; `${load_yaml:...}` files are looked up next to it,
    /// then in `search`. The version is the config's `version` key when present, else the
    /// reference's folder-name rule.
    pub fn from_yaml_file(path: &Path, search: &[PathBuf]) -> Result<Self> {
        let tree = super::interpolate::load_yaml_file(path, search)?;
        let folder = path
            .parent()
            .and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Self::from_tree(&tree, LmVersion::from_folder_name(&folder))
            .with_context(|| format!("{}", path.display()))
    }

    /// Reads an (already interpolated) config tree; `version` is used when the tree has no
    /// `version` key.
    pub fn from_tree(tree: &Value, version: LmVersion) -> Result<Self> {
        let version = match tree.get("version") {
            Some(v) => LmVersion::parse(v.as_str().unwrap_or_default())?,
            None => version,
        };
        let top =
            |key: &str| get(tree, key).or_else(|_| get(tree, &format!("lyric_processor.{key}")));
        let pattern = get(tree, "codebooks_pattern.modeling")?;
        ensure!(
            pattern == "delay",
            "codebooks_pattern.modeling is {pattern}, only `delay` is supported"
        );
        for key in ["flatten_first", "empty_initial"] {
            if let Ok(v) = get(tree, &format!("codebooks_pattern.delay.{key}")) {
                ensure!(
                    as_usize(v, key)? == 0,
                    "codebooks_pattern.delay.{key} must be 0"
                );
            }
        }
        let prepend: Vec<String> =
            serde_json::from_value(get(tree, "fuser.prepend")?.clone()).context("fuser.prepend")?;
        ensure!(
            prepend == ["description", "prompt_audio", "type_info"],
            "fuser.prepend is {prepend:?}; this model needs [description, prompt_audio, type_info]"
        );
        let delays: Vec<usize> =
            serde_json::from_value(get(tree, "codebooks_pattern.delay.delays")?.clone())
                .context("codebooks_pattern.delay.delays")?;
        let structure_tags: Vec<String> = serde_json::from_value(
            get(tree, "conditioners.description.QwTokenizer.add_token_list")?.clone(),
        )
        .context("conditioners.description.QwTokenizer.add_token_list")?;
        let frame_rate = usize_at(tree, "audio_tokenizer_frame_rate")?;
        let prompt_len = as_usize(top("prompt_len")?, "prompt_len")?;
        let cfg = LmConfig {
            version,
            dim: usize_at(tree, "lm.dim")?,
            intermediate_size: usize_at(tree, "lm.intermediate_size")?,
            num_heads: usize_at(tree, "lm.num_heads")?,
            num_layers: usize_at(tree, "lm.num_layers")?,
            num_layers_sub: usize_at(tree, "lm.num_layers_sub")?,
            code_depth: usize_at(tree, "lm.code_depth")?,
            code_size: usize_at(tree, "lm.code_size")?,
            max_position_embeddings: usize_at(tree, "lm.max_position_embeddings")?,
            max_position_embeddings_sub: usize_at(tree, "lm.max_position_embeddings_sub")?,
            rope_theta: f64_at(tree, "lm.rope_theta")?,
            rope_theta_sub: f64_at(tree, "lm.rope_theta_sub")?,
            delays,
            cfg_coef: f64_at(tree, "classifier_free_guidance.inference_coef")?,
            lyrics_max_len: usize_at(tree, "conditioners.description.QwTokenizer.max_len")?,
            style_max_len: usize_at(tree, "conditioners.type_info.QwTextTokenizer.max_len")?,
            structure_tags,
            prompt_frames: prompt_len * frame_rate,
            frame_rate,
            max_dur: top("max_dur")?
                .as_f64()
                .ok_or_else(|| anyhow!("max_dur is not a number"))?,
        };
        cfg.validate(tree)?;
        Ok(cfg)
    }

    fn validate(&self, tree: &Value) -> Result<()> {
        ensure!(
            self.code_depth == 3,
            "lm.code_depth is {}, the model has exactly 3 streams (mixed, vocal, bgm)",
            self.code_depth
        );
        ensure!(
            self.delays.len() == self.code_depth && self.delays[0] == 0,
            "codebooks_pattern.delay.delays {:?} must have {} entries starting with 0",
            self.delays,
            self.code_depth
        );
        ensure!(
            self.num_heads > 0
                && self.dim.is_multiple_of(self.num_heads)
                && self.head_dim().is_multiple_of(2),
            "lm.dim {} is not an even multiple of lm.num_heads {}",
            self.dim,
            self.num_heads
        );
        let qt = usize_at(tree, "conditioners.prompt_audio.qt_embedding.max_len")?;
        ensure!(
            qt == self.prompt_len_tokens(),
            "conditioners.prompt_audio.qt_embedding.max_len is {qt}, expected prompt_len*frame_rate+2 = {}",
            self.prompt_len_tokens()
        );
        let qt_size = usize_at(tree, "conditioners.prompt_audio.qt_embedding.code_size")?;
        ensure!(
            qt_size == self.code_size,
            "conditioners.prompt_audio.qt_embedding.code_size {qt_size} differs from lm.code_size {}",
            self.code_size
        );
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.dim / self.num_heads
    }

    /// End-of-song token, the last logit class.
    pub fn eos_id(&self) -> u32 {
        self.code_size as u32
    }

    /// Input-only filler id: delay-pattern padding, absent prompt, after-EOS slots.
    pub fn special_id(&self) -> u32 {
        self.code_size as u32 + 1
    }

    /// Logit classes per stream (codes + EOS).
    pub fn logit_width(&self) -> usize {
        self.code_size + 1
    }

    /// Rows of the code embedding tables (codes + EOS + special).
    pub fn emb_rows(&self) -> usize {
        self.code_size + 2
    }

    /// Length of the prompt-audio conditioner output: EOT vector + EOS marker + the frames.
    pub fn prompt_len_tokens(&self) -> usize {
        self.prompt_frames + 2
    }

    /// Positions of the condition prefix: lyrics | prompt audio | style.
    pub fn prefix_len(&self) -> usize {
        self.lyrics_max_len + self.prompt_len_tokens() + self.style_max_len
    }

    /// Frames generated for a full-length song (`max_dur * frame_rate`).
    pub fn max_gen_len(&self) -> usize {
        (self.max_dur * self.frame_rate as f64) as usize
    }

    pub fn max_delay(&self) -> usize {
        self.delays.iter().copied().max().unwrap_or(0)
    }

    /// Style-conditioner tags added to the tokenizer (none in v1).
    pub fn style_tags(&self) -> Vec<String> {
        match self.version {
            LmVersion::V1 => Vec::new(),
            LmVersion::V2 => V2_STYLE_TAGS.iter().map(|t| t.to_string()).collect(),
        }
    }

    /// v2 makes `.` a special token in both text conditioners.
    pub fn dot_is_special(&self) -> bool {
        self.version == LmVersion::V2
    }
}

fn get<'a>(tree: &'a Value, path: &str) -> Result<&'a Value> {
    let mut node = tree;
    for key in path.split('.') {
        node = node
            .get(key)
            .filter(|v| !v.is_null())
            .ok_or_else(|| anyhow!("config key `{path}` is missing"))?;
    }
    Ok(node)
}

fn as_usize(v: &Value, key: &str) -> Result<usize> {
    if let Some(u) = v.as_u64() {
        return Ok(u as usize);
    }
    match v.as_f64() {
        Some(f) if f >= 0.0 && f.fract() == 0.0 => Ok(f as usize),
        _ => bail!("config key `{key}` = {v} is not a non-negative integer"),
    }
}

fn usize_at(tree: &Value, path: &str) -> Result<usize> {
    as_usize(get(tree, path)?, path)
}

fn f64_at(tree: &Value, path: &str) -> Result<f64> {
    get(tree, path)?
        .as_f64()
        .ok_or_else(|| anyhow!("config key `{path}` is not a number"))
}
