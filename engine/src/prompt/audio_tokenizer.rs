//! The prompt tokenizers: 48 kHz stereo audio → 25 Hz codes with MusicFM + one-codebook VQ.
//!
//! - "mixed" (`model_1rvq`): the full mix, MusicFM hidden state 6, `rvq_bestrq_emb`.
//! - "separate" (`model_septoken`): vocal with hidden state 7 + `rvq_bestrq_emb`, and
//!   accompaniment with hidden state 3 + `rvq_bestrq_bgm_emb`, one shared MusicFM.
//!
//! Both follow the reference's `sound2code`: clip-wide peak normalisation (0.8), tiling the clip
//! to whole 40 s segments, per-segment per-channel peak normalisation (0.9), channel mean,
//! 48 → 24 kHz, MusicFM, VQ, concatenation, and `int(S/48000·25) + 1` output frames. Segments are
//! independent, so only the ones that reach the kept frames are computed.

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;

use crate::prompt::musicfm::{MusicFm, MusicFmConfig};
use crate::prompt::resample::{peak_normalize, Resampler};
use crate::prompt::vq::VqEncoder;

/// Constants of `sound2code` (`config.tokenizer` of the fixtures).
#[derive(Debug, Clone, Deserialize)]
pub struct TokenizerConfig {
    pub sample_rate: u32,
    pub frame_rate: u32,
    pub segment_samples: usize,
    pub peak_threshold_clip: f64,
    pub peak_threshold_segment: f64,
}

impl Default for TokenizerConfig {
    fn default() -> Self {
        Self {
            sample_rate: 48000,
            frame_rate: 25,
            segment_samples: 1_920_000,
            peak_threshold_clip: 0.8,
            peak_threshold_segment: 0.9,
        }
    }
}

/// VQ sizes (`config.vq`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct VqConfig {
    pub codebook_size: usize,
    pub codebook_dim: usize,
}

impl Default for VqConfig {
    fn default() -> Self {
        Self {
            codebook_size: 16384,
            codebook_dim: 32,
        }
    }
}

impl VqConfig {
    /// The sizes of the quantizer `rvq` (e.g. `rvq_bestrq_emb`) as a checkpoint stores them.
    pub fn from_shapes(shape: &dyn Fn(&str) -> Option<Vec<usize>>, rvq: &str) -> Result<Self> {
        let name = format!("{rvq}.quantizers.0.codebook.weight");
        match shape(&name).as_deref() {
            Some(&[codebook_size, codebook_dim]) => Ok(Self {
                codebook_size,
                codebook_dim,
            }),
            Some(other) => anyhow::bail!("`{name}` has shape {other:?}, expected [codes, dim]"),
            None => anyhow::bail!("missing tensor `{name}` (no quantizer `{rvq}` in this file?)"),
        }
    }
}

impl TokenizerConfig {
    /// Frames the reference keeps for `samples` input samples: `int(S / sr · 25) + 1`, in f64
    /// like Python.
    pub fn output_len(&self, samples: usize) -> usize {
        (samples as f64 / self.sample_rate as f64 * self.frame_rate as f64) as usize + 1
    }

    fn frames_per_segment(&self) -> usize {
        self.segment_samples * self.frame_rate as usize / self.sample_rate as usize
    }

    /// Segment `k` of the tiled clip `[C, S]`: the reference doubles the clip until it is at
    /// least one segment long, doubles it once more and cuts whole segments; position `p` of the
    /// tiled signal is therefore sample `p mod S`.
    fn segment(&self, clip: &Tensor, k: usize) -> Result<Tensor> {
        let (_, s) = clip.dims2()?;
        let seg = self.segment_samples;
        let mut parts = Vec::new();
        let mut pos = k * seg;
        while pos < (k + 1) * seg {
            let at = pos % s;
            let take = (s - at).min((k + 1) * seg - pos);
            parts.push(clip.narrow(1, at, take)?);
            pos += take;
        }
        Ok(Tensor::cat(&parts, 1)?)
    }
}

/// Checks a tokenizer input `[1, 2, S]` or `[2, S]` and returns it as `[2, S]` F32.
fn stereo_clip(audio: &Tensor, what: &str) -> Result<Tensor> {
    let audio = match audio.rank() {
        3 => {
            ensure!(
                audio.dim(0)? == 1,
                "{what}: batch of {} clips, expected 1",
                audio.dim(0)?
            );
            audio.squeeze(0)?
        }
        2 => audio.clone(),
        _ => anyhow::bail!(
            "{what}: shape {:?}, expected [1, 2, S] or [2, S]",
            audio.dims()
        ),
    };
    let (c, s) = audio.dims2()?;
    ensure!(c == 2, "{what}: {c} channels, expected 2 (stereo)");
    ensure!(s > 0, "{what}: empty clip");
    Ok(audio.to_dtype(DType::F32)?)
}

/// One token stream: a MusicFM read-out layer and its quantizer.
struct Stream {
    layer: usize,
    vq: VqEncoder,
}

/// MusicFM + 48→24 kHz front end shared by the streams of one tokenizer file.
struct Encoder {
    cfg: TokenizerConfig,
    resampler: Resampler,
    musicfm: MusicFm,
}

impl Encoder {
    fn load(
        cfg: &TokenizerConfig,
        mcfg: &MusicFmConfig,
        max_layer: usize,
        vb: &VarBuilder,
    ) -> Result<Self> {
        let kernel = vb.get((1, 1, 28), "rsq48tobestrq.kernel")?;
        Ok(Self {
            cfg: cfg.clone(),
            resampler: Resampler::from_kernel(kernel, cfg.sample_rate, 24000)?,
            musicfm: MusicFm::load(mcfg, max_layer, vb.pp("bestrq.model"))?,
        })
    }

    /// MusicFM hidden state `layer` `[1, T, H]` of one 40 s stereo segment `[2, N]`.
    fn segment_hidden(&self, segment: &Tensor, layer: usize) -> Result<Tensor> {
        let thr = self.cfg.peak_threshold_segment;
        let left = peak_normalize(&segment.get(0)?, thr)?;
        let right = peak_normalize(&segment.get(1)?, thr)?;
        let mono = ((left + right)? / 2.0)?.unsqueeze(0)?;
        let wave24 = self.resampler.apply(&mono)?;
        Ok(self.musicfm.hidden_states(&wave24, &[layer])?.remove(0))
    }

    /// Codes `[1, 1, output_len]` of a clip `[2, S]` already peak-normalised clip-wide.
    /// `on_segment` is called after each segment (for progress); it may fail to cancel.
    fn encode(
        &self,
        clip: &Tensor,
        stream: &Stream,
        on_segment: &mut dyn FnMut() -> Result<()>,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let (_, s) = clip.dims2()?;
        let out_len = self.cfg.output_len(s);
        let per_seg = self.cfg.frames_per_segment();
        let n_seg = out_len.div_ceil(per_seg);
        let mut codes = Vec::with_capacity(n_seg);
        let mut hidden = Vec::with_capacity(n_seg);
        for k in 0..n_seg {
            let seg = self.cfg.segment(clip, k)?;
            let h = self.segment_hidden(&seg, stream.layer)?;
            codes.push(stream.vq.encode(&h.transpose(1, 2)?)?);
            hidden.push(h);
            on_segment()?;
        }
        let codes = Tensor::cat(&codes, 2)?.narrow(2, 0, out_len)?;
        Ok((codes, hidden))
    }
}

/// Codes and the first segment's hidden state (for debugging).
pub struct StreamCodes {
    pub codes: Tensor,
    pub seg0_hidden: Tensor,
}

/// The mixed ("1rvq") tokenizer.
pub struct MixedTokenizer {
    encoder: Encoder,
    stream: Stream,
}

/// Where a tokenizer stream reads MusicFM and which quantizer it uses.
#[derive(Debug, Clone)]
pub struct StreamSpec {
    pub layer: usize,
    /// Key prefix of the quantizer module, e.g. `rvq_bestrq_emb`.
    pub rvq: String,
}

fn load_stream(spec: &StreamSpec, h: usize, vq: &VqConfig, vb: &VarBuilder) -> Result<Stream> {
    Ok(Stream {
        layer: spec.layer,
        vq: VqEncoder::load(
            h,
            vq.codebook_size,
            vq.codebook_dim,
            vb.pp(format!("{}.quantizers.0", spec.rvq)),
        )
        .with_context(|| format!("loading quantizer {}", spec.rvq))?,
    })
}

impl MixedTokenizer {
    /// The released layout: layer 6, `rvq_bestrq_emb`.
    pub fn real_stream() -> StreamSpec {
        StreamSpec {
            layer: 6,
            rvq: "rvq_bestrq_emb".into(),
        }
    }

    pub fn load(
        cfg: &TokenizerConfig,
        mcfg: &MusicFmConfig,
        vq: &VqConfig,
        stream: &StreamSpec,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            encoder: Encoder::load(cfg, mcfg, stream.layer, &vb)?,
            stream: load_stream(stream, mcfg.encoder_dim, vq, &vb)?,
        })
    }

    /// Number of 40 s segments [`Self::encode`] runs for a clip of `samples` samples.
    pub fn segments(&self, samples: usize) -> usize {
        let c = &self.encoder.cfg;
        c.output_len(samples).div_ceil(c.frames_per_segment())
    }

    /// `audio` `[1, 2, S]` 48 kHz → codes `[1, 1, int(S/48000·25)+1]` (I64).
    pub fn encode(
        &self,
        audio: &Tensor,
        on_segment: &mut dyn FnMut() -> Result<()>,
    ) -> Result<StreamCodes> {
        let clip = stereo_clip(audio, "mixed tokenizer input")?;
        let clip = peak_normalize(&clip, self.encoder.cfg.peak_threshold_clip)?;
        let (codes, mut hidden) = self.encoder.encode(&clip, &self.stream, on_segment)?;
        Ok(StreamCodes {
            codes,
            seg0_hidden: hidden.remove(0),
        })
    }
}

/// The separate (vocal / accompaniment) tokenizer.
pub struct SeparateTokenizer {
    encoder: Encoder,
    vocal: Stream,
    bgm: Stream,
}

impl SeparateTokenizer {
    /// The released layout: vocal layer 7 + `rvq_bestrq_emb`, bgm layer 3 + `rvq_bestrq_bgm_emb`.
    pub fn real_streams() -> (StreamSpec, StreamSpec) {
        (
            StreamSpec {
                layer: 7,
                rvq: "rvq_bestrq_emb".into(),
            },
            StreamSpec {
                layer: 3,
                rvq: "rvq_bestrq_bgm_emb".into(),
            },
        )
    }

    pub fn load(
        cfg: &TokenizerConfig,
        mcfg: &MusicFmConfig,
        vq: &VqConfig,
        vocal: &StreamSpec,
        bgm: &StreamSpec,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            encoder: Encoder::load(cfg, mcfg, vocal.layer.max(bgm.layer), &vb)?,
            vocal: load_stream(vocal, mcfg.encoder_dim, vq, &vb)?,
            bgm: load_stream(bgm, mcfg.encoder_dim, vq, &vb)?,
        })
    }

    /// Number of MusicFM segment passes [`Self::encode`] runs (both streams).
    pub fn segments(&self, vocal_samples: usize, bgm_samples: usize) -> usize {
        let c = &self.encoder.cfg;
        2 * c
            .output_len(vocal_samples.min(bgm_samples))
            .div_ceil(c.frames_per_segment())
    }

    /// `vocal`, `bgm` `[1, 2, S]` 48 kHz → (vocal codes, bgm codes), each `[1, 1, frames]` for
    /// the shorter of the two lengths.
    pub fn encode(
        &self,
        vocal: &Tensor,
        bgm: &Tensor,
        on_segment: &mut dyn FnMut() -> Result<()>,
    ) -> Result<(StreamCodes, StreamCodes)> {
        let thr = self.encoder.cfg.peak_threshold_clip;
        let vocal = peak_normalize(&stereo_clip(vocal, "vocal prompt")?, thr)?;
        let bgm = peak_normalize(&stereo_clip(bgm, "accompaniment prompt")?, thr)?;
        let s = vocal.dim(1)?.min(bgm.dim(1)?);
        let (vc, mut vh) = self
            .encoder
            .encode(&vocal.narrow(1, 0, s)?, &self.vocal, on_segment)?;
        let (bc, mut bh) = self
            .encoder
            .encode(&bgm.narrow(1, 0, s)?, &self.bgm, on_segment)?;
        Ok((
            StreamCodes {
                codes: vc,
                seg0_hidden: vh.remove(0),
            },
            StreamCodes {
                codes: bc,
                seg0_hidden: bh.remove(0),
            },
        ))
    }
}
