//! A project is untrusted input: one someone sent you must not make the plugin run a program or
//! touch files outside its cache. A crafted project (an old-style `engine` entry naming a script,
//! take ids that walk out of the cache, stems and a capture outside it) loads through a CLAP host
//! with the bad entries dropped and reported, runs nothing, and deleting every take it named
//! removes nothing outside the cache.

mod plugin_host;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nice_plug::params::Params;
use nice_plug_egui::RepaintNotifier;
use plugin_host::{serial, temp_dir, write_stem, Block, TestPlugin, Transport, SAMPLE_RATE};
use serde_json::{json, Value};
use songgen_plugin::params::SongGenParams;
use songgen_plugin::worker::{Command, Shared, UiStatus, WorkerHandle};

fn field(state: &Value, name: &str) -> Value {
    let s = state["fields"][name]
        .as_str()
        .unwrap_or_else(|| panic!("no field {name} in {state}"));
    serde_json::from_str(s).unwrap()
}

fn set_field(state: &mut Value, name: &str, value: &Value) {
    state["fields"][name] = Value::String(value.to_string());
}

fn take(id: &str, stems: Value) -> Value {
    json!({
        "id": id, "created": 1, "lyrics": "[verse]\nx\n", "descriptions": null,
        "prompt": "none", "gen_type": "separate", "seed": 1,
        "sampling": {"cfg_coef": 1.5, "temperature": 0.8, "top_k": 5000,
                     "record_window": 50, "penalty": 1.1, "use_sampling": true},
        "status": {"state": "done"},
        "stems": stems,
        "sample_rate": SAMPLE_RATE as u32, "frames": 48_000, "anchor_seconds": 0.0
    })
}

fn loud(_: usize) -> (f32, f32) {
    (0.5, -0.5)
}

/// Files under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            out.push(p.strip_prefix(root).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[test]
fn a_crafted_project_runs_nothing_and_touches_nothing_outside_the_cache() {
    let _guard = serial();
    let dir = temp_dir("untrusted");
    let log = dir.join("plugin.log");
    plugin_host::isolate(&dir);
    std::env::set_var("NICE_LOG", &log);
    // With the licence accepted the plugin starts its engine on activation: the one of the
    // per-user settings (none here, and `SONGGEN_ENGINE` does not exist), never the project's.
    songgen_engine::license::record_acceptance().unwrap();
    let cache = dir.join("cache");
    let takes_dir = cache.join("takes");

    // What the project's "engine" would run.
    let marker = dir.join("ran");
    let script = dir.join("evil.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\ntouch '{}'\nsleep 5\n", marker.display()),
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    // Where the traversal ids would land: `<cache>/takes/../../victim` and an absolute id.
    let victim = dir.join("victim");
    let absolute = dir.join("absolute");
    let outside = dir.join("outside");
    for d in [&victim, &absolute, &outside] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(d.join("keep.txt"), "precious").unwrap();
    }
    let secret_stem = outside.join("secret.wav");
    write_stem(&secret_stem, 48_000, loud);
    let secret_capture = outside.join("capture.wav");
    write_stem(&secret_capture, 48_000, loud);
    std::fs::create_dir_all(&takes_dir).unwrap();
    assert_eq!(
        takes_dir.join("../../victim").canonicalize().unwrap(),
        victim.canonicalize().unwrap(),
        "the traversal id lands on the sentinel"
    );

    // A good take with stems outside the cache, and one with its stem in its own folder.
    let own_dir = takes_dir.join("take-2");
    std::fs::create_dir_all(&own_dir).unwrap();
    let own_stem = own_dir.join("take-2-vocal.wav");
    write_stem(&own_stem, 48_000, loud);
    std::fs::create_dir_all(takes_dir.join("take-1")).unwrap();
    std::fs::write(takes_dir.join("take-1").join("note.txt"), "x").unwrap();

    let mut first = TestPlugin::new();
    let mut state = first.save_state();
    drop(first);
    let bad_ids = ["../../victim".to_owned(), absolute.display().to_string()];
    let takes = json!({
        "list": [
            take(&bad_ids[0], json!({})),
            take(&bad_ids[1], json!({"vocal": absolute.join("keep.txt")})),
            take("take-1", json!({"vocal": secret_stem, "bgm": secret_stem})),
            take("take-2", json!({"vocal": own_stem, "../x": own_stem})),
        ],
        "selected": "take-1"
    });
    set_field(&mut state, "takes", &takes);
    set_field(
        &mut state,
        "capture",
        &json!({"path": secret_capture, "seconds": 1.0, "from_loop": true}),
    );
    set_field(
        &mut state,
        "engine",
        &json!({"engine_path": script, "model_dir": dir, "device": "cpu",
                "extra_args": format!("--out {}", victim.display())}),
    );

    // A fresh instance loads it, activates and plays.
    let mut plugin = TestPlugin::new();
    plugin.load_state(&state);
    plugin.activate();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut pos = 0i64;
    let mut blocks = 0;
    let saved = loop {
        let mut block = Block::silent(256);
        plugin.process(
            &mut block,
            Some(Transport::playing_at(pos as f64 / SAMPLE_RATE)),
            &[],
        );
        // take-1 is selected, but its stems (outside the cache) must never play.
        assert!(
            block
                .vocals
                .iter()
                .chain(&block.accompaniment)
                .flatten()
                .all(|v| *v == 0.0),
            "a stem from outside the cache played at {pos}"
        );
        pos += 256;
        blocks += 1;
        let saved = plugin.save_state();
        let list = field(&saved, "takes")["list"].as_array().unwrap().len();
        if list == 2 && field(&saved, "capture").is_null() && blocks > 50 {
            break saved;
        }
        assert!(
            Instant::now() < deadline,
            "the bad entries were not dropped: {saved}"
        );
        std::thread::sleep(Duration::from_millis(2));
    };

    // The good entries are kept, without their bad stems; the bad ones are gone.
    let kept = field(&saved, "takes");
    let ids: Vec<_> = kept["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["take-1", "take-2"], "{kept}");
    assert_eq!(kept["list"][0]["stems"], json!({}), "{kept}");
    assert_eq!(
        kept["list"][1]["stems"],
        json!({"vocal": own_stem}),
        "{kept}"
    );
    assert_eq!(kept["selected"], "take-1");
    assert_eq!(field(&saved, "capture"), Value::Null);
    assert!(
        saved["fields"].get("engine").is_none(),
        "engine settings are not project state: {saved}"
    );
    assert_eq!(field(&saved, "draft"), field(&state, "draft"));

    // One message said what was dropped and why.
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let report: Vec<_> = text.lines().filter(|l| l.contains("dropped")).collect();
    assert_eq!(report.len(), 1, "one report:\n{text}");
    for what in [
        "../../victim",
        &bad_ids[1],
        &secret_stem.display().to_string(),
        &secret_capture.display().to_string(),
        "unknown stem",
    ] {
        assert!(report[0].contains(what), "{what} in {}", report[0]);
    }
    drop(plugin);

    // Deleting every take the project named, through the worker as the editor does (the
    // host cannot send editor commands): the bad ids are refused, the good ones only lose their
    // own cache folders.
    let mut fields: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in state["fields"].as_object().unwrap() {
        fields.insert(k.clone(), v.as_str().unwrap().to_owned());
    }
    let params = Arc::new(SongGenParams::default());
    params.deserialize_fields(&fields);
    let status = Arc::new(Mutex::new(UiStatus::default()));
    let worker = WorkerHandle::spawn(
        params.clone(),
        Arc::new(Shared::default()),
        status.clone(),
        RepaintNotifier::new(),
    );
    for id in bad_ids
        .iter()
        .map(String::as_str)
        .chain(["take-1", "take-2"])
    {
        worker.tx.send(Command::Delete(id.to_owned())).unwrap();
    }
    // Export too re-checks the id.
    worker
        .tx
        .send(Command::Export {
            take: bad_ids[0].clone(),
            dir: dir.join("export"),
        })
        .unwrap();
    drop(worker);
    let last = status.lock().unwrap().message.clone();
    assert!(
        matches!(&last, Some((true, m)) if m.contains("export failed")),
        "{last:?}"
    );
    assert!(params.takes.read().list.is_empty(), "every take deleted");
    assert!(!takes_dir.join("take-1").exists() && !own_dir.exists());
    assert!(
        !dir.join("export").exists(),
        "nothing exported for a bad id"
    );

    // Nothing ran, and everything outside the cache is as it was.
    std::thread::sleep(Duration::from_millis(200));
    assert!(!marker.exists(), "the project's engine_path was executed");
    for d in [&victim, &absolute, &outside] {
        assert_eq!(
            std::fs::read_to_string(d.join("keep.txt")).unwrap(),
            "precious",
            "{}",
            d.display()
        );
    }
    assert!(secret_stem.is_file() && secret_capture.is_file());
    assert_eq!(
        tree(&dir)
            .into_iter()
            .filter(|p| !["cache", "home", "config"].iter().any(|d| p.starts_with(d)))
            .collect::<Vec<_>>(),
        [
            "absolute",
            "absolute/keep.txt",
            "evil.sh",
            "outside",
            "outside/capture.wav",
            "outside/keep.txt",
            "outside/secret.wav",
            "plugin.log",
            "victim",
            "victim/keep.txt",
        ]
        .map(str::to_owned)
        .to_vec(),
    );
    let _ = std::fs::remove_dir_all(&dir);
}
