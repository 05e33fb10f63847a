//! Quantization quality of LeLM at the mid-size config of `benches/lelm.rs` (dim 1024,
//! 8 + 4 layers, the real vocabulary and prefix length), random N(0, 0.02) weights:
//! q8_0 and q4_k against f32, teacher-forced over `STEPS` decode steps (see
//! `songgen_engine::lm::quality`).
//!
//! `cargo run --release -p songgen-engine --example lm_quant_quality [-- STEPS]`

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use songgen_engine::lm::conditioners::ConditionPrefix;
use songgen_engine::lm::model::LeLm;
use songgen_engine::lm::{quality, LmConfig};
use songgen_engine::quant::{LinearLoader, LmPrecision};

fn main() -> anyhow::Result<()> {
    let steps: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(200);
    let cfg = LmConfig::mid_size();
    let dev = Device::Cpu;
    // Create the variables, then give them the reference's random init (N(0, 0.02)).
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev).pp("audiolm");
    LeLm::load(&cfg, vb.clone())?;
    quality::randomize(&varmap)?;
    let mut reference = LeLm::load(&cfg, vb.clone())?;
    let p = cfg.prefix_len();
    let rand = || Tensor::randn(0f32, 1.0, (2, p, cfg.dim), &dev);
    let prefix = ConditionPrefix {
        stream1: rand()?,
        stream2: rand()?,
    };
    for precision in [LmPrecision::Q8_0, LmPrecision::Q4K] {
        let mut q = LeLm::load_with(&cfg, vb.clone(), &LinearLoader::new(precision, None))?;
        let a = quality::compare(&mut reference, &mut q, &prefix, cfg.special_id(), steps)?;
        println!(
            "mid config {precision}: {steps} steps, greedy agreement {:.1} % of {} tokens, logit error RMS/RMS mean {:.4} worst {:.4}, max abs {:.4}",
            100.0 * a.agreement(),
            a.tokens,
            a.mean_rel_rms(),
            a.worst_rel_rms(),
            a.max_abs
        );
    }
    Ok(())
}
