//! A complete model folder in the released layout with tiny random weights, for end-to-end
//! tests of `songgen` in seconds (`cargo xtask tiny-model <DIR>` writes one by hand).
//!
//! Layout (what `songgen fetch` produces, see `songgen_engine::paths`):
//!
//! ```text
//! <dir>/songgeneration_v2_tiny/config.yaml   upstream config format, tiny dims
//! <dir>/songgeneration_v2_tiny/model.pt      LM state dict (`audiolm.*`), PyTorch zip
//! <dir>/runtime/third_party/Qwen2-7B/        the parity fixtures' stand-in tokenizer
//! <dir>/runtime/ckpt/model_septoken/model_2.safetensors   flow decoder + RVQ codebooks
//! <dir>/runtime/ckpt/vae/autoencoder_music_1320k.ckpt     Lightning pickle {'state_dict': ...}
//! <dir>/runtime/ckpt/vae/stable_audio_1920_vae.json
//! <dir>/runtime/tools/new_auto_prompt.pt     {genre: {'zh'|'en': [LongTensor [1,3,250]]}}
//! <dir>/runtime/ckpt/model_1rvq/model_2_fixed.safetensors  mixed tokenizer (MusicFM + VQ), F16
//! <dir>/runtime/third_party/demucs/ckpt/htdemucs.pth       HTDemucs state dict, PyTorch zip
//! <dir>/runtime/third_party/demucs/ckpt/htdemucs.yaml
//! ```
//!
//! Names and shapes follow the state dicts the reference's `LmModel` (`codeclm/models/lm_levo.py`),
//! `Flow1dVAESeparate` (`codeclm/tokenizer/Flow1dVAE/`) and the stable-audio `OobleckEncoder`/
//! `OobleckDecoder` save.
//! The LM has the lelm parity fixture's dims; the flow and the VAE are smaller than the decoder
//! fixture's (1 block of width 160, VAE base width 1) because every render runs full
//! 1000-frame windows and these set the end-to-end tests' run time.
//!
//! The style-prompt encoders are sized by their checkpoints (`PromptConfig::from_checkpoints`):
//! MusicFM (in both tokenizer files, under `bestrq.model.`, as released) is as wide as the
//! quantizers' input (`RVQ_DIM`, one head), with `MUSICFM_LAYERS` layers and conv width
//! `MUSICFM_CONV`; HTDemucs has the prompt parity fixture's tiny topology (base width 8, bottom
//! 32). Fixed buffers that the reference computes rather than learns (the mel window and
//! filterbank, the 48 → 24 kHz resampling kernel) and the HTDemucs tensors are copied from the
//! prompt parity fixture, so separation and resampling behave like the real ones.
//! Everything else is drawn from one seed, so the same seed writes byte-identical files.
//!
//! (Over 500 lines: one writer per released file, kept together so the folder's layout reads in
//! one place.)

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::torch_zip::{self, RawTensor, Value};

/// The folder name; any `songgeneration_v2_*` name selects the v2 behaviour.
pub const MODEL_NAME: &str = "songgeneration_v2_tiny";

/// LM dims (the lelm parity fixture's).
pub const LM_DIM: usize = 8;
pub const LM_HEADS: usize = 2;
pub const LM_FFN: usize = 24;
pub const LM_LAYERS: usize = 3;
pub const LM_LAYERS_SUB: usize = 2;
/// Default song length limit in seconds (75 token frames), so random weights that never emit
/// EOS still finish quickly. [`write_with`] sets another (100 s = 2500 frames = 3 windows).
pub const MAX_DUR: usize = 3;
/// Longest limit [`write_with`] accepts: the tiny LM's 10000 positions hold the 952-position
/// prefix and the pattern columns of at most this many seconds.
pub const MAX_SECONDS: usize = 360;
pub const DELAYS: [usize; 3] = [0, 3, 3];

/// Flow dims: width 24 + 64 + 2·RVQ_DIM + 64 = 160 with the released 20 heads (head dim 8).
/// Every window is 1000 frames whatever the song length, so these set the tests' run time.
pub const RVQ_DIM: usize = 4;
pub const FLOW_LAYERS: usize = 1;
pub const FLOW_WIDTH: usize = 24 + 64 + 2 * RVQ_DIM + 64;
/// VAE base channels (real: 128; the stages use 16, 8, 4, 2 and 1 of them).
pub const VAE_CHANNELS: usize = 1;
/// MusicFM conformer layers (real: 12; the tokenizers read hidden states 3, 6 and 7).
pub const MUSICFM_LAYERS: usize = 8;
/// MusicFM conv front-end width (real: 512) and FFN width (real: 4096).
pub const MUSICFM_CONV: usize = 4;
pub const MUSICFM_FFN: usize = 4 * RVQ_DIM;

const CODES: usize = 16384;
const V_DESC: usize = 151_659;
const V_TYPE: usize = 151_652;
const TEXT_PAD: usize = 151_643;

/// Paths of a written tiny model.
#[derive(Debug, Clone)]
pub struct TinyModel {
    pub model_dir: PathBuf,
    pub runtime_dir: PathBuf,
}

/// SplitMix64: a tiny, fully specified generator, so the files never change with a crate update.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-scale, scale).
    fn uniform(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| ((self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale)
            .collect()
    }
}

/// Builds named tensors for one file.
struct Builder<'a> {
    rng: &'a mut Rng,
    tensors: Vec<(String, RawTensor)>,
}

impl Builder<'_> {
    fn add(&mut self, name: String, shape: &[usize], values: Vec<f32>, half: bool) {
        let t = if half {
            RawTensor::f16(shape, &values)
        } else {
            RawTensor::f32(shape, &values)
        };
        self.tensors.push((name, t));
    }

    /// Random values scaled by 1/sqrt(fan_in) (the last dims), like a default init.
    fn weight(&mut self, name: impl Into<String>, shape: &[usize]) {
        let n = shape.iter().product();
        let fan_in: usize = shape[1..].iter().product::<usize>().max(1);
        let v = self.rng.uniform(n, 1.0 / (fan_in as f32).sqrt());
        let half = shape[0] >= CODES;
        self.add(name.into(), shape, v, half);
    }

    fn fill(&mut self, name: impl Into<String>, shape: &[usize], center: f32, spread: f32) {
        let n = shape.iter().product();
        let v = self
            .rng
            .uniform(n, spread)
            .iter()
            .map(|x| x + center)
            .collect();
        self.add(name.into(), shape, v, false);
    }

    /// An embedding table whose padding row is zero.
    fn embedding(&mut self, name: impl Into<String>, rows: usize, dim: usize, pad: Option<usize>) {
        let mut v = self.rng.uniform(rows * dim, 0.5);
        if let Some(p) = pad {
            v[p * dim..(p + 1) * dim].fill(0.0);
        }
        self.add(name.into(), &[rows, dim], v, rows >= CODES);
    }

    /// Legacy weight norm: `weight_g` [out,1,1] and `weight_v` (`g_dim` is 0 for convs, the
    /// input axis is first for transposed convs and so is `g`).
    fn weight_norm(&mut self, prefix: &str, v_shape: &[usize], bias: Option<usize>, half: bool) {
        let n = v_shape.iter().product();
        let fan_in: usize = v_shape[1..].iter().product();
        let v = self.rng.uniform(n, 1.0 / (fan_in as f32).sqrt());
        let g: Vec<f32> = self
            .rng
            .uniform(v_shape[0], 0.25)
            .iter()
            .map(|x| x + 0.75)
            .collect();
        self.add(format!("{prefix}.weight_g"), &[v_shape[0], 1, 1], g, half);
        self.add(format!("{prefix}.weight_v"), v_shape, v, half);
        if let Some(b) = bias {
            let bias = self.rng.uniform(b, 0.02);
            self.add(format!("{prefix}.bias"), &[b], bias, half);
        }
    }
}

/// Writes the tiny model into `dir` (created if missing) from `seed`.
pub fn write(dir: &Path, seed: u64) -> std::io::Result<TinyModel> {
    write_with(dir, seed, MAX_DUR)
}

/// [`write`] with a song length limit of `seconds` (1..=[`MAX_SECONDS`]); the random weights
/// never emit EOS, so every song is that long.
pub fn write_with(dir: &Path, seed: u64, seconds: usize) -> std::io::Result<TinyModel> {
    if !(1..=MAX_SECONDS).contains(&seconds) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("tiny model length must be 1..={MAX_SECONDS} s, not {seconds}"),
        ));
    }
    let model_dir = dir.join(MODEL_NAME);
    let runtime_dir = dir.join("runtime");
    for d in [
        model_dir.clone(),
        runtime_dir.join("third_party/Qwen2-7B"),
        runtime_dir.join("ckpt/model_septoken"),
        runtime_dir.join("ckpt/model_1rvq"),
        runtime_dir.join("third_party/demucs/ckpt"),
        runtime_dir.join("ckpt/vae"),
        runtime_dir.join("tools"),
    ] {
        std::fs::create_dir_all(d)?;
    }
    let mut rng = Rng(seed);
    std::fs::write(model_dir.join("config.yaml"), config_yaml(seconds))?;
    let lm = lm_state_dict(&mut rng);
    torch_zip::save(
        &Value::OrderedDict(lm.into_iter().map(|(k, t)| (k, Value::Tensor(t))).collect()),
        &model_dir.join("model.pt"),
    )?;
    let tokenizer = crate::fixture_dir("lelm").join("tokenizer");
    for f in [
        "tokenizer.json",
        "vocab.json",
        "merges.txt",
        "tokenizer_config.json",
    ] {
        std::fs::copy(
            tokenizer.join(f),
            runtime_dir.join("third_party/Qwen2-7B").join(f),
        )?;
    }
    let mut septoken = flow_state_dict(&mut rng);
    let vae = vae_state_dict(&mut rng);
    torch_zip::save(
        &Value::Dict(vec![(
            "state_dict".into(),
            Value::OrderedDict(
                vae.into_iter()
                    .map(|(k, t)| (k, Value::Tensor(t)))
                    .collect(),
            ),
        )]),
        &runtime_dir.join("ckpt/vae/autoencoder_music_1320k.ckpt"),
    )?;
    std::fs::write(
        runtime_dir.join("ckpt/vae/stable_audio_1920_vae.json"),
        vae_config_json(),
    )?;
    torch_zip::save(
        &auto_prompt(&mut rng),
        &runtime_dir.join("tools/new_auto_prompt.pt"),
    )?;

    // The prompt encoders, drawn after everything above so the LM, flow and VAE weights do
    // not depend on them.
    let buffers = prompt_buffers()?;
    septoken.retain(|(name, _)| name != "rsq48tobestrq.kernel");
    septoken.extend(musicfm_state_dict(&mut rng, &buffers, false));
    save_safetensors(
        septoken,
        &runtime_dir.join("ckpt/model_septoken/model_2.safetensors"),
    )?;
    let mut mixed = musicfm_state_dict(&mut rng, &buffers, true);
    mixed.extend(quantizer(&mut rng, "rvq_bestrq_emb", true));
    save_safetensors(
        mixed,
        &runtime_dir.join("ckpt/model_1rvq/model_2_fixed.safetensors"),
    )?;
    let demucs_dir = runtime_dir.join("third_party/demucs/ckpt");
    torch_zip::save(
        &Value::OrderedDict(
            demucs_state_dict()?
                .into_iter()
                .map(|(k, t)| (k, Value::Tensor(t)))
                .collect(),
        ),
        &demucs_dir.join("htdemucs.pth"),
    )?;
    std::fs::write(demucs_dir.join("htdemucs.yaml"), "models: ['htdemucs']\n")?;
    Ok(TinyModel {
        model_dir,
        runtime_dir,
    })
}

fn save_safetensors(tensors: Vec<(String, RawTensor)>, path: &Path) -> std::io::Result<()> {
    let map: HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(name, t)| {
            let dtype = match t.dtype {
                torch_zip::Dtype::F32 => DType::F32,
                torch_zip::Dtype::F16 => DType::F16,
                torch_zip::Dtype::I64 => DType::I64,
            };
            let tensor = Tensor::from_raw_buffer(&t.bytes, dtype, &t.shape, &Device::Cpu)
                .expect("valid raw tensor");
            (name, tensor)
        })
        .collect();
    candle_core::safetensors::save(&map, path).map_err(std::io::Error::other)
}

/// The upstream config.yaml keys the engine reads, with the tiny dims.
fn config_yaml(max_dur: usize) -> String {
    let tags = songgen_engine::lyrics::SECTION_TAGS
        .iter()
        .map(|t| format!("        - '{t}'"))
        .collect::<Vec<_>>()
        .join("\n");
    format!(
        "\
# Tiny random-weight test model in the SongGeneration v2 layout (songgen tests).
max_dur: {max_dur}
prompt_len: 10
audio_tokenizer_frame_rate: 25
sample_rate: 48000
audio_tokenizer_checkpoint: Flow1dVAE1rvq_./ckpt/model_1rvq/model_2_fixed.safetensors
audio_tokenizer_checkpoint_sep: Flow1dVAESeparate_./ckpt/model_septoken/model_2.safetensors
vae_config: ./ckpt/vae/stable_audio_1920_vae.json
vae_model: ./ckpt/vae/autoencoder_music_1320k.ckpt
lm:
  lm_type: Llama
  dim: {LM_DIM}
  intermediate_size: {LM_FFN}
  num_heads: {LM_HEADS}
  num_layers: {LM_LAYERS}
  num_layers_sub: {LM_LAYERS_SUB}
  code_depth: 3
  code_size: {CODES}
  max_position_embeddings: 10000
  max_position_embeddings_sub: 10000
  rope_theta: 500000.0
  rope_theta_sub: 500000.0
  use_flash_attn_2: false
  norm_first: true
  norm: layer_norm
codebooks_pattern:
  modeling: delay
  delay:
    delays: [{}, {}, {}]
    flatten_first: 0
    empty_initial: 0
classifier_free_guidance:
  inference_coef: 1.5
fuser:
  sum: []
  prepend: [description, prompt_audio, type_info]
conditioners:
  prompt_audio:
    model: qt_embedding
    qt_embedding:
      code_size: {CODES}
      code_depth: 3
      max_len: 252
  description:
    model: QwTokenizer
    QwTokenizer:
      token_path: third_party/Qwen2-7B
      max_len: 600
      add_token_list:
{tags}
  type_info:
    model: QwTextTokenizer
    QwTextTokenizer:
      token_path: third_party/Qwen2-7B
      max_len: 100
",
        DELAYS[0], DELAYS[1], DELAYS[2]
    )
}

/// The reference `LmModel`'s state dict, with the `audiolm.` prefix of model.pt.
fn lm_state_dict(rng: &mut Rng) -> Vec<(String, RawTensor)> {
    let (d, f) = (LM_DIM, LM_FFN);
    let mut b = Builder {
        rng,
        tensors: Vec::new(),
    };
    b.embedding("emb.0.weight", CODES + 2, d, None);
    for i in 0..3 {
        b.embedding(format!("layer2_emb.{i}.weight"), CODES + 2, d, None);
    }
    for (stack, layers) in [("transformer", LM_LAYERS), ("transformer2", LM_LAYERS_SUB)] {
        for i in 0..layers {
            let p = format!("{stack}.model.layers.{i}");
            for proj in ["q", "k", "v", "o"] {
                b.weight(format!("{p}.self_attn.{proj}_proj.weight"), &[d, d]);
            }
            b.weight(format!("{p}.mlp.gate_proj.weight"), &[f, d]);
            b.weight(format!("{p}.mlp.up_proj.weight"), &[f, d]);
            b.weight(format!("{p}.mlp.down_proj.weight"), &[d, f]);
            b.fill(format!("{p}.input_layernorm.weight"), &[d], 1.0, 0.1);
            b.fill(
                format!("{p}.post_attention_layernorm.weight"),
                &[d],
                1.0,
                0.1,
            );
        }
        b.fill(format!("{stack}.model.norm.weight"), &[d], 1.0, 0.1);
        b.weight(format!("{stack}.lm_head.weight"), &[CODES + 1, d]);
        b.weight(
            format!("{stack}.model.embed_tokens.weight"),
            &[CODES + 1, d],
        );
    }
    b.weight("mlp.0.weight", &[d, 2 * d]);
    b.fill("mlp.0.bias", &[d], 0.0, 0.02);
    b.weight("mlp.2.weight", &[d, d]);
    b.fill("mlp.2.bias", &[d], 0.0, 0.02);
    b.weight("linears.0.weight", &[CODES + 1, d]);
    b.weight("linears.1.weight", &[CODES + 1, d]);
    b.fill("out_norm.weight", &[d], 1.0, 0.0);
    b.fill("out_norm.bias", &[d], 0.0, 0.0);
    let c = "condition_provider.conditioners";
    b.embedding(
        format!("{c}.description.output_proj.weight"),
        V_DESC,
        d,
        Some(TEXT_PAD),
    );
    b.embedding(
        format!("{c}.description.structure_emb.weight"),
        200,
        d,
        Some(0),
    );
    b.embedding(
        format!("{c}.type_info.output_proj.weight"),
        V_TYPE,
        d,
        Some(TEXT_PAD),
    );
    for i in 0..3 {
        b.embedding(
            format!("{c}.prompt_audio.emb.{i}.weight"),
            CODES + 2,
            d,
            Some(CODES + 1),
        );
    }
    b.fill(format!("{c}.prompt_audio.EOT_emb"), &[1, d], 0.0, 0.5);
    b.fill(
        format!("{c}.prompt_audio.layer2_EOT_emb"),
        &[1, d],
        0.0,
        0.5,
    );
    b.tensors
        .into_iter()
        .map(|(k, t)| (format!("audiolm.{k}"), t))
        .collect()
}

/// The flow decoder's file (`model_2.safetensors`) without the prompt encoder (`bestrq.*`, `hubert.*`).
fn flow_state_dict(rng: &mut Rng) -> Vec<(String, RawTensor)> {
    let dm = FLOW_WIDTH;
    let mut b = Builder {
        rng,
        tensors: Vec::new(),
    };
    let e = "cfm_wrapper.estimator";
    for i in 0..FLOW_LAYERS {
        let p = format!("{e}.h.{i}");
        b.fill(format!("{p}.scale_shift_table"), &[6, dm], 0.0, 0.1);
        for ln in ["ln_1", "ln_2"] {
            b.fill(format!("{p}.{ln}.weight"), &[dm], 1.0, 0.1);
            b.fill(format!("{p}.{ln}.bias"), &[dm], 0.0, 0.02);
        }
        // HF Conv1D layout: [in, out].
        for (name, inp, out) in [
            ("attn.c_attn", dm, 3 * dm),
            ("attn.c_proj", dm, dm),
            ("mlp.c_fc", dm, 2 * dm),
            ("mlp.c_proj", 2 * dm, dm),
        ] {
            let w = b.rng.uniform(inp * out, 1.0 / (inp as f32).sqrt());
            b.add(format!("{p}.{name}.weight"), &[inp, out], w, false);
            b.fill(format!("{p}.{name}.bias"), &[out], 0.0, 0.02);
        }
    }
    b.fill(format!("{e}.wpe.weight"), &[1000, dm], 0.0, 0.02);
    b.fill(format!("{e}.wte.weight"), &[16, dm], 0.0, 0.02);
    let t = format!("{e}.adaln_single.emb.timestep_embedder");
    b.weight(format!("{t}.linear_1.weight"), &[dm, 512]);
    b.fill(format!("{t}.linear_1.bias"), &[dm], 0.0, 0.02);
    b.weight(format!("{t}.linear_2.weight"), &[dm, dm]);
    b.fill(format!("{t}.linear_2.bias"), &[dm], 0.0, 0.02);
    b.weight(format!("{e}.adaln_single.linear.weight"), &[6 * dm, dm]);
    b.fill(
        format!("{e}.adaln_single.linear.bias"),
        &[6 * dm],
        0.0,
        0.02,
    );
    b.fill(format!("{e}.scale_shift_table"), &[2, dm], 0.0, 0.1);
    b.fill(format!("{e}.ln_f.weight"), &[dm], 1.0, 0.1);
    b.fill(format!("{e}.ln_f.bias"), &[dm], 0.0, 0.02);
    b.weight(format!("{e}.proj_out.weight"), &[dm, dm]);
    b.fill(format!("{e}.proj_out.bias"), &[dm], 0.0, 0.02);
    for (i, (out, inp)) in [(32, dm), (32, 32), (24, 32)].into_iter().enumerate() {
        b.weight(format!("cfm_wrapper.mlp.{}.weight", 2 * i), &[out, inp]);
        b.fill(format!("cfm_wrapper.mlp.{}.bias", 2 * i), &[out], 0.0, 0.02);
    }
    for rvq in ["rvq_bestrq_emb", "rvq_bestrq_bgm_emb"] {
        let q = quantizer(b.rng, rvq, true);
        b.tensors.extend(q);
    }
    b.fill("mask_emb.weight", &[3, 24], 0.0, 0.5);
    b.add(
        "zero_cond_embedding1".into(),
        &[RVQ_DIM],
        vec![0.0; RVQ_DIM],
        false,
    );
    // Latent statistics with counts >= 1e5, so they are constant at inference.
    let counts = 123_456.0f32;
    let mean = b.rng.uniform(64, 0.5);
    let std: Vec<f32> = b.rng.uniform(64, 0.5).iter().map(|s| s + 1.0).collect();
    let sum_x = mean.iter().map(|m| m * counts).collect();
    let sum_x2: Vec<f32> = mean
        .iter()
        .zip(&std)
        .map(|(m, s)| (m * m + s * s) * counts)
        .collect();
    b.add("normfeat.counts".into(), &[1], vec![counts], false);
    b.add("normfeat.sum_x".into(), &[64], sum_x, false);
    b.add("normfeat.sum_x2".into(), &[64], sum_x2.clone(), false);
    b.add("normfeat.sum_target_x2".into(), &[64], sum_x2, false);
    for (name, taps) in [
        ("rsq48tobestrq", 28),
        ("rsp48toclap", 28),
        ("rsq48tohubert", 41),
        ("rsq48towav2vec", 41),
    ] {
        b.fill(format!("{name}.kernel"), &[1, 1, taps], 0.0, 0.1);
    }
    b.tensors
}

/// One-codebook quantizer `{rvq}.quantizers.0.*` of width `RVQ_DIM` (the reference's
/// `ResidualVectorQuantize` with `n_codebooks=1`, `descript_quantize3.py`).
fn quantizer(rng: &mut Rng, rvq: &str, half: bool) -> Vec<(String, RawTensor)> {
    let mut b = Builder {
        rng,
        tensors: Vec::new(),
    };
    let q = format!("{rvq}.quantizers.0");
    let codebook = b.rng.uniform(CODES * 32, 1.0);
    b.add(format!("{q}.codebook.weight"), &[CODES, 32], codebook, half);
    b.weight_norm(&format!("{q}.in_proj"), &[32, RVQ_DIM, 1], Some(32), half);
    b.weight_norm(
        &format!("{q}.out_proj"),
        &[RVQ_DIM, 32, 1],
        Some(RVQ_DIM),
        half,
    );
    b.add(
        format!("{q}.stale_counter"),
        &[CODES],
        vec![0.0; CODES],
        false,
    );
    b.tensors
}

/// Tensors of a file of the prompt parity fixture, as raw F32 / I64 tensors.
fn fixture_tensors(file: &str) -> std::io::Result<Vec<(String, RawTensor)>> {
    let path = crate::fixture_dir("prompt").join("weights").join(file);
    let map = candle_core::safetensors::load(&path, &Device::Cpu).map_err(std::io::Error::other)?;
    let mut out: Vec<(String, RawTensor)> = map
        .into_iter()
        .map(|(name, t)| {
            let shape = t.dims().to_vec();
            let raw = match t.dtype() {
                DType::I64 => RawTensor::i64(&shape, &t.flatten_all()?.to_vec1::<i64>()?),
                _ => RawTensor::f32(
                    &shape,
                    &t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?,
                ),
            };
            Ok((name, raw))
        })
        .collect::<candle_core::Result<_>>()
        .map_err(std::io::Error::other)?;
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// The computed (not learned) buffers of the prompt path: mel window and filterbank, and the
/// 48 → 24 kHz resampling kernel.
fn prompt_buffers() -> std::io::Result<Vec<(String, RawTensor)>> {
    Ok(fixture_tensors("septoken.safetensors")?
        .into_iter()
        .filter(|(name, _)| {
            name.contains("preprocessor_melspec_2048") || name == "rsq48tobestrq.kernel"
        })
        .collect())
}

/// HTDemucs in the prompt fixture's tiny topology (its weights).
fn demucs_state_dict() -> std::io::Result<Vec<(String, RawTensor)>> {
    fixture_tensors("demucs.safetensors")
}

/// MusicFM-25Hz under `bestrq.model.` (the reference's `MusicFM25Hz` with HF's
/// `Wav2Vec2ConformerEncoder`) at the tiny widths, with the resampling
/// kernel and mel buffers; stored F16 (as `model_2_fixed.safetensors` is) when `half`.
fn musicfm_state_dict(
    rng: &mut Rng,
    buffers: &[(String, RawTensor)],
    half: bool,
) -> Vec<(String, RawTensor)> {
    let (h, c, f) = (RVQ_DIM, MUSICFM_CONV, MUSICFM_FFN);
    let mut b = Builder {
        rng,
        tensors: Vec::new(),
    };
    let m = "bestrq.model";
    let batch_norm = |b: &mut Builder, p: &str, ch: usize| {
        b.fill(format!("{p}.weight"), &[ch], 1.0, 0.1);
        b.fill(format!("{p}.bias"), &[ch], 0.0, 0.05);
        b.fill(format!("{p}.running_mean"), &[ch], 0.0, 0.05);
        b.fill(format!("{p}.running_var"), &[ch], 1.0, 0.2);
        b.tensors.push((
            format!("{p}.num_batches_tracked"),
            RawTensor::i64(&[], &[1000]),
        ));
    };
    for (i, cin) in [(0, 1), (1, c)] {
        let p = format!("{m}.conv.conv.{i}");
        for (conv, inp) in [("conv1", cin), ("conv2", c), ("conv3", cin)] {
            b.weight(format!("{p}.{conv}.weight"), &[c, inp, 3, 3]);
            b.fill(format!("{p}.{conv}.bias"), &[c], 0.0, 0.02);
        }
        for bn in ["bn1", "bn2", "bn3"] {
            batch_norm(&mut b, &format!("{p}.{bn}"), c);
        }
    }
    b.weight(format!("{m}.conv.linear.weight"), &[h, c * 32]);
    b.fill(format!("{m}.conv.linear.bias"), &[h], 0.0, 0.02);
    let layer_norm = |b: &mut Builder, p: &str| {
        b.fill(format!("{p}.weight"), &[h], 1.0, 0.1);
        b.fill(format!("{p}.bias"), &[h], 0.0, 0.02);
    };
    for i in 0..MUSICFM_LAYERS {
        let p = format!("{m}.conformer.layers.{i}");
        for ffn in ["ffn1", "ffn2"] {
            b.weight(format!("{p}.{ffn}.intermediate_dense.weight"), &[f, h]);
            b.fill(
                format!("{p}.{ffn}.intermediate_dense.bias"),
                &[f],
                0.0,
                0.02,
            );
            b.weight(format!("{p}.{ffn}.output_dense.weight"), &[h, f]);
            b.fill(format!("{p}.{ffn}.output_dense.bias"), &[h], 0.0, 0.02);
        }
        for ln in [
            "ffn1_layer_norm",
            "self_attn_layer_norm",
            "ffn2_layer_norm",
            "final_layer_norm",
            "conv_module.layer_norm",
        ] {
            layer_norm(&mut b, &format!("{p}.{ln}"));
        }
        for proj in ["q", "k", "v", "out"] {
            b.weight(format!("{p}.self_attn.linear_{proj}.weight"), &[h, h]);
            b.fill(format!("{p}.self_attn.linear_{proj}.bias"), &[h], 0.0, 0.02);
        }
        let cm = format!("{p}.conv_module");
        b.weight(format!("{cm}.pointwise_conv1.weight"), &[2 * h, h, 1]);
        b.weight(format!("{cm}.depthwise_conv.weight"), &[h, 1, 31]);
        batch_norm(&mut b, &format!("{cm}.batch_norm"), h);
        b.weight(format!("{cm}.pointwise_conv2.weight"), &[h, h, 1]);
    }
    layer_norm(&mut b, &format!("{m}.conformer.layer_norm"));
    // One head as wide as the encoder: the rotary table is half a head wide.
    let inv_freq: Vec<f32> = (0..h / 2)
        .map(|i| 1.0 / 10000f32.powf((2 * i) as f32 / h as f32))
        .collect();
    b.add(
        format!("{m}.conformer.embed_positions.inv_freq"),
        &[h / 2],
        inv_freq,
        false,
    );
    b.fill(format!("{m}.cls_token"), &[h], 0.0, 0.5);
    let mut tensors = b.tensors;
    if half {
        for (_, t) in tensors.iter_mut() {
            if t.dtype == torch_zip::Dtype::F32 {
                let v: Vec<f32> = t
                    .bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                *t = RawTensor::f16(&t.shape, &v);
            }
        }
    }
    tensors.extend(buffers.iter().cloned());
    tensors
}

/// The VAE checkpoint: Oobleck encoder and decoder with weight norm unfolded.
fn vae_state_dict(rng: &mut Rng) -> Vec<(String, RawTensor)> {
    let c = VAE_CHANNELS;
    let mults = [1, 1, 2, 4, 8, 16];
    let strides = [2, 4, 4, 6, 10];
    let mut b = Builder {
        rng,
        tensors: Vec::new(),
    };
    let snake = |b: &mut Builder, p: &str, ch: usize| {
        b.fill(format!("{p}.alpha"), &[ch], 0.0, 0.1);
        b.fill(format!("{p}.beta"), &[ch], 0.0, 0.1);
    };
    let res_unit = |b: &mut Builder, p: &str, ch: usize| {
        snake(b, &format!("{p}.layers.0"), ch);
        b.weight_norm(&format!("{p}.layers.1"), &[ch, ch, 7], Some(ch), false);
        snake(b, &format!("{p}.layers.2"), ch);
        b.weight_norm(&format!("{p}.layers.3"), &[ch, ch, 1], Some(ch), false);
    };
    b.weight_norm("encoder.layers.0", &[c, 2, 7], Some(c), false);
    for j in 0..5 {
        let (inp, out) = (c * mults[j], c * mults[j + 1]);
        let p = format!("encoder.layers.{}", j + 1);
        for r in 0..3 {
            res_unit(&mut b, &format!("{p}.layers.{r}"), inp);
        }
        snake(&mut b, &format!("{p}.layers.3"), inp);
        b.weight_norm(
            &format!("{p}.layers.4"),
            &[out, inp, 2 * strides[j]],
            Some(out),
            false,
        );
    }
    snake(&mut b, "encoder.layers.6", c * 16);
    b.weight_norm("encoder.layers.7", &[128, c * 16, 3], Some(128), false);

    b.weight_norm("decoder.layers.0", &[c * 16, 64, 7], Some(c * 16), false);
    for j in 0..5 {
        let (inp, out) = (c * mults[5 - j], c * mults[4 - j]);
        let p = format!("decoder.layers.{}", j + 1);
        snake(&mut b, &format!("{p}.layers.0"), inp);
        // ConvTranspose1d: weight [in, out, k], norm per input channel.
        b.weight_norm(
            &format!("{p}.layers.1"),
            &[inp, out, 2 * strides[4 - j]],
            Some(out),
            false,
        );
        for r in 0..3 {
            res_unit(&mut b, &format!("{p}.layers.{}", r + 2), out);
        }
    }
    snake(&mut b, "decoder.layers.6", c);
    b.weight_norm("decoder.layers.7", &[2, c, 7], None, false);
    b.tensors
}

fn vae_config_json() -> String {
    let c = VAE_CHANNELS;
    format!(
        r#"{{
  "model_type": "autoencoder",
  "sample_size": 403200,
  "sample_rate": 48000,
  "audio_channels": 2,
  "model": {{
    "encoder": {{
      "type": "oobleck",
      "config": {{"in_channels": 2, "channels": {c}, "c_mults": [1, 2, 4, 8, 16], "strides": [2, 4, 4, 6, 10], "latent_dim": 128, "use_snake": true}}
    }},
    "decoder": {{
      "type": "oobleck",
      "config": {{"out_channels": 2, "channels": {c}, "c_mults": [1, 2, 4, 8, 16], "strides": [2, 4, 4, 6, 10], "latent_dim": 64, "use_snake": true, "final_tanh": false}}
    }},
    "bottleneck": {{"type": "vae"}},
    "latent_dim": 64,
    "downsampling_ratio": 1920,
    "io_channels": 2
  }}
}}
"#
    )
}

/// `{genre: {'zh': [t, t], 'en': [t, t]}}` with `t` an int64 [1, 3, 250] of codes.
fn auto_prompt(rng: &mut Rng) -> Value {
    let mut genres = Vec::new();
    // The file holds every genre but `Auto`, which picks among all of them.
    for g in songgen_engine::tags::AUTO_PROMPT_GENRES
        .iter()
        .filter(|g| **g != "Auto")
    {
        let mut langs = Vec::new();
        for lang in ["zh", "en"] {
            let entries = (0..2)
                .map(|_| {
                    let codes: Vec<i64> = (0..750)
                        .map(|_| (rng.next() % CODES as u64) as i64)
                        .collect();
                    Value::Tensor(RawTensor::i64(&[1, 3, 250], &codes))
                })
                .collect();
            langs.push((lang.to_string(), Value::List(entries)));
        }
        genres.push((g.to_string(), Value::Dict(langs)));
    }
    Value::Dict(genres)
}
