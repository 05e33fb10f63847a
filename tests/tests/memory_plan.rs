//! The memory plan drives the engine: `doctor --plan` prints it (from shapes, no weights), a
//! tiny device-memory limit (`SONGGEN_DEVICE_MEMORY`) makes the tiny model run staged, and a
//! limit nothing fits is refused up front with what it needs and what is free.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

use candle_core::{DType, Device};
use songgen_engine::paths::ModelPaths;
use songgen_engine::plan::Residency;
use songgen_engine::quant::LmPrecision;
use songgen_engine::service::models::{self, LoadOptions};
use songgen_tests::{songgen, temp_dir, tiny_model};

const LYRICS: &str = "[verse] hello there. how are you ; [chorus] la la la";

fn model() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        tiny_model::write(&temp_dir("plan-model"), 5)
            .unwrap()
            .model_dir
    })
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn generate(home: &Path, memory: Option<&str>, extra: &[&str]) -> Output {
    let mut cmd = songgen(home);
    cmd.args(["generate", "--accept-license", "--quiet", "--device", "cpu"])
        .arg("--model")
        .arg(model())
        .arg("--out")
        .arg(home.join("out"))
        .args(["--lyrics", LYRICS, "--seed", "3"])
        .args(extra);
    match memory {
        Some(m) => cmd.env("SONGGEN_DEVICE_MEMORY", m),
        None => cmd.env_remove("SONGGEN_DEVICE_MEMORY"),
    };
    cmd.output().unwrap()
}

#[test]
fn doctor_plan_for_the_presets_needs_no_model_folder() {
    let home = temp_dir("plan-doctor");
    for (preset, precision) in [("v2-large", "q8_0"), ("v2-medium", "q4_k")] {
        let o = songgen(&home)
            .args([
                "doctor",
                "--plan",
                "--preset",
                preset,
                "--lm-precision",
                precision,
            ])
            .args(["--seconds", "270"])
            .env("SONGGEN_DEVICE_MEMORY", "16G")
            .output()
            .unwrap();
        let out = text(&o);
        assert!(o.status.success(), "{out}");
        for want in [
            "stage lm",
            "stage render",
            "KV cache",
            "streaming",
            "staged",
            "7953 KV positions",
        ] {
            assert!(out.contains(want), "{want} missing:\n{out}");
        }
        assert!(out.contains("mode fits"), "{out}");
    }
}

#[test]
fn a_small_device_memory_runs_staged_and_a_tiny_one_is_refused() {
    let paths = ModelPaths::resolve(model(), None).unwrap();
    let opts = LoadOptions::new(DType::F32);
    let plan = models::plan(&paths, &Device::Cpu, &opts).unwrap();
    let (stream, staged) = (
        plan.peak(Residency::Streaming),
        plan.peak(Residency::Staged),
    );
    assert!(staged < stream, "staged {staged} streaming {stream}");

    let home = temp_dir("plan-staged");
    let between = ((stream + staged) / 2).to_string();
    let o = generate(&home, Some(&between), &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("staged"),
        "{}",
        text(&o)
    );
    let staged_wav = std::fs::read(home.join("out/song-3.wav")).unwrap();

    // Same song in streaming mode: the residency does not change the result.
    let home2 = temp_dir("plan-streaming");
    let o = generate(&home2, Some(&stream.to_string()), &[]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("streaming"),
        "{}",
        text(&o)
    );
    assert_eq!(
        std::fs::read(home2.join("out/song-3.wav")).unwrap(),
        staged_wav
    );

    let home3 = temp_dir("plan-refused");
    let o = generate(&home3, Some("1K"), &[]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("not enough memory"), "{out}");
    assert!(out.contains("is free"), "{out}");
    assert!(!home3.join("out/song-3.wav").exists());
}

#[test]
fn quantized_lm_generates_and_prefers_a_quantize_file() {
    let home = temp_dir("plan-q8");
    let o = generate(&home, None, &["--lm-precision", "q8_0"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("lm q8_0"),
        "{}",
        text(&o)
    );
    let at_load = std::fs::read(home.join("out/song-3.wav")).unwrap();

    // An ahead-of-time file in a copy of the model folder gives the same song.
    let copy = temp_dir("plan-q8-copy").join("songgeneration_v2_tiny");
    std::fs::create_dir_all(&copy).unwrap();
    for entry in std::fs::read_dir(model()).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), copy.join(entry.file_name())).unwrap();
        }
    }
    let runtime = ModelPaths::resolve(model(), None).unwrap().runtime_dir;
    let o = songgen(&home)
        .args(["quantize", "--lm-precision", "q8_0", "--model"])
        .arg(&copy)
        .arg("--runtime")
        .arg(&runtime)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(copy.join(LmPrecision::Q8_0.gguf_file_name()).is_file());
    let home2 = temp_dir("plan-q8-file");
    let o = songgen(&home2)
        .args(["generate", "--accept-license", "--quiet", "--device", "cpu"])
        .arg("--model")
        .arg(&copy)
        .arg("--runtime")
        .arg(&runtime)
        .arg("--out")
        .arg(home2.join("out"))
        .args(["--lyrics", LYRICS, "--seed", "3", "--lm-precision", "q8_0"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        std::fs::read(home2.join("out/song-3.wav")).unwrap(),
        at_load
    );
}
