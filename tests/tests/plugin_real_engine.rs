//! The plugin against the real engine executable (the shared engine, `songgen serve --socket`): with no model installed the engine
//! exits with its error, and the plugin reports that message and does not restart in a loop; a
//! CUDA engine that cannot run is replaced by the CPU engine beside it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nice_plug_egui::RepaintNotifier;
use songgen_plugin::capture::Recorder;
use songgen_plugin::params::SongGenParams;
use songgen_plugin::playback::Player;
use songgen_plugin::session::TakeStatus;
use songgen_plugin::settings::UserSettings;
use songgen_plugin::worker::{Command, EngineState, Shared, UiStatus, WorkerHandle};

/// The tests point the plugin at their own `SONGGEN_*` folders through the process
/// environment, so they must not overlap.
static ENV: Mutex<()> = Mutex::new(());

/// A plugin worker as after `activate()`, with its status shared for inspection.
fn activated_worker(params: Arc<SongGenParams>) -> (WorkerHandle, Arc<Mutex<UiStatus>>) {
    let status = Arc::new(Mutex::new(UiStatus::default()));
    let worker = WorkerHandle::spawn(
        params,
        Arc::new(Shared::default()),
        status.clone(),
        RepaintNotifier::new(),
    );
    let (_recorder, recorder_link) = Recorder::new(48_000.0);
    let (_player, player_link) = Player::new();
    worker
        .tx
        .send(Command::Activated {
            sample_rate: 48_000.0,
            recorder: recorder_link,
            player: player_link,
            loaded: None,
        })
        .unwrap();
    (worker, status)
}

/// Waits for the first take to be done (3 stems) and fails on a failed take.
fn wait_for_take(params: &SongGenParams, status: &Mutex<UiStatus>) {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let takes = params.takes.read().clone();
        if let Some(t) = takes.list.first() {
            match &t.status {
                TakeStatus::Done => {
                    assert_eq!(t.stems.len(), 3, "{t:?}");
                    assert!(t.frames > 0);
                    return;
                }
                TakeStatus::Failed { message } => panic!("{message}"),
                _ => {}
            }
        }
        assert!(
            Instant::now() < deadline,
            "no take: {:?}",
            status.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_missing_model_is_reported_with_the_engines_own_message() {
    let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
    let songgen = songgen_tests::songgen_bin();
    let dir = songgen_tests::temp_dir("real-engine");
    std::env::set_var("SONGGEN_HOME", dir.join("home"));
    std::env::set_var("SONGGEN_CACHE_DIR", dir.join("cache"));
    std::env::set_var("SONGGEN_CONFIG_DIR", dir.join("config"));
    std::env::set_var("SONGGEN_ENGINE", songgen);
    std::env::set_var("SONGGEN_RUNTIME_DIR", dir.join("run"));
    std::env::set_var("SONGGEN_ENGINE_GRACE", "1");
    songgen_engine::license::record_acceptance().unwrap();

    let (worker, status) = activated_worker(Arc::new(SongGenParams::default()));
    let deadline = Instant::now() + Duration::from_secs(30);
    let reason = loop {
        if let EngineState::Failed { reason } = status.lock().unwrap().engine.clone() {
            break reason;
        }
        assert!(
            Instant::now() < deadline,
            "the engine's failure was not reported"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(reason.contains("exited with status"), "{reason}");
    assert!(reason.contains("songgen fetch"), "{reason}");
    // It never came up, so the plugin does not restart it by itself.
    std::thread::sleep(Duration::from_millis(800));
    let s = status.lock().unwrap().clone();
    assert_eq!(s.engine_starts, 1, "{s:?}");
    assert!(matches!(s.engine, EngineState::Failed { .. }));
    drop(worker);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn generates_a_take_with_the_real_engine_on_the_tiny_model() {
    let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
    let songgen = songgen_tests::songgen_bin();
    let dir = songgen_tests::temp_dir("plugin-real-generate");
    let model = songgen_tests::tiny_model::write(&dir.join("models"), 5)
        .unwrap()
        .model_dir;
    std::env::set_var("SONGGEN_HOME", dir.join("home"));
    std::env::set_var("SONGGEN_CACHE_DIR", dir.join("cache"));
    std::env::set_var("SONGGEN_CONFIG_DIR", dir.join("config"));
    std::env::set_var("SONGGEN_ENGINE", songgen);
    std::env::set_var("SONGGEN_RUNTIME_DIR", dir.join("run"));
    std::env::set_var("SONGGEN_ENGINE_GRACE", "1");
    songgen_engine::license::record_acceptance().unwrap();

    let params = Arc::new(SongGenParams::default());
    // The engine settings are per-user: the worker reads them from the settings file.
    UserSettings {
        model_dir: model.display().to_string(),
        device: "cpu".into(),
        ..UserSettings::default()
    }
    .save()
    .unwrap();
    params.draft.update(|d| {
        d.lyrics = "[verse]\nhello there\n\n[chorus]\nla la la\n".into();
        d.seed = Some(3);
    });
    let (worker, status) = activated_worker(params.clone());
    worker.tx.send(Command::Generate).unwrap();
    wait_for_take(&params, &status);
    drop(worker);
    let _ = std::fs::remove_dir_all(&dir);
}

// ----- the CUDA engine's fallback -----
// The plugin never fails because of CUDA: when the configured (CUDA) engine cannot start — the
// dynamic loader exits 127 because the NVIDIA driver's `libcuda.so.1` is missing — or exits
// with the engine's "no usable device" code, the plugin starts the CPU engine installed beside
// it (`songgen-cpu`, as `cargo xtask install --features cuda` lays it out), says so, and the
// take is generated. Without a CPU engine beside it, the loader's message is reported.

const LOADER_MESSAGE: &str = "error while loading shared libraries: libcuda.so.1: cannot open shared object file: No such file or directory";

/// An install folder: `songgen` is a script that fails like a CUDA engine on this machine
/// (printing `message` to stderr, exiting `code`); `songgen-cpu`, when asked for, is the real
/// CPU engine of this build.
fn install(dir: &Path, message: &str, code: i32, with_cpu_engine: bool) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).unwrap();
    let fake = dir.join("songgen");
    std::fs::write(
        &fake,
        format!("#!/bin/sh\necho \"$0: {message}\" >&2\nexit {code}\n"),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    if with_cpu_engine {
        std::os::unix::fs::symlink(songgen_tests::songgen_bin(), dir.join("songgen-cpu")).unwrap();
    }
    fake
}

fn set_env(dir: &Path, engine: &Path) {
    std::env::set_var("SONGGEN_HOME", dir.join("home"));
    std::env::set_var("SONGGEN_CACHE_DIR", dir.join("cache"));
    std::env::set_var("SONGGEN_CONFIG_DIR", dir.join("config"));
    std::env::set_var("SONGGEN_ENGINE", engine);
    std::env::set_var("SONGGEN_RUNTIME_DIR", dir.join("run"));
    std::env::set_var("SONGGEN_ENGINE_GRACE", "1");
    songgen_engine::license::record_acceptance().unwrap();
}

fn wait_for<T>(
    status: &Mutex<UiStatus>,
    secs: u64,
    what: &str,
    mut f: impl FnMut(&UiStatus) -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f(&status.lock().unwrap()) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {:?}",
            status.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_engine_the_loader_cannot_start_is_replaced_by_the_cpu_engine_and_the_take_is_made() {
    let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
    let dir = songgen_tests::temp_dir("plugin-cuda-fallback");
    let model = songgen_tests::tiny_model::write(&dir.join("models"), 5)
        .unwrap()
        .model_dir;
    let fake = install(&dir.join("install"), LOADER_MESSAGE, 127, true);
    set_env(&dir, &fake);

    let params = Arc::new(SongGenParams::default());
    // The engine settings are per-user: the worker reads them from the settings file.
    UserSettings {
        model_dir: model.display().to_string(),
        // The CUDA engine was asked for; the CPU engine must be started with --device cpu.
        device: "cuda".into(),
        ..UserSettings::default()
    }
    .save()
    .unwrap();
    params.draft.update(|d| {
        d.lyrics = "[verse]\nhello there\n\n[chorus]\nla la la\n".into();
        d.seed = Some(3);
    });
    let (worker, status) = activated_worker(params.clone());
    worker.tx.send(Command::Generate).unwrap();
    wait_for_take(&params, &status);
    let s = status.lock().unwrap().clone();
    let note = s.fallback.clone().expect("the fallback is shown");
    assert!(note.contains("libcuda.so.1"), "{note}");
    assert!(note.contains("exited with status 127"), "{note}");
    assert!(note.contains("songgen-cpu"), "{note}");
    match &s.engine {
        EngineState::Ready { device, .. } => assert!(device.starts_with("cpu"), "{device}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(s.engine_starts, 2, "{s:?}");
    drop(worker);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_engine_without_a_usable_gpu_is_replaced_by_the_cpu_engine() {
    let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
    let dir = songgen_tests::temp_dir("plugin-cuda-nogpu");
    let model = songgen_tests::tiny_model::write(&dir.join("models"), 6)
        .unwrap()
        .model_dir;
    let code = i32::from(songgen_engine::gpu::EXIT_DEVICE);
    let fake = install(
        &dir.join("install"),
        "error: --device cuda: no usable CUDA GPU (no CUDA-capable device is detected)",
        code,
        true,
    );
    set_env(&dir, &fake);
    let params = Arc::new(SongGenParams::default());
    // The engine settings are per-user: the worker reads them from the settings file.
    UserSettings {
        model_dir: model.display().to_string(),
        device: "cuda".into(),
        ..UserSettings::default()
    }
    .save()
    .unwrap();
    let (worker, status) = activated_worker(params);
    let device = wait_for(
        &status,
        120,
        "the CPU engine did not come up",
        |s| match &s.engine {
            EngineState::Ready { device, .. } => Some(device.clone()),
            EngineState::Failed { reason } => panic!("{reason}"),
            _ => None,
        },
    );
    assert!(device.starts_with("cpu"), "{device}");
    let s = status.lock().unwrap().clone();
    let note = s.fallback.expect("the fallback is shown");
    assert!(note.contains("no usable CUDA GPU"), "{note}");
    drop(worker);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn without_a_cpu_engine_the_loaders_message_is_reported() {
    let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
    let dir = songgen_tests::temp_dir("plugin-cuda-nofallback");
    let fake = install(&dir.join("install"), LOADER_MESSAGE, 127, false);
    set_env(&dir, &fake);
    let (worker, status) = activated_worker(Arc::new(SongGenParams::default()));
    let reason = wait_for(&status, 30, "the failure was not reported", |s| {
        match &s.engine {
            EngineState::Failed { reason } => Some(reason.clone()),
            _ => None,
        }
    });
    assert!(reason.contains("exited with status 127"), "{reason}");
    assert!(reason.contains("libcuda.so.1"), "{reason}");
    let s = status.lock().unwrap().clone();
    assert!(s.fallback.is_none(), "{s:?}");
    assert_eq!(s.engine_starts, 1, "{s:?}");
    drop(worker);
    let _ = std::fs::remove_dir_all(&dir);
}
