//! The window schedule of a long-form decode (`code2sound` of the reference, up to its window
//! loop): window geometry, tiling the code streams to whole windows, and where each window starts
//! and how much audio it contributes.

use anyhow::{bail, Result};
use serde::Deserialize;

use crate::render::rvq::check_codes;
use crate::render::RenderConfig;

/// Window geometry (names as in the fixture manifests' `config.window`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct WindowConfig {
    /// Latent frames per window (1000 = 40 s).
    pub frames: usize,
    pub hop: usize,
    /// In-context frames carried from one window to the next (`frames − hop`).
    pub overlap: usize,
    /// Audio samples per latent frame (the VAE's 1920).
    pub samples_per_frame: usize,
    /// Linear cross-fade between windows, in samples (`overlap · samples_per_frame`).
    pub crossfade_samples: usize,
    /// Latent frames of a prompt prefix (10 s = 250).
    pub prompt_latent_frames: usize,
    /// Code frames of a prompt prefix (251: one more than the latent: the separate tokenizer emits `int(N/48000·25)+1` codes).
    pub prompt_code_frames: usize,
    /// The vocal code that stands for silence (used by `GenType::Bgm`).
    pub silence_code_vocal: i64,
    /// The accompaniment code that stands for silence (used by `GenType::Vocal`).
    pub silence_code_bgm: i64,
}

impl Default for WindowConfig {
    fn default() -> Self {
        Self {
            frames: 1000,
            hop: 750,
            overlap: 250,
            samples_per_frame: 1920,
            crossfade_samples: 480_000,
            prompt_latent_frames: 250,
            prompt_code_frames: 251,
            silence_code_vocal: 3142,
            silence_code_bgm: 9670,
        }
    }
}

/// VAE chunking of the reference's `decode_audio(chunked=True)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct ChunkConfig {
    pub size: usize,
    pub overlap: usize,
}

impl Default for ChunkConfig {
    fn default() -> Self {
        Self {
            size: 128,
            overlap: 32,
        }
    }
}

/// The window layout of one decode (pure index arithmetic of `code2sound`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowSchedule {
    /// Code frames after tiling.
    pub padded_len: usize,
    /// First code frame of each window.
    pub starts: Vec<usize>,
    /// In-context prefix of each window (the prompt latent for window 0, else the overlap).
    pub incontext: Vec<usize>,
    /// Latent frames each window contributes to the audio (window 0 drops the prompt latent).
    pub latent_frames: Vec<usize>,
    /// Samples of the output (the reference's float-truncated `target_len`).
    pub target_len: usize,
    /// Samples after cross-fading every window, before the crop to `target_len`.
    pub assembled_len: usize,
}

impl WindowSchedule {
    /// Plans a decode of `codes_len` code frames (`sample_rate` Hz output), the first `prompt_codes` of which are a
    /// prompt whose latent prefix has `prompt_latents` frames (both 0 without a prompt).
    pub fn plan(
        w: &WindowConfig,
        sample_rate: usize,
        codes_len: usize,
        prompt_codes: usize,
        prompt_latents: usize,
    ) -> Self {
        // target_len = int((codes_len − P) / 100 · 4 · sample_rate): 40 ms frames in f64,
        // truncated — one sample short of T·1920 for some T, reproduced on purpose.
        let target_len =
            ((codes_len - prompt_codes) as f64 / 100.0 * 4.0 * sample_rate as f64) as usize;
        let mut len = codes_len;
        if len < w.frames {
            len = w.frames;
        }
        if !(len - w.overlap).is_multiple_of(w.hop) {
            len = (len - w.overlap).div_ceil(w.hop) * w.hop + w.overlap;
        }
        let starts: Vec<usize> = (0..len - w.hop).step_by(w.hop).collect();
        let incontext: Vec<usize> = (0..starts.len())
            .map(|k| if k == 0 { prompt_latents } else { w.overlap })
            .collect();
        let latent_frames: Vec<usize> = (0..starts.len())
            .map(|k| {
                if k == 0 {
                    w.frames - prompt_latents
                } else {
                    w.frames
                }
            })
            .collect();
        let mut assembled_len = 0;
        for (k, &n) in latent_frames.iter().enumerate() {
            let samples = n * w.samples_per_frame;
            assembled_len += if k == 0 {
                samples
            } else {
                samples - w.crossfade_samples
            };
        }
        Self {
            padded_len: len,
            starts,
            incontext,
            latent_frames,
            target_len,
            assembled_len,
        }
    }
}

/// Repeats `codes` end to end until it is `len` long (the reference pads by tiling).
pub fn tile_codes(codes: &[i64], len: usize) -> Vec<i64> {
    if codes.is_empty() {
        return vec![];
    }
    codes
        .iter()
        .copied()
        .cycle()
        .take(len.max(codes.len()))
        .take(len)
        .collect()
}

/// The code streams one decode feeds the flow, and its window layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodePlan {
    /// Prompt codes (if any) + song codes, tiled to `schedule.padded_len`.
    pub vocal: Vec<i64>,
    pub bgm: Vec<i64>,
    pub schedule: WindowSchedule,
}

/// Validates the streams, prepends the prompt codes (when given) and pads by tiling
/// (`code2sound` up to the window loop). `prompt_latent_frames` is the prompt's latent prefix.
pub fn plan_decode(
    cfg: &RenderConfig,
    vocal: &[i64],
    bgm: &[i64],
    prompt_codes: Option<(Vec<i64>, Vec<i64>)>,
    prompt_latent_frames: usize,
) -> Result<DecodePlan> {
    let size = cfg.flow.codebook_size;
    if vocal.len() != bgm.len() {
        bail!(
            "vocal ({}) and bgm ({}) streams differ in length",
            vocal.len(),
            bgm.len()
        );
    }
    if vocal.is_empty() {
        bail!("no tokens to render");
    }
    check_codes("vocal", vocal, size)?;
    check_codes("bgm", bgm, size)?;
    let (mut v, mut b) = match prompt_codes {
        Some((pv, pb)) => {
            if pv.len() != pb.len() {
                bail!(
                    "prompt vocal ({}) and bgm ({}) codes differ in length",
                    pv.len(),
                    pb.len()
                );
            }
            check_codes("prompt vocal", &pv, size)?;
            check_codes("prompt bgm", &pb, size)?;
            (pv, pb)
        }
        None => (vec![], vec![]),
    };
    let p_codes = v.len();
    v.extend_from_slice(vocal);
    b.extend_from_slice(bgm);
    let schedule = WindowSchedule::plan(
        &cfg.window,
        cfg.vae.sample_rate,
        v.len(),
        p_codes,
        prompt_latent_frames,
    );
    Ok(DecodePlan {
        vocal: tile_codes(&v, schedule.padded_len),
        bgm: tile_codes(&b, schedule.padded_len),
        schedule,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    fn plan(t: usize, prompt: bool) -> WindowSchedule {
        let (pc, pl) = if prompt { (251, 250) } else { (0, 0) };
        WindowSchedule::plan(&WindowConfig::default(), 48_000, t + pc, pc, pl)
    }

    #[test]
    fn schedule_matches_the_reference_table() {
        // (T, prompt) → (padded L, windows, assembled samples, output samples); the values of the reference's `Flow1dVAESeparate.code2sound` on those inputs.
        for (t, prompt, len, windows, assembled, out) in [
            (50, false, 1000, 1, 1_920_000, 96_000),
            (750, false, 1000, 1, 1_920_000, 1_440_000),
            (1001, false, 1750, 2, 3_360_000, 1_921_920),
            (6750, false, 7000, 9, 13_440_000, 12_960_000),
            (6750, true, 7750, 10, 14_400_000, 12_960_000),
        ] {
            let s = plan(t, prompt);
            assert_eq!(
                (s.padded_len, s.starts.len(), s.assembled_len, s.target_len),
                (len, windows, assembled, out),
                "T={t} prompt={prompt}"
            );
            assert_eq!(s.incontext[0], if prompt { 250 } else { 0 });
            assert!(s.incontext[1..].iter().all(|&n| n == 250));
        }
        // The float truncation of target_len: one sample short for T = 29.
        assert_eq!(plan(29, false).target_len, 29 * 1920 - 1);
    }

    #[test]
    fn tiling_repeats_the_start() {
        assert_eq!(tile_codes(&[1, 2, 3], 7), [1, 2, 3, 1, 2, 3, 1]);
        assert_eq!(tile_codes(&[1, 2, 3], 2), [1, 2]);
    }
}
