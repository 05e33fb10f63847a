//! `--device cuda` that cannot be honoured is a run failure with its own exit code and message
//! (`songgen_engine::gpu::EXIT_DEVICE`), not "bad input" (2); `--device auto` runs on the CPU.
//! This build has no GPU (or no `cuda` feature), so the failure is certain here.

use songgen_tests::{songgen, temp_dir, tiny_model};

#[test]
fn device_cuda_without_a_usable_gpu_fails_with_the_device_code() {
    let home = temp_dir("cli-device");
    let tiny = tiny_model::write(&home.join("models"), 8).unwrap();
    let out = home.join("out");
    let generate = songgen(&home)
        .args(["generate", "--lyrics", "[verse] hello there", "--out"])
        .arg(&out)
        .args(["--accept-license", "--device", "cuda", "--model"])
        .arg(&tiny.model_dir)
        .output()
        .unwrap();
    let serve = songgen(&home)
        .args([
            "serve",
            "--stdio",
            "--accept-license",
            "--device",
            "cuda",
            "--model",
        ])
        .arg(&tiny.model_dir)
        .output()
        .unwrap();
    for (what, o) in [("generate", generate), ("serve", serve)] {
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(
            o.status.code(),
            Some(i32::from(songgen_engine::gpu::EXIT_DEVICE)),
            "{what}: {err}"
        );
        assert!(err.contains("--device cuda: "), "{what}: {err}");
        assert!(err.contains("use --device cpu"), "{what}: {err}");
        // A CPU build says so; a CUDA build (SONGGEN_TEST_BIN) names the CUDA error.
        assert!(
            err.contains("built without CUDA support") || err.contains("no usable CUDA GPU"),
            "{what}: {err}"
        );
    }
    // The output folder may have been created up front; no stem or record is in it.
    let made: Vec<_> = std::fs::read_dir(&out)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(made.is_empty(), "nothing was generated: {made:?}");
}
