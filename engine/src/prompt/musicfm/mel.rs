//! MusicFM's log-mel front end: torchaudio `MelSpectrogram` (periodic Hann, centred frames with
//! reflect padding, power 2, the stored HTK filterbank) → `AmplitudeToDB` without `top_db` →
//! drop the last frame → normalise with the training statistics.
//!
//! The STFT and the filterbank product run in f64: the reference runs them in f32, so working in
//! f64 keeps our error well below the f32-vs-f64 spread that the tolerances are built from.

use std::sync::Arc;

use anyhow::{ensure, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use realfft::{RealFftPlanner, RealToComplex};
use serde::Deserialize;

/// Front-end constants (`config.musicfm.mel` of the fixtures; the real model uses the same).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct MelConfig {
    pub n_fft: usize,
    pub hop_length: usize,
    pub n_mels: usize,
    pub norm_mean: f64,
    pub norm_std: f64,
}

impl Default for MelConfig {
    fn default() -> Self {
        Self {
            n_fft: 2048,
            hop_length: 240,
            n_mels: 128,
            norm_mean: 6.768444971712967,
            norm_std: 18.417922652295623,
        }
    }
}

/// Power floor of `AmplitudeToDB` (`amin`).
const AMIN: f64 = 1e-10;

pub struct MelFrontend {
    cfg: MelConfig,
    /// `[n_fft]` analysis window (stored buffer `mel_stft.spectrogram.window`).
    window: Vec<f64>,
    /// `[n_fft/2+1, n_mels]` F64 (stored buffer `mel_stft.mel_scale.fb`).
    fb: Tensor,
    fft: Arc<dyn RealToComplex<f64>>,
}

impl MelFrontend {
    /// `vb` is rooted at `preprocessor_melspec_2048.mel_stft`.
    pub fn load(cfg: &MelConfig, vb: VarBuilder) -> Result<Self> {
        let bins = cfg.n_fft / 2 + 1;
        let window = vb
            .get(cfg.n_fft, "spectrogram.window")?
            .to_dtype(DType::F64)?
            .to_vec1::<f64>()?;
        let fb = vb
            .get((bins, cfg.n_mels), "mel_scale.fb")?
            .to_dtype(DType::F64)?;
        let fft = RealFftPlanner::<f64>::new().plan_fft_forward(cfg.n_fft);
        Ok(Self {
            cfg: cfg.clone(),
            window,
            fb,
            fft,
        })
    }

    /// Power spectrogram `[frames, n_fft/2+1]` (row-major) of one waveform.
    fn power(&self, wave: &[f32]) -> Result<(usize, Vec<f64>)> {
        let n_fft = self.cfg.n_fft;
        let half = n_fft / 2;
        ensure!(
            wave.len() > half,
            "mel front end: {} samples is too short for reflect padding of {half}",
            wave.len()
        );
        // Reflect padding (torch `reflect`: the edge sample is not repeated).
        let len = wave.len();
        let padded: Vec<f64> = (0..len + 2 * half)
            .map(|i| {
                let j = i as isize - half as isize;
                let j = if j < 0 {
                    -j
                } else if j >= len as isize {
                    2 * (len as isize - 1) - j
                } else {
                    j
                };
                wave[j as usize] as f64
            })
            .collect();
        let frames = 1 + len / self.cfg.hop_length;
        let bins = half + 1;
        let mut input = self.fft.make_input_vec();
        let mut spectrum = self.fft.make_output_vec();
        let mut scratch = self.fft.make_scratch_vec();
        let mut out = Vec::with_capacity(frames * bins);
        for f in 0..frames {
            let start = f * self.cfg.hop_length;
            for (k, v) in input.iter_mut().enumerate() {
                *v = padded[start + k] * self.window[k];
            }
            self.fft
                .process_with_scratch(&mut input, &mut spectrum, &mut scratch)
                .map_err(|e| anyhow::anyhow!("FFT failed: {e}"))?;
            out.extend(spectrum.iter().map(|c| c.norm_sqr()));
        }
        Ok((frames, out))
    }

    /// Mel power `[B, n_mels, frames]` (F64, before the dB conversion), all frames kept.
    pub fn mel_power(&self, wave: &Tensor) -> Result<Tensor> {
        let (b, _) = wave.dims2()?;
        let wave = wave.to_dtype(DType::F32)?;
        let bins = self.cfg.n_fft / 2 + 1;
        let mut rows = Vec::with_capacity(b);
        for i in 0..b {
            let w = wave.get(i)?.to_vec1::<f32>()?;
            let (frames, p) = self.power(&w)?;
            let p = Tensor::from_vec(p, (frames, bins), &Device::Cpu)?.to_device(wave.device())?;
            rows.push(p.matmul(&self.fb)?.t()?);
        }
        Ok(Tensor::stack(&rows, 0)?)
    }

    /// Normalised log-mel `[B, n_mels, L/hop]` (F32) of `wave` `[B, L]`.
    pub fn forward(&self, wave: &Tensor) -> Result<Tensor> {
        let mel = self.mel_power(wave)?;
        let frames = mel.dim(2)?;
        let db = (mel.clamp(AMIN, f64::INFINITY)?.log()? * (10.0 / std::f64::consts::LN_10))?;
        let db = db.narrow(2, 0, frames - 1)?;
        let norm = ((db - self.cfg.norm_mean)? / self.cfg.norm_std)?;
        Ok(norm.to_dtype(DType::F32)?)
    }
}
