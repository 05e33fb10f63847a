//! Euler integration of the flow ODE with classifier-free guidance and in-context prefix
//! (`BASECFM.solve_euler` of the reference).
//!
//! Convention: t = 0 is noise, t = 1 data; `x_t = (1 − (1−σ_min)·t)·x0 + t·x1`.

use candle_core::{DType, Result, Tensor};

use crate::progress::Cancelled;

/// Solver settings (10 steps, CFG 1.5, σ_min 1e-4 in the release).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EulerConfig {
    pub num_steps: usize,
    pub guidance_scale: f64,
    pub sigma_min: f64,
}

/// `torch.linspace(0, 1, n + 1)` in f32, with torch's two-sided formula (so the values, and
/// hence `dt`, match the reference bit for bit).
pub fn t_span(num_steps: usize) -> Vec<f32> {
    let steps = num_steps + 1;
    if steps == 1 {
        return vec![0.0];
    }
    let step = 1.0f32 / (steps - 1) as f32;
    let half = steps / 2;
    (0..steps)
        .map(|i| {
            if i < half {
                step * i as f32
            } else {
                1.0 - step * (steps - 1 - i) as f32
            }
        })
        .collect()
}

/// Everything the model sees besides the state, for one window (frames-major, batch 1, F32).
#[derive(Debug, Clone)]
pub struct FlowInputs {
    /// `mask_emb(latent_masks)`: `[1, L, mask_dim]`.
    pub mask_emb: Tensor,
    /// Normalised in-context latent, zero past the prefix: `[1, L, latent_dim]`.
    pub incontext: Tensor,
    /// Token conditioning `vocal ‖ bgm`: `[1, L, 2·I]`.
    pub cond: Tensor,
    /// In-context prefix length (frames).
    pub prefix: usize,
}

impl FlowInputs {
    /// The estimator input for state `x: [1, L, latent]`: with guidance the batch is
    /// `[uncond, cond]`, where the unconditional row has zero token conditioning and everything
    /// else equal. Layout: mask ‖ in-context ‖ vocal ‖ bgm ‖ state.
    pub fn model_input(&self, x: &Tensor, guided: bool) -> Result<Tensor> {
        if guided {
            let two = |t: &Tensor| Tensor::cat(&[t, t], 0);
            let cond = Tensor::cat(&[&self.cond.zeros_like()?, &self.cond], 0)?;
            Tensor::cat(
                &[two(&self.mask_emb)?, two(&self.incontext)?, cond, two(x)?],
                2,
            )
        } else {
            Tensor::cat(&[&self.mask_emb, &self.incontext, &self.cond, x], 2)
        }
    }
}

/// The estimator as the solver sees it: `(model_input [B', L, D], t [B']) → velocity
/// [B', L, latent]` (only the last `latent` output channels).
pub type VelocityFn<'a> = dyn FnMut(&Tensor, &Tensor) -> Result<Tensor> + 'a;

/// Integrates from `noise: [1, L, latent]` (F32) and returns the normalised latent with the
/// in-context prefix hard-restored. `on_step(i, state)` sees the state the model is evaluated
/// on at step `i` (after the prefix overwrite) and may stop the solve with [`Cancelled`].
pub fn solve_euler(
    inputs: &FlowInputs,
    noise: &Tensor,
    cfg: &EulerConfig,
    velocity: &mut VelocityFn<'_>,
    on_step: &mut dyn FnMut(usize, &Tensor) -> std::result::Result<(), Cancelled>,
) -> anyhow::Result<Tensor> {
    let noise = noise.to_dtype(DType::F32)?;
    let (_, len, _) = noise.dims3()?;
    let p = inputs.prefix.min(len);
    let guided = cfg.guidance_scale > 1.0;
    let ts = t_span(cfg.num_steps);
    let keep = (1.0 - cfg.sigma_min) as f32;
    let mut x = noise.clone();
    for i in 0..cfg.num_steps {
        let ti = ts[i];
        let dt = ts[i + 1] - ts[i];
        if p > 0 {
            let a = 1.0f32 - keep * ti;
            let head = ((noise.narrow(1, 0, p)? * a as f64)?
                + (inputs.incontext.narrow(1, 0, p)? * ti as f64)?)?;
            x = if p < len {
                Tensor::cat(&[head, x.narrow(1, p, len - p)?], 1)?
            } else {
                head
            };
        }
        on_step(i, &x)?;
        let batch = if guided { 2 } else { 1 };
        let t = Tensor::full(ti, batch, x.device())?;
        let v = velocity(&inputs.model_input(&x, guided)?, &t)?.to_dtype(DType::F32)?;
        let v = if guided {
            let (vu, vc) = (v.narrow(0, 0, 1)?, v.narrow(0, 1, 1)?);
            (&vu + ((vc - &vu)? * cfg.guidance_scale)?)?
        } else {
            v
        };
        x = (x + (v * dt as f64)?)?;
    }
    if p > 0 {
        let head = inputs.incontext.narrow(1, 0, p)?;
        x = if p < len {
            Tensor::cat(&[head, x.narrow(1, p, len - p)?], 1)?
        } else {
            head
        };
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t_span_matches_torch_linspace_f32() {
        let t = t_span(10);
        assert_eq!(t.len(), 11);
        // The reference's t_span of the fixtures: [0, 0.1, ..., 0.30000001192092896, ...,
        // 0.8999999761581421, 1]; the nearest f32 to 0.3 and 0.9 respectively.
        assert_eq!(t[3] as f64, 0.300_000_011_920_928_96);
        assert_eq!(t[9] as f64, 0.899_999_976_158_142_1);
        assert_eq!(t[10], 1.0);
        assert_eq!(t_span(2), [0.0, 0.5, 1.0]);
    }
}
