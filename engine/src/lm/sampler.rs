//! Next-token choice from the two CFG rows' logits, in the reference's order:
//! 1. CFG: `l = u + (c - u) * cfg_coef`;
//! 2. presence penalty: every distinct code (< EOS) that stream `q` wrote in the last
//!    `record_window` steps gets `l /= penalty` (a division, so negative logits rise);
//! 3. stream 0 may not use any mixed-stream code of the style prompt (`-inf`);
//! 4. `softmax(l / temperature)`;
//! 5. top-k with ties kept, renormalised: `top_k` on stream 0, k = 1 (greedy up to ties) on
//!    streams 1 and 2; then one draw per stream.
//!
//! Without sampling, each stream takes the first argmax of step 3's logits.

use anyhow::{ensure, Result};
use rand::Rng;

use crate::protocol::SamplingOptions;

/// The per-step logit pipeline for one generation.
#[derive(Debug, Clone)]
pub struct LogitProcessor {
    opts: SamplingOptions,
    /// Ids below this are codes (penalised); EOS is `code_size`.
    code_size: usize,
}

/// Output of steps 4 and 5 for every stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Distributions {
    /// `l / temperature` (step 4's softmax input).
    pub softmax_input: Vec<Vec<f32>>,
    /// The renormalised top-k distributions.
    pub probs: Vec<Vec<f32>>,
}

impl LogitProcessor {
    pub fn new(opts: SamplingOptions, code_size: usize) -> Result<Self> {
        ensure!(
            opts.temperature > 0.0 || !opts.use_sampling,
            "temperature must be positive (got {})",
            opts.temperature
        );
        ensure!(
            opts.penalty > 0.0,
            "penalty must be positive (got {})",
            opts.penalty
        );
        Ok(Self { opts, code_size })
    }

    /// Steps 1-3 for every stream. `pool` holds the columns written so far (oldest first),
    /// `banned` the stream-0 ids taken from the prompt.
    pub fn guide(
        &self,
        cond: &[Vec<f32>],
        uncond: &[Vec<f32>],
        pool: &[[u32; 3]],
        banned: &[u32],
    ) -> Vec<Vec<f32>> {
        let coef = self.opts.cfg_coef as f32;
        let penalty = self.opts.penalty as f32;
        let window = &pool[pool.len().saturating_sub(self.opts.record_window)..];
        cond.iter()
            .zip(uncond)
            .enumerate()
            .map(|(q, (c, u))| {
                let mut l: Vec<f32> = c.iter().zip(u).map(|(c, u)| u + (c - u) * coef).collect();
                let mut seen = vec![false; l.len()];
                for col in window {
                    let id = col[q] as usize;
                    if id < self.code_size && id < l.len() && !seen[id] {
                        seen[id] = true;
                        l[id] /= penalty;
                    }
                }
                if q == 0 {
                    for &id in banned {
                        if let Some(v) = l.get_mut(id as usize) {
                            *v = f32::NEG_INFINITY;
                        }
                    }
                }
                l
            })
            .collect()
    }

    /// Steps 4 and 5.
    pub fn distributions(&self, logits: &[Vec<f32>]) -> Distributions {
        let temp = self.opts.temperature as f32;
        let softmax_input: Vec<Vec<f32>> = logits
            .iter()
            .map(|l| l.iter().map(|v| v / temp).collect())
            .collect();
        let probs = softmax_input
            .iter()
            .enumerate()
            .map(|(q, l)| {
                let k = if q == 0 { self.opts.top_k } else { 1 };
                top_k(&softmax(l), k)
            })
            .collect();
        Distributions {
            softmax_input,
            probs,
        }
    }

    /// Chooses the next token of every stream from step 3's logits.
    pub fn choose(&self, logits: &[Vec<f32>], rng: &mut impl Rng) -> Vec<u32> {
        if !self.opts.use_sampling {
            return logits.iter().map(|l| argmax(l)).collect();
        }
        self.distributions(logits)
            .probs
            .iter()
            .map(|p| draw(p, rng))
            .collect()
    }
}

/// Softmax computed in f64 (one rounding to f32 at the end).
fn softmax(l: &[f32]) -> Vec<f64> {
    let max = l.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let exps: Vec<f64> = l.iter().map(|&v| (v as f64 - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// Keeps every probability >= the k-th largest (ties kept) and renormalises; `k = 0` or
/// `k >= len` keeps all.
fn top_k(p: &[f64], k: usize) -> Vec<f32> {
    let threshold = if k == 0 || k >= p.len() {
        f64::NEG_INFINITY
    } else {
        let mut sorted = p.to_vec();
        let (_, kth, _) = sorted.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
        *kth
    };
    let sum: f64 = p.iter().filter(|&&v| v >= threshold).sum();
    p.iter()
        .map(|&v| {
            if v >= threshold {
                (v / sum) as f32
            } else {
                0.0
            }
        })
        .collect()
}

/// First index of the maximum.
fn argmax(l: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in l.iter().enumerate() {
        if v > l[best] {
            best = i;
        }
    }
    best as u32
}

/// One draw from a (renormalised) distribution.
fn draw(p: &[f32], rng: &mut impl Rng) -> u32 {
    let total: f64 = p.iter().map(|&v| v as f64).sum();
    let mut r = rng.random::<f64>() * total;
    let mut last = 0;
    for (i, &v) in p.iter().enumerate() {
        if v > 0.0 {
            last = i;
            r -= v as f64;
            if r < 0.0 {
                return i as u32;
            }
        }
    }
    last as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn processor(top_k: usize, use_sampling: bool) -> LogitProcessor {
        let opts = SamplingOptions {
            top_k,
            use_sampling,
            temperature: 1.0,
            ..SamplingOptions::default()
        };
        LogitProcessor::new(opts, 4).unwrap()
    }

    #[test]
    fn penalty_divides_present_codes_once_and_spares_eos() {
        let p = processor(2, false);
        let c = vec![vec![2.0, -2.0, 1.0, 0.5, 3.0]; 3];
        let pool = [[0, 1, 4], [0, 1, 4], [5, 5, 5]];
        let l = p.guide(&c, &c, &pool, &[2]);
        let pen = 1.1f32;
        assert_eq!(l[0], [2.0 / pen, -2.0, f32::NEG_INFINITY, 0.5, 3.0]);
        assert_eq!(l[1], [2.0, -2.0 / pen, 1.0, 0.5, 3.0]);
        assert_eq!(l[2], [2.0, -2.0, 1.0, 0.5, 3.0]);
    }

    #[test]
    fn top_k_keeps_ties_and_sampling_is_seeded() {
        let p = processor(1, true);
        let l = vec![vec![1.0, 3.0, 3.0, 0.0, -1.0]; 3];
        let d = p.distributions(&l);
        for probs in &d.probs {
            assert_eq!(probs, &[0.0, 0.5, 0.5, 0.0, 0.0]);
        }
        let run = |seed| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            (0..32).map(|_| p.choose(&l, &mut rng)).collect::<Vec<_>>()
        };
        let a = run(7);
        assert_eq!(a, run(7));
        assert!(a.iter().flatten().all(|&t| t == 1 || t == 2));
        assert!(a.iter().flatten().any(|&t| t == 1) && a.iter().flatten().any(|&t| t == 2));
        assert_eq!(processor(1, false).choose(&l, &mut rand::rng()), [1, 1, 1]);
    }
}
