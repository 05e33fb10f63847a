//! Whole-clip separation the way the reference runs HTDemucs (`BagOfModels.separate` +
//! `apply_model` with `shifts=1, split=True, overlap=0.25`) and turns the vocal stem into the
//! 48 kHz vocal / accompaniment prompt pair (`generate.py` `Separator.run`).
//!
//! The reference's random time shift (`random.randint(0, 22050)`) is the only randomness; here
//! it is an explicit `shift_offset` so separation is deterministic (see [`shift_offset`]).

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Tensor};

use super::HtDemucs;
use crate::prompt::resample::Resampler;

/// The shift offset used for a given seed: uniform in `0..=max_shift` like the reference's
/// `random.randint(0, max_shift)`, but drawn from the caller's seed so runs are reproducible.
pub fn shift_offset(seed: u64, max_shift: usize) -> usize {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed_de3c_0000_0001);
    rng.random_range(0..=max_shift)
}

/// Options of `apply_model` as the reference calls it.
#[derive(Debug, Clone, Copy)]
pub struct ApplyOptions {
    /// Offset of the single shift, in `0..=max_shift` (the reference draws it at random).
    pub shift_offset: usize,
    /// Chunk overlap (0.25).
    pub overlap: f64,
}

/// The triangular overlap-add weight `[1..N/2, N/2..1] / max` (transition power 1).
fn transition_weight(n: usize) -> Vec<f32> {
    let half = n / 2;
    let w: Vec<f32> = (1..=half)
        .chain((1..=n - half).rev())
        .map(|v| v as f32)
        .collect();
    let max = w.iter().copied().fold(0f32, f32::max);
    w.into_iter().map(|v| v / max).collect()
}

impl HtDemucs {
    /// All stems `[S, C, L]` of a normalised mix `[C, L]` (44.1 kHz): one shifted pass split
    /// into overlapping segments. `on_chunk(done, total)` is called after each model call and
    /// may return an error to cancel.
    pub fn apply(
        &self,
        mix: &Tensor,
        opts: ApplyOptions,
        on_chunk: &mut dyn FnMut(usize, usize) -> Result<()>,
    ) -> Result<Tensor> {
        self.apply_prefix(mix, opts, usize::MAX, on_chunk)
    }

    /// [`Self::apply`] for the first `keep` samples only `[S, C, min(keep, L)]`: just the
    /// model calls whose chunks reach them run, and the result equals the first `keep`
    /// samples of a whole-clip [`Self::apply`] (every chunk that covers a sample starts at or
    /// before it).
    pub fn apply_prefix(
        &self,
        mix: &Tensor,
        opts: ApplyOptions,
        keep: usize,
        on_chunk: &mut dyn FnMut(usize, usize) -> Result<()>,
    ) -> Result<Tensor> {
        let (c, length) = mix.dims2()?;
        ensure!(length > 0, "cannot separate an empty clip");
        let keep = keep.min(length);
        let max_shift = self.config().samplerate / 2;
        ensure!(
            opts.shift_offset <= max_shift,
            "shift offset {} exceeds the maximum {max_shift}",
            opts.shift_offset
        );
        let s = self.config().sources.len();
        let seg = self.training_length();
        // The mix padded with max_shift zeros on both sides; the shifted signal is
        // padded[offset .. length + max_shift]. Chunks take real context from `padded` and
        // zeros beyond it.
        let padded = mix
            .to_dtype(DType::F32)?
            .pad_with_zeros(1, max_shift, max_shift)?;
        let total = padded.dim(1)?;
        let base = opts.shift_offset;
        let shifted_len = length + max_shift - base;
        let stride = ((1.0 - opts.overlap) * seg as f64) as usize;
        ensure!(stride > 0, "overlap {} leaves no stride", opts.overlap);
        let weight = transition_weight(seg);
        let keep_from = max_shift - base;
        let offsets: Vec<usize> = (0..shifted_len)
            .step_by(stride)
            .take_while(|&o| o < keep_from + keep)
            .collect();
        let mut out = vec![0f32; s * c * shifted_len];
        let mut sum_weight = vec![0f32; shifted_len];
        for (n, &offset) in offsets.iter().enumerate() {
            let chunk_len = (shifted_len - offset).min(seg);
            let delta = seg - chunk_len;
            let start = (base + offset) as isize - (delta / 2) as isize;
            let lo = start.max(0) as usize;
            let hi = ((start + seg as isize) as usize).min(total);
            let input = padded.narrow(1, lo, hi - lo)?.pad_with_zeros(
                1,
                (lo as isize - start) as usize,
                (start + seg as isize) as usize - hi,
            )?;
            let stems = self.forward(&input.unsqueeze(0)?)?.squeeze(0)?; // [S, C, seg]
            let stems = stems.narrow(2, delta / 2, chunk_len)?.to_vec3::<f32>()?;
            for (si, stem) in stems.iter().enumerate() {
                for (ci, ch) in stem.iter().enumerate() {
                    let row = &mut out[(si * c + ci) * shifted_len..][..shifted_len];
                    for (k, v) in ch.iter().enumerate() {
                        row[offset + k] += weight[k] * v;
                    }
                }
            }
            for k in 0..chunk_len {
                sum_weight[offset + k] += weight[k];
            }
            on_chunk(n + 1, offsets.len())?;
        }
        let mut result = Vec::with_capacity(s * c * keep);
        for row in out.chunks(shifted_len) {
            result.extend(
                row[keep_from..keep_from + keep]
                    .iter()
                    .zip(&sum_weight[keep_from..keep_from + keep])
                    .map(|(v, w)| v / w),
            );
        }
        Ok(Tensor::from_vec(result, (s, c, keep), mix.device())?)
    }

    /// Number of model calls [`Self::apply`] makes for `length` samples.
    pub fn chunks(&self, length: usize, opts: ApplyOptions) -> usize {
        self.chunks_prefix(length, usize::MAX, opts)
    }

    /// Number of model calls [`Self::apply_prefix`] makes for the first `keep` of `length`
    /// samples.
    pub fn chunks_prefix(&self, length: usize, keep: usize, opts: ApplyOptions) -> usize {
        let max_shift = self.config().samplerate / 2;
        let keep_from = max_shift - opts.shift_offset.min(max_shift);
        let shifted = length + keep_from;
        let reach = shifted.min(keep_from.saturating_add(keep.min(length)));
        let stride = (((1.0 - opts.overlap) * self.training_length() as f64) as usize).max(1);
        reach.div_ceil(stride)
    }
}

/// Settings of the vocal/accompaniment split (`Separator.run`).
#[derive(Debug, Clone)]
pub struct SeparateOptions {
    pub apply: ApplyOptions,
    /// Index of the vocal stem in the model's sources.
    pub stem_index: usize,
    /// Output rate and the number of samples kept (48 kHz, 10 s).
    pub target_sample_rate: u32,
    pub max_samples: usize,
    /// Separate only the 44.1 kHz samples that reach the first `max_samples` output samples
    /// (the reference separates the whole file and then keeps 10 s of it). The stem's
    /// clipping guard then sees only that part (see [`vocal_stem`]).
    pub prefix_only: bool,
}

impl SeparateOptions {
    /// Samples of a 44.1 kHz (`rate`) clip of `len` samples that are separated.
    pub fn separated_len(
        &self,
        len: usize,
        rate: u32,
        device: &candle_core::Device,
    ) -> Result<usize> {
        if !self.prefix_only {
            return Ok(len);
        }
        let to48 = Resampler::new(rate, self.target_sample_rate, device)?;
        Ok(to48.input_needed(self.max_samples).min(len))
    }
}

/// The vocal stem of a 44.1 kHz clip `[C, L]` as the reference writes it to disk: mix
/// normalised by its mono mean/std, separated, de-normalised, rescaled to avoid clipping
/// (`x / max(1.01·peak, 1)`) and quantised to 16-bit (round half to even). With
/// `prefix_only` the stem is `[C, separated_len]`, and its peak (hence the rescale, which
/// only acts on a stem peaking above 0.99) is that part's.
pub fn vocal_stem(
    model: &HtDemucs,
    mix44: &Tensor,
    opts: &SeparateOptions,
    on_chunk: &mut dyn FnMut(usize, usize) -> Result<()>,
) -> Result<Tensor> {
    let (_, len) = mix44.dims2()?;
    ensure!(len > 1, "cannot separate a clip of {len} samples");
    let mix44 = mix44.to_dtype(DType::F32)?;
    let mono = mix44.mean(0)?.to_dtype(DType::F64)?;
    let mean = mono.mean_all()?.to_scalar::<f64>()?;
    let var = (mono
        .broadcast_sub(&Tensor::new(mean, mono.device())?)?
        .sqr()?
        .sum_all()?
        .to_scalar::<f64>()?)
        / (len as f64 - 1.0);
    let (mean, std) = (mean as f32, var.sqrt() as f32);
    ensure!(
        std > 0.0 && std.is_finite(),
        "the prompt is silent (or constant): nothing to separate"
    );
    let keep = opts.separated_len(len, model.config().samplerate as u32, mix44.device())?;
    let wav = ((mix44 - mean as f64)? / std as f64)?;
    let stems = model.apply_prefix(&wav, opts.apply, keep, on_chunk)?;
    let vocal = stems
        .get(opts.stem_index)
        .context("vocal stem index out of range")?;
    let vocal = ((vocal * std as f64)? + mean as f64)?;
    let peak = vocal.abs()?.max_all()?.to_scalar::<f32>()?;
    let vocal = (vocal / (1.01f32 * peak).max(1.0) as f64)?;
    quantize_16bit(&vocal)
}

/// What a 16-bit FLAC round trip does to `x`: `clamp(round_half_even(x·32768), −32768, 32767) /
/// 32768`.
pub fn quantize_16bit(x: &Tensor) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let v: Vec<f32> = x
        .flatten_all()?
        .to_vec1::<f32>()?
        .into_iter()
        .map(|s| (s * 32768.0).round_ties_even().clamp(-32768.0, 32767.0) / 32768.0)
        .collect();
    Ok(Tensor::from_vec(v, dims, x.device())?)
}

/// `Separator.run` after separation: the vocal stem and the original clip resampled to the
/// target rate and cut to `max_samples`; accompaniment = full − vocal. Returns (vocal, bgm, full)
/// `[C, N]`.
pub fn prompt_pair(
    vocal44: &Tensor,
    vocal_rate: u32,
    full: &Tensor,
    full_rate: u32,
    opts: &SeparateOptions,
) -> Result<(Tensor, Tensor, Tensor)> {
    let dev = full.device();
    let to48 = |x: &Tensor, rate: u32| -> Result<Tensor> {
        let r = Resampler::new(rate, opts.target_sample_rate, dev)?;
        // Only the input that reaches the kept samples (exact, and bounded for long files).
        let len = x.dim(1)?;
        let x = x.narrow(1, 0, r.input_needed(opts.max_samples).min(len))?;
        let y = r.apply(&x)?;
        let n = y.dim(1)?.min(opts.max_samples);
        Ok(y.narrow(1, 0, n)?)
    };
    let vocal = to48(vocal44, vocal_rate)?;
    let full = to48(full, full_rate)?;
    let n = vocal.dim(1)?.min(full.dim(1)?);
    let vocal = vocal.narrow(1, 0, n)?;
    let full = full.narrow(1, 0, n)?;
    let bgm = (&full - &vocal)?;
    Ok((vocal, bgm, full))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn sixteen_bit_rounding_is_half_even_and_clamped() {
        let lsb = 1.0 / 32768.0;
        let x = Tensor::new(&[0.5 * lsb, 1.5 * lsb, -2.5 * lsb, 1.0, -1.5], &Device::Cpu).unwrap();
        let q = quantize_16bit(&x).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(q, [0.0, 2.0 * lsb, -2.0 * lsb, 32767.0 * lsb, -1.0]);
    }

    #[test]
    fn overlap_weights_and_shift_are_like_the_reference() {
        let w = transition_weight(7);
        // [1, 2, 3, 4, 3, 2, 1] / 4
        assert_eq!(w, [0.25, 0.5, 0.75, 1.0, 0.75, 0.5, 0.25]);
        let w = transition_weight(6);
        assert_eq!(w, [1.0 / 3.0, 2.0 / 3.0, 1.0, 1.0, 2.0 / 3.0, 1.0 / 3.0]);
        assert_eq!(shift_offset(42, 22050), shift_offset(42, 22050));
        let offsets: Vec<usize> = (0..50).map(|s| shift_offset(s, 22050)).collect();
        assert!(offsets.iter().all(|&o| o <= 22050));
        assert!(offsets.windows(2).any(|w| w[0] != w[1]));
    }
}
