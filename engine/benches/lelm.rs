//! CPU cost of LeLM's hot paths on a mid-size random model (dim 1024, 8 main + 4 sub layers,
//! head_dim 128, the real code vocabulary and condition-prefix length):
//! - `prefill`: the first call (952 prefix positions + column 0, both CFG rows);
//! - `decode_step`: one KV-cached step (one column, both CFG rows) after the prefix; the cache
//!   keeps growing across iterations, as during generation; with the linear weights in f32
//!   and in the quantized precisions q8_0 and q4_k (`decode_step_q8_0`, ...);
//! - `logit_processor`: CFG, penalty, ban, softmax and top-k of one step.
//!
//! Weights are random N(0, 0.02) (built in memory, as the PyTorch side of docs/perf.md);
//! timings do not depend on their values.

use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use criterion::{criterion_group, criterion_main, Criterion};
use rand::SeedableRng;
use songgen_engine::lm::conditioners::ConditionPrefix;
use songgen_engine::lm::model::LeLm;
use songgen_engine::lm::sampler::LogitProcessor;
use songgen_engine::lm::LmConfig;
use songgen_engine::protocol::SamplingOptions;
use songgen_engine::quant::{LinearLoader, LmPrecision};

struct Setup {
    model: LeLm,
    prefix: ConditionPrefix,
    column: Tensor,
    capacity: usize,
}

fn setup(precision: LmPrecision) -> Setup {
    let cfg = LmConfig::mid_size();
    let device = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device).pp("audiolm");
    LeLm::load(&cfg, vb.clone()).expect("variables");
    songgen_engine::lm::quality::randomize(&varmap).expect("random weights");
    let model =
        LeLm::load_with(&cfg, vb, &LinearLoader::new(precision, None)).expect("random model");
    let p = cfg.prefix_len();
    let rand = || Tensor::randn(0f32, 1.0, (2, p, cfg.dim), &device).unwrap();
    let prefix = ConditionPrefix {
        stream1: rand(),
        stream2: rand(),
    };
    let column = Tensor::full(cfg.special_id(), (2, 3, 1), &device).unwrap();
    Setup {
        model,
        prefix,
        column,
        capacity: p + cfg.max_gen_len() + cfg.max_delay() + 1,
    }
}

fn bench(c: &mut Criterion) {
    // As the `songgen` binary runs.
    songgen_engine::heap::keep_freed_memory();
    let mut s = setup(LmPrecision::F32);
    let mut group = c.benchmark_group("lelm_d1024_l8+4");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));

    group.bench_function("prefill_953_positions", |b| {
        b.iter(|| {
            s.model.reset(s.capacity);
            s.model.forward(&s.column, Some(&s.prefix), false).unwrap()
        })
    });

    s.model.reset(s.capacity);
    s.model.forward(&s.column, Some(&s.prefix), false).unwrap();
    group.bench_function("decode_step", |b| {
        b.iter(|| s.model.forward(&s.column, None, false).unwrap())
    });
    drop(s);

    for precision in [LmPrecision::Q8_0, LmPrecision::Q4K] {
        let mut q = setup(precision);
        q.model.reset(q.capacity);
        q.model.forward(&q.column, Some(&q.prefix), false).unwrap();
        group.bench_function(format!("decode_step_{precision}"), |b| {
            b.iter(|| q.model.forward(&q.column, None, false).unwrap())
        });
    }

    let cfg = LmConfig::mid_size();
    let processor = LogitProcessor::new(SamplingOptions::default(), cfg.code_size).unwrap();
    let logits = || {
        Tensor::randn(0f32, 3.0, (3, cfg.logit_width()), &Device::Cpu)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap()
    };
    let (cond, uncond) = (logits(), logits());
    let pool: Vec<[u32; 3]> = (0..50u32).map(|i| [i * 97, i * 31, i * 7]).collect();
    let banned: Vec<u32> = (0..250u32).map(|i| i * 61).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    group.bench_function("logit_processor_step", |b| {
        b.iter(|| {
            let guided = processor.guide(&cond, &uncond, &pool, &banned);
            processor.choose(&guided, &mut rng)
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
