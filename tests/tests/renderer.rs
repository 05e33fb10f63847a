//! The renderer's public API on the decoder fixtures' tiny random-weight models: input
//! validation, weight-file errors, generation types, progress and cancellation.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use songgen_engine::io::weights::WeightFile;
use songgen_engine::parity::decoder::{load_renderer, render_config};
use songgen_engine::parity::Manifest;
use songgen_engine::progress::{Cancelled, Progress, Stage};
use songgen_engine::protocol::GenType;
use songgen_engine::protocol::Stem;
use songgen_engine::render::{PromptSet, Renderer};
use songgen_tests::fixture_dir;

fn renderer() -> Renderer {
    let dir = fixture_dir("decoder");
    let manifest = Manifest::read(&dir).unwrap();
    load_renderer(&dir, &manifest, &Device::Cpu).unwrap()
}

fn tokens(t: usize, bad: Option<(usize, usize, i64)>) -> Tensor {
    let mut v: Vec<i64> = (0..3 * t).map(|i| (i as i64 * 7919) % 16384).collect();
    if let Some((stream, frame, code)) = bad {
        v[stream * t + frame] = code;
    }
    Tensor::from_vec(v, (1, 3, t), &Device::Cpu).unwrap()
}

#[test]
fn out_of_range_tokens_are_rejected_before_any_compute() {
    let r = renderer();
    let mut calls = 0;
    let mut progress = |_: Progress| {
        calls += 1;
        ControlFlow::Continue(())
    };
    for (stream, name) in [(1, "vocal"), (2, "bgm")] {
        for code in [16384, 16385, -1] {
            let err = r
                .render(
                    &tokens(40, Some((stream, 17, code))),
                    &PromptSet::none(),
                    GenType::Separate,
                    1,
                    &mut progress,
                )
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("{name} token {code} at frame 17")),
                "{err}"
            );
        }
    }
    // The mixed stream is not decoded, so its ids are not checked.
    let err = r.render(
        &tokens(3, None).narrow(1, 0, 2).unwrap(),
        &PromptSet::none(),
        GenType::Mixed,
        1,
        &mut progress,
    );
    assert!(err.unwrap_err().to_string().contains("[1, 3, T]"));
    assert_eq!(calls, 0, "progress was reported: compute started");
}

/// Rewrites `src` into `dst` with `edit` applied to its tensors.
fn rewrite(src: &Path, dst: &Path, edit: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let mut tensors = candle_core::safetensors::load(src, &Device::Cpu).unwrap();
    edit(&mut tensors);
    candle_core::safetensors::save(&tensors, dst).unwrap();
}

fn load_with_flow(flow: &Path) -> String {
    let dir = fixture_dir("decoder");
    let manifest = Manifest::read(&dir).unwrap();
    let vae = WeightFile::open(manifest.weight_path(&dir, Some("vae")).unwrap()).unwrap();
    let file = match WeightFile::open(flow) {
        Ok(f) => f,
        Err(e) => return e.to_string(),
    };
    match Renderer::from_files(
        file,
        vae,
        render_config(&manifest).unwrap(),
        &Device::Cpu,
        DType::F32,
    ) {
        Ok(_) => panic!("{} loaded without an error", flow.display()),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn bad_weight_files_name_the_file_and_tensor() {
    let dir = fixture_dir("decoder");
    let src = dir.join("flow.safetensors");
    let tmp = songgen_tests::temp_dir("renderer-weights");

    let wrong_shape = tmp.join("wrong_shape.safetensors");
    let key = "cfm_wrapper.estimator.h.1.attn.c_attn.weight";
    rewrite(&src, &wrong_shape, |t| {
        let w = t[key].clone();
        t.insert(key.into(), w.t().unwrap().contiguous().unwrap());
    });
    let err = load_with_flow(&wrong_shape);
    assert!(
        err.contains("wrong_shape.safetensors")
            && err.contains(key)
            && err.contains("expected [280, 840]"),
        "{err}"
    );

    let missing = tmp.join("missing.safetensors");
    let key = "rvq_bestrq_bgm_emb.quantizers.0.out_proj.weight_g";
    rewrite(&src, &missing, |t| {
        t.remove(key);
    });
    let err = load_with_flow(&missing);
    assert!(
        err.contains("missing.safetensors") && err.contains(key),
        "{err}"
    );

    let truncated = tmp.join("truncated.safetensors");
    let bytes = std::fs::read(&src).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_with_flow(&truncated);
    assert!(err.contains("truncated.safetensors"), "{err}");

    // A VAE checkpoint handed in as the flow: the first missing flow tensor is named.
    let err = load_with_flow(&dir.join("vae.safetensors"));
    assert!(
        err.contains("vae.safetensors") && err.contains("normfeat.counts"),
        "{err}"
    );
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn separate_renders_three_stems_with_progress_and_cancels() {
    let r = renderer();
    let t = 29;
    let mut seen: Vec<Progress> = Vec::new();
    let stems = r
        .render(
            &tokens(t, None),
            &PromptSet::none(),
            GenType::Separate,
            42,
            &mut |p: Progress| {
                seen.push(p);
                ControlFlow::Continue(())
            },
        )
        .unwrap();
    // target_len = int(29 / 100 · 4 · 48000) = 55679, not 29·1920 (the reference's float truncation).
    assert_eq!(stems.num_samples, 55_679);
    assert_eq!(stems.sample_rate, 48_000);
    let names: Vec<_> = stems.audio.iter().map(|(s, _)| s.name()).collect();
    assert_eq!(names, ["mixed", "vocal", "bgm"]);
    for (_, a) in &stems.audio {
        assert_eq!(a.dims(), [2, 55_679]);
    }
    let diff = (stems.get(Stem::Mixed).unwrap() - stems.get(Stem::Vocal).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff > 0.0, "vocal stem equals the mix");
    // 3 decodes × 1 window × 10 Euler steps, 3 × 11 VAE chunks; counts rise to their totals.
    let render: Vec<_> = seen.iter().filter(|p| p.stage == Stage::Render).collect();
    let vae: Vec<_> = seen.iter().filter(|p| p.stage == Stage::Vae).collect();
    assert_eq!(render.len(), 30);
    assert_eq!(vae.len(), 33);
    assert!(render
        .iter()
        .enumerate()
        .all(|(i, p)| p.done == i as u64 + 1 && p.total == 30));
    assert!(vae
        .iter()
        .enumerate()
        .all(|(i, p)| p.done == i as u64 + 1 && p.total == 33));

    // Cancelling at the first VAE chunk stops the render with `Cancelled`.
    let mut chunks = 0;
    let err = r
        .render(
            &tokens(t, None),
            &PromptSet::none(),
            GenType::Mixed,
            42,
            &mut |p: Progress| {
                if p.stage == Stage::Vae {
                    chunks += 1;
                    return ControlFlow::Break(());
                }
                ControlFlow::Continue(())
            },
        )
        .unwrap_err();
    assert!(err.downcast_ref::<Cancelled>().is_some(), "{err:#}");
    assert_eq!(chunks, 1);
}

#[test]
fn vae_json_config_matches_the_manifest() {
    let dir = fixture_dir("decoder");
    let manifest = Manifest::read(&dir).unwrap();
    let json = manifest.weight_path(&dir, Some("vae_config")).unwrap();
    let parsed = songgen_engine::render::vae::VaeConfig::from_json_file(&json).unwrap();
    assert_eq!(parsed, render_config(&manifest).unwrap().vae);
}
