//! The plugin against the real engine executable, `songgen serve --stdio`: with no model installed the engine
//! exits with its error, and the plugin reports that message and does not restart in a loop.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nice_plug_egui::RepaintNotifier;
use songgen_plugin::capture::Recorder;
use songgen_plugin::params::SongGenParams;
use songgen_plugin::playback::Player;
use songgen_plugin::worker::{Command, EngineState, Shared, UiStatus, WorkerHandle};

/// Both tests point the plugin at their own `SONGGEN_*` folders through the process
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

#[test]
fn a_missing_model_is_reported_with_the_engines_own_message() {
    let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
    let songgen = songgen_tests::songgen_bin();
    let dir = std::env::temp_dir().join(format!("songgen-real-engine-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::env::set_var("SONGGEN_HOME", dir.join("home"));
    std::env::set_var("SONGGEN_CACHE_DIR", dir.join("cache"));
    std::env::set_var("SONGGEN_ENGINE", songgen);
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
    std::env::set_var("SONGGEN_ENGINE", songgen);
    songgen_engine::license::record_acceptance().unwrap();

    let params = Arc::new(SongGenParams::default());
    params.engine.update(|e| {
        e.model_dir = model.display().to_string();
        e.device = "cpu".into();
    });
    params.draft.update(|d| {
        d.lyrics = "[verse]\nhello there\n\n[chorus]\nla la la\n".into();
        d.seed = Some(3);
    });
    let (worker, status) = activated_worker(params.clone());
    worker.tx.send(Command::Generate).unwrap();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let takes = params.takes.read().clone();
        if let Some(t) = takes.list.first() {
            match &t.status {
                songgen_plugin::session::TakeStatus::Done => {
                    assert_eq!(t.stems.len(), 3, "{t:?}");
                    assert!(t.frames > 0);
                    break;
                }
                songgen_plugin::session::TakeStatus::Failed { message } => panic!("{message}"),
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
    drop(worker);
    let _ = std::fs::remove_dir_all(&dir);
}
