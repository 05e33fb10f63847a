//! A real VST3 host: pedalboard (Spotify's JUCE-based Python host, `pip install pedalboard`;
//! `.ci/run` installs it) loads the bundled plugin, restores a project with a finished take
//! through the VST3 state, and renders. pedalboard disables every bus but the main ones and
//! gives the plugin no playhead, so this checks that the take still plays on the main output
//! (nice-plug alone would skip `process()` for want of stem buffers) and that an offline render
//! without a host transport runs on the render's own clock. Skips, saying why, when Python or
//! pedalboard is not installed.

mod plugin_host;

use std::path::PathBuf;
use std::process::Command;

use plugin_host::{finished_take_field, temp_dir, vst3_bundle, write_stem, SAMPLE_RATE};

const STEM_FRAMES: usize = 24_000; // 0.5 s
const ANCHOR_SECONDS: f64 = 0.125;
const RENDER_FRAMES: usize = 36_000; // 0.75 s: before, across and after the take

fn vocal(k: usize) -> (f32, f32) {
    let x = ((k % 499) as f32 / 499.0) - 0.5;
    (0.5 * x, x)
}

fn bgm(k: usize) -> (f32, f32) {
    let x = ((k as f32) * 0.013).sin() * 0.25;
    (x, 0.5 * x)
}

fn python() -> PathBuf {
    std::env::var_os("SONGGEN_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("python3"))
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("hosts/pedalboard_render.py")
}

#[test]
fn pedalboard_plays_a_loaded_take_on_the_main_output() {
    let probe = Command::new(python())
        .args([
            "-c",
            "import pedalboard, numpy; print(pedalboard.__version__)",
        ])
        .output();
    match &probe {
        Ok(out) if out.status.success() => {}
        _ => {
            songgen_tests::skip(&format!(
                "pedalboard is not importable by {} (`pip install pedalboard`, or set \
                 SONGGEN_TEST_PYTHON): {:?}",
                python().display(),
                probe.map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
            ));
            return;
        }
    }

    let dir = temp_dir("pedalboard");
    let bundle = vst3_bundle(&dir);
    // A restored take's stems must lie in its own cache folder (`SONGGEN_CACHE_DIR` below).
    let take_dir = dir.join("cache").join("takes").join("take-7");
    std::fs::create_dir_all(&take_dir).unwrap();
    let (vocal_path, bgm_path) = (take_dir.join("v.wav"), take_dir.join("b.wav"));
    write_stem(&vocal_path, STEM_FRAMES, vocal);
    write_stem(&bgm_path, STEM_FRAMES, bgm);
    let out_path = dir.join("main.f32");
    let args = serde_json::json!({
        "bundle": bundle,
        "takes": finished_take_field(&vocal_path, &bgm_path, STEM_FRAMES, ANCHOR_SECONDS),
        "frames": RENDER_FRAMES,
        "sample_rate": SAMPLE_RATE,
        "block": 512,
        "input": 0.0625,
        "out": out_path,
    });
    let out = Command::new(python())
        .arg(script())
        .arg(args.to_string())
        .env("HOME", &dir)
        .env("SONGGEN_CACHE_DIR", dir.join("cache"))
        .env("SONGGEN_HOME", dir.join("home"))
        .env("SONGGEN_ENGINE", dir.join("no-engine-here"))
        .output()
        .expect("running python");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "pedalboard script failed:\n{text}");
    assert!(text.contains("name=SongGen"), "{text}");
    assert!(text.contains("state_round_trip=True"), "{text}");
    assert!(text.contains(&format!("shape=2x{RENDER_FRAMES}")), "{text}");

    let bytes = std::fs::read(&out_path).expect("rendered output");
    let samples: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(samples.len(), 2 * RENDER_FRAMES);
    let (left, right) = samples.split_at(RENDER_FRAMES);
    // pedalboard feeds an instrument silence, an effect the constant input.
    let input = if text.contains("instrument=True") {
        0.0
    } else {
        0.0625
    };
    let anchor = (ANCHOR_SECONDS * SAMPLE_RATE) as i64;
    let mut heard = 0;
    for p in 0..RENDER_FRAMES as i64 {
        let k = p - anchor;
        let (v, a) = if k >= 0 && (k as usize) < STEM_FRAMES {
            (vocal(k as usize), bgm(k as usize))
        } else {
            ((0.0, 0.0), (0.0, 0.0))
        };
        let want = (input + v.0 + a.0, input + v.1 + a.1);
        let got = (left[p as usize], right[p as usize]);
        assert!(
            (got.0 - want.0).abs() < 1e-6 && (got.1 - want.1).abs() < 1e-6,
            "main output at {p}: got {got:?}, want {want:?}"
        );
        if v.0 != 0.0 {
            heard += 1;
        }
    }
    assert!(heard > STEM_FRAMES / 2, "the take was not in the render");
    let _ = std::fs::remove_dir_all(&dir);
}
