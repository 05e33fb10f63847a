//! How far a lower-precision LeLM drifts from the f32 one: both networks are fed the same
//! columns (the f32 model's greedy tokens of the conditional row, teacher-forced into both) and
//! every step's logits are compared: the error relative to the f32 logits' RMS, and whether
//! each stream's greedy token (both CFG rows) is the same.

use anyhow::{ensure, Result};
use candle_core::{Device, Tensor};

use super::conditioners::ConditionPrefix;
use super::model::LeLm;

/// Comparison over a run of steps.
#[derive(Debug, Clone, PartialEq)]
pub struct Agreement {
    pub steps: usize,
    /// Greedy tokens compared (steps × 2 CFG rows × 3 streams) and how many agree.
    pub tokens: usize,
    pub agreed: usize,
    /// Per step: RMS of the logit error over the RMS of the f32 logits.
    pub rel_rms: Vec<f32>,
    /// Largest absolute logit error of any step.
    pub max_abs: f32,
}

impl Agreement {
    pub fn agreement(&self) -> f64 {
        self.agreed as f64 / self.tokens.max(1) as f64
    }

    pub fn mean_rel_rms(&self) -> f32 {
        self.rel_rms.iter().sum::<f32>() / self.rel_rms.len().max(1) as f32
    }

    pub fn worst_rel_rms(&self) -> f32 {
        self.rel_rms.iter().copied().fold(0.0, f32::max)
    }
}

/// Runs `steps` decode steps of `reference` and `other` from `prefix` (first column all
/// `special`); both must have room for `prefix + steps` positions after `reset`.
pub fn compare(
    reference: &mut LeLm,
    other: &mut LeLm,
    prefix: &ConditionPrefix,
    special: u32,
    steps: usize,
) -> Result<Agreement> {
    ensure!(steps > 0, "no steps to compare");
    let capacity = prefix.stream1.dim(1)? + steps + 1;
    reference.reset(capacity);
    other.reset(capacity);
    let mut column = [special; 3];
    let mut out = Agreement {
        steps,
        tokens: 0,
        agreed: 0,
        rel_rms: Vec::with_capacity(steps),
        max_abs: 0.0,
    };
    for step in 0..steps {
        let ids: Vec<u32> = column.iter().chain(&column).copied().collect();
        let seq = Tensor::from_vec(ids, (2, 3, 1), &Device::Cpu)?;
        let p = (step == 0).then_some(prefix);
        let a = reference.forward(&seq.to_device(prefix.stream1.device())?, p, false)?;
        let b = other.forward(&seq.to_device(prefix.stream1.device())?, p, false)?;
        // [2, 3, 1, W] → [2, 3, W]
        let (la, lb) = (a.logits.squeeze(2)?, b.logits.squeeze(2)?);
        let diff = (&la - &lb)?;
        let rms = |t: &Tensor| -> Result<f32> { Ok(t.sqr()?.mean_all()?.sqrt()?.to_scalar()?) };
        out.rel_rms
            .push(rms(&diff)? / rms(&la)?.max(f32::MIN_POSITIVE));
        let max_abs: f32 = diff.abs()?.flatten_all()?.max(0)?.to_scalar()?;
        out.max_abs = out.max_abs.max(max_abs);
        let ta: Vec<Vec<u32>> = la.argmax(2)?.to_vec2()?;
        let tb: Vec<Vec<u32>> = lb.argmax(2)?.to_vec2()?;
        for (ra, rb) in ta.iter().zip(&tb) {
            for (x, y) in ra.iter().zip(rb) {
                out.tokens += 1;
                out.agreed += usize::from(x == y);
            }
        }
        column = [ta[0][0], ta[0][1], ta[0][2]];
    }
    Ok(out)
}

/// Gives every variable of `varmap` the reference's random init for benchmarks and quality
/// runs: N(0, 0.02) matrices, unit norm weights, zero biases (a `VarMap` starts at zero).
pub fn randomize(varmap: &candle_nn::VarMap) -> Result<()> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?;
    for (name, var) in data.iter() {
        let t = var.as_tensor();
        let fresh = if name.ends_with("norm.weight") {
            t.ones_like()?
        } else if t.rank() >= 2 {
            Tensor::randn(0f32, 0.02, t.shape(), t.device())?.to_dtype(t.dtype())?
        } else {
            t.zeros_like()?
        };
        var.set(&fresh)?;
    }
    Ok(())
}
