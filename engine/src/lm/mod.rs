//! LeLM, the language model of SongGeneration: lyrics + style text + optional prompt tokens in,
//! three token streams (mixed, vocal, bgm) out.
//!
//! [`LanguageModel`] loads a model folder (`config.yaml` + `model.safetensors`/`model.pt`,
//! tensors under `audiolm.`) and the Qwen2 tokenizer of the runtime, and runs the reference's
//! generation: condition prefix, delay pattern, KV-cached decoding of both transformers, CFG
//! sampling (see [`sampler`]) and the earliest-EOS cut.
//!
//! Sampling options are [`SamplingOptions`]; its defaults are those of the reference's
//! `generate.py` `generate()` entry point (the one it takes with more than 32 GB of free GPU
//! memory): CFG 1.5, temperature 0.8, top-k 5000 on the mixed stream, presence penalty 1.1 over
//! the last 50 steps. Its `generate_lowmem()` path uses temperature 0.9 and top-k 50, and the
//! Gradio app 1.0/50. The vocal and bgm streams are always greedy (k = 1, ties sampled).

pub mod conditioners;
pub mod config;
pub mod generate;
mod interpolate;
pub mod llama;
pub mod model;
pub mod pattern;
pub mod quality;
pub mod sampler;
pub mod tokenizer;

use std::path::Path;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::io::weights::WeightFile;
use crate::paths::ModelPaths;
use crate::progress::{report, Progress, ProgressFn, Stage};
use crate::protocol::{GenType, SamplingOptions};
use crate::quant::{GgufWeights, LinearLoader, LmPrecision};

pub use conditioners::TextConditions;
pub use config::{LmConfig, LmVersion};
pub use generate::Generation;

use conditioners::Conditioners;
use generate::DecodeState;
use model::LeLm;
use pattern::DelayPattern;
use sampler::LogitProcessor;
use tokenizer::TextTokenizer;

/// Prefix of the LM's tensors in the checkpoint.
const WEIGHT_PREFIX: &str = "audiolm";

/// One generation request, as the reference's JSONL fields.
#[derive(Debug, Clone)]
pub struct LmRequest {
    /// Structured lyrics (`gt_lyric`), e.g. `"[verse] line.line ; [chorus] ..."`.
    pub lyrics: String,
    /// Style text (`descriptions`).
    pub descriptions: Option<String>,
    /// `Bgm` replaces the lyrics by `'.'` and tags the style `[Pure-Music]`; the other types
    /// condition the LM identically.
    pub gen_type: GenType,
    /// Style-prompt tokens `[1, 3, n]` (mixed, vocal, bgm; any integer dtype); padded with the
    /// special id or truncated to the prompt length.
    pub prompt_tokens: Option<Tensor>,
}

impl LmRequest {
    /// The conditional texts `generate.py` derives from the request for model `version`.
    pub fn texts(&self, version: LmVersion) -> TextConditions {
        let bgm = self.gen_type == GenType::Bgm;
        let lyrics = if bgm {
            ".".to_string()
        } else {
            self.lyrics.replace("  ", " ")
        };
        let desc = self.descriptions.as_deref().map(str::to_lowercase);
        let style = match (version, bgm, desc) {
            (LmVersion::V1, _, desc) => desc,
            (LmVersion::V2, false, desc) => Some(format!(
                "[Musicality-very-high], {}",
                desc.as_deref().unwrap_or(".")
            )),
            (LmVersion::V2, true, Some(d)) => {
                Some(format!("[Musicality-very-high], [Pure-Music], {d}"))
            }
            // The reference's operator precedence drops both tags when there is no description.
            (LmVersion::V2, true, None) => Some(".".to_string()),
        };
        TextConditions {
            lyrics: Some(lyrics),
            style,
        }
    }
}

/// The loaded language model.
pub struct LanguageModel {
    cfg: LmConfig,
    conditioners: Conditioners,
    model: LeLm,
    pattern: DelayPattern,
    device: Device,
    max_gen_len: usize,
}

impl LanguageModel {
    /// Loads the model folder and the runtime's Qwen2 tokenizer.
    pub fn load(paths: &ModelPaths, device: &Device, dtype: DType) -> Result<Self> {
        Self::load_with(paths, device, dtype, LmPrecision::from_dtype(dtype))
    }

    /// Loads with the weights in `precision`. A float precision also sets the activation
    /// dtype; a quantized one computes in `dtype` and reads `model.<precision>.gguf` from the
    /// model folder when `songgen quantize` wrote one, else quantizes the checkpoint at load.
    pub fn load_with(
        paths: &ModelPaths,
        device: &Device,
        dtype: DType,
        precision: LmPrecision,
    ) -> Result<Self> {
        let cfg = LmConfig::from_yaml_file(
            &paths.config_yaml(),
            std::slice::from_ref(&paths.runtime_dir),
        )?;
        let gguf = paths.model_dir.join(precision.gguf_file_name());
        let weights = if precision.is_quantized() && gguf.is_file() {
            gguf
        } else {
            paths.lm_weights()
        };
        Self::from_parts_with(
            cfg,
            &paths.tokenizer_dir(),
            &weights,
            device,
            dtype,
            precision,
        )
    }

    /// Builds the model from a parsed config, a tokenizer folder and a weight file.
    pub fn from_parts(
        cfg: LmConfig,
        tokenizer_dir: &Path,
        weights: &Path,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        Self::from_parts_with(
            cfg,
            tokenizer_dir,
            weights,
            device,
            dtype,
            LmPrecision::from_dtype(dtype),
        )
    }

    /// [`Self::from_parts`] in `precision`; `weights` may be a `songgen quantize` GGUF file.
    pub fn from_parts_with(
        cfg: LmConfig,
        tokenizer_dir: &Path,
        weights: &Path,
        device: &Device,
        dtype: DType,
        precision: LmPrecision,
    ) -> Result<Self> {
        let dtype = precision.float_dtype().unwrap_or(dtype);
        let base = tokenizer::load_qwen2(tokenizer_dir)?;
        let dot = if cfg.dot_is_special() {
            vec![".".to_string()]
        } else {
            Vec::new()
        };
        let lyrics_tok =
            TextTokenizer::new(&base, &cfg.structure_tags, &dot, cfg.lyrics_max_len)
                .with_context(|| format!("lyrics tokenizer from {}", tokenizer_dir.display()))?;
        let style_extra: Vec<String> = cfg.style_tags().into_iter().chain(dot).collect();
        let style_tok = TextTokenizer::new(&base, &[], &style_extra, cfg.style_max_len)
            .with_context(|| format!("style tokenizer from {}", tokenizer_dir.display()))?;
        // The conditioners' tables (two text vocabularies) are lookups done once per song:
        // they stay in host memory, and the prefix they build is copied to the device.
        let host = Device::Cpu;
        let is_gguf = weights.extension().is_some_and(|e| e == "gguf");
        let (vb, host_vb, loader) = if is_gguf {
            let g = std::sync::Arc::new(GgufWeights::open(weights).map_err(one_line_candle)?);
            if let Some(p) = g.precision() {
                ensure!(
                    p == precision.name(),
                    "{} holds {p} weights, but {precision} was asked for",
                    weights.display()
                );
            }
            (
                g.var_builder(dtype, device),
                g.var_builder(dtype, &host),
                LinearLoader::new(precision, Some(g)),
            )
        } else {
            (
                WeightFile::open(weights)?.var_builder(dtype, device),
                WeightFile::open(weights)?.var_builder(dtype, &host),
                LinearLoader::new(precision, None),
            )
        };
        let conditioners =
            Conditioners::load(lyrics_tok, style_tok, &cfg, host_vb.pp(WEIGHT_PREFIX))
                .map_err(one_line)?;
        let model = LeLm::load_with(&cfg, vb.pp(WEIGHT_PREFIX), &loader).map_err(one_line)?;
        Ok(Self {
            pattern: DelayPattern::new(cfg.delays.clone()),
            max_gen_len: cfg.max_gen_len(),
            cfg,
            conditioners,
            model,
            device: device.clone(),
        })
    }

    pub fn config(&self) -> &LmConfig {
        &self.cfg
    }

    pub fn conditioners(&self) -> &Conditioners {
        &self.conditioners
    }

    /// The network itself, for step-level use (parity checks, benchmarks).
    pub fn network(&mut self) -> &mut LeLm {
        &mut self.model
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Frames generated at most (default `max_dur * frame_rate`).
    pub fn max_gen_len(&self) -> usize {
        self.max_gen_len
    }

    /// Overrides the generation budget (short demos and tests).
    pub fn set_max_gen_len(&mut self, frames: usize) {
        self.max_gen_len = frames;
    }

    /// Generates the three token streams for `req`: `[1, 3, T]` i64 (mixed, vocal, bgm), cut at
    /// the earliest EOS. The same seed gives the same tokens. Cancelling through `progress`
    /// returns an error wrapping [`crate::progress::Cancelled`].
    pub fn generate(
        &mut self,
        req: &LmRequest,
        opts: &SamplingOptions,
        seed: u64,
        progress: &mut ProgressFn<'_>,
    ) -> Result<Tensor> {
        self.generate_streaming(req, opts, seed, progress, &mut |_| {})
    }

    /// [`Self::generate`], handing the song's frames `[mixed, vocal, bgm]` to `on_frames` in
    /// order as soon as they are final (every stream has written them: the vocal and bgm tokens
    /// of time `t` come `delay` steps after the mixed one); all of them together are exactly
    /// the returned tokens.
    pub fn generate_streaming(
        &mut self,
        req: &LmRequest,
        opts: &SamplingOptions,
        seed: u64,
        progress: &mut ProgressFn<'_>,
        on_frames: &mut dyn FnMut(&[[i64; 3]]),
    ) -> Result<Tensor> {
        let prompt = req
            .prompt_tokens
            .as_ref()
            .map(|t| prompt_rows(t, self.cfg.special_id()))
            .transpose()?;
        let texts = req.texts(self.cfg.version);
        let mut delivered = 0;
        let mut on_final = |f: &[[i64; 3]]| {
            delivered += f.len();
            on_frames(f);
        };
        let g = self.generate_inner(
            &texts,
            prompt.as_deref(),
            opts,
            seed,
            progress,
            &mut on_final,
        )?;
        let t = g.tokens[0].len();
        // The frames before the cut that no later step completed (the generation stopped).
        let rest: Vec<[i64; 3]> = (delivered.min(t)..t)
            .map(|i| std::array::from_fn(|q| g.tokens[q][i]))
            .collect();
        if !rest.is_empty() {
            on_frames(&rest);
        }
        let flat: Vec<i64> = g.tokens.into_iter().flatten().collect();
        Ok(Tensor::from_vec(flat, (1, 3, t), &Device::Cpu)?)
    }

    /// Generation from already prepared conditional texts and prompt rows `[3][n]`.
    pub fn generate_texts(
        &mut self,
        texts: &TextConditions,
        prompt: Option<&[Vec<u32>]>,
        opts: &SamplingOptions,
        seed: u64,
        progress: &mut ProgressFn<'_>,
    ) -> Result<Generation> {
        self.generate_inner(texts, prompt, opts, seed, progress, &mut |_| {})
    }

    fn generate_inner(
        &mut self,
        texts: &TextConditions,
        prompt: Option<&[Vec<u32>]>,
        opts: &SamplingOptions,
        seed: u64,
        progress: &mut ProgressFn<'_>,
        on_final: &mut dyn FnMut(&[[i64; 3]]),
    ) -> Result<Generation> {
        let cfg = &self.cfg;
        let prompt = self.conditioners.prompt.fit(prompt);
        let banned: Vec<u32> = {
            let mut ids: Vec<u32> = prompt[0]
                .iter()
                .copied()
                .filter(|&id| (id as usize) < cfg.code_size)
                .collect();
            ids.sort_unstable();
            ids.dedup();
            ids
        };
        let inputs = self.conditioners.prepare(texts, &prompt)?;
        let prefix = self.conditioners.prefix(&inputs, &Device::Cpu)?;
        let prefix = conditioners::ConditionPrefix {
            stream1: prefix.stream1.to_device(&self.device)?,
            stream2: prefix.stream2.to_device(&self.device)?,
        };
        let processor = LogitProcessor::new(*opts, cfg.code_size)?;
        let mut state = DecodeState::new(
            self.pattern.clone(),
            self.max_gen_len,
            cfg.special_id(),
            cfg.eos_id(),
        );
        let positions = cfg.prefix_len() + self.pattern.columns(self.max_gen_len);
        let max_positions = cfg
            .max_position_embeddings
            .min(cfg.max_position_embeddings_sub);
        ensure!(
            positions <= max_positions,
            "{} frames need {positions} positions, more than max_position_embeddings {max_positions}",
            self.max_gen_len
        );
        self.model.reset(positions);
        let result = self.decode(
            &mut state, &prefix, &processor, &banned, seed, progress, on_final,
        );
        // The KV caches are sized to the song; free them between songs.
        self.model.reset(0);
        result?;
        Ok(state.finish())
    }

    fn decode(
        &mut self,
        state: &mut DecodeState,
        prefix: &conditioners::ConditionPrefix,
        processor: &LogitProcessor,
        banned: &[u32],
        seed: u64,
        progress: &mut ProgressFn<'_>,
        on_final: &mut dyn FnMut(&[[i64; 3]]),
    ) -> Result<()> {
        let total = state.total_steps() as u64;
        let mut rng = StdRng::seed_from_u64(seed);
        let started = Instant::now();
        while let Some(cols) = state.next_input() {
            let first = self.model.cached_len() == 0;
            let seq = columns_tensor(&cols, &self.device)?;
            let out = self.model.forward(&seq, first.then_some(prefix), false)?;
            let s = out.logits.dim(2)?;
            let last = out.logits.narrow(2, s - 1, 1)?.squeeze(2)?;
            let rows: Vec<Vec<Vec<f32>>> = last.to_vec3()?;
            let guided = processor.guide(&rows[0], &rows[1], state.pool(), banned);
            state.write(&processor.choose(&guided, &mut rng));
            let fresh = state.take_final();
            if !fresh.is_empty() {
                on_final(&fresh);
            }
            let done = state.steps_done() as u64;
            let secs = started.elapsed().as_secs_f64();
            report(
                progress,
                Progress {
                    stage: Stage::Lm,
                    done,
                    total,
                    rate: (secs > 0.0).then(|| done as f64 / secs),
                },
            )?;
        }
        Ok(())
    }
}

fn one_line_candle(e: candle_core::Error) -> anyhow::Error {
    one_line(anyhow::Error::new(e))
}

/// Checkpoint tensors (after `audiolm.`) the engine never reads (lelm.md §2.5).
const DEAD_TENSORS: [&str; 5] = [
    "transformer.model.embed_tokens.",
    "transformer2.model.embed_tokens.",
    "transformer2.lm_head.",
    "layer2_emb.0.",
    "out_norm.",
];

/// Whether `name` (after `audiolm.`) is the weight of one of the LM's linear layers: the
/// ones a quantized precision stores in GGML blocks.
pub fn is_linear_weight(name: &str) -> bool {
    const LAYER: [&str; 7] = [
        ".self_attn.q_proj.weight",
        ".self_attn.k_proj.weight",
        ".self_attn.v_proj.weight",
        ".self_attn.o_proj.weight",
        ".mlp.gate_proj.weight",
        ".mlp.up_proj.weight",
        ".mlp.down_proj.weight",
    ];
    let stack = name.starts_with("transformer.model.layers.")
        || name.starts_with("transformer2.model.layers.");
    (stack && LAYER.iter().any(|s| name.ends_with(s)))
        || matches!(
            name,
            "transformer.lm_head.weight"
                | "linears.0.weight"
                | "linears.1.weight"
                | "mlp.0.weight"
                | "mlp.2.weight"
        )
}

/// `songgen quantize`: writes the LM tensors of checkpoint `weights` that the engine reads
/// to the GGUF file `out`, linear weights in `precision` and the rest in their stored float
/// dtype. Returns (tensors written, tensors quantized).
pub fn write_quantized(
    weights: &Path,
    out: &Path,
    precision: LmPrecision,
) -> Result<(usize, usize)> {
    ensure!(
        precision.is_quantized(),
        "songgen quantize writes q8_0 or q4_k, not {precision}"
    );
    let file = WeightFile::open(weights)?;
    let prefix = format!("{WEIGHT_PREFIX}.");
    let mut names: Vec<String> = file
        .names()
        .filter(|n| {
            n.strip_prefix(&prefix)
                .is_some_and(|rest| !DEAD_TENSORS.iter().any(|d| rest.starts_with(d)))
        })
        .map(str::to_string)
        .collect();
    ensure!(
        !names.is_empty(),
        "{}: no `{prefix}*` tensors (not a SongGeneration LM checkpoint?)",
        weights.display()
    );
    names.sort();
    let load = |n: &str| file.load(n, &Device::Cpu);
    let quantize = |n: &str| n.strip_prefix(&prefix).is_some_and(is_linear_weight);
    let quantized = crate::quant::write_gguf(out, precision, &names, &load, &quantize)
        .map_err(|e| one_line(e.into()))?;
    Ok((names.len(), quantized))
}

/// candle attaches a multi-line backtrace to its errors when `RUST_BACKTRACE` is set; a load
/// error (missing or mis-shaped tensor) is reported as its one-line message.
fn one_line(e: anyhow::Error) -> anyhow::Error {
    match e.downcast::<candle_core::Error>() {
        Ok(candle_core::Error::WithBacktrace { inner, .. }) => anyhow::Error::new(*inner),
        Ok(other) => anyhow::Error::new(other),
        Err(e) => e,
    }
}

/// Pattern columns, duplicated for the (cond, uncond) rows: `[2, 3, S]`.
fn columns_tensor(cols: &[[u32; 3]], device: &Device) -> Result<Tensor> {
    let s = cols.len();
    let one: Vec<u32> = (0..3)
        .flat_map(|q| cols.iter().map(move |c| c[q]))
        .collect();
    let both: Vec<u32> = one.iter().chain(&one).copied().collect();
    Ok(Tensor::from_vec(both, (2, 3, s), device)?)
}

/// Prompt tokens `[1, 3, n]` as rows, checking the shape and id range.
fn prompt_rows(t: &Tensor, special: u32) -> Result<Vec<Vec<u32>>> {
    let dims = t.dims();
    ensure!(
        dims.len() == 3 && dims[0] == 1 && dims[1] == 3,
        "prompt tokens have shape {dims:?}, expected [1, 3, n]"
    );
    let rows: Vec<Vec<i64>> = t.to_dtype(DType::I64)?.squeeze(0)?.to_vec2()?;
    rows.into_iter()
        .map(|row| {
            row.into_iter()
                .map(|v| {
                    ensure!(
                        (0..=special as i64).contains(&v),
                        "prompt token {v} is outside 0..={special}"
                    );
                    Ok(v as u32)
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(lyrics: &str, desc: Option<&str>, gen_type: GenType) -> LmRequest {
        LmRequest {
            lyrics: lyrics.into(),
            descriptions: desc.map(Into::into),
            gen_type,
            prompt_tokens: None,
        }
    }

    fn texts(r: &LmRequest, v: LmVersion) -> (Option<String>, Option<String>) {
        let t = r.texts(v);
        (t.lyrics, t.style)
    }

    #[test]
    fn request_texts_follow_generate_py() {
        let s = |x: &str| Some(x.to_string());
        let r = req("[verse]   a  b", Some("Female, POP."), GenType::Vocal);
        assert_eq!(
            texts(&r, LmVersion::V2),
            (s("[verse]  a b"), s("[Musicality-very-high], female, pop."))
        );
        assert_eq!(
            texts(&r, LmVersion::V1),
            (s("[verse]  a b"), s("female, pop."))
        );
        let r = req("[verse] a", None, GenType::Mixed);
        assert_eq!(
            texts(&r, LmVersion::V2),
            (s("[verse] a"), s("[Musicality-very-high], ."))
        );
        assert_eq!(texts(&r, LmVersion::V1), (s("[verse] a"), None));
        let r = req("[verse] a", Some("Synth"), GenType::Bgm);
        assert_eq!(
            texts(&r, LmVersion::V2),
            (s("."), s("[Musicality-very-high], [Pure-Music], synth"))
        );
        let r = req("[verse] a", None, GenType::Bgm);
        assert_eq!(texts(&r, LmVersion::V2), (s("."), s(".")));
    }

    #[test]
    fn uncond_row_uses_the_v2_negative_style_only_after_the_positive_tag() {
        let t = |style: &str| TextConditions {
            lyrics: Some("x".into()),
            style: Some(style.into()),
        };
        let u = t("[Musicality-very-high], pop").unconditional(LmVersion::V2);
        assert_eq!(u.lyrics, None);
        assert_eq!(u.style.as_deref(), Some(conditioners::V2_NEGATIVE_STYLE));
        assert_eq!(t(".").unconditional(LmVersion::V2).style, None);
        assert_eq!(
            t("[Musicality-very-high], pop")
                .unconditional(LmVersion::V1)
                .style,
            None
        );
    }

    #[test]
    fn version_from_folder_name() {
        for v1 in [
            "songgeneration_base",
            "SongGeneration-Base-Full",
            "songgeneration_large",
        ] {
            assert_eq!(LmVersion::from_folder_name(v1), LmVersion::V1, "{v1}");
        }
        for v2 in [
            "songgeneration_v2_large",
            "songgeneration_v2_medium",
            "mine",
        ] {
            assert_eq!(LmVersion::from_folder_name(v2), LmVersion::V2, "{v2}");
        }
    }
}
