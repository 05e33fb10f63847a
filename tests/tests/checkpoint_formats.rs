//! The same state dict stored as PyTorch pickle and as safetensors loads to identical tensors.

use candle_core::{DType, Device};
use songgen_engine::io::weights::WeightFile;
use songgen_tests::fixture_dir;

fn same_tensors(a: &str, b: &str) {
    let a = WeightFile::open(a).unwrap();
    let b = WeightFile::open(b).unwrap();
    let mut names: Vec<_> = a.names().collect();
    names.sort();
    let mut names_b: Vec<_> = b.names().collect();
    names_b.sort();
    assert_eq!(names, names_b);
    for name in names {
        assert_eq!(a.shape(name), b.shape(name), "{name}");
        let x = a
            .load(name, &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let y = b
            .load(name, &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let diff = (x - y)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "{name}");
    }
}

#[test]
fn lm_model_pt_matches_safetensors() {
    let dir = fixture_dir("lelm");
    same_tensors(
        dir.join("model.pt").to_str().unwrap(),
        dir.join("model.safetensors").to_str().unwrap(),
    );
}

#[test]
fn vae_lightning_ckpt_matches_safetensors() {
    let dir = fixture_dir("decoder");
    same_tensors(
        dir.join("vae.ckpt").to_str().unwrap(),
        dir.join("vae.safetensors").to_str().unwrap(),
    );
}
