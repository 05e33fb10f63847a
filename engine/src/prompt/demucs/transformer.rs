//! HTDemucs' cross-domain transformer: alternating self-attention layers and cross-attention
//! layers between the spectrogram tokens (frequency × time) and the waveform tokens, with
//! sinusoidal position embeddings, pre-norm, LayerScale and a `GroupNorm(1)` after each layer.

use anyhow::Result;
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{LayerNorm, Linear, VarBuilder};

use super::layers::normalize_per_sample;

/// `nn.MultiheadAttention` (packed `in_proj_weight`, batch-first, no mask).
struct Attention {
    wq: Linear,
    wk: Linear,
    wv: Linear,
    out: Linear,
    heads: usize,
}

impl Attention {
    fn load(dim: usize, heads: usize, vb: VarBuilder) -> Result<Self> {
        let w = vb.get((3 * dim, dim), "in_proj_weight")?;
        let b = vb.get(3 * dim, "in_proj_bias")?;
        let part = |i: usize| -> Result<Linear> {
            Ok(Linear::new(
                w.narrow(0, i * dim, dim)?.contiguous()?,
                Some(b.narrow(0, i * dim, dim)?.contiguous()?),
            ))
        };
        Ok(Self {
            wq: part(0)?,
            wk: part(1)?,
            wv: part(2)?,
            out: candle_nn::linear(dim, dim, vb.pp("out_proj"))?,
            heads,
        })
    }

    /// `q` `[B, T, C]` attends to `kv` `[B, S, C]`.
    fn forward(&self, q: &Tensor, kv: &Tensor) -> Result<Tensor> {
        let (b, t, c) = q.dims3()?;
        let s = kv.dim(1)?;
        let d = c / self.heads;
        let split = |x: Tensor, n: usize| -> Result<Tensor> {
            Ok(x.reshape((b, n, self.heads, d))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = split(self.wq.forward(q)?, t)?;
        let k = split(self.wk.forward(kv)?, s)?;
        let v = split(self.wv.forward(kv)?, s)?;
        let scores = (q.matmul(&k.t()?)? / (d as f64).sqrt())?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let ctx = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, t, c))?;
        Ok(self.out.forward(&ctx)?)
    }
}

/// `GroupNorm(1, C)` on `[B, T, C]` tokens (Demucs' `MyGroupNorm`).
struct TokenGroupNorm {
    weight: Tensor,
    bias: Tensor,
}

impl TokenGroupNorm {
    fn load(dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get(dim, "weight")?,
            bias: vb.get(dim, "bias")?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let normed = normalize_per_sample(x, 1e-5)?;
        Ok(normed
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)?)
    }
}

/// One pre-norm layer: self-attention (`norm2` absent) or cross-attention (`norm2` on the
/// other branch's tokens), then the GELU feed-forward.
struct Layer {
    attn: Attention,
    norm1: LayerNorm,
    /// Cross layers normalise the keys with `norm2` and the feed-forward input with `norm3`.
    norm_kv: Option<LayerNorm>,
    norm_ff: LayerNorm,
    linear1: Linear,
    linear2: Linear,
    gamma1: Tensor,
    gamma2: Tensor,
    norm_out: TokenGroupNorm,
}

impl Layer {
    fn load(dim: usize, hidden: usize, heads: usize, cross: bool, vb: VarBuilder) -> Result<Self> {
        let ln = |name: &str| candle_nn::layer_norm(dim, 1e-5, vb.pp(name));
        let (attn, norm_kv, norm_ff) = if cross {
            (
                Attention::load(dim, heads, vb.pp("cross_attn"))?,
                Some(ln("norm2")?),
                ln("norm3")?,
            )
        } else {
            (
                Attention::load(dim, heads, vb.pp("self_attn"))?,
                None,
                ln("norm2")?,
            )
        };
        Ok(Self {
            attn,
            norm1: ln("norm1")?,
            norm_kv,
            norm_ff,
            linear1: candle_nn::linear(dim, hidden, vb.pp("linear1"))?,
            linear2: candle_nn::linear(hidden, dim, vb.pp("linear2"))?,
            gamma1: vb.get(dim, "gamma_1.scale")?,
            gamma2: vb.get(dim, "gamma_2.scale")?,
            norm_out: TokenGroupNorm::load(dim, vb.pp("norm_out"))?,
        })
    }

    fn forward(&self, x: &Tensor, other: Option<&Tensor>) -> Result<Tensor> {
        let q = self.norm1.forward(x)?;
        let a = match (&self.norm_kv, other) {
            (Some(norm), Some(o)) => self.attn.forward(&q, &norm.forward(o)?)?,
            _ => self.attn.forward(&q, &q)?,
        };
        let x = (x + a.broadcast_mul(&self.gamma1)?)?;
        let h = self
            .linear1
            .forward(&self.norm_ff.forward(&x)?)?
            .gelu_erf()?;
        let x = (&x + self.linear2.forward(&h)?.broadcast_mul(&self.gamma2)?)?;
        self.norm_out.forward(&x)
    }
}

/// Sizes of the cross transformer.
#[derive(Debug, Clone)]
pub struct TransformerConfig {
    pub dim: usize,
    pub hidden: usize,
    pub heads: usize,
    pub layers: usize,
    pub max_period: f64,
    pub weight_pos_embed: f64,
}

pub struct CrossTransformer {
    cfg: TransformerConfig,
    norm_in: LayerNorm,
    norm_in_t: LayerNorm,
    layers: Vec<Layer>,
    layers_t: Vec<Layer>,
}

/// `create_sin_embedding` for `length` steps: `[length, dim]`, `[cos | sin]`, in f32.
fn sin_embedding(length: usize, dim: usize, max_period: f64, device: &Device) -> Result<Tensor> {
    let half = dim / 2;
    let mut v = vec![0f32; length * dim];
    for p in 0..length {
        for i in 0..half {
            let expo = i as f32 / (half as f32 - 1.0);
            let phase = p as f32 / (max_period as f32).powf(expo);
            v[p * dim + i] = phase.cos();
            v[p * dim + half + i] = phase.sin();
        }
    }
    Ok(Tensor::from_vec(v, (length, dim), device)?)
}

/// `create_2d_sin_embedding` rearranged to tokens `(t, f)`: `[T·F, dim]`, in f32.
fn sin_embedding_2d(
    dim: usize,
    freqs: usize,
    frames: usize,
    max_period: f64,
    device: &Device,
) -> Result<Tensor> {
    let half = dim / 2;
    let div: Vec<f32> = (0..half)
        .step_by(2)
        .map(|i| (i as f32 * -((max_period.ln() / half as f64) as f32)).exp())
        .collect();
    let mut v = vec![0f32; frames * freqs * dim];
    for t in 0..frames {
        for f in 0..freqs {
            let row = &mut v[(t * freqs + f) * dim..(t * freqs + f + 1) * dim];
            for (j, d) in div.iter().enumerate() {
                row[2 * j] = (t as f32 * d).sin();
                row[2 * j + 1] = (t as f32 * d).cos();
                row[half + 2 * j] = (f as f32 * d).sin();
                row[half + 2 * j + 1] = (f as f32 * d).cos();
            }
        }
    }
    Ok(Tensor::from_vec(v, (frames * freqs, dim), device)?)
}

impl CrossTransformer {
    /// `vb` is rooted at `crosstransformer`; layers alternate self (even) and cross (odd).
    pub fn load(cfg: &TransformerConfig, vb: VarBuilder) -> Result<Self> {
        let mut layers = Vec::new();
        let mut layers_t = Vec::new();
        for i in 0..cfg.layers {
            let cross = i % 2 == 1;
            layers.push(Layer::load(
                cfg.dim,
                cfg.hidden,
                cfg.heads,
                cross,
                vb.pp(format!("layers.{i}")),
            )?);
            layers_t.push(Layer::load(
                cfg.dim,
                cfg.hidden,
                cfg.heads,
                cross,
                vb.pp(format!("layers_t.{i}")),
            )?);
        }
        Ok(Self {
            norm_in: candle_nn::layer_norm(cfg.dim, 1e-5, vb.pp("norm_in"))?,
            norm_in_t: candle_nn::layer_norm(cfg.dim, 1e-5, vb.pp("norm_in_t"))?,
            layers,
            layers_t,
            cfg: cfg.clone(),
        })
    }

    /// `x` `[B, C, F, T]` (spectral branch), `xt` `[B, C, T2]` (waveform branch).
    pub fn forward(&self, x: &Tensor, xt: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, c, fr, t1) = x.dims4()?;
        let dev = x.device();
        let w = self.cfg.weight_pos_embed;
        let pos2d = sin_embedding_2d(c, fr, t1, self.cfg.max_period, dev)?.to_dtype(x.dtype())?;
        let mut x = x.permute((0, 3, 2, 1))?.reshape((b, t1 * fr, c))?;
        x = self.norm_in.forward(&x)?.broadcast_add(&(pos2d * w)?)?;
        let t2 = xt.dim(2)?;
        let pos = sin_embedding(t2, c, self.cfg.max_period, dev)?.to_dtype(DType::F32)?;
        let mut xt = self
            .norm_in_t
            .forward(&xt.transpose(1, 2)?)?
            .broadcast_add(&(pos * w)?)?;
        for (l, lt) in self.layers.iter().zip(&self.layers_t) {
            if l.norm_kv.is_none() {
                x = l.forward(&x, None)?;
                xt = lt.forward(&xt, None)?;
            } else {
                let old_x = x.clone();
                x = l.forward(&x, Some(&xt))?;
                xt = lt.forward(&xt, Some(&old_x))?;
            }
        }
        let x = x.reshape((b, t1, fr, c))?.permute((0, 3, 2, 1))?;
        Ok((x, xt.transpose(1, 2)?))
    }
}
