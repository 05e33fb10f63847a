//! Parity units of the `decoder` fixtures: RVQ decode, flow estimator and sampler, window
//! schedule, Oobleck VAE decoder (plain and chunked), cross-fade and end-to-end decode.

use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Module, Tensor};
use serde::de::DeserializeOwned;

use super::{input, param, Case, Manifest, Suite, Tensors};
use crate::io::weights::WeightFile;
use crate::protocol::Stem;
use crate::render::flow::{solve_euler, t_span, FlowConfig};
use crate::render::rvq::named_codes;
use crate::render::vae::layers::{fold_weight_norm, SnakeBeta};
use crate::render::vae::{chunk_plan, VaeConfig};
use crate::render::{
    crossfade_append, no_progress, plan_decode, ChunkConfig, Noise, RenderConfig, RenderPrompt,
    Renderer, WindowConfig,
};

pub struct DecoderSuite {
    renderer: Renderer,
    device: Device,
}

fn config<T: DeserializeOwned>(manifest: &Manifest, key: &str) -> Result<T> {
    let v = manifest
        .config
        .get(key)
        .with_context(|| format!("manifest config has no {key:?}"))?;
    serde_json::from_value(v.clone()).with_context(|| format!("manifest config.{key}"))
}

/// The render config of a fixture manifest (`config.{flow, vae, window, vae_chunk}`).
pub fn render_config(manifest: &Manifest) -> Result<RenderConfig> {
    Ok(RenderConfig {
        flow: config::<FlowConfig>(manifest, "flow")?,
        vae: config::<VaeConfig>(manifest, "vae")?,
        window: config::<WindowConfig>(manifest, "window")?,
        vae_chunk: config::<ChunkConfig>(manifest, "vae_chunk")?,
    })
}

/// The renderer of a decoder fixture directory (its tiny random-weight models), F32.
pub fn load_renderer(dir: &Path, manifest: &Manifest, device: &Device) -> Result<Renderer> {
    let flow = WeightFile::open(manifest.weight_path(dir, Some("flow"))?)?;
    // The VAE as the release ships it (a Lightning pickle) when the fixtures include one.
    let vae_key = if manifest.weights.get("vae_ckpt").is_some() {
        "vae_ckpt"
    } else {
        "vae"
    };
    let vae = WeightFile::open(manifest.weight_path(dir, Some(vae_key))?)?;
    Renderer::from_files(flow, vae, render_config(manifest)?, device, DType::F32)
}

impl DecoderSuite {
    pub fn load(dir: &Path, manifest: &Manifest, device: &Device) -> Result<Self> {
        Ok(Self {
            renderer: load_renderer(dir, manifest, device)?,
            device: device.clone(),
        })
    }

    fn input(&self, case: &Case, inputs: &Tensors, name: &str) -> Result<Tensor> {
        Ok(input(case, inputs, name)?.to_device(&self.device)?)
    }

    fn cfg(&self) -> &RenderConfig {
        self.renderer.config()
    }
}

fn i64_tensor(v: &[i64], shape: &[usize]) -> Result<Tensor> {
    Ok(Tensor::from_vec(v.to_vec(), shape.to_vec(), &Device::Cpu)?)
}

fn usize_tensor(v: &[usize]) -> Result<Tensor> {
    let v: Vec<i64> = v.iter().map(|&x| x as i64).collect();
    i64_tensor(&v, &[v.len()])
}

impl Suite for DecoderSuite {
    fn run(&mut self, case: &Case, inputs: &Tensors) -> Result<Tensors> {
        let mut out = Tensors::new();
        let flow = self.renderer.flow();
        match case.unit.as_str() {
            "weight_norm_fold" => {
                let g = self.input(case, inputs, "in.weight_g")?;
                let v = self.input(case, inputs, "in.weight_v")?;
                out.insert("out.weight".into(), fold_weight_norm(&g, &v)?);
            }
            "rvq_decode" => {
                for (stream, rvq) in [("vocal", flow.vocal_rvq()), ("bgm", flow.bgm_rvq())] {
                    let codes =
                        named_codes(stream, input(case, inputs, &format!("in.codes_{stream}"))?)?;
                    out.insert(format!("out.{stream}"), rvq.decode(&codes)?);
                    out.insert(
                        format!("dbg.codebook_rows_{stream}"),
                        rvq.rows(&codes)?.transpose(1, 2)?.contiguous()?,
                    );
                }
            }
            "timestep_embedding" => {
                let t = self.input(case, inputs, "in.t")?;
                let adaln = flow.estimator().adaln();
                let (emb, modulation) = adaln.forward(&t, DType::F32)?;
                out.insert("dbg.sinusoid".into(), adaln.sinusoid(&t)?);
                out.insert("out.emb".into(), emb);
                out.insert("out.mod".into(), modulation);
            }
            "flow_block" => {
                let h = self.input(case, inputs, "in.h")?;
                let t = self.input(case, inputs, "in.t")?;
                let idx: usize = param(case, "block")?;
                let est = flow.estimator();
                let block = est
                    .blocks()
                    .get(idx)
                    .with_context(|| format!("no block {idx}"))?;
                let (_, modulation) = est.adaln().forward(&t, DType::F32)?;
                let (h, trace) = block.forward_traced(&h, &modulation, est.rope(), true)?;
                let trace = trace.context("no block trace")?;
                out.insert("out.h".into(), h);
                out.insert("dbg.mod".into(), modulation);
                out.insert("dbg.q_pre_rope".into(), trace.q_pre_rope);
                out.insert("dbg.q_rope".into(), trace.q_rope);
                out.insert("dbg.k_rope".into(), trace.k_rope);
                out.insert("dbg.attn_out".into(), trace.attn_out);
                out.insert("dbg.mlp_out".into(), trace.mlp_out);
            }
            "flow_estimator" => {
                let x = self.input(case, inputs, "in.x")?;
                let t = self.input(case, inputs, "in.t")?;
                let (y, trace) = flow.estimator().forward_traced(&x, &t)?;
                out.insert("out.y".into(), y);
                out.insert("dbg.emb".into(), trace.emb);
                out.insert("dbg.mod".into(), trace.modulation);
                out.insert("dbg.h_after_block0".into(), trace.h_after_block0);
            }
            "model_input" | "euler_solver" => {
                let vocal = named_codes("vocal", input(case, inputs, "in.codes_vocal")?)?;
                let bgm = named_codes("bgm", input(case, inputs, "in.codes_bgm")?)?;
                let latent = self.input(case, inputs, "in.true_latent")?;
                let noise = self.input(case, inputs, "in.noise")?;
                let p: usize = param(case, "incontext_length")?;
                let ctx = if p > 0 {
                    Some(latent.narrow(1, 0, p)?)
                } else {
                    None
                };
                let inputs = flow.window_inputs(&vocal, &bgm, ctx.as_ref())?;
                let mut euler = flow.config().euler();
                euler.num_steps = param(case, "num_steps")?;
                euler.guidance_scale = param(case, "guidance_scale")?;
                euler.sigma_min = param(case, "sigma_min")?;
                if case.unit == "model_input" {
                    // The estimator replaced by v = 0; capture its input at one step.
                    let capture: usize = param(case, "capture_step")?;
                    let mut captured = None;
                    let mut step = 0;
                    let ld = flow.config().latent_dim;
                    let mut velocity = |x: &Tensor, t: &Tensor| -> candle_core::Result<Tensor> {
                        let (b, l, _) = x.dims3()?;
                        if step == capture {
                            captured = Some((x.clone(), t.clone()));
                        }
                        step += 1;
                        Tensor::zeros((b, l, ld), DType::F32, x.device())
                    };
                    solve_euler(&inputs, &noise, &euler, &mut velocity, &mut |_, _| Ok(()))?;
                    let (x, t) = captured.context("capture step never reached")?;
                    out.insert("out.model_input".into(), x);
                    out.insert("out.timestep".into(), t);
                } else {
                    let mut states = Vec::new();
                    let est = flow.estimator();
                    let mut velocity = |x: &Tensor, t: &Tensor| est.velocity(x, t);
                    let x = solve_euler(&inputs, &noise, &euler, &mut velocity, &mut |_, s| {
                        states.push(s.clone());
                        Ok(())
                    })?;
                    let latent = flow
                        .normfeat()
                        .unproject(&x.transpose(1, 2)?.contiguous()?, false)?;
                    out.insert("out.latent".into(), latent);
                    let ts = t_span(euler.num_steps);
                    out.insert(
                        "dbg.t_span".into(),
                        Tensor::new(ts.as_slice(), &Device::Cpu)?,
                    );
                    out.insert("dbg.state_before_step".into(), Tensor::cat(&states, 0)?);
                }
            }
            "normfeat" => {
                let x = self.input(case, inputs, "in.x")?;
                let nf = flow.normfeat();
                let projected = nf.project(&x, false)?;
                out.insert("out.return".into(), nf.unproject(&x, false)?);
                out.insert("out.roundtrip".into(), nf.unproject(&projected, false)?);
                out.insert("out.project".into(), projected);
                out.insert("dbg.mean".into(), nf.mean().clone());
                out.insert("dbg.std".into(), nf.std().clone());
            }
            "window_schedule" => {
                let vocal = named_codes("vocal", input(case, inputs, "in.codes_vocal")?)?;
                let bgm = named_codes("bgm", input(case, inputs, "in.codes_bgm")?)?;
                let prompt: bool = param(case, "prompt")?;
                let prompt_codes = if prompt {
                    Some((
                        named_codes(
                            "prompt vocal",
                            input(case, inputs, "in.prompt_codes_vocal")?,
                        )?,
                        named_codes("prompt bgm", input(case, inputs, "in.prompt_codes_bgm")?)?,
                    ))
                } else {
                    None
                };
                let p_latent: usize = param(case, "prompt_latent_frames")?;
                let plan = plan_decode(self.cfg(), &vocal, &bgm, prompt_codes, p_latent)?;
                let s = &plan.schedule;
                let l = plan.vocal.len();
                out.insert(
                    "out.padded_codes_vocal".into(),
                    i64_tensor(&plan.vocal, &[1, 1, l])?,
                );
                out.insert(
                    "out.padded_codes_bgm".into(),
                    i64_tensor(&plan.bgm, &[1, 1, l])?,
                );
                out.insert("out.window_starts".into(), usize_tensor(&s.starts)?);
                out.insert("out.incontext_lengths".into(), usize_tensor(&s.incontext)?);
                out.insert(
                    "out.window_latent_frames".into(),
                    usize_tensor(&s.latent_frames)?,
                );
                out.insert("out.target_len".into(), usize_tensor(&[s.target_len])?);
                out.insert(
                    "dbg.assembled_len".into(),
                    usize_tensor(&[s.assembled_len])?,
                );
            }
            "snake" => {
                let x = self.input(case, inputs, "in.x")?;
                let snake = SnakeBeta::from_log_params(
                    &self.input(case, inputs, "in.alpha")?,
                    &self.input(case, inputs, "in.beta")?,
                )?;
                out.insert("out.y".into(), snake.forward(&x)?);
            }
            "vae_stage" => {
                let latent = self.input(case, inputs, "in.latent")?;
                let trace = self.renderer.vae().decoder().decode_traced(&latent)?;
                for (i, s) in trace.stages.iter().enumerate() {
                    out.insert(format!("out.stage.{i}"), s.clone());
                }
                for (j, u) in trace.upsampled.iter().enumerate() {
                    out.insert(format!("dbg.block{}.upsampled", j + 1), u.clone());
                }
                out.insert("out.audio".into(), trace.audio);
            }
            "vae_decode" => {
                let latent = self.input(case, inputs, "in.latent")?;
                out.insert("out.audio".into(), self.renderer.vae().decode(&latent)?);
            }
            "vae_decode_chunked" => {
                let latent = self.input(case, inputs, "in.latent")?;
                let size: usize = param(case, "chunk_size")?;
                let overlap: usize = param(case, "overlap")?;
                let audio =
                    self.renderer
                        .vae()
                        .decode_chunked(&latent, size, overlap, &mut |_, _| Ok(()))?;
                let starts: Vec<usize> = chunk_plan(latent.dim(2)?, size, overlap)
                    .iter()
                    .map(|c| c.start)
                    .collect();
                out.insert("out.audio".into(), audio);
                out.insert("dbg.chunk_starts".into(), usize_tensor(&starts)?);
            }
            "crossfade_assembly" => {
                let overlap: usize = param(case, "overlap_samples")?;
                let target: usize = param(case, "target_len")?;
                let mut song: Option<Tensor> = None;
                for k in 0.. {
                    let Some(w) = inputs.get(&format!("in.window_audio.{k}")) else {
                        break;
                    };
                    song = Some(match song {
                        None => w.clone(),
                        Some(acc) => crossfade_append(&acc, w, overlap)?,
                    });
                }
                let song = song.context("no in.window_audio.* inputs")?;
                let n = song.dim(1)?.min(target);
                out.insert("out.audio".into(), song.narrow(1, 0, n)?);
            }
            "decode_end_to_end" => {
                let tokens = input(case, inputs, "in.tokens")?;
                let vocal = named_codes("vocal tokens", &tokens.narrow(1, 1, 1)?)?;
                let bgm = named_codes("bgm tokens", &tokens.narrow(1, 2, 1)?)?;
                let stem = match param::<String>(case, "gen_type")?.as_str() {
                    "mixed" => Stem::Mixed,
                    "vocal" => Stem::Vocal,
                    "bgm" => Stem::Bgm,
                    other => bail!("unknown gen_type {other:?}"),
                };
                let prompt = if param::<bool>(case, "prompt")? {
                    Some(RenderPrompt {
                        latent: self.input(case, inputs, "in.prompt_latent")?,
                        codes_vocal: input(case, inputs, "in.prompt_codes_vocal")?.clone(),
                        codes_bgm: input(case, inputs, "in.prompt_codes_bgm")?.clone(),
                    })
                } else {
                    None
                };
                let noise = Noise::given(self.input(case, inputs, "in.noise")?);
                let r = self.renderer.render_stem(
                    stem,
                    &vocal,
                    &bgm,
                    prompt.as_ref(),
                    noise,
                    &mut no_progress(),
                )?;
                let l = r.plan.vocal.len();
                out.insert("out.audio".into(), r.audio.unsqueeze(0)?);
                out.insert(
                    "out.window_latents".into(),
                    Tensor::cat(&r.window_latents, 0)?,
                );
                out.insert(
                    "dbg.padded_codes_vocal".into(),
                    i64_tensor(&r.plan.vocal, &[1, 1, l])?,
                );
                out.insert(
                    "dbg.padded_codes_bgm".into(),
                    i64_tensor(&r.plan.bgm, &[1, 1, l])?,
                );
                out.insert(
                    "dbg.incontext_lengths".into(),
                    usize_tensor(&r.plan.schedule.incontext)?,
                );
            }
            other => bail!("unit {other:?} is not implemented"),
        }
        Ok(out)
    }
}
