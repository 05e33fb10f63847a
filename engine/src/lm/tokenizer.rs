//! Qwen2 byte-level BPE tokenization of the two text conditioners.
//!
//! The reference loads `third_party/Qwen2-7B` with the slow `Qwen2Tokenizer` and then adds each
//! conditioner's tokens as special, unnormalised, unstripped tokens: the lyric structure tags
//! (and, in v2, `.`) for the lyrics; the `[Musicality-*]`/`[Pure-Music]` tags (v2) and `.` for
//! the style. Special tokens are matched whole and case-sensitively and the text is split around
//! them, so in v2 every `.` stays alone (`" ."` is `Ġ` + `.`). `.` already exists in the
//! vocabulary and keeps its id. Texts are prefixed with `<|im_start|>`; no BOS/EOS is added.

use std::path::Path;

use anyhow::{anyhow, bail, ensure, Context, Result};
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

/// Every text starts with this token; an absent text is this token alone.
pub const IM_START: &str = "<|im_start|>";
/// Padding token (also Qwen2's end-of-text).
pub const PAD: &str = "<|endoftext|>";

/// The Qwen2 pre-tokenizer split pattern.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Loads the shared Qwen2 tokenizer from `dir`: `tokenizer.json` when present, else
/// `vocab.json` + `merges.txt` with the special tokens of `tokenizer_config.json`.
pub fn load_qwen2(dir: &Path) -> Result<Tokenizer> {
    let json = dir.join("tokenizer.json");
    if json.is_file() {
        let mut tok = Tokenizer::from_file(&json)
            .map_err(|e| anyhow!("tokenizer {}: {e}", json.display()))?;
        // Padding and truncation are the conditioners' job (to their own max_len).
        tok.with_padding(None);
        tok.with_truncation(None)
            .map_err(|e| anyhow!("tokenizer {}: {e}", json.display()))?;
        return Ok(tok);
    }
    let vocab = dir.join("vocab.json");
    let merges = dir.join("merges.txt");
    if !vocab.is_file() || !merges.is_file() {
        bail!(
            "tokenizer folder {} has neither tokenizer.json nor vocab.json + merges.txt",
            dir.display()
        );
    }
    let bpe = BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy())
        .build()
        .map_err(|e| anyhow!("tokenizer {}: {e}", dir.display()))?;
    let split = Split::new(
        SplitPattern::Regex(QWEN2_SPLIT.into()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(|e| anyhow!("Qwen2 split pattern: {e}"))?;
    let mut tok = Tokenizer::new(bpe);
    tok.with_normalizer(Some(NFC))
        .with_pre_tokenizer(Some(Sequence::new(vec![
            split.into(),
            ByteLevel::new(false, false, false).into(),
        ])))
        .with_decoder(Some(ByteLevel::default()));
    for (id, content) in config_special_tokens(&dir.join("tokenizer_config.json"))? {
        tok.add_special_tokens(&[special(&content)]);
        ensure!(
            tok.token_to_id(&content) == Some(id),
            "tokenizer {}: special token {content:?} should have id {id}",
            dir.display()
        );
    }
    Ok(tok)
}

/// `added_tokens_decoder` of a `tokenizer_config.json`, by id.
fn config_special_tokens(path: &Path) -> Result<Vec<(u32, String)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let cfg: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let mut tokens = Vec::new();
    if let Some(map) = cfg.get("added_tokens_decoder").and_then(|m| m.as_object()) {
        for (id, tok) in map {
            let id: u32 = id
                .parse()
                .with_context(|| format!("{}: bad token id {id:?}", path.display()))?;
            let content = tok
                .get("content")
                .and_then(|c| c.as_str())
                .with_context(|| format!("{}: token {id} has no content", path.display()))?;
            tokens.push((id, content.to_string()));
        }
    }
    tokens.sort();
    Ok(tokens)
}

fn special(content: &str) -> AddedToken {
    AddedToken::from(content, true).normalized(false)
}

/// One conditioner's tokenizer: the shared Qwen2 BPE plus that conditioner's added tokens.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    max_len: usize,
    pad_id: u32,
    /// Ids of the structure tags; a tag's cover value is its index + 1.
    structure_ids: Vec<u32>,
}

/// A batch of texts tokenized to the conditioner's fixed length.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBatch {
    /// `[batch][max_len]`, right-padded with `<|endoftext|>` or truncated.
    pub ids: Vec<Vec<u32>>,
    /// 1 on real tokens, 0 on padding.
    pub mask: Vec<Vec<u32>>,
    /// Structure-section value per token (lyrics only; 0 before the first tag and on padding).
    pub cover: Option<Vec<Vec<u32>>>,
}

impl TextTokenizer {
    /// Adds `structure_tags` (which get cover values) and then `extra` special tokens to `base`.
    /// New tokens get consecutive ids after the base vocabulary; a token already in the
    /// vocabulary (`.`) keeps its id.
    pub fn new(
        base: &Tokenizer,
        structure_tags: &[String],
        extra: &[String],
        max_len: usize,
    ) -> Result<Self> {
        let mut inner = base.clone();
        let base_len = inner.get_vocab_size(true) as u32;
        let mut next = base_len;
        let mut structure_ids = Vec::with_capacity(structure_tags.len());
        for (i, tag) in structure_tags.iter().chain(extra).enumerate() {
            let existing = inner.token_to_id(tag);
            inner.add_special_tokens(&[special(tag)]);
            let id = inner
                .token_to_id(tag)
                .ok_or_else(|| anyhow!("tokenizer did not add {tag:?}"))?;
            match existing {
                Some(old) => ensure!(old == id, "token {tag:?} changed id from {old} to {id}"),
                None => {
                    ensure!(
                        id == next,
                        "token {tag:?} got id {id}, the reference gives it {next}"
                    );
                    next += 1;
                }
            }
            if i < structure_tags.len() {
                structure_ids.push(id);
            }
        }
        let pad_id = inner
            .token_to_id(PAD)
            .ok_or_else(|| anyhow!("tokenizer has no {PAD} token"))?;
        ensure!(
            inner.token_to_id(IM_START).is_some(),
            "tokenizer has no {IM_START} token"
        );
        Ok(Self {
            inner,
            max_len,
            pad_id,
            structure_ids,
        })
    }

    /// Size of the vocabulary including the added tokens (the embedding table's row count).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Ids of `<|im_start|>` + `text` (the token alone for `None`), before padding.
    pub fn raw_ids(&self, text: Option<&str>) -> Result<Vec<u32>> {
        let text = format!("{IM_START}{}", text.unwrap_or(""));
        let enc = self
            .inner
            .encode(text.as_str(), false)
            .map_err(|e| anyhow!("tokenizing {text:?}: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Structure cover of raw ids: from each tag up to the next one, `tag index + 1`.
    pub fn structure_cover(&self, ids: &[u32]) -> Vec<u32> {
        let mut current = 0;
        ids.iter()
            .map(|id| {
                if let Some(i) = self.structure_ids.iter().position(|s| s == id) {
                    current = i as u32 + 1;
                }
                current
            })
            .collect()
    }

    /// Tokenizes a batch to exactly `max_len` tokens per row. The cover (for tokenizers with
    /// structure tags) is computed before truncation, as in the reference.
    pub fn batch(&self, texts: &[Option<&str>]) -> Result<TokenBatch> {
        let mut batch = TokenBatch {
            ids: Vec::new(),
            mask: Vec::new(),
            cover: (!self.structure_ids.is_empty()).then(Vec::new),
        };
        for text in texts {
            let raw = self.raw_ids(*text)?;
            let n = raw.len().min(self.max_len);
            let mut ids = raw[..n].to_vec();
            ids.resize(self.max_len, self.pad_id);
            let mut mask = vec![1; n];
            mask.resize(self.max_len, 0);
            if let Some(cover) = batch.cover.as_mut() {
                let mut c = self.structure_cover(&raw);
                c.truncate(n);
                c.resize(self.max_len, 0);
                cover.push(c);
            }
            batch.ids.push(ids);
            batch.mask.push(mask);
        }
        Ok(batch)
    }
}
