//! Playback through a CLAP host: a finished take restored from the project state plays on the
//! Vocals and Accompaniment buses (and the main output) at exactly its anchor on the host
//! timeline, follows the host's loop, and stays silent when stopped. The plugin under test is
//! built with nice-plug's `assert_process_allocs`, so any allocation in `process()` aborts this
//! test binary.

mod plugin_host;

use std::path::Path;
use std::time::{Duration, Instant};

use plugin_host::{
    finished_take_field, serial, temp_dir, write_stem, Block, TestPlugin, Transport, SAMPLE_RATE,
};
use serde_json::json;

const STEM_FRAMES: usize = 24_000; // 0.5 s
const ANCHOR_SECONDS: f64 = 0.25;

fn vocal(k: usize) -> (f32, f32) {
    let x = ((k % 997) as f32 / 997.0) - 0.5;
    (x, 0.5 * x)
}

fn bgm(k: usize) -> (f32, f32) {
    let x = ((k as f32) * 0.01).sin() * 0.25;
    (x, -x)
}

/// The sample the take should put at timeline position `p` (zero outside the take).
fn expected(f: fn(usize) -> (f32, f32), p: i64) -> (f32, f32) {
    let k = p - (ANCHOR_SECONDS * SAMPLE_RATE) as i64;
    if k >= 0 && (k as usize) < STEM_FRAMES {
        f(k as usize)
    } else {
        (0.0, 0.0)
    }
}

fn run(plugin: &mut TestPlugin, transport: Transport, frames: usize) -> Block {
    let mut block = Block::silent(frames);
    plugin.process(&mut block, Some(transport), &[]);
    block
}

fn check_block(block: &Block, positions: &[i64]) {
    for (i, &p) in positions.iter().enumerate() {
        let v = expected(vocal, p);
        let a = expected(bgm, p);
        assert_eq!((block.vocals[0][i], block.vocals[1][i]), v, "vocals at {p}");
        assert_eq!(
            (block.accompaniment[0][i], block.accompaniment[1][i]),
            a,
            "accompaniment at {p}"
        );
        // Main output = input (silence) + vocals + accompaniment ("Mix").
        assert!((block.main[0][i] - (v.0 + a.0)).abs() < 1e-6, "main at {p}");
        assert!((block.main[1][i] - (v.1 + a.1)).abs() < 1e-6, "main at {p}");
    }
}

/// Stem paths of `finished_take_field`'s take in the isolated cache (a restored take's stems
/// must lie in its own cache folder).
fn take7_stems(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let take_dir = dir.join("cache").join("takes").join("take-7");
    std::fs::create_dir_all(&take_dir).unwrap();
    (take_dir.join("v.wav"), take_dir.join("b.wav"))
}

/// Restores a project whose selected take has the given stems.
fn load_take(plugin: &mut TestPlugin, vocal_path: &Path, bgm_path: &Path) {
    let mut state = plugin.save_state();
    state["fields"]["takes"] = json!(finished_take_field(
        vocal_path,
        bgm_path,
        STEM_FRAMES,
        ANCHOR_SECONDS
    ));
    plugin.load_state(&state);
}

#[test]
fn plays_a_restored_take_at_its_anchor_and_follows_the_loop() {
    let _guard = serial();
    let dir = temp_dir("playback");
    plugin_host::isolate(&dir);
    let (vocal_path, bgm_path) = take7_stems(&dir);
    write_stem(&vocal_path, STEM_FRAMES, vocal);
    write_stem(&bgm_path, STEM_FRAMES, bgm);

    let mut plugin = TestPlugin::new();
    load_take(&mut plugin, &vocal_path, &bgm_path);
    plugin.activate();

    // Stems load on the worker thread; keep processing until they arrive.
    let anchor = (ANCHOR_SECONDS * SAMPLE_RATE) as i64;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let b = run(
            &mut plugin,
            Transport::playing_at((anchor + 1000) as f64 / SAMPLE_RATE),
            64,
        );
        if b.vocals[0].iter().any(|v| *v != 0.0) {
            break;
        }
        assert!(Instant::now() < deadline, "stems never started playing");
        std::thread::sleep(Duration::from_millis(10));
    }

    // Straight play across the anchor, in odd block sizes.
    let mut pos = anchor - 700;
    for frames in [512, 77, 300, 512, 1] {
        let b = run(
            &mut plugin,
            Transport::playing_at(pos as f64 / SAMPLE_RATE),
            frames,
        );
        let positions: Vec<i64> = (0..frames as i64).map(|i| pos + i).collect();
        check_block(&b, &positions);
        pos += frames as i64;
    }

    // Across the end of the take.
    let end = anchor + STEM_FRAMES as i64;
    let b = run(
        &mut plugin,
        Transport::playing_at((end - 100) as f64 / SAMPLE_RATE),
        256,
    );
    check_block(&b, &(end - 100..end + 156).collect::<Vec<_>>());

    // A loop inside the take: a block crossing the loop end wraps to the loop start.
    let (ls, le) = (anchor + 4800, anchor + 9600); // 0.1 s .. 0.2 s into the take
    let t = Transport {
        playing: true,
        pos_seconds: (le - 200) as f64 / SAMPLE_RATE,
        loop_seconds: Some((ls as f64 / SAMPLE_RATE, le as f64 / SAMPLE_RATE)),
        tempo: 120.0,
    };
    let b = run(&mut plugin, t, 512);
    let positions: Vec<i64> = (0..512)
        .map(|i| {
            let p = le - 200 + i;
            if p >= le {
                ls + (p - le)
            } else {
                p
            }
        })
        .collect();
    check_block(&b, &positions);

    // Stopped: stem buses silent, main output passes the input through.
    let mut block = Block::silent(128);
    block.main[0].fill(0.125);
    let stopped = Transport {
        playing: false,
        ..Transport::playing_at((anchor + 100) as f64 / SAMPLE_RATE)
    };
    plugin.process(&mut block, Some(stopped), &[]);
    assert!(block.vocals[0].iter().all(|v| *v == 0.0));
    assert!(block.main[0].iter().all(|v| *v == 0.125));

    // No transport at all (some hosts while scanning): silence, no crash.
    let mut block = Block::silent(64);
    plugin.process(&mut block, None, &[]);
    assert!(block.accompaniment[1].iter().all(|v| *v == 0.0));

    // Main output = "Vocals" only.
    let main_out = plugin.param_id("Main output");
    let mut block = Block::silent(64);
    let p = anchor + 2000;
    plugin.process(
        &mut block,
        Some(Transport::playing_at(p as f64 / SAMPLE_RATE)),
        &[(main_out, 1.0)],
    );
    for i in 0..64 {
        assert_eq!(block.main[0][i], expected(vocal, p + i as i64).0);
    }
    drop(plugin);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_offline_bounce_has_the_take_from_its_first_block() {
    let _guard = serial();
    let dir = temp_dir("offline");
    plugin_host::isolate(&dir);
    let (vocal_path, bgm_path) = take7_stems(&dir);
    write_stem(&vocal_path, STEM_FRAMES, vocal);
    write_stem(&bgm_path, STEM_FRAMES, bgm);

    let mut plugin = TestPlugin::new();
    load_take(&mut plugin, &vocal_path, &bgm_path);
    // A bounce: activation waits for the stems, so no block of the render misses them.
    plugin.set_offline();
    plugin.activate();
    let anchor = (ANCHOR_SECONDS * SAMPLE_RATE) as i64;
    let mut pos = anchor - 100;
    for _ in 0..8 {
        let b = run(
            &mut plugin,
            Transport::playing_at(pos as f64 / SAMPLE_RATE),
            512,
        );
        check_block(&b, &(pos..pos + 512).collect::<Vec<_>>());
        pos += 512;
    }
    drop(plugin);
    let _ = std::fs::remove_dir_all(&dir);
}
