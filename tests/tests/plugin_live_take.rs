//! A take plays while it renders, through a CLAP host (the plugin built with the allocation
//! checker: any allocation in `process()` aborts), with the real engine on a tiny model of 100 s
//! (3 decoder windows): after Generate, the Vocals and Accompaniment buses carry the take's audio
//! while the take is still running, from the engine's `chunk` events, before any stem file is
//! complete.

mod plugin_host;

use std::time::{Duration, Instant};

use plugin_host::{serial, temp_dir, Block, TestPlugin, Transport, SAMPLE_RATE};

fn field(state: &serde_json::Value, name: &str) -> serde_json::Value {
    serde_json::from_str(state["fields"][name].as_str().unwrap()).unwrap()
}

fn set_field(state: &mut serde_json::Value, name: &str, value: serde_json::Value) {
    state["fields"][name] = serde_json::Value::String(value.to_string());
}

#[test]
fn the_stem_buses_play_a_take_before_it_is_done() {
    let _guard = serial();
    let dir = temp_dir("live-take");
    let model = songgen_tests::tiny_model::write_with(&dir.join("models"), 5, 100)
        .unwrap()
        .model_dir;
    plugin_host::isolate(&dir);
    std::env::set_var("SONGGEN_ENGINE", songgen_tests::songgen_bin());
    songgen_engine::license::record_acceptance().unwrap();
    songgen_plugin::settings::UserSettings {
        model_dir: model.display().to_string(),
        device: "cpu".into(),
        ..Default::default()
    }
    .save()
    .unwrap();

    let mut plugin = TestPlugin::new();
    let generate = plugin.param_id("Generate");
    let mut state = plugin.save_state();
    let mut draft = field(&state, "draft");
    draft["lyrics"] = "[verse]\nhello there\n\n[chorus]\nla la la\n".into();
    draft["seed"] = 3.into();
    draft["gen_type"] = "separate".into();
    set_field(&mut state, "draft", draft);
    plugin.load_state(&state);
    plugin.activate();

    let frames = 512usize;
    let mut params = vec![(generate, 1.0)];
    // Play the first 2 s of the timeline over and over while the take renders.
    let mut t = 0.0;
    let deadline = Instant::now() + Duration::from_secs(1200);
    let mut blocks = 0u64;
    let (mut heard_vocals, mut heard_bgm) = (false, false);
    loop {
        let mut block = Block::silent(frames);
        plugin.process(&mut block, Some(Transport::playing_at(t)), &params);
        params.clear();
        blocks += 1;
        t += frames as f64 / SAMPLE_RATE;
        if t > 2.0 {
            t = 0.0;
        }
        let energy = |b: &[Vec<f32>; 2]| b.iter().flatten().map(|v| v * v).sum::<f32>();
        heard_vocals |= energy(&block.vocals) > 0.0;
        heard_bgm |= energy(&block.accompaniment) > 0.0;
        if blocks % 64 == 0 {
            let takes = field(&plugin.save_state(), "takes");
            let take = takes["list"].as_array().and_then(|l| l.first()).cloned();
            let status = take
                .as_ref()
                .and_then(|t| t["status"]["state"].as_str().map(str::to_owned));
            match status.as_deref() {
                Some("running") if heard_vocals && heard_bgm => {
                    // Still running, already heard: no stem file is complete yet.
                    let id = take.unwrap()["id"].as_str().unwrap().to_owned();
                    let vocal = dir
                        .join("cache/takes")
                        .join(&id)
                        .join(format!("{id}_vocal.wav"));
                    assert!(!vocal.exists(), "the stems were complete already");
                    break;
                }
                Some("running") | None => {}
                other => panic!(
                    "the take ended ({other:?}) before its audio was heard on both buses \
                     (vocals {heard_vocals}, accompaniment {heard_bgm}): {takes}"
                ),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            Instant::now() < deadline,
            "no live audio after {blocks} blocks"
        );
    }
    // Closing the plugin cancels the take in the shared engine.
    drop(plugin);
    let _ = std::fs::remove_dir_all(&dir);
}
