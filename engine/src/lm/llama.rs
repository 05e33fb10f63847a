//! The Llama decoder stack used twice by LeLM (main and sub transformer).
//!
//! Matches the reference's `modeling_llama.py` (transformers 4.37) as LeLM configures it:
//! pre-norm blocks, MHA without GQA or biases, NeoX-style (rotate-half) RoPE over the whole
//! head, SwiGLU MLP, RMSNorm with eps 1e-5 computed in f32 and cast back BEFORE the weight
//! multiply, attention softmax in f32, and only causal masking (the condition prefix is never
//! masked). Each attention layer keeps its own KV cache for incremental decoding.

use anyhow::Result;
use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::kv_cache::KvCache;
use candle_nn::VarBuilder;

use super::config::RMS_NORM_EPS;
use crate::kernels;
use crate::quant::{LinearLoader, QLinear};

/// Shape of one stack.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StackConfig {
    pub dim: usize,
    pub intermediate_size: usize,
    pub num_heads: usize,
    pub num_layers: usize,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
}

/// RMSNorm as the reference computes it (normalise in f32, cast, then scale).
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
}

impl RmsNorm {
    pub fn load(dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get(dim, "weight")?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let x = x.to_dtype(DType::F32)?;
        let var = x.sqr()?.mean_keepdim(D::Minus1)?;
        let x = x.broadcast_mul(&(var + RMS_NORM_EPS)?.sqrt()?.recip()?)?;
        Ok(x.to_dtype(dtype)?.broadcast_mul(&self.weight)?)
    }
}

/// cos/sin tables of rotate-half RoPE, `[max_positions, head_dim / 2]`, computed in f32 like
/// the reference's cache and stored in the model dtype.
#[derive(Debug, Clone)]
struct Rotary {
    cos: Tensor,
    sin: Tensor,
}

impl Rotary {
    fn new(cfg: &StackConfig, dtype: DType, device: &Device) -> Result<Self> {
        let head_dim = cfg.dim / cfg.num_heads;
        let theta = cfg.rope_theta as f32;
        let inv_freq: Vec<f32> = (0..head_dim / 2)
            .map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32))
            .collect();
        let n = cfg.max_position_embeddings;
        let freqs: Vec<f32> = (0..n)
            .flat_map(|p| inv_freq.iter().map(move |f| p as f32 * f))
            .collect();
        let freqs = Tensor::from_vec(freqs, (n, head_dim / 2), device)?;
        Ok(Self {
            cos: freqs.cos()?.to_dtype(dtype)?,
            sin: freqs.sin()?.to_dtype(dtype)?,
        })
    }

    /// Rotates `[B, H, S, head_dim]` at positions `start..start + S`.
    fn apply(&self, x: &Tensor, start: usize) -> Result<Tensor> {
        let s = x.dim(2)?;
        let max = self.cos.dim(0)?;
        anyhow::ensure!(
            start + s <= max,
            "sequence position {} exceeds max_position_embeddings {max}",
            start + s
        );
        let cos = self.cos.narrow(0, start, s)?;
        let sin = self.sin.narrow(0, start, s)?;
        Ok(candle_nn::rotary_emb::rope(&x.contiguous()?, &cos, &sin)?)
    }
}

struct Attention {
    q_proj: QLinear,
    k_proj: QLinear,
    v_proj: QLinear,
    o_proj: QLinear,
    num_heads: usize,
    head_dim: usize,
    cache: KvCache,
}

impl Attention {
    fn load(cfg: &StackConfig, vb: VarBuilder, ll: &LinearLoader) -> Result<Self> {
        let d = cfg.dim;
        let lin = |name: &str| ll.linear(d, d, false, vb.pp(name));
        Ok(Self {
            q_proj: lin("q_proj")?,
            k_proj: lin("k_proj")?,
            v_proj: lin("v_proj")?,
            o_proj: lin("o_proj")?,
            num_heads: cfg.num_heads,
            head_dim: d / cfg.num_heads,
            cache: KvCache::new(2, 1),
        })
    }

    fn forward(&mut self, x: &Tensor, rotary: &Rotary) -> Result<Tensor> {
        let (b, s, d) = x.dims3()?;
        let start = self.cache.current_seq_len();
        let heads = |t: Tensor| -> Result<Tensor> {
            Ok(t.reshape((b, s, self.num_heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = rotary.apply(&heads(self.q_proj.forward(x)?)?, start)?;
        let k = rotary.apply(&heads(self.k_proj.forward(x)?)?, start)?;
        let v = heads(self.v_proj.forward(x)?)?;
        let (k, v) = self.cache.append(&k, &v)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        // New position i sees the cache and new positions <= i (a decode step: the whole cache).
        let probs = kernels::softmax_scaled(&q.matmul(&k.t()?)?, scale, Some(start))?;
        let out = probs.matmul(&v)?;
        let out = out.transpose(1, 2)?.reshape((b, s, d))?;
        Ok(self.o_proj.forward(&out)?)
    }

    fn reset(&mut self, capacity: usize) {
        self.cache = KvCache::new(2, capacity.max(1));
    }
}

struct Mlp {
    gate_proj: QLinear,
    up_proj: QLinear,
    down_proj: QLinear,
}

impl Mlp {
    fn load(cfg: &StackConfig, vb: VarBuilder, ll: &LinearLoader) -> Result<Self> {
        let (d, f) = (cfg.dim, cfg.intermediate_size);
        Ok(Self {
            gate_proj: ll.linear(d, f, false, vb.pp("gate_proj"))?,
            up_proj: ll.linear(d, f, false, vb.pp("up_proj"))?,
            down_proj: ll.linear(f, d, false, vb.pp("down_proj"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate = self.gate_proj.forward(x)?;
        let up = self.up_proj.forward(x)?;
        Ok(self.down_proj.forward(&kernels::silu_mul(&gate, &up)?)?)
    }
}

struct Block {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl Block {
    fn load(cfg: &StackConfig, vb: VarBuilder, ll: &LinearLoader) -> Result<Self> {
        Ok(Self {
            input_layernorm: RmsNorm::load(cfg.dim, vb.pp("input_layernorm"))?,
            self_attn: Attention::load(cfg, vb.pp("self_attn"), ll)?,
            post_attention_layernorm: RmsNorm::load(cfg.dim, vb.pp("post_attention_layernorm"))?,
            mlp: Mlp::load(cfg, vb.pp("mlp"), ll)?,
        })
    }

    fn forward(&mut self, x: &Tensor, rotary: &Rotary) -> Result<Tensor> {
        let h = (x + self
            .self_attn
            .forward(&self.input_layernorm.forward(x)?, rotary)?)?;
        Ok((&h
            + self
                .mlp
                .forward(&self.post_attention_layernorm.forward(&h)?)?)?)
    }
}

/// A Llama model body (`<prefix>.model.*`): blocks and the final norm, fed embeddings directly
/// (its `embed_tokens` table is never used by LeLM and is not loaded).
pub struct LlamaStack {
    layers: Vec<Block>,
    norm: RmsNorm,
    rotary: Rotary,
}

impl LlamaStack {
    pub fn load(cfg: &StackConfig, vb: VarBuilder) -> Result<Self> {
        Self::load_with(cfg, vb, &LinearLoader::float())
    }

    /// Loads with the linear layers built by `ll` (precision, quantized file).
    pub fn load_with(cfg: &StackConfig, vb: VarBuilder, ll: &LinearLoader) -> Result<Self> {
        let rotary = Rotary::new(cfg, vb.dtype(), vb.device())?;
        let layers = (0..cfg.num_layers)
            .map(|i| Block::load(cfg, vb.pp(format!("layers.{i}")), ll))
            .collect::<Result<_>>()?;
        Ok(Self {
            layers,
            norm: RmsNorm::load(cfg.dim, vb.pp("norm"))?,
            rotary,
        })
    }

    /// Positions already held by the KV caches.
    pub fn cached_len(&self) -> usize {
        self.layers
            .first()
            .map_or(0, |l| l.self_attn.cache.current_seq_len())
    }

    /// Runs `x` `[B, S, d]` after the cached positions; returns the final-normed hidden states.
    pub fn forward(&mut self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for layer in &mut self.layers {
            h = layer.forward(&h, &self.rotary)?;
        }
        self.norm.forward(&h)
    }

    /// Empties the KV caches, preallocating room for `capacity` positions.
    pub fn reset(&mut self, capacity: usize) {
        for layer in &mut self.layers {
            layer.self_attn.reset(capacity);
        }
    }
}
