//! Style capture through a CLAP host: armed with the "Arm capture" parameter, the plugin
//! records exactly the host's loop range from a looping transport, and writes it to the cache.

mod plugin_host;

use std::time::{Duration, Instant};

use plugin_host::{serial, temp_dir, Block, TestPlugin, Transport, SAMPLE_RATE};

/// The test signal: a function of the timeline position, so the captured audio shows which
/// positions were recorded.
fn signal(pos: i64) -> (f32, f32) {
    let x = (pos as f32 * 0.001).sin() * 0.8;
    (x, -0.5 * x)
}

fn field(state: &serde_json::Value, name: &str) -> serde_json::Value {
    serde_json::from_str(state["fields"][name].as_str().unwrap()).unwrap()
}

#[test]
fn captures_exactly_the_loop_range_from_the_sidechain() {
    let _guard = serial();
    let cache = temp_dir("capture-cache");
    std::env::set_var("SONGGEN_CACHE_DIR", &cache);
    std::env::set_var("SONGGEN_ENGINE", cache.join("no-engine-here"));

    let mut plugin = TestPlugin::new();
    let arm = plugin.param_id("Arm capture");
    let source = plugin.param_id("Capture source");
    plugin.activate();

    // Loop 1.0 s .. 1.5 s; playback starts at 0.9 s, before the loop.
    let (ls, le) = (1.0, 1.5);
    let (s, e) = ((ls * SAMPLE_RATE) as i64, (le * SAMPLE_RATE) as i64);
    let frames = 480usize; // 10 ms; does not divide the loop evenly with the start offset
    let mut pos = (0.9 * SAMPLE_RATE) as i64 + 123;
    let mut params = vec![(arm, 1.0), (source, 1.0)]; // arm, record the sidechain
    let mut blocks = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    let captured = loop {
        let mut block = Block::silent(frames);
        for i in 0..frames {
            let mut p = pos + i as i64;
            if pos < e && p >= e {
                p = s + (p - e);
            }
            let (l, r) = signal(p);
            block.sidechain[0][i] = l;
            block.sidechain[1][i] = r;
            // Main input carries something else, which must not be recorded.
            block.main[0][i] = 0.9;
            block.main[1][i] = 0.9;
        }
        let transport = Transport {
            playing: true,
            pos_seconds: pos as f64 / SAMPLE_RATE,
            loop_seconds: Some((ls, le)),
            tempo: 120.0,
        };
        plugin.process(&mut block, Some(transport), &params);
        params.clear();
        pos += frames as i64;
        if pos >= e {
            pos = s + (pos - e);
        }
        blocks += 1;
        // The worker writes the WAV shortly after the capture completes.
        if blocks > 120 {
            if let Some(c) = field(&plugin.save_state(), "capture").as_object().cloned() {
                break c;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            Instant::now() < deadline,
            "no capture after {blocks} blocks"
        );
    };
    assert_eq!(captured["from_loop"], true);
    let path = captured["path"].as_str().unwrap();
    assert!(path.starts_with(cache.to_str().unwrap()), "{path}");
    let mut reader = hound::WavReader::open(path).unwrap();
    assert_eq!(reader.spec().sample_rate, SAMPLE_RATE as u32);
    assert_eq!(reader.spec().channels, 2);
    let samples: Vec<f32> = reader
        .samples::<i16>()
        .map(|v| v.unwrap() as f32 / 32767.0)
        .collect();
    assert_eq!(
        samples.len() / 2,
        (e - s) as usize,
        "exactly the loop length"
    );
    for (k, frame) in samples.chunks_exact(2).enumerate() {
        let (l, r) = signal(s + k as i64);
        assert!(
            (frame[0] - l).abs() < 1e-3 && (frame[1] - r).abs() < 1e-3,
            "frame {k}: {frame:?} vs {l}, {r}"
        );
    }
    // The captured region becomes the style prompt.
    assert_eq!(
        field(&plugin.save_state(), "draft")["prompt"]["kind"],
        "captured"
    );
    drop(plugin);
    let _ = std::fs::remove_dir_all(&cache);
}
