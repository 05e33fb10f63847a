//! The style-prompt encoder end to end on the tiny fixture models: shapes the LM and renderer
//! expect, seeded reproducibility, odd inputs (short, mono, 96 kHz, clipped) and clear errors
//! for input that is not usable audio, plus progress and cancellation.

use std::ops::ControlFlow;

use candle_core::{Device, Tensor};
use songgen_engine::progress::{Cancelled, Progress};
use songgen_engine::prompt::audio_tokenizer::{MixedTokenizer, SeparateTokenizer};
use songgen_engine::prompt::demucs::HtDemucsConfig;
use songgen_engine::prompt::{PromptConfig, PromptEncoder, PromptFiles};
use songgen_engine::protocol::GenType;
use songgen_engine::render::vae::VaeConfig;

/// The prompt encoder with the fixture's tiny models (sizes from its manifest).
fn tiny_encoder() -> PromptEncoder {
    let dir = songgen_tests::fixture_dir("prompt");
    let text = std::fs::read_to_string(dir.join("manifest.json")).unwrap();
    let m: serde_json::Value = serde_json::from_str(&text).unwrap();
    let c = &m["config"];
    let demucs: HtDemucsConfig =
        serde_json::from_value(c["demucs"]["tiny_kwargs"].clone()).unwrap();
    let vae = VaeConfig {
        channels: serde_json::from_value(c["vae_encoder"]["channels"].clone()).unwrap(),
        c_mults: serde_json::from_value(c["vae_encoder"]["c_mults"].clone()).unwrap(),
        strides: serde_json::from_value(c["vae_encoder"]["strides"].clone()).unwrap(),
        encoder_latent_dim: serde_json::from_value(c["vae_encoder"]["latent_dim"].clone()).unwrap(),
        latent_dim: 64,
        ..VaeConfig::default()
    };
    let (vocal, bgm) = SeparateTokenizer::real_streams();
    let cfg = PromptConfig {
        tokenizer: serde_json::from_value(c["tokenizer"].clone()).unwrap(),
        vq: serde_json::from_value(c["vq"].clone()).unwrap(),
        musicfm: serde_json::from_value(c["musicfm"].clone()).unwrap(),
        mixed: MixedTokenizer::real_stream(),
        vocal,
        bgm,
        demucs,
        vae,
        vocal_stem: 3,
        prompt_seconds: 10,
        pad_token: 16385,
    };
    let w = |name: &str| dir.join("weights").join(format!("{name}.safetensors"));
    let files = PromptFiles {
        mixed_tokenizer: w("musicfm_mixed"),
        septoken: w("septoken"),
        demucs: w("demucs"),
        vae: w("vae"),
    };
    PromptEncoder::from_files(&files, &cfg, &Device::Cpu).unwrap()
}

/// A few seconds of "music": two detuned tones, a bass line and clicks, per channel.
fn clip(seconds: f64, rate: u32, channels: usize, gain: f32) -> Vec<Vec<f32>> {
    let n = (seconds * rate as f64) as usize;
    (0..channels)
        .map(|c| {
            (0..n)
                .map(|i| {
                    let t = i as f32 / rate as f32;
                    let tone = (2.0 * std::f32::consts::PI * (220.0 + 3.0 * c as f32) * t).sin();
                    let bass = (2.0 * std::f32::consts::PI * 55.0 * t).sin();
                    let click = if (t * 4.0).fract() < 0.01 { 0.8 } else { 0.0 };
                    gain * (0.4 * tone + 0.3 * bass + click)
                })
                .collect()
        })
        .collect()
}

fn no_progress() -> impl FnMut(Progress) -> ControlFlow<()> {
    |_| ControlFlow::Continue(())
}

fn ints(t: &Tensor) -> Vec<i64> {
    t.flatten_all().unwrap().to_vec1::<i64>().unwrap()
}

#[test]
fn a_full_length_clip_gives_the_lm_and_renderer_shapes_and_is_seeded() {
    let enc = tiny_encoder();
    // 10 s at 48 kHz, driven into clipping (peaks above 1): the reference rescales, no error.
    let audio: Vec<Vec<f32>> = clip(10.0, 48_000, 2, 1.6)
        .into_iter()
        .map(|c| c.into_iter().map(|v| v.clamp(-1.2, 1.2)).collect())
        .collect();
    let mut reports = Vec::new();
    let mut progress = |p: Progress| {
        reports.push(p);
        ControlFlow::Continue(())
    };
    let e = enc.encode_full(&audio, 48_000, 11, &mut progress).unwrap();
    assert_eq!(e.tokens.dims(), &[1, 3, 250]);
    assert!(ints(&e.tokens).iter().all(|&t| (0..16384).contains(&t)));
    assert_eq!(e.render.latent.dims(), &[1, 64, 250]);
    assert_eq!(e.render.codes_vocal.dims(), &[1, 1, 251]);
    assert_eq!(e.render.codes_bgm.dims(), &[1, 1, 251]);
    // The LM's vocal/bgm rows are the renderer's codes cut to 250 frames.
    assert_eq!(
        ints(&e.tokens.narrow(1, 1, 1).unwrap()),
        ints(&e.render.codes_vocal.narrow(2, 0, 250).unwrap())
    );
    assert_eq!(e.separated.vocal.dims(), &[2, 480_000]);
    // bgm = full − vocal.
    let sum = (&e.separated.vocal + &e.separated.bgm).unwrap();
    let err = (sum - &e.separated.full)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(err < 1e-6, "vocal + bgm differs from the clip by {err}");
    // Progress counts up to its total, ending there.
    let last = reports.last().unwrap();
    assert_eq!(last.done, last.total);
    assert!(reports.windows(2).all(|w| w[1].done == w[0].done + 1));

    // Same seed, same result; another seed changes the sampled latent.
    let again = enc
        .encode(&audio, 48_000, GenType::Mixed, 11, &mut no_progress())
        .unwrap();
    assert_eq!(ints(&again.tokens), ints(&e.tokens));
    let l = again.render.mixed.unwrap().latent;
    let d = (&l - &e.render.latent)
        .unwrap()
        .abs()
        .unwrap()
        .sum_all()
        .unwrap();
    assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
    let other = enc
        .encode(&audio, 48_000, GenType::Mixed, 12, &mut no_progress())
        .unwrap();
    let d = (other.render.mixed.unwrap().latent - &e.render.latent)
        .unwrap()
        .abs()
        .unwrap()
        .sum_all()
        .unwrap();
    assert!(d.to_scalar::<f32>().unwrap() > 0.0);
}

#[test]
fn short_mono_and_high_rate_clips_are_padded_like_the_reference() {
    let enc = tiny_encoder();
    // 3 s mono at 44.1 kHz: 76 real frames (int(3·25)+1), the rest is the pad token.
    let e = enc
        .encode_full(&clip(3.0, 44_100, 1, 0.5), 44_100, 1, &mut no_progress())
        .unwrap();
    assert_eq!(e.tokens.dims(), &[1, 3, 250]);
    let rows = e.tokens.squeeze(0).unwrap().to_vec2::<i64>().unwrap();
    for row in &rows {
        assert!(
            row[..76].iter().all(|&t| (0..16384).contains(&t)),
            "{row:?}"
        );
        assert!(
            row[76..].iter().all(|&t| t == enc.config().pad_token),
            "{row:?}"
        );
    }
    assert_eq!(e.render.latent.dims(), &[1, 64, 75]);
    assert_eq!(e.render.codes_bgm.dims(), &[1, 1, 76]);

    // 2 s stereo at 96 kHz.
    let e = enc
        .encode_full(&clip(2.0, 96_000, 2, 0.5), 96_000, 1, &mut no_progress())
        .unwrap();
    assert_eq!(e.separated.full.dims(), &[2, 96_000]);
    assert_eq!(e.render.latent.dims(), &[1, 64, 50]);
    assert_eq!(ints(&e.tokens)[51], enc.config().pad_token);
    assert_eq!(enc.config().pad_token, 16385);
}

#[test]
fn unusable_input_is_a_clear_error_and_cancelling_stops() {
    let enc = tiny_encoder();
    let run = |audio: &[Vec<f32>], rate: u32| {
        enc.encode(audio, rate, GenType::Mixed, 0, &mut no_progress())
            .err()
            .map(|e| format!("{e:#}"))
            .expect("an error")
    };
    let err = run(&[vec![0.0; 48_000], vec![0.0; 48_000]], 48_000);
    assert!(err.contains("silent"), "{err}");
    let mut nan = clip(1.0, 48_000, 2, 0.5);
    nan[1][100] = f32::NAN;
    let err = run(&nan, 48_000);
    assert!(
        err.contains("not valid audio") && err.contains("channel 1"),
        "{err}"
    );
    let err = run(&[], 48_000);
    assert!(err.contains("no channels"), "{err}");
    let err = run(&[vec![0.1; 1000], vec![0.1; 999]], 48_000);
    assert!(err.contains("differ in length"), "{err}");
    let err = run(&clip(0.05, 48_000, 2, 0.5), 48_000);
    assert!(err.contains("at least"), "{err}");
    let err = run(&clip(1.0, 48_000, 2, 0.5), 0);
    assert!(err.contains("sample rate"), "{err}");

    let mut calls = 0;
    let mut cancel = |_: Progress| {
        calls += 1;
        ControlFlow::Break(())
    };
    let err = enc
        .encode(
            &clip(1.0, 44_100, 2, 0.5),
            44_100,
            GenType::Separate,
            0,
            &mut cancel,
        )
        .unwrap_err();
    assert!(err.downcast_ref::<Cancelled>().is_some(), "{err:#}");
    assert_eq!(calls, 1);
}

#[test]
fn separating_a_prefix_equals_the_start_of_separating_everything() {
    use songgen_engine::io::weights::WeightFile;
    use songgen_engine::prompt::demucs::apply::ApplyOptions;
    use songgen_engine::prompt::demucs::HtDemucs;
    let dir = songgen_tests::fixture_dir("prompt");
    let text = std::fs::read_to_string(dir.join("manifest.json")).unwrap();
    let m: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cfg: HtDemucsConfig =
        serde_json::from_value(m["config"]["demucs"]["tiny_kwargs"].clone()).unwrap();
    let vb = WeightFile::open(dir.join("weights/demucs.safetensors"))
        .unwrap()
        .var_builder(candle_core::DType::F32, &Device::Cpu);
    let demucs = HtDemucs::load(&cfg, vb).unwrap();
    let rows = clip(12.0, 44_100, 2, 0.5);
    let len = rows[0].len();
    let mix = Tensor::from_vec(rows.concat(), (2, len), &Device::Cpu).unwrap();
    let opts = ApplyOptions {
        shift_offset: 5000,
        overlap: 0.25,
    };
    let keep = 5 * 44_100;
    let (mut whole_calls, mut prefix_calls) = (0, 0);
    let whole = demucs
        .apply(&mix, opts, &mut |_, _| {
            whole_calls += 1;
            Ok(())
        })
        .unwrap();
    let prefix = demucs
        .apply_prefix(&mix, opts, keep, &mut |_, _| {
            prefix_calls += 1;
            Ok(())
        })
        .unwrap();
    assert_eq!(prefix.dims(), &[4, 2, keep]);
    assert_eq!((whole_calls, prefix_calls), (3, 1));
    assert_eq!(demucs.chunks(len, opts), 3);
    assert_eq!(demucs.chunks_prefix(len, keep, opts), 1);
    let diff = (whole.narrow(2, 0, keep).unwrap() - &prefix)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(diff, 0.0);
}
