//! Engine supervision through a CLAP host: the plugin starts the shared engine on activation;
//! when that process is killed (as the OOM killer would), the plugin reports it and starts a new
//! one, while the host keeps processing audio normally.
//!
//! The engine here is this crate's `songgen-test-engine`, which speaks the real
//! protocol of the real service (`songgen serve --socket`) without loading a model.

mod plugin_host;

use std::time::{Duration, Instant};

use plugin_host::{serial, temp_dir, test_engine, Block, TestPlugin, Transport, SAMPLE_RATE};

fn pids(file: &std::path::Path) -> Vec<i32> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn alive(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z")
}

#[test]
fn a_killed_engine_is_reported_and_restarted_while_audio_keeps_running() {
    let _guard = serial();
    let dir = temp_dir("engine");
    let pidfile = dir.join("pids");
    let log = dir.join("plugin.log");
    plugin_host::isolate(&dir);
    std::env::set_var("SONGGEN_ENGINE", test_engine());
    songgen_engine::license::record_acceptance().unwrap();
    std::env::set_var("SONGGEN_TEST_ENGINE_PIDFILE", &pidfile);
    // nice-plug's logger writes to this file (set before the library is first loaded).
    std::env::set_var("NICE_LOG", &log);

    let mut plugin = TestPlugin::new();
    plugin.activate();
    let mut pos = 0i64;
    let mut blocks = 0u64;
    let mut process_for = |plugin: &mut TestPlugin, until: &dyn Fn() -> bool, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !until() {
            let mut block = Block::silent(256);
            block.main[0].fill(0.5);
            plugin.process(
                &mut block,
                Some(Transport::playing_at(pos as f64 / SAMPLE_RATE)),
                &[],
            );
            assert!(
                block.main[0].iter().all(|v| *v == 0.5),
                "audio passes through"
            );
            pos += 256;
            blocks += 1;
            std::thread::sleep(Duration::from_millis(2));
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
        }
    };

    process_for(
        &mut plugin,
        &|| !pids(&pidfile).is_empty(),
        "the engine to start",
    );
    let first = pids(&pidfile)[0];
    assert!(alive(first));

    // SIGKILL, like the OOM killer.
    let killed = std::process::Command::new("kill")
        .args(["-9", &first.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());

    process_for(
        &mut plugin,
        &|| pids(&pidfile).len() >= 2,
        "a restarted engine",
    );
    let second = pids(&pidfile)[1];
    assert_ne!(first, second);
    assert!(alive(second), "the new engine runs");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("killed by signal 9") && text.contains("restarting"),
        "the crash is reported:\n{text}"
    );
    assert!(blocks > 0);

    // Dropping the last plugin instance leaves the shared engine idle: it stops after its
    // grace period (1 s here).
    drop(plugin);
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(second) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!alive(second), "engine {second} left running");
    let _ = std::fs::remove_dir_all(&dir);
}
