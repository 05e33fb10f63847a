//! Project state through a CLAP host: the draft, the take list and the selected take survive a
//! save/load round trip into a fresh instance, and hold metadata only (no audio).

mod plugin_host;

use plugin_host::{serial, TestPlugin};
use serde_json::{json, Value};

/// nice-plug stores each persisted field as a JSON string inside the state's `fields`.
fn field(state: &Value, name: &str) -> Value {
    let s = state["fields"][name]
        .as_str()
        .unwrap_or_else(|| panic!("no field {name} in {state}"));
    serde_json::from_str(s).unwrap()
}

fn set_field(state: &mut Value, name: &str, value: &Value) {
    state["fields"][name] = Value::String(value.to_string());
}

#[test]
fn takes_and_draft_round_trip_through_the_host_state() {
    let _guard = serial();
    let dir = plugin_host::temp_dir("state");
    plugin_host::isolate(&dir);
    let mut first = TestPlugin::new();
    let mut state = first.save_state();
    let takes = field(&state, "takes");
    assert_eq!(takes["list"], json!([]), "a new instance has no takes");
    assert!(field(&state, "draft")["lyrics"]
        .as_str()
        .unwrap()
        .contains("[verse]"));

    let take_dir = dir.join("cache").join("takes").join("take-1");
    let takes = json!({
        "list": [
            {
                "id": "take-1", "created": 1700000000, "lyrics": "[verse]\nhello\n",
                "descriptions": "female, pop", "prompt": "auto: Pop", "gen_type": "separate",
                "seed": 7, "sampling": {"cfg_coef": 1.5, "temperature": 0.8, "top_k": 5000,
                "record_window": 50, "penalty": 1.1, "use_sampling": true},
                "status": {"state": "done"},
                // Inside the take's cache folder, as the plugin writes them (paths elsewhere are
                // dropped on load: tests/tests/plugin_untrusted_project.rs).
                "stems": {"vocal": take_dir.join("take-1-vocal.wav"),
                          "bgm": take_dir.join("take-1-bgm.wav")},
                "sample_rate": 48000, "frames": 96000, "anchor_seconds": 4.5
            },
            {
                "id": "take-2", "created": 1700000100, "lyrics": "[chorus]\nla la\n",
                "descriptions": null, "prompt": "none", "gen_type": "mixed", "seed": null,
                "sampling": {"cfg_coef": 2.0, "temperature": 0.9, "top_k": 100,
                "record_window": 50, "penalty": 1.1, "use_sampling": false},
                "status": {"state": "failed", "message": "engine was killed by signal 9"},
                "stems": {}, "sample_rate": 0, "frames": 0, "anchor_seconds": 0.0
            }
        ],
        "selected": "take-1"
    });
    set_field(&mut state, "takes", &takes);
    let mut draft = field(&state, "draft");
    draft["lyrics"] = json!("[verse]\nround trip\n\n[chorus]\nagain\n");
    draft["tags"]["bpm"] = json!(96);
    draft["seed"] = json!(1234);
    draft["prompt"] = json!({"kind": "auto_genre", "genre": "Jazz"});
    set_field(&mut state, "draft", &draft);
    drop(first);

    let mut second = TestPlugin::new();
    second.load_state(&state);
    let saved = second.save_state();
    assert_eq!(field(&saved, "takes"), takes);
    assert_eq!(field(&saved, "draft"), draft);
    // Metadata only: the whole state stays small.
    assert!(saved.to_string().len() < 8_000, "{}", saved);

    // And it survives activation (the worker reads the take list; the stems are missing here,
    // which must not break anything).
    second.activate();
    second.deactivate();
    assert_eq!(field(&second.save_state(), "takes"), takes);
}
