//! Realtime safety: `process()` of the plugin under test runs inside nice-plug's
//! `assert_process_allocs` checker (the tests build the plugin with the `alloc-check` feature in
//! a debug build), so a single allocation, lock-induced allocation or deallocation aborts this
//! binary. The test drives every path of `process()`: capture arming by parameter, recording
//! from both inputs, loop wrap-around, transport jumps and stops, playback of stems that the
//! worker swaps in and out, and odd block sizes.

mod plugin_host;

use std::time::{Duration, Instant};

use plugin_host::{plugin_library, serial, temp_dir, Block, TestPlugin, Transport, SAMPLE_RATE};
use serde_json::json;

fn write_stem(path: &std::path::Path, frames: usize) {
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: 44_100, // resampled by the worker
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for k in 0..frames * 2 {
        w.write_sample(((k % 200) as i16 - 100) * 100).unwrap();
    }
    w.finalize().unwrap();
}

#[test]
fn the_allocation_checker_is_compiled_into_the_tested_plugin() {
    assert!(
        cfg!(debug_assertions),
        "run the plugin tests in a debug build"
    );
    let bytes = std::fs::read(plugin_library()).unwrap();
    let needle = b"nice_assert_no_alloc";
    assert!(
        bytes.windows(needle.len()).any(|w| w == needle),
        "{} was built without assert_process_allocs",
        plugin_library().display()
    );
}

#[test]
fn process_runs_every_path_without_allocating() {
    let _guard = serial();
    let dir = temp_dir("alloc");
    plugin_host::isolate(&dir);
    // A restored take's stems must lie in its own cache folder.
    for id in ["a", "b"] {
        let take_dir = dir.join("cache").join("takes").join(id);
        std::fs::create_dir_all(&take_dir).unwrap();
        for i in 0..2 {
            write_stem(&take_dir.join(format!("s{i}.wav")), 44_100);
        }
    }
    let take = |id: &str, anchor: f64| {
        let take_dir = dir.join("cache").join("takes").join(id);
        let stems = [take_dir.join("s0.wav"), take_dir.join("s1.wav")];
        json!({
            "id": id, "created": 1, "lyrics": "", "descriptions": null, "prompt": "none",
            "gen_type": "separate", "seed": 1,
            "sampling": {"cfg_coef": 1.5, "temperature": 0.8, "top_k": 5000,
                         "record_window": 50, "penalty": 1.1, "use_sampling": true},
            "status": {"state": "done"},
            "stems": {"vocal": stems[0], "bgm": stems[1], "mixed": stems[0]},
            "sample_rate": 44100, "frames": 44100, "anchor_seconds": anchor
        })
    };

    let mut plugin = TestPlugin::new();
    let arm = plugin.param_id("Arm capture");
    let source = plugin.param_id("Capture source");
    let main_out = plugin.param_id("Main output");
    let mut state = plugin.save_state();
    let set_selected = |state: &mut serde_json::Value, sel: &str| {
        let takes = json!({"list": [take("a", 0.0), take("b", 0.3)], "selected": sel});
        state["fields"]["takes"] = json!(takes.to_string());
    };
    set_selected(&mut state, "a");
    plugin.load_state(&state);
    plugin.activate();

    let sizes = [1usize, 512, 17, 256, 333, 64, 500];
    let mut pos: i64 = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    for round in 0..600 {
        let frames = sizes[round % sizes.len()];
        let mut block = Block::silent(frames);
        for ch in block.main.iter_mut().chain(block.sidechain.iter_mut()) {
            for (i, s) in ch.iter_mut().enumerate() {
                *s = ((pos + i as i64) as f32 * 0.01).sin() * 0.5;
            }
        }
        let mut params = Vec::new();
        match round % 150 {
            0 => params.push((arm, 1.0)),
            40 => params.push((source, 1.0)),
            75 => params.push((arm, 0.0)),
            76 => params.push((arm, 1.0)),
            100 => params.push((main_out, ((round / 150) % 4) as f64)),
            _ => {}
        }
        let transport = match round % 200 {
            // Stopped for a while.
            180..=189 => Some(Transport {
                playing: false,
                ..Transport::playing_at(pos as f64 / SAMPLE_RATE)
            }),
            // No transport at all.
            190 => None,
            // A loop over [0.1 s, 0.3 s).
            0..=99 => Some(Transport {
                playing: true,
                pos_seconds: pos as f64 / SAMPLE_RATE,
                loop_seconds: Some((0.1, 0.3)),
                tempo: 120.0,
            }),
            _ => Some(Transport::playing_at(pos as f64 / SAMPLE_RATE)),
        };
        plugin.process(&mut block, transport, &params);
        pos += frames as i64;
        if transport.and_then(|t| t.loop_seconds).is_some() && pos >= (0.3 * SAMPLE_RATE) as i64 {
            pos = (0.1 * SAMPLE_RATE) as i64 + pos % 97;
        }
        if round % 97 == 0 {
            // A transport jump.
            pos += 12_345;
        }
        if round % 120 == 60 {
            // Switch takes from the "GUI" side: the worker loads and swaps stems while the
            // audio thread keeps going.
            set_selected(&mut state, if round % 240 == 60 { "b" } else { "a" });
            plugin.load_state(&state);
        }
        if round % 50 == 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(Instant::now() < deadline);
    }
    drop(plugin);
    let _ = std::fs::remove_dir_all(&dir);
}
