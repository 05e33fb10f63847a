//! scripts/gpu-check.sh in its dry mode: the GPU check's every step — packing the engine, the
//! tiny model and a parity subset into a bundle, unpacking it, doctor, the three parity
//! directories, a tiny-model generate and the random-weight timings — run here on the CPU at
//! small sizes, so the script is known to work before a GPU is ever lent.

use std::process::Command;

use songgen_tests::{repo_root, songgen_bin, temp_dir, tiny_model};

#[test]
fn the_gpu_check_runs_every_step_on_the_cpu() {
    for tool in ["xz", "python3", "tar"] {
        if Command::new(tool).arg("--version").output().is_err() {
            songgen_tests::skip(&format!(
                "gpu-check dry run needs `{tool}`, which is not installed"
            ));
            return;
        }
    }
    let work = temp_dir("gpu-check-dry");
    let tiny = work.join("tiny");
    tiny_model::write(&tiny, 11).unwrap();
    let o = Command::new("bash")
        .arg(repo_root().join("scripts/gpu-check.sh"))
        .args(["dry", "--work"])
        .arg(&work)
        .env("GPU_CHECK_SONGGEN", songgen_bin())
        .env("GPU_CHECK_TINY_MODEL", &tiny)
        .env_remove("OUT")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{text}");

    // The bundle: compressed engine and data, the script itself, what would travel.
    let bundle = work.join("bundle");
    for f in [
        "songgen.xz",
        "data.tar.xz",
        "gpu-check.sh",
        "INFO",
        "SUBSET.txt",
    ] {
        assert!(bundle.join(f).is_file(), "{f} missing: {text}");
    }
    let info = std::fs::read_to_string(bundle.join("INFO")).unwrap();
    assert!(info.contains("travels: "), "{info}");
    let subset = std::fs::read_to_string(bundle.join("SUBSET.txt")).unwrap();
    for kind in ["lelm", "decoder", "prompt"] {
        assert!(subset.contains(&format!("{kind}: ")), "{subset}");
    }

    // Every step ran and passed.
    let results = work.join("results");
    let summary = std::fs::read_to_string(results.join("summary.txt")).unwrap();
    for s in ["doctor", "parity", "generate", "timings-f32"] {
        let line = summary
            .lines()
            .find(|l| l.split_whitespace().next() == Some(s))
            .unwrap_or_else(|| panic!("no {s} step: {summary}"));
        assert!(line.contains(" ok "), "{line}\n{summary}");
    }

    // Parity: cases of all three directories ran, none failed.
    let parity = std::fs::read_to_string(results.join("parity.log")).unwrap();
    let closing = parity
        .lines()
        .find(|l| l.ends_with(" failed") && l.contains(" passed, "))
        .unwrap_or_else(|| panic!("{parity}"));
    let passed: usize = closing.split(' ').next().unwrap().parse().unwrap();
    assert!(passed >= 3, "{closing}");
    assert!(closing.ends_with(" 0 failed"), "{parity}");
    for unit in ["tokenize", "rvq_decode", "resample_48k_to_24k"] {
        assert!(
            parity
                .lines()
                .any(|l| l.starts_with("PASS ") && l.contains(unit)),
            "{unit} did not run: {parity}"
        );
    }

    // Generate wrote the song.
    let generate = std::fs::read_to_string(results.join("generate.log")).unwrap();
    assert!(generate.contains(".wav"), "{generate}");

    // Timings: one JSON line per measurement, with real times.
    let timings = std::fs::read_to_string(results.join("timings.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = timings
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let names: Vec<&str> = lines.iter().map(|v| v["what"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 4, "{timings}");
    assert!(names[0].starts_with("lm_prefill_"), "{names:?}");
    assert_eq!(names[1], "lm_decode_step");
    assert!(names[2].starts_with("flow_step_"), "{names:?}");
    assert!(names[3].starts_with("vae_chunk_"), "{names:?}");
    for v in &lines {
        assert_eq!(v["device"], "cpu", "{v}");
        assert_eq!(v["size"], "small", "{v}");
        assert!(v["min_ms"].as_f64().unwrap() > 0.0, "{v}");
        assert!(v["device_mib_in_use"].is_null(), "{v}");
    }
    let _ = std::fs::remove_dir_all(&work);
}
