//! The flow-matching velocity estimator: a non-causal GPT-2-style transformer with learned
//! absolute positions, interleaved RoPE on q/k and AdaLN-single timestep modulation
//! (`gpt2_rope2_time_new_correct_mask_noncasual_reflow.GPT2Model` of the reference).
//!
//! Weight layout traps: the blocks' `c_attn`, `c_proj`, `c_fc` are HF `Conv1D` (`[in, out]`,
//! used as `x · W`), while `proj_out` and `adaln_single.*` are ordinary `Linear` (`[out, in]`).

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{LayerNorm, VarBuilder};

use crate::kernels;
use crate::quant::QLinear;
use serde::Deserialize;

/// Sinusoidal timestep features of the AdaLN-single embedder.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TimestepConfig {
    /// Width of the `[cos | sin]` features (512).
    pub flow_t_size: usize,
    /// `t ∈ [0, 1)` is multiplied by this before the sinusoid (1000).
    pub scale: f64,
    pub max_period: f64,
}

/// Shape of the estimator.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct EstimatorConfig {
    pub n_embd: usize,
    pub n_head: usize,
    pub n_layer: usize,
    pub n_inner: usize,
    /// Rows of the learned position table (`wpe`); the longest window the model accepts.
    pub n_positions: usize,
    pub layer_norm_epsilon: f64,
    pub rope_theta: f64,
    pub timestep: TimestepConfig,
}

impl EstimatorConfig {
    /// The released decoder (`GPT2Config(n_positions=1000, n_layer=16, n_head=20, n_embd=2200,
    /// n_inner=4400)`).
    pub fn songgen_v2() -> Self {
        Self {
            n_embd: 2200,
            n_head: 20,
            n_layer: 16,
            n_inner: 4400,
            n_positions: 1000,
            layer_norm_epsilon: 1e-5,
            rope_theta: 10_000.0,
            timestep: TimestepConfig {
                flow_t_size: 512,
                scale: 1000.0,
                max_period: 10_000.0,
            },
        }
    }

    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }
}

/// HF `Conv1D`: `y = x · W + b` with `W: [in, out]`.
#[derive(Debug, Clone)]
pub struct Conv1D {
    weight: Tensor,
    bias: Tensor,
}

impl Conv1D {
    pub fn load(vb: VarBuilder, d_in: usize, d_out: usize) -> Result<Self> {
        Ok(Self {
            weight: vb.get((d_in, d_out), "weight")?,
            bias: vb.get(d_out, "bias")?,
        })
    }
}

impl Module for Conv1D {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.broadcast_matmul(&self.weight)?.broadcast_add(&self.bias)
    }
}

/// An ordinary `[out, in]` linear layer, stored transposed for the matmul.
fn linear(d_in: usize, d_out: usize, vb: VarBuilder) -> Result<QLinear> {
    QLinear::from_weight(
        &vb.get((d_out, d_in), "weight")?,
        Some(vb.get(d_out, "bias")?),
    )
}

/// Timestep → `emb` (`TimestepEmbedding` of the `[cos | sin]` features) and the block
/// modulation `mod = linear(SiLU(emb))` (`adaln_single`).
#[derive(Debug, Clone)]
pub struct AdaLnSingle {
    cfg: TimestepConfig,
    linear_1: QLinear,
    linear_2: QLinear,
    linear: QLinear,
}

impl AdaLnSingle {
    pub fn load(vb: VarBuilder, cfg: &EstimatorConfig) -> Result<Self> {
        let d = cfg.n_embd;
        let te = vb.pp("emb").pp("timestep_embedder");
        Ok(Self {
            cfg: cfg.timestep.clone(),
            linear_1: linear(cfg.timestep.flow_t_size, d, te.pp("linear_1"))?,
            linear_2: linear(d, d, te.pp("linear_2"))?,
            linear: linear(d, 6 * d, vb.pp("linear"))?,
        })
    }

    /// `[cos | sin](t · scale · f_i)` with `f_i = exp(−ln(max_period)·i/half)`, computed in f32
    /// like the reference (even for wider model dtypes). `t: [n]` → `[n, flow_t_size]` F32.
    pub fn sinusoid(&self, t: &Tensor) -> Result<Tensor> {
        let half = self.cfg.flow_t_size / 2;
        let ln_p = (self.cfg.max_period.ln()) as f32;
        let freqs: Vec<f32> = (0..half)
            .map(|i| (-ln_p * i as f32 / half as f32).exp())
            .collect();
        let freqs = Tensor::from_vec(freqs, (1, half), t.device())?;
        let args = (t
            .to_dtype(DType::F32)?
            .unsqueeze(1)?
            .broadcast_mul(&freqs)?
            * self.cfg.scale)?;
        Tensor::cat(&[args.cos()?, args.sin()?], 1)
    }

    /// `t: [n]` → (`emb: [n, D]`, `mod: [n, 6D]`) in the model dtype.
    pub fn forward(&self, t: &Tensor, dtype: DType) -> Result<(Tensor, Tensor)> {
        let s = self.sinusoid(t)?.to_dtype(dtype)?;
        let emb = self.linear_2.forward(&self.linear_1.forward(&s)?.silu()?)?;
        let modulation = self.linear.forward(&emb.silu()?)?;
        Ok((emb, modulation))
    }
}

/// Interleaved-pair RoPE tables (`precompute_freqs_cis`), in f32 like the reference.
#[derive(Debug, Clone)]
pub struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    /// `θ_i = theta^(−2i/hd)`, positions `0..len`; tables `[len, hd/2]`.
    pub fn new(head_dim: usize, len: usize, theta: f64, device: &Device) -> Result<Self> {
        let half = head_dim / 2;
        let theta = theta as f32;
        let inv: Vec<f32> = (0..half)
            .map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32))
            .collect();
        let mut cos = Vec::with_capacity(len * half);
        let mut sin = Vec::with_capacity(len * half);
        for m in 0..len {
            for &f in &inv {
                let a = m as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        Ok(Self {
            cos: Tensor::from_vec(cos, (len, half), device)?,
            sin: Tensor::from_vec(sin, (len, half), device)?,
        })
    }

    /// Rotates `x: [B, H, L, hd]` (pairs `(2i, 2i+1)` as complex numbers).
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let len = x.dim(2)?;
        let dtype = x.dtype();
        let cos = self.cos.narrow(0, 0, len)?;
        let sin = self.sin.narrow(0, 0, len)?;
        candle_nn::rotary_emb::rope_i(&x.to_dtype(DType::F32)?.contiguous()?, &cos, &sin)?
            .to_dtype(dtype)
    }
}

/// Intermediates of one block, for parity checks (`[B, L, H, hd]` for q/k).
#[derive(Debug, Clone)]
pub struct BlockTrace {
    pub q_pre_rope: Tensor,
    pub q_rope: Tensor,
    pub k_rope: Tensor,
    /// Attention output after `c_proj`, before the gate.
    pub attn_out: Tensor,
    /// MLP output, before the gate.
    pub mlp_out: Tensor,
}

/// One transformer block with AdaLN-single modulation.
#[derive(Debug, Clone)]
pub struct Block {
    scale_shift_table: Tensor,
    ln_1: LayerNorm,
    c_attn: Conv1D,
    attn_proj: Conv1D,
    ln_2: LayerNorm,
    c_fc: Conv1D,
    mlp_proj: Conv1D,
    n_head: usize,
}

impl Block {
    pub fn load(vb: VarBuilder, cfg: &EstimatorConfig) -> Result<Self> {
        let d = cfg.n_embd;
        let eps = cfg.layer_norm_epsilon;
        Ok(Self {
            scale_shift_table: vb.get((6, d), "scale_shift_table")?,
            ln_1: candle_nn::layer_norm(d, eps, vb.pp("ln_1"))?,
            c_attn: Conv1D::load(vb.pp("attn").pp("c_attn"), d, 3 * d)?,
            attn_proj: Conv1D::load(vb.pp("attn").pp("c_proj"), d, d)?,
            ln_2: candle_nn::layer_norm(d, eps, vb.pp("ln_2"))?,
            c_fc: Conv1D::load(vb.pp("mlp").pp("c_fc"), d, cfg.n_inner)?,
            mlp_proj: Conv1D::load(vb.pp("mlp").pp("c_proj"), cfg.n_inner, d)?,
            n_head: cfg.n_head,
        })
    }

    /// `h: [B, L, D]`, `modulation: [B, 6D]` → `h'`.
    pub fn forward(&self, h: &Tensor, modulation: &Tensor, rope: &Rope) -> Result<Tensor> {
        Ok(self.run(h, modulation, rope, false)?.0)
    }

    /// [`Self::forward`], also returning intermediates when `trace`.
    #[cfg(feature = "parity")]
    pub fn forward_traced(
        &self,
        h: &Tensor,
        modulation: &Tensor,
        rope: &Rope,
        trace: bool,
    ) -> Result<(Tensor, Option<BlockTrace>)> {
        self.run(h, modulation, rope, trace)
    }

    fn run(
        &self,
        h: &Tensor,
        modulation: &Tensor,
        rope: &Rope,
        trace: bool,
    ) -> Result<(Tensor, Option<BlockTrace>)> {
        let (b, l, d) = h.dims3()?;
        let hd = d / self.n_head;
        // (shift, scale, gate) for attention, then for the MLP; each [B, 1, D].
        let m = self
            .scale_shift_table
            .unsqueeze(0)?
            .broadcast_add(&modulation.reshape((b, 6, d))?)?;
        let part = |i: usize| m.narrow(1, i, 1);
        let (shift_a, scale_a, gate_a) = (part(0)?, part(1)?, part(2)?);
        let (shift_m, scale_m, gate_m) = (part(3)?, part(4)?, part(5)?);

        let a = modulate(&self.ln_1.forward(h)?, &shift_a, &scale_a)?;
        let qkv = self.c_attn.forward(&a)?;
        let heads = |i: usize| -> Result<Tensor> {
            qkv.narrow(D::Minus1, i * d, d)?
                .reshape((b, l, self.n_head, hd))?
                .transpose(1, 2)
        };
        let (q, k, v) = (heads(0)?, heads(1)?, heads(2)?);
        let q_rot = rope.apply(&q)?;
        let k_rot = rope.apply(&k)?;
        let scores = q_rot.matmul(&k_rot.t()?)?;
        let probs = kernels::softmax_scaled(&scores, 1.0 / (hd as f64).sqrt(), None)?;
        let attn = probs
            .matmul(&v.contiguous()?)?
            .transpose(1, 2)?
            .reshape((b, l, d))?;
        let attn_out = self.attn_proj.forward(&attn)?;
        let h = (h + attn_out.broadcast_mul(&gate_a)?)?;

        let x = modulate(&self.ln_2.forward(&h)?, &shift_m, &scale_m)?;
        let mlp_out = self
            .mlp_proj
            .forward(&kernels::gelu_tanh(&self.c_fc.forward(&x)?)?)?;
        let h_out = (&h + mlp_out.broadcast_mul(&gate_m)?)?;
        let trace = if trace {
            let bhld_to_blhd = |t: &Tensor| t.transpose(1, 2)?.contiguous();
            Some(BlockTrace {
                q_pre_rope: bhld_to_blhd(&q)?,
                q_rope: bhld_to_blhd(&q_rot)?,
                k_rope: bhld_to_blhd(&k_rot)?,
                attn_out,
                mlp_out,
            })
        } else {
            None
        };
        Ok((h_out, trace))
    }
}

/// `x · (1 + scale) + shift` (AdaLN).
fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    x.broadcast_mul(&(scale + 1.0)?)?.broadcast_add(shift)
}

/// Intermediates of one estimator pass.
#[derive(Debug, Clone)]
pub struct EstimatorTrace {
    pub emb: Tensor,
    pub modulation: Tensor,
    pub h_after_block0: Tensor,
}

/// `cfm_wrapper.estimator.*`.
#[derive(Debug, Clone)]
pub struct FlowEstimator {
    cfg: EstimatorConfig,
    wpe: Tensor,
    adaln: AdaLnSingle,
    blocks: Vec<Block>,
    scale_shift_table: Tensor,
    ln_f: LayerNorm,
    proj_out: QLinear,
    /// `proj_out` restricted to its last `latent_dim` rows: only they feed the velocity.
    velocity_head: Option<QLinear>,
    rope: Rope,
    dtype: DType,
}

impl FlowEstimator {
    /// Loads the estimator; when `latent_dim` is given, also prepares the sliced velocity head.
    pub fn load(vb: VarBuilder, cfg: &EstimatorConfig, latent_dim: Option<usize>) -> Result<Self> {
        let d = cfg.n_embd;
        if cfg.n_head == 0 || !d.is_multiple_of(cfg.n_head) || !cfg.head_dim().is_multiple_of(2) {
            candle_core::bail!(
                "estimator config: n_embd {d} must split into n_head {} heads of even width",
                cfg.n_head
            );
        }
        let blocks = (0..cfg.n_layer)
            .map(|i| Block::load(vb.pp("h").pp(i), cfg))
            .collect::<Result<Vec<_>>>()?;
        let out_w = vb.pp("proj_out").get((d, d), "weight")?;
        let out_b = vb.pp("proj_out").get(d, "bias")?;
        let proj_out = QLinear::from_weight(&out_w, Some(out_b.clone()))?;
        let velocity_head = match latent_dim {
            Some(n) if n <= d => Some(QLinear::from_weight(
                &out_w.narrow(0, d - n, n)?,
                Some(out_b.narrow(0, d - n, n)?.contiguous()?),
            )?),
            Some(n) => candle_core::bail!("latent_dim {n} exceeds the estimator width {d}"),
            None => None,
        };
        Ok(Self {
            wpe: vb.get((cfg.n_positions, d), "wpe.weight")?,
            adaln: AdaLnSingle::load(vb.pp("adaln_single"), cfg)?,
            blocks,
            scale_shift_table: vb.get((2, d), "scale_shift_table")?,
            ln_f: candle_nn::layer_norm(d, cfg.layer_norm_epsilon, vb.pp("ln_f"))?,
            proj_out,
            velocity_head,
            rope: Rope::new(cfg.head_dim(), cfg.n_positions, cfg.rope_theta, vb.device())?,
            dtype: vb.dtype(),
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &EstimatorConfig {
        &self.cfg
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn adaln(&self) -> &AdaLnSingle {
        &self.adaln
    }

    pub fn blocks(&self) -> &[Block] {
        &self.blocks
    }

    pub fn rope(&self) -> &Rope {
        &self.rope
    }

    /// The full-width output `[B, L, D]` for `x: [B, L, D]`, `t: [B]`.
    pub fn forward(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        let h = self.hidden(x, t, None)?;
        self.proj_out.forward(&h)
    }

    /// Like [`Self::forward`], also returning intermediates.
    #[cfg(feature = "parity")]
    pub fn forward_traced(&self, x: &Tensor, t: &Tensor) -> Result<(Tensor, EstimatorTrace)> {
        let mut trace = None;
        let h = self.hidden(x, t, Some(&mut trace))?;
        let trace = trace.ok_or_else(|| candle_core::Error::msg("estimator has no blocks"))?;
        Ok((self.proj_out.forward(&h)?, trace))
    }

    /// Only the last `latent_dim` output channels (the velocity), `[B, L, latent_dim]`.
    pub fn velocity(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        let h = self.hidden(x, t, None)?;
        match &self.velocity_head {
            Some(head) => head.forward(&h),
            None => candle_core::bail!("estimator loaded without a velocity head"),
        }
    }

    /// Everything up to (not including) `proj_out`.
    fn hidden(
        &self,
        x: &Tensor,
        t: &Tensor,
        mut trace: Option<&mut Option<EstimatorTrace>>,
    ) -> Result<Tensor> {
        let (_, l, _) = x.dims3()?;
        if l > self.cfg.n_positions {
            candle_core::bail!(
                "estimator input of {l} frames exceeds the {} learned positions",
                self.cfg.n_positions
            );
        }
        let x = x.to_dtype(self.dtype)?;
        let (emb, modulation) = self.adaln.forward(t, self.dtype)?;
        let mut h = x.broadcast_add(&self.wpe.narrow(0, 0, l)?)?;
        for (i, block) in self.blocks.iter().enumerate() {
            h = block.forward(&h, &modulation, &self.rope)?;
            if i == 0 {
                if let Some(slot) = trace.as_deref_mut() {
                    *slot = Some(EstimatorTrace {
                        emb: emb.clone(),
                        modulation: modulation.clone(),
                        h_after_block0: h.clone(),
                    });
                }
            }
        }
        // Final AdaLN uses the pre-SiLU `emb`, not `mod`.
        let ss = self
            .scale_shift_table
            .unsqueeze(0)?
            .broadcast_add(&emb.unsqueeze(1)?)?;
        let (shift, scale) = (ss.narrow(1, 0, 1)?, ss.narrow(1, 1, 1)?);
        modulate(&self.ln_f.forward(&h)?, &shift, &scale)
    }
}
