//! HTDemucs' STFT pair (`_spec` / `_ispec` with `torch.stft`/`torch.istft`, periodic Hann,
//! `normalized=True`, centred with reflect padding). Computed in f64 on the CPU: candle has no
//! FFT, and the transform is a small share of the model's cost.

use std::sync::Arc;

use anyhow::{anyhow, ensure, Result};
use realfft::num_complex::Complex;
use realfft::{ComplexToReal, RealFftPlanner, RealToComplex};

/// Reflect padding like `F.pad(mode="reflect")`, with Demucs' `pad1d` fallback: when the
/// signal is not longer than the padding, zeros are added first so the reflection is defined.
pub fn reflect_pad(x: &[f64], left: usize, right: usize) -> Vec<f64> {
    let max_pad = left.max(right);
    let (x, left, right) = if x.len() <= max_pad {
        let extra = max_pad - x.len() + 1;
        let extra_right = right.min(extra);
        let extra_left = extra - extra_right;
        let mut padded = vec![0.0; extra_left];
        padded.extend_from_slice(x);
        padded.extend(std::iter::repeat_n(0.0, extra_right));
        (padded, left - extra_left, right - extra_right)
    } else {
        (x.to_vec(), left, right)
    };
    let n = x.len() as isize;
    (0..x.len() + left + right)
        .map(|i| {
            let j = i as isize - left as isize;
            let j = if j < 0 {
                -j
            } else if j >= n {
                2 * (n - 1) - j
            } else {
                j
            };
            x[j as usize]
        })
        .collect()
}

/// Forward/inverse transforms of one FFT size and hop (`hop = nfft / 4`).
pub struct Stft {
    nfft: usize,
    hop: usize,
    window: Vec<f64>,
    forward: Arc<dyn RealToComplex<f64>>,
    inverse: Arc<dyn ComplexToReal<f64>>,
}

/// A complex spectrogram of one signal: `bins × frames`, bin-major.
pub struct Spectrogram {
    pub bins: usize,
    pub frames: usize,
    pub data: Vec<Complex<f64>>,
}

impl Stft {
    pub fn new(nfft: usize) -> Self {
        let mut planner = RealFftPlanner::<f64>::new();
        let window = (0..nfft)
            .map(|n| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * n as f64 / nfft as f64).cos())
            .collect();
        Self {
            nfft,
            hop: nfft / 4,
            window,
            forward: planner.plan_fft_forward(nfft),
            inverse: planner.plan_fft_inverse(nfft),
        }
    }

    pub fn hop(&self) -> usize {
        self.hop
    }

    /// HTDemucs `_spec`: `ceil(L/hop)` frames of `nfft/2` bins (the Nyquist bin dropped).
    pub fn spec(&self, x: &[f32]) -> Result<Spectrogram> {
        let hl = self.hop;
        let le = x.len().div_ceil(hl);
        let pad = hl / 2 * 3;
        let x: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let x = reflect_pad(&x, pad, pad + le * hl - x.len());
        // torch.stft(center=True) reflect-pads nfft/2 more.
        let x = reflect_pad(&x, self.nfft / 2, self.nfft / 2);
        let total_frames = (x.len() - self.nfft) / hl + 1;
        ensure!(total_frames == le + 4, "STFT framing mismatch");
        let bins = self.nfft / 2;
        let norm = 1.0 / (self.nfft as f64).sqrt();
        let mut input = self.forward.make_input_vec();
        let mut out = self.forward.make_output_vec();
        let mut data = vec![Complex::new(0.0, 0.0); bins * le];
        for f in 0..le {
            let start = (f + 2) * hl;
            for (k, v) in input.iter_mut().enumerate() {
                *v = x[start + k] * self.window[k];
            }
            self.forward
                .process(&mut input, &mut out)
                .map_err(|e| anyhow!("FFT failed: {e}"))?;
            for b in 0..bins {
                data[b * le + f] = out[b] * norm;
            }
        }
        Ok(Spectrogram {
            bins,
            frames: le,
            data,
        })
    }

    /// HTDemucs `_ispec`: the inverse of [`Self::spec`] for an output of `length` samples.
    pub fn ispec(&self, z: &Spectrogram, length: usize) -> Result<Vec<f32>> {
        let hl = self.hop;
        ensure!(
            z.bins == self.nfft / 2,
            "iSTFT: {} bins, expected {}",
            z.bins,
            self.nfft / 2
        );
        // Pad one (zero) Nyquist bin and two zero frames on each side.
        let frames = z.frames + 4;
        let pad = hl / 2 * 3;
        let le = hl * length.div_ceil(hl) + 2 * pad;
        let ola_len = self.nfft + hl * (frames - 1);
        let mut y = vec![0.0f64; ola_len];
        let mut env = vec![0.0f64; ola_len];
        let scale = 1.0 / (self.nfft as f64).sqrt();
        let mut spectrum = self.inverse.make_input_vec();
        let mut frame = self.inverse.make_output_vec();
        for f in 0..frames {
            let start = f * hl;
            for (k, w) in self.window.iter().enumerate() {
                env[start + k] += w * w;
            }
            if f < 2 || f >= z.frames + 2 {
                continue;
            }
            for (b, s) in spectrum.iter_mut().enumerate() {
                *s = if b < z.bins {
                    z.data[b * z.frames + f - 2]
                } else {
                    Complex::new(0.0, 0.0)
                };
            }
            // c2r ignores the imaginary parts of the DC and Nyquist bins.
            spectrum[0].im = 0.0;
            let last = spectrum.len() - 1;
            spectrum[last].im = 0.0;
            self.inverse
                .process(&mut spectrum, &mut frame)
                .map_err(|e| anyhow!("inverse FFT failed: {e}"))?;
            for (k, w) in self.window.iter().enumerate() {
                y[start + k] += frame[k] * scale * w;
            }
        }
        let start = self.nfft / 2;
        let mut out = vec![0f32; length];
        for (i, o) in out.iter_mut().enumerate() {
            let j = start + pad + i;
            if j < start + le && j < ola_len {
                ensure!(
                    env[j] > 1e-11,
                    "iSTFT window envelope vanishes at sample {j}"
                );
                *o = (y[j] / env[j]) as f32;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_then_ispec_reconstructs() {
        let stft = Stft::new(256);
        let x: Vec<f32> = (0..2000)
            .map(|i| (i as f32 * 0.05).sin() * 0.5 + (i as f32 * 0.31).cos() * 0.25)
            .collect();
        let z = stft.spec(&x).unwrap();
        assert_eq!((z.bins, z.frames), (128, 2000usize.div_ceil(64)));
        let y = stft.ispec(&z, x.len()).unwrap();
        // The reference zeroes two frames at each edge, so only the middle is exact.
        let err = x[200..1800]
            .iter()
            .zip(&y[200..1800])
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(err < 1e-5, "max error {err}");
    }

    #[test]
    fn reflect_pad_matches_torch() {
        let x = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(
            reflect_pad(&x, 2, 3),
            vec![3.0, 2.0, 1.0, 2.0, 3.0, 4.0, 3.0, 2.0, 1.0]
        );
        // Shorter than the padding: zeros are inserted first (Demucs' pad1d).
        assert_eq!(reflect_pad(&[1.0, 2.0], 2, 2).len(), 6);
    }
}
