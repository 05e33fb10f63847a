//! Style transfer from a host region through a CLAP host, with the real engine
//! (the shared engine, `songgen serve --socket`) on the tiny model: arm capture, play a looping transport over a
//! 10 s loop, trigger Generate (its parameter, as host automation would) with the *Captured
//! region* source; the take finishes, plays on the Vocals and Accompaniment buses, names the
//! capture as its prompt, and a project saved and reopened keeps the capture.

mod plugin_host;

use std::time::{Duration, Instant};

use plugin_host::{serial, temp_dir, Block, TestPlugin, Transport, SAMPLE_RATE};

/// "Music" as a function of the timeline position.
fn music(pos: i64) -> (f32, f32) {
    let t = pos as f32 / SAMPLE_RATE as f32;
    let a = (2.0 * std::f32::consts::PI * 220.0 * t).sin();
    let b = (2.0 * std::f32::consts::PI * 330.0 * t).sin();
    let beat = if (t * 2.0).fract() < 0.02 { 0.3 } else { 0.0 };
    (0.3 * a + 0.2 * b + beat, 0.2 * a + 0.3 * b + beat)
}

fn field(state: &serde_json::Value, name: &str) -> serde_json::Value {
    serde_json::from_str(state["fields"][name].as_str().unwrap()).unwrap()
}

fn set_field(state: &mut serde_json::Value, name: &str, value: serde_json::Value) {
    state["fields"][name] = serde_json::Value::String(value.to_string());
}

#[test]
fn a_captured_loop_becomes_the_prompt_of_a_take_that_plays() {
    let _guard = serial();
    let dir = temp_dir("style-transfer");
    let model = songgen_tests::tiny_model::write(&dir.join("models"), 17)
        .unwrap()
        .model_dir;
    std::env::set_var("SONGGEN_CACHE_DIR", dir.join("cache"));
    std::env::set_var("SONGGEN_HOME", dir.join("home"));
    std::env::set_var("SONGGEN_CONFIG_DIR", dir.join("config"));
    std::env::set_var("SONGGEN_ENGINE", songgen_tests::songgen_bin());
    std::env::set_var("SONGGEN_RUNTIME_DIR", dir.join("run"));
    std::env::set_var("SONGGEN_ENGINE_GRACE", "1");
    songgen_engine::license::record_acceptance().unwrap();
    // The engine settings are per-user (the settings file), not in the project.
    songgen_plugin::settings::UserSettings {
        model_dir: model.display().to_string(),
        device: "cpu".into(),
        ..Default::default()
    }
    .save()
    .unwrap();

    let mut plugin = TestPlugin::new();
    let arm = plugin.param_id("Arm capture");
    let generate = plugin.param_id("Generate");
    let mut state = plugin.save_state();
    let mut draft = field(&state, "draft");
    draft["lyrics"] = "[verse]\nhello there\n\n[chorus]\nla la la\n".into();
    draft["seed"] = 9.into();
    draft["gen_type"] = "separate".into();
    set_field(&mut state, "draft", draft);
    plugin.load_state(&state);
    plugin.activate();

    // A 10 s loop from 2 s; play starts mid-loop and wraps.
    let (ls, le) = (2.0, 12.0);
    let (s, e) = ((ls * SAMPLE_RATE) as i64, (le * SAMPLE_RATE) as i64);
    let frames = 512usize;
    let mut pos = (5.0 * SAMPLE_RATE) as i64;
    let mut params = vec![(arm, 1.0)];
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut blocks = 0;
    let capture = loop {
        let mut block = Block::silent(frames);
        for i in 0..frames {
            let mut p = pos + i as i64;
            if p >= e {
                p = s + (p - e);
            }
            let (l, r) = music(p);
            block.main[0][i] = l;
            block.main[1][i] = r;
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
        if blocks > 950 {
            let c = field(&plugin.save_state(), "capture");
            if c.is_object() {
                break c;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            Instant::now() < deadline,
            "no capture after {blocks} blocks"
        );
    };
    assert_eq!(capture["from_loop"], true);
    assert!(
        (capture["seconds"].as_f64().unwrap() - 10.0).abs() < 1e-6,
        "{capture}"
    );
    let level = &capture["level"];
    assert!(level["peak_dbfs"].as_f64().unwrap() > -10.0, "{capture}");
    assert_eq!(level["clipped"], 0.0, "{capture}");
    let capture_path = capture["path"].as_str().unwrap().to_owned();
    let state = plugin.save_state();
    assert_eq!(field(&state, "draft")["prompt"]["kind"], "captured");

    // Generate, as host automation would trigger it; the transport is stopped meanwhile.
    let idle = |plugin: &mut TestPlugin, params: &[(clack_host::prelude::ClapId, f64)]| {
        let mut block = Block::silent(frames);
        plugin.process(
            &mut block,
            Some(Transport {
                playing: false,
                pos_seconds: 0.0,
                loop_seconds: None,
                tempo: 120.0,
            }),
            params,
        );
    };
    idle(&mut plugin, &[(generate, 1.0)]);
    let deadline = Instant::now() + Duration::from_secs(900);
    let take = loop {
        idle(&mut plugin, &[]);
        let takes = field(&plugin.save_state(), "takes");
        if let Some(t) = takes["list"].as_array().and_then(|l| l.first()) {
            match t["status"]["state"].as_str() {
                Some("done") => break t.clone(),
                Some("failed") => panic!("the take failed: {t}"),
                _ => {}
            }
        }
        assert!(Instant::now() < deadline, "no take: {takes}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let name = std::path::Path::new(&capture_path)
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let prompt = take["prompt"].as_str().unwrap();
    assert!(
        prompt.contains("captured 10.0 s") && prompt.contains(&name),
        "{take}"
    );
    assert_eq!(take["stems"].as_object().unwrap().len(), 3, "{take}");
    let anchor = take["anchor_seconds"].as_f64().unwrap();

    // It plays on both buses once the worker has loaded it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut t = anchor;
    loop {
        let mut block = Block::silent(frames);
        plugin.process(&mut block, Some(Transport::playing_at(t)), &[]);
        t += frames as f64 / SAMPLE_RATE;
        let energy = |b: &[Vec<f32>; 2]| b.iter().flatten().map(|v| v * v).sum::<f32>();
        if energy(&block.vocals) > 0.0 && energy(&block.accompaniment) > 0.0 {
            break;
        }
        if t > anchor + 2.0 {
            t = anchor;
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            Instant::now() < deadline,
            "the take does not play on the buses"
        );
    }

    // Saved and reopened, the project keeps the capture (and its file).
    let saved = plugin.save_state();
    drop(plugin);
    let mut reopened = TestPlugin::new();
    reopened.load_state(&saved);
    let state = reopened.save_state();
    assert_eq!(field(&state, "capture"), capture);
    assert_eq!(field(&state, "draft")["prompt"]["kind"], "captured");
    assert!(std::path::Path::new(&capture_path).is_file());
    drop(reopened);
    let _ = std::fs::remove_dir_all(&dir);
}
