//! The three condition encoders and the prefix they form.
//!
//! Naming follows the reference, whose names are swapped semantically: `description` encodes
//! the LYRICS, `type_info` the STYLE text. Each returns one embedding per stream; the text
//! conditioners feed the same tensor to both. The prefix is their concatenation
//! lyrics | prompt audio | style, fixed-length and unmasked (padding positions are attended).

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{embedding, Embedding, Module, VarBuilder};

use super::config::{LmConfig, LmVersion};
use super::tokenizer::{TextTokenizer, TokenBatch};

/// Number of structure-embedding rows in the reference (only the first few are reachable).
const STRUCTURE_ROWS: usize = 200;

/// The negative style prompt of v2's unconditional (CFG) row.
pub const V2_NEGATIVE_STYLE: &str = "[Musicality-very-low], .";
/// The tag whose presence in the style turns on [`V2_NEGATIVE_STYLE`].
const V2_POSITIVE_TAG: &str = "[Musicality-very-high]";

/// The text inputs of one CFG row; `None` is the reference's null condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextConditions {
    pub lyrics: Option<String>,
    pub style: Option<String>,
}

impl TextConditions {
    /// The unconditional row the reference's CFG dropout derives from `self`: no lyrics, and
    /// in v2 the negative style prompt when the style carries `[Musicality-very-high]`.
    pub fn unconditional(&self, version: LmVersion) -> TextConditions {
        let negative = version == LmVersion::V2
            && self
                .style
                .as_deref()
                .is_some_and(|s| s.contains(V2_POSITIVE_TAG));
        TextConditions {
            lyrics: None,
            style: negative.then(|| V2_NEGATIVE_STYLE.to_string()),
        }
    }
}

/// Output of one conditioner for a batch: the per-stream embeddings `[B, L, d]`.
#[derive(Debug, Clone)]
pub struct CondEmbedding {
    pub stream1: Tensor,
    pub stream2: Tensor,
}

/// `description`: lyric tokens plus a per-token structure-section embedding.
pub struct LyricsConditioner {
    tokenizer: TextTokenizer,
    output_proj: Embedding,
    structure_emb: Embedding,
}

impl LyricsConditioner {
    pub fn load(tokenizer: TextTokenizer, cfg: &LmConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            output_proj: embedding(tokenizer.vocab_size(), cfg.dim, vb.pp("output_proj"))?,
            structure_emb: embedding(STRUCTURE_ROWS, cfg.dim, vb.pp("structure_emb"))?,
            tokenizer,
        })
    }

    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    pub fn tokenize(&self, lyrics: &[Option<&str>]) -> Result<TokenBatch> {
        self.tokenizer.batch(lyrics)
    }

    pub fn embed(&self, batch: &TokenBatch, device: &Device) -> Result<CondEmbedding> {
        let ids = ids_tensor(&batch.ids, device)?;
        let cover = batch
            .cover
            .as_ref()
            .context("lyrics batch has no structure cover")?;
        let cover = ids_tensor(cover, device)?;
        let e = (self.output_proj.forward(&ids)? + self.structure_emb.forward(&cover)?)?;
        Ok(CondEmbedding {
            stream1: e.clone(),
            stream2: e,
        })
    }
}

/// `type_info`: style tokens.
pub struct StyleConditioner {
    tokenizer: TextTokenizer,
    output_proj: Embedding,
}

impl StyleConditioner {
    pub fn load(tokenizer: TextTokenizer, cfg: &LmConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            output_proj: embedding(tokenizer.vocab_size(), cfg.dim, vb.pp("output_proj"))?,
            tokenizer,
        })
    }

    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    pub fn tokenize(&self, styles: &[Option<&str>]) -> Result<TokenBatch> {
        self.tokenizer.batch(styles)
    }

    pub fn embed(&self, batch: &TokenBatch, device: &Device) -> Result<CondEmbedding> {
        let e = self.output_proj.forward(&ids_tensor(&batch.ids, device)?)?;
        Ok(CondEmbedding {
            stream1: e.clone(),
            stream2: e,
        })
    }
}

/// `prompt_audio`: the style-prompt tokens. Stream 1 gets `[EOT ; emb.0(mixed)]`, stream 2
/// `[layer2_EOT ; emb.1(vocal) + emb.2(bgm)]`.
pub struct PromptAudioConditioner {
    emb: [Embedding; 3],
    eot: Tensor,
    layer2_eot: Tensor,
    frames: usize,
    eos: u32,
    special: u32,
}

impl PromptAudioConditioner {
    pub fn load(cfg: &LmConfig, vb: VarBuilder) -> Result<Self> {
        let e = |i: usize| embedding(cfg.emb_rows(), cfg.dim, vb.pp(format!("emb.{i}")));
        Ok(Self {
            emb: [e(0)?, e(1)?, e(2)?],
            eot: vb.get((1, cfg.dim), "EOT_emb")?,
            layer2_eot: vb.get((1, cfg.dim), "layer2_EOT_emb")?,
            frames: cfg.prompt_frames,
            eos: cfg.eos_id(),
            special: cfg.special_id(),
        })
    }

    /// Pads (with the special id) or truncates prompt codes `[3, n]` to the prompt length,
    /// as the reference does before conditioning; `None` is an all-special prompt.
    pub fn fit(&self, prompt: Option<&[Vec<u32>]>) -> Vec<Vec<u32>> {
        (0..3)
            .map(|q| {
                let mut row: Vec<u32> = prompt
                    .and_then(|p| p.get(q))
                    .map(|r| r.iter().copied().take(self.frames).collect())
                    .unwrap_or_default();
                row.resize(self.frames, self.special);
                row
            })
            .collect()
    }

    /// Condition ids `[cond, uncond][3][frames + 1]`: EOS then the codes; a stream whose first
    /// code is the special id is all special, EOS slot included. The unconditional row is
    /// all special.
    pub fn ids(&self, prompt: &[Vec<u32>]) -> Vec<Vec<Vec<u32>>> {
        let cond = prompt
            .iter()
            .map(|row| {
                if row.first() == Some(&self.special) {
                    vec![self.special; self.frames + 1]
                } else {
                    std::iter::once(self.eos)
                        .chain(row.iter().copied())
                        .collect()
                }
            })
            .collect();
        let uncond = vec![vec![self.special; self.frames + 1]; 3];
        vec![cond, uncond]
    }

    /// The reference's (unused) mask `[B][frames + 2]`: the EOT slot, then the prompt's length
    /// (full for the conditional row, 0 for the null condition).
    pub fn mask(&self) -> Vec<Vec<u32>> {
        let mut uncond = vec![0; self.frames + 2];
        uncond[0] = 1;
        vec![vec![1; self.frames + 2], uncond]
    }

    pub fn embed(&self, ids: &[Vec<Vec<u32>>], device: &Device) -> Result<CondEmbedding> {
        let stream = |q: usize| -> Result<Tensor> {
            let rows: Vec<Vec<u32>> = ids.iter().map(|b| b[q].clone()).collect();
            Ok(self.emb[q].forward(&ids_tensor(&rows, device)?)?)
        };
        let b = ids.len();
        let eot = |t: &Tensor| -> Result<Tensor> { Ok(t.unsqueeze(0)?.expand((b, 1, t.dim(1)?))?) };
        let stream1 = Tensor::cat(&[eot(&self.eot)?, stream(0)?], 1)?;
        let stream2 = Tensor::cat(&[eot(&self.layer2_eot)?, (stream(1)? + stream(2)?)?], 1)?;
        Ok(CondEmbedding { stream1, stream2 })
    }
}

/// Everything the conditioners produced for one generation (cond and uncond rows).
pub struct ConditionInputs {
    pub lyrics: TokenBatch,
    pub style: TokenBatch,
    /// `[B][3][frames + 1]`.
    pub prompt_ids: Vec<Vec<Vec<u32>>>,
}

/// The fused condition prefix, `[B, P, d]` per stream.
#[derive(Debug, Clone)]
pub struct ConditionPrefix {
    pub stream1: Tensor,
    pub stream2: Tensor,
}

/// The three conditioners and the prepend fuser.
pub struct Conditioners {
    pub lyrics: LyricsConditioner,
    pub style: StyleConditioner,
    pub prompt: PromptAudioConditioner,
    version: LmVersion,
    dtype: DType,
}

impl Conditioners {
    pub fn load(
        lyrics_tok: TextTokenizer,
        style_tok: TextTokenizer,
        cfg: &LmConfig,
        vb: VarBuilder,
    ) -> Result<Self> {
        let dtype = vb.dtype();
        let vb = vb.pp("condition_provider.conditioners");
        Ok(Self {
            lyrics: LyricsConditioner::load(lyrics_tok, cfg, vb.pp("description"))?,
            style: StyleConditioner::load(style_tok, cfg, vb.pp("type_info"))?,
            prompt: PromptAudioConditioner::load(cfg, vb.pp("prompt_audio"))?,
            version: cfg.version,
            dtype,
        })
    }

    /// Tokenizes the conditional row and the reference's unconditional row.
    pub fn prepare(&self, cond: &TextConditions, prompt: &[Vec<u32>]) -> Result<ConditionInputs> {
        let uncond = cond.unconditional(self.version);
        let lyrics = self
            .lyrics
            .tokenize(&[cond.lyrics.as_deref(), uncond.lyrics.as_deref()])?;
        let style = self
            .style
            .tokenize(&[cond.style.as_deref(), uncond.style.as_deref()])?;
        Ok(ConditionInputs {
            lyrics,
            style,
            prompt_ids: self.prompt.ids(prompt),
        })
    }

    /// Per-conditioner embeddings: (lyrics, prompt audio, style).
    pub fn embed(&self, inputs: &ConditionInputs, device: &Device) -> Result<[CondEmbedding; 3]> {
        Ok([
            self.lyrics.embed(&inputs.lyrics, device)?,
            self.prompt.embed(&inputs.prompt_ids, device)?,
            self.style.embed(&inputs.style, device)?,
        ])
    }

    /// The fused prefix lyrics | prompt audio | style for each stream.
    pub fn prefix(&self, inputs: &ConditionInputs, device: &Device) -> Result<ConditionPrefix> {
        let [l, p, s] = self.embed(inputs, device)?;
        let fuse = |a: &Tensor, b: &Tensor, c: &Tensor| -> Result<Tensor> {
            Ok(Tensor::cat(&[a, b, c], 1)?.to_dtype(self.dtype)?)
        };
        Ok(ConditionPrefix {
            stream1: fuse(&l.stream1, &p.stream1, &s.stream1)?,
            stream2: fuse(&l.stream2, &p.stream2, &s.stream2)?,
        })
    }
}

/// `[B][L]` ids as a `u32` tensor.
fn ids_tensor(rows: &[Vec<u32>], device: &Device) -> Result<Tensor> {
    let b = rows.len();
    let l = rows.first().map_or(0, Vec::len);
    ensure!(rows.iter().all(|r| r.len() == l), "ragged id batch");
    let flat: Vec<u32> = rows.iter().flatten().copied().collect();
    Ok(Tensor::from_vec(flat, (b, l), device)?)
}
