//! CPU cost of the renderer's two inner loops at the released model widths (random weights):
//! one flow step (the 16-layer 2200-wide estimator on the CFG batch of one 1000-frame window)
//! and one VAE chunk (128 latent frames → 245,760 stereo samples).
//!
//! `cargo bench -p songgen-engine --bench render`

use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use songgen_engine::io::weights::RandomWeights;
use songgen_engine::render::flow::{EstimatorConfig, FlowEstimator};
use songgen_engine::render::vae::{OobleckDecoder, VaeConfig};

fn random_vb() -> VarBuilder<'static> {
    RandomWeights::var_builder(DType::F32, &Device::Cpu)
}

fn benches(c: &mut Criterion) {
    // As the `songgen` binary runs.
    songgen_engine::heap::keep_freed_memory();
    let dev = Device::Cpu;
    let mut g = c.benchmark_group("render");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(1));

    let cfg = EstimatorConfig::songgen_v2();
    let est = FlowEstimator::load(random_vb(), &cfg, Some(64)).expect("estimator");
    let x = Tensor::randn(0f32, 1., (2, cfg.n_positions, cfg.n_embd), &dev).unwrap();
    let t = Tensor::new(&[0.3f32, 0.3], &dev).unwrap();
    g.bench_function("flow_step_cfg2_L1000_d2200", |b| {
        b.iter(|| est.velocity(&x, &t).unwrap())
    });
    drop(est);

    let vae = OobleckDecoder::load(random_vb(), &VaeConfig::default()).expect("vae decoder");
    let z = Tensor::randn(0f32, 1., (1, 64, 128), &dev).unwrap();
    g.bench_function("vae_chunk_128_frames_c128", |b| {
        b.iter(|| vae.decode(&z).unwrap())
    });
    g.finish();
}

criterion_group!(render, benches);
criterion_main!(render);
