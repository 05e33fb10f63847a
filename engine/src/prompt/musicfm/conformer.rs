//! The HF `Wav2Vec2ConformerEncoderLayer` as MusicFM uses it (transformers 4.37): macaron
//! feed-forwards, rotary self-attention whose rotation is applied to the LayerNormed input
//! BEFORE the q/k projections (rotate-half form), and the GLU/depthwise convolution module.

use anyhow::Result;
use candle_core::{DType, Module, Tensor, D};
use candle_nn::{LayerNorm, Linear, VarBuilder};

use super::subsampling::BatchNorm;

/// Layer sizes (`w2v2_config.json` with MusicFM's overrides).
#[derive(Debug, Clone)]
pub struct ConformerConfig {
    pub hidden: usize,
    pub heads: usize,
    pub intermediate: usize,
    pub depthwise_kernel: usize,
    pub ln_eps: f64,
    pub bn_eps: f64,
}

struct FeedForward {
    up: Linear,
    down: Linear,
}

impl FeedForward {
    fn load(cfg: &ConformerConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            up: candle_nn::linear(cfg.hidden, cfg.intermediate, vb.pp("intermediate_dense"))?,
            down: candle_nn::linear(cfg.intermediate, cfg.hidden, vb.pp("output_dense"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.down.forward(&self.up.forward(x)?.silu()?)?)
    }
}

/// Rotary tables `cos`, `sin` `[T, head_dim]` (`cat(freqs, freqs)` layout), computed in f32
/// from the stored `inv_freq` like the reference.
pub struct Rotary {
    inv_freq: Tensor,
}

impl Rotary {
    /// Uses the stored `embed_positions.inv_freq` when present, else `base^(-2i/d)`.
    pub fn load(head_dim: usize, base: f64, vb: VarBuilder) -> Result<Self> {
        let inv_freq = if vb.contains_tensor("inv_freq") {
            vb.get(head_dim / 2, "inv_freq")?
        } else {
            let v: Vec<f32> = (0..head_dim / 2)
                .map(|i| (1.0 / base.powf((2 * i) as f64 / head_dim as f64)) as f32)
                .collect();
            Tensor::new(v, vb.device())?
        };
        Ok(Self {
            inv_freq: inv_freq.to_dtype(DType::F32)?,
        })
    }

    pub fn tables(&self, len: usize) -> Result<(Tensor, Tensor)> {
        let t = Tensor::arange(0u32, len as u32, self.inv_freq.device())?
            .to_dtype(DType::F32)?
            .unsqueeze(1)?;
        let freqs = t.broadcast_mul(&self.inv_freq.unsqueeze(0)?)?;
        let emb = Tensor::cat(&[&freqs, &freqs], 1)?;
        Ok((emb.cos()?, emb.sin()?))
    }
}

struct SelfAttention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
}

impl SelfAttention {
    fn load(cfg: &ConformerConfig, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden;
        Ok(Self {
            q: candle_nn::linear(h, h, vb.pp("linear_q"))?,
            k: candle_nn::linear(h, h, vb.pp("linear_k"))?,
            v: candle_nn::linear(h, h, vb.pp("linear_v"))?,
            out: candle_nn::linear(h, h, vb.pp("linear_out"))?,
            heads: cfg.heads,
        })
    }

    /// `x` `[B, T, H]` (already LayerNormed); `cos`/`sin` `[T, head_dim]`.
    fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let (b, t, h) = x.dims3()?;
        let d = h / self.heads;
        let xh = x.reshape((b, t, self.heads, d))?;
        let first = xh.narrow(D::Minus1, 0, d / 2)?;
        let second = xh.narrow(D::Minus1, d / 2, d - d / 2)?;
        let rotated = Tensor::cat(&[&second.neg()?, &first], D::Minus1)?;
        let cos = cos.reshape((1, t, 1, d))?;
        let sin = sin.reshape((1, t, 1, d))?;
        let qk_in = (xh.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?)?.reshape((b, t, h))?;
        let split = |y: Tensor| -> Result<Tensor> {
            Ok(y.reshape((b, t, self.heads, d))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = split(self.q.forward(&qk_in)?)?;
        let k = split(self.k.forward(&qk_in)?)?;
        let v = split(self.v.forward(x)?)?;
        let scores = (q.matmul(&k.t()?)? / (d as f64).sqrt())?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let ctx = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, t, h))?;
        Ok(self.out.forward(&ctx)?)
    }
}

struct ConvModule {
    norm: LayerNorm,
    pointwise1: Tensor,
    depthwise: Tensor,
    bn: BatchNorm,
    pointwise2: Tensor,
    kernel: usize,
}

impl ConvModule {
    fn load(cfg: &ConformerConfig, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden;
        Ok(Self {
            norm: candle_nn::layer_norm(h, cfg.ln_eps, vb.pp("layer_norm"))?,
            pointwise1: vb
                .get((2 * h, h, 1), "pointwise_conv1.weight")?
                .squeeze(2)?,
            depthwise: vb
                .get((h, 1, cfg.depthwise_kernel), "depthwise_conv.weight")?
                .squeeze(1)?,
            bn: BatchNorm::load(h, cfg.bn_eps, vb.pp("batch_norm"))?,
            pointwise2: vb.get((h, h, 1), "pointwise_conv2.weight")?.squeeze(2)?,
            kernel: cfg.depthwise_kernel,
        })
    }

    /// `[B, T, H]` → `[B, T, H]`; the convolutions run along T.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, h) = x.dims3()?;
        let x = self.norm.forward(x)?;
        let x = x.broadcast_matmul(&self.pointwise1.t()?)?; // [B, T, 2H]
        let a = x.narrow(2, 0, h)?;
        let gate = x.narrow(2, h, h)?;
        let x = (a * candle_nn::ops::sigmoid(&gate)?)?.transpose(1, 2)?; // [B, H, T]
                                                                         // Depthwise convolution, "same" padding, as a sum of shifted scaled copies.
        let pad = (self.kernel - 1) / 2;
        let xp = x.pad_with_zeros(2, pad, self.kernel - 1 - pad)?;
        let mut acc = Tensor::zeros((b, h, t), x.dtype(), x.device())?;
        for k in 0..self.kernel {
            let w = self.depthwise.narrow(1, k, 1)?.unsqueeze(0)?; // [1, H, 1]
            acc = (acc + xp.narrow(2, k, t)?.broadcast_mul(&w)?)?;
        }
        let x = self.bn.forward(&acc)?.silu()?.transpose(1, 2)?;
        Ok(x.broadcast_matmul(&self.pointwise2.t()?)?)
    }
}

/// Outputs of one layer's sub-modules before their residual adds (for debugging).
pub struct LayerTrace {
    pub ffn1: Tensor,
    pub self_attn: Tensor,
    pub conv_module: Tensor,
    pub ffn2: Tensor,
}

pub struct ConformerLayer {
    ffn1_norm: LayerNorm,
    ffn1: FeedForward,
    attn_norm: LayerNorm,
    attn: SelfAttention,
    conv: ConvModule,
    ffn2_norm: LayerNorm,
    ffn2: FeedForward,
    final_norm: LayerNorm,
}

impl ConformerLayer {
    pub fn load(cfg: &ConformerConfig, vb: VarBuilder) -> Result<Self> {
        let ln = |name: &str| candle_nn::layer_norm(cfg.hidden, cfg.ln_eps, vb.pp(name));
        Ok(Self {
            ffn1_norm: ln("ffn1_layer_norm")?,
            ffn1: FeedForward::load(cfg, vb.pp("ffn1"))?,
            attn_norm: ln("self_attn_layer_norm")?,
            attn: SelfAttention::load(cfg, vb.pp("self_attn"))?,
            conv: ConvModule::load(cfg, vb.pp("conv_module"))?,
            ffn2_norm: ln("ffn2_layer_norm")?,
            ffn2: FeedForward::load(cfg, vb.pp("ffn2"))?,
            final_norm: ln("final_layer_norm")?,
        })
    }

    #[cfg(feature = "parity")]
    pub fn forward_traced(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
    ) -> Result<(Tensor, LayerTrace)> {
        self.run(x, cos, sin)
    }

    fn run(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<(Tensor, LayerTrace)> {
        let ffn1 = self.ffn1.forward(&self.ffn1_norm.forward(x)?)?;
        let x = ((&ffn1 * 0.5)? + x)?;
        let self_attn = self.attn.forward(&self.attn_norm.forward(&x)?, cos, sin)?;
        let x = (&self_attn + x)?;
        let conv_module = self.conv.forward(&x)?;
        let x = (&x + &conv_module)?;
        let ffn2 = self.ffn2.forward(&self.ffn2_norm.forward(&x)?)?;
        let x = ((&ffn2 * 0.5)? + x)?;
        let y = self.final_norm.forward(&x)?;
        Ok((
            y,
            LayerTrace {
                ffn1,
                self_attn,
                conv_module,
                ffn2,
            },
        ))
    }

    pub fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        Ok(self.run(x, cos, sin)?.0)
    }
}
