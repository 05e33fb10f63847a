//! Band-limited resampling compatible with torchaudio's `functional.resample` (windowed sinc,
//! Hann window): the reference converts every prompt to 48 kHz with it, and MusicFM's
//! 48 → 24 kHz input stage is the same polyphase filter stored as `rsq48tobestrq.kernel`.
//!
//! The filter is applied the torchaudio way, as a strided convolution with one kernel row per
//! output phase, so the output length and the edge behaviour (zero padding) match exactly.

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor, D};

/// torchaudio's defaults for `functional.resample` (and `transforms.Resample`).
pub const LOWPASS_FILTER_WIDTH: usize = 6;
pub const ROLLOFF: f64 = 0.99;

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// A polyphase sinc resampler between two fixed rates.
#[derive(Debug, Clone)]
pub struct Resampler {
    /// Rates reduced by their gcd.
    orig: usize,
    new: usize,
    /// Zero padding on the left (`width`) and right (`width + orig`), as torchaudio pads.
    width: usize,
    /// `[new, 1, 2·width + orig]` F32; `None` when the rates are equal (identity).
    kernel: Option<Tensor>,
}

impl Resampler {
    /// The resampler torchaudio builds for `orig_freq → new_freq` with its default Hann-windowed
    /// sinc (lowpass width 6, rolloff 0.99). The kernel is computed in f32 with the same operation
    /// order as torchaudio does for an f32 waveform.
    pub fn new(orig_freq: u32, new_freq: u32, device: &Device) -> Result<Self> {
        ensure!(
            orig_freq > 0 && new_freq > 0,
            "sample rates must be positive (got {orig_freq} → {new_freq})"
        );
        let g = gcd(orig_freq as u64, new_freq as u64);
        let orig = (orig_freq as u64 / g) as usize;
        let new = (new_freq as u64 / g) as usize;
        if orig == new {
            return Ok(Self {
                orig,
                new,
                width: 0,
                kernel: None,
            });
        }
        let lpw = LOWPASS_FILTER_WIDTH as f64;
        let base_freq = orig.min(new) as f64 * ROLLOFF;
        let width = (lpw * orig as f64 / base_freq).ceil() as usize;
        let taps = 2 * width + orig;
        let base32 = base_freq as f32;
        let pi32 = std::f32::consts::PI;
        let scale = (base_freq / orig as f64) as f32;
        let mut k = Vec::with_capacity(new * taps);
        for phase in 0..new {
            let offset = -(phase as f32) / new as f32;
            for j in 0..taps {
                let idx = (j as f32 - width as f32) / orig as f32;
                let t = ((offset + idx) * base32).clamp(-lpw as f32, lpw as f32);
                let w = (t * pi32 / lpw as f32 / 2.0).cos();
                let window = w * w;
                let t = t * pi32;
                let sinc = if t == 0.0 { 1.0 } else { t.sin() / t };
                k.push(sinc * (window * scale));
            }
        }
        let kernel = Tensor::from_vec(k, (new, 1, taps), device)?;
        Ok(Self {
            orig,
            new,
            width,
            kernel: Some(kernel),
        })
    }

    /// A resampler with a stored kernel `[new, 1, 2·width + orig]` (e.g. `rsq48tobestrq.kernel`
    /// for 48 → 24 kHz); the padding width follows from the kernel length.
    pub fn from_kernel(kernel: Tensor, orig_freq: u32, new_freq: u32) -> Result<Self> {
        let g = gcd(orig_freq as u64, new_freq as u64);
        let orig = (orig_freq as u64 / g) as usize;
        let new = (new_freq as u64 / g) as usize;
        let (rows, one, taps) = kernel.dims3().context("resampling kernel")?;
        ensure!(
            rows == new && one == 1 && taps > orig && (taps - orig) % 2 == 0,
            "resampling kernel for {orig_freq} → {new_freq} Hz has shape {:?}, expected [{new}, 1, 2·width + {orig}]",
            kernel.dims()
        );
        Ok(Self {
            orig,
            new,
            width: (taps - orig) / 2,
            kernel: Some(kernel.to_dtype(DType::F32)?),
        })
    }

    /// Output length for `len` input samples: `ceil(len · new / orig)`.
    pub fn output_len(&self, len: usize) -> usize {
        (len * self.new).div_ceil(self.orig)
    }

    /// Input samples that determine the first `outputs` output samples: resampling only that
    /// many gives those outputs exactly (later input samples never reach them).
    pub fn input_needed(&self, outputs: usize) -> usize {
        outputs.div_ceil(self.new) * self.orig + self.width + self.orig
    }

    /// Resamples `x` `[..., L]` along its last axis.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let Some(kernel) = &self.kernel else {
            return Ok(x.clone());
        };
        let dims = x.dims().to_vec();
        let Some((&len, lead)) = dims.split_last() else {
            bail!("cannot resample a scalar");
        };
        let rows: usize = lead.iter().product();
        let x = x.to_dtype(DType::F32)?.reshape((rows, 1, len))?;
        let x = x.pad_with_zeros(D::Minus1, self.width, self.width + self.orig)?;
        let y = x.conv1d(kernel, 0, self.orig, 1, 1)?; // [rows, new, frames]
        let frames = y.dim(2)?;
        let y = y.transpose(1, 2)?.reshape((rows, frames * self.new))?;
        let out_len = self.output_len(len);
        let mut out_dims = lead.to_vec();
        out_dims.push(out_len);
        Ok(y.narrow(1, 0, out_len)?.reshape(out_dims)?)
    }
}

/// Scales `x` down so that its absolute peak (over all elements) is at most `threshold`:
/// `x / (peak / threshold)` when `peak > threshold`, else `x` unchanged (the tokenizers'
/// `preprocess_audio`).
pub fn peak_normalize(x: &Tensor, threshold: f64) -> Result<Tensor> {
    let peak = x
        .abs()?
        .max_all()?
        .to_dtype(DType::F32)?
        .to_scalar::<f32>()?;
    if (peak as f64) > threshold {
        let norm = peak / threshold as f32;
        Ok(x.broadcast_div(&Tensor::new(norm, x.device())?.to_dtype(x.dtype())?)?)
    } else {
        Ok(x.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_and_identity() {
        let dev = Device::Cpu;
        let r = Resampler::new(44100, 48000, &dev).unwrap();
        assert_eq!((r.orig, r.new, r.width), (147, 160, 7));
        assert_eq!(r.output_len(33083), 36009);
        let same = Resampler::new(48000, 48000, &dev).unwrap();
        let x = Tensor::arange(0f32, 10., &dev).unwrap();
        assert_eq!(
            same.apply(&x).unwrap().to_vec1::<f32>().unwrap(),
            x.to_vec1::<f32>().unwrap()
        );
        assert!(Resampler::new(0, 48000, &dev).is_err());
    }

    #[test]
    fn a_low_tone_survives_resampling() {
        let dev = Device::Cpu;
        let sr = 32000;
        let x: Vec<f32> = (0..sr)
            .map(|i| (2.0 * std::f32::consts::PI * 440.0 * i as f32 / sr as f32).sin())
            .collect();
        let r = Resampler::new(sr as u32, 48000, &dev).unwrap();
        let y = r
            .apply(&Tensor::new(x.as_slice(), &dev).unwrap())
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(y.len(), 48000);
        for (i, v) in y.iter().enumerate().skip(100).take(47800) {
            let want = (2.0 * std::f32::consts::PI * 440.0 * i as f32 / 48000.0).sin();
            assert!((v - want).abs() < 2e-3, "sample {i}: {v} vs {want}");
        }
    }
}
