//! Parity units of the `lelm` fixtures (see `tests/fixtures/parity/lelm/README.md`).
//!
//! The tiny model is built from the manifest's `config` (upstream key names), its weight file
//! and its tokenizer folder, exactly as a real model folder would be.

use std::ops::ControlFlow;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};

use super::{input, param, Case, Manifest, Suite, Tensors};
use crate::lm::conditioners::TextConditions;
use crate::lm::pattern::DelayPattern;
use crate::lm::sampler::LogitProcessor;
use crate::lm::tokenizer::TokenBatch;
use crate::lm::{LanguageModel, LmConfig, LmVersion};
use crate::protocol::SamplingOptions;

pub struct LelmSuite {
    lm: LanguageModel,
}

impl LelmSuite {
    pub fn load(dir: &Path, manifest: &Manifest, device: &Device) -> Result<Self> {
        let cfg = LmConfig::from_tree(&manifest.config, LmVersion::V2)?;
        let tok_dir = manifest
            .extra
            .get("tokenizer_dir")
            .and_then(|v| v.as_str())
            .context("manifest has no tokenizer_dir")?;
        let weights = manifest.weight_path(dir, None)?;
        let lm = LanguageModel::from_parts(cfg, &dir.join(tok_dir), &weights, device, DType::F32)?;
        Ok(Self { lm })
    }

    fn cfg(&self) -> &LmConfig {
        self.lm.config()
    }

    fn tokenize(&self, case: &Case) -> Result<Tensors> {
        let text: Option<String> = param(case, "text")?;
        let text = text.as_deref();
        let c = self.lm.conditioners();
        let mut out = Tensors::new();
        for (name, tok, batch) in [
            (
                "description",
                c.lyrics.tokenizer(),
                c.lyrics.tokenize(&[text])?,
            ),
            ("type_info", c.style.tokenizer(), c.style.tokenize(&[text])?),
        ] {
            out.insert(format!("out.{name}.raw_ids"), ints(&[tok.raw_ids(text)?])?);
            out.insert(format!("out.{name}.input_ids"), ints(&batch.ids)?);
            out.insert(format!("out.{name}.attention_mask"), ints(&batch.mask)?);
            if let Some(cover) = &batch.cover {
                out.insert(format!("out.{name}.structure_cover"), ints(cover)?);
            }
        }
        Ok(out)
    }

    fn texts(case: &Case) -> Result<TextConditions> {
        Ok(TextConditions {
            lyrics: param(case, "lyrics")?,
            style: param(case, "style")?,
        })
    }

    fn prompt(case: &Case, inputs: &Tensors) -> Result<Vec<Vec<u32>>> {
        let t = input(case, inputs, "in.prompt_codes")?;
        let rows: Vec<Vec<i64>> = t.to_dtype(DType::I64)?.squeeze(0)?.to_vec2()?;
        Ok(rows
            .into_iter()
            .map(|r| r.into_iter().map(|v| v as u32).collect())
            .collect())
    }

    fn conditioners(&self, case: &Case, inputs: &Tensors) -> Result<Tensors> {
        let c = self.lm.conditioners();
        let prompt = c.prompt.fit(Some(&Self::prompt(case, inputs)?));
        let prepared = c.prepare(&Self::texts(case)?, &prompt)?;
        let [lyrics, audio, style] = c.embed(&prepared, self.lm.device())?;
        let mut out = Tensors::new();
        let mut text = |name: &str, batch: &TokenBatch| -> Result<()> {
            out.insert(format!("out.{name}.input_ids"), ints(&batch.ids)?);
            out.insert(format!("out.{name}.mask"), ints(&batch.mask)?);
            if let Some(cover) = &batch.cover {
                out.insert(format!("out.{name}.structure_cover"), ints(cover)?);
            }
            Ok(())
        };
        text("description", &prepared.lyrics)?;
        text("type_info", &prepared.style)?;
        let ids: Vec<i64> = prepared
            .prompt_ids
            .iter()
            .flatten()
            .flatten()
            .map(|&v| v as i64)
            .collect();
        let (b, q, n) = (
            prepared.prompt_ids.len(),
            3,
            prepared.prompt_ids[0][0].len(),
        );
        out.insert(
            "out.prompt_audio.ids".into(),
            Tensor::from_vec(ids, (b, q, n), &Device::Cpu)?,
        );
        out.insert("out.prompt_audio.mask".into(), ints(&c.prompt.mask())?);
        for (name, e) in [
            ("description", lyrics),
            ("prompt_audio", audio),
            ("type_info", style),
        ] {
            out.insert(format!("out.{name}.stream1"), f32s(&e.stream1)?);
            out.insert(format!("out.{name}.stream2"), f32s(&e.stream2)?);
        }
        Ok(out)
    }

    fn pattern(&self, case: &Case, inputs: &Tensors) -> Result<Tensors> {
        let delays: Vec<usize> = param(case, "delays")?;
        let t: usize = param(case, "T")?;
        let special = self.cfg().special_id() as i64;
        let p = DelayPattern::new(delays.clone());
        let codes: Vec<Vec<i64>> = input(case, inputs, "in.codes")?
            .to_dtype(DType::I64)?
            .squeeze(0)?
            .to_vec2()?;
        let seq = p.build(&codes, special);
        let mask: Vec<Vec<i64>> = p
            .mask(t)
            .iter()
            .map(|r| r.iter().map(|&v| v as i64).collect())
            .collect();
        let columns = p.columns(t);
        let revert_mask: Vec<Vec<i64>> = delays
            .iter()
            .map(|d| (0..t).map(|time| (time + d + 1 < columns) as i64).collect())
            .collect();
        let mut out = Tensors::new();
        out.insert("out.sequence".into(), ints(&seq)?.unsqueeze(0)?);
        out.insert("out.mask".into(), ints(&mask)?);
        out.insert(
            "out.gen_sequence".into(),
            ints(&p.gen_sequence(t, special))?.unsqueeze(0)?,
        );
        out.insert(
            "out.reverted".into(),
            ints(&p.revert(&seq, t))?.unsqueeze(0)?,
        );
        out.insert("out.revert_mask".into(), ints(&revert_mask)?);
        out.insert(
            "out.first_step".into(),
            Tensor::new(&[p.first_step_with_timestep(0) as i64], &Device::Cpu)?,
        );
        Ok(out)
    }

    /// Resets the network and returns the condition prefix of the case.
    fn start(
        &mut self,
        case: &Case,
        inputs: &Tensors,
    ) -> Result<crate::lm::conditioners::ConditionPrefix> {
        let c = self.lm.conditioners();
        let prompt = c.prompt.fit(Some(&Self::prompt(case, inputs)?));
        let prepared = c.prepare(&Self::texts(case)?, &prompt)?;
        let prefix = c.prefix(&prepared, self.lm.device())?;
        let capacity = self.cfg().prefix_len() + 64;
        self.lm.network().reset(capacity);
        Ok(prefix)
    }

    fn forward_first_step(&mut self, case: &Case, inputs: &Tensors) -> Result<Tensors> {
        let prefix = self.start(case, inputs)?;
        let seq = input(case, inputs, "in.sequence")?.clone();
        let out = self.lm.network().forward(&seq, Some(&prefix), true)?;
        let trace = out.trace.context("no trace")?;
        let mut t = Tensors::new();
        t.insert("out.logits".into(), out.logits);
        for (name, v) in [
            ("fused1", trace.fused1),
            ("fused2", trace.fused2),
            ("h1", trace.h1),
            ("bridge", trace.bridge),
            ("h2", trace.h2),
        ] {
            t.insert(format!("out.{name}"), f32s(&v)?);
        }
        Ok(t)
    }

    fn forward_incremental(&mut self, case: &Case, inputs: &Tensors) -> Result<Tensors> {
        let prefix = self.start(case, inputs)?;
        let columns = input(case, inputs, "in.columns")?.clone();
        let n = columns.dim(2)?;
        let mut logits = Vec::with_capacity(n);
        for k in 0..n {
            let col = columns.narrow(2, k, 1)?;
            let p = (k == 0).then_some(&prefix);
            logits.push(self.lm.network().forward(&col, p, false)?.logits);
        }
        Ok(Tensors::from([(
            "out.logits".into(),
            Tensor::cat(&logits, 2)?,
        )]))
    }

    fn logit_processor(&self, case: &Case, inputs: &Tensors) -> Result<Tensors> {
        let opts = SamplingOptions {
            cfg_coef: param(case, "cfg_coef")?,
            temperature: param(case, "temp")?,
            top_k: param(case, "top_k")?,
            record_window: param(case, "record_window")?,
            ..SamplingOptions::default()
        };
        let code_size = self.cfg().code_size;
        let p = LogitProcessor::new(opts, code_size)?;
        let rows = |name: &str| -> Result<Vec<Vec<f32>>> {
            Ok(input(case, inputs, name)?
                .to_dtype(DType::F32)?
                .squeeze(0)?
                .to_vec2()?)
        };
        let pool: Vec<Vec<i64>> = input(case, inputs, "in.token_pool")?
            .to_dtype(DType::I64)?
            .to_vec2()?;
        let pool: Vec<[u32; 3]> = pool
            .iter()
            .map(|r| std::array::from_fn(|q| r[q] as u32))
            .collect();
        let banned: Vec<u32> = Self::prompt(case, inputs)?[0]
            .iter()
            .copied()
            .filter(|&v| (v as usize) < code_size)
            .collect();
        let guided = p.guide(
            &rows("in.cond_logits")?,
            &rows("in.uncond_logits")?,
            &pool,
            &banned,
        );
        let d = p.distributions(&guided);
        let greedy = LogitProcessor::new(
            SamplingOptions {
                use_sampling: false,
                ..opts
            },
            code_size,
        )?;
        let argmax: Vec<i64> = greedy
            .choose(&guided, &mut rand::rng())
            .into_iter()
            .map(i64::from)
            .collect();
        let mut out = Tensors::new();
        out.insert(
            "out.softmax_input".into(),
            floats(&d.softmax_input)?.unsqueeze(0)?,
        );
        out.insert("out.probs".into(), floats(&d.probs)?.unsqueeze(0)?);
        out.insert(
            "out.argmax".into(),
            Tensor::from_vec(argmax, (1, 3, 1), &Device::Cpu)?,
        );
        Ok(out)
    }

    fn greedy_generate(&mut self, case: &Case, inputs: &Tensors) -> Result<Tensors> {
        let use_sampling: bool = param(case, "use_sampling")?;
        if use_sampling {
            bail!(
                "case {}: only greedy generation has golden tokens",
                case.name
            );
        }
        let opts = SamplingOptions {
            cfg_coef: param(case, "cfg_coef")?,
            temperature: param(case, "temp")?,
            top_k: param(case, "top_k")?,
            record_window: param(case, "record_window")?,
            use_sampling,
            ..SamplingOptions::default()
        };
        let prompt = Self::prompt(case, inputs)?;
        self.lm.set_max_gen_len(param(case, "max_gen_len")?);
        let g =
            self.lm
                .generate_texts(&Self::texts(case)?, Some(&prompt), &opts, 0, &mut |_| {
                    ControlFlow::Continue(())
                })?;
        let fed: Vec<Vec<i64>> = (0..3)
            .map(|q| g.fed_columns.iter().map(|c| c[q] as i64).collect())
            .collect();
        Ok(Tensors::from([
            ("out.tokens_raw".into(), ints(&g.raw)?.unsqueeze(0)?),
            ("out.tokens".into(), ints(&g.tokens)?.unsqueeze(0)?),
            ("out.fed_columns".into(), ints(&fed)?.unsqueeze(0)?),
        ]))
    }
}

impl Suite for LelmSuite {
    fn run(&mut self, case: &Case, inputs: &Tensors) -> Result<Tensors> {
        match case.unit.as_str() {
            "tokenize" => self.tokenize(case),
            "conditioners" => self.conditioners(case, inputs),
            "pattern" => self.pattern(case, inputs),
            "forward_first_step" => self.forward_first_step(case, inputs),
            "forward_incremental" => self.forward_incremental(case, inputs),
            "logit_processor" => self.logit_processor(case, inputs),
            "greedy_generate" => self.greedy_generate(case, inputs),
            other => bail!("unknown lelm unit {other:?}"),
        }
    }
}

/// `[rows][cols]` integers as an I64 tensor.
fn ints<T: Copy + Into<i64>>(rows: &[Vec<T>]) -> Result<Tensor> {
    let cols = rows.first().map_or(0, Vec::len);
    let flat: Vec<i64> = rows.iter().flatten().map(|&v| v.into()).collect();
    Ok(Tensor::from_vec(flat, (rows.len(), cols), &Device::Cpu)?)
}

fn floats(rows: &[Vec<f32>]) -> Result<Tensor> {
    let cols = rows.first().map_or(0, Vec::len);
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    Ok(Tensor::from_vec(flat, (rows.len(), cols), &Device::Cpu)?)
}

fn f32s(t: &Tensor) -> Result<Tensor> {
    Ok(t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?)
}
