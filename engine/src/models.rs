//! The real models behind the pipeline's [`SongModel`] boundary: the LM ([`crate::lm`]) and
//! the renderer ([`crate::render`]: flow decoder + VAE), loaded once from a model folder.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};

use crate::audio::{Audio, SAMPLE_RATE};
use crate::lm::{LanguageModel, LmRequest};
use crate::paths::ModelPaths;
use crate::pipeline::{LmInput, PromptCodes, SongModel, StemKind};
use crate::progress::ProgressFn;
use crate::protocol::{GenType, SamplingOptions};
use crate::render::{PromptSet, RenderConfig, Renderer, Stem};
use crate::vae::VaeConfig;
use crate::weights::WeightFile;

/// Everything a job needs, on one device.
pub struct Models {
    name: String,
    device: String,
    lm: LanguageModel,
    renderer: Renderer,
}

/// Loads the LM and the renderer of `paths` onto `device`, computing in `dtype` (the VAE stays
/// in F32, as in the reference).
pub fn load(paths: &ModelPaths, device: &Device, dtype: DType) -> Result<Box<dyn SongModel>> {
    let lm = LanguageModel::load(paths, device, dtype).with_context(|| {
        format!(
            "loading the language model from {}",
            paths.model_dir.display()
        )
    })?;
    let renderer = load_renderer(paths, device, dtype)?;
    let name = paths
        .model_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| paths.model_dir.display().to_string());
    let location = match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".to_string(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    };
    Ok(Box::new(Models {
        name,
        device: format!("{location} {dtype:?}").to_lowercase(),
        lm,
        renderer,
    }))
}

/// The renderer with the flow's widths read from its checkpoint: the released decoder's
/// configuration (`RenderConfig::songgen_v2`) except for the sizes the weights themselves
/// state (width, depth, FFN width, position table, token-conditioning width), so smaller test
/// and distilled decoders with the same architecture load too. The head count is not visible
/// in the weights and stays the released 20.
fn load_renderer(paths: &ModelPaths, device: &Device, dtype: DType) -> Result<Renderer> {
    let json = paths.vae_config();
    let vae_cfg = if json.is_file() {
        VaeConfig::from_json_file(&json)?
    } else {
        VaeConfig::default()
    };
    let flow = WeightFile::open(paths.septoken())?;
    let mut cfg = RenderConfig::songgen_v2(vae_cfg);
    let e = &mut cfg.flow.estimator;
    let shape = |name: &str| -> Result<Vec<usize>> {
        flow.shape(name)
            .map(<[usize]>::to_vec)
            .with_context(|| format!("{}: missing tensor `{name}`", flow.path().display()))
    };
    let wpe = shape("cfm_wrapper.estimator.wpe.weight")?;
    if let [positions, width] = wpe[..] {
        e.n_positions = positions;
        e.n_embd = width;
    }
    e.n_inner = shape("cfm_wrapper.estimator.h.0.mlp.c_fc.weight")?
        .get(1)
        .copied()
        .unwrap_or(e.n_inner);
    e.n_layer = (0..)
        .take_while(|i| flow.contains(&format!("cfm_wrapper.estimator.h.{i}.scale_shift_table")))
        .count();
    cfg.flow.rvq_input_dim = shape("rvq_bestrq_emb.quantizers.0.out_proj.weight_v")?[0];
    let vae = WeightFile::open(paths.vae_ckpt())?;
    Renderer::from_files(flow, vae, cfg, device, dtype)
        .with_context(|| format!("loading the renderer from {}", paths.runtime_dir.display()))
}

impl SongModel for Models {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn device(&self) -> String {
        self.device.clone()
    }

    fn encode_prompt(
        &mut self,
        _audio: &Audio,
        _seed: u64,
        _progress: &mut ProgressFn<'_>,
    ) -> Result<PromptCodes> {
        bail!("prompt clips (--prompt-audio) are not supported by this build yet; use --auto-prompt GENRE or --tags")
    }

    fn auto_prompt(&mut self, _genre: &str, _subset: &str, _seed: u64) -> Result<Tensor> {
        bail!("the auto-prompt library (--auto-prompt) is not supported by this build yet; use --tags")
    }

    fn tokens(
        &mut self,
        input: &LmInput,
        sampling: &SamplingOptions,
        seed: u64,
        progress: &mut ProgressFn<'_>,
    ) -> Result<Tensor> {
        let req = LmRequest {
            lyrics: input.lyrics.clone(),
            descriptions: input.descriptions.clone(),
            gen_type: input.gen_type,
            prompt_tokens: input.prompt_tokens.clone(),
        };
        self.lm.generate(&req, sampling, seed, progress)
    }

    fn render(
        &mut self,
        tokens: &Tensor,
        prompt_latent: Option<&Tensor>,
        gen_type: GenType,
        seed: u64,
        progress: &mut ProgressFn<'_>,
    ) -> Result<Vec<(StemKind, Audio)>> {
        if prompt_latent.is_some() {
            bail!("rendering with a prompt clip is not supported by this build yet");
        }
        let stems = self
            .renderer
            .render(tokens, &PromptSet::none(), gen_type, seed, progress)?;
        if stems.sample_rate != SAMPLE_RATE {
            bail!(
                "the renderer produced {} Hz, expected {SAMPLE_RATE}",
                stems.sample_rate
            );
        }
        stems
            .audio
            .into_iter()
            .map(|(stem, audio)| {
                let kind = match stem {
                    Stem::Mixed => StemKind::Mixed,
                    Stem::Vocal => StemKind::Vocal,
                    Stem::Bgm => StemKind::Bgm,
                };
                let channels = audio.to_dtype(DType::F32)?.to_vec2::<f32>()?;
                Ok((
                    kind,
                    Audio {
                        channels,
                        sample_rate: SAMPLE_RATE,
                    },
                ))
            })
            .collect()
    }
}
