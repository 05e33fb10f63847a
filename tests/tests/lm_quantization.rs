//! Quantized LM weights against f32 on the parity fixture's LM (random weights, dim 8, 3 + 2
//! layers, the real vocabularies): teacher-forced over 240 decode steps, q8_0 picks the same
//! greedy token as f32 for at least 95 % of (step, CFG row, stream) slots; q4_k is reported.
//! The LM's weights are quantized at load and, for q8_0, also through a `songgen quantize`
//! GGUF file, which must give the same network.

use candle_core::{DType, Device};
use songgen_engine::lm::conditioners::ConditionPrefix;
use songgen_engine::lm::{quality, LanguageModel, LmConfig, LmVersion, TextConditions};
use songgen_engine::parity::Manifest;
use songgen_engine::quant::LmPrecision;
use songgen_tests::fixture_dir;

const STEPS: usize = 240;

fn load(weights: &std::path::Path, precision: LmPrecision) -> LanguageModel {
    let dir = fixture_dir("lelm");
    let manifest = Manifest::read(&dir).unwrap();
    let cfg = LmConfig::from_tree(&manifest.config, LmVersion::V2).unwrap();
    LanguageModel::from_parts_with(
        cfg,
        &dir.join("tokenizer"),
        weights,
        &Device::Cpu,
        DType::F32,
        precision,
    )
    .unwrap()
}

fn prefix(lm: &LanguageModel) -> ConditionPrefix {
    let c = lm.conditioners();
    let prompt = c.prompt.fit(None);
    let texts = TextConditions {
        lyrics: Some("[verse] the river runs. under the bridge ; [chorus] la la la".into()),
        style: Some("[Musicality-very-high], female, pop, piano".into()),
    };
    let inputs = c.prepare(&texts, &prompt).unwrap();
    c.prefix(&inputs, &Device::Cpu).unwrap()
}

#[test]
fn q8_0_agrees_with_f32_on_the_fixture_lm() {
    let weights = fixture_dir("lelm").join("model.safetensors");
    let mut f32 = load(&weights, LmPrecision::F32);
    let special = f32.config().special_id();
    let p = prefix(&f32);
    let mut report = Vec::new();
    for precision in [LmPrecision::Q8_0, LmPrecision::Q4K] {
        let mut q = load(&weights, precision);
        let a = quality::compare(f32.network(), q.network(), &p, special, STEPS).unwrap();
        report.push(format!(
            "{precision}: greedy agreement {:.1} % of {} tokens, logit error RMS/RMS mean {:.4} worst {:.4}, max abs {:.4}",
            100.0 * a.agreement(),
            a.tokens,
            a.mean_rel_rms(),
            a.worst_rel_rms(),
            a.max_abs
        ));
        assert!(
            a.mean_rel_rms() > 0.0,
            "{precision} did not change the logits at all"
        );
        if precision == LmPrecision::Q8_0 {
            assert!(a.agreement() >= 0.95, "{}", report.join("\n"));
        }
    }
    println!("{}", report.join("\n"));
}

#[test]
fn a_quantize_gguf_file_loads_to_the_same_network() {
    let weights = fixture_dir("lelm").join("model.safetensors");
    let dir = songgen_tests::temp_dir("quant");
    let gguf = dir.join("model.q8_0.gguf");
    let (total, quantized) =
        songgen_engine::lm::write_quantized(&weights, &gguf, LmPrecision::Q8_0).unwrap();
    // 5 layers × 7 linear weights + 3 heads + 2 bridge layers.
    assert_eq!(quantized, 5 * 7 + 3 + 2);
    assert!(total > quantized);
    let mut at_load = load(&weights, LmPrecision::Q8_0);
    let mut from_file = load(&gguf, LmPrecision::Q8_0);
    let special = at_load.config().special_id();
    let p = prefix(&at_load);
    let a = quality::compare(at_load.network(), from_file.network(), &p, special, 20).unwrap();
    assert_eq!(a.max_abs, 0.0);
    // The file states its precision; asking for another one is an error, not a silent mix.
    let err = LanguageModel::from_parts_with(
        at_load.config().clone(),
        &fixture_dir("lelm").join("tokenizer"),
        &gguf,
        &Device::Cpu,
        DType::F32,
        LmPrecision::Q4K,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("holds q8_0 weights"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
