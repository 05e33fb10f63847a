//! One engine per user and machine: plugin instances share the engine on the per-user socket.
//! Three instances in one host run one engine process; when it is killed (as the OOM killer
//! would), one engine comes back and every instance reconnects. Two instances' jobs take turns
//! in the shared engine and each instance sees only its own takes.
//!
//! The engine is this crate's `songgen-test-engine`: the real service (`songgen serve --socket`)
//! around a sine model.

mod plugin_host;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nice_plug_egui::RepaintNotifier;
use plugin_host::{
    engine_processes, serial, temp_dir, test_engine, Block, TestPlugin, Transport, SAMPLE_RATE,
};
use songgen_engine::protocol::GenType;
use songgen_plugin::capture::Recorder;
use songgen_plugin::params::SongGenParams;
use songgen_plugin::playback::Player;
use songgen_plugin::session::TakeStatus;
use songgen_plugin::worker::{Command, EngineState, Shared, UiStatus, WorkerHandle};

fn log_count(log: &std::path::Path, what: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches(what)
        .count()
}

/// Links made by the instances so far: engines they started plus connections to a running one.
fn links(log: &std::path::Path) -> usize {
    log_count(log, "songgen: started engine") + log_count(log, "songgen: connected to")
}

#[test]
fn three_instances_share_one_engine_that_comes_back_after_a_kill() {
    let _guard = serial();
    let dir = temp_dir("shared-engine");
    let pidfile = dir.join("pids");
    let log = dir.join("plugin.log");
    plugin_host::isolate(&dir);
    std::env::set_var("SONGGEN_ENGINE", test_engine());
    std::env::set_var("SONGGEN_TEST_ENGINE_PIDFILE", &pidfile);
    std::env::set_var("NICE_LOG", &log);
    songgen_engine::license::record_acceptance().unwrap();
    let pids = || -> Vec<u32> {
        std::fs::read_to_string(&pidfile)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    };

    let mut plugins: Vec<TestPlugin> = (0..3).map(|_| TestPlugin::new()).collect();
    for p in &mut plugins {
        p.activate();
    }
    let mut pos = 0i64;
    let mut run_until = |plugins: &mut Vec<TestPlugin>, what: &str, until: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !until() {
            for p in plugins.iter_mut() {
                let mut block = Block::silent(256);
                block.main[0].fill(0.25);
                p.process(
                    &mut block,
                    Some(Transport::playing_at(pos as f64 / SAMPLE_RATE)),
                    &[],
                );
                assert!(
                    block.main[0].iter().all(|v| *v == 0.25),
                    "audio passes through"
                );
            }
            pos += 256;
            std::thread::sleep(Duration::from_millis(2));
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
        }
    };

    run_until(&mut plugins, "three links", &|| links(&log) >= 3);
    // A moment for engines that lost the start-up race to exit.
    run_until(&mut plugins, "one engine", &|| {
        engine_processes(&test_engine()).len() == 1
    });
    let engines = engine_processes(&test_engine());
    assert_eq!(engines.len(), 1, "one engine for three instances");
    assert_eq!(pids(), engines, "exactly one engine ever served");
    let first = engines[0];

    let killed = std::process::Command::new("kill")
        .args(["-9", &first.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    // Every instance notices; one engine comes back and all three link to it again.
    run_until(&mut plugins, "three new links", &|| links(&log) >= 6);
    run_until(&mut plugins, "one new engine", &|| {
        let e = engine_processes(&test_engine());
        e.len() == 1 && e[0] != first
    });
    let served = pids();
    assert_eq!(
        served.len(),
        2,
        "one engine served after the kill: {served:?}"
    );
    assert_eq!(engine_processes(&test_engine()), [served[1]]);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("restarting"), "the loss is reported:\n{text}");

    // The last instance gone, the idle engine stops after its grace period.
    drop(plugins);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !engine_processes(&test_engine()).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        engine_processes(&test_engine()).is_empty(),
        "the engine stops when idle"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

struct Instance {
    params: Arc<SongGenParams>,
    status: Arc<Mutex<UiStatus>>,
    worker: WorkerHandle,
    _player: Player,
}

fn instance() -> Instance {
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
    let (player, player_link) = Player::new();
    worker
        .tx
        .send(Command::Activated {
            sample_rate: 48_000.0,
            recorder: recorder_link,
            player: player_link,
            loaded: None,
        })
        .unwrap();
    Instance {
        params,
        status,
        worker,
        _player: player,
    }
}

fn wait(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn two_instances_jobs_take_turns_and_each_sees_only_its_own() {
    let _guard = serial();
    let dir = temp_dir("shared-jobs");
    plugin_host::isolate(&dir);
    let order = dir.join("order.log");
    std::env::remove_var("SONGGEN_TEST_ENGINE_PIDFILE");
    std::env::set_var("SONGGEN_ENGINE", test_engine());
    std::env::set_var("SONGGEN_TEST_ENGINE_LOG", &order);
    std::env::set_var("SONGGEN_TEST_ENGINE_SECONDS", "0.25");
    std::env::set_var("SONGGEN_TEST_ENGINE_STEP_MS", "150");
    songgen_engine::license::record_acceptance().unwrap();

    let a = instance();
    let b = instance();
    for (i, word) in [(&a, "alpha"), (&b, "bravo")] {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !matches!(i.status.lock().unwrap().engine, EngineState::Ready { .. }) {
            assert!(
                Instant::now() < deadline,
                "engine not ready: {:?}",
                i.status.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        i.params.draft.update(|d| {
            d.lyrics = format!("[verse]\n{word} one two\n\n[chorus]\nla la\n");
            d.gen_type = GenType::Vocal;
            d.seed = Some(5);
        });
    }
    // Each instance generates three takes, one after the other, both at once.
    let done = |i: &Instance| {
        i.params
            .takes
            .read()
            .list
            .iter()
            .filter(|t| t.status != TakeStatus::Running)
            .count()
    };
    for round in 1..=3 {
        for i in [&a, &b] {
            i.worker.tx.send(Command::Generate).unwrap();
        }
        wait("both takes of the round", 60, || {
            done(&a) == round && done(&b) == round
        });
    }
    for (i, word) in [(&a, "alpha"), (&b, "bravo")] {
        let takes = i.params.takes.read().clone();
        assert_eq!(takes.list.len(), 3);
        for t in &takes.list {
            assert_eq!(t.status, TakeStatus::Done, "{t:?}");
            assert!(
                t.lyrics.contains(word),
                "an instance has another's take: {t:?}"
            );
            let vocal = &t.stems["vocal"];
            assert!(vocal.is_file() && vocal.to_string_lossy().contains(&t.id));
        }
    }
    // Both instances' jobs ran in one engine, taking turns.
    let ran: Vec<String> = std::fs::read_to_string(&order)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(ran.len(), 6, "{ran:?}");
    for round in ran.chunks(2) {
        let mut r = round.to_vec();
        r.sort();
        assert_eq!(r, ["alpha", "bravo"], "{ran:?}");
    }
    assert_eq!(engine_processes(&test_engine()).len(), 1);
    drop((a, b));
    let _ = std::fs::remove_dir_all(&dir);
}
