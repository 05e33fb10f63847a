//! The tiny model folder is in the released layout: its checkpoints have the tensor names of
//! the parity fixtures (made with the reference's own classes; the LM's shapes too), its
//! PyTorch zips load, it is deterministic, and `songgen convert` turns it into safetensors.
//! (The real loaders load it in `cli_generate.rs`.)

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::Device;
use songgen_engine::io::weights::WeightFile;
use songgen_tests::{fixture_dir, songgen, temp_dir, tiny_model};

fn shapes(path: &Path, skip: &[&str]) -> BTreeMap<String, Vec<usize>> {
    let w = WeightFile::open(path).unwrap();
    w.names()
        .filter(|n| !skip.iter().any(|s| n.starts_with(s)))
        .map(|n| (n.to_string(), w.shape(n).unwrap().to_vec()))
        .collect()
}

#[test]
fn checkpoints_match_the_fixture_layouts() {
    let dir = temp_dir("tiny-layout");
    let tiny = tiny_model::write(&dir, 1).unwrap();
    assert_eq!(
        shapes(&tiny.model_dir.join("model.pt"), &[]),
        shapes(&fixture_dir("lelm").join("model.pt"), &[])
    );
    // The flow and the VAE are narrower and shallower than the fixtures' but have the same
    // tensor names (the fixture's flow file also holds small prompt-encoder stand-ins).
    let names = |m: BTreeMap<String, Vec<usize>>| m.into_keys().collect::<Vec<_>>();
    let fixture_flow = names(shapes(
        &fixture_dir("decoder").join("flow.safetensors"),
        &["bestrq.", "hubert."],
    ));
    let deep_blocks: Vec<String> = (tiny_model::FLOW_LAYERS..8)
        .map(|i| format!("cfm_wrapper.estimator.h.{i}."))
        .collect();
    let fixture_flow: Vec<String> = fixture_flow
        .into_iter()
        .filter(|n| !deep_blocks.iter().any(|b| n.starts_with(b)))
        .collect();
    let septoken = tiny
        .runtime_dir
        .join("ckpt/model_septoken/model_2.safetensors");
    let flow = shapes(&septoken, &["bestrq."]);
    assert_eq!(
        flow["cfm_wrapper.estimator.wpe.weight"],
        [1000, tiny_model::FLOW_WIDTH]
    );
    assert_eq!(names(flow), fixture_flow);
    assert_eq!(
        names(shapes(
            &tiny
                .runtime_dir
                .join("ckpt/vae/autoencoder_music_1320k.ckpt"),
            &[]
        )),
        names(shapes(&fixture_dir("decoder").join("vae.ckpt"), &[]))
    );
    let ours: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tiny.runtime_dir.join("ckpt/vae/stable_audio_1920_vae.json"))
            .unwrap(),
    )
    .unwrap();
    let theirs: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture_dir("decoder").join("vae_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        ours["model"]["decoder"]["type"],
        theirs["model"]["decoder"]["type"]
    );
    assert_eq!(
        ours["model"]["decoder"]["config"]["channels"],
        tiny_model::VAE_CHANNELS
    );
    // The prompt encoders have the prompt fixture's names (its MusicFM is as deep), at the
    // tiny widths; HTDemucs is the fixture's.
    let prompt = fixture_dir("prompt").join("weights");
    let bestrq = |path: &Path| {
        names(shapes(path, &[]))
            .into_iter()
            .filter(|n| n.starts_with("bestrq.") || n.starts_with("rsq48tobestrq"))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        bestrq(&septoken),
        bestrq(&prompt.join("septoken.safetensors"))
    );
    let mixed = tiny
        .runtime_dir
        .join("ckpt/model_1rvq/model_2_fixed.safetensors");
    assert_eq!(
        names(shapes(&mixed, &[])),
        names(shapes(&prompt.join("musicfm_mixed.safetensors"), &[]))
    );
    assert_eq!(
        shapes(&mixed, &[])["bestrq.model.conv.linear.weight"],
        [tiny_model::RVQ_DIM, 32 * tiny_model::MUSICFM_CONV]
    );
    assert_eq!(
        shapes(
            &tiny
                .runtime_dir
                .join("third_party/demucs/ckpt/htdemucs.pth"),
            &[]
        ),
        shapes(&prompt.join("demucs.safetensors"), &[])
    );
    // Every tensor reads back with finite values.
    let lm = WeightFile::open(tiny.model_dir.join("model.pt")).unwrap();
    let t = lm
        .load(
            "audiolm.condition_provider.conditioners.prompt_audio.EOT_emb",
            &Device::Cpu,
        )
        .unwrap();
    assert_eq!(t.dims(), [1, tiny_model::LM_DIM]);
    let pad = lm
        .load(
            "audiolm.condition_provider.conditioners.description.output_proj.weight",
            &Device::Cpu,
        )
        .unwrap()
        .get(151_643)
        .unwrap()
        .to_dtype(candle_core::DType::F32)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(pad.iter().all(|v| *v == 0.0));
}

#[test]
fn the_same_seed_writes_identical_files() {
    let a = tiny_model::write(&temp_dir("tiny-seed-a"), 5).unwrap();
    let b = tiny_model::write(&temp_dir("tiny-seed-b"), 5).unwrap();
    let c = tiny_model::write(&temp_dir("tiny-seed-c"), 6).unwrap();
    for rel in [
        "songgeneration_v2_tiny/model.pt",
        "runtime/ckpt/model_septoken/model_2.safetensors",
        "runtime/ckpt/model_1rvq/model_2_fixed.safetensors",
        "runtime/ckpt/vae/autoencoder_music_1320k.ckpt",
        "runtime/tools/new_auto_prompt.pt",
    ] {
        let root = |m: &tiny_model::TinyModel| m.model_dir.parent().unwrap().join(rel);
        let (x, y, z) = (
            std::fs::read(root(&a)).unwrap(),
            std::fs::read(root(&b)).unwrap(),
            std::fs::read(root(&c)).unwrap(),
        );
        assert!(x == y, "{rel} differs between two writes with one seed");
        assert!(x != z, "{rel} does not depend on the seed");
    }
}

#[test]
fn convert_writes_the_same_tensors_as_safetensors() {
    let home = temp_dir("tiny-convert");
    let tiny = tiny_model::write(&home.join("models"), 3).unwrap();
    let src = tiny.model_dir.join("model.pt");
    let out = home.join("model.safetensors");
    let o = songgen(&home)
        .arg("convert")
        .arg(&src)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (a, b) = (
        WeightFile::open(&src).unwrap(),
        WeightFile::open(&out).unwrap(),
    );
    assert_eq!(a.names().count(), b.names().count());
    for name in a.names() {
        assert_eq!(a.dtype(name), b.dtype(name), "{name}");
        let x = a.load(name, &Device::Cpu).unwrap().flatten_all().unwrap();
        let y = b.load(name, &Device::Cpu).unwrap().flatten_all().unwrap();
        let same = x.eq(&y).unwrap().min(0).unwrap().to_scalar::<u8>().unwrap();
        assert_eq!(same, 1, "{name}");
    }
    // A second conversion does not replace the first.
    let o = songgen(&home)
        .arg("convert")
        .arg(&src)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("already exists"));
}
