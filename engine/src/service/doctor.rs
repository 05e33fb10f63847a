//! Checks a model folder before a long run: every file the pipeline reads is present and
//! readable, and the checkpoints hold the tensors their config implies.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::io::weights::WeightFile;
use crate::paths::ModelPaths;

/// What a file is needed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Every generation.
    Always,
    /// Only `--prompt-audio` (reference clips).
    PromptAudio,
    /// Only `--auto-prompt`.
    AutoPrompt,
}

/// The check of one file.
#[derive(Debug, Clone)]
pub struct FileCheck {
    pub what: &'static str,
    pub path: PathBuf,
    pub need: Need,
    /// `Ok(details)` or `Err(problem)`.
    pub result: Result<String, String>,
}

/// The checks of a whole model folder.
#[derive(Debug, Clone)]
pub struct Report {
    pub paths: ModelPaths,
    pub files: Vec<FileCheck>,
}

impl Report {
    /// No problem with any file needed by every generation.
    pub fn can_generate(&self) -> bool {
        self.files
            .iter()
            .all(|f| f.need != Need::Always || f.result.is_ok())
    }

    pub fn problems(&self) -> impl Iterator<Item = &FileCheck> {
        self.files.iter().filter(|f| f.result.is_err())
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "model folder   {}", self.paths.model_dir.display())?;
        writeln!(f, "runtime folder {}", self.paths.runtime_dir.display())?;
        for c in &self.files {
            let need = match c.need {
                Need::Always => "",
                Need::PromptAudio => " (for --prompt-audio)",
                Need::AutoPrompt => " (for --auto-prompt)",
            };
            match &c.result {
                Ok(d) => writeln!(f, "  ok       {}{need}: {d}", c.what)?,
                Err(e) => writeln!(f, "  PROBLEM  {}{need}: {e}", c.what)?,
            }
        }
        Ok(())
    }
}

/// Checks every file of `paths`.
pub fn check(paths: &ModelPaths) -> Report {
    let mut files = Vec::new();
    let mut add = |what, path: PathBuf, need, result| {
        files.push(FileCheck {
            what,
            path,
            need,
            result,
        })
    };
    let config = check_config(&paths.config_yaml());
    let layers = config.as_ref().ok().map(|c| c.1);
    add(
        "config.yaml",
        paths.config_yaml(),
        Need::Always,
        config.map(|c| c.0),
    );
    add(
        "language model",
        paths.lm_weights(),
        Need::Always,
        check_lm(&paths.lm_weights(), layers),
    );
    add(
        "lyrics tokenizer",
        paths.tokenizer_dir(),
        Need::Always,
        check_tokenizer(&paths.tokenizer_dir()),
    );
    add(
        "flow decoder",
        paths.septoken(),
        Need::Always,
        check_flow(&paths.septoken()),
    );
    add(
        "VAE",
        paths.vae_ckpt(),
        Need::Always,
        check_vae(&paths.vae_ckpt()),
    );
    add(
        "VAE config",
        paths.vae_config(),
        Need::Always,
        check_json(&paths.vae_config()),
    );
    add(
        "mixed tokenizer",
        paths.mixed_tokenizer(),
        Need::PromptAudio,
        check_weights(&paths.mixed_tokenizer()),
    );
    add(
        "Demucs",
        paths.demucs(),
        Need::PromptAudio,
        check_weights(&paths.demucs()),
    );
    let auto = paths.auto_prompt();
    let auto_result = if auto.extension().is_some_and(|e| e == "safetensors") {
        check_weights(&auto)
    } else {
        readable(&auto).map(|n| format!("{n} bytes (PyTorch pickle)"))
    };
    add("auto-prompt library", auto, Need::AutoPrompt, auto_result);
    Report {
        paths: paths.clone(),
        files,
    }
}

fn readable(path: &Path) -> Result<u64, String> {
    let meta = std::fs::metadata(path).map_err(|_| "missing".to_string())?;
    std::fs::File::open(path).map_err(|e| format!("cannot open it: {e}"))?;
    Ok(meta.len())
}

/// Returns a summary and the (main, sub) layer counts of the LM.
fn check_config(path: &Path) -> Result<(String, (usize, usize)), String> {
    readable(path)?;
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let yaml: serde_yaml::Value =
        serde_yaml::from_str(&text).map_err(|e| format!("not valid YAML: {e}"))?;
    let get = |key: &str| {
        yaml.get("lm")
            .and_then(|lm| lm.get(key))
            .and_then(serde_yaml::Value::as_u64)
            .ok_or_else(|| format!("no lm.{key}"))
    };
    let (dim, layers, sub) = (get("dim")?, get("num_layers")?, get("num_layers_sub")?);
    let max_dur = yaml
        .get("max_dur")
        .and_then(serde_yaml::Value::as_f64)
        .ok_or("no max_dur")?;
    Ok((
        format!("dim {dim}, {layers}+{sub} layers, up to {max_dur} s"),
        (layers as usize, sub as usize),
    ))
}

fn open(path: &Path) -> Result<WeightFile, String> {
    readable(path)?;
    WeightFile::open(path).map_err(|e| e.to_string())
}

fn summary(w: &WeightFile) -> String {
    let elements: usize = w
        .names()
        .map(|n| w.shape(n).map_or(0, |s| s.iter().product()))
        .sum();
    format!(
        "{} tensors, {:.1} M values",
        w.names().count(),
        elements as f64 / 1e6
    )
}

fn check_weights(path: &Path) -> Result<String, String> {
    open(path).map(|w| summary(&w))
}

/// Number of LM tensors for `layers` main and `sub` sub-transformer layers (the state dict of the reference's `CodecLM_PL` / `LmModel`): nine
/// per Llama block plus 26 others (embeddings, heads, bridge, conditioners, unused leftovers).
pub fn lm_tensor_count(layers: usize, sub: usize) -> usize {
    9 * (layers + sub) + 26
}

fn check_lm(path: &Path, layers: Option<(usize, usize)>) -> Result<String, String> {
    let w = open(path)?;
    let audiolm = w.names().filter(|n| n.starts_with("audiolm.")).count();
    let count = if audiolm > 0 {
        audiolm
    } else {
        w.names().count()
    };
    match layers {
        Some((l, s)) if count != lm_tensor_count(l, s) => Err(format!(
            "{count} LM tensors, expected {} for {l}+{s} layers (truncated or wrong file?)",
            lm_tensor_count(l, s)
        )),
        _ => Ok(summary(&w)),
    }
}

fn check_tokenizer(dir: &Path) -> Result<String, String> {
    let json = dir.join("tokenizer.json");
    if json.is_file() {
        tokenizers::Tokenizer::from_file(&json).map_err(|e| format!("{}: {e}", json.display()))?;
        return Ok("tokenizer.json".into());
    }
    for f in ["vocab.json", "merges.txt"] {
        readable(&dir.join(f)).map_err(|e| format!("{f}: {e}"))?;
    }
    Ok("vocab.json + merges.txt".into())
}

/// Flow decoder: 13 tensors per GPT-2 block and the tensors every window needs.
fn check_flow(path: &Path) -> Result<String, String> {
    let w = open(path)?;
    let prefix = "cfm_wrapper.estimator.h.";
    let mut blocks = 0;
    while w.contains(&format!("{prefix}{blocks}.scale_shift_table")) {
        let n = w
            .names()
            .filter(|n| n.starts_with(&format!("{prefix}{blocks}.")))
            .count();
        if n != 13 {
            return Err(format!("block {blocks} has {n} tensors, expected 13"));
        }
        blocks += 1;
    }
    if blocks == 0 {
        return Err("no flow transformer blocks (cfm_wrapper.estimator.h.*)".into());
    }
    for name in [
        "cfm_wrapper.estimator.wpe.weight",
        "cfm_wrapper.estimator.adaln_single.linear.weight",
        "cfm_wrapper.estimator.proj_out.weight",
        "cfm_wrapper.estimator.scale_shift_table",
        "rvq_bestrq_emb.quantizers.0.codebook.weight",
        "rvq_bestrq_bgm_emb.quantizers.0.codebook.weight",
        "mask_emb.weight",
        "normfeat.sum_x",
    ] {
        if !w.contains(name) {
            return Err(format!("missing tensor {name}"));
        }
    }
    let plural = if blocks == 1 { "" } else { "s" };
    Ok(format!(
        "{blocks} transformer block{plural}; {}",
        summary(&w)
    ))
}

/// VAE: the Oobleck decoder has 182 tensors (weight norm unfolded) for its five up-sampling stages.
fn check_vae(path: &Path) -> Result<String, String> {
    let w = open(path)?;
    let decoder = w.names().filter(|n| n.starts_with("decoder.")).count();
    if decoder != 182 {
        return Err(format!("{decoder} decoder tensors, expected 182"));
    }
    Ok(summary(&w))
}

fn check_json(path: &Path) -> Result<String, String> {
    readable(path)?;
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    serde_json::from_str::<serde_json::Value>(&text).map_err(|e| format!("not valid JSON: {e}"))?;
    Ok("valid JSON".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lm_tensor_count_matches_the_fixture_checkpoint() {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/parity/lelm/model.safetensors");
        let w = WeightFile::open(fixture).unwrap();
        // The fixture has 3 main and 2 sub layers.
        assert_eq!(w.names().count(), lm_tensor_count(3, 2));
    }

    #[test]
    fn vae_count_matches_the_fixture_checkpoint() {
        let fixture =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/parity/decoder/vae.ckpt");
        check_vae(&fixture).unwrap();
        let flow = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/parity/decoder/flow.safetensors");
        assert!(check_flow(&flow)
            .unwrap()
            .starts_with("2 transformer blocks;"));
    }
}
