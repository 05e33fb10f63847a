//! The plugin's generation flow against an engine process, driven the way the editor drives it
//! (commands to the worker): Generate turns the draft into a job, the engine's events turn into
//! a take with its stems on disk, the new take is selected and its audio reaches the player.
//!
//! The engine is this crate's `songgen-test-engine` (same protocol as `songgen serve --stdio`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nice_plug_egui::RepaintNotifier;
use songgen_engine::protocol::GenType;
use songgen_plugin::capture::Recorder;
use songgen_plugin::files;
use songgen_plugin::params::SongGenParams;
use songgen_plugin::playback::{MainOutput, Outputs, PlayState, Player};
use songgen_plugin::session::{PromptSource, TakeStatus};
use songgen_plugin::timeline::Timeline;
use songgen_plugin::worker::{Command, EngineState, Shared, UiStatus, WorkerHandle};

fn wait(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn generate_makes_a_selected_take_that_plays() {
    let dir = songgen_tests::temp_dir("generate");
    std::env::set_var(files::CACHE_ENV, dir.join("cache"));
    std::env::set_var("SONGGEN_HOME", dir.join("home"));
    std::env::set_var("SONGGEN_ENGINE", env!("CARGO_BIN_EXE_songgen-test-engine"));
    std::env::set_var("SONGGEN_RUNTIME_DIR", dir.join("run"));
    std::env::set_var("SONGGEN_ENGINE_GRACE", "1");
    std::env::set_var("SONGGEN_TEST_ENGINE_SECONDS", "0.5");

    let params = Arc::new(SongGenParams::default());
    let shared = Arc::new(Shared::default());
    let status = Arc::new(Mutex::new(UiStatus::default()));
    let worker = WorkerHandle::spawn(
        params.clone(),
        shared.clone(),
        status.clone(),
        RepaintNotifier::new(),
    );
    let (_recorder, recorder_link) = Recorder::new(48_000.0);
    let (mut player, player_link) = Player::new();
    worker
        .tx
        .send(Command::Activated {
            sample_rate: 48_000.0,
            recorder: recorder_link,
            player: player_link,
            loaded: None,
        })
        .unwrap();
    let engine_state = || status.lock().unwrap().engine.clone();
    // Without the licence accepted, the engine does not start and says why.
    wait(
        "licence refusal",
        || matches!(engine_state(), EngineState::Failed { reason } if reason.contains("licence")),
    );
    // Accepting it (the editor's licence window) restarts the engine.
    songgen_engine::license::record_acceptance().unwrap();
    worker.tx.send(Command::RestartEngine).unwrap();
    wait("engine ready", || {
        matches!(engine_state(), EngineState::Ready { .. })
    });

    // Invalid lyrics are refused with the checker's message, and make no take.
    params.draft.update(|d| d.lyrics = "no tags at all".into());
    worker.tx.send(Command::Generate).unwrap();
    wait("lyrics error", || {
        status
            .lock()
            .unwrap()
            .message
            .as_ref()
            .is_some_and(|(err, m)| *err && m.contains("lyrics"))
    });
    assert!(params.takes.read().list.is_empty());

    params.draft.update(|d| {
        d.lyrics = "[intro-short]\n\n[verse]\nhello world\n\n[chorus]\nla la la\n".into();
        d.gen_type = GenType::Separate;
        d.seed = Some(99);
        d.prompt = PromptSource::AutoGenre {
            genre: "Pop".into(),
        };
    });
    worker.tx.send(Command::Generate).unwrap();
    wait("take done", || {
        params
            .takes
            .read()
            .list
            .first()
            .is_some_and(|t| t.status == TakeStatus::Done)
    });
    let takes = params.takes.read().clone();
    let take = &takes.list[0];
    assert_eq!(takes.selected.as_deref(), Some(take.id.as_str()));
    assert_eq!(take.seed, Some(99));
    assert_eq!(take.prompt, "auto: Pop");
    assert_eq!(take.frames, 24_000);
    assert_eq!(take.sample_rate, 48_000);
    assert_eq!(take.descriptions.as_deref(), Some("female, pop"));
    for stem in ["vocal", "bgm", "mixed"] {
        let p = &take.stems[stem];
        assert!(p.starts_with(files::cache_dir()), "{}", p.display());
        assert!(p.is_file());
    }
    assert!(status.lock().unwrap().job.is_none());

    // The selected take reaches the audio side: a 440 Hz vocal sine from the test engine.
    let state: &PlayState = &shared.play;
    let timeline = Timeline {
        playing: true,
        pos: Some(1000),
        loop_range: None,
    };
    let mut heard = false;
    wait("stems at the player", || {
        let (mut ml, mut mr) = (vec![0.0f32; 256], vec![0.0f32; 256]);
        let (mut vl, mut vr) = (vec![0.0f32; 256], vec![0.0f32; 256]);
        player.process(
            state,
            &timeline,
            MainOutput::Off,
            Outputs {
                main: [&mut ml, &mut mr],
                vocals: Some([&mut vl, &mut vr]),
                accompaniment: None,
            },
        );
        let k = 1000.0f32;
        let want = 0.5 * (std::f32::consts::TAU * 440.0 * k / 48_000.0).sin();
        heard = (vl[0] - want).abs() < 1e-5 && vl.iter().any(|v| *v != 0.0);
        heard
    });
    assert!(heard);

    // Export copies the stems under readable names.
    let export = dir.join("export");
    worker
        .tx
        .send(Command::Export {
            take: take.id.clone(),
            dir: export.clone(),
        })
        .unwrap();
    wait("export", || {
        export.join(format!("{}-vocal.wav", take.id)).is_file()
            && export.join(format!("{}-bgm.wav", take.id)).is_file()
    });

    drop(worker);
    let _ = std::fs::remove_dir_all(&dir);
}
