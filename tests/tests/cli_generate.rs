//! End to end on the tiny model: `songgen generate` (every `--type`, JSONL batches) and
//! `songgen serve --stdio` write stems of the length the LM tokens imply, reproducibly.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::OnceLock;

use songgen_engine::protocol::Event;
use songgen_tests::{songgen, temp_dir, tiny_model};

const LYRICS: &str =
    "[intro-short] ; [verse] hello there. how are you ; [chorus] la la la ; [outro-short]";

/// One tiny model shared by the tests of this file.
fn model() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        tiny_model::write(&temp_dir("e2e-model"), 11)
            .unwrap()
            .model_dir
    })
}

fn check(o: &Output) {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn generate(home: &Path, out: &Path, extra: &[&str]) -> Output {
    songgen(home)
        .args(["generate", "--accept-license", "--quiet", "--device", "cpu"])
        .arg("--model")
        .arg(model())
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

/// Samples the decoder writes for `t` token frames (the reference's `target_len`).
fn expected_frames(t: u64) -> u64 {
    (t as f64 / 100.0 * 4.0 * 48000.0) as u64
}

/// Checks the record and the stems of job `id` in `out`; returns the stems' bytes.
fn check_outputs(out: &Path, id: &str, stems: &[&str]) -> Vec<Vec<u8>> {
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join(format!("{id}.json"))).unwrap())
            .unwrap();
    let t = record["token_frames"].as_u64().unwrap();
    assert!(t > 0 && t <= tiny_model::MAX_DUR as u64 * 25, "{record}");
    let frames = record["frames"].as_u64().unwrap();
    assert_eq!(frames, expected_frames(t));
    let mut bytes = Vec::new();
    for suffix in stems {
        let path = out.join(format!("{id}{suffix}.wav"));
        let reader = hound::WavReader::open(&path).unwrap();
        let spec = reader.spec();
        assert_eq!(
            (spec.sample_rate, spec.channels),
            (48_000, 2),
            "{}",
            path.display()
        );
        assert_eq!(u64::from(reader.duration()), frames, "{}", path.display());
        bytes.push(std::fs::read(&path).unwrap());
    }
    bytes
}

#[test]
fn every_type_writes_its_stems_reproducibly() {
    let home = temp_dir("e2e-types");
    let args = |ty: &'static str| {
        [
            "--lyrics",
            LYRICS,
            "--tags",
            "female, pop",
            "--type",
            ty,
            "--seed",
            "7",
            "--id",
            "t",
        ]
    };
    for (ty, stems) in [
        ("mixed", &[""][..]),
        ("vocal", &["_vocal"][..]),
        ("bgm", &["_bgm"][..]),
        ("separate", &["", "_vocal", "_bgm"][..]),
    ] {
        let out = home.join(ty);
        check(&generate(&home, &out, &args(ty)));
        let first = check_outputs(&out, "t", stems);
        if ty == "separate" {
            // Same seed, same bytes (every stem of the run).
            let again = home.join("separate-again");
            check(&generate(&home, &again, &args(ty)));
            assert!(
                first == check_outputs(&again, "t", stems),
                "two runs with seed 7 differ"
            );
        }
    }
    // The stems of one song decode the same LM tokens.
    let tokens = |ty: &str| -> serde_json::Value {
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(home.join(ty).join("t.json")).unwrap())
                .unwrap();
        r["token_frames"].clone()
    };
    assert_eq!(tokens("mixed"), tokens("separate"));
    assert_eq!(tokens("vocal"), tokens("mixed"));
}

#[test]
fn jsonl_batches_in_the_reference_format_run_unchanged() {
    let home = temp_dir("e2e-jsonl");
    let jsonl = home.join("lyrics.jsonl");
    let mut f = std::fs::File::create(&jsonl).unwrap();
    // The reference's sample lines: trailing dots before ` ;`, a tag without a space after it,
    // numeric and string idx and open-vocabulary descriptions.
    writeln!(
        f,
        r#"{{"idx": "0_en", "gt_lyric": "[intro-short] ; [verse] These faded memories of us. I can't erase the tears you cried before. ; [chorus]Like a fool begs for supper. ; [outro-short]"}}"#
    )
    .unwrap();
    writeln!(
        f,
        r#"{{"idx": 1, "descriptions": "pop ballad, resilient, piano, electric guitar, string section, drum kit.", "gt_lyric": "[intro-medium]; [verse] 漂泊在无尽的沧海.寻觅那颗失落的心 ; [chorus] 让一切重新开始 ; [outro-medium]"}}"#
    )
    .unwrap();
    drop(f);
    let out = home.join("out");
    let o = songgen(&home)
        .args([
            "generate",
            "--accept-license",
            "--quiet",
            "--device",
            "cpu",
            "--seed",
            "3",
        ])
        .arg("--model")
        .arg(model())
        .arg("--jsonl")
        .arg(&jsonl)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    check(&o);
    check_outputs(&out, "0_en", &[""]);
    check_outputs(&out, "1", &[""]);
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("1.json")).unwrap()).unwrap();
    assert_eq!(record["language"], "zh");
}

#[test]
fn serve_runs_queued_jobs_and_cancels_one() {
    let home = temp_dir("e2e-serve");
    let out = home.join("out");
    let mut child = songgen(&home)
        .args(["serve", "--stdio", "--accept-license", "--device", "cpu"])
        .arg("--model")
        .arg(model())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let job = |seed: u64| serde_json::json!({"lyrics": LYRICS, "seed": seed, "out_dir": out, "gen_type": "separate"});
    {
        let stdin = child.stdin.as_mut().unwrap();
        for (id, seed) in [("a", 1), ("b", 2), ("c", 3)] {
            let req = serde_json::json!({"op": "generate", "id": id, "job": job(seed)});
            writeln!(stdin, "{req}").unwrap();
        }
        writeln!(stdin, r#"{{"op":"cancel","id":"b"}}"#).unwrap();
        writeln!(stdin, r#"{{"op":"status"}}"#).unwrap();
    }
    drop(child.stdin.take());
    let o = child.wait_with_output().unwrap();
    check(&o);
    let events: Vec<Event> = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(matches!(events[0], Event::Ready { .. }), "{events:?}");
    let ends: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            Event::Done { id, .. } => Some(format!("done {id}")),
            Event::Cancelled { id } => Some(format!("cancelled {id}")),
            Event::Error { id, message } => Some(format!("error {id:?} {message}")),
            _ => None,
        })
        .collect();
    assert_eq!(ends, ["done a", "cancelled b", "done c"], "{events:?}");
    assert!(events.iter().any(|e| matches!(e, Event::Progress { .. })));
    check_outputs(&out, "a", &[""]);
    check_outputs(&out, "c", &[""]);
    assert!(!out.join("b.wav").exists());
}
