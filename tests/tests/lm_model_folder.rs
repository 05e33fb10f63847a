//! Loading LeLM from a model folder laid out like the reference's (upstream-format
//! `config.yaml` with `${eval:...}`/`${load_yaml:...}`, `model.safetensors`/`model.pt` under
//! `audiolm.`, the runtime's `third_party/Qwen2-7B`), generating from it, and the one-line
//! errors a broken folder gives.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use songgen_engine::lm::{LanguageModel, LmRequest};
use songgen_engine::paths::ModelPaths;
use songgen_engine::progress::{Cancelled, Progress};
use songgen_engine::protocol::{GenType, SamplingOptions, Stage};
use songgen_tests::fixture_dir;

/// The fixture model's config in the layout of the released `config.yaml` files.
const CONFIG_YAML: &str = r#"# ================ Train Config ================ #
lyric_processor:
max_dur: 3
min_dur: 1
prompt_len: 10
pad_to_max: true

audio_tokenizer_checkpoint: Flow1dVAE1rvq_./ckpt/model_1rvq/model_2_fixed.safetensors
audio_tokenizer_frame_rate: 25
audio_tokenizer_code_depth: 1
sample_rate: 48000

lm:
  lm_type: Llama # [Llama]
  dim: 8
  intermediate_size: 24
  num_heads: 2
  num_layers: 3
  num_layers_sub: 2
  code_depth: 3
  code_size: 16384
  max_position_embeddings: 10000
  max_position_embeddings_sub: 10000
  rope_theta: 500000.0
  rope_theta_sub: 500000.0
  dropout: 0.0
  use_flash_attn_2: true
  activation: gelu
  norm_first: true
  positional_embedding: sin
  norm: layer_norm
  kv_repeat: 1

codebooks_pattern:
  modeling: delay
  delay:
    delays: [ 0, 3, 3 ]
    flatten_first: 0
    empty_initial: 0

classifier_free_guidance:
  training_dropout: 0.15
  inference_coef: 1.5

fuser:
  sum: []
  prepend: [ description, prompt_audio, type_info ]

conditioners:
  prompt_audio:
    model: qt_embedding
    qt_embedding:
      code_size: 16384
      code_depth: 3
      max_len: ${eval:${prompt_len}*${audio_tokenizer_frame_rate}+2} # 25*10+2+1
  description:
    model: QwTokenizer
    QwTokenizer:
      token_path: third_party/Qwen2-7B
      max_len: 600
      add_token_list: ${load_yaml:conf/vocab.yaml}
  type_info:
    model: QwTextTokenizer
    QwTextTokenizer:
      token_path: third_party/Qwen2-7B
      max_len: 100
"#;

/// A fresh `<root>/<model_name>/` + `<root>/runtime/` pair built from the lelm fixture.
struct Folder {
    root: PathBuf,
    model: PathBuf,
    runtime: PathBuf,
}

impl Folder {
    fn new(tag: &str, model_name: &str) -> Self {
        let root = songgen_tests::temp_dir(&format!("lm-{tag}"));
        let model = root.join(model_name);
        let runtime = root.join("runtime");
        let tok = runtime.join("third_party/Qwen2-7B");
        std::fs::create_dir_all(&model).unwrap();
        std::fs::create_dir_all(&tok).unwrap();
        std::fs::write(model.join("config.yaml"), CONFIG_YAML).unwrap();
        let fixture = fixture_dir("lelm");
        for f in ["vocab.json", "merges.txt", "tokenizer_config.json"] {
            std::fs::copy(fixture.join("tokenizer").join(f), tok.join(f)).unwrap();
        }
        Folder {
            root,
            model,
            runtime,
        }
    }

    fn with_weights(self, file: &str) -> Self {
        std::fs::copy(fixture_dir("lelm").join(file), self.model.join(file)).unwrap();
        self
    }

    /// Writes `model.safetensors` from the fixture's tensors after `edit`.
    fn with_edited_weights(self, edit: impl FnOnce(&mut HashMap<String, Tensor>)) -> Self {
        let mut tensors = candle_core::safetensors::load(
            fixture_dir("lelm").join("model.safetensors"),
            &Device::Cpu,
        )
        .unwrap();
        edit(&mut tensors);
        candle_core::safetensors::save(&tensors, self.model.join("model.safetensors")).unwrap();
        self
    }

    fn paths(&self) -> ModelPaths {
        ModelPaths::resolve(&self.model, Some(&self.runtime)).unwrap()
    }

    fn load(&self) -> anyhow::Result<LanguageModel> {
        LanguageModel::load(&self.paths(), &Device::Cpu, DType::F32)
    }

    /// The load error as the one line a user sees.
    fn load_error(&self) -> String {
        let err = match self.load() {
            Ok(_) => panic!("loading {} should fail", self.model.display()),
            Err(e) => format!("{e:#}"),
        };
        assert!(!err.contains('\n'), "not one line: {err}");
        err
    }
}

impl Drop for Folder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn case_tensors(name: &str) -> HashMap<String, Tensor> {
    let path = fixture_dir("lelm")
        .join("cases")
        .join(format!("{name}.safetensors"));
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn no_progress(_: Progress) -> ControlFlow<()> {
    ControlFlow::Continue(())
}

#[test]
fn a_model_folder_reproduces_the_greedy_golden_tokens() {
    let folder = Folder::new("golden", "songgeneration_v2_tiny").with_weights("model.pt");
    let mut lm = folder.load().unwrap();
    assert_eq!(lm.max_gen_len(), 75, "max_dur * frame_rate");
    assert_eq!(
        lm.config().prompt_len_tokens(),
        252,
        "${{eval:...}} resolved"
    );
    assert_eq!(lm.config().structure_tags.len(), 13, "vocab.yaml resolved");
    // gen_stop_zh's strings are exactly what generate.py derives from these fields.
    let case = case_tensors("gen_stop_zh");
    let req = LmRequest {
        lyrics: "[intro-short] ; [verse] 海浪拍打着沙滩 ; [chorus] 快乐的时候 ; [outro-short]"
            .into(),
        descriptions: Some("Chinese style, guzheng.".into()),
        gen_type: GenType::Mixed,
        prompt_tokens: Some(case["in.prompt_codes"].clone()),
    };
    let opts = SamplingOptions {
        use_sampling: false,
        ..SamplingOptions::default()
    };
    let mut reports = Vec::new();
    let tokens = lm
        .generate(&req, &opts, 0, &mut |p| {
            reports.push(p);
            ControlFlow::Continue(())
        })
        .unwrap();
    let want = &case["out.tokens"];
    assert_eq!(tokens.dims(), want.dims());
    assert_eq!(
        tokens.flatten_all().unwrap().to_vec1::<i64>().unwrap(),
        want.flatten_all().unwrap().to_vec1::<i64>().unwrap()
    );
    let last = reports.last().unwrap();
    assert_eq!(last.stage, Stage::Lm);
    assert_eq!(last.total, 78, "one step per pattern column");
    assert_eq!(last.done as usize, reports.len());
}

#[test]
fn sampling_is_reproducible_per_seed_and_cancellable() {
    let folder =
        Folder::new("sampling", "songgeneration_v2_tiny").with_weights("model.safetensors");
    let mut lm = folder.load().unwrap();
    lm.set_max_gen_len(20);
    let req = LmRequest {
        lyrics: "[verse] hold on.hold on to me ; [chorus] la la la".into(),
        descriptions: Some("female, pop".into()),
        gen_type: GenType::Mixed,
        prompt_tokens: None,
    };
    let opts = SamplingOptions {
        temperature: 1.5,
        top_k: 200,
        ..SamplingOptions::default()
    };
    let mut run = |seed| {
        lm.generate(&req, &opts, seed, &mut no_progress)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<i64>()
            .unwrap()
    };
    let a = run(1);
    assert_eq!(a, run(1), "same seed, same tokens");
    assert!((1..6).any(|s| run(s + 1) != a), "seeds change the sample");

    let mut steps = 0;
    let err = lm
        .generate(&req, &opts, 1, &mut |_| {
            steps += 1;
            if steps == 3 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap_err();
    assert!(err.downcast_ref::<Cancelled>().is_some(), "{err:#}");
    assert_eq!(steps, 3, "stops at the step boundary");

    lm.set_max_gen_len(10_000);
    let err = lm
        .generate(&req, &opts, 1, &mut no_progress)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("10000 frames need 10956 positions, more than max_position_embeddings 10000"),
        "{err}"
    );
}

#[test]
fn a_missing_tensor_is_named_with_its_shape() {
    let folder = Folder::new("missing", "songgeneration_v2_tiny").with_edited_weights(|t| {
        t.remove("audiolm.mlp.0.weight");
    });
    let err = folder.load_error();
    assert!(
        err.contains("model.safetensors")
            && err.contains("missing tensor `audiolm.mlp.0.weight` (expected shape [8, 16])"),
        "{err}"
    );
}

#[test]
fn a_mis_shaped_tensor_is_named_with_both_shapes() {
    let folder = Folder::new("shape", "songgeneration_v2_tiny").with_edited_weights(|t| {
        let w = Tensor::zeros(9, DType::F32, &Device::Cpu).unwrap();
        t.insert("audiolm.transformer2.model.norm.weight".into(), w);
    });
    let err = folder.load_error();
    assert!(
        err.contains("`audiolm.transformer2.model.norm.weight` has shape [9], expected [8]"),
        "{err}"
    );
}

#[test]
fn unused_tensors_may_be_absent() {
    let folder = Folder::new("vestigial", "songgeneration_v2_tiny").with_edited_weights(|t| {
        t.retain(|k, _| {
            !(k.contains("embed_tokens")
                || k.contains("transformer2.lm_head")
                || k.contains("layer2_emb.0")
                || k.contains("out_norm"))
        });
    });
    folder.load().unwrap();
}

#[test]
fn a_truncated_checkpoint_is_reported() {
    for file in ["model.pt", "model.safetensors"] {
        let folder = Folder::new("trunc", "songgeneration_v2_tiny");
        let bytes = std::fs::read(fixture_dir("lelm").join(file)).unwrap();
        std::fs::write(folder.model.join(file), &bytes[..bytes.len() / 2]).unwrap();
        let err = folder.load_error();
        assert!(err.contains(file) && err.contains("truncated"), "{err}");
    }
}

#[test]
fn a_missing_tokenizer_is_reported() {
    let folder = Folder::new("notok", "songgeneration_v2_tiny").with_weights("model.safetensors");
    let tok = folder.runtime.join("third_party/Qwen2-7B");
    std::fs::remove_file(tok.join("merges.txt")).unwrap();
    let err = folder.load_error();
    assert!(
        err.contains("Qwen2-7B has neither tokenizer.json nor vocab.json + merges.txt"),
        "{err}"
    );
}

#[test]
fn a_v1_folder_rejects_v2_weights_by_the_style_table() {
    // v1 has no style tags, so its style table is 151646 rows, not the fixture's 151652.
    let folder = Folder::new("v1", "songgeneration_base").with_weights("model.safetensors");
    let err = folder.load_error();
    assert!(
        err.contains("type_info.output_proj.weight` has shape [151652, 8], expected [151646, 8]"),
        "{err}"
    );
}

#[test]
fn a_bad_config_value_names_the_key() {
    let folder = Folder::new("badcfg", "songgeneration_v2_tiny").with_weights("model.safetensors");
    let yaml = CONFIG_YAML.replace("num_heads: 2", "num_heads: many");
    std::fs::write(folder.model.join("config.yaml"), yaml).unwrap();
    let err = folder.load_error();
    assert!(
        err.contains("config.yaml") && err.contains("lm.num_heads"),
        "{err}"
    );
}

#[test]
fn half_precision_models_track_f32() {
    let folder = Folder::new("half", "songgeneration_v2_tiny").with_weights("model.safetensors");
    let case = case_tensors("fwd_first_prompt");
    let logits = |dtype: DType| {
        let mut lm = LanguageModel::load(&folder.paths(), &Device::Cpu, dtype).unwrap();
        let texts = songgen_engine::lm::TextConditions {
            lyrics: Some(
                "[verse] 夜色温柔.星光洒满窗台 ; [chorus] 我们一起唱.唱到天亮 ; [outro-short]"
                    .into(),
            ),
            style: Some("[Musicality-very-high], male, rock, energetic.".into()),
        };
        let prompt: Vec<Vec<u32>> = case["in.prompt_codes"]
            .squeeze(0)
            .unwrap()
            .to_vec2::<i64>()
            .unwrap()
            .into_iter()
            .map(|r| r.into_iter().map(|v| v as u32).collect())
            .collect();
        let c = lm.conditioners();
        let inputs = c.prepare(&texts, &c.prompt.fit(Some(&prompt))).unwrap();
        let prefix = c.prefix(&inputs, &Device::Cpu).unwrap();
        let net = lm.network();
        net.reset(1024);
        let out = net
            .forward(&case["in.sequence"], Some(&prefix), false)
            .unwrap();
        assert_eq!(out.logits.dtype(), DType::F32);
        out.logits
    };
    let want = &case["out.logits"];
    let f32_err = (logits(DType::F32) - want)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap();
    assert!(f32_err.to_scalar::<f32>().unwrap() < 2e-5);
    // Relative bounds ~2.5x the observed 0.075% (f16) and 0.84% (bf16) of the logit range.
    for (dtype, rel) in [(DType::F16, 2e-3), (DType::BF16, 2e-2)] {
        let err = (logits(dtype) - want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        let err = err.to_scalar::<f32>().unwrap();
        let scale = want
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            err < rel * scale,
            "{dtype:?}: max error {err} vs logit scale {scale}"
        );
    }
}
