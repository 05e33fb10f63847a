//! The LeLM network: code embeddings, the main Llama stack with the cb0 head, the bridge MLP,
//! and the sub Llama stack with the cb1/cb2 heads.
//!
//! Both stacks run causally over the SAME time axis (condition prefix, then pattern columns)
//! with their own KV caches; the sub stack is not a depth transformer. Its input is
//! `mlp.2(gelu(mlp.0([emb1(cb1) + emb2(cb2) | h1])))` where `h1` is the main stack's
//! post-final-norm hidden state. Dead tensors of the checkpoint (`layer2_emb.0`, both
//! `embed_tokens`, `transformer2.lm_head`, `out_norm`) are not loaded.

use anyhow::{bail, ensure, Result};
use candle_core::{DType, Module, Tensor};
use candle_nn::{embedding, Embedding, VarBuilder};

use super::conditioners::ConditionPrefix;
use super::config::LmConfig;
use super::llama::{LlamaStack, StackConfig};
use crate::quant::{LinearLoader, QLinear};

/// What one forward call returns.
pub struct StepOutput {
    /// `[B, 3, S, code_size + 1]` f32 logits of the S new positions.
    pub logits: Tensor,
    /// Intermediate tensors over the whole fed sequence, when asked for.
    pub trace: Option<Trace>,
}

/// Intermediate tensors `[B, len, d]` of one forward call, for parity checks.
pub struct Trace {
    /// Main-stack input (prefix + stream-1 embeddings on the first call).
    pub fused1: Tensor,
    /// Stream-2 input embeddings (prefix + emb1 + emb2).
    pub fused2: Tensor,
    /// Main stack after its final norm.
    pub h1: Tensor,
    /// Bridge MLP output (sub-stack input).
    pub bridge: Tensor,
    /// Sub stack after its final norm.
    pub h2: Tensor,
}

pub struct LeLm {
    emb0: Embedding,
    emb1: Embedding,
    emb2: Embedding,
    main: LlamaStack,
    head0: QLinear,
    bridge_in: QLinear,
    bridge_out: QLinear,
    sub: LlamaStack,
    head1: QLinear,
    head2: QLinear,
}

impl LeLm {
    /// Loads from a VarBuilder rooted at the `audiolm.` prefix.
    pub fn load(cfg: &LmConfig, vb: VarBuilder) -> Result<Self> {
        Self::load_with(cfg, vb, &LinearLoader::float())
    }

    /// Loads with the linear layers (both stacks, heads, bridge) built by `ll`; embeddings and
    /// norms stay in the VarBuilder's float dtype.
    pub fn load_with(cfg: &LmConfig, vb: VarBuilder, ll: &LinearLoader) -> Result<Self> {
        let d = cfg.dim;
        let rows = cfg.emb_rows();
        let width = cfg.logit_width();
        let stack = |layers, theta, max_pos| StackConfig {
            dim: d,
            intermediate_size: cfg.intermediate_size,
            num_heads: cfg.num_heads,
            num_layers: layers,
            rope_theta: theta,
            max_position_embeddings: max_pos,
        };
        let main_cfg = stack(cfg.num_layers, cfg.rope_theta, cfg.max_position_embeddings);
        let sub_cfg = stack(
            cfg.num_layers_sub,
            cfg.rope_theta_sub,
            cfg.max_position_embeddings_sub,
        );
        Ok(Self {
            emb0: embedding(rows, d, vb.pp("emb.0"))?,
            emb1: embedding(rows, d, vb.pp("layer2_emb.1"))?,
            emb2: embedding(rows, d, vb.pp("layer2_emb.2"))?,
            main: LlamaStack::load_with(&main_cfg, vb.pp("transformer.model"), ll)?,
            head0: ll.linear(d, width, false, vb.pp("transformer.lm_head"))?,
            bridge_in: ll.linear(2 * d, d, true, vb.pp("mlp.0"))?,
            bridge_out: ll.linear(d, d, true, vb.pp("mlp.2"))?,
            sub: LlamaStack::load_with(&sub_cfg, vb.pp("transformer2.model"), ll)?,
            head1: ll.linear(d, width, false, vb.pp("linears.0"))?,
            head2: ll.linear(d, width, false, vb.pp("linears.1"))?,
        })
    }

    /// Positions already in the KV caches (0 before the first call).
    pub fn cached_len(&self) -> usize {
        self.main.cached_len()
    }

    /// Empties both KV caches, preallocating room for `capacity` positions.
    pub fn reset(&mut self, capacity: usize) {
        self.main.reset(capacity);
        self.sub.reset(capacity);
    }

    /// Feeds pattern columns `seq` `[B, 3, S]` (ids up to the special id). The first call after
    /// a reset must pass the condition `prefix`, which is prepended; later calls must not.
    pub fn forward(
        &mut self,
        seq: &Tensor,
        prefix: Option<&ConditionPrefix>,
        trace: bool,
    ) -> Result<StepOutput> {
        let (_, streams, s) = seq.dims3()?;
        ensure!(streams == 3, "expected 3 token streams, got {streams}");
        let seq = seq.to_dtype(DType::U32)?;
        let ids = |q: usize| seq.narrow(1, q, 1).and_then(|t| t.squeeze(1));
        let x1 = self.emb0.forward(&ids(0)?)?;
        let x2 = (self.emb1.forward(&ids(1)?)? + self.emb2.forward(&ids(2)?)?)?;
        let (f1, f2) = match (prefix, self.cached_len()) {
            (Some(p), 0) => (
                Tensor::cat(&[&p.stream1, &x1], 1)?,
                Tensor::cat(&[&p.stream2, &x2], 1)?,
            ),
            (None, n) if n > 0 => (x1, x2),
            (Some(_), _) => bail!("the condition prefix is only fed on the first call"),
            (None, _) => bail!("the first call needs the condition prefix"),
        };
        let h1 = self.main.forward(&f1)?;
        let bridge = self.bridge_out.forward(
            &self
                .bridge_in
                .forward(&Tensor::cat(&[&f2, &h1], 2)?)?
                .gelu_erf()?,
        )?;
        let h2 = self.sub.forward(&bridge)?;
        let len = h1.dim(1)?;
        let last = |h: &Tensor| h.narrow(1, len - s, s);
        let (l1, l2) = (last(&h1)?, last(&h2)?);
        let logits = Tensor::stack(
            &[
                self.head0.forward(&l1)?.to_dtype(DType::F32)?,
                self.head1.forward(&l2)?.to_dtype(DType::F32)?,
                self.head2.forward(&l2)?.to_dtype(DType::F32)?,
            ],
            1,
        )?;
        let trace = trace.then_some(Trace {
            fused1: f1,
            fused2: f2,
            h1,
            bridge,
            h2,
        });
        Ok(StepOutput { logits, trace })
    }
}
