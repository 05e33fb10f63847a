//! HTDemucs (Demucs v4, hybrid transformer) source separation, used to split a style prompt
//! into vocals and accompaniment. Standard `htdemucs` topology: 4 frequency + 4 time encoder
//! layers, cross-domain transformer at the bottom, complex-as-channels spectral output summed
//! with the waveform branch.

pub mod apply;
pub mod layers;
pub mod spec;
pub mod transformer;

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;

use layers::{Conv1d, DecLayer, EncLayer, LayerShape};
use spec::{Spectrogram, Stft};
use transformer::{CrossTransformer, TransformerConfig};

/// The `HTDemucs` constructor kwargs that matter at inference (`states.py` for the real model,
/// `config.demucs.tiny_kwargs` in the fixtures). Unsupported variants are rejected at load.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct HtDemucsConfig {
    pub sources: Vec<String>,
    pub audio_channels: usize,
    pub samplerate: usize,
    /// Training segment in seconds, as a fraction string like `"39/5"` or a number.
    pub segment: serde_json::Value,
    pub channels: usize,
    pub growth: usize,
    pub nfft: usize,
    pub cac: bool,
    pub depth: usize,
    pub rewrite: bool,
    #[serde(default)]
    pub multi_freqs: Vec<f64>,
    pub freq_emb: f64,
    pub emb_scale: f64,
    pub kernel_size: usize,
    pub stride: usize,
    pub context: usize,
    pub context_enc: usize,
    pub norm_starts: usize,
    pub dconv_mode: usize,
    pub dconv_depth: usize,
    pub dconv_comp: usize,
    pub bottom_channels: usize,
    pub t_layers: usize,
    pub t_hidden_scale: f64,
    pub t_heads: usize,
    pub t_emb: String,
    pub t_max_period: f64,
    pub t_weight_pos_embed: f64,
    pub t_norm_in: bool,
    pub t_norm_first: bool,
    pub t_norm_out: bool,
    pub t_layer_scale: bool,
    pub t_gelu: bool,
    pub t_cross_first: bool,
    #[serde(default)]
    pub t_group_norm: serde_json::Value,
    #[serde(default)]
    pub wiener_iters: i64,
    #[serde(default)]
    pub channels_time: Option<usize>,
    #[serde(default)]
    pub t_sparse_self_attn: bool,
    #[serde(default)]
    pub t_sparse_cross_attn: bool,
}

impl HtDemucsConfig {
    /// The released `htdemucs` (the kwargs hard-coded in the reference's `states.py`).
    pub fn real() -> Self {
        Self {
            sources: ["drums", "bass", "other", "vocal"]
                .map(String::from)
                .to_vec(),
            audio_channels: 2,
            samplerate: 44100,
            segment: serde_json::Value::String("39/5".into()),
            channels: 48,
            growth: 2,
            nfft: 4096,
            cac: true,
            depth: 4,
            rewrite: true,
            multi_freqs: vec![],
            freq_emb: 0.2,
            emb_scale: 10.0,
            kernel_size: 8,
            stride: 4,
            context: 1,
            context_enc: 0,
            norm_starts: 4,
            dconv_mode: 3,
            dconv_depth: 2,
            dconv_comp: 8,
            bottom_channels: 512,
            t_layers: 5,
            t_hidden_scale: 4.0,
            t_heads: 8,
            t_emb: "sin".into(),
            t_max_period: 10000.0,
            t_weight_pos_embed: 1.0,
            t_norm_in: true,
            t_norm_first: true,
            t_norm_out: true,
            t_layer_scale: true,
            t_gelu: true,
            t_cross_first: false,
            t_group_norm: serde_json::Value::Bool(false),
            wiener_iters: 0,
            channels_time: None,
            t_sparse_self_attn: false,
            t_sparse_cross_attn: false,
        }
    }

    /// The released topology with the sizes a checkpoint states: base channels, kernel, growth,
    /// depth, encoder/decoder contexts, DConv compression and depth (and which side has one),
    /// bottom channels, transformer depth and FFN width, and the number of sources. `shape`
    /// gives a stored tensor's shape. Not visible in the weights and kept as released: the
    /// stride (4), the FFT size (4096, checked against the frequency embedding), the sample
    /// rate and segment; the transformer's head count is `bottom_channels / 64` (the release's
    /// head width; 8 heads for 512 channels), at least 1.
    pub fn from_shapes(shape: &dyn Fn(&str) -> Option<Vec<usize>>) -> Result<Self> {
        let mut cfg = Self::real();
        let need = |name: &str| -> Result<Vec<usize>> {
            shape(name)
                .with_context(|| format!("missing tensor `{name}` (not an HTDemucs state dict?)"))
        };
        let conv = need("encoder.0.conv.weight")?;
        ensure!(
            conv.len() == 4,
            "`encoder.0.conv.weight` has shape {conv:?}, expected 4 dims"
        );
        cfg.channels = conv[0];
        cfg.kernel_size = conv[2];
        cfg.depth = (0..)
            .take_while(|i| shape(&format!("encoder.{i}.conv.weight")).is_some())
            .count();
        if cfg.depth > 1 {
            let next = need("encoder.1.conv.weight")?[0];
            ensure!(
                next % cfg.channels == 0,
                "`encoder.1.conv.weight` has {next} channels, not a multiple of {}",
                cfg.channels
            );
            cfg.growth = next / cfg.channels;
        }
        let context = |name: &str| -> Result<usize> { Ok((need(name)?[2].max(1) - 1) / 2) };
        cfg.context_enc = context("encoder.0.rewrite.weight")?;
        cfg.context = context("decoder.0.rewrite.weight")?;
        let enc_dconv = shape("encoder.0.dconv.layers.0.0.weight");
        let dec_dconv = shape("decoder.0.dconv.layers.0.0.weight");
        cfg.dconv_mode = usize::from(enc_dconv.is_some()) | (usize::from(dec_dconv.is_some()) << 1);
        if let Some(d) = &enc_dconv {
            ensure!(
                d[0] > 0 && d[1] % d[0] == 0,
                "DConv of shape {d:?}: width not a multiple of its hidden width"
            );
            cfg.dconv_comp = d[1] / d[0];
            cfg.dconv_depth = (0..)
                .take_while(|i| shape(&format!("encoder.0.dconv.layers.{i}.0.weight")).is_some())
                .count();
        }
        cfg.bottom_channels = need("channel_upsampler.weight")?[0];
        cfg.t_layers = (0..)
            .take_while(|i| shape(&format!("crosstransformer.layers.{i}.linear1.weight")).is_some())
            .count();
        let hidden = need("crosstransformer.layers.0.linear1.weight")?[0];
        cfg.t_hidden_scale = hidden as f64 / cfg.bottom_channels as f64;
        cfg.t_heads = (cfg.bottom_channels / 64).max(1);
        // The outermost time decoder (the last one, as in the reference's list) outputs
        // sources × channels.
        let last = format!("tdecoder.{}.conv_tr.weight", cfg.depth.saturating_sub(1));
        let out = need(&last)?;
        ensure!(
            out.len() == 3 && out[1] % cfg.audio_channels == 0,
            "`{last}` has shape {out:?}, expected [C, sources·{}, K]",
            cfg.audio_channels
        );
        let sources = out[1] / cfg.audio_channels;
        ensure!(
            sources == cfg.sources.len(),
            "the HTDemucs checkpoint separates {sources} sources; the prompt path needs the \
             released four (drums, bass, other, vocal)"
        );
        if let Some(emb) = shape("freq_emb.embedding.weight") {
            cfg.freq_emb = Self::real().freq_emb;
            ensure!(
                emb[0] == cfg.nfft / 2 / cfg.stride,
                "`freq_emb.embedding.weight` has {} rows; the released FFT size {} and stride {} \
                 give {}",
                emb[0],
                cfg.nfft,
                cfg.stride,
                cfg.nfft / 2 / cfg.stride
            );
        } else {
            cfg.freq_emb = 0.0;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// `int(segment · samplerate)`: the fixed input length of one model call.
    pub fn training_length(&self) -> Result<usize> {
        let (num, den) = match &self.segment {
            serde_json::Value::String(s) => match s.split_once('/') {
                Some((n, d)) => (n.trim().parse::<u64>()?, d.trim().parse::<u64>()?),
                None => return Ok((s.trim().parse::<f64>()? * self.samplerate as f64) as usize),
            },
            serde_json::Value::Number(n) => {
                let v = n.as_f64().context("demucs segment")?;
                return Ok((v * self.samplerate as f64) as usize);
            }
            other => bail!("demucs segment {other} is neither a number nor a fraction"),
        };
        ensure!(den > 0, "demucs segment has a zero denominator");
        Ok((num * self.samplerate as u64 / den) as usize)
    }

    fn validate(&self) -> Result<()> {
        let unsupported = |what: &str| bail!("HTDemucs variant not supported: {what}");
        if !self.cac {
            return unsupported("cac = false (magnitude masking)");
        }
        if !self.multi_freqs.is_empty() {
            return unsupported("multi_freqs");
        }
        if self.norm_starts < self.depth {
            return unsupported("GroupNorm in encoder/decoder layers (norm_starts < depth)");
        }
        if self.t_emb != "sin" || !self.t_norm_in || !self.t_norm_first || !self.t_norm_out {
            return unsupported("transformer other than sin / norm_in / norm_first / norm_out");
        }
        if !self.t_layer_scale || !self.t_gelu || self.t_cross_first {
            return unsupported("transformer without layer scale / GELU, or cross_first");
        }
        if self.t_sparse_self_attn || self.t_sparse_cross_attn {
            return unsupported("sparse attention");
        }
        if self.t_group_norm.as_bool().unwrap_or(false)
            || self.t_group_norm.as_u64().unwrap_or(0) > 0
        {
            return unsupported("t_group_norm");
        }
        if self.wiener_iters != 0 || self.channels_time.is_some() || !self.rewrite {
            return unsupported("wiener filtering, channels_time or rewrite = false");
        }
        if self.nfft != 4 * (self.nfft / 4) || self.t_layers == 0 || self.bottom_channels == 0 {
            return unsupported("this nfft / t_layers / bottom_channels");
        }
        // Every layer must stay a frequency layer (no "last_freq" merge layer).
        let mut freqs = self.nfft / 2;
        for _ in 0..self.depth {
            if freqs <= self.kernel_size {
                return unsupported("a depth that collapses the frequency axis");
            }
            freqs /= self.stride;
        }
        Ok(())
    }
}

pub struct HtDemucs {
    cfg: HtDemucsConfig,
    training_length: usize,
    stft: Stft,
    encoder: Vec<EncLayer>,
    tencoder: Vec<EncLayer>,
    decoder: Vec<DecLayer>,
    tdecoder: Vec<DecLayer>,
    /// `[F/stride, C]` frequency embedding (already × `emb_scale`).
    freq_emb: Option<Tensor>,
    up: Conv1d,
    down: Conv1d,
    up_t: Conv1d,
    down_t: Conv1d,
    transformer: CrossTransformer,
}

impl HtDemucs {
    pub fn load(cfg: &HtDemucsConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let s = cfg.sources.len();
        let ac = cfg.audio_channels;
        let mut encoder = Vec::new();
        let mut tencoder = Vec::new();
        let mut decoder = Vec::new();
        let mut tdecoder = Vec::new();
        let (mut chin, mut chin_z) = (ac, 2 * ac);
        let (mut chout, mut chout_z) = (cfg.channels, cfg.channels);
        let enc_shape = |dconv| LayerShape {
            kernel: cfg.kernel_size,
            stride: cfg.stride,
            context: cfg.context_enc,
            dconv_comp: cfg.dconv_comp,
            dconv_depth: cfg.dconv_depth,
            dconv,
        };
        let dec_shape = |dconv| LayerShape {
            context: cfg.context,
            ..enc_shape(dconv)
        };
        let enc_dconv = cfg.dconv_mode & 1 != 0;
        let dec_dconv = cfg.dconv_mode & 2 != 0;
        for i in 0..cfg.depth {
            encoder.push(EncLayer::load(
                chin_z,
                chout_z,
                enc_shape(enc_dconv),
                true,
                vb.pp(format!("encoder.{i}")),
            )?);
            tencoder.push(EncLayer::load(
                chin,
                chout,
                enc_shape(enc_dconv),
                false,
                vb.pp(format!("tencoder.{i}")),
            )?);
            if i == 0 {
                chin = ac * s;
                chin_z = 2 * chin;
            }
            let di = cfg.depth - 1 - i;
            decoder.push(DecLayer::load(
                chout_z,
                chin_z,
                dec_shape(dec_dconv),
                true,
                i == 0,
                vb.pp(format!("decoder.{di}")),
            )?);
            tdecoder.push(DecLayer::load(
                chout,
                chin,
                dec_shape(dec_dconv),
                false,
                i == 0,
                vb.pp(format!("tdecoder.{di}")),
            )?);
            chin = chout;
            chin_z = chout_z;
            chout *= cfg.growth;
            chout_z *= cfg.growth;
        }
        decoder.reverse();
        tdecoder.reverse();
        let freq_emb = if cfg.freq_emb > 0.0 {
            let bins = cfg.nfft / 2 / cfg.stride;
            Some((vb.get((bins, cfg.channels), "freq_emb.embedding.weight")? * cfg.emb_scale)?)
        } else {
            None
        };
        let tc = cfg.channels * cfg.growth.pow(cfg.depth as u32 - 1);
        let bc = cfg.bottom_channels;
        let conv1x1 =
            |cin, cout, name: &str| Conv1d::load(cin, cout, 1, 1, 0, 1, false, vb.pp(name));
        let tcfg = TransformerConfig {
            dim: bc,
            hidden: (bc as f64 * cfg.t_hidden_scale) as usize,
            heads: cfg.t_heads,
            layers: cfg.t_layers,
            max_period: cfg.t_max_period,
            weight_pos_embed: cfg.t_weight_pos_embed,
        };
        Ok(Self {
            training_length: cfg.training_length()?,
            stft: Stft::new(cfg.nfft),
            encoder,
            tencoder,
            decoder,
            tdecoder,
            freq_emb,
            up: conv1x1(tc, bc, "channel_upsampler")?,
            down: conv1x1(bc, tc, "channel_downsampler")?,
            up_t: conv1x1(tc, bc, "channel_upsampler_t")?,
            down_t: conv1x1(bc, tc, "channel_downsampler_t")?,
            transformer: CrossTransformer::load(&tcfg, vb.pp("crosstransformer"))?,
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &HtDemucsConfig {
        &self.cfg
    }

    /// Samples per model call (`segment · samplerate`).
    pub fn training_length(&self) -> usize {
        self.training_length
    }

    /// `mix` `[B, C, L]` (L ≤ training length, zero-padded internally) → stems `[B, S, C, L]`.
    /// The debug output is the spectral branch's transformer input `[B, C', F', T']`.
    #[cfg(feature = "parity")]
    pub fn forward_traced(&self, mix: &Tensor) -> Result<(Tensor, Tensor)> {
        self.run(mix)
    }

    fn run(&self, mix: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, c, length) = mix.dims3()?;
        ensure!(
            c == self.cfg.audio_channels,
            "HTDemucs input has {c} channels, expected {}",
            self.cfg.audio_channels
        );
        let tl = self.training_length;
        ensure!(
            length <= tl,
            "HTDemucs input of {length} samples exceeds the segment of {tl}"
        );
        let dev = mix.device().clone();
        let mix = mix
            .to_dtype(DType::F32)?
            .pad_with_zeros(2, 0, tl - length)?;

        // Spectrogram, complex as channels: channel 2c + {0: re, 1: im}.
        let signals = mix.reshape((b * c, tl))?.to_vec2::<f32>()?;
        let specs = signals
            .iter()
            .map(|s| self.stft.spec(s))
            .collect::<Result<Vec<Spectrogram>>>()?;
        let (fq, t) = (specs[0].bins, specs[0].frames);
        let mut mag = Vec::with_capacity(b * c * 2 * fq * t);
        for z in &specs {
            mag.extend(z.data.iter().map(|v| v.re as f32));
            mag.extend(z.data.iter().map(|v| v.im as f32));
        }
        // Re/im planes per signal are laid out [re plane, im plane] = channel 2c, 2c+1.
        let mag = Tensor::from_vec(mag, (b, 2 * c, fq, t), &dev)?;
        let (x, mean, std) = normalize(&mag)?;
        let (xt, meant, stdt) = normalize(&mix)?;

        let mut x = x;
        let mut xt = xt;
        let mut saved = Vec::new();
        let mut saved_t = Vec::new();
        let mut lengths_t = Vec::new();
        for (i, (enc, tenc)) in self.encoder.iter().zip(&self.tencoder).enumerate() {
            lengths_t.push(xt.dim(2)?);
            xt = tenc.forward(&xt)?;
            saved_t.push(xt.clone());
            x = enc.forward(&x)?;
            if i == 0 {
                if let Some(emb) = &self.freq_emb {
                    let emb = emb.t()?.reshape((1, self.cfg.channels, emb.dim(0)?, 1))?;
                    x = x.broadcast_add(&(emb * self.cfg.freq_emb)?)?;
                }
            }
            saved.push(x.clone());
        }

        let (_, cz, f, tt) = x.dims4()?;
        let xf = self.up.forward(&x.reshape((b, cz, f * tt))?)?;
        let xf = xf.reshape((b, (), f, tt))?;
        let xtu = self.up_t.forward(&xt)?;
        let trace = xf.clone();
        let (xf, xtu) = self.transformer.forward(&xf, &xtu)?;
        let bc = xf.dim(1)?;
        x = self
            .down
            .forward(&xf.reshape((b, bc, f * tt))?)?
            .reshape((b, cz, f, tt))?;
        xt = self.down_t.forward(&xtu)?;

        for (dec, tdec) in self.decoder.iter().zip(&self.tdecoder) {
            let skip = saved.pop().context("skip stack")?;
            x = dec.forward(&x, &skip, 0)?;
            let skip_t = saved_t.pop().context("time skip stack")?;
            let len_t = lengths_t.pop().context("time length stack")?;
            xt = tdec.forward(&xt, &skip_t, len_t)?;
        }

        let s = self.cfg.sources.len();
        // Spectral branch: de-normalise, back to complex, inverse STFT.
        let x = x.broadcast_mul(&std)?.broadcast_add(&mean)?; // [B, S·C·2, F, T]
        let planes = x.reshape((b * s * c, 2, fq * t))?.to_vec3::<f32>()?;
        let mut wav = Vec::with_capacity(b * s * c * tl);
        for p in &planes {
            let z = Spectrogram {
                bins: fq,
                frames: t,
                data: p[0]
                    .iter()
                    .zip(&p[1])
                    .map(|(&re, &im)| realfft::num_complex::Complex::new(re as f64, im as f64))
                    .collect(),
            };
            wav.extend(self.stft.ispec(&z, tl)?);
        }
        let x = Tensor::from_vec(wav, (b, s, c, tl), &dev)?;
        let xt = xt
            .reshape((b, s, c, tl))?
            .broadcast_mul(&stdt.unsqueeze(1)?)?
            .broadcast_add(&meant.unsqueeze(1)?)?;
        let out = (xt + x)?.narrow(3, 0, length)?;
        Ok((out, trace))
    }

    pub fn forward(&self, mix: &Tensor) -> Result<Tensor> {
        Ok(self.run(mix)?.0)
    }
}

/// `(x − mean) / (1e-5 + std)` over all but the batch axis (std unbiased, like `torch.std`);
/// returns the normalised tensor and the broadcastable mean and std.
fn normalize(x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
    let b = x.dim(0)?;
    let n = x.elem_count() / b;
    let flat = x.reshape((b, n))?.to_dtype(DType::F64)?;
    let mean = flat.mean_keepdim(1)?;
    let var = (flat.broadcast_sub(&mean)?.sqr()?.sum_keepdim(1)? / (n as f64 - 1.0))?;
    let std = var.sqrt()?;
    let mut shape = vec![b];
    shape.extend(std::iter::repeat_n(1, x.rank() - 1));
    let mean = mean.to_dtype(DType::F32)?.reshape(shape.as_slice())?;
    let std = std.to_dtype(DType::F32)?.reshape(shape.as_slice())?;
    let normed = x.broadcast_sub(&mean)?.broadcast_div(&(&std + 1e-5)?)?;
    Ok((normed, mean, std))
}
